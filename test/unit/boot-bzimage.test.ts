import fc from 'fast-check';
import { GuestMemory } from '../../lib/memory/guest-memory';
import {
  BootError,
  loadKernel,
  setupBoot,
  parseBzImage,
  BZIMAGE_LOAD_ADDR,
  CMDLINE_MAX_SIZE,
  HDR_SETUP_SECTS,
} from '../../lib/boot';

const MiB = 1024 * 1024;

interface HdrOpts {
  version?: number;
  setupSects?: number;
  xloadflags?: number;
  loadflags?: number;
  relocatable?: number;
  alignment?: number;
  prefAddress?: bigint;
  initSize?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  payload?: Uint8Array;
  headerEnd?: number;
}

/** A synthetic bzImage: setup sectors with a boot protocol header, then a protected-mode payload. */
function makeBzImage(o: HdrOpts = {}): Uint8Array {
  const sects = o.setupSects ?? 4;
  const payload = o.payload ?? new Uint8Array(0x1000).map((_, i) => (i * 7) & 0xff);
  const setupLen = ((sects || 4) + 1) * 512;
  const buf = new Uint8Array(setupLen + payload.length);
  const v = new DataView(buf.buffer);
  buf[0x1f1] = sects;
  v.setUint16(0x1fe, 0xaa55, true);
  buf[0x200] = 0xeb;
  buf[0x201] = (o.headerEnd ?? 0x26c) - 0x202;
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, o.version ?? 0x020f, true);
  buf[0x211] = o.loadflags ?? 0x01;
  v.setUint32(0x214, 0x100000, true);
  v.setUint32(0x22c, o.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(0x230, o.alignment ?? 0x200000, true);
  buf[0x234] = o.relocatable ?? 1;
  v.setUint16(0x236, o.xloadflags ?? 0x3, true);
  v.setUint32(0x238, o.cmdlineSize ?? 0x7ff, true);
  v.setBigUint64(0x258, o.prefAddress ?? 0x1000000n, true);
  v.setUint32(0x260, o.initSize ?? 0x800000, true);
  buf.set(payload, setupLen);
  return buf;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BootError);
    return (e as BootError).code;
  }
  return 'no error';
}

describe('bzImage loader', () => {
  it('loads the protected-mode kernel at 1 MiB with the 64-bit entry at +0x200', () => {
    const mem = GuestMemory.anonymous(64 * MiB);
    const img = makeBzImage();
    const k = loadKernel(mem, img);
    expect(k.kind).toBe('bzimage');
    expect(BZIMAGE_LOAD_ADDR).toBe(0x100000);
    expect(k.entry).toBe(0x100200);
    expect(Array.from(mem.read(0x100000, 16))).toEqual(Array.from(img.subarray(5 * 512, 5 * 512 + 16)));
    // Setup header from 0x1F1 to 0x202 + byte at 0x201.
    expect(k.setupHeader!.length).toBe(0x26c - HDR_SETUP_SECTS);
    expect(k.setupHeader![0x202 - 0x1f1]).toBe(0x48);
    expect(k.cmdlineMaxSize).toBe(CMDLINE_MAX_SIZE);
    expect(k.initrdAddrMax).toBe(0x7fffffff);
  });

  it('treats setup_sects 0 as 4', () => {
    const bz = parseBzImage(makeBzImage({ setupSects: 0 }));
    expect(bz.payloadOffset).toBe(5 * 512);
  });

  it('computes the runtime start from pref_address and kernel_alignment (boot.rst init_size)', () => {
    // Loaded at 1 MiB below pref_address: runs at pref_address.
    let bz = parseBzImage(makeBzImage({ prefAddress: 0x1000000n, initSize: 0x2000000 }));
    expect(bz.runtimeStart).toBe(0x1000000);
    expect(bz.kernelEnd).toBe(0x3000000);
    // pref_address below the load address: align the load address up.
    bz = parseBzImage(makeBzImage({ prefAddress: 0n, alignment: 0x200000 }));
    expect(bz.runtimeStart).toBe(0x200000);
    // Not relocatable: always pref_address.
    bz = parseBzImage(makeBzImage({ relocatable: 0, prefAddress: 0x400000n }));
    expect(bz.runtimeStart).toBe(0x400000);
  });

  it('refuses a kernel whose init_size does not fit (NO_ROOM)', () => {
    const img = makeBzImage({ initSize: 0x4000000 });
    expect(code(() => loadKernel(GuestMemory.anonymous(64 * MiB), img))).toBe('NO_ROOM');
    expect(code(() => loadKernel(GuestMemory.anonymous(96 * MiB), img))).toBe('no error');
  });

  it('refuses old protocols and kernels without the 64-bit entry', () => {
    expect(code(() => parseBzImage(makeBzImage({ version: 0x020b })))).toBe('UNSUPPORTED_PROTOCOL');
    expect(code(() => parseBzImage(makeBzImage({ xloadflags: 0x2 })))).toBe('UNSUPPORTED_PROTOCOL');
    expect(code(() => parseBzImage(makeBzImage({ loadflags: 0 })))).toBe('UNSUPPORTED_PROTOCOL');
  });

  it('refuses malformed headers', () => {
    expect(code(() => parseBzImage(makeBzImage({ headerEnd: 0x250 })))).toBe('BAD_IMAGE');
    expect(code(() => parseBzImage(makeBzImage({ alignment: 0x300000 })))).toBe('BAD_IMAGE');
    expect(code(() => parseBzImage(makeBzImage({ payload: new Uint8Array(0x200) })))).toBe('BAD_IMAGE');
    const truncated = makeBzImage().subarray(0, 5 * 512);
    expect(code(() => parseBzImage(truncated))).toBe('BAD_IMAGE');
    const noMagic = makeBzImage();
    noMagic[0x1fe] = 0;
    expect(code(() => loadKernel(GuestMemory.anonymous(64 * MiB), noMagic))).toBe('BAD_IMAGE');
  });

  it('lowers the command line limit to cmdline_size + 1', () => {
    const k = loadKernel(GuestMemory.anonymous(64 * MiB), makeBzImage({ cmdlineSize: 255 }));
    expect(k.cmdlineMaxSize).toBe(256);
  });

  it('fails only with BootError on corrupted headers, and otherwise honours the header it booted with', () => {
    const base = makeBzImage({ relocatable: 0, prefAddress: 0x100000n, initSize: 0x200000, initrdAddrMax: 0x17fffff });
    const initrd = new Uint8Array(0x3000).fill(0xa5);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0x1f1, max: 0x26f }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        (edits) => {
          const img = base.slice();
          for (const [at, b] of edits) img[at] = b;
          const mem = GuestMemory.anonymous(32 * MiB);
          let boot;
          try {
            boot = setupBoot(mem, { kernel: img, cmdline: 'console=ttyS0', initrd, vcpuCount: 1 });
          } catch (e) {
            expect(e).toBeInstanceOf(BootError);
            return;
          }
          const hdr = new DataView(img.buffer, img.byteOffset);
          expect(boot.kernel.entry).toBe(BZIMAGE_LOAD_ADDR + 0x200);
          // The initrd sits above everything the kernel claims and below its initrd_addr_max.
          const max = hdr.getUint32(0x22c, true) || 0x37ffffff;
          expect(boot.initrd!.addr).toBeGreaterThanOrEqual(boot.kernel.kernelEnd);
          expect(boot.initrd!.addr + initrd.length - 1).toBeLessThanOrEqual(max);
          expect(boot.cmdline.length + 1).toBeLessThanOrEqual(hdr.getUint32(0x238, true) + 1);
        },
      ),
      { numRuns: 500 },
    );
  });
});
