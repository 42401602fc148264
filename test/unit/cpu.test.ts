import type { CpuidEntry } from '../../lib/native/types';
import {
  CpuError,
  applyCpuidQuirks,
  detectHostQuirks,
  fixEmulationFailure,
  normalizeCpuid,
  quirkCmdlineArgs,
  KVM_PVM_MODULE_PATH,
  QUIRK_CLEARCPUID,
  QUIRK_CLEARCPUID_LIST,
} from '../../lib/cpu';

const e = (fn: number, index: number, eax: number, ebx: number, ecx: number, edx: number, flags = 0): CpuidEntry => ({ function: fn, index, flags, eax, ebx, ecx, edx });

/** A host-like supported CPUID table (Intel-ish, 2 threads per core, 8 logical CPUs). */
function hostTable(): CpuidEntry[] {
  return [
    e(0x0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69),
    e(0x1, 0, 0x000906ea, 0x07100800, 0x7ffafbff | (1 << 13) | (1 << 15), 0xbfebfbff),
    e(0x4, 0, 0x1c004121, 0, 0, 0, 1), // L1d, 8 cores, 2 sharing
    e(0x4, 1, 0x1c004163, 0, 0, 0, 1), // L3
    e(0x4, 2, 0, 0, 0, 0, 1), // end
    e(0x6, 0, 0x77, 0, 0x9, 0),
    e(0xa, 0, 0x07300404, 0, 0, 0x603),
    e(0xb, 0, 1, 2, 0x100, 3, 1),
    e(0xd, 0, 7, 0, 0, 0, 1),
    e(0x40000000, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d, 0),
    e(0x40000001, 0, 0x01007afb, 0, 0, 0),
  ];
}

const find = (t: CpuidEntry[], fn: number, idx = 0) => t.find((x) => x.function === fn && x.index === idx)!;

describe('normalizeCpuid', () => {
  it('1 vCPU: APIC ID 0, one logical CPU, no HTT, hypervisor bit', () => {
    const input = hostTable();
    const snapshot = JSON.stringify(input);
    const t = normalizeCpuid(input, { vcpuId: 0, vcpuCount: 1 });
    expect(JSON.stringify(input)).toBe(snapshot); // input not mutated
    const l1 = find(t, 1);
    expect(l1.ebx >>> 24).toBe(0);
    expect((l1.ebx >>> 16) & 0xff).toBe(1);
    expect((l1.ebx >>> 8) & 0xff).toBe(8); // CLFLUSH kept
    expect(l1.ecx >>> 31).toBe(1);
    expect(l1.ecx & (1 << 24)).toBe(input[1].ecx & (1 << 24)); // TSC deadline kept
    expect(l1.ecx & (1 << 15)).toBe(0); // PDCM off
    expect(l1.edx & (1 << 28)).toBe(0);
    expect(find(t, 4, 0).eax >>> 26).toBe(0);
    expect((find(t, 4, 1).eax >>> 14) & 0xfff).toBe(0);
    expect(find(t, 4, 2).eax).toBe(0);
    expect(find(t, 0xb, 0)).toEqual(e(0xb, 0, 0, 1, 0x100, 0, 1));
    expect(find(t, 0xb, 1)).toEqual(e(0xb, 1, 0, 1, 0x201, 0, 1));
    expect(find(t, 0xa)).toEqual(e(0xa, 0, 0, 0, 0, 0));
    expect(find(t, 6).eax & 2).toBe(0);
    expect(find(t, 6).ecx & 8).toBe(0);
    expect(find(t, 0x40000000)).toEqual(input[9]); // KVMKVMKVM kept
    expect(find(t, 0x40000001)).toEqual(input[10]);
    // Inserted sub-leaf 1 goes right after leaf 0xB's entries.
    expect(t.map((x) => x.function)).toEqual([0, 1, 4, 4, 4, 6, 0xa, 0xb, 0xb, 0xd, 0x40000000, 0x40000001]);
  });

  it('4 vCPUs: per-vCPU APIC IDs and a consistent topology', () => {
    for (let id = 0; id < 4; id++) {
      const t = normalizeCpuid(hostTable(), { vcpuId: id, vcpuCount: 4 });
      const l1 = find(t, 1);
      expect(l1.ebx >>> 24).toBe(id);
      expect((l1.ebx >>> 16) & 0xff).toBe(4);
      expect(l1.ebx & 0xff).toBe(0); // brand index kept
      expect(l1.edx & (1 << 28)).toBe(1 << 28);
      const l1d = find(t, 4, 0).eax;
      expect(l1d >>> 26).toBe(3);
      expect((l1d >>> 14) & 0xfff).toBe(0);
      expect(l1d & 0x3fff).toBe(0x121); // type/level/etc. kept
      const l3 = find(t, 4, 1).eax;
      expect(l3 >>> 26).toBe(3);
      expect((l3 >>> 14) & 0xfff).toBe(3);
      expect(find(t, 0xb, 0)).toEqual(e(0xb, 0, 0, 1, 0x100, id, 1));
      expect(find(t, 0xb, 1)).toEqual(e(0xb, 1, 2, 4, 0x201, id, 1));
    }
  });

  it('is deterministic and rewrites leaf 0x1F like 0xB', () => {
    const table = [...hostTable(), e(0x1f, 0, 1, 2, 0x100, 5, 1), e(0x1f, 1, 4, 8, 0x201, 5, 1), e(0x1f, 2, 0, 0, 2, 5, 1)];
    const a = normalizeCpuid(table, { vcpuId: 2, vcpuCount: 3 });
    expect(normalizeCpuid(table, { vcpuId: 2, vcpuCount: 3 })).toEqual(a);
    expect(find(a, 0x1f, 1)).toEqual(e(0x1f, 1, 2, 3, 0x201, 2, 1));
    expect(find(a, 0x1f, 2)).toEqual(e(0x1f, 2, 0, 0, 2, 2, 1));
  });

  it('refuses impossible topologies', () => {
    expect(() => normalizeCpuid(hostTable(), { vcpuId: 1, vcpuCount: 1 })).toThrow(CpuError);
    expect(() => normalizeCpuid(hostTable(), { vcpuId: 0, vcpuCount: 0 })).toThrow(CpuError);
    expect(() => normalizeCpuid(hostTable(), { vcpuId: 0, vcpuCount: 255 })).toThrow(CpuError);
  });

  it('applies host quirks only when the host is emulated KVM', () => {
    const plain = normalizeCpuid(hostTable(), { vcpuId: 0, vcpuCount: 1, quirks: { emulatedKvm: false } });
    expect(find(plain, 1).ecx & (1 << 13)).toBe(1 << 13);
    const quirky = normalizeCpuid(hostTable(), { vcpuId: 0, vcpuCount: 1, quirks: { emulatedKvm: true } });
    expect(find(quirky, 1).ecx & (1 << 13)).toBe(0);
  });
});

describe('host quirks', () => {
  it('detects the emulated KVM from /sys/module/kvm_pvm', () => {
    const seen: string[] = [];
    expect(detectHostQuirks((p) => (seen.push(p), true))).toEqual({ emulatedKvm: true });
    expect(seen).toEqual([KVM_PVM_MODULE_PATH]);
    expect(detectHostQuirks(() => false)).toEqual({ emulatedKvm: false });
    expect(detectHostQuirks(() => { throw new Error('EACCES'); })).toEqual({ emulatedKvm: false });
  });

  it('clears CX16 and the hypercall-based KVM features', () => {
    const input = hostTable();
    const out = applyCpuidQuirks(input, { emulatedKvm: true });
    expect(find(out, 1).ecx & (1 << 13)).toBe(0);
    expect(find(out, 1).ecx | (1 << 13)).toBe(find(input, 1).ecx | (1 << 13));
    expect(find(out, 0x40000001).eax).toBe(0x01007afb & ~((1 << 7) | (1 << 9) | (1 << 11) | (1 << 12) | (1 << 13)));
    expect(find(input, 1).ecx & (1 << 13)).toBe(1 << 13); // input not mutated
    expect(applyCpuidQuirks(input, { emulatedKvm: false })).toEqual(input);
  });

  it('command line additions', () => {
    expect(quirkCmdlineArgs({ emulatedKvm: false })).toEqual([]);
    const args = quirkCmdlineArgs({ emulatedKvm: true });
    expect(args).toEqual(['noxsave', 'nopvspin', 'nowatchdog', QUIRK_CLEARCPUID, 'initcall_blacklist=ptp_kvm_init']);
    expect(quirkCmdlineArgs()).toEqual(args);
    expect(QUIRK_CLEARCPUID_LIST.length).toBe(121);
    expect(QUIRK_CLEARCPUID).toBe(`clearcpuid=${QUIRK_CLEARCPUID_LIST}`);
    expect(QUIRK_CLEARCPUID).toBe('clearcpuid=popcnt,smap,cx16,rdrand,rdseed,fsgsbase,pcid,invpcid,rdpid,aes,pclmulqdq,sha_ni,movbe,sse4_2,sse4_1,ssse3,bmi2,clflushopt');
  });

  it('emulation failure fixes for INT3 and FWAIT only', () => {
    expect(fixEmulationFailure(new Uint8Array([0xcc, 0x90]))).toEqual({ action: 'skip', length: 1, injectVector: 3 });
    expect(fixEmulationFailure(new Uint8Array([0x9b]))).toEqual({ action: 'skip', length: 1 });
    expect(fixEmulationFailure(new Uint8Array([0xf0, 0x48, 0x0f, 0xc7, 0x0e]))).toBeNull();
    expect(fixEmulationFailure(new Uint8Array([]))).toBeNull();
    expect(fixEmulationFailure(new Uint8Array([0xcc]), { emulatedKvm: false })).toBeNull();
  });
});
