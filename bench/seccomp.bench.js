// Cost of the vCPU threads' seccomp filter on the exit path: port-read round trips per second
// (guest `in` -> KVM exit -> exit queue -> JavaScript handler -> answer -> KVM_RUN), with and
// without the filter. Every round trip makes the vCPU thread's KVM_RUN ioctl, futex calls and the
// event-loop wake-up pass through the filter. A two-instruction real-mode guest loops on `in`;
// rounds alternate between the two modes so that drift on a shared machine hits both alike.
// Also printed: the vCPU thread's own CPU time per round trip (/proc/self/task/<tid>/schedstat),
// which is where the filter runs and which other load on the machine disturbs far less than the
// rate does.
//
//   node --expose-gc bench/run.js seccomp     (KINDLING_BENCH_ROUNDS, KINDLING_BENCH_ROUND_MS)
'use strict';
require('./register-ts');
const fs = require('fs');
const { loadNative } = require('../lib/native/binding');
const { vcpuSeccompFilter } = require('../lib/seccomp');

const ROUNDS = Number(process.env.KINDLING_BENCH_ROUNDS || 8);
const ROUND_MS = Number(process.env.KINDLING_BENCH_ROUND_MS || 1500);
const WARMUP_MS = 200;
const CODE_AT = 0x1000;
const PORT = 0x80;
// mov dx, 0x80 ; loop: in al, dx ; jmp loop
const GUEST_CODE = [0xba, PORT, 0x00, 0xec, 0xeb, 0xfd];
const MEM_SIZE = 1 << 20;
const PIO_READ = 1;

/** CPU nanoseconds the thread named `comm` has run (schedstat's first field). */
function threadCpuNs(comm) {
  for (const t of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim() === comm) {
        return Number(fs.readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      }
    } catch {
      // the thread ended meanwhile
    }
  }
  return NaN;
}

/**
 * One VM running the loop for ROUND_MS; resolves with port reads per second after the warm-up and
 * the vCPU thread's CPU microseconds per read.
 */
function round(addon, filtered) {
  const kvm = addon.openKvm();
  const vm = kvm.createVm();
  const mem = vm.allocateMemory(MEM_SIZE);
  new Uint8Array(mem).set(GUEST_CODE, CODE_AT);
  vm.setUserMemoryRegion(0, 0, mem, 0, MEM_SIZE);
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
  vcpu.setSregs(sregs);
  vcpu.setRegs({ ...vcpu.getRegs(), rip: BigInt(CODE_AT), rflags: 2n });
  let reads = 0;
  vm.setExitHandlers({
    io(kind) {
      if (kind === PIO_READ) reads++;
      return 0;
    },
    event: () => 1,
    vcpuStopped: () => {},
  });
  vcpu.start(filtered ? vcpuSeccompFilter({ vcpuFd: vcpu.fd }) : undefined);
  return new Promise((resolve) => {
    setTimeout(() => {
      const r0 = reads;
      const c0 = threadCpuNs('kindling-cpu0');
      const t0 = process.hrtime.bigint();
      setTimeout(() => {
        const n = reads - r0;
        const perSecond = n / (Number(process.hrtime.bigint() - t0) / 1e9);
        const cpuUs = (threadCpuNs('kindling-cpu0') - c0) / 1e3 / n;
        vm.close();
        kvm.close();
        resolve({ perSecond, cpuUs });
      }, ROUND_MS);
    }, WARMUP_MS);
  });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

exports.run = async function run() {
  const addon = loadNative();
  const on = [];
  const off = [];
  for (let i = 0; i < ROUNDS; i++) {
    // ABBA order: neither mode always runs first.
    const order = i % 2 ? [true, false] : [false, true];
    for (const filtered of order) (filtered ? on : off).push(await round(addon, filtered));
    global.gc?.();
  }
  const rate = (xs) => xs.map((x) => x.perSecond);
  const cpu = (xs) => xs.map((x) => x.cpuUs);
  const mOn = median(rate(on));
  const mOff = median(rate(off));
  const cOn = median(cpu(on));
  const cOff = median(cpu(off));
  const fmt = (xs, digits) => xs.map((x) => x.toFixed(digits)).join(' ');
  console.log(`seccomp: PIO read round trips/s without filter ${Math.round(mOff)} (rounds: ${fmt(rate(off), 0)})`);
  console.log(`seccomp: PIO read round trips/s with filter    ${Math.round(mOn)} (rounds: ${fmt(rate(on), 0)})`);
  console.log(`seccomp: rate with/without = ${(mOn / mOff).toFixed(4)} (${((1 - mOn / mOff) * 100).toFixed(2)}% slower; ${ROUNDS} rounds of ${ROUND_MS} ms each)`);
  console.log(`seccomp: vCPU thread CPU per round trip: without ${cOff.toFixed(3)} us (rounds: ${fmt(cpu(off), 3)})`);
  console.log(`seccomp: vCPU thread CPU per round trip: with    ${cOn.toFixed(3)} us (rounds: ${fmt(cpu(on), 3)})`);
  console.log(`seccomp: CPU with/without = ${(cOn / cOff).toFixed(4)} (+${(cOn - cOff).toFixed(3)} us per round trip)`);
};

if (require.main === module) {
  exports.run().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
