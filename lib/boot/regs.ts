/**
 * Initial vCPU state for the 64-bit boot protocol: registers, special registers (long mode on the
 * boot GDT and page tables), FPU control, MSRs and the local APIC's LINT pins.
 *
 * Only the bootstrap processor gets registers. Application processors keep KVM's reset state
 * (mp_state UNINITIALIZED) and are started by the guest with INIT/SIPI, which KVM handles; they
 * receive only CPUID, {@link bootMsrs} and {@link configureLapicLint}.
 * @module
 */

import type { FpuState, MsrEntry, Regs, Sregs } from '../native/types';
import {
  MISC_ENABLE_FAST_STRING,
  MSR_CSTAR,
  MSR_IA32_MISC_ENABLE,
  MSR_IA32_SYSENTER_CS,
  MSR_IA32_SYSENTER_EIP,
  MSR_IA32_SYSENTER_ESP,
  MSR_IA32_TSC,
  MSR_KERNEL_GS_BASE,
  MSR_LSTAR,
  MSR_MTRR_DEF_TYPE,
  MSR_STAR,
  MSR_SYSCALL_MASK,
  MTRR_ENABLE,
  MTRR_MEM_TYPE_WB,
} from '../cpu/msrs';
import { BootError } from './errors';
import { BOOT_GDT_LIMIT, BOOT_IDT_LIMIT, bootSegments } from './gdt';
import { BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, ZERO_PAGE_START } from './layout';

/** RFLAGS bit 1 is reserved and always reads 1. */
export const RFLAGS_RESERVED = 0x2n;
/** CR0: protected mode. */
export const CR0_PE = 1n << 0n;
/** CR0: extension type (hard-wired to 1 on modern CPUs). */
export const CR0_ET = 1n << 4n;
/** CR0: paging. */
export const CR0_PG = 1n << 31n;
/** CR4: physical address extension (required for long mode). */
export const CR4_PAE = 1n << 5n;
/** EFER: long mode enable. */
export const EFER_LME = 1n << 8n;
/** EFER: long mode active. */
export const EFER_LMA = 1n << 10n;
/** x87 control word at FNINIT: all exceptions masked, 64-bit precision, round to nearest. */
export const FPU_FCW_DEFAULT = 0x37f;
/** MXCSR at reset: all SIMD exceptions masked. */
export const MXCSR_DEFAULT = 0x1f80;

/** Local APIC register page offset of LVT LINT0. */
export const APIC_LVT_LINT0 = 0x350;
/** Local APIC register page offset of LVT LINT1. */
export const APIC_LVT_LINT1 = 0x360;
/** LVT delivery mode field: bits 8..10. */
export const APIC_LVT_DELIVERY_MODE_MASK = 0x700;
/** LVT delivery mode field shift. */
export const APIC_LVT_DELIVERY_MODE_SHIFT = 8;
/** Delivery mode NMI. */
export const APIC_MODE_NMI = 0b100;
/** Delivery mode ExtINT (the 8259 PIC supplies the vector). */
export const APIC_MODE_EXTINT = 0b111;

/** General registers at the 64-bit entry point: RIP = entry, RSI = zero page, stack below the page tables. */
export function bootRegs(entry: number): Regs {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n,
    rsi: BigInt(ZERO_PAGE_START), rdi: 0n,
    rsp: BigInt(BOOT_STACK_POINTER), rbp: BigInt(BOOT_STACK_POINTER),
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip: BigInt(entry),
    rflags: RFLAGS_RESERVED,
  };
}

/**
 * Special registers for long mode on the boot GDT, IDT and identity page tables. Fields the boot
 * protocol does not define (APIC base, CR2, CR8, LDT) are kept from `current`, which should come
 * from KVM_GET_SREGS.
 */
export function bootSregs(current: Sregs): Sregs {
  return { ...current, ...bootSregsFields() };
}

/** The fields {@link bootSregs} sets (everything but APIC base, CR2, CR8 and LDT). */
export function bootSregsFields(): Omit<Sregs, 'apicBase' | 'cr2' | 'cr8' | 'ldt'> {
  const seg = bootSegments();
  return {
    cs: { ...seg.code },
    ds: { ...seg.data },
    es: { ...seg.data },
    fs: { ...seg.data },
    gs: { ...seg.data },
    ss: { ...seg.data },
    tr: { ...seg.tss },
    gdt: { base: BigInt(GDT_START), limit: BOOT_GDT_LIMIT },
    idt: { base: BigInt(IDT_START), limit: BOOT_IDT_LIMIT },
    cr0: CR0_PE | CR0_ET | CR0_PG,
    cr3: BigInt(PML4_START),
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  };
}

/** FPU control state at entry (what FNINIT and reset leave). */
export const BOOT_FPU: Readonly<FpuState> = Object.freeze({ fcw: FPU_FCW_DEFAULT, mxcsr: MXCSR_DEFAULT });

/** A fresh copy of {@link BOOT_FPU}. */
export function bootFpu(): FpuState {
  return { ...BOOT_FPU };
}

/**
 * MSRs for every vCPU before it first runs: SYSENTER/SYSCALL state cleared, TSC 0, fast strings
 * on, and MTRRs enabled with write-back default (otherwise a guest that honours MTRRs treats
 * all RAM as uncached).
 */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR_IA32_SYSENTER_CS, data: 0n },
    { index: MSR_IA32_SYSENTER_ESP, data: 0n },
    { index: MSR_IA32_SYSENTER_EIP, data: 0n },
    { index: MSR_STAR, data: 0n },
    { index: MSR_CSTAR, data: 0n },
    { index: MSR_KERNEL_GS_BASE, data: 0n },
    { index: MSR_SYSCALL_MASK, data: 0n },
    { index: MSR_LSTAR, data: 0n },
    { index: MSR_IA32_TSC, data: 0n },
    { index: MSR_IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    { index: MSR_MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_MEM_TYPE_WB },
  ];
}

function setDeliveryMode(lapic: Buffer, offset: number, mode: number): void {
  const reg = lapic.readUInt32LE(offset);
  lapic.writeUInt32LE(((reg & ~APIC_LVT_DELIVERY_MODE_MASK) | (mode << APIC_LVT_DELIVERY_MODE_SHIFT)) >>> 0, offset);
}

/**
 * {@link configureLapicLint} as register-page edits (offset, the bits that change, their values),
 * for a caller that applies them to the KVM_GET_LAPIC page itself.
 */
export function lapicLintEdits(): { offset: number; mask: number; bits: number }[] {
  return [
    { offset: APIC_LVT_LINT0, mask: APIC_LVT_DELIVERY_MODE_MASK, bits: APIC_MODE_EXTINT << APIC_LVT_DELIVERY_MODE_SHIFT },
    { offset: APIC_LVT_LINT1, mask: APIC_LVT_DELIVERY_MODE_MASK, bits: APIC_MODE_NMI << APIC_LVT_DELIVERY_MODE_SHIFT },
  ];
}

/**
 * Wires LINT0 as ExtINT (the PIC's output, virtual wire mode) and LINT1 as NMI in a KVM_GET_LAPIC
 * register page, changing only the delivery mode bits. Modifies `lapicBytes` and returns it.
 * @throws BootError BAD_LAPIC when the page is too short
 */
export function configureLapicLint(lapicBytes: Buffer): Buffer {
  if (lapicBytes.length < APIC_LVT_LINT1 + 4) {
    throw new BootError('BAD_LAPIC', `LAPIC register page is ${lapicBytes.length} bytes; LVT LINT1 is at 0x360`);
  }
  setDeliveryMode(lapicBytes, APIC_LVT_LINT0, APIC_MODE_EXTINT);
  setDeliveryMode(lapicBytes, APIC_LVT_LINT1, APIC_MODE_NMI);
  return lapicBytes;
}
