/**
 * Balloon inflate rate: MiB/s of guest memory returned to the host, with a real anonymous mapping
 * (the addon's mapAnonymous) as guest RAM, every page touched first so it is resident. The mock
 * driver hands over 256 PFNs per buffer (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX), in order, and the
 * device releases them with madvise(MADV_DONTNEED) through the real balloon host. Prints the rate
 * and the RSS that went away; judges nothing.
 *
 *   node -r bench/register-ts.js bench/balloon.bench.ts   (or: node bench/run.js balloon)
 */
import { GuestMemory } from '../lib/memory/guest-memory';
import { MmioTransport } from '../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver } from '../lib/testing/mock-driver';
import { checkBalloonOptions, createBalloonDevice } from '../lib/devices/balloon';
import { createBalloonHost } from '../lib/vm/balloon-host';
import { loadNative } from '../lib/native/binding';

const MiB = 1024 * 1024;
const GUEST_MIB = Number(process.env.BALLOON_BENCH_MIB ?? 1024);
const PFNS_PER_BUFFER = 256;

function run(label: string, order: (pfns: number[]) => number[]): void {
  const addon = loadNative();
  const size = GUEST_MIB * MiB;
  const buffer = addon.mapAnonymous(size);
  const mem = new GuestMemory([{ guestAddr: 0, buffer, byteOffset: 0, size }]);
  const device = createBalloonDevice(checkBalloonOptions({ amountMib: GUEST_MIB - 16, deflateOnOom: false }), createBalloonHost(mem, addon));
  const transport = new MmioTransport(device, { mem, irq: new MockIrq() });
  const driver = new MockMmioDriver(transport, mem);
  const alloc = new BumpAllocator(mem, 0x1000, 16 * MiB);
  const [inflate] = driver.bringUp(alloc, [256, 256]);
  const bufs = Array.from({ length: 64 }, () => alloc.alloc(PFNS_PER_BUFFER * 4, 4096));
  // Touch every page so it is resident and costs host memory.
  const u32 = new Uint32Array(buffer);
  for (let i = 0; i < u32.length; i += 1024) u32[i] = i;
  const first = (16 * MiB) / 4096;
  const pfns = order(Array.from({ length: (size - 16 * MiB) / 4096 }, (_, i) => first + i));
  const rssBefore = addon.residentPages!();
  const t0 = process.hrtime.bigint();
  for (let at = 0, b = 0; at < pfns.length; at += PFNS_PER_BUFFER, b = (b + 1) % bufs.length) {
    const n = Math.min(PFNS_PER_BUFFER, pfns.length - at);
    for (let i = 0; i < n; i++) mem.writeU32(bufs[b] + 4 * i, pfns[at + i]);
    inflate.addChain([{ addr: bufs[b], len: n * 4 }]);
    driver.notify(0);
    inflate.readUsed();
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const rssAfter = addon.residentPages!();
  const m = device.metrics();
  const mib = m.releasedBytes / MiB;
  console.log(`  ${label.padEnd(22)} ${mib.toFixed(0)} MiB in ${(secs * 1000).toFixed(0)} ms: ${(mib / secs).toFixed(0).padStart(6)} MiB/s; RSS down ${(((rssBefore - rssAfter) * 4096) / MiB).toFixed(0)} MiB`);
}

function main(): void {
  console.log(`balloon: inflate ${GUEST_MIB - 16} MiB of a ${GUEST_MIB} MiB guest (real anonymous mapping), ${PFNS_PER_BUFFER} PFNs per buffer`);
  run('sequential PFNs', (p) => p);
  run('descending PFNs', (p) => p.reverse());
}

main();
