// Host set-up time: from start() being called until it resolves with the vCPU threads running,
// for a 128 MiB VM booting ../shared/guest/vmlinux (KINDLING_BENCH_KERNEL: another vmlinux or a
// bzImage; a bzImage is a tenth of the bytes to read and copy). Also reported: time to the first serial byte
// (that includes guest execution, which on emulated KVM is ~1000x slower than hardware).
'use strict';
const path = require('path');
const { MicroVM } = require('kindling');

const KERNEL = process.env.KINDLING_BENCH_KERNEL || path.join(__dirname, '../../shared/guest/vmlinux');
const RUNS = Number(process.env.KINDLING_BENCH_RUNS || 20);

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s[s.length - 1] };
}

exports.run = async function run() {
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const vm = new MicroVM({ id: `bench-${i}` }).memory(128).kernel(KERNEL, { cmdline: 'console=ttyS0 reboot=k panic=-1' });
    const t0 = process.hrtime.bigint();
    await vm.start();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    await vm.stop();
  }
  const s = stats(times);
  console.log(`setup: start() to running vCPUs, 128 MiB, ${path.basename(KERNEL)}: min ${s.min.toFixed(2)} ms, median ${s.median.toFixed(2)} ms, max ${s.max.toFixed(2)} ms (${RUNS} runs)`);
};
