/**
 * Whether this host can run a guest that was given a certain CPUID table.
 *
 * A restored guest keeps the CPUID it booted with (it has already chosen code paths from it), so
 * every feature bit it was shown must be one this host's KVM supports, or the guest's next AVX2 or
 * XSAVES instruction faults. The check compares the feature registers of the saved table with
 * KVM_GET_SUPPORTED_CPUID, ignoring the bits a VMM synthesizes itself (hypervisor, HTT, OSXSAVE,
 * OSPKE), and requires the same vendor.
 * @module
 */
import type { CpuidEntry } from '../native/types';

/** One register of one CPUID leaf whose set bits are features. */
export interface FeatureRegister {
  /** Leaf (EAX input). */
  leaf: number;
  /** Sub-leaf (ECX input). */
  subleaf: number;
  /** Register. */
  reg: 'eax' | 'ebx' | 'ecx' | 'edx';
  /** Bits that are not host features (set by the VMM or mirrored from guest control registers). */
  ignore: number;
  /** Names of well-known bits, for messages. */
  names?: Readonly<Record<number, string>>;
}

/** The feature registers compared (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E). */
export const FEATURE_REGISTERS: readonly FeatureRegister[] = [
  {
    leaf: 0x1, subleaf: 0, reg: 'ecx',
    // 27 OSXSAVE mirrors CR4; 31 hypervisor and 15 PDCM are set/cleared by CPUID normalization.
    ignore: (1 << 27) | (1 << 31) | (1 << 15),
    names: { 0: 'sse3', 1: 'pclmulqdq', 9: 'ssse3', 12: 'fma', 13: 'cx16', 19: 'sse4_1', 20: 'sse4_2', 22: 'movbe', 23: 'popcnt', 24: 'tsc_deadline', 25: 'aes', 26: 'xsave', 28: 'avx', 29: 'f16c', 30: 'rdrand' },
  },
  {
    leaf: 0x1, subleaf: 0, reg: 'edx',
    // 28 HTT depends on the vCPU count the VMM chose.
    ignore: 1 << 28,
    names: { 0: 'fpu', 4: 'tsc', 5: 'msr', 6: 'pae', 8: 'cx8', 9: 'apic', 12: 'mtrr', 15: 'cmov', 19: 'clflush', 23: 'mmx', 24: 'fxsr', 25: 'sse', 26: 'sse2' },
  },
  {
    leaf: 0x7, subleaf: 0, reg: 'ebx', ignore: 0,
    names: { 0: 'fsgsbase', 3: 'bmi1', 5: 'avx2', 7: 'smep', 8: 'bmi2', 9: 'erms', 10: 'invpcid', 16: 'avx512f', 18: 'rdseed', 19: 'adx', 20: 'smap', 23: 'clflushopt', 24: 'clwb', 29: 'sha_ni' },
  },
  // 4 OSPKE mirrors CR4.PKE.
  { leaf: 0x7, subleaf: 0, reg: 'ecx', ignore: 1 << 4, names: { 1: 'avx512vbmi', 3: 'pku', 8: 'gfni', 9: 'vaes', 10: 'vpclmulqdq', 22: 'rdpid' } },
  { leaf: 0x7, subleaf: 0, reg: 'edx', ignore: 0, names: { 4: 'fsrm', 10: 'md_clear', 26: 'ibrs', 27: 'stibp', 29: 'arch_capabilities', 31: 'ssbd' } },
  { leaf: 0x7, subleaf: 1, reg: 'eax', ignore: 0, names: { 4: 'avx_vnni', 5: 'avx512_bf16' } },
  // XSAVE components the guest may enable in XCR0 (low and high half) and XSAVEOPT/XSAVEC/XSAVES.
  { leaf: 0xd, subleaf: 0, reg: 'eax', ignore: 0, names: { 0: 'x87 state', 1: 'sse state', 2: 'avx state', 5: 'avx512 opmask', 6: 'avx512 zmm_hi256', 7: 'avx512 hi16_zmm', 9: 'pkru state', 17: 'amx tilecfg', 18: 'amx tiledata' } },
  { leaf: 0xd, subleaf: 0, reg: 'edx', ignore: 0 },
  { leaf: 0xd, subleaf: 1, reg: 'eax', ignore: 0, names: { 0: 'xsaveopt', 1: 'xsavec', 2: 'xgetbv_ecx1', 3: 'xsaves' } },
  { leaf: 0x8000_0001, subleaf: 0, reg: 'ecx', ignore: 0, names: { 0: 'lahf_lm', 5: 'abm', 6: 'sse4a', 8: 'prefetchw' } },
  { leaf: 0x8000_0001, subleaf: 0, reg: 'edx', ignore: 0, names: { 11: 'syscall', 20: 'nx', 26: 'pdpe1gb', 27: 'rdtscp', 29: 'lm' } },
  { leaf: 0x8000_0007, subleaf: 0, reg: 'edx', ignore: 0, names: { 8: 'invariant_tsc' } },
  { leaf: 0x8000_0008, subleaf: 0, reg: 'ebx', ignore: 0 },
  // KVM paravirtual features (kvmclock, PV EOI, steal time…).
  { leaf: 0x4000_0001, subleaf: 0, reg: 'eax', ignore: 0, names: { 0: 'kvmclock', 3: 'clocksource2', 5: 'steal_time', 6: 'pv_eoi', 24: 'clocksource_stable' } },
];

/** A feature the saved CPUID has and the host lacks. */
export interface CpuidMismatch {
  /** What differs, e.g. `"cpuid 0x7.0 ebx"` or `"vendor"`. */
  field: string;
  /** The missing bits (0 for the vendor). */
  missingBits: number;
  /** Names of the missing bits where known, else `bit N`; the vendors for a vendor mismatch. */
  features: string[];
}

function find(table: readonly CpuidEntry[], leaf: number, subleaf: number): CpuidEntry | undefined {
  return table.find((e) => e.function === leaf && e.index === subleaf) ??
    (subleaf === 0 ? table.find((e) => e.function === leaf) : undefined);
}

function vendor(table: readonly CpuidEntry[]): string | undefined {
  const e = find(table, 0, 0);
  if (!e) return undefined;
  const b = Buffer.alloc(12);
  b.writeUInt32LE(e.ebx >>> 0, 0);
  b.writeUInt32LE(e.edx >>> 0, 4);
  b.writeUInt32LE(e.ecx >>> 0, 8);
  return b.toString('latin1');
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * What `saved` (the CPUID a guest was given) needs that `host` (KVM_GET_SUPPORTED_CPUID here)
 * does not offer; empty when the guest can run here.
 */
export function cpuidMismatches(saved: readonly CpuidEntry[], host: readonly CpuidEntry[]): CpuidMismatch[] {
  const out: CpuidMismatch[] = [];
  const sv = vendor(saved);
  const hv = vendor(host);
  if (sv !== undefined && hv !== undefined && sv !== hv) out.push({ field: 'vendor', missingBits: 0, features: [sv, hv] });
  for (const r of FEATURE_REGISTERS) {
    const s = find(saved, r.leaf, r.subleaf);
    if (!s) continue;
    const h = find(host, r.leaf, r.subleaf);
    const have = h ? h[r.reg] >>> 0 : 0;
    const missing = ((s[r.reg] >>> 0) & ~have & ~r.ignore) >>> 0;
    if (missing === 0) continue;
    const features: string[] = [];
    for (let bit = 0; bit < 32; bit++) {
      if ((missing >>> bit) & 1) features.push(r.names?.[bit] ?? `bit ${bit}`);
    }
    out.push({ field: `cpuid ${hex(r.leaf)}.${r.subleaf} ${r.reg}`, missingBits: missing, features });
  }
  return out;
}
