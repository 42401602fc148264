#!/usr/bin/env node
// A microVM on a host TAP, with the metadata service: the guest resolves and pings the host's end
// of the TAP, then fetches its instance id from 169.254.169.254 with the v2 token flow.
// Needs root: it creates a network namespace `kindling-demo` holding the TAP at 10.215.0.1, and
// deletes it at the end.
//
//   sudo node examples/mmds-tap.js
'use strict';
const { execFileSync } = require('child_process');
const { MicroVM } = require('kindling');
const { testGuest } = require('kindling/testing');

const ns = 'kindling-demo';
const tap = 'kdemo0';
const ip = (...args) => execFileSync('ip', args, { stdio: 'inherit' });

async function main() {
  ip('netns', 'add', ns);
  ip('tuntap', 'add', 'dev', tap, 'mode', 'tap');
  try {
    const vm = new MicroVM({ id: 'mmds-demo' })
      .memory(32)
      .kernel(testGuest('net'), { cmdline: 'console=ttyS0 net.ip=10.215.0.2 net.peer=10.215.0.1' })
      .nic('eth0', { tap, mac: '06:00:0a:d7:00:02' })
      .mmds({ version: 'v2', nics: ['eth0'] });
    vm.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-0123456789', 'local-ipv4': '10.215.0.2' } } });
    vm.on('serial', (c) => process.stdout.write(c));
    await vm.start(); // the NIC has the TAP open now; move it into the namespace and give it its address
    ip('link', 'set', tap, 'netns', ns);
    ip('-n', ns, 'addr', 'add', '10.215.0.1/24', 'dev', tap);
    ip('-n', ns, 'link', 'set', tap, 'up');
    await vm.wait();
    console.log(JSON.stringify((await vm.metrics()).nics.eth0, null, 1));
  } finally {
    try { execFileSync('ip', ['link', 'del', tap], { stdio: 'ignore' }); } catch { /* moved into the namespace */ }
    ip('netns', 'del', ns);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
