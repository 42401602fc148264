/**
 * Conversions between the native layer's state (kernel structures in Buffers) and the state
 * file's JSON records, and the few fields of those structures this module reads.
 * @module
 */
import type { CpuidEntry, NativeVcpuState, NativeVmState } from '../native/types';
import { KVM_STRUCT_SIZES, type MsrRecord, type VcpuStateRecord, type VmStateRecord } from './format';
import { msrRestoreOrder } from './msrs';
import { SnapshotError } from './errors';

const b64 = (b: Uint8Array | null | undefined): string | null =>
  b ? Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64') : null;
const unb64 = (s: string | null): Buffer | null => (s === null ? null : Buffer.from(s, 'base64'));

/** `struct kvm_msr_entry` records → MSR records. */
export function decodeMsrEntries(buf: Uint8Array): MsrRecord[] {
  if (buf.length % KVM_STRUCT_SIZES.msrEntry !== 0) {
    throw new SnapshotError('BAD_ARGUMENT', `MSR entries must be whole 16-byte records, got ${buf.length} bytes`);
  }
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: MsrRecord[] = [];
  for (let o = 0; o < buf.length; o += KVM_STRUCT_SIZES.msrEntry) {
    out.push({ index: v.getUint32(o, true), data: v.getBigUint64(o + 8, true).toString() });
  }
  return out;
}

/** MSR records → `struct kvm_msr_entry` records. */
export function encodeMsrEntries(msrs: readonly MsrRecord[]): Buffer {
  const buf = Buffer.alloc(msrs.length * KVM_STRUCT_SIZES.msrEntry);
  msrs.forEach((m, i) => {
    buf.writeUInt32LE(m.index >>> 0, i * 16);
    buf.writeBigUInt64LE(BigInt(m.data), i * 16 + 8);
  });
  return buf;
}

/** `struct kvm_cpuid_entry2` records → CPUID entries. */
export function decodeCpuidEntries(buf: Uint8Array): CpuidEntry[] {
  if (buf.length % KVM_STRUCT_SIZES.cpuidEntry !== 0) {
    throw new SnapshotError('BAD_ARGUMENT', `CPUID entries must be whole 40-byte records, got ${buf.length} bytes`);
  }
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: CpuidEntry[] = [];
  for (let o = 0; o < buf.length; o += KVM_STRUCT_SIZES.cpuidEntry) {
    const u = (k: number) => v.getUint32(o + k, true);
    out.push({ function: u(0), index: u(4), flags: u(8), eax: u(12), ebx: u(16), ecx: u(20), edx: u(24) });
  }
  return out;
}

/** CPUID entries → `struct kvm_cpuid_entry2` records. */
export function encodeCpuidEntries(entries: readonly CpuidEntry[]): Buffer {
  const buf = Buffer.alloc(entries.length * KVM_STRUCT_SIZES.cpuidEntry);
  entries.forEach((e, i) => {
    const o = i * KVM_STRUCT_SIZES.cpuidEntry;
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((x, k) => buf.writeUInt32LE(x >>> 0, o + k * 4));
  });
  return buf;
}

/** A vCPU state from `NativeVcpu.saveState` as the state file stores it. */
export function vcpuRecordFromNative(id: number, s: NativeVcpuState): VcpuStateRecord {
  return {
    id,
    mpState: s.mpState,
    regs: b64(s.regs)!,
    sregs: b64(s.sregs)!,
    fpu: b64(s.fpu)!,
    xsave: b64(s.xsave),
    xcrs: b64(s.xcrs),
    debugregs: b64(s.debugregs),
    lapic: b64(s.lapic)!,
    events: b64(s.events),
    msrs: decodeMsrEntries(s.msrs),
    msrsUnreadable: s.msrsUnreadable ?? [],
    tscKhz: s.tscKhz ?? null,
    cpuid: s.cpuid ? decodeCpuidEntries(s.cpuid) : [],
  };
}

/** A stored vCPU state as `NativeVcpu.restoreState` takes it, MSRs in restore order. */
export function vcpuRecordToNative(r: VcpuStateRecord): NativeVcpuState {
  return {
    mpState: r.mpState,
    regs: unb64(r.regs)!,
    sregs: unb64(r.sregs)!,
    fpu: unb64(r.fpu)!,
    xsave: unb64(r.xsave),
    xcrs: unb64(r.xcrs),
    debugregs: unb64(r.debugregs),
    lapic: unb64(r.lapic)!,
    events: unb64(r.events),
    msrs: encodeMsrEntries(msrRestoreOrder(r.msrs)),
    cpuid: r.cpuid.length > 0 ? encodeCpuidEntries(r.cpuid) : null,
  };
}

/** The VM state from `NativeVm.saveState` as the state file stores it. */
export function vmRecordFromNative(s: NativeVmState): VmStateRecord {
  return { picMaster: b64(s.picMaster), picSlave: b64(s.picSlave), ioapic: b64(s.ioapic), pit2: b64(s.pit2), clock: b64(s.clock) };
}

/** `kvm_clock_data.flags` offset. */
const CLOCK_FLAGS_OFFSET = 8;
/** KVM_CLOCK_REALTIME: `realtime` is valid (and, on KVM_SET_CLOCK, advances the clock by the time elapsed since). */
export const KVM_CLOCK_REALTIME = 1 << 2;

/**
 * A stored VM state as `NativeVm.restoreState` takes it. The clock's flags are cleared, so
 * the guest's clock resumes where it stopped; with `clockRealtime` (and a state that recorded
 * realtime) only KVM_CLOCK_REALTIME is kept, so KVM advances it by the wall time that passed.
 */
export function vmRecordToNative(r: VmStateRecord, opts: { clockRealtime?: boolean } = {}): NativeVmState {
  const clock = unb64(r.clock);
  if (clock) {
    const flags = clock.readUInt32LE(CLOCK_FLAGS_OFFSET);
    if (opts.clockRealtime && !(flags & KVM_CLOCK_REALTIME)) {
      throw new SnapshotError('HOST_INCOMPATIBLE', 'clockRealtime was asked for, but the snapshot recorded no realtime clock', { field: 'vm.clock' });
    }
    clock.writeUInt32LE(opts.clockRealtime ? KVM_CLOCK_REALTIME : 0, CLOCK_FLAGS_OFFSET);
  }
  return { picMaster: unb64(r.picMaster), picSlave: unb64(r.picSlave), ioapic: unb64(r.ioapic), pit2: unb64(r.pit2), clock };
}

/** A few registers of a stored `struct kvm_regs`. */
export interface DecodedRegs {
  /** Instruction pointer. */
  rip: bigint;
  /** Stack pointer. */
  rsp: bigint;
  /** Flags. */
  rflags: bigint;
  /** RAX. */
  rax: bigint;
}

/** Registers decoded from a stored `struct kvm_regs` (for diagnostics and tests). */
export function decodeRegs(regsBase64: string): DecodedRegs {
  const b = Buffer.from(regsBase64, 'base64');
  // struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags, u64 each.
  return { rax: b.readBigUInt64LE(0), rsp: b.readBigUInt64LE(6 * 8), rip: b.readBigUInt64LE(16 * 8), rflags: b.readBigUInt64LE(17 * 8) };
}
