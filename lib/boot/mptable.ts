/**
 * Intel MultiProcessor Specification 1.4 tables in the EBDA, through which Linux (without ACPI)
 * finds the CPUs, the IOAPIC and how ISA interrupts are wired.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { BootError, hex } from './errors';
import { EBDA_END, EBDA_START, IOAPIC_START, LAPIC_START } from './layout';

/** Floating pointer signature "_MP_". */
export const MPF_SIGNATURE = '_MP_';
/** Configuration table signature "PCMP". */
export const MPC_SIGNATURE = 'PCMP';
/** Spec revision 1.4. */
export const MP_SPEC_REV = 4;
/** OEM ID, 8 bytes, space padded. */
export const MPC_OEM_ID = 'KINDLING';
/** Product ID, 12 bytes. */
export const MPC_PRODUCT_ID = '000000000000';
/** Bus type string of the ISA bus, 6 bytes. */
export const BUS_TYPE_ISA = 'ISA   ';

/** Size of the floating pointer structure (its `length` field counts 16-byte units). */
export const MPF_SIZE = 16;
/** Size of the configuration table header. */
export const MPC_HEADER_SIZE = 44;
/** Size of a processor entry. */
export const MPC_CPU_SIZE = 20;
/** Size of bus, IOAPIC, interrupt and local interrupt entries. */
export const MPC_SMALL_ENTRY_SIZE = 8;

/** Entry type: processor. */
export const MP_PROCESSOR = 0;
/** Entry type: bus. */
export const MP_BUS = 1;
/** Entry type: I/O APIC. */
export const MP_IOAPIC = 2;
/** Entry type: I/O interrupt assignment. */
export const MP_INTSRC = 3;
/** Entry type: local interrupt assignment. */
export const MP_LINTSRC = 4;
/** Interrupt type: vectored (INT). */
export const MP_IRQ_INT = 0;
/** Interrupt type: NMI. */
export const MP_IRQ_NMI = 1;
/** Interrupt type: ExtINT (8259-compatible). */
export const MP_IRQ_EXTINT = 3;
/** Interrupt flags: polarity and trigger "conforms to bus". */
export const MP_IRQ_FLAGS_DEFAULT = 0;
/** Processor flag: usable. */
export const CPU_ENABLED = 1;
/** Processor flag: bootstrap processor. */
export const CPU_BOOTPROCESSOR = 2;
/** IOAPIC flag: usable. */
export const MPC_APIC_USABLE = 1;
/** Local APIC version reported for CPUs (integrated xAPIC). */
export const LAPIC_VERSION = 0x14;
/** IOAPIC version reported (KVM's in-kernel IOAPIC is 0x11). */
export const IOAPIC_VERSION = 0x11;
/** Processor signature: family 6. */
export const CPU_SIGNATURE = 0x600;
/** Feature flags: FPU and on-chip APIC. */
export const CPU_FEATURES = (1 << 0) | (1 << 9);
/** IOAPIC pins, all wired from the matching ISA IRQ as KVM's default routing does. */
export const IOAPIC_PINS = 24;
/** Local destination "all local APICs". */
export const ALL_LAPICS = 0xff;
/** Most CPUs we describe. */
export const MAX_MP_CPUS = 32;

/** Bytes of floating pointer + table for `cpus` processors. */
export function mpTableSize(cpus: number): number {
  return MPF_SIZE + MPC_HEADER_SIZE + cpus * MPC_CPU_SIZE + (1 + 1 + IOAPIC_PINS + 2) * MPC_SMALL_ENTRY_SIZE;
}

function checksumOf(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return (0x100 - s) & 0xff;
}

/**
 * Writes the MP floating pointer at {@link EBDA_START} followed by the configuration table for
 * `cpus` processors (APIC IDs 0..cpus-1, CPU 0 the BSP) and an IOAPIC with ID `cpus`.
 * @returns the table's size in bytes
 * @throws BootError TOO_MANY_CPUS, NO_ROOM
 */
export function writeMpTable(mem: GuestMemory, cpus: number): number {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_MP_CPUS) {
    throw new BootError('TOO_MANY_CPUS', `MP table: ${cpus} vCPUs is outside 1..${MAX_MP_CPUS}`);
  }
  const size = mpTableSize(cpus);
  if (EBDA_START + size > EBDA_END || !mem.checkRange(EBDA_START, size)) {
    throw new BootError('NO_ROOM', `MP table of ${size} bytes does not fit at ${hex(EBDA_START)}..${hex(EBDA_END)}`);
  }
  const buf = new Uint8Array(size);
  const v = new DataView(buf.buffer);
  const ascii = (at: number, s: string): void => {
    for (let i = 0; i < s.length; i++) buf[at + i] = s.charCodeAt(i);
  };
  const ioapicId = cpus;

  // Floating pointer.
  ascii(0, MPF_SIGNATURE);
  v.setUint32(4, EBDA_START + MPF_SIZE, true);
  buf[8] = MPF_SIZE / 16;
  buf[9] = MP_SPEC_REV;
  // Bytes 11..15 (feature bytes) stay 0: a configuration table is present; virtual wire mode.
  buf[10] = checksumOf(buf.subarray(0, MPF_SIZE));

  const table = MPF_SIZE;
  let p = table + MPC_HEADER_SIZE;
  let entries = 0;
  for (let id = 0; id < cpus; id++) {
    buf[p] = MP_PROCESSOR;
    buf[p + 1] = id;
    buf[p + 2] = LAPIC_VERSION;
    buf[p + 3] = CPU_ENABLED | (id === 0 ? CPU_BOOTPROCESSOR : 0);
    v.setUint32(p + 4, CPU_SIGNATURE, true);
    v.setUint32(p + 8, CPU_FEATURES, true);
    p += MPC_CPU_SIZE;
    entries++;
  }
  buf[p] = MP_BUS;
  buf[p + 1] = 0;
  ascii(p + 2, BUS_TYPE_ISA);
  p += MPC_SMALL_ENTRY_SIZE;
  entries++;

  buf[p] = MP_IOAPIC;
  buf[p + 1] = ioapicId;
  buf[p + 2] = IOAPIC_VERSION;
  buf[p + 3] = MPC_APIC_USABLE;
  v.setUint32(p + 4, IOAPIC_START, true);
  p += MPC_SMALL_ENTRY_SIZE;
  entries++;

  for (let irq = 0; irq < IOAPIC_PINS; irq++) {
    buf[p] = MP_INTSRC;
    buf[p + 1] = MP_IRQ_INT;
    v.setUint16(p + 2, MP_IRQ_FLAGS_DEFAULT, true);
    buf[p + 4] = 0; // source bus: ISA
    buf[p + 5] = irq;
    buf[p + 6] = ioapicId;
    buf[p + 7] = irq;
    p += MPC_SMALL_ENTRY_SIZE;
    entries++;
  }
  // LINT0 takes the 8259's ExtINT on the BSP; LINT1 takes NMI everywhere.
  for (const [type, dest, lint] of [
    [MP_IRQ_EXTINT, 0, 0],
    [MP_IRQ_NMI, ALL_LAPICS, 1],
  ] as const) {
    buf[p] = MP_LINTSRC;
    buf[p + 1] = type;
    v.setUint16(p + 2, MP_IRQ_FLAGS_DEFAULT, true);
    buf[p + 4] = 0;
    buf[p + 5] = 0;
    buf[p + 6] = dest;
    buf[p + 7] = lint;
    p += MPC_SMALL_ENTRY_SIZE;
    entries++;
  }

  // Configuration table header.
  ascii(table, MPC_SIGNATURE);
  v.setUint16(table + 4, size - MPF_SIZE, true);
  buf[table + 6] = MP_SPEC_REV;
  ascii(table + 8, MPC_OEM_ID);
  ascii(table + 16, MPC_PRODUCT_ID);
  v.setUint16(table + 34, entries, true);
  v.setUint32(table + 36, LAPIC_START, true);
  buf[table + 7] = checksumOf(buf.subarray(table, size));

  mem.write(EBDA_START, buf);
  return size;
}
