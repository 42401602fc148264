#!/usr/bin/env node
// A function runner in a dozen lines: boot a guest with an invoke agent on vsock port 1024, send it
// requests, read the answers. Here the agent is the freestanding vsock test guest (it echoes); a
// Linux guest runs guest/agent/out/kindling-agent, which can run a handler command per request
// (see docs/invoke-protocol.md).
//
//   node examples/invoke.js
'use strict';
const { MicroVM } = require('kindling');
const { testGuest } = require('kindling/testing');

async function main() {
  const vm = new MicroVM().memory(32).kernel(testGuest('vsock'), { cmdline: 'console=ttyS0 vsock.host_port=0' }).vsock({ guestCid: 3 });
  let ready;
  const listening = new Promise((r) => { ready = r; });
  vm.on('serial', (c) => { if (c.includes('listening=')) ready(); });
  await vm.start();
  await listening;
  for (const payload of [{ hello: 'world' }, 'bytes in, bytes out', [1, 2, 3]]) {
    const t0 = process.hrtime.bigint();
    const answer = await vm.invoke(payload, { timeoutMs: 5000 });
    console.log(`${JSON.stringify(payload)} -> ${Buffer.isBuffer(answer) ? `<${answer.toString()}>` : JSON.stringify(answer)} in ${Number(process.hrtime.bigint() - t0) / 1e3} µs`);
  }
  await vm.invoke('quit');
  console.log('ended:', (await vm.wait()).reason);
}

main().catch((e) => { console.error(e); process.exit(1); });
