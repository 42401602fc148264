/**
 * Creating and configuring vCPUs: CPUID, MSRs and LAPIC wiring for every vCPU, boot registers for
 * the bootstrap processor. Application processors wait for the guest's INIT/SIPI, as on real
 * hardware (the MP table announces them).
 * @module
 */
import * as boot from '../boot';
import * as cpu from '../cpu';
import type { NativeKvm, NativeVm, NativeVcpu } from '../native/types';

/** What the vCPUs are set up from. */
export interface VcpuSetupOptions {
  /** How many vCPUs. */
  count: number;
  /** The kernel's 64-bit entry point (the BSP starts there). */
  entry: number;
  /** Host quirks in force (emulated-KVM CPUID changes). */
  quirks: cpu.HostQuirks;
}

/**
 * Creates `count` vCPUs on `vm` and configures them for a 64-bit Linux boot protocol entry.
 * Returns them in id order; their threads are not started.
 */
export function createVcpus(kvm: NativeKvm, vm: NativeVm, opts: VcpuSetupOptions): NativeVcpu[] {
  const supported = kvm.supportedCpuid();
  const vcpus: NativeVcpu[] = [];
  for (let id = 0; id < opts.count; id++) {
    const vcpu = vm.createVcpu(id);
    vcpus.push(vcpu);
    let entries = cpu.normalizeCpuid(supported, { vcpuId: id, vcpuCount: opts.count });
    if (opts.quirks.emulatedKvm) entries = cpu.applyCpuidQuirks(entries);
    vcpu.setCpuid(entries);
    vcpu.setMsrs(boot.bootMsrs());
    const lapic = vcpu.getLapic();
    boot.configureLapicLint(lapic);
    vcpu.setLapic(lapic);
    if (id === 0) {
      vcpu.setRegs(boot.bootRegs(opts.entry));
      vcpu.setSregs(boot.bootSregs(vcpu.getSregs()));
      vcpu.setFpu(boot.BOOT_FPU);
    }
  }
  return vcpus;
}
