/**
 * virtio-blk host-side throughput: the mock driver keeps a fixed number of requests queued against
 * a BlockDevice behind a virtio-mmio transport, backed by a temp file that sits in the page cache.
 * Measures the device + virtqueue + libuv file I/O path, no KVM. Prints numbers, judges nothing.
 *
 *   node -r bench/register-ts.js bench/block.bench.ts   (or: node bench/run.js block)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GuestMemory } from '../lib/memory/guest-memory';
import type { IrqLine } from '../lib/bus';
import { MmioTransport } from '../lib/virtio/mmio';
import { BlockDevice, FileBackend, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../lib/devices/block';
import { BumpAllocator, MockMmioDriver } from '../lib/testing/mock-driver';

const FILE_SIZE = 256 * 1024 * 1024;
const SECONDS = Number(process.env.BLOCK_BENCH_SECONDS ?? 2);

interface Case {
  name: string;
  type: number;
  len: number;
  depth: number;
  random: boolean;
}

async function runCase(file: string, c: Case): Promise<{ reqs: number; bytes: number; secs: number }> {
  const mem = GuestMemory.anonymous(64 * 1024 * 1024);
  const alloc = new BumpAllocator(mem);
  let onIrq = () => {};
  const irq: IrqLine = { setLevel: () => {}, trigger: () => queueMicrotask(onIrq) };
  const backend = await FileBackend.open(file, false);
  const device = new BlockDevice({ id: 'bench', backend, readOnly: false, cacheType: 'unsafe' });
  const transport = new MmioTransport(device, { mem, irq });
  const driver = new MockMmioDriver(transport, mem);
  const [vq] = driver.bringUp(alloc, [256]);

  const sectors = FILE_SIZE / 512;
  const perReq = c.len / 512;
  const slots = Array.from({ length: c.depth }, () => ({
    hdr: alloc.alloc(16),
    data: alloc.alloc(c.len, 4096),
    status: alloc.alloc(1, 1),
  }));
  const slotOfHead = new Map<number, number>();
  let seq = 0;
  const submit = (slot: number) => {
    const s = slots[slot];
    const sector = c.random ? Math.floor(Math.random() * (sectors / perReq)) * perReq : (seq++ * perReq) % sectors;
    mem.writeU32(s.hdr, c.type);
    mem.writeU32(s.hdr + 4, 0);
    mem.writeU64(s.hdr + 8, BigInt(sector));
    const head = vq.addChain([
      { addr: s.hdr, len: 16 },
      { addr: s.data, len: c.len, write: c.type === VIRTIO_BLK_T_IN },
      { addr: s.status, len: 1, write: true },
    ]);
    slotOfHead.set(head, slot);
  };

  let reqs = 0;
  let running = true;
  let finish: () => void = () => {};
  const finished = new Promise<void>((r) => (finish = r));
  onIrq = () => {
    driver.handleInterrupt();
    const done = vq.readUsed();
    // Re-arm the EVENT_IDX threshold as Linux's virtqueue_enable_cb does: interrupt on the next one.
    vq.setUsedEvent(vq.lastUsedIdx);
    for (const u of done) {
      const slot = slotOfHead.get(u.id)!;
      slotOfHead.delete(u.id);
      if (mem.readU8(slots[slot].status) !== 0) throw new Error('request failed');
      reqs++;
      if (running) submit(slot);
    }
    if (running) driver.notify(0);
    else if (slotOfHead.size === 0) finish();
  };

  for (let i = 0; i < c.depth; i++) submit(i);
  const t0 = process.hrtime.bigint();
  driver.notify(0);
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  running = false;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const counted = reqs;
  await finished;
  await device.close();
  return { reqs: counted, bytes: counted * c.len, secs };
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-blk-bench-'));
  const file = path.join(dir, 'disk.img');
  try {
    // Written (not just truncated) so every page is in the page cache.
    const chunk = Buffer.alloc(4 * 1024 * 1024, 0x5a);
    const fd = fs.openSync(file, 'w');
    for (let off = 0; off < FILE_SIZE; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
    fs.closeSync(fd);
    const cases: Case[] = [
      { name: '4 KiB random read, QD 64', type: VIRTIO_BLK_T_IN, len: 4096, depth: 64, random: true },
      { name: '4 KiB random write, QD 64', type: VIRTIO_BLK_T_OUT, len: 4096, depth: 64, random: true },
      { name: '128 KiB sequential read, QD 32', type: VIRTIO_BLK_T_IN, len: 128 * 1024, depth: 32, random: false },
      { name: '128 KiB sequential write, QD 32', type: VIRTIO_BLK_T_OUT, len: 128 * 1024, depth: 32, random: false },
    ];
    console.log(`block: virtio-blk host side, ${os.cpus().length} CPUs, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? 4}, ${SECONDS}s each`);
    for (const c of cases) {
      const r = await runCase(file, c);
      const rps = r.reqs / r.secs;
      const gibs = r.bytes / r.secs / 2 ** 30;
      console.log(`  ${c.name.padEnd(32)} ${Math.round(rps).toString().padStart(8)} req/s  ${gibs.toFixed(2).padStart(6)} GiB/s`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
