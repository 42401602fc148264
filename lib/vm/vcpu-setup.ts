/**
 * How vCPUs are configured for a boot: CPUID, MSRs and LAPIC wiring for every vCPU, boot registers
 * for the bootstrap processor. Application processors keep KVM's reset state and wait for the
 * guest's INIT/SIPI, as on real hardware (the MP table announces them). The result is a
 * description ({@link VcpuSetup}) the addon applies off the JavaScript thread, right after
 * creating each vCPU (`NativeKvm.createVmAsync`, see native-setup.ts).
 * @module
 */
import * as boot from '../boot';
import * as cpu from '../cpu';
import type { CpuidEntry, NativeKvm, VcpuSetup } from '../native/types';

/** What the vCPUs are set up from. */
export interface VcpuSetupOptions {
  /** How many vCPUs. */
  count: number;
  /** The kernel's 64-bit entry point (the BSP starts there). */
  entry: number;
  /** What KVM supports ({@link supportedCpuid}). */
  supportedCpuid: readonly CpuidEntry[];
  /** Host quirks in force (emulated-KVM CPUID changes). */
  quirks: cpu.HostQuirks;
}

// KVM_GET_SUPPORTED_CPUID answers the same for the life of the host's KVM module: asked once per
// KVM device path, not once per VM (it costs about 0.5 ms).
const supportedCpuidCache = new Map<string, readonly CpuidEntry[]>();

/** {@link NativeKvm.supportedCpuid}, cached per KVM device path. */
export function supportedCpuid(kvm: NativeKvm, kvmPath: string): readonly CpuidEntry[] {
  let entries = supportedCpuidCache.get(kvmPath);
  if (!entries) {
    entries = kvm.supportedCpuid();
    supportedCpuidCache.set(kvmPath, entries);
  }
  return entries;
}

/** Words per packed CPUID entry ({@link VcpuSetup.cpuid}). */
const CPUID_WORDS = 7;

/** CPUID entries packed as {@link VcpuSetup.cpuid} takes them (the addon converts them much faster). */
export function packCpuid(entries: readonly CpuidEntry[]): Uint32Array {
  const out = new Uint32Array(entries.length * CPUID_WORDS);
  entries.forEach((e, i) => out.set([e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx], i * CPUID_WORDS));
  return out;
}

// A vCPU's table depends only on what KVM supports, its id, the vCPU count and the quirks:
// normalized once per combination, not once per VM (0.15 ms each time).
const vcpuCpuidCache = new WeakMap<readonly CpuidEntry[], Map<string, Uint32Array>>();

function vcpuCpuid(supported: readonly CpuidEntry[], vcpuId: number, vcpuCount: number, quirks: cpu.HostQuirks): Uint32Array {
  let perSupported = vcpuCpuidCache.get(supported);
  if (!perSupported) {
    perSupported = new Map();
    vcpuCpuidCache.set(supported, perSupported);
  }
  const key = `${vcpuId}/${vcpuCount}/${quirks.emulatedKvm ? 'emulated' : 'plain'}`;
  let table = perSupported.get(key);
  if (!table) {
    let entries = cpu.normalizeCpuid(supported, { vcpuId, vcpuCount });
    if (quirks.emulatedKvm) entries = cpu.applyCpuidQuirks(entries);
    table = packCpuid(entries);
    perSupported.set(key, table);
  }
  return table;
}

// The same for every VM; the addon only reads them (bigint-heavy to build: 0.05 ms a VM).
const BOOT_MSRS = boot.bootMsrs();
const LAPIC_LINT_EDITS = boot.lapicLintEdits();
const BOOT_SREGS = boot.bootSregsFields();

/**
 * The set-up of `count` vCPUs for a 64-bit Linux boot protocol entry, in id order: every vCPU gets
 * the normalized CPUID (with the host quirks), the boot MSRs and LINT0 ExtINT / LINT1 NMI; the
 * bootstrap processor also gets the boot registers (RIP at `entry`, 64-bit segments, paging on).
 */
export function bootVcpuSetups(opts: VcpuSetupOptions): VcpuSetup[] {
  const vcpus: VcpuSetup[] = [];
  for (let id = 0; id < opts.count; id++) {
    const v: VcpuSetup = { id, cpuid: vcpuCpuid(opts.supportedCpuid, id, opts.count, opts.quirks), msrs: BOOT_MSRS, lapic: LAPIC_LINT_EDITS };
    if (id === 0) {
      v.regs = boot.bootRegs(opts.entry);
      v.sregs = BOOT_SREGS;
      v.fpu = boot.BOOT_FPU;
    }
    vcpus.push(v);
  }
  return vcpus;
}
