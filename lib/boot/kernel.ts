/**
 * Kernel image loading: ELF64 executables and bzImages, told apart by their magic numbers.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { loadBzImage, isBzImage, parseBzImage, type BzImage } from './bzimage';
import { memoryRegions } from './e820';
import { elfHeadersEnd, isElf, loadElf, parseElf, type ElfImage } from './elf';
import { BootError, hex } from './errors';
import { CMDLINE_MAX_SIZE } from './layout';
import { DEFAULT_INITRD_ADDR_MAX } from './setup-header';

/** A kernel in guest memory, ready to be entered. */
export interface LoadedKernel {
  /** Which loader handled it. */
  kind: 'elf' | 'bzimage';
  /** Guest physical 64-bit entry point. */
  entry: number;
  /** bzImage only: the image's setup header (file bytes from 0x1F1), to copy into the zero page. */
  setupHeader?: Uint8Array;
  /** First guest physical address above everything the kernel occupies early on. */
  kernelEnd: number;
  /**
   * Highest address the initrd may occupy, when the kernel constrains it (bzImage
   * `initrd_addr_max`); undefined means "anywhere in low memory".
   */
  initrdAddrMax?: number;
  /** Largest command line the kernel takes, including the NUL. */
  cmdlineMaxSize: number;
}

function elfKernel(elf: ElfImage): LoadedKernel {
  return { kind: 'elf', entry: elf.entry, kernelEnd: elf.kernelEnd, cmdlineMaxSize: CMDLINE_MAX_SIZE };
}

function bzKernel(bz: BzImage): LoadedKernel {
  return {
    kind: 'bzimage',
    entry: bz.entry,
    setupHeader: bz.setupHeader,
    kernelEnd: bz.kernelEnd,
    initrdAddrMax: bz.initrdAddrMax || DEFAULT_INITRD_ADDR_MAX,
    // cmdline_size excludes the NUL; a kernel may accept less than we would pass, never more.
    cmdlineMaxSize: Math.min(CMDLINE_MAX_SIZE, bz.cmdlineSize + 1),
  };
}

function neitherError(size: number): BootError {
  return new BootError(
    'BAD_IMAGE',
    `kernel image (${size} bytes) is neither an ELF64 executable (\\x7fELF) nor a bzImage (HdrS at 0x202): pass an uncompressed vmlinux or a bzImage`,
  );
}

/**
 * Loads an ELF64 x86_64 executable or a 64-bit bzImage into guest memory.
 * @throws BootError BAD_IMAGE when it is neither (or is malformed), UNSUPPORTED_PROTOCOL, NO_ROOM
 */
export function loadKernel(mem: GuestMemory, image: Uint8Array): LoadedKernel {
  if (isElf(image)) return elfKernel(loadElf(mem, image));
  if (isBzImage(image)) return bzKernel(loadBzImage(mem, image));
  throw neitherError(image.length);
}

/** A range of the kernel file that goes into guest memory. */
export interface KernelLoad {
  /** First byte in the file. */
  fileOffset: number;
  /** Bytes taken from the file. */
  length: number;
  /** Guest physical address of the first byte. */
  guestAddr: number;
  /** Bytes zeroed after them (an ELF segment's bss). */
  zeroFill: number;
}

/** What {@link planKernel} found: the kernel as {@link loadKernel} would report it, and what to copy. */
export interface KernelPlan {
  /** The kernel, once its ranges are in guest memory. */
  kernel: LoadedKernel;
  /** File ranges to copy, in file order. */
  loads: KernelLoad[];
}

/** Bytes of a kernel file that {@link planKernel} needs: enough for a bzImage's setup header and most ELF headers. */
export const KERNEL_HEAD_BYTES = 4096;

/**
 * How many bytes from the start of the kernel file {@link planKernel} needs, given its first
 * {@link KERNEL_HEAD_BYTES} (more only for an ELF file whose program headers lie further on).
 */
export function kernelHeadLength(head: Uint8Array): number {
  const elfEnd = isElf(head) ? elfHeadersEnd(head) : undefined;
  return Math.max(head.length, elfEnd ?? 0);
}

/**
 * The same checks as {@link loadKernel}, for a kernel of `fileSize` bytes whose start is `head`
 * ({@link kernelHeadLength} bytes), and a guest of `memSize` bytes laid out by
 * {@link memoryRegions}; instead of copying, it returns the file ranges to copy, so that the
 * copy can be made elsewhere (straight from the file, off the JavaScript thread).
 * @throws BootError BAD_IMAGE, UNSUPPORTED_PROTOCOL, NO_ROOM, BAD_MEMORY_SIZE
 */
export function planKernel(head: Uint8Array, fileSize: number, memSize: number): KernelPlan {
  const regions = memoryRegions(memSize);
  const inRam = (addr: number, len: number): boolean =>
    regions.some((r) => addr >= r.guestAddr && addr + len <= r.guestAddr + r.size);
  if (isElf(head)) {
    const elf = parseElf(head, fileSize);
    for (const s of elf.segments) {
      if (!inRam(s.paddr, s.memsz)) {
        throw new BootError('BAD_IMAGE', `ELF: segment at ${hex(s.paddr)}+${hex(s.memsz)} is not inside guest memory`);
      }
    }
    const loads = elf.segments.map((s) => ({ fileOffset: s.offset, length: s.filesz, guestAddr: s.paddr, zeroFill: s.memsz - s.filesz }));
    return { kernel: elfKernel(elf), loads };
  }
  if (isBzImage(head)) {
    const bz = parseBzImage(head, fileSize);
    if (!inRam(bz.loadAddr, bz.payloadSize)) {
      throw new BootError('NO_ROOM', `bzImage: ${bz.payloadSize} bytes at ${hex(bz.loadAddr)} do not fit in guest memory`);
    }
    if (!inRam(bz.runtimeStart, bz.initSize)) {
      throw new BootError('NO_ROOM', `bzImage: the kernel needs ${hex(bz.initSize)} bytes at ${hex(bz.runtimeStart)} (init_size), beyond guest memory`);
    }
    return { kernel: bzKernel(bz), loads: [{ fileOffset: bz.payloadOffset, length: bz.payloadSize, guestAddr: bz.loadAddr, zeroFill: 0 }] };
  }
  throw neitherError(fileSize);
}
