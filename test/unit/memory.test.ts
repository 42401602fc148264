import fc from 'fast-check';
import { GuestMemory, MemoryError, splitRegions } from '../../lib/memory/guest-memory';
import { memoryRegions } from '../../lib/boot';
import { IoBus, BusError } from '../../lib/bus';

describe('GuestMemory', () => {
  const mem = new GuestMemory([
    { guestAddr: 0, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x10000, buffer: new ArrayBuffer(0x3000), byteOffset: 0x1000, size: 0x2000 },
  ]);

  it('reads and writes little-endian values inside regions', () => {
    mem.writeU32(0x10, 0x11223344);
    expect(mem.readU8(0x10)).toBe(0x44);
    expect(mem.readU16(0x12)).toBe(0x1122);
    mem.writeU64(0x10008, 0x000f030405060708n);
    expect(mem.readU64(0x10008)).toBe(0x000f030405060708n);
    expect(mem.readU64Number(0x10008)).toBe(0x000f030405060708);
  });

  it('maps the second region at its byte offset inside the buffer', () => {
    const buf = mem.regions[1].buffer;
    mem.writeU8(0x10000, 0xab);
    expect(new Uint8Array(buf)[0x1000]).toBe(0xab);
  });

  it('returns zero-copy views', () => {
    const v = mem.slice(0x100, 4);
    v[0] = 9;
    expect(mem.readU8(0x100)).toBe(9);
  });

  it.each([
    [0x1000, 1],
    [0xfff, 2],
    [0x2000, 1],
    [0x11fff, 2],
    [-1, 1],
    [0.5, 1],
    [NaN, 1],
    [2 ** 60, 1],
    [0, -1],
    [0x10000, 2 ** 60],
  ])('refuses the access at %s+%s with OUT_OF_RANGE', (addr, len) => {
    expect(mem.checkRange(addr, len)).toBe(false);
    expect(() => mem.slice(addr, len)).toThrow(MemoryError);
    try {
      mem.slice(addr, len);
    } catch (e) {
      expect((e as MemoryError).code).toBe('OUT_OF_RANGE');
    }
  });

  it('refuses a range that spans two regions even when both ends are memory', () => {
    const m = new GuestMemory([
      { guestAddr: 0, bytes: new Uint8Array(16) },
      { guestAddr: 16, bytes: new Uint8Array(16) },
    ]);
    expect(m.checkRange(8, 16)).toBe(false);
  });

  it('reports u64 values beyond 2^53 as -1 so they fail every range check', () => {
    mem.writeU64(0x20, 0xffffffffffffffffn);
    expect(mem.readU64Number(0x20)).toBe(-1);
    expect(mem.checkRange(mem.readU64Number(0x20), 1)).toBe(false);
  });

  it('rejects overlapping regions', () => {
    expect(() => new GuestMemory([
      { guestAddr: 0, bytes: new Uint8Array(16) },
      { guestAddr: 8, bytes: new Uint8Array(16) },
    ])).toThrow(expect.objectContaining({ code: 'OVERLAP' }));
  });
});

describe('splitRegions', () => {
  const GiB = 2 ** 30;

  it('cuts guest RAM at every 4 GiB of guest address: a 64 GiB guest in 17 pieces', () => {
    const pieces = splitRegions(memoryRegions(64 * GiB), 4 * GiB);
    expect(pieces[0]).toEqual({ guestAddr: 0, size: 0xd0000000 });
    expect(pieces[1]).toEqual({ guestAddr: 4 * GiB, size: 4 * GiB });
    expect(pieces[pieces.length - 1]).toEqual({ guestAddr: 64 * GiB, size: 64 * GiB - 0xd0000000 - 15 * 4 * GiB });
    expect(pieces).toHaveLength(17);
    expect(splitRegions(memoryRegions(5 * GiB), 4 * GiB)).toEqual(memoryRegions(5 * GiB));
  });

  it('covers each range exactly, in pieces of at most the limit that never cross a multiple of it', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ guestAddr: fc.integer({ min: 0, max: 2 ** 40 }), size: fc.integer({ min: 1, max: 2 ** 36 }) }), { maxLength: 4 }),
        fc.integer({ min: 2 ** 26, max: 2 ** 34 }), // at most 1024 pieces per range
        (ranges, max) => {
          const pieces = splitRegions(ranges, max);
          let i = 0;
          for (const r of ranges) {
            let at = r.guestAddr;
            while (at < r.guestAddr + r.size) {
              const p = pieces[i++];
              expect(p.guestAddr).toBe(at);
              expect(p.size).toBeGreaterThan(0);
              expect(p.size).toBeLessThanOrEqual(max);
              expect(Math.floor(p.guestAddr / max)).toBe(Math.floor((p.guestAddr + p.size - 1) / max));
              at += p.size;
            }
            expect(at).toBe(r.guestAddr + r.size);
          }
          expect(i).toBe(pieces.length);
        },
      ),
    );
  });

  it('refuses a bad limit or range', () => {
    expect(() => splitRegions([{ guestAddr: 0, size: 4096 }], 0)).toThrow(MemoryError);
    expect(() => splitRegions([{ guestAddr: 0, size: 0 }], 4096)).toThrow(MemoryError);
    expect(() => splitRegions([{ guestAddr: -1, size: 1 }], 4096)).toThrow(MemoryError);
  });

  it('GuestMemory over the pieces: covers() spans adjacent pieces, accesses stay inside one', () => {
    // The same shape as a large guest, scaled down: pieces of 0x1000 from 0x10000.
    const ranges = splitRegions([{ guestAddr: 0, size: 0x800 }, { guestAddr: 0x10000, size: 0x2800 }], 0x1000);
    const mem = new GuestMemory(ranges.map((r) => ({ guestAddr: r.guestAddr, bytes: new Uint8Array(r.size) })));
    expect(mem.regions).toHaveLength(4);
    expect(mem.covers(0x10000, 0x2800)).toBe(true);
    expect(mem.covers(0x10ff0, 0x20)).toBe(true);
    expect(mem.covers(0x10000, 0x2801)).toBe(false);
    expect(mem.covers(0x700, 0x200)).toBe(false); // runs into the gap
    expect(mem.covers(0x20000, 0)).toBe(false);
    expect(mem.checkRange(0x10ff0, 0x20)).toBe(false);
    expect(() => mem.slice(0x10ff0, 0x20)).toThrow(MemoryError);
    mem.writeU32(0x11ffc, 0xdeadbeef);
    expect(mem.readU32(0x11ffc)).toBe(0xdeadbeef);
  });
});

describe('IoBus', () => {
  it('dispatches by window and offset, and floats unmapped reads high', () => {
    const bus = new IoBus();
    const log: string[] = [];
    bus.insert(0x3f8, 8, {
      read: (off, size) => { log.push(`r${off}/${size}`); return 0x60; },
      write: (off, size, v) => { log.push(`w${off}/${size}=${v}`); },
    });
    expect(bus.read(0x3fd, 1)).toBe(0x60);
    bus.write(0x3f8, 1, 65);
    expect(log).toEqual(['r5/1', 'w0/1=65']);
    expect(bus.read(0x400, 1)).toBe(0xff);
    expect(bus.read(0x3ff, 2)).toBe(0xffff); // straddles the end of the window
    expect(bus.read(0x80, 4)).toBe(0xffffffff);
    bus.write(0x80, 1, 1);
    expect(bus.unmappedAccesses).toBe(4);
  });

  it('refuses overlapping windows', () => {
    const bus = new IoBus();
    const dev = { read: () => 0, write: () => undefined };
    bus.insert(0x60, 5, dev);
    expect(() => bus.insert(0x64, 1, dev)).toThrow(BusError);
  });
});
