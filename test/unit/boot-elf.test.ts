import { existsSync, readFileSync } from 'fs';
import { join } from 'path';
import fc from 'fast-check';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { BootError, loadElf, loadKernel, parseElf, EM_X86_64, ET_EXEC } from '../../lib/boot';

interface Seg {
  paddr: number;
  vaddr?: bigint;
  data: Uint8Array;
  memsz?: number;
  type?: number;
}

/** Builds a minimal ELF64 executable: header, program headers, then segment data. */
function makeElf(opts: { entry: bigint; segs: Seg[]; machine?: number; type?: number; cls?: number; data?: number }): Uint8Array {
  const phoff = 64;
  let off = phoff + 56 * opts.segs.length;
  const total = off + opts.segs.reduce((a, s) => a + s.data.length, 0);
  const buf = new Uint8Array(total);
  const v = new DataView(buf.buffer);
  buf.set([0x7f, 0x45, 0x4c, 0x46, opts.cls ?? 2, opts.data ?? 1, 1]);
  v.setUint16(16, opts.type ?? ET_EXEC, true);
  v.setUint16(18, opts.machine ?? EM_X86_64, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, opts.entry, true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, opts.segs.length, true);
  opts.segs.forEach((s, i) => {
    const ph = phoff + i * 56;
    v.setUint32(ph, s.type ?? 1, true);
    v.setUint32(ph + 4, 5, true);
    v.setBigUint64(ph + 8, BigInt(off), true);
    v.setBigUint64(ph + 16, s.vaddr ?? BigInt(s.paddr), true);
    v.setBigUint64(ph + 24, BigInt(s.paddr), true);
    v.setBigUint64(ph + 32, BigInt(s.data.length), true);
    v.setBigUint64(ph + 40, BigInt(s.memsz ?? s.data.length), true);
    buf.set(s.data, off);
    off += s.data.length;
  });
  return buf;
}

const MiB = 1024 * 1024;
const code = new Uint8Array([0xf4, 0xeb, 0xfd, 0x90]);

function expectBootError(fn: () => unknown, code: string, msg?: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BootError);
    expect((e as BootError).code).toBe(code);
    if (msg) expect((e as Error).message).toMatch(msg);
    return;
  }
  throw new Error('expected a BootError');
}

describe('ELF loader', () => {
  it('loads PT_LOAD segments at p_paddr and zeroes bss', () => {
    const mem = GuestMemory.anonymous(8 * MiB);
    mem.slice(0x201000, 0x100).fill(0xee); // stale bytes the bss must clear
    const img = makeElf({
      entry: 0x200000n,
      segs: [
        { paddr: 0x200000, data: code },
        { paddr: 0x201000, data: new Uint8Array([1, 2, 3]), memsz: 0x100 },
      ],
    });
    const k = loadKernel(mem, img);
    expect(k.kind).toBe('elf');
    expect(k.entry).toBe(0x200000);
    expect(k.kernelEnd).toBe(0x201100);
    expect(k.setupHeader).toBeUndefined();
    expect(Array.from(mem.read(0x200000, 4))).toEqual(Array.from(code));
    expect(Array.from(mem.read(0x201000, 4))).toEqual([1, 2, 3, 0]);
    expect(mem.read(0x201003, 0xfd).every((b) => b === 0)).toBe(true);
  });

  it('translates a virtual entry point through its segment', () => {
    const img = makeElf({ entry: 0xffffffff81000010n, segs: [{ paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: new Uint8Array(64) }] });
    expect(parseElf(img).entry).toBe(0x1000010);
  });

  it('refuses an entry point outside every segment', () => {
    const img = makeElf({ entry: 0x300000n, segs: [{ paddr: 0x200000, data: code }] });
    expectBootError(() => parseElf(img), 'BAD_IMAGE', /entry point 0x300000/);
  });

  it('refuses truncated files and program headers past the end', () => {
    const img = makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code }] });
    expectBootError(() => parseElf(img.subarray(0, 40)), 'BAD_IMAGE', /shorter than the ELF64 header/);
    expectBootError(() => parseElf(img.subarray(0, 100)), 'BAD_IMAGE', /program headers/);
    expectBootError(() => parseElf(img.subarray(0, img.length - 1)), 'BAD_IMAGE', /past the end/);
  });

  it('refuses wrong machine, class, endianness and type', () => {
    const segs = [{ paddr: 0x200000, data: code }];
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs, machine: 3 })), 'BAD_IMAGE', /e_machine 3/);
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs, cls: 1 })), 'BAD_IMAGE', /ELFCLASS64/);
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs, data: 2 })), 'BAD_IMAGE', /little-endian/);
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs, type: 3 })), 'BAD_IMAGE', /ET_EXEC/);
  });

  it('refuses p_filesz > p_memsz, no PT_LOAD, and overlapping segments', () => {
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code, memsz: 2 }] })), 'BAD_IMAGE', /p_filesz/);
    expectBootError(() => parseElf(makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code, type: 4 }] })), 'BAD_IMAGE', /no PT_LOAD/);
    const overlap = makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code, memsz: 0x1000 }, { paddr: 0x200800, data: code }] });
    expectBootError(() => parseElf(overlap), 'BAD_IMAGE', /overlaps the segment/);
  });

  it('refuses segments outside guest memory and leaves memory untouched', () => {
    const mem = GuestMemory.anonymous(4 * MiB);
    const img = makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code }, { paddr: 0x3ff000, data: code, memsz: 0x2000 }] });
    expectBootError(() => loadElf(mem, img), 'BAD_IMAGE', /not inside guest memory/);
    expect(mem.readU32(0x200000)).toBe(0);
  });

  it('refuses segments overlapping the boot structures below 1 MiB', () => {
    const img = makeElf({ entry: 0x7000n, segs: [{ paddr: 0x7000, data: code }] });
    expectBootError(() => parseElf(img), 'BAD_IMAGE', /boot structures/);
    const straddle = makeElf({ entry: 0x100000n, segs: [{ paddr: 0xff000, data: code, memsz: 0x2000 }] });
    expectBootError(() => parseElf(straddle), 'BAD_IMAGE', /boot structures/);
  });

  it('refuses huge u64 fields without losing precision', () => {
    const img = makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code }] });
    new DataView(img.buffer).setBigUint64(64 + 24, 0xffff_ffff_ffff_0000n, true);
    expectBootError(() => parseElf(img), 'BAD_IMAGE', /p_paddr .* out of range/);
  });

  it('refuses something that is neither ELF nor bzImage', () => {
    expectBootError(() => loadKernel(GuestMemory.anonymous(4 * MiB), new Uint8Array(1024)), 'BAD_IMAGE', /neither an ELF64/);
  });

  it('fails only with BootError on corrupted images, never writing below 1 MiB', () => {
    const base = makeElf({ entry: 0x200000n, segs: [{ paddr: 0x200000, data: code }, { paddr: 0x201000, data: code, memsz: 0x40 }] });
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), (edits) => {
        const img = base.slice();
        for (const [at, b] of edits) img[at] = b;
        const mem = GuestMemory.anonymous(4 * MiB);
        try {
          loadKernel(mem, img);
        } catch (e) {
          expect(e).toBeInstanceOf(BootError);
        }
        expect(mem.read(0, 0x100000).every((b) => b === 0)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  const hello = join(__dirname, '../guests/out/hello.elf');
  (existsSync(hello) ? it : it.skip)('parses the freestanding test guest', () => {
    const elf = parseElf(readFileSync(hello));
    expect(elf.entry).toBe(0x200000);
    expect(elf.segments.length).toBeGreaterThan(0);
  });

  const vmlinux = '/work/shared/guest/vmlinux';
  (existsSync(vmlinux) ? it : it.skip)('parses the Linux test kernel (physical entry 0x1000000)', () => {
    const elf = parseElf(readFileSync(vmlinux));
    expect(elf.entry).toBe(0x1000000);
    expect(elf.segments[0].paddr).toBe(0x1000000);
  });
});
