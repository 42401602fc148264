import { GuestMemory, MemoryError } from '../../lib/memory/guest-memory';
import { Queue, vringNeedEvent } from '../../lib/virtio/queue';
import { ChainReader, ChainWriter, DescriptorChain } from '../../lib/virtio/chain';
import { VirtioError } from '../../lib/virtio/errors';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../../lib/virtio/constants';
import { BumpAllocator, MockVirtqueue, allocQueueLayout, configureQueue } from '../../lib/testing/mock-driver';

interface Rig {
  mem: GuestMemory;
  alloc: BumpAllocator;
  q: Queue;
  drv: MockVirtqueue;
}

function rig(size = 8, maxSize = 256, mem = GuestMemory.anonymous(1 << 20)): Rig {
  const alloc = new BumpAllocator(mem);
  const layout = allocQueueLayout(alloc, size);
  const q = new Queue(maxSize);
  configureQueue(q, { size: size, descTable: layout.descTable, availRing: layout.availRing, usedRing: layout.usedRing, ready: true, indirectDesc: true });
  return { mem, alloc, q, drv: new MockVirtqueue(mem, layout) };
}

function popOne(r: Rig): DescriptorChain {
  const c = r.q.pop(r.mem);
  if (!c) throw new Error('expected a chain');
  return c;
}

function expectChainError(r: Rig, code: VirtioError['code']): DescriptorChain {
  const c = popOne(r);
  expect(c.error).toBeInstanceOf(VirtioError);
  expect(c.error?.code).toBe(code);
  expect(c.readable).toHaveLength(0);
  expect(c.writable).toHaveLength(0);
  // The head was consumed and can still be completed.
  r.q.addUsed(r.mem, c.headIndex, 0);
  expect(r.drv.readUsed()).toEqual([{ id: c.headIndex, len: 0 }]);
  expect(r.q.broken).toBeNull();
  return c;
}

function expectRingError(r: Rig, code: VirtioError['code']): void {
  let err: unknown;
  try {
    r.q.pop(r.mem);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code).toBe(code);
  expect(r.q.broken?.code).toBe(code);
  // Stays broken until reset.
  expect(() => r.q.pop(r.mem)).toThrow(VirtioError);
}

describe('Queue construction and validation', () => {
  it('rejects non-power-of-two and oversized max sizes', () => {
    expect(() => new Queue(0)).toThrow(VirtioError);
    expect(() => new Queue(3)).toThrow(VirtioError);
    expect(() => new Queue(65536)).toThrow(VirtioError);
    expect(new Queue(256).size).toBe(256);
  });

  it('validates size, alignment (16/2/4) and placement in memory', () => {
    const r = rig(8);
    expect(r.q.isValid(r.mem)).toBe(true);
    const save = r.q.saveState();
    configureQueue(r.q, { size: 6 });
    expect(r.q.validate(r.mem)?.code).toBe('BAD_QUEUE_CONFIG');
    configureQueue(r.q, { size: 512 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { size: 0 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { size: 8, descTable: save.descTable + 8 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { descTable: save.descTable, availRing: save.availRing + 1 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { availRing: save.availRing, usedRing: save.usedRing + 2 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { usedRing: r.mem.totalSize - 8 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { usedRing: -1 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { usedRing: save.usedRing });
    expect(r.q.isValid(r.mem)).toBe(true);
    // Overlapping parts.
    configureQueue(r.q, { usedRing: save.availRing + 4 });
    expect(r.q.validate(r.mem)?.message).toMatch(/available ring and used ring overlap/);
    configureQueue(r.q, { usedRing: save.descTable + 16 * 8 - 4 });
    expect(r.q.isValid(r.mem)).toBe(false);
    configureQueue(r.q, { usedRing: save.usedRing });
    configureQueue(r.q, { availRing: save.descTable + 16 * 8 }); // adjacent is fine
    expect(r.q.isValid(r.mem)).toBe(true);
  });

  it('reset returns to defaults and clears broken state', () => {
    const r = rig(8);
    r.drv.publish(100);
    expectRingError(r, 'AVAIL_IDX_TOO_FAR');
    r.q.reset();
    expect(r.q.broken).toBeNull();
    expect(r.q.ready).toBe(false);
    expect(r.q.size).toBe(256);
    expect(r.q.nextAvail).toBe(0);
    expect(r.q.descTable).toBe(0);
  });
});

describe('Queue.pop: direct chains', () => {
  it('returns null when nothing is available', () => {
    const r = rig();
    expect(r.q.pop(r.mem)).toBeNull();
  });

  it('splits a chain into readable then writable segments', () => {
    const r = rig();
    const head = r.drv.addChain([
      { addr: 0x10000, len: 16 },
      { addr: 0x10100, len: 4 },
      { addr: 0x20000, len: 512, write: true },
      { addr: 0x20400, len: 1, write: true },
    ]);
    const c = popOne(r);
    expect(c.error).toBeUndefined();
    expect(c.headIndex).toBe(head);
    expect(c.readable).toEqual([
      { addr: 0x10000, len: 16 },
      { addr: 0x10100, len: 4 },
    ]);
    expect(c.writable).toEqual([
      { addr: 0x20000, len: 512 },
      { addr: 0x20400, len: 1 },
    ]);
    expect(c.readableLength).toBe(20);
    expect(c.writableLength).toBe(513);
    expect(r.q.pop(r.mem)).toBeNull();
  });

  it('drops zero-length descriptors', () => {
    const r = rig();
    r.drv.addChain([
      { addr: 0x10000, len: 0 },
      { addr: 0x10000, len: 8 },
      { addr: 0xffffffff, len: 0, write: true },
    ]);
    const c = popOne(r);
    expect(c.error).toBeUndefined();
    expect(c.readable).toEqual([{ addr: 0x10000, len: 8 }]);
    expect(c.writable).toEqual([]);
  });

  it('flags a readable descriptor after a writable one', () => {
    const r = rig();
    r.drv.addChain([
      { addr: 0x10000, len: 8, write: true },
      { addr: 0x10100, len: 8 },
    ]);
    expectChainError(r, 'BAD_DESC_ORDER');
  });

  it('flags a zero-length readable descriptor after a writable one too', () => {
    const r = rig();
    r.drv.addChain([
      { addr: 0x10000, len: 8, write: true },
      { addr: 0x10100, len: 0 },
    ]);
    expectChainError(r, 'BAD_DESC_ORDER');
  });

  it('detects descriptor loops', () => {
    const r = rig(8);
    r.drv.writeDesc(0, 0x10000, 8, VIRTQ_DESC_F_NEXT, 1);
    r.drv.writeDesc(1, 0x10000, 8, VIRTQ_DESC_F_NEXT, 0);
    r.drv.pushAvail(0);
    expectChainError(r, 'DESC_LOOP');
    r.drv.writeDesc(2, 0x10000, 8, VIRTQ_DESC_F_NEXT, 2);
    r.drv.pushAvail(2);
    expectChainError(r, 'DESC_LOOP');
  });

  it('flags next indices outside the table', () => {
    const r = rig(8);
    r.drv.writeDesc(0, 0x10000, 8, VIRTQ_DESC_F_NEXT, 8);
    r.drv.pushAvail(0);
    expectChainError(r, 'DESC_OUT_OF_RANGE');
  });

  it('flags buffers outside guest memory, including u64 addresses beyond 2^53', () => {
    const r = rig(8);
    r.drv.addChain([{ addr: r.mem.totalSize - 4, len: 8 }]);
    expectChainError(r, 'DESC_OUT_OF_RANGE');
    r.drv.writeDesc(1, 0, 8, 0, 0);
    r.mem.writeU64(r.drv.layout.descTable + 16, 0xffff_ffff_ffff_fff0n);
    r.drv.pushAvail(1);
    expectChainError(r, 'DESC_OUT_OF_RANGE');
    r.drv.writeDesc(2, 0x10000, 0xffffffff, 0, 0);
    r.drv.pushAvail(2);
    expectChainError(r, 'DESC_OUT_OF_RANGE');
  });

  it('caps total lengths at 2^32-1 (LENGTH_OVERFLOW)', () => {
    // Pretend every buffer is in memory to reach totals beyond u32 without 4 GiB of RAM.
    class Lenient extends GuestMemory {
      override checkRange(): boolean {
        return true;
      }
    }
    const mem = new Lenient([{ guestAddr: 0, bytes: new Uint8Array(1 << 20) }]);
    const r = rig(8, 256, mem);
    r.drv.addChain([
      { addr: 0, len: 0x80000000, write: true },
      { addr: 0, len: 0x80000000, write: true },
    ]);
    expectChainError(r, 'LENGTH_OVERFLOW');
    r.drv.addChain([
      { addr: 0, len: 0xffffffff },
      { addr: 0, len: 1 },
    ]);
    expectChainError(r, 'LENGTH_OVERFLOW');
    r.drv.addChain([
      { addr: 0, len: 0x7fffffff, write: true },
      { addr: 0, len: 0x80000000, write: true },
    ]);
    const c = popOne(r);
    expect(c.error).toBeUndefined();
    expect(c.writableLength).toBe(0xffffffff);
  });

  it('throws a ring error for a head index ≥ size and for avail idx too far ahead', () => {
    let r = rig(8);
    r.drv.pushAvail(8);
    expectRingError(r, 'HEAD_OUT_OF_RANGE');
    r = rig(8);
    r.drv.publish(9);
    expectRingError(r, 'AVAIL_IDX_TOO_FAR');
    r = rig(8);
    r.drv.publish(0xffff); // "behind": 65535 entries ahead in u16 arithmetic
    expectRingError(r, 'AVAIL_IDX_TOO_FAR');
  });

  it('accepts exactly size chains outstanding', () => {
    const r = rig(4);
    for (let i = 0; i < 4; i++) r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    for (let i = 0; i < 4; i++) expect(popOne(r).error).toBeUndefined();
    expect(r.q.pop(r.mem)).toBeNull();
  });

  it('refuses to pop a queue that is not ready', () => {
    const r = rig();
    configureQueue(r.q, { ready: false });
    expect(() => r.q.pop(r.mem)).toThrow(expect.objectContaining({ code: 'QUEUE_NOT_READY' }));
  });

  it('turns ring accesses outside memory into VirtioError, never MemoryError', () => {
    const r = rig();
    configureQueue(r.q, { availRing: r.mem.totalSize - 2 });
    let err: unknown;
    try {
      r.q.pop(r.mem);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VirtioError);
    expect(err).not.toBeInstanceOf(MemoryError);
    expect((err as VirtioError).code).toBe('RING_OUT_OF_RANGE');
  });

  it('reads avail idx once per batch', () => {
    const r = rig(8);
    let idxReads = 0;
    const availIdxAddr = r.drv.layout.availRing + 2;
    const spy = Object.create(r.mem) as GuestMemory;
    spy.readU16 = (a: number) => {
      if (a === availIdxAddr) idxReads++;
      return r.mem.readU16(a);
    };
    for (let i = 0; i < 3; i++) r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    for (let i = 0; i < 3; i++) expect(r.q.pop(spy)).not.toBeNull();
    expect(idxReads).toBe(1);
    expect(r.q.pop(spy)).toBeNull();
    expect(idxReads).toBe(2);
  });

  it('pauses when the pop budget is used up', () => {
    const r = rig(8);
    for (let i = 0; i < 3; i++) r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    r.q.setPopBudget(2);
    popOne(r);
    popOne(r);
    expect(r.q.popBudgetExhausted).toBe(false);
    expect(r.q.pop(r.mem)).toBeNull();
    expect(r.q.popBudgetExhausted).toBe(true);
    expect(r.q.enableNotification(r.mem)).toBe(false);
    r.q.setPopBudget(Infinity);
    expect(r.q.popBudgetExhausted).toBe(false);
    expect(popOne(r).error).toBeUndefined();
  });

  it('undoPop hands the same chain back', () => {
    const r = rig();
    const a = r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    const b = r.drv.addChain([{ addr: 0x10000, len: 2 }]);
    expect(popOne(r).headIndex).toBe(a);
    r.q.undoPop();
    expect(popOne(r).headIndex).toBe(a);
    expect(popOne(r).headIndex).toBe(b);
    r.q.undoPop();
    r.q.undoPop();
    expect(popOne(r).headIndex).toBe(a);
    expect(popOne(r).headIndex).toBe(b);
    expect(r.q.pop(r.mem)).toBeNull();
  });
});

describe('Queue.pop: indirect descriptors', () => {
  it('follows a direct prefix and then an indirect table', () => {
    const r = rig(8);
    const table = r.alloc.alloc(48);
    // Direct readable header, then the indirect pointer (WRITE on it must be ignored).
    r.drv.writeDesc(3, 0x10000, 16, VIRTQ_DESC_F_NEXT, 5);
    r.drv.writeDesc(5, table, 48, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
    r.drv.writeDesc(0, 0x11000, 100, VIRTQ_DESC_F_NEXT, 2, table);
    r.drv.writeDesc(2, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0, table);
    r.drv.writeDesc(1, 0xdead0000, 1, 0, 0, table); // not part of the chain
    r.drv.pushAvail(3);
    const c = popOne(r);
    expect(c.error).toBeUndefined();
    expect(c.headIndex).toBe(3);
    expect(c.readable).toEqual([
      { addr: 0x10000, len: 16 },
      { addr: 0x11000, len: 100 },
    ]);
    expect(c.writable).toEqual([{ addr: 0x12000, len: 1 }]);
  });

  it('works through the mock driver helper', () => {
    const r = rig(4);
    const table = r.alloc.alloc(16 * 4);
    const head = r.drv.addIndirectChain(
      [
        { addr: 0x10000, len: 8 },
        { addr: 0x10008, len: 8 },
        { addr: 0x20000, len: 64, write: true },
        { addr: 0x20040, len: 1, write: true },
      ],
      table,
    );
    const c = popOne(r);
    expect(c.headIndex).toBe(head);
    expect(c.readableLength).toBe(16);
    expect(c.writableLength).toBe(65);
    r.q.addUsed(r.mem, c.headIndex, 65);
    expect(r.drv.readUsed()).toEqual([{ id: head, len: 65 }]);
    expect(r.drv.freeCount).toBe(4);
  });

  const cases: [string, (r: Rig, table: number) => void, VirtioError['code']][] = [
    ['without VIRTIO_F_INDIRECT_DESC', (r, t) => {
      configureQueue(r.q, { indirectDesc: false });
      r.drv.writeDesc(0, 0x10000, 1, 0, 0, t);
      r.drv.writeDesc(0, t, 16, VIRTQ_DESC_F_INDIRECT, 0);
    }, 'BAD_INDIRECT'],
    ['with NEXT also set', (r, t) => {
      r.drv.writeDesc(0, 0x10000, 1, 0, 0, t);
      r.drv.writeDesc(0, t, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
      r.drv.writeDesc(1, 0x10000, 1, 0, 0);
    }, 'BAD_INDIRECT'],
    ['with a length that is not a multiple of 16', (r, t) => r.drv.writeDesc(0, t, 24, VIRTQ_DESC_F_INDIRECT, 0), 'BAD_INDIRECT'],
    ['with length 0', (r, t) => r.drv.writeDesc(0, t, 0, VIRTQ_DESC_F_INDIRECT, 0), 'BAD_INDIRECT'],
    ['outside guest memory', (r) => r.drv.writeDesc(0, r.mem.totalSize - 16, 32, VIRTQ_DESC_F_INDIRECT, 0), 'BAD_INDIRECT'],
    ['with more entries than the queue size', (r, t) => r.drv.writeDesc(0, t, 16 * 9, VIRTQ_DESC_F_INDIRECT, 0), 'CHAIN_TOO_LONG'],
    ['nested', (r, t) => {
      r.drv.writeDesc(0, t + 64, 16, VIRTQ_DESC_F_INDIRECT, 0, t);
      r.drv.writeDesc(0, t, 16, VIRTQ_DESC_F_INDIRECT, 0);
    }, 'NESTED_INDIRECT'],
    ['looping inside the table', (r, t) => {
      r.drv.writeDesc(0, 0x10000, 1, VIRTQ_DESC_F_NEXT, 1, t);
      r.drv.writeDesc(1, 0x10000, 1, VIRTQ_DESC_F_NEXT, 0, t);
      r.drv.writeDesc(0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    }, 'DESC_LOOP'],
    ['with next beyond the table', (r, t) => {
      r.drv.writeDesc(0, 0x10000, 1, VIRTQ_DESC_F_NEXT, 2, t);
      r.drv.writeDesc(0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    }, 'DESC_OUT_OF_RANGE'],
    ['making the whole chain longer than the queue', (r, t) => {
      for (let i = 0; i < 7; i++) r.drv.writeDesc(i, 0x10000, 1, VIRTQ_DESC_F_NEXT, i + 1, t);
      r.drv.writeDesc(7, 0x10000, 1, 0, 0, t);
      r.drv.writeDesc(1, 0x10000, 1, VIRTQ_DESC_F_NEXT, 0);
      r.drv.writeDesc(0, t, 16 * 8, VIRTQ_DESC_F_INDIRECT, 0);
    }, 'CHAIN_TOO_LONG'],
  ];
  it.each(cases)('rejects an indirect table %s', (_name, build, code) => {
    const r = rig(8);
    const table = r.alloc.alloc(16 * 16);
    build(r, table);
    const head = _name.startsWith('making') ? 1 : 0;
    r.drv.pushAvail(head);
    expectChainError(r, code);
  });

  it('accepts an indirect table of exactly queue-size entries', () => {
    const r = rig(8);
    const t = r.alloc.alloc(16 * 8);
    for (let i = 0; i < 7; i++) r.drv.writeDesc(i, 0x10000 + i, 1, VIRTQ_DESC_F_NEXT, i + 1, t);
    r.drv.writeDesc(7, 0x10007, 1, 0, 0, t);
    r.drv.writeDesc(0, t, 16 * 8, VIRTQ_DESC_F_INDIRECT, 0);
    r.drv.pushAvail(0);
    const c = popOne(r);
    expect(c.error).toBeUndefined();
    expect(c.readable).toHaveLength(8);
  });
});

describe('Queue.addUsed and wrap-around', () => {
  it('writes the used element before publishing used idx', () => {
    const r = rig(8);
    const order: string[] = [];
    const spy = Object.create(r.mem) as GuestMemory;
    spy.writeU32 = (a: number, v: number) => {
      order.push(`u32@${a - r.drv.layout.usedRing}`);
      r.mem.writeU32(a, v);
    };
    spy.writeU16 = (a: number, v: number) => {
      order.push(`u16@${a - r.drv.layout.usedRing}`);
      r.mem.writeU16(a, v);
    };
    r.q.addUsed(spy, 5, 0x1234);
    expect(order).toEqual(['u32@4', 'u32@8', 'u16@2']);
    expect(r.drv.usedElemAt(0)).toEqual({ id: 5, len: 0x1234 });
    expect(r.drv.usedIdx()).toBe(1);
  });

  it('rejects bad heads and lengths from the device', () => {
    const r = rig(8);
    expect(() => r.q.addUsed(r.mem, 8, 0)).toThrow(expect.objectContaining({ code: 'BAD_USED_INDEX' }));
    expect(() => r.q.addUsed(r.mem, -1, 0)).toThrow(VirtioError);
    expect(() => r.q.addUsed(r.mem, 0, 2 ** 32)).toThrow(VirtioError);
    expect(() => r.q.addUsed(r.mem, 0, 1.5)).toThrow(VirtioError);
  });

  it('refuses completions on a queue that was reset (no write to guest address 0)', () => {
    const r = rig(8);
    r.mem.slice(0, 64).fill(0xaa);
    r.q.reset();
    expect(() => r.q.addUsed(r.mem, 0, 0)).toThrow(expect.objectContaining({ code: 'QUEUE_NOT_READY' }));
    expect(r.q.needsNotification(r.mem)).toBe(false);
    expect(r.q.enableNotification(r.mem)).toBe(false);
    r.q.disableNotification(r.mem);
    expect(Array.from(r.mem.read(0, 64)).every((b) => b === 0xaa)).toBe(true);
  });

  it('survives 16-bit index wrap-around with a small queue (70000 requests)', () => {
    const r = rig(4);
    const data = r.alloc.alloc(64);
    // Plain comparisons in the loop: jest's expect is too slow for 70000 rounds.
    const mismatches: string[] = [];
    const check = (what: string, got: unknown, want: unknown) => {
      if (JSON.stringify(got) !== JSON.stringify(want) && mismatches.length < 5) mismatches.push(`${what}: ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
    };
    for (let i = 0; i < 70000; i++) {
      const head = r.drv.addChain([
        { addr: data, len: 4 },
        { addr: data + 32, len: 4, write: true },
      ]);
      if (i % 3 === 0) {
        // Two in flight at once, completed out of order.
        const head2 = r.drv.addChain([{ addr: data, len: 1 }]);
        const c1 = popOne(r);
        const c2 = popOne(r);
        check(`heads@${i}`, [c1.headIndex, c2.headIndex], [head, head2]);
        r.q.addUsed(r.mem, c2.headIndex, 0);
        r.q.addUsed(r.mem, c1.headIndex, 4);
        check(`used@${i}`, r.drv.readUsed(), [
          { id: head2, len: 0 },
          { id: head, len: 4 },
        ]);
      } else {
        const c = popOne(r);
        check(`head@${i}`, c.headIndex, head);
        r.q.addUsed(r.mem, c.headIndex, 4);
        check(`used@${i}`, r.drv.readUsed(), [{ id: head, len: 4 }]);
      }
      check(`empty@${i}`, r.q.pop(r.mem), null);
    }
    expect(mismatches).toEqual([]);
    // 70000 + 23334 chains went round: both indices wrapped.
    expect(r.q.poppedChains).toBe(93334);
    expect(r.q.nextAvail).toBe(93334 & 0xffff);
    expect(r.q.nextAvail).toBe(r.drv.availIdx);
    expect(r.q.nextUsed).toBe(r.drv.usedIdx());
    expect(r.q.broken).toBeNull();
  });
});

describe('notification suppression', () => {
  it('vringNeedEvent matches the 16-bit window rule', () => {
    expect(vringNeedEvent(0, 1, 0)).toBe(true);
    expect(vringNeedEvent(1, 1, 0)).toBe(false);
    expect(vringNeedEvent(4, 10, 5)).toBe(false);
    expect(vringNeedEvent(5, 10, 5)).toBe(true);
    expect(vringNeedEvent(9, 10, 5)).toBe(true);
    expect(vringNeedEvent(10, 10, 5)).toBe(false);
    // Across the wrap: window [65534, 2).
    expect(vringNeedEvent(65535, 2, 65534)).toBe(true);
    expect(vringNeedEvent(1, 2, 65534)).toBe(true);
    expect(vringNeedEvent(65533, 2, 65534)).toBe(false);
    expect(vringNeedEvent(2, 2, 65534)).toBe(false);
    expect(vringNeedEvent(7, 3, 3)).toBe(false);
  });

  it('used buffers without EVENT_IDX follow VIRTQ_AVAIL_F_NO_INTERRUPT', () => {
    const r = rig();
    r.q.addUsed(r.mem, 0, 0);
    expect(r.q.needsNotification(r.mem)).toBe(true);
    r.drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    expect(r.q.needsNotification(r.mem)).toBe(false);
  });

  it('used buffers with EVENT_IDX follow used_event', () => {
    const r = rig(8);
    configureQueue(r.q, { eventIdx: true });
    r.drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT); // ignored under EVENT_IDX
    r.q.addUsed(r.mem, 0, 0);
    expect(r.q.needsNotification(r.mem)).toBe(true); // first one always
    r.drv.setUsedEvent(3); // interrupt me once used idx passes 3
    r.q.addUsed(r.mem, 1, 0); // idx 2
    expect(r.q.needsNotification(r.mem)).toBe(false);
    r.q.addUsed(r.mem, 2, 0); // idx 3
    expect(r.q.needsNotification(r.mem)).toBe(false);
    r.q.addUsed(r.mem, 3, 0); // idx 4: crossed used_event 3
    expect(r.q.needsNotification(r.mem)).toBe(true);
    expect(r.q.needsNotification(r.mem)).toBe(false); // nothing new
    r.drv.setUsedEvent(4);
    r.q.addUsed(r.mem, 4, 0);
    r.q.addUsed(r.mem, 5, 0);
    expect(r.q.needsNotification(r.mem)).toBe(true); // batch [4,6) contains 4
  });

  it('used_event works across the 16-bit wrap', () => {
    const r = rig(8);
    configureQueue(r.q, { eventIdx: true, nextUsed: 0xfffd });
    r.q.addUsed(r.mem, 0, 0); // 0xfffe
    expect(r.q.needsNotification(r.mem)).toBe(true);
    r.drv.setUsedEvent(0x0000);
    r.q.addUsed(r.mem, 1, 0); // 0xffff
    expect(r.q.needsNotification(r.mem)).toBe(false);
    r.q.addUsed(r.mem, 2, 0); // 0x0000
    r.q.addUsed(r.mem, 3, 0); // 0x0001: window [0xffff, 0x0001) contains 0
    expect(r.q.needsNotification(r.mem)).toBe(true);
    expect(r.drv.usedIdx()).toBe(1);
    r.drv.setUsedEvent(0xfff0); // long ago
    r.q.addUsed(r.mem, 4, 0);
    expect(r.q.needsNotification(r.mem)).toBe(false);
  });

  it('avail notifications without EVENT_IDX toggle VIRTQ_USED_F_NO_NOTIFY', () => {
    const r = rig();
    r.q.disableNotification(r.mem);
    expect(r.drv.usedFlags()).toBe(VIRTQ_USED_F_NO_NOTIFY);
    expect(r.q.enableNotification(r.mem)).toBe(false);
    expect(r.drv.usedFlags()).toBe(0);
    r.q.disableNotification(r.mem);
    r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    expect(r.q.enableNotification(r.mem)).toBe(true); // work arrived meanwhile
  });

  it('avail notifications with EVENT_IDX publish avail_event, including from an empty pop', () => {
    const r = rig(4);
    configureQueue(r.q, { eventIdx: true });
    r.q.disableNotification(r.mem);
    expect(r.drv.usedFlags()).toBe(0);
    r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    popOne(r);
    popOne(r);
    expect(r.q.pop(r.mem)).toBeNull();
    expect(r.drv.availEvent()).toBe(0); // disabled: not advanced
    expect(r.q.enableNotification(r.mem)).toBe(false);
    expect(r.drv.availEvent()).toBe(2);
    r.q.addUsed(r.mem, 0, 0);
    r.q.addUsed(r.mem, 1, 0);
    r.drv.readUsed();
    r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    popOne(r);
    expect(r.q.pop(r.mem)).toBeNull(); // enabled: the empty pop publishes avail_event = 3
    expect(r.drv.availEvent()).toBe(3);
  });

  it('avail_event wraps with nextAvail', () => {
    const r = rig(4);
    configureQueue(r.q, { eventIdx: true, nextAvail: 0xfffe });
    r.drv.availIdx = 0xfffe;
    r.drv.publish();
    expect(r.q.enableNotification(r.mem)).toBe(false);
    expect(r.drv.availEvent()).toBe(0xfffe);
    for (let i = 0; i < 3; i++) r.drv.addChain([{ addr: 0x10000, len: 1 }]);
    for (let i = 0; i < 3; i++) popOne(r);
    expect(r.q.pop(r.mem)).toBeNull();
    expect(r.q.nextAvail).toBe(1);
    expect(r.drv.availEvent()).toBe(1);
  });
});

describe('ChainReader / ChainWriter', () => {
  function chainOf(mem: GuestMemory, readable: [number, number][], writable: [number, number][]): DescriptorChain {
    const seg = ([addr, len]: [number, number]) => ({ addr, len });
    const sum = (l: [number, number][]) => l.reduce((a, [, n]) => a + n, 0);
    return new DescriptorChain(0, readable.map(seg), writable.map(seg), sum(readable), sum(writable));
  }

  it('reads across segment boundaries', () => {
    const mem = GuestMemory.anonymous(0x10000);
    mem.write(0x100, new Uint8Array([1, 2, 3]));
    mem.write(0x200, new Uint8Array([4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
    const r = new ChainReader(mem, chainOf(mem, [[0x100, 3], [0x200, 13]], []));
    expect(r.remaining).toBe(16);
    expect(r.readU16()).toBe(0x0201);
    expect(r.readU32()).toBe(0x06050403); // straddles
    expect(r.readU8()).toBe(7);
    expect(r.readU64()).toBe(0x0f0e0d0c0b0a0908n);
    expect(r.remaining).toBe(1);
    expect(() => r.read(2)).toThrow(expect.objectContaining({ code: 'CHAIN_TOO_SHORT' }));
    expect(Array.from(r.read(1))).toEqual([16]);
    expect(() => r.readU8()).toThrow(VirtioError);
  });

  it('hands out zero-copy views and skips', () => {
    const mem = GuestMemory.anonymous(0x10000);
    const r = new ChainReader(mem, chainOf(mem, [[0x100, 4], [0x200, 4]], []));
    r.skip(2);
    const v = r.views(4);
    expect(v.map((x) => x.length)).toEqual([2, 2]);
    v[1][0] = 0xaa;
    expect(mem.readU8(0x200)).toBe(0xaa);
    expect(() => r.skip(3)).toThrow(VirtioError);
    expect(() => r.views(-1)).toThrow(VirtioError);
  });

  it('writes across segments, counts written bytes and splits off a tail', () => {
    const mem = GuestMemory.anonymous(0x10000);
    const w = new ChainWriter(mem, chainOf(mem, [], [[0x100, 3], [0x200, 5]]));
    const tail = w.reserveTail(3); // last 3 bytes of the 5-byte segment
    expect(w.remaining).toBe(5);
    expect(tail.remaining).toBe(3);
    w.write(new Uint8Array([1, 2, 3, 4, 5]));
    expect(w.written).toBe(5);
    expect(() => w.writeU8(0)).toThrow(expect.objectContaining({ code: 'CHAIN_TOO_SHORT' }));
    tail.writeU8(0xee);
    tail.writeU16(0xccdd);
    expect(Array.from(mem.read(0x100, 3))).toEqual([1, 2, 3]);
    expect(Array.from(mem.read(0x200, 5))).toEqual([4, 5, 0xee, 0xdd, 0xcc]);
  });

  it('reserveTail can span several segments and respects consumed bytes', () => {
    const mem = GuestMemory.anonymous(0x10000);
    const w = new ChainWriter(mem, chainOf(mem, [], [[0x100, 2], [0x200, 1], [0x300, 1]]));
    w.writeU8(9);
    const tail = w.reserveTail(3);
    expect(w.remaining).toBe(0);
    tail.write(new Uint8Array([7, 8, 6]));
    expect(Array.from(mem.read(0x100, 2))).toEqual([9, 7]);
    expect(mem.readU8(0x200)).toBe(8);
    expect(mem.readU8(0x300)).toBe(6);
    expect(() => w.reserveTail(1)).toThrow(VirtioError);
  });

  it('sees nothing in a malformed chain', () => {
    const mem = GuestMemory.anonymous(0x1000);
    const c = DescriptorChain.malformed(3, new VirtioError('DESC_LOOP', 'x'));
    expect(new ChainReader(mem, c).remaining).toBe(0);
    expect(new ChainWriter(mem, c).remaining).toBe(0);
  });
});
