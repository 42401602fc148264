/**
 * Property tests: a hostile driver controls every byte of the rings, descriptor tables and
 * indirect tables (and, for the transport, every register write). Whatever it does:
 * - nothing but VirtioError leaves Queue.pop / addUsed, and nothing at all leaves
 *   MmioTransport.read / write / notify (no MemoryError, no TypeError...);
 * - every call terminates (chain walks and pop loops are bounded);
 * - with a valid queue configuration no guest memory access is even attempted out of range,
 *   every segment handed to the device lies inside guest memory, and the device side writes
 *   guest memory only in the used ring and in writable buffers of chains it completed.
 */
import fc from 'fast-check';
import { GuestMemory, MemoryError } from '../../lib/memory/guest-memory';
import { Queue } from '../../lib/virtio/queue';
import { ChainReader, ChainWriter } from '../../lib/virtio/chain';
import { VirtioError } from '../../lib/virtio/errors';
import { MmioTransport } from '../../lib/virtio/mmio';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_STATUS,
  featureBit,
  usedRingBytes,
} from '../../lib/virtio/constants';
import { EchoDevice, MockIrq, configureQueue } from '../../lib/testing/mock-driver';

const MEM_SIZE = 0x10000;
const DESC_BASE = 0x1000;
const AVAIL_BASE = 0x2000;
const USED_BASE = 0x3000;
const INDIRECT_BASE = 0x4000;

/** GuestMemory that counts every attempted access outside itself (which GuestMemory then refuses). */
class GuardedMemory extends GuestMemory {
  outOfRange = 0;
  readonly bytes: Uint8Array;
  constructor(size: number) {
    const bytes = new Uint8Array(size);
    super([{ guestAddr: 0, bytes }]);
    this.bytes = bytes;
  }
  private guard(addr: number, len: number): void {
    if (!this.checkRange(addr, len)) this.outOfRange++;
  }
  override slice(addr: number, len: number): Uint8Array {
    this.guard(addr, len);
    return super.slice(addr, len);
  }
  override readU8(a: number): number {
    this.guard(a, 1);
    return super.readU8(a);
  }
  override readU16(a: number): number {
    this.guard(a, 2);
    return super.readU16(a);
  }
  override readU32(a: number): number {
    this.guard(a, 4);
    return super.readU32(a);
  }
  override readU64(a: number): bigint {
    this.guard(a, 8);
    return super.readU64(a);
  }
  override readU64Number(a: number): number {
    this.guard(a, 8);
    return super.readU64Number(a);
  }
  override writeU8(a: number, v: number): void {
    this.guard(a, 1);
    super.writeU8(a, v);
  }
  override writeU16(a: number, v: number): void {
    this.guard(a, 2);
    super.writeU16(a, v);
  }
  override writeU32(a: number, v: number): void {
    this.guard(a, 4);
    super.writeU32(a, v);
  }
  override writeU64(a: number, v: bigint | number): void {
    this.guard(a, 8);
    super.writeU64(a, v);
  }
}

const mem = new GuardedMemory(MEM_SIZE);
const words = new Uint32Array(mem.bytes.buffer);

interface Range {
  start: number;
  end: number;
}

/** First byte written outside `allowed`, or -1. */
function strayWrite(before: Uint32Array, allowed: Range[]): number {
  for (let i = 0; i < words.length; i++) {
    if (words[i] === before[i]) continue;
    for (let b = 4 * i; b < 4 * i + 4; b++) {
      if (mem.bytes[b] === new Uint8Array(before.buffer)[b]) continue;
      if (!allowed.some((r) => b >= r.start && b < r.end)) return b;
    }
  }
  return -1;
}

/** What the generated cases exercised, so a degenerate generator makes the tests fail. */
const seen = { cases: 0, validChains: 0, writableChains: 0, indirectChains: 0, malformed: new Map<string, number>(), ringErrors: new Map<string, number>(), overBudget: 0 };
const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);

/**
 * Plays the device side on `q` like a real device (disable, pop until null, echo, addUsed,
 * needsNotification, enableNotification) and checks every property. Returns a failure message or null.
 */
function exercise(q: Queue, opts: { undoEvery: number; disable: boolean; refill?: boolean }): string | null {
  const before = new Uint32Array(words);
  const valid = q.validate(mem) === null;
  mem.outOfRange = 0;
  const allowed: Range[] = [];
  if (Number.isSafeInteger(q.usedRing)) allowed.push({ start: q.usedRing, end: q.usedRing + usedRingBytes(q.size) });
  const budget = 4 * q.size;
  q.setPopBudget(budget);
  let pops = 0;
  let steps = 0;
  try {
    do {
      if (opts.disable) q.disableNotification(mem);
      for (let c = q.pop(mem); c; c = q.pop(mem)) {
        if (++steps > budget + 64) return 'pop loop did not terminate';
        pops++;
        if (c.error) bump(seen.malformed, c.error.code);
        else {
          seen.validChains++;
          if (c.writable.length) seen.writableChains++;
          const headFlags = q.descTable + 16 * c.headIndex + 12;
          if (mem.checkRange(headFlags, 2) && mem.readU16(headFlags) & 4) seen.indirectChains++;
        }
        const segs = [...c.readable, ...c.writable];
        if (segs.length > q.size) return `chain with ${segs.length} segments in a queue of ${q.size}`;
        for (const s of segs) if (!mem.checkRange(s.addr, s.len) || s.len === 0) return `bad segment ${s.addr}+${s.len}`;
        if (c.readableLength > 0xffffffff || c.writableLength > 0xffffffff) return 'total length beyond u32';
        if (c.headIndex < 0 || c.headIndex >= q.size) return `head ${c.headIndex} outside queue`;
        if (opts.undoEvery && pops % opts.undoEvery === 0) {
          q.undoPop();
          continue;
        }
        let written = 0;
        if (!c.error) {
          const r = new ChainReader(mem, c);
          const w = new ChainWriter(mem, c);
          for (const s of c.writable) allowed.push({ start: s.addr, end: s.addr + s.len });
          const n = Math.min(r.remaining, w.remaining, 4096);
          w.write(r.read(n));
          written = w.written;
        }
        q.addUsed(mem, c.headIndex, written);
        // A driver that republishes as fast as the device completes: only the pop budget ends this.
        if (opts.refill && mem.checkRange(q.availRing + 2, 2)) {
          allowed.push({ start: q.availRing + 2, end: q.availRing + 4 });
          mem.writeU16(q.availRing + 2, (mem.readU16(q.availRing + 2) + 1) & 0xffff);
        }
      }
      q.needsNotification(mem);
    } while (q.enableNotification(mem) && ++steps < budget + 64);
    if (steps >= budget + 64) return 'enableNotification loop did not terminate';
  } catch (e) {
    if (e instanceof VirtioError) bump(seen.ringErrors, e.code);
    if (!(e instanceof VirtioError)) return `non-VirtioError escaped: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
    if (!q.broken && !['QUEUE_NOT_READY'].includes(e.code)) return `VirtioError ${e.code} without a broken queue`;
  }
  seen.cases++;
  if (q.popBudgetExhausted) seen.overBudget++;
  if (pops > 2 * budget) return `popped ${pops} with a budget of ${budget}`;
  if (valid && mem.outOfRange > 0) return `${mem.outOfRange} out-of-range accesses with a valid queue`;
  const stray = strayWrite(before, allowed);
  if (stray >= 0) return `device wrote guest memory at 0x${stray.toString(16)} outside the used ring and writable buffers`;
  return null;
}

// ---- Structured hostile rings ---------------------------------------------------------------

const u16 = fc.integer({ min: 0, max: 0xffff });
const addrArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0x5000, max: MEM_SIZE - 1 }).map(BigInt) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 24 }).map((k) => BigInt(INDIRECT_BASE + 16 * k)) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: MEM_SIZE + 64 }).map(BigInt) },
  { weight: 1, arbitrary: fc.constantFrom(BigInt(MEM_SIZE - 16), BigInt(MEM_SIZE), 2n ** 32n - 1n, 2n ** 52n, 2n ** 53n + 1n, 2n ** 64n - 16n) },
  { weight: 1, arbitrary: fc.bigUintN(64) },
);
const lenArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 64 }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 20 }).map((k) => 16 * k) },
  { weight: 1, arbitrary: fc.constantFrom(0xffffffff, 0x80000000, 0x7fffffff, MEM_SIZE, 0xfff0, 0x10) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
);
const flagsArb = fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 7 }) }, { weight: 1, arbitrary: u16 });
const nextArb = fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 17 }) }, { weight: 1, arbitrary: u16 });
const descArb = fc.tuple(addrArb, lenArb, flagsArb, nextArb);
const layoutArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ desc: DESC_BASE, avail: AVAIL_BASE, used: USED_BASE }) },
  // Overlapping parts: used ring on top of the avail ring (or shifted onto avail idx).
  { weight: 1, arbitrary: fc.constantFrom(0, 2, 6, 8, 10).map((d) => ({ desc: DESC_BASE, avail: USED_BASE + d, used: USED_BASE })) },
  { weight: 1, arbitrary: fc.constant({ desc: DESC_BASE, avail: AVAIL_BASE, used: AVAIL_BASE }) },
  // Unaligned, straddling the end, or anywhere at all.
  { weight: 1, arbitrary: fc.constant({ desc: DESC_BASE + 1, avail: AVAIL_BASE + 1, used: USED_BASE + 2 }) },
  { weight: 1, arbitrary: fc.constant({ desc: DESC_BASE, avail: MEM_SIZE - 8, used: MEM_SIZE - 4 }) },
  { weight: 1, arbitrary: fc.record({ desc: fc.integer({ min: -16, max: MEM_SIZE + 16 }), avail: fc.integer({ min: 0, max: MEM_SIZE + 16 }), used: fc.integer({ min: 0, max: MEM_SIZE + 16 }) }) },
);

const worldArb = fc.record({
  sizeLog: fc.integer({ min: 0, max: 4 }),
  descs: fc.array(descArb, { minLength: 16, maxLength: 16 }),
  indirect: fc.array(descArb, { maxLength: 24 }),
  avail: fc.array(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 16 }) }, { weight: 1, arbitrary: u16 }), { minLength: 16, maxLength: 16 }),
  availAhead: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 17 }) }, { weight: 1, arbitrary: u16 }),
  start: fc.oneof(fc.constant(0), fc.integer({ min: 0xfff0, max: 0xffff }), u16),
  layout: layoutArb,
  eventIdx: fc.boolean(),
  indirectDesc: fc.boolean(),
  usedEvent: u16,
  availFlags: u16,
  undoEvery: fc.constantFrom(0, 0, 0, 2, 3),
  disable: fc.boolean(),
  refill: fc.constantFrom(false, false, false, true),
});

function writeDesc(table: number, i: number, [addr, len, flags, next]: [bigint, number, number, number]): void {
  const d = table + 16 * i;
  if (!mem.checkRange(d, 16)) return;
  mem.writeU64(d, addr);
  mem.writeU32(d + 8, len);
  mem.writeU16(d + 12, flags);
  mem.writeU16(d + 14, next);
}

function safeWrite16(addr: number, v: number): void {
  if (mem.checkRange(addr, 2)) mem.writeU16(addr, v);
}

describe('virtqueue under hostile rings (property)', () => {
  it('structured random rings: only VirtioError, bounded, in-bounds, writes only where allowed', () => {
    fc.assert(
      fc.property(worldArb, (w) => {
        mem.bytes.fill(0);
        const size = 1 << w.sizeLog;
        const q = new Queue(16);
        configureQueue(q, { size: size, descTable: w.layout.desc, availRing: w.layout.avail, usedRing: w.layout.used, ready: true, eventIdx: w.eventIdx, indirectDesc: w.indirectDesc, nextAvail: w.start, nextUsed: w.start });
        w.descs.forEach((d, i) => writeDesc(w.layout.desc, i, d));
        w.indirect.forEach((d, i) => writeDesc(INDIRECT_BASE, i, d));
        for (let i = 0; i < size; i++) safeWrite16(w.layout.avail + 4 + 2 * i, w.avail[i]);
        safeWrite16(w.layout.avail, w.availFlags);
        safeWrite16(w.layout.avail + 2, (w.start + w.availAhead) & 0xffff);
        safeWrite16(w.layout.avail + 4 + 2 * size, w.usedEvent);
        const failure = exercise(q, w);
        if (failure) throw new Error(failure);
      }),
      { numRuns: 40000 },
    );
  });

  // Fully random bytes, seed-driven (cheap to generate), with queue sizes up to 256.
  it('random bytes in every ring and table: same properties, queue sizes up to 256', () => {
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer(),
          sizeLog: fc.integer({ min: 0, max: 8 }),
          plausible: fc.double({ min: 0, max: 1, noNaN: true }),
          eventIdx: fc.boolean(),
          indirectDesc: fc.boolean(),
          availAhead: fc.integer({ min: 0, max: 256 }),
          start: u16,
        }),
        (w) => {
          let s = w.seed >>> 0 || 1;
          const rnd = () => {
            // xorshift32
            s ^= s << 13;
            s >>>= 0;
            s ^= s >>> 17;
            s ^= s << 5;
            s >>>= 0;
            return s;
          };
          const size = 1 << w.sizeLog;
          mem.bytes.fill(0);
          const plausibleDesc = (table: number, i: number, tableLen: number) => {
            const r = rnd();
            const flags = r & 7;
            const indirect = flags & 4;
            const addr = indirect ? INDIRECT_BASE + 16 * (rnd() % 8) : 0x5000 + (rnd() % (MEM_SIZE - 0x5000));
            const len = indirect ? 16 * (rnd() % 40) : rnd() % 300;
            writeDesc(table, i, [BigInt(addr), len, flags, rnd() % (tableLen + 1)]);
          };
          const fillRandom = (start: number, len: number) => {
            for (let i = 0; i < len; i += 4) mem.writeU32(start + i, rnd());
          };
          // Descriptor table and indirect area: a mix of plausible and garbage descriptors.
          for (let i = 0; i < size; i++) {
            if (rnd() / 2 ** 32 < w.plausible) plausibleDesc(DESC_BASE, i, size);
            else fillRandom(DESC_BASE + 16 * i, 16);
          }
          for (let i = 0; i < 48; i++) {
            if (rnd() / 2 ** 32 < w.plausible) plausibleDesc(INDIRECT_BASE, i, 48);
            else fillRandom(INDIRECT_BASE + 16 * i, 16);
          }
          for (let i = 0; i < size; i++) mem.writeU16(AVAIL_BASE + 4 + 2 * i, rnd() / 2 ** 32 < w.plausible ? rnd() % size : rnd() & 0xffff);
          mem.writeU16(AVAIL_BASE, rnd() & 0xffff);
          mem.writeU16(AVAIL_BASE + 2, (w.start + (rnd() / 2 ** 32 < w.plausible ? w.availAhead : rnd())) & 0xffff);
          mem.writeU16(AVAIL_BASE + 4 + 2 * size, rnd() & 0xffff);
          const q = new Queue(256);
          configureQueue(q, { size: size, descTable: DESC_BASE, availRing: AVAIL_BASE, usedRing: USED_BASE, ready: true, eventIdx: w.eventIdx, indirectDesc: w.indirectDesc, nextAvail: w.start, nextUsed: w.start });
          const failure = exercise(q, { undoEvery: 0, disable: (rnd() & 1) === 1 });
          if (failure) throw new Error(`${failure} (seed ${w.seed})`);
        },
      ),
      { numRuns: 35000 },
    );
  });
});

// ---- The transport under random register traffic -------------------------------------------

const REGS = [
  VIRTIO_MMIO_STATUS,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_CONFIG,
];

const opArb = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('w' as const), offset: fc.constantFrom(...REGS), size: fc.constant(4), value: fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(0x1000, 0x2000, 0x3000, 0xf)) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('w' as const), offset: fc.integer({ min: 0, max: 0x1ff }), size: fc.constantFrom(1, 2, 4, 8, 3), value: fc.integer({ min: 0, max: 0xffffffff }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('r' as const), offset: fc.integer({ min: 0, max: 0x1ff }), size: fc.constantFrom(1, 2, 4, 8), value: fc.constant(0) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('notify' as const), offset: fc.integer({ min: -1, max: 3 }), size: fc.constant(0), value: fc.constant(0) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('scribble' as const), offset: fc.integer({ min: 0x1000, max: 0x4fff }), size: fc.constant(0), value: fc.integer({ min: 0, max: 0xffffffff }) }) },
);

describe('virtio-mmio transport under random register traffic (property)', () => {
  it('never throws, terminates, and keeps status within the defined bits', () => {
    fc.assert(
      fc.property(
        fc.record({
          bringUp: fc.boolean(),
          sizeLog: fc.integer({ min: 0, max: 4 }),
          features: fc.constantFrom(0n, featureBit(VIRTIO_F_EVENT_IDX), featureBit(VIRTIO_F_INDIRECT_DESC), featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_F_INDIRECT_DESC)),
          propagate: fc.boolean(),
          ops: fc.array(opArb, { maxLength: 24 }),
        }),
        (w) => {
          mem.bytes.fill(0);
          const dev = new EchoDevice([16, 4]);
          dev.propagatePopErrors = w.propagate;
          const irq = new MockIrq();
          const tasks: (() => void)[] = [];
          const t = new MmioTransport(dev, { mem, irq, defer: (fn) => tasks.push(fn) });
          const wr = (o: number, v: number) => t.write(o, 4, v);
          if (w.bringUp) {
            wr(VIRTIO_MMIO_STATUS, 1);
            wr(VIRTIO_MMIO_STATUS, 3);
            wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
            wr(VIRTIO_MMIO_DRIVER_FEATURES, Number(w.features & 0xffffffffn));
            wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            wr(VIRTIO_MMIO_DRIVER_FEATURES, Number(featureBit(VIRTIO_F_VERSION_1) >> 32n));
            wr(VIRTIO_MMIO_STATUS, 11);
            wr(VIRTIO_MMIO_QUEUE_SEL, 0);
            wr(VIRTIO_MMIO_QUEUE_NUM, 1 << w.sizeLog);
            wr(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC_BASE);
            wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, AVAIL_BASE);
            wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, USED_BASE);
            wr(VIRTIO_MMIO_QUEUE_READY, 1);
            wr(VIRTIO_MMIO_STATUS, 15);
          }
          for (const op of w.ops) {
            switch (op.kind) {
              case 'w':
                t.write(op.offset, op.size, op.value);
                break;
              case 'r': {
                const v = t.read(op.offset, op.size);
                if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`read returned ${v}`);
                break;
              }
              case 'notify':
                t.notify(op.offset);
                break;
              case 'scribble':
                // The driver (another vCPU) rewrites ring memory at any time.
                mem.writeU32(op.offset & ~3, op.value);
                break;
            }
            let n = 0;
            while (tasks.length && n++ < 1000) tasks.shift()!();
            if (tasks.length) throw new Error('deferred work did not drain');
            if ((t.status & ~0xcf) !== 0) throw new Error(`status 0x${t.status.toString(16)}`);
          }
        },
      ),
      { numRuns: 30000 },
    );
  });
});

describe('property-test harness sanity', () => {
  it('the generators reached every kind of chain and ring error', () => {
    // Needs the two queue properties above to have run (skipped when filtered out with -t).
    if (seen.cases === 0) return;
    expect(seen.cases).toBe(75000);
    // About 18k: queues now start with a consistent cached avail idx (configureQueue restores a
    // whole QueueState); they used to start with a stale cache of 0 that skipped the avail-idx
    // check and popped many unpublished entries no real driver could present.
    expect(seen.validChains).toBeGreaterThan(15000);
    expect(seen.writableChains).toBeGreaterThan(5000);
    expect(seen.indirectChains).toBeGreaterThan(1000);
    expect(seen.overBudget).toBeGreaterThan(10);
    // LENGTH_OVERFLOW needs more than 4 GiB of in-memory buffers: unreachable in 64 KiB, unit-tested instead.
    const rare = (m: Map<string, number>, codes: string[]) => codes.filter((c) => (m.get(c) ?? 0) <= 10);
    expect(rare(seen.malformed, ['DESC_OUT_OF_RANGE', 'DESC_LOOP', 'CHAIN_TOO_LONG', 'BAD_INDIRECT', 'NESTED_INDIRECT', 'BAD_DESC_ORDER'])).toEqual([]);
    expect(rare(seen.ringErrors, ['AVAIL_IDX_TOO_FAR', 'HEAD_OUT_OF_RANGE', 'RING_OUT_OF_RANGE'])).toEqual([]);
  });

  it('GuardedMemory counts out-of-range attempts and GuestMemory still refuses them', () => {
    mem.outOfRange = 0;
    expect(() => mem.readU32(MEM_SIZE - 2)).toThrow(MemoryError);
    expect(mem.outOfRange).toBe(1);
  });

  it('exercise() catches a device-side stray write', () => {
    mem.bytes.fill(0);
    const q = new Queue(4);
    configureQueue(q, { descTable: DESC_BASE, availRing: AVAIL_BASE, usedRing: USED_BASE, ready: true });
    // One valid chain whose only buffer is readable; exercise echoes nothing, so no stray writes...
    writeDesc(DESC_BASE, 0, [0x5000n, 8, 0, 0]);
    mem.writeU16(AVAIL_BASE + 2, 1);
    expect(exercise(q, { undoEvery: 0, disable: false })).toBeNull();
    // ...but a write the device did not own is reported.
    const before = new Uint32Array(words);
    mem.writeU8(0x9000, 1);
    expect(strayWrite(before, [])).toBe(0x9000);
  });
});
