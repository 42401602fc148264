/**
 * Virtqueue overhead per request: pop + ChainReader/ChainWriter setup + addUsed +
 * needsNotification, driven by the unit tests' mock driver over an in-memory GuestMemory
 * (no KVM). Only the device side is timed. Prints µs/request; judges nothing.
 *
 *   node -r bench/register-ts.js bench/queue.bench.ts [requests]   (or: node bench/run.js queue)
 */
import { GuestMemory } from '../lib/memory/guest-memory';
import { Queue } from '../lib/virtio/queue';
import { ChainReader, ChainWriter } from '../lib/virtio/chain';
import { BumpAllocator, MockVirtqueue, allocQueueLayout, type MockBuffer, configureQueue } from '../lib/testing/mock-driver';

interface Scenario {
  name: string;
  batch: number;
  indirect: boolean;
  eventIdx: boolean;
}

function run(s: Scenario, total: number): void {
  const mem = GuestMemory.anonymous(4 << 20);
  const alloc = new BumpAllocator(mem);
  const layout = allocQueueLayout(alloc, 256);
  const q = new Queue(256);
  configureQueue(q, { descTable: layout.descTable, availRing: layout.availRing, usedRing: layout.usedRing, ready: true, indirectDesc: true, eventIdx: s.eventIdx });
  const drv = new MockVirtqueue(mem, layout);
  // A block-like request: 16-byte header, 4 KiB data, 1-byte status.
  const bufs: MockBuffer[] = [
    { addr: alloc.alloc(16), len: 16 },
    { addr: alloc.alloc(4096), len: 4096, write: true },
    { addr: alloc.alloc(1), len: 1, write: true },
  ];
  const tables = Array.from({ length: s.batch }, () => alloc.alloc(16 * bufs.length));

  let ns = 0n;
  let done = 0;
  let notifications = 0;
  while (done < total) {
    for (let i = 0; i < s.batch; i++) {
      if (s.indirect) drv.addIndirectChain(bufs, tables[i], false);
      else drv.addChain(bufs, false);
    }
    drv.publish();
    const t0 = process.hrtime.bigint();
    for (let c = q.pop(mem); c !== null; c = q.pop(mem)) {
      const r = new ChainReader(mem, c);
      const w = new ChainWriter(mem, c);
      r.readU32();
      r.readU32();
      r.readU64();
      const status = w.reserveTail(1);
      w.views(w.remaining);
      status.writeU8(0);
      q.addUsed(mem, c.headIndex, w.written + status.written);
    }
    if (q.needsNotification(mem)) notifications++;
    ns += process.hrtime.bigint() - t0;
    drv.readUsed();
    done += s.batch;
  }
  const us = Number(ns) / 1000 / done;
  console.log(`queue  ${s.name.padEnd(30)} ${us.toFixed(3).padStart(8)} µs/request  (${done} requests, ${notifications} interrupts wanted)`);
}

const total = Number(process.argv[2] ?? 200000);
const scenarios: Scenario[] = [
  { name: 'direct, batch 1', batch: 1, indirect: false, eventIdx: false },
  { name: 'direct, batch 32', batch: 32, indirect: false, eventIdx: false },
  { name: 'direct, batch 32, EVENT_IDX', batch: 32, indirect: false, eventIdx: true },
  { name: 'indirect, batch 1', batch: 1, indirect: true, eventIdx: false },
  { name: 'indirect, batch 32', batch: 32, indirect: true, eventIdx: false },
];
// Warm the JIT on every path first, then measure.
for (const s of scenarios) run({ ...s, name: `${s.name} (warm-up)` }, 5000);
console.log('---');
for (const s of scenarios) run(s, total);
