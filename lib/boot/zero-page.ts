/**
 * `struct boot_params` (the "zero page"), the kernel's only input besides its registers on the
 * 64-bit boot path. Offsets: Documentation/arch/x86/zero-page.rst.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { checkE820, type E820Entry } from './e820';
import { BootError, hex } from './errors';
import type { InitrdPlacement } from './initrd';
import { ZERO_PAGE_SIZE, ZERO_PAGE_START } from './layout';
import {
  BOOT_FLAG_MAGIC,
  CAN_USE_HEAP,
  HDRS_MAGIC,
  HDR_BOOT_FLAG,
  HDR_CMDLINE_SIZE,
  HDR_CMD_LINE_PTR,
  HDR_HEADER,
  HDR_HEAP_END_PTR,
  HDR_KERNEL_ALIGNMENT,
  HDR_LOADFLAGS,
  HDR_MAX_END,
  HDR_RAMDISK_IMAGE,
  HDR_RAMDISK_SIZE,
  HDR_SETUP_SECTS,
  HDR_TYPE_OF_LOADER,
  HDR_VERSION,
  HEAP_END_PTR,
  LOADED_HIGH,
  LOADER_TYPE_UNDEFINED,
  SYNTHESIZED_KERNEL_ALIGNMENT,
  SYNTHESIZED_PROTOCOL,
} from './setup-header';

/** boot_params offset of `ext_ramdisk_image` (high 32 bits of ramdisk_image). */
export const BP_EXT_RAMDISK_IMAGE = 0x0c0;
/** boot_params offset of `ext_ramdisk_size`. */
export const BP_EXT_RAMDISK_SIZE = 0x0c4;
/** boot_params offset of `ext_cmd_line_ptr`. */
export const BP_EXT_CMD_LINE_PTR = 0x0c8;
/** boot_params offset of `e820_entries` (u8). */
export const BP_E820_ENTRIES = 0x1e8;
/**
 * boot_params offset of `sentinel`: the kernel clears "stale" fields when it is non-zero, to catch
 * loaders that copy the whole header sector; we zero the page, so it stays 0.
 */
export const BP_SENTINEL = 0x1ef;
/** boot_params offset of the setup header. */
export const BP_HDR = HDR_SETUP_SECTS;
/** boot_params offset of `e820_table`. */
export const BP_E820_TABLE = 0x2d0;
/** Bytes per e820 entry: addr u64, size u64, type u32, packed. */
export const E820_ENTRY_SIZE = 20;

const U32 = 0x1_0000_0000;

/** What goes into the zero page. */
export interface BootParamsOptions {
  /** The bzImage's setup header (file bytes from 0x1F1); omitted for ELF kernels, for which one is synthesized. */
  setupHeader?: Uint8Array;
  /** Guest physical address of the NUL-terminated command line. */
  cmdlineAddr: number;
  /** Command line length without the NUL. */
  cmdlineLength: number;
  /** Initrd location, if there is one. */
  initrd?: InitrdPlacement;
  /** Memory map. */
  e820: readonly E820Entry[];
  /** Where to write; defaults to {@link ZERO_PAGE_START}. */
  addr?: number;
}

/**
 * Zeroes the zero page and fills it: setup header (the kernel's own, or a synthesized one for
 * ELF kernels), command line pointer, initrd and E820 map.
 * @returns the zero page's guest physical address (RSI at entry)
 * @throws BootError BAD_IMAGE (setup header too long), BAD_MEMORY_LAYOUT (E820)
 * @throws MemoryError when the page is outside guest memory
 */
export function writeBootParams(mem: GuestMemory, opts: BootParamsOptions): number {
  const base = opts.addr ?? ZERO_PAGE_START;
  checkE820(opts.e820);
  const zp = mem.slice(base, ZERO_PAGE_SIZE);
  zp.fill(0);

  if (opts.setupHeader) {
    if (BP_HDR + opts.setupHeader.length > HDR_MAX_END) {
      throw new BootError('BAD_IMAGE', `setup header of ${opts.setupHeader.length} bytes overruns boot_params`);
    }
    zp.set(opts.setupHeader, BP_HDR);
    // boot.rst: a loader writes type_of_loader and may claim the heap; other kernel fields stay.
    mem.writeU8(base + HDR_TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
    mem.writeU8(base + HDR_LOADFLAGS, mem.readU8(base + HDR_LOADFLAGS) | CAN_USE_HEAP);
    mem.writeU16(base + HDR_HEAP_END_PTR, HEAP_END_PTR);
  } else {
    mem.writeU16(base + HDR_BOOT_FLAG, BOOT_FLAG_MAGIC);
    mem.writeU32(base + HDR_HEADER, HDRS_MAGIC);
    mem.writeU16(base + HDR_VERSION, SYNTHESIZED_PROTOCOL);
    mem.writeU8(base + HDR_TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
    mem.writeU8(base + HDR_LOADFLAGS, LOADED_HIGH | CAN_USE_HEAP);
    mem.writeU16(base + HDR_HEAP_END_PTR, HEAP_END_PTR);
    mem.writeU32(base + HDR_KERNEL_ALIGNMENT, SYNTHESIZED_KERNEL_ALIGNMENT);
    mem.writeU32(base + HDR_CMDLINE_SIZE, opts.cmdlineLength);
  }

  writeSplit(mem, base + HDR_CMD_LINE_PTR, base + BP_EXT_CMD_LINE_PTR, opts.cmdlineAddr, 'command line address');
  if (opts.initrd) {
    writeSplit(mem, base + HDR_RAMDISK_IMAGE, base + BP_EXT_RAMDISK_IMAGE, opts.initrd.addr, 'initrd address');
    writeSplit(mem, base + HDR_RAMDISK_SIZE, base + BP_EXT_RAMDISK_SIZE, opts.initrd.size, 'initrd size');
  }

  mem.writeU8(base + BP_E820_ENTRIES, opts.e820.length);
  opts.e820.forEach((e, i) => {
    const at = base + BP_E820_TABLE + i * E820_ENTRY_SIZE;
    mem.writeU64(at, BigInt(e.addr));
    mem.writeU64(at + 8, BigInt(e.size));
    mem.writeU32(at + 16, e.type);
  });
  return base;
}

/** A 64-bit value split over a 32-bit setup header field and its `ext_` high half. */
function writeSplit(mem: GuestMemory, lowAt: number, highAt: number, value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0 || value >= U32 * U32) throw new BootError('BAD_MEMORY_LAYOUT', `${what} ${hex(value)} is out of range`);
  mem.writeU32(lowAt, value % U32);
  mem.writeU32(highAt, Math.floor(value / U32));
}
