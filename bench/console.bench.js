// Console cost: JavaScript callbacks per byte the guest prints.
//
// 1. Steady output: the spew test guest (test/guests spew.elf) prints KINDLING_BENCH_SPEW lines
//    (default 1000, 57 bytes each) as fast as it can, polling LSR before every byte as Linux's
//    8250 driver does. Reported: exit-handler calls into JavaScript per byte (the native layer
//    batches THR writes into one record per event-loop wake, and LSR polls are answered from its
//    read cache), 'serial' events per byte, and the vCPU-to-JavaScript wakes.
// 2. Linux (unless KINDLING_BENCH_CONSOLE=tiny): boots ../shared/guest/vmlinux to its init with
//    the console on, and reports the same for the kernel's own console output.
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');
const { MicroVM } = require('kindling');
const { buildInitramfs } = require('../scripts/initramfs');

const SPEW = path.join(__dirname, '../test/guests/out/spew.elf');
const LINES = Number(process.env.KINDLING_BENCH_SPEW || 1000);
const KERNEL = process.env.KINDLING_BENCH_KERNEL
  || [path.join(__dirname, '../../shared/guest/vmlinux'), path.join(__dirname, '../../../shared/guest/vmlinux')].find((p) => fs.existsSync(p))
  || path.join(__dirname, '../../shared/guest/vmlinux');

/** The native VM's exit counters (not a public API: read through the façade's private machine handle). */
function exitStats(vm) {
  return vm.handle.vm.exitStats();
}

/** Runs `vm` to its end; returns bytes, 'serial' events and the exit counters taken just before the end. */
async function measure(vm) {
  let bytes = 0;
  let events = 0;
  let stats;
  vm.on('serial', (c) => {
    bytes += c.length;
    events++;
  });
  const t0 = process.hrtime.bigint();
  await vm.start();
  // The counters go with the VM: sample them until it ends.
  const poll = setInterval(() => {
    try {
      stats = exitStats(vm);
    } catch { /* torn down */ }
  }, 5);
  vm.once('exit', () => clearInterval(poll));
  const info = await vm.wait();
  clearInterval(poll);
  return { info, bytes, events, stats, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

exports.measure = async function measureSpew() {
  const vm = new MicroVM({ id: 'bench-spew' }).memory(32).kernel(SPEW, { cmdline: `console=ttyS0 spew=${LINES}` });
  const r = await measure(vm);
  return {
    bytes: r.bytes,
    seconds: r.seconds,
    reason: r.info.reason,
    jsCallsPerByte: r.stats.jsCalls / r.bytes,
    serialEventsPerByte: r.events / r.bytes,
    wakesPerByte: r.stats.signals / r.bytes,
    txBatches: r.stats.txBatches,
  };
};

exports.run = async function run() {
  const s = await exports.measure();
  console.log(`console: steady output, ${s.bytes} bytes in ${s.seconds.toFixed(2)} s (ended: ${s.reason}): ${s.jsCallsPerByte.toFixed(4)} JavaScript callbacks per byte, ${s.serialEventsPerByte.toFixed(4)} 'serial' events per byte, ${s.wakesPerByte.toFixed(4)} wakes of the event loop per byte (${s.txBatches} transmit batches)`);
  if (process.env.KINDLING_BENCH_CONSOLE === 'tiny') return;
  if (!fs.existsSync(KERNEL)) {
    console.log(`console: ${KERNEL} not found, Linux part skipped`);
    return;
  }
  const initrd = path.join(os.tmpdir(), `kindling-bench-initrd-${process.pid}.gz`);
  fs.writeFileSync(initrd, buildInitramfs());
  try {
    const vm = new MicroVM({ id: 'bench-console' }).memory(128)
      .kernel(KERNEL, { cmdline: 'console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd', initrd });
    const r = await measure(vm);
    const m = vm.metrics();
    console.log(`console: Linux, ${r.bytes} bytes printed in ${r.seconds.toFixed(2)} s (ended: ${r.info.reason}): ${(r.stats.jsCalls / r.bytes).toFixed(4)} JavaScript callbacks per byte, ${(r.events / r.bytes).toFixed(4)} 'serial' events per byte; port reads that reached JS: ${m.exits.pioReads} (${(m.exits.pioReads / r.bytes).toFixed(3)} per byte), port writes: ${m.exits.pioWrites}`);
  } finally {
    fs.rmSync(initrd, { force: true });
  }
};
