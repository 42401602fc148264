/**
 * A running machine: the KVM VM, its memory, devices and vCPU threads, wired together.
 *
 * `MicroVM` (the public façade) owns configuration and lifecycle promises; this module owns the
 * order in which KVM objects are created and torn down, and the dispatch of vCPU exits to devices.
 * It is the only place outside `lib/native` that holds native handles.
 * @module
 */
import { promises as fsp } from 'fs';
import { GuestMemory, splitRegions } from '../memory/guest-memory';
import { IoBus, IrqLine } from '../bus';
import type { NativeAddon, NativeKvm, NativeVm, NativeVcpu, VcpuEventInfo, FdWatch } from '../native/types';
import { ExitKind, MAX_MEMORY_BUFFER, VcpuVerdict } from '../native/types';
import { vcpuSeccompFilter } from '../seccomp';
import * as boot from '../boot';
import * as cpu from '../cpu';
import { Serial, SERIAL_CACHE_TRANSPARENT_WRITE_MASK, SERIAL_LSR_OFFSET } from '../devices/serial';
import { I8042 } from '../devices/i8042';
import { BlockDevice, FileBackend } from '../devices/block';
import { MmioTransport } from '../virtio/mmio';
import { RateLimiter } from '../ratelimit';
import { VIRTIO_MMIO_QUEUE_NOTIFY } from '../virtio/constants';
import type { VmConfig, DriveConfig } from './config';
import { composeCmdline } from './config';
import { VmError } from './errors';
import type { VmMetrics } from './metrics';

/** COM1's port window and IRQ. */
export const SERIAL_PORT_BASE = 0x3f8;
/** See {@link SERIAL_PORT_BASE}. */
export const SERIAL_PORT_LEN = 8;
/** See {@link SERIAL_PORT_BASE}. */
export const SERIAL_IRQ = 4;
/** The i8042 window (data port 0x60 through command port 0x64) and IRQ. */
export const I8042_PORT_BASE = 0x60;
/** See {@link I8042_PORT_BASE}. */
export const I8042_PORT_LEN = 5;
/** See {@link I8042_PORT_BASE}. */
export const I8042_IRQ = 1;
/** First virtio-mmio window; device i lives at base + i * 4 KiB with GSI {@link VIRTIO_FIRST_IRQ} + i. */
export const VIRTIO_MMIO_BASE = 0xd0000000;
/** Size of one virtio-mmio window. */
export const VIRTIO_MMIO_WINDOW = 0x1000;
/** GSI of the first virtio-mmio device (0-4 are taken by the PIT, keyboard, cascade and COM1). */
export const VIRTIO_FIRST_IRQ = 5;
/** The IOAPIC has 24 pins: GSIs 5..23 are free for virtio devices. */
export const MAX_VIRTIO_DEVICES = 24 - VIRTIO_FIRST_IRQ;

/** KVM capability numbers we require (linux/kvm.h). */
const KVM_CAP_IRQCHIP = 0;
const KVM_CAP_USER_MEMORY = 3;
const KVM_CAP_IRQFD = 32;
const KVM_CAP_PIT2 = 33;
const KVM_CAP_IOEVENTFD = 36;
const KVM_CAP_IMMEDIATE_EXIT = 136;
const REQUIRED_CAPS: [number, string][] = [
  [KVM_CAP_IRQCHIP, 'IRQCHIP'],
  [KVM_CAP_USER_MEMORY, 'USER_MEMORY'],
  [KVM_CAP_IRQFD, 'IRQFD'],
  [KVM_CAP_PIT2, 'PIT2'],
  [KVM_CAP_IOEVENTFD, 'IOEVENTFD'],
  [KVM_CAP_IMMEDIATE_EXIT, 'IMMEDIATE_EXIT'],
];
/** KVM_GET_API_VERSION has answered 12 since Linux 2.6.22. */
const KVM_API_VERSION = 12;
/** KVM_PIT_SPEAKER_DUMMY: the PIT's speaker port is handled in the kernel and makes no exits. */
const KVM_PIT_SPEAKER_DUMMY = 1;
/** Where KVM puts the 3-page TSS and the identity-map page that VMX real mode needs (Firecracker's choice). */
const KVM_TSS_ADDRESS = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;
/** KVM_EXIT_* reasons the event handler distinguishes. */
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
   * `'error'`: KVM could not run the guest (emulation failure, failed entry, internal error);
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
}

/** Effects the machine reports to its owner. */
export interface MachineEvents {
  /** Guest UART output. */
  serialOutput(bytes: Uint8Array): void;
  /** Guest made room for more UART input. */
  serialInputSpace(): void;
  /** The machine has ended and released everything. Called once. */
  exited(info: ExitInfo): void;
}

interface DriveSlot {
  config: DriveConfig;
  /** Owns its backend and rate limiter (it closes both). */
  device: BlockDevice;
  transport: MmioTransport;
}

/** An irqfd-backed edge interrupt for a virtio device. */
class IrqFdLine implements IrqLine {
  constructor(private readonly addon: NativeAddon, readonly fd: number) {}
  setLevel(level: boolean): void {
    // virtio-mmio interrupts are delivered as edges (as Firecracker does); a deassert needs no action.
    if (level) this.trigger();
  }
  trigger(): void {
    this.addon.eventfdWrite(this.fd, 1);
  }
}

/** A KVM_IRQ_LINE-driven interrupt line for the legacy devices. */
class KvmIrqLine implements IrqLine {
  constructor(private readonly vm: NativeVm, private readonly irq: number) {}
  setLevel(level: boolean): void {
    this.vm.irqLine(this.irq, level);
  }
  trigger(): void {
    this.vm.irqLine(this.irq, true);
    this.vm.irqLine(this.irq, false);
  }
}

/**
 * Builds and runs one VM. Create with {@link Machine.create}; it is running when that resolves.
 */
export class Machine {
  private readonly pio = new IoBus();
  private readonly mmio = new IoBus();
  private readonly fds: number[] = [];
  private readonly watches: FdWatch[] = [];
  private readonly drives = new Map<string, DriveSlot>();
  private vcpus: NativeVcpu[] = [];
  private runningVcpus = 0;
  private lastSeq = 0;
  private exit: ExitInfo | undefined;
  private tornDown = false;
  private teardownScheduled = false;
  readonly exits = { pioReads: 0, pioWrites: 0, mmioReads: 0, mmioWrites: 0, events: 0, unmapped: 0 };
  readonly serial: Serial;
  readonly i8042: I8042;
  /** The command line the guest was given. */
  cmdline = '';
  /** Host quirks in force. */
  quirks: cpu.HostQuirks = { emulatedKvm: false };

  private constructor(
    private readonly config: VmConfig,
    private readonly addon: NativeAddon,
    private readonly kvm: NativeKvm,
    private readonly vm: NativeVm,
    readonly memory: GuestMemory,
    private readonly events: MachineEvents,
  ) {
    this.serial = new Serial({
      irq: new KvmIrqLine(vm, SERIAL_IRQ),
      onOutput: (bytes) => events.serialOutput(bytes),
      onInputSpace: () => events.serialInputSpace(),
    });
    this.i8042 = new I8042({
      irq: new KvmIrqLine(vm, I8042_IRQ),
      onReset: () => this.finish({ reason: 'reset' }),
    });
  }

  /**
   * Creates the VM, loads the kernel and starts the vCPUs.
   * @throws VmError KVM_UNAVAILABLE / KVM_UNSUPPORTED / START_FAILED, BootError for a bad image
   */
  static async create(config: VmConfig, addon: NativeAddon, events: MachineEvents): Promise<Machine> {
    if (!config.kernel) throw new VmError('START_FAILED', 'no kernel configured');
    // Read files before creating anything, so a vanished file costs no KVM set-up.
    const kernelImage = await fsp.readFile(config.kernel.path);
    const initrd = config.kernel.initrd ? await fsp.readFile(config.kernel.initrd) : undefined;

    let kvm: NativeKvm;
    try {
      kvm = addon.openKvm(config.kvmPath);
    } catch (e) {
      throw new VmError('KVM_UNAVAILABLE', `cannot open ${config.kvmPath}: ${(e as Error).message}`, e);
    }
    let vm: NativeVm | undefined;
    try {
      const version = kvm.apiVersion();
      if (version !== KVM_API_VERSION) throw new VmError('KVM_UNSUPPORTED', `KVM API version ${version}, expected ${KVM_API_VERSION}`);
      for (const [cap, name] of REQUIRED_CAPS) {
        if (kvm.checkExtension(cap) <= 0) throw new VmError('KVM_UNSUPPORTED', `KVM lacks the required capability KVM_CAP_${name}`);
      }
      vm = kvm.createVm();
      vm.setTssAddr(KVM_TSS_ADDRESS);
      vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDRESS);
      vm.createIrqchip();
      vm.createPit2(KVM_PIT_SPEAKER_DUMMY);

      const memSize = config.memoryMib * 1024 * 1024;
      // One mapping, buffer and KVM slot per piece of at most 4 GiB (the addon's buffer limit).
      const specs = splitRegions(boot.memoryRegions(memSize), MAX_MEMORY_BUFFER).map((r, slot) => {
        const buffer = vm!.allocateMemory(r.size);
        vm!.setUserMemoryRegion(slot, r.guestAddr, buffer, 0, r.size);
        return { guestAddr: r.guestAddr, buffer, byteOffset: 0, size: r.size };
      });
      const memory = new GuestMemory(specs);
      const machine = new Machine(config, addon, kvm, vm, memory, events);
      try {
        await machine.build(kernelImage, initrd);
      } catch (e) {
        await machine.teardown();
        throw e;
      }
      return machine;
    } catch (e) {
      if (vm) {
        try { vm.close(); } catch { /* already failing */ }
      }
      try { kvm.close(); } catch { /* already failing */ }
      if (e instanceof VmError || (e as { name?: string }).name === 'BootError') throw e;
      throw new VmError('START_FAILED', `starting the VM failed: ${(e as Error).message}`, e);
    }
  }

  private async build(kernelImage: Buffer, initrd: Buffer | undefined): Promise<void> {
    const { config, vm, memory } = this;
    this.quirks = config.hostQuirks === 'auto' ? cpu.detectHostQuirks() : { emulatedKvm: config.hostQuirks === 'emulated-kvm' };

    // Legacy devices.
    this.pio.insert(SERIAL_PORT_BASE, SERIAL_PORT_LEN, this.serial);
    this.pio.insert(I8042_PORT_BASE, I8042_PORT_LEN, this.i8042);
    vm.definePioReadCache(SERIAL_PORT_BASE, SERIAL_PORT_LEN, SERIAL_CACHE_TRANSPARENT_WRITE_MASK);

    // virtio-blk devices; the root drive goes first so that it becomes /dev/vda.
    const ordered = [...config.drives].sort((a, b) => Number(b.root) - Number(a.root));
    const mmioAnnouncements: { base: number; irq: number }[] = [];
    for (const [i, d] of ordered.entries()) {
      const base = VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_WINDOW;
      const irq = VIRTIO_FIRST_IRQ + i;
      await this.addDrive(d, base, irq);
      mmioAnnouncements.push({ base, irq });
    }

    // Guest memory contents.
    const kernel = boot.loadKernel(memory, kernelImage);
    const extra = this.quirks.emulatedKvm ? cpu.quirkCmdlineArgs() : [];
    this.cmdline = composeCmdline(config.kernel!.cmdline, {
      root: ordered.find((d) => d.root),
      mmio: mmioAnnouncements,
      extra,
    });
    boot.setupBootMemory(memory, {
      kernel,
      cmdline: this.cmdline,
      initrd,
      vcpuCount: config.vcpus,
      memSize: config.memoryMib * 1024 * 1024,
    });

    // vCPUs: every vCPU gets CPUID, MSRs and LINT wiring; only the BSP gets boot registers.
    // Application processors wait for the guest's INIT/SIPI, as on real hardware.
    const supported = this.kvm.supportedCpuid();
    for (let id = 0; id < config.vcpus; id++) {
      const vcpu = vm.createVcpu(id);
      this.vcpus.push(vcpu);
      let entries = cpu.normalizeCpuid(supported, { vcpuId: id, vcpuCount: config.vcpus });
      if (this.quirks.emulatedKvm) entries = cpu.applyCpuidQuirks(entries);
      vcpu.setCpuid(entries);
      vcpu.setMsrs(boot.bootMsrs());
      const lapic = vcpu.getLapic();
      boot.configureLapicLint(lapic);
      vcpu.setLapic(lapic);
      if (id === 0) {
        vcpu.setRegs(boot.bootRegs(kernel.entry));
        vcpu.setSregs(boot.bootSregs(vcpu.getSregs()));
        vcpu.setFpu(boot.BOOT_FPU);
      }
    }

    vm.setExitHandlers({
      io: (kind, vcpu, addr, size, value, seq) => this.onIo(kind, vcpu, addr, size, value, seq),
      event: (vcpu, info) => this.onEvent(vcpu, info),
      vcpuStopped: () => this.onVcpuStopped(),
    });
    this.refreshLsrCache();
    this.runningVcpus = this.vcpus.length;
    // Each vCPU thread filters its own system calls from its first KVM_RUN on (lib/seccomp).
    for (const v of this.vcpus) v.start(config.seccomp === false ? undefined : vcpuSeccompFilter({ vcpuFd: v.fd }));
  }

  private async addDrive(d: DriveConfig, base: number, irq: number): Promise<void> {
    const { addon, vm } = this;
    const backend = await FileBackend.open(d.path, d.readOnly);
    // The device points the limiter's onUnblocked at its own queue.
    const rateLimiter = d.rateLimiter ? new RateLimiter(d.rateLimiter) : undefined;
    const device = new BlockDevice({ id: d.id, backend, readOnly: d.readOnly, cacheType: d.cacheType, rateLimiter });
    const irqFd = addon.eventfd(0);
    this.fds.push(irqFd);
    vm.irqfd(irqFd, irq);
    const transport = new MmioTransport(device, { mem: this.memory, irq: new IrqFdLine(addon, irqFd) });
    this.mmio.insert(base, VIRTIO_MMIO_WINDOW, transport);
    // QueueNotify goes to an ioeventfd per queue: the guest's kick never exits to JavaScript.
    for (let q = 0; q < device.queueMaxSizes.length; q++) {
      const fd = addon.eventfd(0);
      this.fds.push(fd);
      vm.ioeventfd({ addr: base + VIRTIO_MMIO_QUEUE_NOTIFY, len: 4, datamatch: q, fd });
      this.watches.push(addon.watchEventfd(fd, () => {
        // Register writes that preceded the kick (QueueReady, DRIVER_OK) are posted records that
        // may not have been handled yet: handle them first so the queue is seen as the guest set it.
        this.flushExits();
        transport.notify(q);
      }));
    }
    this.drives.set(d.id, { config: d, device, transport });
  }

  private flushExits(): void {
    if (this.tornDown) return;
    try {
      this.vm.flushExits();
    } catch (e) {
      this.finish({ reason: 'error', message: `handling vCPU exits failed: ${(e as Error).message}` });
    }
  }

  /** Tells the native layer the UART's current LSR, so LSR polls need no JavaScript. */
  private refreshLsrCache(): void {
    if (this.tornDown) return;
    const lsr = this.serial.cacheableLsr();
    this.vm.setPioReadCache(SERIAL_PORT_BASE + SERIAL_LSR_OFFSET, lsr ?? -1, this.lastSeq);
  }

  private onIo(kind: ExitKind, _vcpu: number, addr: number, size: number, value: number, seq: number): number | void {
    this.lastSeq = seq;
    try {
      switch (kind) {
        case ExitKind.PioWrite:
          this.exits.pioWrites++;
          this.pio.write(addr, size, value);
          if (addr >= SERIAL_PORT_BASE && addr < SERIAL_PORT_BASE + SERIAL_PORT_LEN) this.refreshLsrCache();
          return;
        case ExitKind.PioRead: {
          this.exits.pioReads++;
          const v = this.pio.read(addr, size);
          if (addr >= SERIAL_PORT_BASE && addr < SERIAL_PORT_BASE + SERIAL_PORT_LEN) this.refreshLsrCache();
          return v;
        }
        case ExitKind.MmioWrite:
          this.exits.mmioWrites++;
          this.mmio.write(addr, size, value);
          return;
        case ExitKind.MmioRead:
          this.exits.mmioReads++;
          return this.mmio.read(addr, size);
      }
    } catch (e) {
      // A device bug must not take the host down; it ends this VM with the reason.
      this.finish({ reason: 'error', message: `device error at 0x${addr.toString(16)}: ${(e as Error).message}` });
      return kind === ExitKind.PioRead || kind === ExitKind.MmioRead ? 0xffffffff : undefined;
    }
  }

  private onEvent(vcpuId: number, info: VcpuEventInfo): VcpuVerdict {
    this.exits.events++;
    const vcpu = this.vcpus[vcpuId];
    if (info.reason === KVM_EXIT_SHUTDOWN) {
      this.finish({ reason: 'shutdown', vcpu: vcpuId, rip: safeRip(vcpu) });
      return VcpuVerdict.Stop;
    }
    if (info.reason === KVM_EXIT_INTERNAL_ERROR && info.suberror === KVM_INTERNAL_ERROR_EMULATION) {
      const bytes = info.insnBytes;
      if (this.quirks.emulatedKvm && bytes && vcpu) {
        const fix = cpu.fixEmulationFailure(bytes);
        if (fix) {
          try {
            const regs = vcpu.getRegs();
            regs.rip += BigInt(fix.length);
            vcpu.setRegs(regs);
            if (fix.injectVector !== undefined) vcpu.injectException(fix.injectVector);
            return VcpuVerdict.Resume;
          } catch (e) {
            this.finish({ reason: 'error', vcpu: vcpuId, message: `applying the emulation workaround failed: ${(e as Error).message}` });
            return VcpuVerdict.Stop;
          }
        }
      }
      this.finish({
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
    this.finish({ reason: 'error', vcpu: vcpuId, kvmExitReason: info.reason, rip: safeRip(vcpu), message: what });
    return VcpuVerdict.Stop;
  }

  private onVcpuStopped(): void {
    this.runningVcpus--;
    // A vCPU that ended without a reason (e.g. a fatal KVM_RUN error already reported) ends the VM.
    if (this.runningVcpus <= 0) this.finish({ reason: 'error', message: 'all vCPUs stopped' });
  }

  /** Records the first reason the machine ends for and schedules the teardown. */
  finish(info: ExitInfo): void {
    if (!this.exit) this.exit = info;
    if (this.teardownScheduled) return;
    this.teardownScheduled = true;
    // Not from inside an exit handler: the teardown joins the vCPU threads.
    setImmediate(() => {
      void this.teardown().then(() => this.events.exited(this.exit!));
    });
  }

  /** Stops the machine from the host side; resolves when everything is released. */
  async stop(): Promise<ExitInfo> {
    this.finish({ reason: 'stopped' });
    await new Promise<void>((resolve) => {
      const check = () => (this.tornDown ? resolve() : setImmediate(check));
      check();
    });
    return this.exit!;
  }

  private async teardown(): Promise<void> {
    if (this.tornDown) return;
    try {
      this.vm.stopVcpus();
      // Handle what the vCPUs posted before they stopped (the last serial bytes among them).
      this.vm.flushExits();
    } catch { /* the VM is going away either way */ }
    this.tornDown = true;
    this.serial.flush();
    for (const w of this.watches.splice(0)) w.close();
    for (const slot of this.drives.values()) await slot.device.close();
    try { this.vm.close(); } catch { /* nothing left to do */ }
    for (const fd of this.fds.splice(0)) {
      try { this.addon.closeFd(fd); } catch { /* already closed */ }
    }
    try { this.kvm.close(); } catch { /* nothing left to do */ }
  }

  /** Offers host input to the guest's UART; returns how many bytes fit. */
  offerSerialInput(bytes: Uint8Array): number {
    if (this.tornDown) return 0;
    const n = this.serial.enqueueInput(bytes);
    this.refreshLsrCache();
    return n;
  }

  /** Injects Ctrl+Alt+Del through the i8042. */
  sendCtrlAltDel(): void {
    if (!this.tornDown) this.i8042.sendCtrlAltDel();
  }

  /** Swaps a drive's backing file and/or rate limiter while the VM runs. */
  async updateDrive(id: string, update: { path?: string; rateLimiter?: DriveConfig['rateLimiter'] }): Promise<void> {
    const slot = this.drives.get(id);
    if (!slot) throw new VmError('START_FAILED', `no drive ${id}`);
    if (update.path !== undefined) {
      const backend = await FileBackend.open(update.path, slot.config.readOnly);
      await slot.device.updateBackend(backend);
      slot.config.path = update.path;
      slot.transport.configChanged();
    }
    // Updates the device's limiter in place, or gives it one.
    if (update.rateLimiter !== undefined) slot.device.updateRateLimiter(update.rateLimiter);
  }

  /** Counter snapshot. */
  metrics(state: string): VmMetrics {
    const drives: VmMetrics['drives'] = {};
    for (const [id, slot] of this.drives) {
      drives[id] = { ...slot.device.metrics(), ...prefixed("transport", { ...slot.transport.metrics() }) };
    }
    return {
      id: this.config.id,
      state,
      exits: { ...this.exits, unmapped: this.pio.unmappedAccesses + this.mmio.unmappedAccesses },
      serial: this.serial.metrics(),
      i8042: this.i8042.metrics(),
      drives,
    };
  }
}

function prefixed(prefix: string, m: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(m)) out[`${prefix}${k[0].toUpperCase()}${k.slice(1)}`] = v;
  return out;
}

function safeRip(vcpu: NativeVcpu | undefined): bigint | undefined {
  try {
    return vcpu?.getRegs().rip;
  } catch {
    return undefined;
  }
}
