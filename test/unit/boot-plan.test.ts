/**
 * Loading planned instead of performed (issue #12: images are read into guest memory off the
 * JavaScript thread): planKernel on the start of a file must decide exactly what loadKernel does
 * with the whole file, setupBootMemory with an initrd placed by other means must write what it
 * writes when it loads the initrd itself, and bootMemoryImage must give exactly the bytes
 * setupBootMemory writes.
 */
import fc from 'fast-check';
import { GuestMemory } from '../../lib/memory/guest-memory';
import {
  BootError,
  EBDA_END,
  KERNEL_HEAD_BYTES,
  bootMemoryImage,
  kernelHeadLength,
  loadKernel,
  planKernel,
  setupBootMemory,
  placeInitrd,
  lowMemoryEnd,
  memoryRegions,
  type KernelPlan,
} from '../../lib/boot';

const MiB = 1024 * 1024;

interface Seg {
  paddr: number;
  data: Uint8Array;
  memsz: number;
}

/** A minimal ELF64 executable; `gap` bytes between the header and the program headers. */
function makeElf(entry: number, segs: Seg[], gap = 0): Uint8Array {
  const phoff = 64 + gap;
  let off = phoff + 56 * segs.length;
  const buf = new Uint8Array(off + segs.reduce((a, s) => a + s.data.length, 0));
  const v = new DataView(buf.buffer);
  buf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 2, true);
  v.setUint16(18, 62, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(entry), true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, segs.length, true);
  segs.forEach((s, i) => {
    const ph = phoff + i * 56;
    v.setUint32(ph, 1, true);
    v.setBigUint64(ph + 8, BigInt(off), true);
    v.setBigUint64(ph + 16, BigInt(s.paddr), true);
    v.setBigUint64(ph + 24, BigInt(s.paddr), true);
    v.setBigUint64(ph + 32, BigInt(s.data.length), true);
    v.setBigUint64(ph + 40, BigInt(s.memsz), true);
    buf.set(s.data, off);
    off += s.data.length;
  });
  return buf;
}

/** A synthetic bzImage (see boot-bzimage.test.ts). */
function makeBzImage(payloadLen: number): Uint8Array {
  const sects = 4;
  const setupLen = (sects + 1) * 512;
  const buf = new Uint8Array(setupLen + payloadLen);
  const v = new DataView(buf.buffer);
  buf[0x1f1] = sects;
  v.setUint16(0x1fe, 0xaa55, true);
  buf[0x200] = 0xeb;
  buf[0x201] = 0x26c - 0x202;
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, 0x020f, true);
  buf[0x211] = 0x01;
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  buf[0x234] = 1;
  v.setUint16(0x236, 0x3, true);
  v.setUint32(0x238, 0x7ff, true);
  v.setBigUint64(0x258, 0x1000000n, true);
  v.setUint32(0x260, 0x400000, true);
  for (let i = setupLen; i < buf.length; i++) buf[i] = (i * 13) & 0xff;
  return buf;
}

/** Applies a plan the way the addon does: file bytes at their addresses, then zeros. */
function applyPlan(mem: GuestMemory, image: Uint8Array, plan: KernelPlan): void {
  for (const l of plan.loads) {
    mem.write(l.guestAddr, image.subarray(l.fileOffset, l.fileOffset + l.length));
    mem.slice(l.guestAddr + l.length, l.zeroFill).fill(0);
  }
}

function outcome(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return e instanceof BootError ? `${e.code}: ${e.message}` : `other: ${(e as Error).message}`;
  }
}

/** Guest memory of `size` bytes whose bytes are all 0xee, so that zeroing is visible. */
function dirtyMemory(size: number): GuestMemory {
  return new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(size).fill(0xee) }]);
}

describe('planKernel', () => {
  it('property: the plan of an ELF image does what loadKernel does, from the first bytes of the file', () => {
    const seg = fc.record({
      at: fc.integer({ min: 0, max: 60 }),
      len: fc.integer({ min: 0, max: 3000 }),
      bss: fc.integer({ min: 0, max: 5000 }),
      fill: fc.integer({ min: 1, max: 255 }),
    });
    fc.assert(
      fc.property(fc.array(seg, { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: 6000 }), (specs, gap) => {
        // Non-overlapping segments at distinct 64 KiB slots from 1 MiB.
        const used = new Set<number>();
        const segs: Seg[] = [];
        for (const s of specs) {
          if (used.has(s.at) || s.len + s.bss === 0) continue;
          used.add(s.at);
          segs.push({ paddr: MiB + s.at * 0x10000, data: new Uint8Array(s.len).fill(s.fill), memsz: Math.min(s.len + s.bss, 0x10000) });
        }
        if (segs.length === 0 || segs.some((s) => s.data.length > s.memsz)) return;
        const image = makeElf(segs[0].paddr, segs, gap);
        const memSize = 8 * MiB;
        const head = image.subarray(0, Math.min(image.length, KERNEL_HEAD_BYTES));
        const full = image.subarray(0, Math.min(image.length, kernelHeadLength(head)));
        const plan = planKernel(full, image.length, memSize);
        const a = dirtyMemory(memSize);
        const b = dirtyMemory(memSize);
        const loaded = loadKernel(a, image);
        applyPlan(b, image, plan);
        expect(plan.kernel).toEqual(loaded);
        expect(Buffer.compare(a.slice(0, memSize), b.slice(0, memSize))).toBe(0);
      }),
      { numRuns: 150 },
    );
  });

  it('asks for more than the first 4 KiB when the program headers lie further on', () => {
    const image = makeElf(MiB, [{ paddr: MiB, data: new Uint8Array(16), memsz: 16 }], 10_000);
    const head = image.subarray(0, KERNEL_HEAD_BYTES);
    expect(kernelHeadLength(head)).toBe(64 + 10_000 + 56);
    expect(outcome(() => planKernel(head, image.length, 8 * MiB))).toMatch(/BAD_IMAGE: .*past the bytes read/);
    expect(outcome(() => planKernel(image.subarray(0, kernelHeadLength(head)), image.length, 8 * MiB))).toBe('ok');
  });

  it('plans a bzImage as its protected-mode payload at 1 MiB, with the header from the first sector', () => {
    const image = makeBzImage(0x3000);
    const memSize = 32 * MiB;
    const plan = planKernel(image.subarray(0, KERNEL_HEAD_BYTES), image.length, memSize);
    const a = dirtyMemory(memSize);
    const b = dirtyMemory(memSize);
    expect(plan.kernel).toEqual(loadKernel(a, image));
    applyPlan(b, image, plan);
    expect(Buffer.compare(a.slice(0, memSize), b.slice(0, memSize))).toBe(0);
  });

  it('refuses what loadKernel refuses, with the same errors', () => {
    const inside = makeElf(MiB, [{ paddr: MiB, data: new Uint8Array(64), memsz: 64 }]);
    const outside = makeElf(7 * MiB, [{ paddr: 7 * MiB, data: new Uint8Array(64), memsz: 2 * MiB }]);
    const truncated = inside.subarray(0, inside.length - 10);
    const bzTooBig = makeBzImage(0x3000);
    for (const [image, memSize] of [[outside, 8 * MiB], [truncated, 8 * MiB], [new Uint8Array(100), 8 * MiB], [bzTooBig, 4 * MiB]] as const) {
      const viaLoad = outcome(() => loadKernel(dirtyMemory(memSize), image));
      expect(viaLoad).not.toBe('ok');
      expect(outcome(() => planKernel(image.subarray(0, KERNEL_HEAD_BYTES), image.length, memSize))).toBe(viaLoad);
    }
  });
});

describe('setupBootMemory with an initrd placement', () => {
  const kernel = { kind: 'elf' as const, entry: MiB, kernelEnd: 2 * MiB, cmdlineMaxSize: 2048 };

  it('property: the initrd bytes at their placement plus the boot structures equal loading the initrd itself', () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[ -~]{0,300}$/),
        fc.integer({ min: 1, max: 32 }),
        fc.constantFrom(16 * MiB, 64 * MiB),
        fc.uint8Array({ minLength: 1, maxLength: 3 * 4096 }),
        (cmdline, vcpuCount, memSize, initrd) => {
          const loaded = new GuestMemory(memoryRegions(memSize).map((r) => ({ guestAddr: r.guestAddr, bytes: new Uint8Array(r.size) })));
          const placed = new GuestMemory(memoryRegions(memSize).map((r) => ({ guestAddr: r.guestAddr, bytes: new Uint8Array(r.size) })));
          const ref = setupBootMemory(loaded, { kernel, cmdline, vcpuCount, memSize, initrd });
          const placement = placeInitrd(initrd.length, kernel.kernelEnd, lowMemoryEnd(memSize));
          // What the addon does: the file's bytes at the placement, outside setupBootMemory.
          placed.write(placement.addr, initrd);
          const mine = setupBootMemory(placed, { kernel, cmdline, vcpuCount, memSize, initrdPlacement: placement });
          expect(mine).toEqual(ref);
          expect(Buffer.compare(placed.slice(0, memSize), loaded.slice(0, memSize))).toBe(0);
        },
      ),
      { numRuns: 25 },
    );
  });
});

describe('bootMemoryImage', () => {
  const kernel = { kind: 'elf' as const, entry: MiB, kernelEnd: 2 * MiB, cmdlineMaxSize: 2048 };

  it('property: its writes on zeroed memory give exactly what setupBootMemory writes', () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[ -~]{0,300}$/),
        fc.integer({ min: 1, max: 32 }),
        fc.constantFrom(16 * MiB, 64 * MiB, 3328 * MiB + 4096),
        fc.option(fc.integer({ min: 1, max: 1 << 20 }), { nil: undefined }),
        (cmdline, vcpuCount, memSize, initrdSize) => {
          const initrdPlacement = initrdSize === undefined ? undefined : placeInitrd(initrdSize, kernel.kernelEnd, lowMemoryEnd(memSize));
          const opts = { kernel, cmdline, vcpuCount, memSize, initrdPlacement };
          const { setup, writes } = bootMemoryImage(opts);
          // Low memory is all the image may touch.
          for (const w of writes) expect(w.guestAddr + w.bytes.length).toBeLessThanOrEqual(EBDA_END);
          // The reference: setupBootMemory on real (sparse) guest memory of that size, low part only.
          const regions = memoryRegions(memSize).map((r) => ({ guestAddr: r.guestAddr, bytes: new Uint8Array(r.guestAddr === 0 ? r.size : 4096) }));
          const ref = new GuestMemory(regions.map((r, i) => (i === 0 ? r : { guestAddr: r.guestAddr, buffer: new ArrayBuffer(memoryRegions(memSize)[i].size), byteOffset: 0, size: memoryRegions(memSize)[i].size })));
          const refSetup = setupBootMemory(ref, opts);
          const mine = new Uint8Array(EBDA_END);
          for (const w of writes) mine.set(w.bytes, w.guestAddr);
          expect(Buffer.compare(mine, ref.slice(0, EBDA_END))).toBe(0);
          expect(setup).toEqual(refSetup);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('leaves nothing behind for the next call (its scratch is reused)', () => {
    const long = bootMemoryImage({ kernel, cmdline: 'x'.repeat(1500), vcpuCount: 32, memSize: 64 * MiB });
    const short = bootMemoryImage({ kernel, cmdline: 'y', vcpuCount: 1, memSize: 64 * MiB });
    const fresh = bootMemoryImage({ kernel, cmdline: 'y', vcpuCount: 1, memSize: 64 * MiB });
    expect(long.writes.length).toBeGreaterThan(0);
    expect(short.writes).toEqual(fresh.writes);
    const joined = Buffer.concat(short.writes.map((w) => Buffer.from(w.bytes)));
    expect(joined.includes(Buffer.from('xxxx'))).toBe(false);
  });

  it('refuses initrd bytes (it takes a placement)', () => {
    expect(outcome(() => bootMemoryImage({ kernel, vcpuCount: 1, memSize: 64 * MiB, initrd: new Uint8Array(8) }))).toMatch(/^BAD_MEMORY_LAYOUT/);
  });
});
