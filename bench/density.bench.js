// Host memory per VM: RSS of this process with 1, 10, 50 and 500 idle 32 MiB VMs (the echo test
// guest, waiting for input with its vCPU halted), minus the guest RAM they touched (pages of the
// guest mappings that are resident, from the same /proc/self/smaps snapshot). Against the C
// baseline (bench/baseline): the same guest in one process per VM, RSS of each process minus its
// guest RAM, the same way.
//
//   KINDLING_BENCH_DENSITY  comma-separated VM counts (default 1,10,50,500)
'use strict';
const path = require('path');
const { MicroVM } = require('kindling');
const baseline = require('./baseline');

const GUEST = path.join(__dirname, '../test/guests/out/echo.elf');
const MEM_MIB = 32;
const GUEST_BYTES = MEM_MIB * 1024 * 1024;
const COUNTS = (process.env.KINDLING_BENCH_DENSITY || '1,10,50,500').split(',').map(Number);
/** VMs started at once while filling the process (a start burst, not one by one). */
const START_BATCH = 50;

async function startIdle(i) {
  const vm = new MicroVM({ id: `idle-${i}` }).memory(MEM_MIB).kernel(GUEST);
  let out = '';
  const ready = new Promise((resolve) => {
    const onSerial = (c) => {
      out += c.toString('latin1');
      if (out.includes('KT: READY')) {
        vm.off('serial', onSerial);
        resolve();
      }
    };
    vm.on('serial', onSerial);
  });
  await vm.start();
  await ready;
  return vm;
}

async function kindlingIdle(n) {
  const vms = [];
  for (let i = 0; i < n; i += START_BATCH) {
    vms.push(...await Promise.all(Array.from({ length: Math.min(START_BATCH, n - i) }, (_, j) => startIdle(i + j))));
  }
  global.gc?.();
  await new Promise((r) => setTimeout(r, 300));
  const r = baseline.residentOf('self', GUEST_BYTES);
  await Promise.all(vms.map((vm) => vm.stop()));
  return r;
}

async function baselineIdle(n, cmdline) {
  const idle = await baseline.startIdle(n, GUEST, MEM_MIB, cmdline);
  try {
    let host = 0;
    let total = 0;
    for (const pid of idle.pids) {
      const r = baseline.residentOf(pid, GUEST_BYTES);
      host += r.total - r.guest;
      total += r.total;
    }
    return { perVm: host / n, total };
  } finally {
    await idle.stop();
  }
}

exports.measure = async function measure() {
  baseline.build();
  // A first VM loads the guest image, the addon and the JIT-compiled paths: not per-VM costs.
  const warm = await startIdle(-1);
  const cmdline = warm.cmdline;
  await warm.stop();
  global.gc?.();
  await new Promise((r) => setTimeout(r, 300));
  const base = baseline.residentOf('self', GUEST_BYTES);
  const kindling = [];
  for (const n of COUNTS) {
    const r = await kindlingIdle(n);
    const host = r.total - r.guest - (base.total - base.guest);
    kindling.push({ n, rssMiB: r.total / 1048576, guestMiB: r.guest / 1048576, perVmKiB: host / n / 1024 });
  }
  const b = await baselineIdle(Math.min(20, Math.max(...COUNTS)), cmdline);
  return { kindling, baselinePerVmKiB: b.perVm / 1024, baselineProcesses: Math.min(20, Math.max(...COUNTS)) };
};

exports.run = async function run() {
  const r = await exports.measure();
  for (const k of r.kindling) {
    console.log(`density: ${k.n} idle ${MEM_MIB} MiB VMs in one process: RSS ${k.rssMiB.toFixed(1)} MiB, of which guest RAM ${k.guestMiB.toFixed(1)} MiB; host memory added ${k.perVmKiB.toFixed(0)} KiB per VM`);
  }
  const last = r.kindling[r.kindling.length - 1];
  console.log(`density: baseline, ${r.baselineProcesses} idle VMs one process each: host memory ${r.baselinePerVmKiB.toFixed(0)} KiB per VM (RSS minus guest RAM); Kindling at ${last.n} VMs ${last.perVmKiB.toFixed(0)} KiB per VM, ratio ${(last.perVmKiB / r.baselinePerVmKiB).toFixed(3)}`);
};
