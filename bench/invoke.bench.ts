/**
 * vm.invoke() round trip through the vsock device with the mock driver (no KVM): an Invoker over
 * a VsockDevice, a mock guest agent (lib/testing/mock-agent.ts) answering on the guest's interrupts.
 * One invocation at a time on a reused connection, so each number is a full round trip: encode,
 * host write, device to guest, agent decode/echo, guest to device, host read, decode, resolve.
 * The agent's own work is included (it is small). Prints numbers, judges nothing. Target
 * (issue #9): <= 50 us host side.
 *
 *   node -r bench/register-ts.js bench/invoke.bench.ts   (or: node bench/run.js invoke)
 */
import { checkVsockOptions, createVsockDevice } from '../lib/devices/vsock';
import { Invoker } from '../lib/invoke';
import { MockVsockGuest } from '../lib/testing/mock-vsock';
import { MockGuestAgent } from '../lib/testing/mock-agent';

const COUNT = Number(process.env.INVOKE_BENCH_COUNT ?? 20000);

async function run(label: string, payload: () => unknown): Promise<void> {
  const device = createVsockDevice(checkVsockOptions({ guestCid: 3 }), {
    timers: { setTimeout: (cb, ms) => setTimeout(cb, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
    listenUnix: () => Promise.reject(new Error('unused')),
    connectUnix: () => Promise.reject(new Error('unused')),
  });
  const guest = new MockVsockGuest(device);
  new MockGuestAgent(guest, 1024).attach();
  const invoker = new Invoker((port) => device.connect(port));
  for (let i = 0; i < 500; i++) await invoker.invoke(payload() as object); // warm-up, connection opened
  const lat = new Float64Array(COUNT);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < COUNT; i++) {
    const s = process.hrtime.bigint();
    await invoker.invoke(payload() as object);
    lat[i] = Number(process.hrtime.bigint() - s) / 1000;
  }
  const total = Number(process.hrtime.bigint() - t0) / 1000;
  lat.sort();
  const pct = (p: number) => lat[Math.min(COUNT - 1, Math.floor(p * COUNT))].toFixed(1);
  const slow = lat.filter((x) => x > 1000).length;
  console.log(`  ${label.padEnd(28)} max ${lat[COUNT - 1].toFixed(0)} us, ${slow} calls over 1 ms`);
  console.log(`  ${label.padEnd(28)} mean ${(total / COUNT).toFixed(1).padStart(6)} us  p50 ${pct(0.5).padStart(6)}  p99 ${pct(0.99).padStart(6)}  (${COUNT} calls, 1 connection)`);
  invoker.close();
  await device.close();
}

async function main(): Promise<void> {
  console.log('invoke: round trip through the vsock device, mock driver and mock guest agent');
  await run('JSON {"op":"ping","n":i}', (() => { let n = 0; return () => ({ op: 'ping', n: n++ }); })());
  const bytes = Buffer.alloc(4096, 1);
  await run('4 KiB bytes', () => bytes);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
