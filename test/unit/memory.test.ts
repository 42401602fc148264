import { GuestMemory, MemoryError } from '../../lib/memory/guest-memory';
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
