// Start rate: N tiny guests (test/guests hello.elf: prints ~900 bytes, resets) started at once,
// each run to its exit, in one Node.js process; against the C baseline starting N processes at
// once (bench/baseline), in alternating rounds of the same run. Also reported: the longest
// event-loop stall while Kindling's N VMs start and run (perf_hooks.monitorEventLoopDelay).
//
//   KINDLING_BENCH_N       VMs per round (default 50)
//   KINDLING_BENCH_ROUNDS  rounds of each (default 5); medians are reported
'use strict';
const path = require('path');
const stalls = require('./stall-monitor');
const { MicroVM } = require('kindling');
const baseline = require('./baseline');

const GUEST = path.join(__dirname, '../test/guests/out/hello.elf');
const N = Number(process.env.KINDLING_BENCH_N || 50);
const ROUNDS = Number(process.env.KINDLING_BENCH_ROUNDS || 5);
const MEM_MIB = 128;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function kindlingVm(i) {
  const vm = new MicroVM({ id: `rate-${i}` }).memory(MEM_MIB).kernel(GUEST);
  let bytes = 0;
  vm.on('serial', (c) => { bytes += c.length; });
  await vm.start();
  const info = await vm.wait();
  return { info, bytes, cmdline: vm.cmdline };
}

/** CPU time of the calling thread so far, in ms (/proc/thread-self/sched). */
function threadCpuMs() {
  const m = /se\.sum_exec_runtime\s*:\s*([0-9.]+)/.exec(require('fs').readFileSync('/proc/thread-self/sched', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

async function kindlingRound(n) {
  const cpu0 = threadCpuMs();
  const mon = stalls.start();
  const t0 = process.hrtime.bigint();
  const runs = await Promise.all(Array.from({ length: n }, (_, i) => kindlingVm(i)));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const st = mon.stop();
  const jsCpuMsPerVm = (threadCpuMs() - cpu0) / n;
  const bad = runs.filter((r) => r.info.reason !== 'reset');
  if (bad.length) throw new Error(`${bad.length} Kindling VMs ended otherwise: ${bad[0].info.reason} ${bad[0].info.message ?? ''}`);
  return { rate: n / s, maxDelayMs: st.maxDelayMs, p99DelayMs: st.p99DelayMs, maxCpuMs: st.maxCpuMsInOneGap, longest: st.longest, jsCpuMsPerVm, bytes: runs[0].bytes };
}

exports.measure = async function measure() {
  baseline.build();
  // Warm-up, and the command line Kindling gives the guest, for the baseline to pass the same.
  const warm = await kindlingVm(-1);
  const cmdline = warm.cmdline;
  baseline.spawnMany(2, GUEST, MEM_MIB, cmdline);
  const k = [];
  const b = [];
  for (let r = 0; r < ROUNDS; r++) {
    // This process idles meanwhile: its event loop's stalls are the host's doing alone (other
    // processes, the baseline's among them), the reference for Kindling's.
    const mon = stalls.start();
    const base = await baseline.spawnManyAsync(N, GUEST, MEM_MIB, cmdline);
    const idle = mon.stop();
    if (base.ok !== N) throw new Error(`baseline: ${N - base.ok} of ${N} processes failed`);
    b.push({ rate: N / (base.wallNs / 1e9), bytes: base.runs[0]?.bytes, idleMaxDelayMs: idle.maxDelayMs, idleP99DelayMs: idle.p99DelayMs });
    k.push(await kindlingRound(N));
  }
  const ratios = k.map((x, i) => x.rate / b[i].rate);
  return {
    n: N,
    rounds: ROUNDS,
    kindlingRate: median(k.map((x) => x.rate)),
    baselineRate: median(b.map((x) => x.rate)),
    ratio: median(ratios),
    maxDelayMs: Math.max(...k.map((x) => x.maxDelayMs)),
    medianMaxDelayMs: median(k.map((x) => x.maxDelayMs)),
    p99DelayMs: median(k.map((x) => x.p99DelayMs)),
    maxCpuMs: Math.max(...k.map((x) => x.maxCpuMs)),
    jsCpuMsPerVm: median(k.map((x) => x.jsCpuMsPerVm)),
    idleMaxDelayMs: Math.max(...b.map((x) => x.idleMaxDelayMs)),
    idleMedianMaxDelayMs: median(b.map((x) => x.idleMaxDelayMs)),
    idleP99DelayMs: median(b.map((x) => x.idleP99DelayMs)),
    bytes: { kindling: k[0].bytes, baseline: b[0].bytes },
    rounds_: k.map((x, i) => ({ kindling: x.rate, baseline: b[i].rate, maxDelayMs: x.maxDelayMs, maxCpuMs: x.maxCpuMs, longest: x.longest, idleMaxDelayMs: b[i].idleMaxDelayMs })),
  };
};

exports.run = async function run() {
  const r = await exports.measure();
  for (const [i, x] of r.rounds_.entries()) {
    const l = x.longest;
    const parts = l ? ` (longest gap ${l.gapMs.toFixed(1)} ms: ${l.cpuMs.toFixed(1)} ms on CPU, ${l.involuntary} preemptions, ${l.voluntary} waits)` : '';
    console.log(`startrate round ${i + 1}: Kindling ${x.kindling.toFixed(1)} VMs/s, baseline ${x.baseline.toFixed(1)} processes/s; event loop: longest stall ${x.maxDelayMs.toFixed(1)} ms${parts}, most JS-thread CPU time in one stall ${x.maxCpuMs.toFixed(1)} ms; an idle event loop during the baseline round: longest stall ${x.idleMaxDelayMs.toFixed(1)} ms`);
  }
  console.log(`startrate: ${r.n} tiny guests at once, each to its exit (${r.bytes.kindling} / ${r.bytes.baseline} console bytes each): Kindling ${r.kindlingRate.toFixed(1)} VMs/s, baseline ${r.baselineRate.toFixed(1)} processes/s, ratio ${r.ratio.toFixed(2)} (medians of ${r.rounds} rounds); event loop while they run: longest stall ${r.maxDelayMs.toFixed(1)} ms (median of the rounds' longest ${r.medianMaxDelayMs.toFixed(1)} ms, p99 ${r.p99DelayMs.toFixed(1)} ms), of which the JavaScript thread ran at most ${r.maxCpuMs.toFixed(1)} ms; JavaScript-thread CPU time ${r.jsCpuMsPerVm.toFixed(2)} ms per VM; an idle event loop while the baseline runs: longest stall ${r.idleMaxDelayMs.toFixed(1)} ms (median ${r.idleMedianMaxDelayMs.toFixed(1)} ms, p99 ${r.idleP99DelayMs.toFixed(1)} ms)`);
};
