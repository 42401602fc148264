/**
 * Identity page tables for the first 4 GiB (2 MiB pages), so the vCPU can start in long mode and
 * reach the kernel, the boot structures and the 32-bit MMIO hole.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { PAGE_SIZE, PD_START, PDPT_START, PML4_START } from './layout';

/** Page table entry bit: present. */
export const PTE_PRESENT = 1 << 0;
/** Page table entry bit: writable. */
export const PTE_WRITABLE = 1 << 1;
/** Page directory entry bit: maps a 2 MiB page rather than pointing to a page table. */
export const PDE_PAGE_SIZE = 1 << 7;
/** Bytes a 2 MiB page maps. */
export const LARGE_PAGE_SIZE = 0x20_0000;
/** Page directories used: one per GiB of the identity map. */
export const IDENTITY_MAP_GIB = 4;
/** Entries per page table page. */
export const ENTRIES_PER_TABLE = 512;
const ENTRY_SIZE = 8;

/**
 * Writes PML4 → PDPT → four PDs identity-mapping [0, 4 GiB).
 * @returns the CR3 value (the PML4's address)
 */
export function writePageTables(mem: GuestMemory): number {
  mem.slice(PML4_START, PAGE_SIZE).fill(0);
  mem.slice(PDPT_START, PAGE_SIZE).fill(0);
  mem.writeU64(PML4_START, PDPT_START | PTE_PRESENT | PTE_WRITABLE);
  // Each page directory is built in a local page and written at once: 2048 entries one by one
  // through bigint conversions took 0.2 ms, on the thread that starts every VM.
  const pdPage = new Uint8Array(PAGE_SIZE);
  const view = new DataView(pdPage.buffer);
  for (let g = 0; g < IDENTITY_MAP_GIB; g++) {
    const pd = PD_START + g * PAGE_SIZE;
    mem.writeU64(PDPT_START + g * ENTRY_SIZE, pd | PTE_PRESENT | PTE_WRITABLE);
    for (let i = 0; i < ENTRIES_PER_TABLE; i++) {
      const entry = (g * ENTRIES_PER_TABLE + i) * LARGE_PAGE_SIZE + (PDE_PAGE_SIZE | PTE_PRESENT | PTE_WRITABLE);
      view.setUint32(i * ENTRY_SIZE, entry % 2 ** 32, true);
      view.setUint32(i * ENTRY_SIZE + 4, Math.floor(entry / 2 ** 32), true);
    }
    mem.write(pd, pdPage);
  }
  return PML4_START;
}
