/**
 * Kernel image loading: ELF64 executables and bzImages, told apart by their magic numbers.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { loadBzImage, isBzImage } from './bzimage';
import { isElf, loadElf } from './elf';
import { BootError } from './errors';
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

/**
 * Loads an ELF64 x86_64 executable or a 64-bit bzImage into guest memory.
 * @throws BootError BAD_IMAGE when it is neither (or is malformed), UNSUPPORTED_PROTOCOL, NO_ROOM
 */
export function loadKernel(mem: GuestMemory, image: Uint8Array): LoadedKernel {
  if (isElf(image)) {
    const elf = loadElf(mem, image);
    return { kind: 'elf', entry: elf.entry, kernelEnd: elf.kernelEnd, cmdlineMaxSize: CMDLINE_MAX_SIZE };
  }
  if (isBzImage(image)) {
    const bz = loadBzImage(mem, image);
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
  throw new BootError(
    'BAD_IMAGE',
    `kernel image (${image.length} bytes) is neither an ELF64 executable (\\x7fELF) nor a bzImage (HdrS at 0x202): pass an uncompressed vmlinux or a bzImage`,
  );
}
