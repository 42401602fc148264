// Host memory per VM: RSS of this process with 1, 10 and 50 idle small VMs (the echo test guest,
// waiting for input with its vCPU halted), minus the guest RAM they touched (measured from the
// guest's own footprint: pages of the mapping that are resident, via /proc/self/smaps).
'use strict';
const path = require('path');
const fs = require('fs');
const { MicroVM } = require('kindling');

const GUEST = path.join(__dirname, '../test/guests/out/echo.elf');

/** Resident bytes of guest-memory mappings (anonymous mappings of exactly the VM size). */
function guestResident(sizeBytes) {
  const smaps = fs.readFileSync('/proc/self/smaps', 'utf8').split('\n');
  let total = 0;
  for (let i = 0; i < smaps.length; i++) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(smaps[i]);
    if (!m) continue;
    if (parseInt(m[2], 16) - parseInt(m[1], 16) !== sizeBytes) continue;
    for (let j = i + 1; j < smaps.length && !/^[0-9a-f]+-/.test(smaps[j]); j++) {
      const r = /^Rss:\s+(\d+) kB/.exec(smaps[j]);
      if (r) total += Number(r[1]) * 1024;
    }
  }
  return total;
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
  const rss = process.memoryUsage().rss;
  const guest = guestResident(16 * 1024 * 1024);
  for (const vm of vms) await vm.stop();
  return { rss, guest };
}

exports.run = async function run() {
  const base = process.memoryUsage().rss;
  for (const n of [1, 10, 50]) {
    const { rss, guest } = await idle(n);
    const host = rss - base - guest;
    console.log(`density: ${n} idle VMs: RSS +${((rss - base) / 1048576).toFixed(1)} MiB, guest RAM touched ${(guest / 1048576).toFixed(1)} MiB, host overhead ${(host / n / 1024).toFixed(0)} KiB per VM`);
  }
};
