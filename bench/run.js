#!/usr/bin/env node
// Kindling benchmarks: prints numbers, judges nothing. Run with `npm run bench` (after the build).
// The KVM benchmarks compare with a bare C VMM (bench/baseline: the same KVM set-up and guest,
// one process per VM), measured in the same run and given as Kindling / baseline.
//
//   startrate  N tiny guests (default 50) started at once, each to its exit, VMs/s against the
//              baseline's processes/s; event-loop stalls meanwhile (needs /dev/kvm)
//   setup      start() until the vCPU threads run, 128 MiB, tiny guest and ../shared/guest/vmlinux,
//              against the baseline's set-up from main() to its first KVM_RUN (needs /dev/kvm)
//   density    RSS of one process with 1, 10, 50 and 500 idle 32 MiB VMs, minus guest RAM, against
//              the baseline's per-process RSS (needs /dev/kvm)
//   console    JavaScript callbacks per printed byte at steady output (tiny guest), then during a
//              Linux boot (KINDLING_BENCH_CONSOLE=tiny skips that) (needs /dev/kvm)
//   shard      the startrate workload on the main thread and on 1 and 2 worker threads
//   compare    startrate, setup, console (tiny) and density, then the table of all of them
//   queue      the split-virtqueue's own cost per request (mock driver, no KVM)
//   block      virtio-blk host-side throughput (mock driver, file in page cache, no KVM)
//   snapshot   snapshot creation time and size (full, diff), restore-to-running with memory 'map'
//              and 'copy' at 128 MiB / 1 GiB / 4 GiB, clones per second and host memory per clone
//              (counter test guest on the native layer; needs /dev/kvm and npm run build:guests)
//   net        virtio-net host-side throughput (mock driver; TAP cases need root), VirtualSwitch,
//              MMDS round trip
//   vsock      virtio-vsock host-side throughput, both directions (mock driver, no KVM)
//   invoke     vm.invoke() round trip through the vsock device (mock driver and guest agent, no KVM)
//   balloon    balloon inflate rate: MiB/s of guest memory returned to the host (real anonymous mapping)
//   seccomp    port-read round trips per second with and without the vCPU seccomp filter (needs /dev/kvm)
//   jail       start-to-running time in this process, jailed (cold) and jailed after prepare() (needs
//              /dev/kvm and root)
//
//   node --expose-gc bench/run.js [startrate|setup|density|console|shard|compare|queue|block|snapshot|net|vsock|invoke|balloon|seccomp|jail ...]
//   (default: all but compare)
'use strict';
const path = require('path');
const fs = require('fs');
const { spawnSync } = require('child_process');

const which = process.argv.slice(2);
const want = (name) => which.length === 0 || which.includes(name);

function runTs(file) {
  // The no-KVM benchmarks are TypeScript against lib/ sources, run through ts-node-free transpile-on-require.
  const r = spawnSync(process.execPath, ['-r', path.join(__dirname, 'register-ts.js'), path.join(__dirname, file)], { stdio: 'inherit' });
  if (r.status !== 0) console.log(`${file} exited with ${r.status}`);
}

async function main() {
  const { isKvmAvailable } = require('kindling');
  const kvm = isKvmAvailable();
  const kvmBenches = ['startrate', 'setup', 'density', 'console', 'shard', 'snapshot', 'seccomp', 'jail', 'compare'];
  if (kvmBenches.some((b) => (b === 'compare' ? which.includes(b) : want(b)))) {
    if (!kvm.ok) console.log(`${kvmBenches.join(', ')}: skipped, KVM unavailable (${kvm.reason}); try: bash scripts/kvm-in-qemu.sh -- npm run bench`);
    else if (which.includes('compare')) await require('./compare').run();
    else {
      if (want('startrate')) await require('./startrate.bench').run();
      if (want('setup')) await require('./setup.bench').run();
      if (want('density')) await require('./density.bench').run();
      if (want('console')) await require('./console.bench').run();
      if (want('shard')) await require('./shard.bench').run();
      if (want('snapshot')) await require('./snapshot.bench').run();
      if (want('seccomp')) await require('./seccomp.bench').run();
      if (want('jail')) await require('./jail.bench').run();
    }
  }
  if (want('queue') && fs.existsSync(path.join(__dirname, 'queue.bench.ts'))) runTs('queue.bench.ts');
  if (want('block') && fs.existsSync(path.join(__dirname, 'block.bench.ts'))) runTs('block.bench.ts');
  if (want('net') && fs.existsSync(path.join(__dirname, 'net.bench.ts'))) runTs('net.bench.ts');
  for (const name of ['vsock', 'invoke', 'balloon']) {
    if (want(name) && fs.existsSync(path.join(__dirname, `${name}.bench.ts`))) runTs(`${name}.bench.ts`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
