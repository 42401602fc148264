/**
 * Initrd placement: as high in low memory as the kernel allows, above the kernel.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { BootError, hex } from './errors';
import type { LoadedKernel } from './kernel';
import { MMIO_GAP_START, PAGE_SIZE } from './layout';

/** Where an initrd went. */
export interface InitrdPlacement {
  /** Guest physical address (page aligned). */
  addr: number;
  /** Length in bytes. */
  size: number;
}

/**
 * The highest page-aligned address for `size` bytes that ends at or below both `lowMemEnd` and
 * `addrMax + 1`, and starts at or above `kernelEnd`.
 * @throws BootError INITRD_TOO_LARGE
 */
export function placeInitrd(size: number, kernelEnd: number, lowMemEnd: number, addrMax?: number): InitrdPlacement {
  if (!Number.isSafeInteger(size) || size <= 0) throw new BootError('INITRD_TOO_LARGE', `initrd size ${size} is not a positive integer`);
  const ceiling = Math.min(lowMemEnd, addrMax === undefined ? lowMemEnd : addrMax + 1);
  const addr = Math.floor((ceiling - size) / PAGE_SIZE) * PAGE_SIZE;
  const floor = Math.ceil(kernelEnd / PAGE_SIZE) * PAGE_SIZE;
  if (ceiling - size < 0 || addr < floor) {
    throw new BootError(
      'INITRD_TOO_LARGE',
      `initrd of ${size} bytes does not fit between the kernel end ${hex(floor)} and ${hex(ceiling)}`,
    );
  }
  return { addr, size };
}

/** End of the guest RAM region that contains address 0 (and the kernel), capped at the MMIO hole. */
export function lowMemoryEndOf(mem: GuestMemory): number {
  for (const r of mem.regions) {
    if (r.guestAddr === 0) return Math.min(r.size, MMIO_GAP_START);
  }
  throw new BootError('BAD_MEMORY_LAYOUT', 'guest memory has no region at address 0');
}

/**
 * Places `data` with {@link placeInitrd} and copies it into guest memory.
 * @throws BootError INITRD_TOO_LARGE
 */
export function loadInitrd(mem: GuestMemory, kernel: LoadedKernel, data: Uint8Array): InitrdPlacement {
  const p = placeInitrd(data.length, kernel.kernelEnd, lowMemoryEndOf(mem), kernel.initrdAddrMax);
  mem.write(p.addr, data);
  return p;
}
