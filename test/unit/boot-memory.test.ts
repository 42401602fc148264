import { GuestMemory } from '../../lib/memory/guest-memory';
import {
  BootError,
  Cmdline,
  buildE820,
  e820Map,
  memoryRegions,
  placeInitrd,
  loadInitrd,
  writeBootParams,
  writeCmdline,
  BP_E820_ENTRIES,
  BP_E820_TABLE,
  BP_EXT_CMD_LINE_PTR,
  BP_EXT_RAMDISK_IMAGE,
  CMDLINE_MAX_SIZE,
  CMDLINE_START,
  E820_RAM,
  E820_RESERVED,
  MMIO_GAP_END,
  MMIO_GAP_START,
  ZERO_PAGE_START,
  type LoadedKernel,
} from '../../lib/boot';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function errCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BootError);
    return (e as BootError).code;
  }
  return 'no error';
}

describe('memory layout and E820', () => {
  it('128 MiB: conventional RAM, reserved EBDA, RAM from 1 MiB', () => {
    expect(memoryRegions(128 * MiB)).toEqual([{ guestAddr: 0, size: 128 * MiB }]);
    expect(buildE820(128 * MiB)).toEqual([
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
      { addr: 0x100000, size: 128 * MiB - 0x100000, type: E820_RAM },
    ]);
    expect(e820Map(128 * MiB)).toEqual(buildE820(128 * MiB));
  });

  it('3 GiB fits below the MMIO hole: no RAM above 4 GiB', () => {
    expect(3 * GiB).toBeLessThanOrEqual(MMIO_GAP_START);
    const e = buildE820(3 * GiB);
    expect(e.length).toBe(3);
    expect(e[2]).toEqual({ addr: 0x100000, size: 3 * GiB - 0x100000, type: E820_RAM });
  });

  it('4 GiB and 6 GiB: a hole at [0xD0000000, 4 GiB) and the rest above 4 GiB', () => {
    for (const size of [4 * GiB, 6 * GiB]) {
      expect(memoryRegions(size)).toEqual([
        { guestAddr: 0, size: MMIO_GAP_START },
        { guestAddr: MMIO_GAP_END, size: size - MMIO_GAP_START },
      ]);
      const e = buildE820(size);
      expect(e[2]).toEqual({ addr: 0x100000, size: MMIO_GAP_START - 0x100000, type: E820_RAM });
      expect(e[3]).toEqual({ addr: 0x1_0000_0000, size: size - MMIO_GAP_START, type: E820_RAM });
      // Total RAM reported equals RAM given, minus the reserved EBDA and the legacy hole.
      const ram = e.filter((x) => x.type === E820_RAM).reduce((a, x) => a + x.size, 0);
      expect(ram).toBe(size - 0x400 - 0x60000);
    }
  });

  it('refuses unusable sizes', () => {
    expect(errCode(() => memoryRegions(MiB))).toBe('BAD_MEMORY_SIZE');
    expect(errCode(() => memoryRegions(64 * MiB + 1))).toBe('BAD_MEMORY_SIZE');
    expect(errCode(() => memoryRegions(NaN))).toBe('BAD_MEMORY_SIZE');
  });
});

describe('command line', () => {
  it('joins tokens with spaces and writes them NUL-terminated', () => {
    const c = new Cmdline().append('console=ttyS0').appendAll(['reboot=k', 'panic=-1']);
    expect(c.toString()).toBe('console=ttyS0 reboot=k panic=-1');
    const mem = GuestMemory.anonymous(4 * MiB);
    mem.slice(CMDLINE_START, 64).fill(0xff);
    writeCmdline(mem, CMDLINE_START, c);
    expect(Buffer.from(mem.read(CMDLINE_START, c.length)).toString('latin1')).toBe(c.toString());
    expect(mem.readU8(CMDLINE_START + c.length)).toBe(0);
  });

  it('accepts 2048 bytes including the NUL and refuses 2049 with the length in the message', () => {
    expect(new Cmdline().append('a'.repeat(CMDLINE_MAX_SIZE - 1)).length).toBe(2047);
    expect(() => new Cmdline().append('a'.repeat(CMDLINE_MAX_SIZE))).toThrow(/2049 bytes/);
    expect(errCode(() => new Cmdline().append('a'.repeat(2047)).append('b'))).toBe('CMDLINE_TOO_LONG');
  });

  it('refuses non-printable and non-ASCII characters and empty tokens', () => {
    expect(errCode(() => new Cmdline().append('a\0b'))).toBe('BAD_CMDLINE');
    expect(errCode(() => new Cmdline().append('a\nb'))).toBe('BAD_CMDLINE');
    expect(errCode(() => new Cmdline().append('é'))).toBe('BAD_CMDLINE');
    expect(errCode(() => new Cmdline().append(''))).toBe('BAD_CMDLINE');
  });

  it('applies a lower kernel limit', () => {
    const c = new Cmdline().append('x'.repeat(300));
    expect(errCode(() => c.withMaxSize(256))).toBe('CMDLINE_TOO_LONG');
    expect(c.withMaxSize(301).toString()).toBe(c.toString());
  });
});

describe('initrd placement', () => {
  it('goes page-aligned at the top of low memory', () => {
    expect(placeInitrd(0x1234, 0x300000, 128 * MiB)).toEqual({ addr: 128 * MiB - 0x2000, size: 0x1234 });
  });

  it('respects initrd_addr_max', () => {
    expect(placeInitrd(0x1800, 0x300000, 2 * GiB, 0x37ffffff)).toEqual({ addr: 0x38000000 - 0x2000, size: 0x1800 });
    expect(placeInitrd(0x1000, 0x300000, 128 * MiB, 0x37ffffff)).toEqual({ addr: 128 * MiB - 0x1000, size: 0x1000 });
  });

  it('refuses an initrd that would reach down into the kernel', () => {
    expect(errCode(() => placeInitrd(8 * MiB, 0x300000, 10 * MiB))).toBe('INITRD_TOO_LARGE');
    expect(placeInitrd(7 * MiB, 0x300000, 10 * MiB).addr).toBe(3 * MiB);
  });

  it('copies the data into guest memory', () => {
    const mem = GuestMemory.anonymous(16 * MiB);
    const kernel: LoadedKernel = { kind: 'elf', entry: 0x200000, kernelEnd: 0x300000, cmdlineMaxSize: 2048 };
    const p = loadInitrd(mem, kernel, new Uint8Array([9, 8, 7]));
    expect(p.addr).toBe(16 * MiB - 0x1000);
    expect(Array.from(mem.read(p.addr, 3))).toEqual([9, 8, 7]);
  });
});

describe('zero page', () => {
  it('synthesizes a setup header for ELF kernels and fills pointers and E820', () => {
    const mem = GuestMemory.anonymous(128 * MiB);
    mem.slice(ZERO_PAGE_START, 0x1000).fill(0xaa); // must be cleared
    const e820 = buildE820(128 * MiB);
    writeBootParams(mem, { cmdlineAddr: CMDLINE_START, cmdlineLength: 42, initrd: { addr: 0x7000000, size: 0x123456 }, e820 });
    const zp = ZERO_PAGE_START;
    expect(mem.readU16(zp + 0x1fe)).toBe(0xaa55);
    expect(mem.readU32(zp + 0x202)).toBe(0x53726448);
    expect(mem.readU16(zp + 0x206)).toBe(0x020f);
    expect(mem.readU8(zp + 0x210)).toBe(0xff);
    expect(mem.readU8(zp + 0x211)).toBe(0x81);
    expect(mem.readU16(zp + 0x224)).toBe(0xfe00);
    expect(mem.readU32(zp + 0x228)).toBe(0x20000);
    expect(mem.readU32(zp + BP_EXT_CMD_LINE_PTR)).toBe(0);
    expect(mem.readU32(zp + 0x230)).toBe(0x1000000);
    expect(mem.readU32(zp + 0x238)).toBe(42);
    expect(mem.readU32(zp + 0x218)).toBe(0x7000000);
    expect(mem.readU32(zp + 0x21c)).toBe(0x123456);
    expect(mem.readU32(zp + BP_EXT_RAMDISK_IMAGE)).toBe(0);
    expect(mem.readU8(zp + BP_E820_ENTRIES)).toBe(3);
    expect(mem.readU64(zp + BP_E820_TABLE + 40)).toBe(0x100000n);
    expect(mem.readU64(zp + BP_E820_TABLE + 48)).toBe(BigInt(128 * MiB - 0x100000));
    expect(mem.readU32(zp + BP_E820_TABLE + 56)).toBe(E820_RAM);
    expect(mem.readU32(zp + BP_E820_TABLE + 36)).toBe(E820_RESERVED);
    expect(mem.readU8(zp + 0x1ef)).toBe(0); // sentinel
    expect(mem.readU8(zp + 0xfff)).toBe(0);
  });

  it('copies a bzImage setup header and sets the loader fields', () => {
    const mem = GuestMemory.anonymous(8 * MiB);
    const hdr = new Uint8Array(0x26c - 0x1f1);
    hdr[0x211 - 0x1f1] = 0x01; // LOADED_HIGH
    hdr[0x238 - 0x1f1] = 0xff; // kernel's cmdline_size stays
    hdr[0x260 - 0x1f1] = 0x55;
    writeBootParams(mem, { setupHeader: hdr, cmdlineAddr: CMDLINE_START, cmdlineLength: 5, e820: buildE820(8 * MiB) });
    expect(mem.readU8(ZERO_PAGE_START + 0x260)).toBe(0x55);
    expect(mem.readU8(ZERO_PAGE_START + 0x211)).toBe(0x81);
    expect(mem.readU8(ZERO_PAGE_START + 0x210)).toBe(0xff);
    expect(mem.readU32(ZERO_PAGE_START + 0x238)).toBe(0xff);
    expect(mem.readU32(ZERO_PAGE_START + 0x228)).toBe(CMDLINE_START);
  });

  it('splits 64-bit addresses into the ext_ fields', () => {
    const mem = GuestMemory.anonymous(8 * MiB);
    writeBootParams(mem, { cmdlineAddr: 0x1_2345_6000, cmdlineLength: 1, initrd: { addr: 0x2_0000_1000, size: 10 }, e820: [] });
    expect(mem.readU32(ZERO_PAGE_START + 0x228)).toBe(0x2345_6000);
    expect(mem.readU32(ZERO_PAGE_START + BP_EXT_CMD_LINE_PTR)).toBe(1);
    expect(mem.readU32(ZERO_PAGE_START + 0x218)).toBe(0x1000);
    expect(mem.readU32(ZERO_PAGE_START + BP_EXT_RAMDISK_IMAGE)).toBe(2);
  });

  it('refuses more than 128 E820 entries', () => {
    const e820 = Array.from({ length: 129 }, (_, i) => ({ addr: i * 0x1000, size: 0x1000, type: E820_RAM }));
    expect(errCode(() => writeBootParams(GuestMemory.anonymous(8 * MiB), { cmdlineAddr: CMDLINE_START, cmdlineLength: 0, e820 }))).toBe('BAD_MEMORY_LAYOUT');
  });
});
