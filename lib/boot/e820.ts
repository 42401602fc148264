/**
 * The guest's RAM layout and the E820 map that describes it to the kernel.
 * @module
 */

import { BootError, hex } from './errors';
import { EBDA_END, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE } from './layout';

/** E820 type: usable RAM. */
export const E820_RAM = 1;
/** E820 type: reserved (not RAM the kernel may allocate). */
export const E820_RESERVED = 2;
/** boot_params holds at most this many E820 entries (zero-page.rst, `e820_table[128]`). */
export const E820_MAX_ENTRIES = 128;

/** One E820 entry: `[addr, addr+size)` of `type`. */
export interface E820Entry {
  /** First guest physical address. */
  addr: number;
  /** Length in bytes. */
  size: number;
  /** {@link E820_RAM} or {@link E820_RESERVED}. */
  type: number;
}

/** One range of guest physical RAM the VM maps. */
export interface RamRegion {
  /** First guest physical address. */
  guestAddr: number;
  /** Length in bytes. */
  size: number;
}

/** Smallest guest we lay out: the boot structures below 1 MiB plus 1 MiB for a kernel. */
export const MIN_MEMORY_SIZE = 2 * HIMEM_START;
/** Largest guest we lay out (keeps every address an exact JS number). */
export const MAX_MEMORY_SIZE = 2 ** 46;

function checkMemSize(memSize: number): void {
  if (!Number.isSafeInteger(memSize) || memSize < MIN_MEMORY_SIZE || memSize > MAX_MEMORY_SIZE || memSize % PAGE_SIZE !== 0) {
    throw new BootError(
      'BAD_MEMORY_SIZE',
      `memory size ${memSize} must be a multiple of 4 KiB between ${MIN_MEMORY_SIZE} and ${MAX_MEMORY_SIZE} bytes`,
    );
  }
}

/**
 * The guest physical RAM regions for `memSize` bytes of RAM: one region from 0 up to the 32-bit
 * MMIO hole, and the remainder (if any) from 4 GiB.
 * @throws BootError BAD_MEMORY_SIZE
 */
export function memoryRegions(memSize: number): RamRegion[] {
  checkMemSize(memSize);
  if (memSize <= MMIO_GAP_START) return [{ guestAddr: 0, size: memSize }];
  return [
    { guestAddr: 0, size: MMIO_GAP_START },
    { guestAddr: MMIO_GAP_END, size: memSize - MMIO_GAP_START },
  ];
}

/**
 * End of the RAM region that starts at 0 ("low memory"): where the kernel, initrd and command
 * line must fit, since they are addressed through 32-bit boot_params fields.
 */
export function lowMemoryEnd(memSize: number): number {
  const r = memoryRegions(memSize)[0];
  return r.guestAddr + r.size;
}

/**
 * The E820 map for `memSize` bytes of RAM laid out by {@link memoryRegions}:
 * conventional memory up to the EBDA, the EBDA reserved (it holds the MP table), nothing for the
 * legacy VGA/BIOS hole, RAM from 1 MiB to the MMIO hole, and RAM above 4 GiB for the rest.
 * @throws BootError BAD_MEMORY_SIZE
 */
export function buildE820(memSize: number): E820Entry[] {
  const regions = memoryRegions(memSize);
  const low = regions[0];
  const out: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: EBDA_END - EBDA_START, type: E820_RESERVED },
    { addr: HIMEM_START, size: low.size - HIMEM_START, type: E820_RAM },
  ];
  for (const r of regions.slice(1)) out.push({ addr: r.guestAddr, size: r.size, type: E820_RAM });
  return out;
}

/** Throws unless `entries` fits boot_params and is sorted and non-overlapping. */
export function checkE820(entries: readonly E820Entry[]): void {
  if (entries.length > E820_MAX_ENTRIES) {
    throw new BootError('BAD_MEMORY_LAYOUT', `${entries.length} E820 entries exceed the ${E820_MAX_ENTRIES} boot_params holds`);
  }
  let prevEnd = 0;
  for (const e of entries) {
    if (!Number.isSafeInteger(e.addr) || !Number.isSafeInteger(e.size) || e.addr < prevEnd || e.size <= 0) {
      throw new BootError('BAD_MEMORY_LAYOUT', `E820 entry ${hex(e.addr)}+${hex(e.size)} is empty, unsorted or overlapping`);
    }
    prevEnd = e.addr + e.size;
  }
}

/** Same as {@link buildE820}: the E820 map the guest receives for `memSize` bytes of RAM. */
export function e820Map(memSize: number): E820Entry[] {
  return buildE820(memSize);
}
