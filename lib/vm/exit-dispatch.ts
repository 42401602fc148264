/**
 * Dispatch of vCPU exits: port and MMIO accesses to the buses, everything else to a verdict.
 *
 * The native layer queues exits in the order they happened and calls {@link ExitDispatcher.io}
 * and {@link ExitDispatcher.event} on the JavaScript thread. I/O only dispatches (devices keep
 * their own invariants through their effects); non-I/O exits decide whether the vCPU resumes,
 * applying the emulated-KVM workarounds (`lib/cpu`) where they are in force, and otherwise end
 * the machine with an {@link ExitInfo} that says why.
 * @module
 */
import type { IoBus } from '../bus';
import * as cpu from '../cpu';
import type { NativeVcpu, VcpuEventInfo } from '../native/types';
import { ExitKind, VcpuVerdict } from '../native/types';
import type { ExitCounters } from './metrics';

/** KVM_EXIT_* reasons the dispatcher distinguishes (linux/kvm.h). */
const KVM_EXIT_HLT = 5;
const KVM_EXIT_SHUTDOWN = 8;
const KVM_EXIT_FAIL_ENTRY = 9;
const KVM_EXIT_INTERNAL_ERROR = 17;
const KVM_INTERNAL_ERROR_EMULATION = 1;

/** How a machine ended. */
export interface ExitInfo {
  /**
   * `'reset'`: the guest pulsed the i8042 reset line (Linux `reboot=k`);
   * `'shutdown'`: a triple fault (KVM_EXIT_SHUTDOWN);
   * `'error'`: KVM could not run the guest (emulation failure, failed entry, internal error), a
   * device failed, or the machine could not be started;
   * `'stopped'`: the host called `stop()`.
   */
  reason: 'reset' | 'shutdown' | 'error' | 'stopped';
  /** The vCPU that caused the exit, when one did. */
  vcpu?: number;
  /** Human-readable detail for `'error'`. */
  message?: string;
  /** Guest RIP at the failure, for `'error'` and `'shutdown'`. */
  rip?: bigint;
  /** The bytes of the instruction KVM could not execute, as hex, when KVM reported them. */
  instructionBytes?: string;
  /** The KVM_EXIT_* number behind an `'error'`. */
  kvmExitReason?: number;
  /**
   * For a VM run in a jailed child process (`new MicroVM({ jail })`) that was killed: the signal
   * that ended the process, e.g. `'SIGKILL'` (its cgroup's memory limit, or a child that stopped
   * answering) or `'SIGSYS'` (a call its seccomp filter refused). The reason is then `'error'`.
   */
  signal?: string;
  /**
   * Devices whose `close()` failed during teardown (their resources may not all have been
   * released); absent when every device closed cleanly. Reported here, never thrown.
   */
  closeErrors?: CloseError[];
}

/** A device whose `close()` failed at teardown. */
export interface CloseError {
  /** The device's id. */
  id: string;
  /** What its close rejected with. */
  error: string;
}

/** What the dispatcher needs from the machine. */
export interface ExitDispatchEnv {
  pio: IoBus;
  mmio: IoBus;
  vcpus: readonly NativeVcpu[];
  quirks: cpu.HostQuirks;
  /** Ends the machine (first reason wins). */
  finish(info: ExitInfo): void;
}

/** See the module comment. */
export class ExitDispatcher {
  /** Exits handled in JavaScript, by kind. */
  readonly counters: Omit<ExitCounters, 'unmapped'> = { pioReads: 0, pioWrites: 0, mmioReads: 0, mmioWrites: 0, events: 0 };
  /** Sequence number of the last record handled (orders posted writes, see NativeVm.setPioReadCache). */
  lastSeq = 0;

  constructor(private readonly env: ExitDispatchEnv) {}

  /** A port or MMIO access; the return value answers a read. */
  io(kind: ExitKind, addr: number, size: number, value: number, seq: number): number | void {
    this.lastSeq = seq;
    const { pio, mmio } = this.env;
    const c = this.counters;
    try {
      switch (kind) {
        case ExitKind.PioWrite:
          c.pioWrites++;
          pio.write(addr, size, value);
          return;
        case ExitKind.PioRead:
          c.pioReads++;
          return pio.read(addr, size);
        case ExitKind.MmioWrite:
          c.mmioWrites++;
          mmio.write(addr, size, value);
          return;
        case ExitKind.MmioRead:
          c.mmioReads++;
          return mmio.read(addr, size);
      }
    } catch (e) {
      // A device bug must not take the host down; it ends this VM with the reason.
      this.env.finish({ reason: 'error', message: `device error at 0x${addr.toString(16)}: ${(e as Error).message}` });
      return kind === ExitKind.PioRead || kind === ExitKind.MmioRead ? 0xffffffff : undefined;
    }
  }

  /**
   * One-byte port writes batched by the native layer (the UART's THR, see
   * `NativeVm.defineTransmitBuffer`): byte `i` was written with seq `firstSeq + i`, and is handled
   * as {@link ExitDispatcher.io} would handle it, in order.
   */
  pioWriteBatch(port: number, bytes: Uint8Array, firstSeq: number): void {
    const { pio } = this.env;
    try {
      for (let i = 0; i < bytes.length; i++) {
        // Before the write: a device may publish its state for this seq from inside it.
        this.lastSeq = firstSeq + i;
        this.counters.pioWrites++;
        pio.write(port, 1, bytes[i]);
      }
    } catch (e) {
      this.env.finish({ reason: 'error', message: `device error at 0x${port.toString(16)}: ${(e as Error).message}` });
    }
  }

  /** A non-I/O exit: resume (after a workaround) or end the machine. */
  event(vcpuId: number, info: VcpuEventInfo): VcpuVerdict {
    this.counters.events++;
    const vcpu = this.env.vcpus[vcpuId];
    const finish = this.env.finish;
    if (info.reason === KVM_EXIT_SHUTDOWN) {
      finish({ reason: 'shutdown', vcpu: vcpuId, rip: safeRip(vcpu) });
      return VcpuVerdict.Stop;
    }
    if (info.reason === KVM_EXIT_INTERNAL_ERROR && info.suberror === KVM_INTERNAL_ERROR_EMULATION) {
      const bytes = info.insnBytes;
      if (this.env.quirks.emulatedKvm && bytes && vcpu) {
        const fix = cpu.fixEmulationFailure(bytes);
        if (fix) {
          try {
            const regs = vcpu.getRegs();
            regs.rip += BigInt(fix.length);
            vcpu.setRegs(regs);
            if (fix.injectVector !== undefined) vcpu.injectException(fix.injectVector);
            return VcpuVerdict.Resume;
          } catch (e) {
            finish({ reason: 'error', vcpu: vcpuId, message: `applying the emulation workaround failed: ${(e as Error).message}` });
            return VcpuVerdict.Stop;
          }
        }
      }
      finish({
        reason: 'error',
        vcpu: vcpuId,
        kvmExitReason: info.reason,
        rip: safeRip(vcpu),
        instructionBytes: bytes ? Buffer.from(bytes).toString('hex') : undefined,
        message: 'KVM could not emulate an instruction',
      });
      return VcpuVerdict.Stop;
    }
    const what = info.reason === KVM_EXIT_FAIL_ENTRY
      ? `VM entry failed (hardware reason 0x${(info.hardwareEntryFailureReason ?? 0n).toString(16)})`
      : info.reason === KVM_EXIT_HLT
        ? 'the vCPU halted with no interrupt controller to wake it'
        : info.errno !== undefined
          ? `KVM_RUN failed with errno ${info.errno}`
          : `unexpected KVM exit ${info.reason}${info.suberror !== undefined ? ` (suberror ${info.suberror})` : ''}`;
    finish({ reason: 'error', vcpu: vcpuId, kvmExitReason: info.reason, rip: safeRip(vcpu), message: what });
    return VcpuVerdict.Stop;
  }
}

function safeRip(vcpu: NativeVcpu | undefined): bigint | undefined {
  try {
    return vcpu?.getRegs().rip;
  } catch {
    return undefined;
  }
}
