// Host set-up time: from start() being called until it resolves with the vCPU threads running, for
// a 128 MiB VM, with the tiny test guest (test/guests hello.elf) and with a 17 MB vmlinux
// (../shared/guest/vmlinux; KINDLING_BENCH_KERNEL: another vmlinux or a bzImage). Against the C
// baseline (bench/baseline), which does the same set-up from its main() to its first KVM_RUN in a
// process of its own; Kindling's start() and the baseline's set-up alternate, one VM at a time.
//
//   KINDLING_BENCH_RUNS  runs of each (default 20); medians are reported
'use strict';
const path = require('path');
const fs = require('fs');
const { MicroVM } = require('kindling');
const baseline = require('./baseline');

const TINY = path.join(__dirname, '../test/guests/out/hello.elf');
// The shared guest kernel: ../shared from the main checkout, ../../shared from a worktree.
const KERNEL = process.env.KINDLING_BENCH_KERNEL
  || [path.join(__dirname, '../../shared/guest/vmlinux'), path.join(__dirname, '../../../shared/guest/vmlinux')].find((p) => fs.existsSync(p))
  || path.join(__dirname, '../../shared/guest/vmlinux');
const RUNS = Number(process.env.KINDLING_BENCH_RUNS || 20);
const MEM_MIB = 128;
/** Pause before each measured set-up (KINDLING_BENCH_SETTLE_MS). */
const SETTLE_MS = Number(process.env.KINDLING_BENCH_SETTLE_MS ?? 50);
const CMDLINE = 'console=ttyS0 reboot=k panic=-1';

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s[s.length - 1] };
}

async function kindlingStart(kernel, i) {
  const vm = new MicroVM({ id: `setup-${i}` }).memory(MEM_MIB).kernel(kernel, { cmdline: CMDLINE });
  const t0 = process.hrtime.bigint();
  await vm.start();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const cmdline = vm.cmdline;
  await vm.stop();
  return { ms, cmdline };
}

/** Medians of Kindling's start() and the baseline's set-up for `kernel`, alternating. */
exports.measure = async function measure(kernel) {
  baseline.build();
  const warm = await kindlingStart(kernel, -1);
  baseline.runOne(kernel, MEM_MIB, warm.cmdline, true);
  const k = [];
  const b = [];
  // Each measurement starts after a pause: tearing the previous VM down leaves work to the kernel
  // (RCU callbacks, the PIT's thread, freeing the VM's memory) that would otherwise land on
  // whichever set-up comes next.
  const settle = () => new Promise((r) => setTimeout(r, SETTLE_MS));
  for (let i = 0; i < RUNS; i++) {
    await settle();
    k.push((await kindlingStart(kernel, i)).ms);
    await settle();
    b.push(baseline.runOne(kernel, MEM_MIB, warm.cmdline, true).setupNs / 1e6);
  }
  const ks = stats(k);
  const bs = stats(b);
  return { kernel: path.basename(kernel), runs: RUNS, kindling: ks, baseline: bs, ratio: ks.median / bs.median };
};

exports.KERNEL = KERNEL;

exports.run = async function run() {
  const kernels = [TINY];
  if (fs.existsSync(KERNEL)) kernels.push(KERNEL);
  else console.log(`setup: ${KERNEL} not found, only the tiny guest is measured`);
  for (const kernel of kernels) {
    const r = await exports.measure(kernel);
    console.log(`setup: start() to running vCPUs, ${MEM_MIB} MiB, ${r.kernel}: Kindling median ${r.kindling.median.toFixed(2)} ms (min ${r.kindling.min.toFixed(2)}, max ${r.kindling.max.toFixed(2)}), baseline set-up median ${r.baseline.median.toFixed(2)} ms (min ${r.baseline.min.toFixed(2)}, max ${r.baseline.max.toFixed(2)}), ratio ${r.ratio.toFixed(2)} (${r.runs} runs each)`);
  }
};
