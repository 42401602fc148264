#!/usr/bin/env node
// Boots a microVM and streams its serial console to this terminal.
//
//   node examples/boot.js                        the demo guest (test/guests/out/hello.elf)
//   node examples/boot.js --linux [KERNEL]       a Linux kernel, vmlinux or bzImage (default: the
//                                                one scripts/build-kernel.sh builds into kernel/out,
//                                                else ../shared/guest/vmlinux), with a busybox
//                                                initramfs and 2 vCPUs
//   options: --vcpus N  --memory MIB  --cmdline "..."  --kernel PATH
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');
const { MicroVM, isKvmAvailable } = require('kindling');
const { buildInitramfs } = require('../scripts/initramfs');

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] && !args[i + 1].startsWith('--') ? args[i + 1] : dflt;
};

/** The kernel scripts/build-kernel.sh builds, else the one this project's workplace shares. */
function defaultLinuxKernel() {
  const candidates = [path.join(__dirname, '../kernel/out/vmlinux'), path.join(__dirname, '../../shared/guest/vmlinux')];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    console.error('No Linux kernel found: build one with `bash scripts/build-kernel.sh` (about 10 minutes), or pass --linux PATH.');
    process.exit(2);
  }
  return found;
}

async function main() {
  const kvm = isKvmAvailable();
  if (!kvm.ok) {
    console.error(`KVM is not available here: ${kvm.reason}`);
    process.exit(2);
  }
  const linux = flag('--linux');
  const vm = new MicroVM({ id: linux ? 'linux-demo' : 'demo' });
  if (linux) {
    const kernel = value('--linux', value('--kernel', defaultLinuxKernel()));
    const initrd = path.join(os.tmpdir(), `kindling-demo-initramfs-${process.pid}.cpio.gz`);
    fs.writeFileSync(initrd, buildInitramfs());
    process.on('exit', () => fs.rmSync(initrd, { force: true }));
    vm.vcpus(Number(value('--vcpus', '2')))
      .memory(Number(value('--memory', '256')))
      .kernel(kernel, { initrd, cmdline: value('--cmdline', 'console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd') });
  } else {
    const kernel = value('--kernel', path.join(__dirname, '../test/guests/out/hello.elf'));
    vm.vcpus(Number(value('--vcpus', '1')))
      .memory(Number(value('--memory', '64')))
      .kernel(kernel, { cmdline: value('--cmdline', 'console=ttyS0 demo=1') });
  }
  vm.on('serial', (chunk) => process.stdout.write(chunk));
  process.on('SIGINT', () => void vm.stop());
  const t0 = process.hrtime.bigint();
  await vm.start();
  const info = await vm.wait();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.error(`\n[kindling] VM ${vm.id} ended: ${JSON.stringify(info, (k, v) => (typeof v === 'bigint' ? '0x' + v.toString(16) : v))} after ${ms.toFixed(0)} ms`);
  process.exit(info.reason === 'error' ? 1 : 0);
}

main().catch((e) => {
  console.error(`[kindling] ${e.name}${e.code ? ` (${e.code})` : ''}: ${e.message}`);
  process.exit(1);
});
