/**
 * Which MSRs a snapshot saves, and in which order they are restored.
 *
 * The rules are Firecracker's (src/vmm/src/arch/x86_64/msr.rs, cpu_config/x86_64/cpuid/common.rs):
 * save what KVM_GET_MSR_INDEX_LIST reports *and* is known to be architectural guest state (an
 * allow-list of ranges: counters, PMU and VMX capability MSRs are left out, and so is
 * IA32_MCG_CTL), plus the MSRs that exist because of a CPUID feature the guest has (MTRRs and PAT
 * with CPUID.1:EDX.MTRR, the machine-check banks with CPUID.1:EDX.MCE, BNDCFGS with MPX).
 * On restore IA32_TSC_DEADLINE goes after IA32_TSC: KVM arms the deadline timer relative to the
 * TSC, so the other order can lose the guest's timer interrupt.
 * @module
 */
import type { CpuidEntry } from '../native/types';
import type { MsrRecord } from './format';

/** IA32_TSC. */
export const MSR_IA32_TSC = 0x10;
/** IA32_MCG_CTL: listed by KVM, but readable only with MCG_CAP.CTL_P, which KVM does not set up by default. */
export const MSR_IA32_MCG_CTL = 0x17b;
/** IA32_TSC_DEADLINE. */
export const MSR_IA32_TSC_DEADLINE = 0x6e0;
/** IA32_BNDCFGS (MPX). */
export const MSR_IA32_BNDCFGS = 0xd90;
/** First kvmclock / paravirtual MSR (`MSR_KVM_WALL_CLOCK_NEW`). */
export const MSR_KVM_FIRST = 0x4b56_4d00;
/** Last MSR of KVM's paravirtual range. */
export const MSR_KVM_LAST = 0x4b56_4dff;

/** `[first, count]` ranges of MSRs that are guest state worth saving. */
const SERIALIZABLE_RANGES: readonly (readonly [number, number])[] = [
  [0x0, 1], // IA32_P5_MC_ADDR
  [0x1, 1], // IA32_P5_MC_TYPE
  [MSR_IA32_TSC, 1],
  [0x17, 1], // IA32_PLATFORM_ID
  [0x1b, 1], // IA32_APICBASE
  [0x2a, 1], // EBL_CR_POWERON
  [0x2c, 1], // EBC_FREQUENCY_ID
  [0x34, 1], // SMI_COUNT
  [0x3a, 1], // IA32_FEATURE_CONTROL
  [0x3b, 1], // IA32_TSC_ADJUST
  [0x48, 1], // IA32_SPEC_CTRL
  [0x49, 1], // IA32_PRED_CMD
  [0x79, 1], // IA32_UCODE_WRITE
  [0x8b, 1], // IA32_UCODE_REV
  [0x9e, 1], // IA32_SMBASE
  [0xcd, 1], // FSB_FREQ
  [0xce, 1], // PLATFORM_INFO
  [0xe2, 1], // PKG_CST_CONFIG_CONTROL
  [0xe7, 1], // IA32_MPERF
  [0xe8, 1], // IA32_APERF
  [0xfe, 1], // MTRRcap
  [0x11e, 1], // BBL_CR_CTL3
  [0x122, 1], // IA32_TSX_CTRL
  [0x140, 1], // MISC_FEATURES_ENABLES
  [0x174, 3], // SYSENTER_CS/ESP/EIP
  [0x179, 1], // IA32_MCG_CAP
  [0x17a, 1], // IA32_MCG_STATUS
  [MSR_IA32_MCG_CTL, 1], // removed again below
  [0x198, 1], // IA32_PERF_STATUS
  [0x1a0, 1], // IA32_MISC_ENABLE
  [0x1a4, 1], // MISC_FEATURE_CONTROL
  [0x1aa, 1], // MISC_PWR_MGMT
  [0x1ad, 2], // TURBO_RATIO_LIMIT, TURBO_RATIO_LIMIT1
  [0x1d9, 1], // IA32_DEBUGCTL
  [0x1db, 4], // last branch / last interrupt from/to IP
  [0x1fc, 1], // IA32_POWER_CTL
  [0x200, 0x100], // MTRRs (variable, fixed, def type) and PAT (0x277)
  [0x3fc, 3], // core C3/C6/C7 residency
  [0x400, 0x80], // machine-check banks 0..31
  [0x606, 1], // RAPL_POWER_UNIT
  [0x60a, 3], // PKGC3/6/7_IRTL
  [0x610, 2], // PKG_POWER_LIMIT, PKG_ENERGY_STATUS
  [0x613, 2], // PKG_PERF_STATUS, PKG_POWER_INFO
  [0x618, 2], // DRAM_POWER_LIMIT, DRAM_ENERGY_STATUS
  [0x61b, 2], // DRAM_PERF_STATUS, DRAM_POWER_INFO
  [0x648, 5], // CONFIG_TDP_*, TURBO_ACTIVATION_RATIO
  [MSR_IA32_TSC_DEADLINE, 1],
  [0x800, 0x400], // x2APIC registers
  [0xda0, 1], // IA32_XSS
  [0xc000_0080, 5], // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
  [0xc000_0100, 4], // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
  [0xc001_0015, 1], // K7_HWCR
  [MSR_KVM_FIRST, MSR_KVM_LAST - MSR_KVM_FIRST + 1], // kvmclock, async PF, steal time, PV EOI…
];

/** Whether `index` is guest state a snapshot should carry. */
export function msrShouldSave(index: number): boolean {
  if (index === MSR_IA32_MCG_CTL) return false;
  return SERIALIZABLE_RANGES.some(([first, n]) => index >= first && index < first + n);
}

/** CPUID.1:EDX bits that bring MSRs with them. */
const CPUID1_EDX_MCE = 1 << 7;
const CPUID1_EDX_MTRR = 1 << 12;
/** CPUID.(7,0):EBX bit 14: MPX. */
const CPUID7_EBX_MPX = 1 << 14;

/** MTRR MSRs other than the variable pairs: fixed ranges, PAT, MTRRdefType. */
const MTRR_FIXED_PAT_DEF = [0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x277, 0x2ff];

function leaf(cpuid: readonly CpuidEntry[], fn: number, index = 0): CpuidEntry | undefined {
  return cpuid.find((e) => e.function === fn && e.index === index) ?? cpuid.find((e) => e.function === fn);
}

/** MSRs that exist because the guest's CPUID announces a feature. */
export function msrsForCpuid(cpuid: readonly CpuidEntry[]): number[] {
  const out: number[] = [];
  const l1 = leaf(cpuid, 1);
  if (l1 && l1.edx & CPUID1_EDX_MTRR) {
    for (let i = 0x200; i < 0x210; i++) out.push(i);
    out.push(...MTRR_FIXED_PAT_DEF);
  }
  if (l1 && l1.edx & CPUID1_EDX_MCE) for (let i = 0x400; i < 0x480; i++) out.push(i);
  const l7 = leaf(cpuid, 7, 0);
  if (l7 && l7.ebx & CPUID7_EBX_MPX) out.push(MSR_IA32_BNDCFGS);
  return out;
}

/**
 * The MSRs to save for a vCPU with CPUID `cpuid` on a KVM whose KVM_GET_MSR_INDEX_LIST is
 * `indexList`: sorted, without duplicates.
 */
export function selectMsrsToSave(indexList: readonly number[], cpuid: readonly CpuidEntry[]): number[] {
  const set = new Set<number>(indexList.filter(msrShouldSave));
  for (const m of msrsForCpuid(cpuid)) set.add(m);
  return [...set].sort((a, b) => a - b);
}

/**
 * The saved MSRs in restore order: everything in saved order, then IA32_TSC_DEADLINE. A deadline
 * of 0 becomes the saved TSC (Firecracker's workaround for a vCPU that never got its timer
 * interrupt again after restore; KVM ignores the write unless the LVT timer is in deadline mode).
 */
export function msrRestoreOrder(msrs: readonly MsrRecord[]): MsrRecord[] {
  const tsc = msrs.find((m) => m.index === MSR_IA32_TSC);
  const first = msrs.filter((m) => m.index !== MSR_IA32_TSC_DEADLINE);
  const deferred = msrs
    .filter((m) => m.index === MSR_IA32_TSC_DEADLINE)
    .map((m) => (m.data === '0' && tsc ? { index: m.index, data: tsc.data } : m));
  return [...first, ...deferred];
}
