/**
 * Workarounds for hosts whose KVM executes guests with its instruction emulator (nested "PVM"
 * KVM, detected by the `kvm_pvm` module). Each function changes nothing unless the quirks say
 * the host is such a one; facts and reasons: KVM-HOST-NOTES.md in the project's shared notes.
 * @module
 */

import { existsSync } from 'fs';
import type { CpuidEntry } from '../native/types';

/** Host properties that need workarounds. */
export interface HostQuirks {
  /** KVM here runs guests in its instruction emulator, which lacks some instructions and hypercalls. */
  emulatedKvm: boolean;
}

/** Quirks of an ordinary KVM host: none. */
export const NO_QUIRKS: Readonly<HostQuirks> = Object.freeze({ emulatedKvm: false });
/** Quirks of an emulating (PVM) KVM host. */
export const EMULATED_KVM_QUIRKS: Readonly<HostQuirks> = Object.freeze({ emulatedKvm: true });

/** Present when the nested PVM flavour of KVM is loaded. */
export const KVM_PVM_MODULE_PATH = '/sys/module/kvm_pvm';

/** Answers whether a path exists (injectable for tests). */
export type FsProbe = (path: string) => boolean;

/** Detects the host's quirks; `probe` defaults to `fs.existsSync`. */
export function detectHostQuirks(probe: FsProbe = existsSync): HostQuirks {
  let emulatedKvm = false;
  try {
    emulatedKvm = probe(KVM_PVM_MODULE_PATH);
  } catch {
    emulatedKvm = false;
  }
  return { emulatedKvm };
}

/** Quirks apply when none were given (the caller already decided) or when they say so. */
function active(quirks?: HostQuirks): boolean {
  return quirks === undefined || quirks.emulatedKvm;
}

/** CPUID.1:ECX bit 13, CMPXCHG16B: the emulator cannot execute it, and the guest honours this bit. */
export const CPUID_1_ECX_CX16 = 1 << 13;
/** KVM paravirtual feature leaf. */
export const KVM_CPUID_FEATURES = 0x4000_0001;
/** KVM feature bit: paravirtual spinlock unhalt (a hypercall). */
export const KVM_FEATURE_PV_UNHALT = 7;
/** KVM feature bit: paravirtual TLB flush. */
export const KVM_FEATURE_PV_TLB_FLUSH = 9;
/** KVM feature bit: IPIs by hypercall. */
export const KVM_FEATURE_PV_SEND_IPI = 11;
/** KVM feature bit: halt-polling control. */
export const KVM_FEATURE_POLL_CONTROL = 12;
/** KVM feature bit: directed yield by hypercall. */
export const KVM_FEATURE_PV_SCHED_YIELD = 13;
/** The hypercall-based KVM features hidden on an emulating host (hypercalls hang there). */
export const KVM_HYPERCALL_FEATURES_MASK =
  (1 << KVM_FEATURE_PV_UNHALT) |
  (1 << KVM_FEATURE_PV_TLB_FLUSH) |
  (1 << KVM_FEATURE_PV_SEND_IPI) |
  (1 << KVM_FEATURE_POLL_CONTROL) |
  (1 << KVM_FEATURE_PV_SCHED_YIELD);

/**
 * Returns a copy of `entries` with CX16 and the hypercall-based KVM features cleared, when the
 * quirks apply (see {@link HostQuirks}; omitted quirks mean "apply"). Does not modify `entries`.
 */
export function applyCpuidQuirks(entries: readonly CpuidEntry[], quirks?: HostQuirks): CpuidEntry[] {
  const out = entries.map((e) => ({ ...e }));
  if (!active(quirks)) return out;
  for (const e of out) {
    if (e.function === 1) e.ecx = (e.ecx & ~CPUID_1_ECX_CX16) >>> 0;
    if (e.function === KVM_CPUID_FEATURES) e.eax = (e.eax & ~KVM_HYPERCALL_FEATURES_MASK) >>> 0;
  }
  return out;
}

/**
 * Features the guest must turn off itself (the emulator reports them in CPUID whatever the VMM
 * says). Linux 6.1 copies the `clearcpuid=` value into a 128-byte buffer and silently cuts a
 * longer one, so this list (121 characters) must stay within 127.
 */
export const QUIRK_CLEARCPUID_LIST =
  'popcnt,smap,cx16,rdrand,rdseed,fsgsbase,pcid,invpcid,rdpid,aes,pclmulqdq,sha_ni,movbe,sse4_2,sse4_1,ssse3,bmi2,clflushopt';
/** The `clearcpuid=` argument built from {@link QUIRK_CLEARCPUID_LIST}. */
export const QUIRK_CLEARCPUID = `clearcpuid=${QUIRK_CLEARCPUID_LIST}`;

/**
 * Kernel command line additions for an emulating host: no XSAVE, no paravirtual spinlocks, no
 * soft-lockup watchdog (the guest is slow, not stuck), the unsupported features cleared, and the
 * KVM PTP clock's hypercall skipped. Empty when the quirks do not apply.
 */
export function quirkCmdlineArgs(quirks?: HostQuirks): string[] {
  if (!active(quirks)) return [];
  return ['noxsave', 'nopvspin', 'nowatchdog', QUIRK_CLEARCPUID, 'initcall_blacklist=ptp_kvm_init'];
}

/** Opcode of INT3 (breakpoint). */
export const OPCODE_INT3 = 0xcc;
/** Opcode of FWAIT. */
export const OPCODE_FWAIT = 0x9b;
/** Breakpoint exception vector (#BP). */
export const VECTOR_BP = 3;

/** How to get past an instruction the emulator could not execute. */
export interface EmulationFix {
  /** Advance RIP past the instruction. */
  action: 'skip';
  /** Instruction length in bytes. */
  length: number;
  /** Exception to inject after advancing RIP (as the instruction would have raised it). */
  injectVector?: number;
}

/**
 * The fix for an emulation failure on `insnBytes` (from the exit's `insn_bytes`), or null when
 * there is none (or the quirks do not apply): INT3 is a trap, so RIP moves past it and #BP is
 * injected; FWAIT with no pending x87 exception does nothing, so it is skipped.
 */
export function fixEmulationFailure(insnBytes: Uint8Array, quirks?: HostQuirks): EmulationFix | null {
  if (!active(quirks) || insnBytes.length === 0) return null;
  switch (insnBytes[0]) {
    case OPCODE_INT3:
      return { action: 'skip', length: 1, injectVector: VECTOR_BP };
    case OPCODE_FWAIT:
      return { action: 'skip', length: 1 };
    default:
      return null;
  }
}
