/**
 * Model-specific register indexes (Intel SDM vol. 4; Linux msr-index.h) and the bits we set.
 * @module
 */

/** Time-stamp counter. */
export const MSR_IA32_TSC = 0x10;
/** Local APIC base and enable bits. */
export const MSR_IA32_APICBASE = 0x1b;
/** SYSENTER code segment. */
export const MSR_IA32_SYSENTER_CS = 0x174;
/** SYSENTER stack pointer. */
export const MSR_IA32_SYSENTER_ESP = 0x175;
/** SYSENTER entry point. */
export const MSR_IA32_SYSENTER_EIP = 0x176;
/** Miscellaneous feature enables. */
export const MSR_IA32_MISC_ENABLE = 0x1a0;
/** MTRR default memory type and enable bits. */
export const MSR_MTRR_DEF_TYPE = 0x2ff;
/** Extended feature enables (LME, LMA, NXE, SCE). */
export const MSR_EFER = 0xc000_0080;
/** SYSCALL segment selectors. */
export const MSR_STAR = 0xc000_0081;
/** 64-bit SYSCALL entry point. */
export const MSR_LSTAR = 0xc000_0082;
/** Compatibility-mode SYSCALL entry point. */
export const MSR_CSTAR = 0xc000_0083;
/** RFLAGS bits cleared on SYSCALL. */
export const MSR_SYSCALL_MASK = 0xc000_0084;
/** GS base swapped in by SWAPGS. */
export const MSR_KERNEL_GS_BASE = 0xc000_0102;

/** IA32_MISC_ENABLE bit 0: fast-string operations (REP MOVS/STOS) enabled, as firmware leaves it. */
export const MISC_ENABLE_FAST_STRING = 1n << 0n;
/** MTRR_DEF_TYPE bit 11: MTRRs enabled. */
export const MTRR_ENABLE = 1n << 11n;
/** Memory type write-back. */
export const MTRR_MEM_TYPE_WB = 6n;
