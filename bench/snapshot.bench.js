// Snapshots, on the native layer through the test harness (test/kvm/snapshot-harness.ts, the
// counter guest); prints numbers, judges nothing:
//   - snapshot creation time and size for 128 MiB and 1 GiB guests, full and diff (after the
//     guest ran a few more steps), "idle" (only what the guest touched) and "half" (half of the
//     RAM filled from the host before boot, as a used guest would have it);
//   - restore-to-running (host side: from reading the state file to the vCPUs started; and to the
//     first byte the restored guest prints) with memory 'map' and 'copy' at 128 MiB, 1 GiB, 4 GiB;
//   - clones per second from one snapshot, and host memory per clone.
// Needs /dev/kvm and the built test guests (npm run build:guests).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { PerformanceObserver } = require('perf_hooks');

require('./register-ts');
const { NativeGuest } = require('../test/kvm/snapshot-harness.ts');
const { loadSnapshot } = require('../lib/snapshot/index.ts');

const GUEST = path.join(__dirname, '../test/guests/out/counter.elf');
const MiB = 1024 * 1024;
const CMDLINE = 'count=1000000 pages=64';

const countsIn = (s) => (s.match(/KT: count=/g) || []).length;
const fmtMs = (ms) => `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
const fmtBytes = (b) => (b >= MiB ? `${(b / MiB).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`);

function diskUsage(dir) {
  let apparent = 0;
  let allocated = 0;
  for (const f of fs.readdirSync(dir)) {
    const st = fs.statSync(path.join(dir, f));
    apparent += st.size;
    allocated += st.blocks * 512;
  }
  return { apparent, allocated };
}

function memStatus() {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? 0) * 1024;
  const roll = fs.readFileSync('/proc/self/smaps_rollup', 'utf8');
  const pss = Number(/^Pss:\s+(\d+) kB/m.exec(roll)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), pss };
}

async function bootAndRun(memMib, fill, steps) {
  const g = await NativeGuest.boot({ kernel: GUEST, memoryMib: memMib, cmdline: CMDLINE, dirtyLogging: true });
  if (fill) {
    // Half of the RAM above the guest's own 32 MiB, one distinct non-zero byte per 64-byte line.
    const view = new Uint8Array(g.memoryBuffer);
    const from = 32 * MiB;
    const to = from + Math.floor((view.length - from) / 2);
    for (let i = from; i < to; i += 64) view[i] = (i >>> 6) & 0xff | 1;
  }
  g.start();
  await g.waitFor((o) => countsIn(o) >= steps, 60_000);
  g.pause();
  return g;
}

async function creation(tmp, memMib, fill) {
  const label = `${memMib >= 1024 ? `${memMib / 1024} GiB` : `${memMib} MiB`} ${fill ? 'half-filled' : 'idle'}`;
  const g = await bootAndRun(memMib, fill, 2);
  const full = path.join(tmp, `full-${memMib}-${fill ? 'h' : 'i'}`);
  let t = performance.now();
  const fi = await g.snapshot(full, { type: 'full' });
  const fullMs = performance.now() - t;
  const fu = diskUsage(full);
  console.log(`snapshot: create full  ${label}: ${fmtMs(fullMs)} (state ${fmtMs(fi.captureMs)}, memory ${fmtMs(fi.memoryWriteMs)}); ` +
    `files ${fmtBytes(fu.apparent)} apparent, ${fmtBytes(fu.allocated)} on disk; ${fi.memory.pagesWritten} pages written, ${fi.memory.pagesAbsent} never touched, ${fi.memory.pagesZero} zero`);
  g.resume();
  const seen = countsIn(g.output);
  await g.waitFor((o) => countsIn(o) >= seen + 3, 60_000);
  g.pause();
  const diff = path.join(tmp, `diff-${memMib}-${fill ? 'h' : 'i'}`);
  t = performance.now();
  const di = await g.snapshot(diff, { type: 'diff', parent: fi });
  const diffMs = performance.now() - t;
  const du = diskUsage(diff);
  console.log(`snapshot: create diff  ${label} (3 guest steps later): ${fmtMs(diffMs)} (state ${fmtMs(di.captureMs)}, memory ${fmtMs(di.memoryWriteMs)}); ` +
    `${di.memory.pagesWritten} pages, ${fmtBytes(du.allocated)} on disk`);
  g.close();
  return full;
}

// V8 garbage collections, to show how much of a restore they take: every ArrayBuffer over guest
// memory counts as external memory, and a large one makes V8 run a full mark-compact at once.
const gcs = [];
new PerformanceObserver((list) => gcs.push(...list.getEntries())).observe({ entryTypes: ['gc'] });
async function gcMsBetween(t0, t1) {
  await new Promise((r) => setImmediate(r)); // observer entries arrive asynchronously
  return gcs.filter((e) => e.startTime >= t0 && e.startTime < t1).reduce((a, e) => a + e.duration, 0);
}

async function restoreOnce(dir, memory) {
  const t0 = performance.now();
  const r = await NativeGuest.restore(dir, { memory });
  r.start();
  const t1 = performance.now();
  const hostMs = t1 - t0;
  await r.waitFor((o) => o.length > 0, 30_000);
  const firstByteMs = performance.now() - t0;
  r.close();
  return { hostMs, firstByteMs, gcMs: await gcMsBetween(t0, t1) };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function restoreTimes(dirs) {
  for (const [label, dir] of dirs) {
    for (const memory of ['map', 'copy']) {
      await restoreOnce(dir, memory); // warm: page cache, JIT
      const runs = [];
      for (let i = 0; i < 7; i++) runs.push(await restoreOnce(dir, memory));
      console.log(`snapshot: restore ${memory.padEnd(4)} ${label}: host side ${fmtMs(median(runs.map((r) => r.hostMs)))} ` +
        `(median of 7; min ${fmtMs(Math.min(...runs.map((r) => r.hostMs)))}; V8 GC inside: median ${fmtMs(median(runs.map((r) => r.gcMs)))}), ` +
        `first guest byte after ${fmtMs(median(runs.map((r) => r.firstByteMs)))}`);
    }
  }
}

async function clones(dir, n) {
  global.gc?.();
  const before = memStatus();
  const loaded = await loadSnapshot(dir);
  // Created first and started together: on the emulated KVM here a running guest takes a whole
  // core, which would slow the creation of the next clone and measure the emulator instead.
  const t0 = performance.now();
  const vms = [];
  for (let i = 0; i < n; i++) vms.push(await NativeGuest.restore(dir, { memory: 'map', loaded }));
  for (const r of vms) r.start();
  const createMs = performance.now() - t0;
  // Let every clone run two steps (it writes its pattern pages, its stack, takes timer ticks).
  await Promise.all(vms.map((r) => r.waitFor((o) => countsIn(o) >= 2, 120_000)));
  for (const r of vms) r.pause();
  global.gc?.();
  const after = memStatus();
  for (const r of vms) r.close();
  const per = (k) => fmtBytes((after[k] - before[k]) / n);
  console.log(`snapshot: ${n} clones of one 128 MiB half-filled snapshot (memory 'map'): ${(n / (createMs / 1000)).toFixed(0)} clones/s ` +
    `(${fmtMs(createMs / n)} each, to vCPUs started); after 2 guest steps each, per clone: RSS +${per('rss')} ` +
    `(anonymous +${per('anon')}, file-backed +${per('file')}, PSS +${per('pss')})`);
}

exports.run = async function run() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-snapbench-'));
  try {
    const dirs = [];
    const d128 = await creation(tmp, 128, false);
    const d128h = await creation(tmp, 128, true);
    const d1g = await creation(tmp, 1024, false);
    const d1gh = await creation(tmp, 1024, true);
    const d4g = await creation(tmp, 4096, false);
    dirs.push(['128 MiB idle', d128], ['128 MiB half-filled', d128h], ['1 GiB idle', d1g], ['1 GiB half-filled', d1gh], ['4 GiB idle', d4g]);
    await restoreTimes(dirs);
    await clones(d128h, 16);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
};

if (require.main === module) {
  exports.run().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
