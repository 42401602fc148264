// Sharding experiment: the start-rate workload (N tiny guests at once, each to its exit) with the
// VMs spread over W worker threads (each its own event loop and exit dispatch), against all of
// them on the main thread. Reported: VMs/s, and the longest stall of the main thread's event loop
// (which does nothing but wait) and of the busiest worker's. Tells whether a second JavaScript
// thread would buy start rate or loop latency.
//
//   KINDLING_BENCH_N        VMs per round (default 50)
//   KINDLING_BENCH_WORKERS  comma-separated worker counts (default 0,1,2; 0 = main thread)
'use strict';
const path = require('path');
const { Worker, isMainThread, parentPort } = require('worker_threads');

const GUEST = path.join(__dirname, '../test/guests/out/hello.elf');

async function one(MicroVM, i) {
  const vm = new MicroVM({ id: `shard-${i}` }).memory(128).kernel(GUEST);
  vm.on('serial', () => {});
  await vm.start();
  const info = await vm.wait();
  if (info.reason !== 'reset') throw new Error(`VM ended with ${info.reason}: ${info.message ?? ''}`);
}

if (!isMainThread) {
  const { MicroVM } = require('kindling');
  const { monitorEventLoopDelay } = require('perf_hooks');
  parentPort.on('message', async (n) => {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    await Promise.all(Array.from({ length: n }, (_, i) => one(MicroVM, i)));
    h.disable();
    parentPort.postMessage({ maxDelayMs: h.max / 1e6 });
  });
} else {
  exports.run = async function run() {
    const { MicroVM } = require('kindling');
    const stalls = require('./stall-monitor');
    const N = Number(process.env.KINDLING_BENCH_N || 50);
    const counts = (process.env.KINDLING_BENCH_WORKERS || '0,1,2').split(',').map(Number);
    await one(MicroVM, -1);
    for (const w of counts) {
      const workers = Array.from({ length: w }, () => new Worker(__filename));
      // Warm each worker up (loads the addon and compiles the paths) before timing.
      await Promise.all(workers.map((wk) => new Promise((resolve) => { wk.once('message', resolve); wk.postMessage(1); })));
      const mon = stalls.start();
      const t0 = process.hrtime.bigint();
      let workerMax = 0;
      if (w === 0) {
        await Promise.all(Array.from({ length: N }, (_, i) => one(MicroVM, i)));
      } else {
        const res = await Promise.all(workers.map((wk, i) => new Promise((resolve) => {
          wk.once('message', resolve);
          wk.postMessage(Math.floor(N / w) + (i < N % w ? 1 : 0));
        })));
        workerMax = Math.max(...res.map((r) => r.maxDelayMs));
      }
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const st = mon.stop();
      await Promise.all(workers.map((wk) => wk.terminate()));
      console.log(`shard: ${N} VMs on ${w === 0 ? 'the main thread' : `${w} worker thread(s)`}: ${(N / s).toFixed(1)} VMs/s; main event loop longest stall ${st.maxDelayMs.toFixed(1)} ms (p99 ${st.p99DelayMs.toFixed(1)} ms)${w ? `, busiest worker's ${workerMax.toFixed(1)} ms` : ''}`);
    }
  };
}
