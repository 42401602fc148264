// Start-to-running time of a jailed VM against the same VM in this process: how long `await
// vm.start()` takes (VM created, kernel loaded, vCPUs running) for the echo test guest (16 MiB, one
// vCPU), in three modes measured in one run, rounds interleaved so that drift on a shared machine
// hits all alike:
//   in-process      new MicroVM().start()
//   jailed, cold    new MicroVM({ jail }).start(): builds the jail, starts the launcher and the
//                   child Node process (which loads the package and installs its seccomp filter),
//                   then sends the configuration
//   jailed, prepared vm.prepare() first (not timed), then start(): only the configuration and the
//                   descriptors cross, the child builds the machine
// Printed: median and 90th percentile per mode, and each jailed mode's median minus and over the
// in-process one. Needs root and /dev/kvm.
//
//   node --expose-gc bench/run.js jail     (KINDLING_BENCH_ROUNDS, default 15)
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { performance } = require('perf_hooks');
const { MicroVM } = require('kindling');
const { testGuest } = require('kindling/testing');

const ROUNDS = Number(process.env.KINDLING_BENCH_ROUNDS || 15);
const UID = 64321;

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function once(mode, base, i) {
  const opts = { id: `bench-${process.pid}-${i}` };
  if (mode !== 'in-process') opts.jail = { uid: UID, gid: UID, chrootBase: base };
  const vm = new MicroVM(opts).memory(16).kernel(testGuest('echo'));
  if (mode === 'jailed, prepared') await vm.prepare();
  const t0 = performance.now();
  await vm.start();
  const ms = performance.now() - t0;
  await vm.stop();
  return ms;
}

async function run() {
  if (typeof process.geteuid !== 'function' || process.geteuid() !== 0) {
    console.log('jail: skipped, jailed VMs need root');
    return;
  }
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-bench-jails-'));
  fs.chmodSync(base, 0o755);
  const modes = ['in-process', 'jailed, cold', 'jailed, prepared'];
  const times = Object.fromEntries(modes.map((m) => [m, []]));
  try {
    // One of each first, unmeasured: the jail's contents are looked up once per process.
    for (const m of modes) await once(m, base, `warm-${m.length}`);
    let n = 0;
    for (let r = 0; r < ROUNDS; r++) {
      for (const m of modes) times[m].push(await once(m, base, n++));
    }
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
  console.log(`jail: start() until the vCPUs run, echo guest, 16 MiB, ${ROUNDS} rounds`);
  const med = {};
  for (const m of modes) {
    const s = [...times[m]].sort((a, b) => a - b);
    med[m] = quantile(s, 0.5);
    console.log(`  ${m.padEnd(17)} median ${med[m].toFixed(1).padStart(7)} ms   p90 ${quantile(s, 0.9).toFixed(1).padStart(7)} ms`);
  }
  for (const m of modes.slice(1)) {
    const added = med[m] - med['in-process'];
    console.log(`  ${m}: ${(med[m] / med['in-process']).toFixed(2)}x in-process, +${added.toFixed(1)} ms (target: +20 ms or less: ${added <= 20 ? 'met' : 'not met'})`);
  }
}

module.exports = { run };
