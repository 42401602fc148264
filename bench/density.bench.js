// Host memory per VM: RSS of this process with 1, 10 and 50 idle small VMs (the echo test guest,
// waiting for input with its vCPU halted), minus the guest RAM they touched (measured from the
// guest's own footprint: pages of the mapping that are resident, via /proc/self/smaps).
'use strict';
const path = require('path');
const fs = require('fs');
const { MicroVM } = require('kindling');

const GUEST = path.join(__dirname, '../test/guests/out/echo.elf');

/**
 * Resident bytes from one read of /proc/self/smaps: all mappings, and those of exactly the guest
 * memory size (the guests' RAM). Both from the same instant, so their difference is the host's.
 */
function resident(guestSizeBytes) {
  const smaps = fs.readFileSync('/proc/self/smaps', 'utf8').split('\n');
  let total = 0;
  let guest = 0;
  let isGuest = false;
  for (const line of smaps) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      isGuest = parseInt(m[2], 16) - parseInt(m[1], 16) === guestSizeBytes;
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (!r) continue;
    total += Number(r[1]) * 1024;
    if (isGuest) guest += Number(r[1]) * 1024;
  }
  return { total, guest };
}

async function idle(n) {
  const vms = [];
  for (let i = 0; i < n; i++) {
    const vm = new MicroVM({ id: `idle-${i}` }).memory(16).kernel(GUEST);
    let out = '';
    vm.on('serial', (c) => { out += c; });
    await vm.start();
    while (!out.includes('KT: READY')) await new Promise((r) => setTimeout(r, 2));
    vms.push(vm);
  }
  global.gc?.();
  await new Promise((r) => setTimeout(r, 200));
  const r = resident(16 * 1024 * 1024);
  for (const vm of vms) await vm.stop();
  return r;
}

exports.run = async function run() {
  // A first VM loads the guest image, the addon and the JIT-compiled paths: not per-VM costs.
  await idle(1);
  global.gc?.();
  const base = resident(16 * 1024 * 1024);
  for (const n of [1, 10, 50]) {
    const r = await idle(n);
    const host = r.total - r.guest - (base.total - base.guest);
    console.log(`density: ${n} idle VMs: RSS ${(r.total / 1048576).toFixed(1)} MiB, of which guest RAM ${(r.guest / 1048576).toFixed(1)} MiB; host memory added ${(host / n / 1024).toFixed(0)} KiB per VM`);
  }
};
