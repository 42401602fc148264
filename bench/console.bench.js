// Console cost: boots ../shared/guest/vmlinux to its init with the console on, and reports how many
// UART accesses reached JavaScript per byte the guest printed. Linux's 8250 console polls LSR
// before every character; the native LSR read cache answers those polls on the vCPU thread, so
// what remains is one posted THR write per byte (no vCPU wait) and a few reads per line.
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');
const { MicroVM } = require('kindling');
const { buildInitramfs } = require('../scripts/initramfs');

const KERNEL = process.env.KINDLING_BENCH_KERNEL || path.join(__dirname, '../../shared/guest/vmlinux');

exports.run = async function run() {
  const initrd = path.join(os.tmpdir(), `kindling-bench-initrd-${process.pid}.gz`);
  fs.writeFileSync(initrd, buildInitramfs());
  try {
    const vm = new MicroVM({ id: 'bench-console' }).memory(128)
      .kernel(KERNEL, { cmdline: 'console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd', initrd });
    const t0 = process.hrtime.bigint();
    await vm.start();
    const info = await vm.wait();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const m = vm.metrics();
    const bytes = m.serial.txBytes;
    console.log(`console: ${bytes} bytes printed in ${s.toFixed(2)} s (ended: ${info.reason}); port reads that reached JS: ${m.exits.pioReads} (${(m.exits.pioReads / bytes).toFixed(3)} per byte), posted port writes: ${m.exits.pioWrites}`);
  } finally {
    fs.rmSync(initrd, { force: true });
  }
};
