/**
 * A running machine: the KVM VM, its memory, devices and vCPU threads, wired together.
 *
 * {@link startMachine} reads as the order things are built in: files, VM, memory, devices, boot
 * memory, vCPUs, exit dispatch, run. Teardown releases them in reverse, exactly once, whatever
 * failed. The `MicroVM` façade only sees the {@link MachineHandle} this returns: every call on it
 * is asynchronous, so that the same façade can later drive a machine in another process.
 *
 * This is the only module outside `lib/native` that holds native handles.
 * @module
 */
import { promises as fsp } from 'fs';
import { GuestMemory } from '../memory/guest-memory';
import { IoBus, type IrqLine } from '../bus';
import type { NativeAddon, NativeKvm, NativeVm, NativeVcpu } from '../native/types';
import * as boot from '../boot';
import * as cpu from '../cpu';
import { Serial, SERIAL_CACHE_TRANSPARENT_WRITE_MASK, SERIAL_LSR_OFFSET } from '../devices/serial';
import { I8042 } from '../devices/i8042';
import type { DeviceKind } from '../devices/contract';
import type { VirtioDevice } from '../virtio/device';
import { ConfigError } from '../config';
import { composeCmdline, orderedDrives, type VmConfig, type DeviceSpec } from './config';
import { VmError } from './errors';
import { DeviceManager } from './device-manager';
import { createVcpus } from './vcpu-setup';
import { ExitDispatcher, type ExitInfo } from './exit-dispatch';
import type { VmMetrics } from './metrics';
import { blockDeviceKind } from '../devices/block/config';
import type { BlockMetrics } from '../devices/block/device';
import { KindlingError } from '../errors';
import { NativeError } from '../native/errors';

export type { ExitInfo } from './exit-dispatch';

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

/** KVM capability numbers we require (linux/kvm.h). */
const REQUIRED_CAPS: [number, string][] = [
  [0, 'IRQCHIP'],
  [3, 'USER_MEMORY'],
  [32, 'IRQFD'],
  [33, 'PIT2'],
  [36, 'IOEVENTFD'],
  [136, 'IMMEDIATE_EXIT'],
];
/** KVM_GET_API_VERSION has answered 12 since Linux 2.6.22. */
const KVM_API_VERSION = 12;
/** KVM_PIT_SPEAKER_DUMMY: the PIT's speaker port is handled in the kernel and makes no exits. */
const KVM_PIT_SPEAKER_DUMMY = 1;
/** Where KVM puts the 3-page TSS and the identity-map page that VMX real mode needs (Firecracker's choice). */
const KVM_TSS_ADDRESS = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;

/** The kinds of virtio device the machine can build from a {@link DeviceSpec}, by kind. */
export type DeviceKindRegistry = ReadonlyMap<string, DeviceKind<any, any, any, any>>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Effects the machine reports to its owner. */
export interface MachineEvents {
  /** Guest UART output, in order. */
  serialOutput(bytes: Uint8Array): void;
  /** Guest made room for more UART input. */
  serialInputSpace(): void;
  /** The machine has ended and released everything. Called once. */
  exited(info: ExitInfo): void;
}

/**
 * The façade's view of a running machine. Every call is asynchronous and safe after the machine
 * ended (it then does nothing, or answers from the final state).
 */
export interface MachineHandle {
  /** The command line the guest was given. */
  readonly cmdline: string;
  /** Offers host input to the guest's UART; resolves with how many bytes fit. */
  serialInput(bytes: Uint8Array): Promise<number>;
  /** Presses Ctrl+Alt+Del on the guest's keyboard. */
  sendCtrlAltDel(): Promise<void>;
  /** Applies a validated runtime update to device `id` (see {@link DeviceKind.update}). */
  updateDevice(id: string, update: unknown): Promise<void>;
  /** Counters of the machine and every device. */
  metrics(): Promise<Omit<VmMetrics, 'id' | 'state'>>;
  /**
   * Parks every vCPU outside KVM_RUN (devices go on completing what the guest already asked for;
   * their interrupts are delivered on resume). Idempotent.
   */
  pause(): Promise<void>;
  /** Lets paused vCPUs run again. Idempotent. */
  resume(): Promise<void>;
  /** Stops the machine; resolves once everything is released, with how it ended. */
  stop(): Promise<ExitInfo>;
}

/** The device kinds every machine knows. */
export const BUILTIN_DEVICE_KINDS: DeviceKindRegistry = new Map([[blockDeviceKind.kind, blockDeviceKind]]);

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

/** What {@link startMachine} needs besides the configuration. */
export interface StartOptions {
  /** The native addon. */
  addon: NativeAddon;
  /** Where the machine reports output and its end. */
  events: MachineEvents;
  /** Device kinds for `config.devices` (default {@link BUILTIN_DEVICE_KINDS}). */
  kinds?: DeviceKindRegistry;
  /** User-supplied device instances, by the id of their `config.devices` entry (kind `'custom'`). */
  customDevices?: ReadonlyMap<string, VirtioDevice>;
}

/**
 * Creates the VM, loads the kernel and starts the vCPUs; resolves once they run.
 * @throws VmError KVM_UNAVAILABLE / KVM_UNSUPPORTED / START_FAILED, BootError for a bad image,
 *   ConfigError / a device's error when a device cannot be built
 */
export async function startMachine(config: VmConfig, opts: StartOptions): Promise<MachineHandle> {
  if (!config.kernel) throw new ConfigError('NO_KERNEL', 'call kernel() before start()');
  // Read files before creating anything, so a vanished file costs no KVM set-up.
  const kernelImage = await readInput(config.kernel.path, 'kernel');
  const initrd = config.kernel.initrd ? await readInput(config.kernel.initrd, 'initrd') : undefined;

  const { addon } = opts;
  let kvm: NativeKvm;
  try {
    kvm = addon.openKvm(config.kvmPath);
  } catch (e) {
    throw new VmError('KVM_UNAVAILABLE', `cannot open ${config.kvmPath}: ${(e as Error).message}`, e);
  }
  let vm: NativeVm | undefined;
  try {
    checkKvm(kvm);
    vm = createVm(kvm);
    const memory = allocateMemory(vm, config.memoryMib * 1024 * 1024);
    const machine = new Machine(config, addon, kvm, vm, memory, opts.events, opts.kinds ?? BUILTIN_DEVICE_KINDS);
    await machine.build(kernelImage, initrd, opts.customDevices ?? new Map());
    return machine;
  } catch (e) {
    // A machine that got far enough has released everything itself (Machine.build); these are idempotent.
    try { vm?.close(); } catch { /* already failing */ }
    try { kvm.close(); } catch { /* already failing */ }
    // Typed errors of our own modules say what was wrong; a failed ioctl or anything unexpected
    // becomes START_FAILED with the original as its cause.
    if (e instanceof KindlingError && !(e instanceof NativeError)) throw e;
    throw new VmError('START_FAILED', `starting the VM failed: ${(e as Error).message}`, e);
  }
}

async function readInput(path: string, what: string): Promise<Buffer> {
  try {
    return await fsp.readFile(path);
  } catch (e) {
    throw new ConfigError(what === 'kernel' ? 'KERNEL_NOT_FOUND' : 'INITRD_NOT_FOUND', `cannot read the ${what} ${path}: ${(e as Error).message}`);
  }
}

function checkKvm(kvm: NativeKvm): void {
  const version = kvm.apiVersion();
  if (version !== KVM_API_VERSION) throw new VmError('KVM_UNSUPPORTED', `KVM API version ${version}, expected ${KVM_API_VERSION}`);
  for (const [cap, name] of REQUIRED_CAPS) {
    if (kvm.checkExtension(cap) <= 0) throw new VmError('KVM_UNSUPPORTED', `KVM lacks the required capability KVM_CAP_${name}`);
  }
}

function createVm(kvm: NativeKvm): NativeVm {
  const vm = kvm.createVm();
  vm.setTssAddr(KVM_TSS_ADDRESS);
  vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDRESS);
  vm.createIrqchip();
  vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
  return vm;
}

/** Guest RAM: one anonymous mapping, one KVM memory slot per region of the layout. */
function allocateMemory(vm: NativeVm, memSize: number): GuestMemory {
  const layout = boot.memoryRegions(memSize);
  const buffer = vm.allocateMemory(memSize);
  let offset = 0;
  const specs = layout.map((r, slot) => {
    vm.setUserMemoryRegion(slot, r.guestAddr, buffer, offset, r.size);
    const spec = { guestAddr: r.guestAddr, buffer, byteOffset: offset, size: r.size };
    offset += r.size;
    return spec;
  });
  return new GuestMemory(specs);
}

/** See the module comment. Create with {@link startMachine}. */
class Machine implements MachineHandle {
  private readonly pio = new IoBus();
  private readonly mmio = new IoBus();
  private readonly devices: DeviceManager;
  private readonly serial: Serial;
  private readonly i8042: I8042;
  private readonly dispatch: ExitDispatcher;
  private vcpus: NativeVcpu[] = [];
  private runningVcpus = 0;
  private exit: ExitInfo | undefined;
  private ended = false;
  private paused = false;
  private teardownDone: Promise<ExitInfo> | undefined;
  private closeErrors = 0;
  private readonly quirks: cpu.HostQuirks;
  cmdline = '';

  constructor(
    private readonly config: VmConfig,
    private readonly addon: NativeAddon,
    private readonly kvm: NativeKvm,
    private readonly vm: NativeVm,
    private readonly memory: GuestMemory,
    private readonly events: MachineEvents,
    private readonly kinds: DeviceKindRegistry,
  ) {
    this.quirks = config.hostQuirks === 'auto' ? cpu.detectHostQuirks() : { emulatedKvm: config.hostQuirks === 'emulated-kvm' };
    this.devices = new DeviceManager({ addon, vm, memory, pio: this.pio, mmio: this.mmio, beforeNotify: () => this.flushExits() });
    this.serial = new Serial({
      irq: new KvmIrqLine(vm, SERIAL_IRQ),
      onOutput: (bytes) => events.serialOutput(bytes),
      onInputSpace: () => events.serialInputSpace(),
      // The UART keeps the native LSR read cache right: it says when its LSR may have changed.
      onLsrChange: () => this.publishLsr(),
    });
    this.i8042 = new I8042({
      irq: new KvmIrqLine(vm, I8042_IRQ),
      onReset: () => this.finish({ reason: 'reset' }),
    });
    this.dispatch = new ExitDispatcher({
      pio: this.pio,
      mmio: this.mmio,
      vcpus: this.vcpus,
      quirks: this.quirks,
      finish: (info) => void this.finish(info),
    });
  }

  /** Devices, guest memory contents, vCPUs, then run. Releases everything if any step fails. */
  async build(kernelImage: Buffer, initrd: Buffer | undefined, custom: ReadonlyMap<string, VirtioDevice>): Promise<void> {
    const { config, vm, memory } = this;
    try {

      // Legacy devices; LSR polls of the UART are answered by the vCPU threads from a cache.
      this.devices.attachPio(this.serial, SERIAL_PORT_BASE, SERIAL_PORT_LEN);
      this.devices.attachPio(this.i8042, I8042_PORT_BASE, I8042_PORT_LEN);
      vm.definePioReadCache(SERIAL_PORT_BASE, SERIAL_PORT_LEN, SERIAL_CACHE_TRANSPARENT_WRITE_MASK);

      // virtio devices, in announcement order: the root drive first (/dev/vda), then the other
      // drives, then every other device in builder order.
      const drives: DeviceSpec[] = orderedDrives(config.drives).map((d) => ({ kind: blockDeviceKind.kind, id: d.id, config: d }));
      for (const spec of [...drives, ...config.devices]) await this.addDevice(spec, custom);

      // Guest memory contents.
      const kernel = boot.loadKernel(memory, kernelImage);
      this.cmdline = composeCmdline(config.kernel!.cmdline, {
        root: config.drives.find((d) => d.root),
        announcements: this.devices.announcements(),
        extra: this.quirks.emulatedKvm ? cpu.quirkCmdlineArgs() : [],
      });
      boot.setupBootMemory(memory, {
        kernel,
        cmdline: this.cmdline,
        initrd,
        vcpuCount: config.vcpus,
        memSize: config.memoryMib * 1024 * 1024,
      });

      this.vcpus.push(...createVcpus(this.kvm, vm, { count: config.vcpus, entry: kernel.entry, quirks: this.quirks }));
      vm.setExitHandlers({
        io: (kind, _vcpu, addr, size, value, seq) => this.dispatch.io(kind, addr, size, value, seq),
        event: (vcpu, info) => this.dispatch.event(vcpu, info),
        vcpuStopped: () => this.onVcpuStopped(),
      });
      this.publishLsr();
      this.runningVcpus = this.vcpus.length;
      for (const v of this.vcpus) v.start();
    } catch (e) {
      this.ended = true;
      await this.release();
      throw e;
    }
  }

  private async addDevice(spec: DeviceSpec, custom: ReadonlyMap<string, VirtioDevice>): Promise<void> {
    const instance = custom.get(spec.id);
    let device: VirtioDevice;
    if (spec.kind === 'custom' && instance) {
      device = instance;
    } else {
      const kind = this.kinds.get(spec.kind);
      if (!kind) throw new ConfigError('INVALID_DEVICE', `no device kind ${spec.kind} is registered (device ${spec.id})`);
      device = await kind.create(spec.config, this.host());
    }
    try {
      this.devices.attachVirtio(device);
    } catch (e) {
      await Promise.resolve().then(() => device.close()).catch(() => undefined);
      throw e;
    }
  }

  /** Host capabilities for device factories; grows as devices need native services. */
  private host(): unknown {
    return { memory: this.memory };
  }

  private flushExits(): void {
    if (this.ended) return;
    try {
      this.vm.flushExits();
    } catch (e) {
      this.finish({ reason: 'error', message: `handling vCPU exits failed: ${(e as Error).message}` });
    }
  }

  /** Tells the native layer the UART's current LSR, so LSR polls need no JavaScript. */
  private publishLsr(): void {
    if (this.ended) return;
    const lsr = this.serial.cacheableLsr();
    this.vm.setPioReadCache(SERIAL_PORT_BASE + SERIAL_LSR_OFFSET, lsr ?? -1, this.dispatch.lastSeq);
  }

  private onVcpuStopped(): void {
    this.runningVcpus--;
    // A vCPU that ended without a reason (e.g. a fatal KVM_RUN error already reported) ends the VM.
    if (this.runningVcpus <= 0) this.finish({ reason: 'error', message: 'all vCPUs stopped' });
  }

  /**
   * Records the first reason the machine ends for and starts the teardown, once. Never from
   * inside an exit handler directly: the teardown joins the vCPU threads, so it starts on the
   * next turn of the event loop.
   */
  private finish(info: ExitInfo): Promise<ExitInfo> {
    if (!this.exit) this.exit = info;
    this.teardownDone ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.teardown());
    return this.teardownDone;
  }

  private async teardown(): Promise<ExitInfo> {
    this.ended = true;
    try {
      this.vm.stopVcpus();
      // Handle what the vCPUs posted before they stopped (the last serial bytes among them).
      this.vm.flushExits();
    } catch { /* the VM is going away either way */ }
    const closeErrors = await this.release();
    const info: ExitInfo = { ...this.exit!, ...(closeErrors.length > 0 ? { closeErrors } : {}) };
    this.exit = info;
    try {
      this.events.exited(info);
    } catch { /* the owner's callback must not undo the teardown */ }
    return info;
  }

  /** Closes every device, then the native handles (always, whatever the devices did). */
  private async release(): Promise<{ id: string; error: string }[]> {
    try {
      this.serial.flush();
      const failed = await this.devices.closeAll();
      this.closeErrors = failed.length;
      return failed;
    } finally {
      try { this.vm.close(); } catch { /* nothing left to do */ }
      try { this.kvm.close(); } catch { /* nothing left to do */ }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // MachineHandle

  async stop(): Promise<ExitInfo> {
    return this.finish({ reason: 'stopped' });
  }

  async pause(): Promise<void> {
    if (this.ended || this.paused) return;
    this.paused = true;
    this.vm.pauseVcpus();
    // A vCPU that was waiting for an answer (an MMIO or port read) counts as parked; answer it
    // now so that it completes its instruction and parks properly.
    this.flushExits();
  }

  async resume(): Promise<void> {
    if (this.ended || !this.paused) return;
    this.paused = false;
    this.vm.resumeVcpus();
  }

  async serialInput(bytes: Uint8Array): Promise<number> {
    if (this.ended) return 0;
    return this.serial.enqueueInput(bytes);
  }

  async sendCtrlAltDel(): Promise<void> {
    if (!this.ended) this.i8042.sendCtrlAltDel();
  }

  async updateDevice(id: string, update: unknown): Promise<void> {
    const drive = this.config.drives.find((d) => d.id === id);
    const spec = drive ? { kind: blockDeviceKind.kind, config: drive } : this.config.devices.find((d) => d.id === id);
    const device = this.devices.get(id);
    if (!spec || !device) throw new ConfigError('DEVICE_NOT_FOUND', `no device ${id}`);
    if (this.ended) throw new ConfigError('NOT_RUNNING', `the VM has ended; device ${id} cannot be updated`);
    const kind = this.kinds.get(spec.kind);
    if (!kind?.update) throw new ConfigError('INVALID_DEVICE', `device ${id} (${spec.kind}) takes no updates`);
    const result = await kind.update(device, spec.config, update, this.host());
    if (result && result.configChanged && !this.ended) this.devices.configChanged(id);
  }

  async metrics(): Promise<Omit<VmMetrics, 'id' | 'state'>> {
    const devices = this.devices.metrics();
    const drives: VmMetrics['drives'] = {};
    for (const d of this.config.drives) {
      const e = devices[d.id];
      if (e && e.transport) drives[d.id] = { ...(e.metrics as BlockMetrics), transport: e.transport };
    }
    return {
      exits: { ...this.dispatch.counters, unmapped: this.pio.unmappedAccesses + this.mmio.unmappedAccesses },
      serial: this.serial.metrics(),
      i8042: this.i8042.metrics(),
      drives,
      devices,
      closeErrors: this.closeErrors,
    };
  }
}
