/**
 * A test-only machine that drives the native layer directly, to exercise lib/snapshot without
 * the MicroVM façade (whose snapshot support the lead builds on these pieces). It boots a
 * freestanding ELF guest the way lib/vm/machine.ts does (COM1 and the i8042 on the port bus,
 * nothing on MMIO), and can pause, snapshot and restore it.
 *
 * The UART and the i8042 have no saveState yet: a restored harness gets fresh ones, which the
 * test guests tolerate (they configured the UART before the snapshot, and a fresh 16550 with
 * DLAB clear transmits just the same).
 */
import { promises as fsp } from 'fs';

import * as boot from '../../lib/boot';
import { IoBus, type IrqLine } from '../../lib/bus';
import * as cpu from '../../lib/cpu';
import { I8042 } from '../../lib/devices/i8042';
import { Serial } from '../../lib/devices/serial';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { loadNative } from '../../lib/native/binding';
import { ExitKind, VcpuVerdict } from '../../lib/native/types';
import type { NativeAddon, NativeKvm, NativeVcpu, NativeVm, VcpuEventInfo } from '../../lib/native/types';
import {
  checkHostCompatibility,
  hostProfile,
  loadSnapshot,
  restoreMemory,
  restoreVcpus,
  restoreVmState,
  takeSnapshot,
  type LoadedSnapshot,
  type MemoryRegionRecord,
  type SnapshotInfo,
  type TakeSnapshotOptions,
} from '../../lib/snapshot';

const KVM_TSS_ADDRESS = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;
const KVM_PIT_SPEAKER_DUMMY = 1;
const SERIAL_BASE = 0x3f8;
const SERIAL_IRQ = 4;
const I8042_BASE = 0x60;
const I8042_IRQ = 1;
const KVM_EXIT_INTERNAL_ERROR = 17;
const KVM_INTERNAL_ERROR_EMULATION = 1;

/** How a harness run ended. */
export type HarnessEnd = { reason: 'reset' } | { reason: 'error'; message: string } | { reason: 'stopped' };

/** Options of {@link NativeGuest.boot}. */
export interface BootOptions {
  /** Guest ELF. */
  kernel: string;
  /** Guest RAM in MiB. */
  memoryMib: number;
  /** vCPUs (default 1). */
  vcpus?: number;
  /** Kernel command line. */
  cmdline?: string;
  /** Turn KVM dirty logging on for every slot before the guest runs. */
  dirtyLogging?: boolean;
}

class KvmIrq implements IrqLine {
  constructor(private readonly vm: NativeVm, private readonly irq: number) {}
  setLevel(level: boolean): void {
    this.vm.irqLine(this.irq, level);
  }
  trigger(): void {
    this.vm.irqLine(this.irq, true);
    this.vm.irqLine(this.irq, false);
  }
}

/** A VM built on the native layer, with just a UART and an i8042. */
export class NativeGuest {
  /** Everything the guest printed. */
  output = '';
  /** Set once the guest ended. */
  end: HarnessEnd | undefined;
  /** Milliseconds from the start of {@link restore} until its vCPUs were started. */
  restoreMs = 0;
  private readonly pio = new IoBus();
  private readonly serial: Serial;
  private readonly i8042: I8042;
  private readonly waiters: (() => void)[] = [];
  private running = 0;
  private closed = false;
  private quirks: cpu.HostQuirks;

  private constructor(
    readonly addon: NativeAddon,
    readonly kvm: NativeKvm,
    readonly vm: NativeVm,
    readonly memoryBuffer: ArrayBuffer,
    readonly regions: MemoryRegionRecord[],
    readonly vcpus: NativeVcpu[],
    /** Whether KVM dirty logging is on. */
    readonly dirtyLogging: boolean,
  ) {
    this.quirks = cpu.detectHostQuirks();
    this.serial = new Serial({
      irq: new KvmIrq(vm, SERIAL_IRQ),
      onOutput: (bytes) => {
        this.output += Buffer.from(bytes).toString('latin1');
        this.notify();
      },
    });
    this.i8042 = new I8042({ irq: new KvmIrq(vm, I8042_IRQ), onReset: () => this.finish({ reason: 'reset' }) });
    this.pio.insert(SERIAL_BASE, 8, this.serial);
    this.pio.insert(I8042_BASE, 5, this.i8042);
  }

  /** Creates a KVM VM with the in-kernel irqchip and PIT, as the machine does before anything else. */
  private static createVm(addon: NativeAddon): { kvm: NativeKvm; vm: NativeVm } {
    const kvm = addon.openKvm();
    const vm = kvm.createVm();
    vm.setTssAddr(KVM_TSS_ADDRESS);
    vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDRESS);
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    return { kvm, vm };
  }

  /** Boots `opts.kernel` (not yet running: call {@link start}). */
  static async boot(opts: BootOptions): Promise<NativeGuest> {
    const addon = loadNative();
    const image = await fsp.readFile(opts.kernel);
    const { kvm, vm } = NativeGuest.createVm(addon);
    const memSize = opts.memoryMib * 1024 * 1024;
    const buffer = vm.allocateMemory(memSize);
    let offset = 0;
    const regions: MemoryRegionRecord[] = boot.memoryRegions(memSize).map((r, slot) => {
      const rec = { guestAddr: r.guestAddr, size: r.size, fileOffset: offset, slot };
      offset += r.size;
      return rec;
    });
    for (const r of regions) {
      vm.setUserMemoryRegion(r.slot, r.guestAddr, buffer, r.fileOffset, r.size);
      if (opts.dirtyLogging) vm.setDirtyLogging(r.slot, true);
    }
    const mem = new GuestMemory(regions.map((r) => ({ guestAddr: r.guestAddr, buffer, byteOffset: r.fileOffset, size: r.size })));
    const kernel = boot.loadKernel(mem, image);
    const vcpuCount = opts.vcpus ?? 1;
    boot.setupBootMemory(mem, { kernel, cmdline: opts.cmdline ?? '', vcpuCount, memSize });
    const quirks = cpu.detectHostQuirks();
    const supported = kvm.supportedCpuid();
    const vcpus: NativeVcpu[] = [];
    for (let id = 0; id < vcpuCount; id++) {
      const v = vm.createVcpu(id);
      vcpus.push(v);
      v.setCpuid(cpu.normalizeCpuid(supported, { vcpuId: id, vcpuCount, quirks }));
      v.setMsrs(boot.bootMsrs());
      v.setLapic(boot.configureLapicLint(v.getLapic()));
      if (id === 0) {
        v.setRegs(boot.bootRegs(kernel.entry));
        v.setSregs(boot.bootSregs(v.getSregs()));
        v.setFpu(boot.BOOT_FPU);
      }
    }
    return new NativeGuest(addon, kvm, vm, buffer, regions, vcpus, !!opts.dirtyLogging);
  }

  /**
   * Builds a new VM from the snapshot in `dir` (not yet running: call {@link start}); `restoreMs`
   * records how long the host side took, up to (not including) starting the vCPUs.
   */
  static async restore(dir: string, opts: { memory: 'map' | 'copy'; dirtyLogging?: boolean; loaded?: LoadedSnapshot }): Promise<NativeGuest> {
    const t0 = performance.now();
    const addon = loadNative();
    const snap = opts.loaded ?? (await loadSnapshot(dir));
    const { kvm, vm } = NativeGuest.createVm(addon);
    try {
      const vcpus = snap.state.vcpus.map((_, id) => vm.createVcpu(id));
      const host = hostProfile(kvm, vm, vcpus[0]);
      checkHostCompatibility(snap.state, host);
      const buffer = await restoreMemory(vm, snap, opts.memory);
      const regions = snap.state.memory.regions.map((r) => ({ ...r }));
      if (opts.dirtyLogging) for (const r of regions) vm.setDirtyLogging(r.slot, true);
      restoreVcpus(vcpus, snap.state, host);
      restoreVmState(vm, snap.state);
      const g = new NativeGuest(addon, kvm, vm, buffer, regions, vcpus, !!opts.dirtyLogging);
      g.restoreMs = performance.now() - t0;
      return g;
    } catch (e) {
      vm.close();
      kvm.close();
      throw e;
    }
  }

  /** Starts every vCPU. */
  start(): void {
    this.vm.setExitHandlers({
      io: (kind, _vcpu, addr, size, value) => this.onIo(kind, addr, size, value),
      event: (vcpu, info) => this.onEvent(vcpu, info),
      vcpuStopped: () => {
        this.running--;
        if (this.running <= 0) this.finish({ reason: 'error', message: 'all vCPUs stopped' });
      },
    });
    this.running = this.vcpus.length;
    for (const v of this.vcpus) v.start();
  }

  private onIo(kind: ExitKind, addr: number, size: number, value: number): number | void {
    switch (kind) {
      case ExitKind.PioWrite:
        this.pio.write(addr, size, value);
        return;
      case ExitKind.PioRead:
        return this.pio.read(addr, size);
      case ExitKind.MmioRead:
        return 0xffffffff;
      default:
        return;
    }
  }

  private onEvent(vcpuId: number, info: VcpuEventInfo): VcpuVerdict {
    if (info.reason === KVM_EXIT_INTERNAL_ERROR && info.suberror === KVM_INTERNAL_ERROR_EMULATION && info.insnBytes && this.quirks.emulatedKvm) {
      const fix = cpu.fixEmulationFailure(info.insnBytes, this.quirks);
      if (fix) {
        const v = this.vcpus[vcpuId];
        const regs = v.getRegs();
        regs.rip += BigInt(fix.length);
        v.setRegs(regs);
        if (fix.injectVector !== undefined) v.injectException(fix.injectVector);
        return VcpuVerdict.Resume;
      }
    }
    this.finish({ reason: 'error', message: `vCPU ${vcpuId}: KVM exit ${info.reason}${info.suberror !== undefined ? `/${info.suberror}` : ''}` });
    return VcpuVerdict.Stop;
  }

  private notify(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private finish(end: HarnessEnd): void {
    if (!this.end) this.end = end;
    // Not from inside an exit handler: stopping joins the vCPU threads.
    setImmediate(() => {
      if (!this.closed) this.vm.stopVcpus();
      this.notify();
    });
  }

  /**
   * Pauses every vCPU between two instructions, with every exit they queued handled: pause, then
   * answer what is pending (a vCPU waiting for a read answer has not finished its instruction)
   * and pause again, until every vCPU is parked.
   */
  pause(): void {
    for (let round = 0; round < 1000; round++) {
      this.vm.pauseVcpus();
      this.vm.flushExits();
      this.serial.flush();
      if (this.vcpus.every((v) => v.runState === 'parked' || v.runState === 'idle' || v.runState === 'exited')) return;
    }
    throw new Error('the vCPUs did not settle into a pause');
  }

  /** Lets paused vCPUs go on. */
  resume(): void {
    this.vm.resumeVcpus();
  }

  /** Snapshot of the paused guest. */
  snapshot(dir: string, opts: Omit<TakeSnapshotOptions, 'dirtyLogging'>): Promise<SnapshotInfo> {
    return takeSnapshot(dir, {
      kvm: this.kvm,
      vm: this.vm,
      vcpus: this.vcpus,
      memory: { buffer: this.memoryBuffer, regions: this.regions },
    }, { ...opts, dirtyLogging: this.dirtyLogging });
  }

  /** Resolves once `pred(output)` holds (checked on every output chunk), or rejects after `timeoutMs`. */
  waitFor(pred: (output: string) => boolean, timeoutMs = 30_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out; output so far:\n${this.output}`)), timeoutMs);
      const check = () => {
        if (pred(this.output)) {
          clearTimeout(timer);
          resolve();
        } else if (this.end && this.running <= 0) {
          clearTimeout(timer);
          reject(new Error(`the guest ended (${JSON.stringify(this.end)}) first; output:\n${this.output}`));
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  /** Resolves with how the guest ended. */
  async wait(timeoutMs = 30_000): Promise<HarnessEnd> {
    await this.waitFor(() => this.end !== undefined, timeoutMs);
    return this.end!;
  }

  /** Stops the vCPUs and releases everything (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.vm.stopVcpus();
      this.vm.flushExits();
    } catch { /* closing anyway */ }
    this.serial.flush();
    this.vm.close();
    this.kvm.close();
  }
}
