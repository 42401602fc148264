#!/usr/bin/env node
// Two microVMs on one in-process VirtualSwitch ping each other; no root, no TAP. The host program
// watches the frames on a port of its own.
//
//   node examples/switch.js
'use strict';
const { MicroVM, VirtualSwitch } = require('kindling');
const { testGuest } = require('kindling/testing');

async function main() {
  const sw = new VirtualSwitch();
  const tap = sw.attach(); // a host port: every flooded or addressed frame shows up here
  let frames = 0;
  tap.on('data', () => frames++);

  const guest = (ip, peer, mac) => new MicroVM({ id: `vm-${ip.split('.').pop()}` })
    .memory(32)
    .kernel(testGuest('net'), { cmdline: `console=ttyS0 net.ip=${ip} net.peer=${peer} net.mmds=none net.linger=60000` })
    .nic('eth0', { link: sw, mac });
  const vms = [guest('10.0.0.2', '10.0.0.3', '06:00:0a:00:00:02'), guest('10.0.0.3', '10.0.0.2', '06:00:0a:00:00:03')];
  for (const vm of vms) {
    let line = '';
    vm.on('serial', (chunk) => {
      line += chunk.toString('latin1');
      const lines = line.split('\n');
      line = lines.pop();
      for (const l of lines) console.log(`[${vm.id}] ${l}`);
    });
  }
  await Promise.all(vms.map((vm) => vm.start()));
  await Promise.all(vms.map((vm) => vm.wait()));
  console.log(`host port saw ${frames} frames; switch: ${JSON.stringify(sw.metrics())}`);
  tap.destroy();
}

main().catch((e) => { console.error(e); process.exit(1); });
