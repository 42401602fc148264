/**
 * CPUID normalization: from what KVM supports to what one vCPU of this VM should report.
 *
 * The topology presented is one package with `vcpuCount` cores of one thread each; APIC ID =
 * vCPU index. The rules follow Firecracker's documented normalization (docs/cpu_templates/
 * cpuid-normalization.md) where it applies to a vendor-neutral VMM.
 * @module
 */

import type { CpuidEntry } from '../native/types';
import { CpuError } from './errors';
import { applyCpuidQuirks, type HostQuirks } from './host-quirks';

/** Basic information and feature flags. */
export const LEAF_FEATURES = 0x1;
/** Deterministic cache parameters (Intel). */
export const LEAF_CACHE_PARAMS = 0x4;
/** Thermal and power management. */
export const LEAF_THERMAL_POWER = 0x6;
/** Architectural performance monitoring. */
export const LEAF_PMU = 0xa;
/** Extended topology enumeration. */
export const LEAF_EXT_TOPOLOGY = 0xb;
/** V2 extended topology enumeration. */
export const LEAF_EXT_TOPOLOGY_V2 = 0x1f;
/** KVM signature leaf ("KVMKVMKVM\0\0\0"). */
export const LEAF_KVM_SIGNATURE = 0x4000_0000;

/** kvm_cpuid_entry2 flag: the sub-leaf (ECX input) matters. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

/** CPUID.1:EBX bits 8..15: CLFLUSH line size in 8-byte units. */
export const CPUID1_EBX_CLFLUSH_SHIFT = 8;
/** CLFLUSH line size to report when the host reports none (64 bytes). */
export const DEFAULT_CLFLUSH_SIZE = 8;
/** CPUID.1:EBX bits 16..23: addressable logical processor IDs in the package. */
export const CPUID1_EBX_LOGICAL_COUNT_SHIFT = 16;
/** CPUID.1:EBX bits 24..31: initial APIC ID. */
export const CPUID1_EBX_APIC_ID_SHIFT = 24;
/** CPUID.1:ECX bit 15: PDCM (perfmon capabilities MSR), hidden with the PMU. */
export const CPUID1_ECX_PDCM = 1 << 15;
/** CPUID.1:ECX bit 31: running under a hypervisor. */
export const CPUID1_ECX_HYPERVISOR = 1 << 31;
/** CPUID.1:EDX bit 28: HTT, the logical processor count field is valid. */
export const CPUID1_EDX_HTT = 1 << 28;
/** CPUID.4:EAX bits 0..4: cache type (0 = no more caches). */
export const CPUID4_EAX_CACHE_TYPE_MASK = 0x1f;
/** CPUID.4:EAX bits 5..7: cache level. */
export const CPUID4_EAX_CACHE_LEVEL_SHIFT = 5;
/** CPUID.4:EAX bits 14..25: logical processors sharing this cache, minus one. */
export const CPUID4_EAX_SHARING_SHIFT = 14;
/** CPUID.4:EAX bits 26..31: cores in the package, minus one. */
export const CPUID4_EAX_CORES_SHIFT = 26;
/** CPUID.6:EAX bit 1: Turbo Boost (a host property the guest cannot use). */
export const CPUID6_EAX_TURBO = 1 << 1;
/** CPUID.6:ECX bit 3: performance-energy bias preference (an MSR KVM does not emulate). */
export const CPUID6_ECX_EPB = 1 << 3;
/** Topology level type: SMT (threads). */
export const TOPOLOGY_LEVEL_SMT = 1;
/** Topology level type: core. */
export const TOPOLOGY_LEVEL_CORE = 2;
/** Largest vCPU count an xAPIC topology describes (255 IDs, one taken by the IOAPIC). */
export const MAX_VCPUS = 254;

/** Options of {@link normalizeCpuid}. */
export interface NormalizeCpuidOptions {
  /** Index of the vCPU (its APIC ID). */
  vcpuId: number;
  /** vCPUs in the VM. */
  vcpuCount: number;
  /** When given and `emulatedKvm`, the host workarounds are applied as well. */
  quirks?: HostQuirks;
}

/** Bits needed to number `n` items: ceil(log2(n)). */
function bitsFor(n: number): number {
  let b = 0;
  while (1 << b < n) b++;
  return b;
}

/**
 * The CPUID table for one vCPU. Pure and deterministic: `supported` is not modified, entry order
 * is kept, and missing topology sub-leaves are inserted after their leaf's last entry.
 * @throws CpuError BAD_TOPOLOGY when the counts are out of range
 */
export function normalizeCpuid(supported: readonly CpuidEntry[], opts: NormalizeCpuidOptions): CpuidEntry[] {
  const { vcpuId, vcpuCount } = opts;
  if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > MAX_VCPUS) {
    throw new CpuError('BAD_TOPOLOGY', `vCPU count ${vcpuCount} is outside 1..${MAX_VCPUS}`);
  }
  if (!Number.isInteger(vcpuId) || vcpuId < 0 || vcpuId >= vcpuCount) {
    throw new CpuError('BAD_TOPOLOGY', `vCPU id ${vcpuId} is outside 0..${vcpuCount - 1}`);
  }
  let out: CpuidEntry[] = supported.map((e) => ({ ...e }));

  for (const e of out) {
    switch (e.function) {
      case LEAF_FEATURES: {
        const clflush = (e.ebx >>> CPUID1_EBX_CLFLUSH_SHIFT) & 0xff || DEFAULT_CLFLUSH_SIZE;
        e.ebx = ((e.ebx & 0xff) |
          (clflush << CPUID1_EBX_CLFLUSH_SHIFT) |
          (vcpuCount << CPUID1_EBX_LOGICAL_COUNT_SHIFT) |
          (vcpuId << CPUID1_EBX_APIC_ID_SHIFT)) >>> 0;
        e.ecx = ((e.ecx & ~CPUID1_ECX_PDCM) | CPUID1_ECX_HYPERVISOR) >>> 0;
        e.edx = (vcpuCount > 1 ? e.edx | CPUID1_EDX_HTT : e.edx & ~CPUID1_EDX_HTT) >>> 0;
        break;
      }
      case LEAF_CACHE_PARAMS: {
        if ((e.eax & CPUID4_EAX_CACHE_TYPE_MASK) === 0) break;
        const level = (e.eax >>> CPUID4_EAX_CACHE_LEVEL_SHIFT) & 0x7;
        // One thread per core: L1/L2 are private to a vCPU, L3 is shared by the package.
        const sharing = level >= 3 ? Math.min(vcpuCount - 1, 0xfff) : 0;
        const cores = Math.min(vcpuCount, 64) - 1;
        e.eax = ((e.eax & 0x3fff) | (sharing << CPUID4_EAX_SHARING_SHIFT) | (cores << CPUID4_EAX_CORES_SHIFT)) >>> 0;
        break;
      }
      case LEAF_THERMAL_POWER:
        e.eax = (e.eax & ~CPUID6_EAX_TURBO) >>> 0;
        e.ecx = (e.ecx & ~CPUID6_ECX_EPB) >>> 0;
        break;
      case LEAF_PMU:
        e.eax = e.ebx = e.ecx = e.edx = 0;
        break;
      default:
        break;
    }
  }
  out = normalizeTopology(out, LEAF_EXT_TOPOLOGY, vcpuId, vcpuCount);
  out = normalizeTopology(out, LEAF_EXT_TOPOLOGY_V2, vcpuId, vcpuCount);
  if (opts.quirks?.emulatedKvm) out = applyCpuidQuirks(out, opts.quirks);
  return out;
}

/**
 * Rewrites leaf 0xB or 0x1F, if the host has it: sub-leaf 0 is the SMT level (one thread),
 * sub-leaf 1 the core level (all vCPUs), higher sub-leaves are invalid levels; EDX is the x2APIC ID.
 */
function normalizeTopology(entries: CpuidEntry[], leaf: number, vcpuId: number, vcpuCount: number): CpuidEntry[] {
  const existing = entries.filter((e) => e.function === leaf);
  if (existing.length === 0) return entries;
  const flags = existing[0].flags | KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
  const level = (index: number): CpuidEntry => {
    if (index === 0) {
      return { function: leaf, index, flags, eax: 0, ebx: 1, ecx: (TOPOLOGY_LEVEL_SMT << 8) | index, edx: vcpuId };
    }
    if (index === 1) {
      return { function: leaf, index, flags, eax: bitsFor(vcpuCount), ebx: vcpuCount, ecx: (TOPOLOGY_LEVEL_CORE << 8) | index, edx: vcpuId };
    }
    return { function: leaf, index, flags, eax: 0, ebx: 0, ecx: index & 0xff, edx: vcpuId };
  };
  const out: CpuidEntry[] = [];
  const seen = new Set<number>();
  let lastIndexOfLeaf = -1;
  for (const e of entries) {
    if (e.function === leaf) {
      out.push(level(e.index));
      seen.add(e.index);
      lastIndexOfLeaf = out.length;
    } else {
      out.push(e);
    }
  }
  const missing = [0, 1].filter((i) => !seen.has(i)).map(level);
  out.splice(lastIndexOfLeaf, 0, ...missing);
  return out;
}
