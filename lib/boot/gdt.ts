/**
 * The boot GDT and IDT, and the segment registers that match them.
 *
 * The kernel replaces both tables early; until then they only need to describe flat 64-bit code,
 * flat data and a TSS (VMX refuses to enter a guest without a usable TR).
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import type { Segment } from '../native/types';
import { GDT_START, IDT_START } from './layout';

/** Access byte + flags nibble (bits 12..15) of 64-bit code: present, DPL 0, execute/read, accessed; G=1, L=1. */
export const GDT_CODE64_FLAGS = 0xa09b;
/** Flat data: present, DPL 0, read/write, accessed; G=1, D/B=1. */
export const GDT_DATA_FLAGS = 0xc093;
/** TSS: present, system, type 0xB (busy 64-bit TSS); G=1. */
export const GDT_TSS_FLAGS = 0x808b;
/** Limit of every flat boot segment (in 4 KiB units, because G=1). */
export const GDT_FLAT_LIMIT = 0xfffff;

/** Selector of the 64-bit code segment (GDT index 1). */
export const BOOT_CS = 0x08;
/** Selector of the data segment (GDT index 2). */
export const BOOT_DS = 0x10;
/** Selector of the TSS (GDT index 3). */
export const BOOT_TSS = 0x18;
/** Bytes per GDT/IDT entry written here. */
export const DESCRIPTOR_SIZE = 8;
/** IDT limit: one (empty) 8-byte entry, so any exception before the kernel loads its IDT triple-faults. */
export const BOOT_IDT_LIMIT = DESCRIPTOR_SIZE - 1;

/**
 * Encodes a segment descriptor: `flags` carries the access byte in bits 0..7 and the G/DB/L/AVL
 * nibble in bits 12..15, as the descriptor itself lays them out from bit 40.
 */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit >>> 0);
  const f = BigInt(flags & 0xf0ff);
  return ((b & 0xff00_0000n) << 32n) | (f << 40n) | ((l & 0xf_0000n) << 32n) | ((b & 0x00ff_ffffn) << 16n) | (l & 0xffffn);
}

/** The boot GDT: null, 64-bit code, data, TSS. */
export const BOOT_GDT: readonly bigint[] = Object.freeze([
  0n,
  gdtEntry(GDT_CODE64_FLAGS, 0, GDT_FLAT_LIMIT),
  gdtEntry(GDT_DATA_FLAGS, 0, GDT_FLAT_LIMIT),
  gdtEntry(GDT_TSS_FLAGS, 0, GDT_FLAT_LIMIT),
]);

/** GDTR limit for {@link BOOT_GDT}. */
export const BOOT_GDT_LIMIT = BOOT_GDT.length * DESCRIPTOR_SIZE - 1;

const bit = (e: bigint, n: number): number => Number((e >> BigInt(n)) & 1n);

/**
 * The `kvm_segment` a CPU would load from GDT `entry` at `index`. The only place descriptor bits
 * become segment register fields. KVM wants the limit in bytes, so a page-granular limit is scaled.
 */
export function segmentFromGdtEntry(entry: bigint, index: number): Segment {
  const base = ((entry >> 16n) & 0xff_ffffn) | (((entry >> 56n) & 0xffn) << 24n);
  const rawLimit = Number((entry & 0xffffn) | ((entry >> 32n) & 0xf_0000n));
  const g = bit(entry, 55);
  const present = bit(entry, 47);
  return {
    base,
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector: index * DESCRIPTOR_SIZE,
    type: Number((entry >> 40n) & 0xfn),
    present,
    dpl: Number((entry >> 45n) & 3n),
    db: bit(entry, 54),
    s: bit(entry, 44),
    l: bit(entry, 53),
    g,
    avl: bit(entry, 52),
    unusable: present ? 0 : 1,
  };
}

/** Segment registers for the boot GDT. */
export interface BootSegments {
  /** CS: 64-bit code. */
  code: Segment;
  /** DS, ES, FS, GS, SS. */
  data: Segment;
  /** TR. */
  tss: Segment;
}

/** The segments matching {@link BOOT_GDT}. */
export function bootSegments(): BootSegments {
  return {
    code: segmentFromGdtEntry(BOOT_GDT[BOOT_CS / DESCRIPTOR_SIZE], BOOT_CS / DESCRIPTOR_SIZE),
    data: segmentFromGdtEntry(BOOT_GDT[BOOT_DS / DESCRIPTOR_SIZE], BOOT_DS / DESCRIPTOR_SIZE),
    tss: segmentFromGdtEntry(BOOT_GDT[BOOT_TSS / DESCRIPTOR_SIZE], BOOT_TSS / DESCRIPTOR_SIZE),
  };
}

/** Writes {@link BOOT_GDT} at {@link GDT_START} and the empty IDT at {@link IDT_START}. */
export function writeGdtAndIdt(mem: GuestMemory): void {
  BOOT_GDT.forEach((e, i) => mem.writeU64(GDT_START + i * DESCRIPTOR_SIZE, e));
  mem.writeU64(IDT_START, 0n);
}
