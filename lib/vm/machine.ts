/**
 * A running machine: the KVM VM, its memory, devices and vCPU threads, wired together.
 *
 * {@link startMachine} reads as the order things are built in: the image plan (kernel headers,
 * initrd size) and the boot structures, then the VM with its memory, kernel, initrd, boot
 * structures and set-up vCPUs in one call the addon performs on the thread pool (native-setup.ts),
 * devices (where the command line announced them), exit dispatch, run.
 * {@link restoreMachine} builds the same machine from a snapshot: VM and bare vCPUs (thread pool),
 * memory from the memory file, the same devices in the same order with their saved state, vCPU
 * and VM state from the state file, run. Teardown releases everything in reverse, exactly once,
 * whatever failed; waiting for the vCPU threads, unmapping guest memory and closing the VM happen
 * on the thread pool. The `MicroVM` façade only sees the {@link MachineHandle} these
 * return: every call on it is asynchronous, so that the same façade can later drive a machine in
 * another process.
 *
 * This is the only module outside `lib/native` that holds native handles.
 * @module
 */
import { GuestMemory, type RegionSpec } from '../memory/guest-memory';
import { IoBus, type IrqLine } from '../bus';
import type { NativeAddon, NativeKvm, NativeVm, NativeVcpu, VmSetup, VmSetupResult } from '../native/types';
import { vcpuSeccompFilter } from '../seccomp';
import * as boot from '../boot';
import * as cpu from '../cpu';
import { Serial, SERIAL_CACHE_TRANSPARENT_WRITE_MASK, SERIAL_LSR_OFFSET } from '../devices/serial';
import { I8042 } from '../devices/i8042';
import { BootTimer, BOOT_TIMER_MMIO_BASE, BOOT_TIMER_WINDOW_LEN, type BootDoneInfo } from '../devices/boot-timer';
import type { DeviceKind, StateObject } from '../devices/contract';
import type { VirtioDevice } from '../virtio/device';
import { ConfigError } from '../config';
import {
  DirtyTrackingGuestMemory, SnapshotError, checkHostCompatibility, hostProfile, restoreMemory, restoreVcpus,
  restoreVmState, takeSnapshot, type LoadedSnapshot, type MemoryRegionRecord, type SnapshotInfo, type SnapshotRef,
} from '../snapshot';
import { composeCmdline, orderedDrives, type VmConfig, type DeviceSpec } from './config';
import { VmError } from './errors';
import { DeviceManager, announcement, virtioPlacement } from './device-manager';
import { bootVcpuSetups, supportedCpuid } from './vcpu-setup';
import { bootVmSetup, closeImages, openImages, planImages, ramLayout, restoreVmSetup } from './native-setup';
import { startTurn } from './start-turns';
import { ExitDispatcher, type ExitInfo } from './exit-dispatch';
import type { VmMetrics } from './metrics';
import { blockDeviceKind } from '../devices/block/config';
import { netDeviceKind } from '../devices/net/kind';
import { vsockDeviceKind } from '../devices/vsock/kind';
import { entropyDeviceKind } from '../devices/rng/kind';
import { balloonDeviceKind } from '../devices/balloon/kind';
import type { FrameSwitch } from '../devices/net/config';
import type { NetHost } from '../devices/net/host';
import type { NetMetrics } from '../devices/net/device';
import type { MmdsStore } from '../devices/net/mmds/store';
import type { VsockHost } from '../devices/vsock/host';
import type { EntropyHost } from '../devices/rng/host';
import type { BalloonHost } from '../devices/balloon/host';
import { NativeNetHost } from './net-host';
import { createVsockHost } from './vsock-host';
import { createEntropyHost } from './rng-host';
import { createBalloonHost } from './balloon-host';
import type { Duplex } from 'stream';
import type { BlockMetrics } from '../devices/block/device';
import { KindlingError } from '../errors';
import { NativeError } from '../native/errors';
import { localResources, type HostFiles, type HostResources } from './host-resources';

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

/** The file glibc's malloc reads once when a thread arena first shrinks (see lib/seccomp/vcpu.ts). */
const GLIBC_OVERCOMMIT_PATH = '/proc/sys/vm/overcommit_memory';

/** The POST diagnostic port, used as an I/O delay (nothing decodes it; writes are dropped natively). */
export const POST_PORT = 0x80;

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
/** COM1's transmit holding register (THR, offset 0): its byte writes are batched natively. */
const SERIAL_THR_PORT = SERIAL_PORT_BASE;
/** Bytes per transmit batch record. */
const SERIAL_TX_BATCH_BYTES = 4096;
/**
 * How long guest output alone may wait before JavaScript takes it: one handler call per this
 * many milliseconds of steady output instead of one per byte. Any other exit (a read, a reset,
 * a register write) hands it over at once, in order; and while the guest has the THRE interrupt
 * enabled (interrupt-driven transmit) nothing waits (see Serial's onTransmitInterruptChange).
 */
const SERIAL_TX_MAX_DELAY_MS = 2;
/** Version of the `machine` record a snapshot keeps (the configuration the machine is rebuilt from). */
const MACHINE_RECORD_VERSION = 1;

/** The kinds of virtio device the machine can build from a {@link DeviceSpec}, by kind. */
export type DeviceKindRegistry = ReadonlyMap<string, DeviceKind<any, any, any, any>>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Effects the machine reports to its owner. */
export interface MachineEvents {
  /** Guest UART output, in order. */
  serialOutput(bytes: Uint8Array): void;
  /** Guest made room for more UART input. */
  serialInputSpace(): void;
  /** The guest signalled boot completion through the boot timer. */
  bootDone?(info: BootDoneInfo): void;
  /** The machine has ended and released everything. Called once. */
  exited(info: ExitInfo): void;
}

/** What `snapshot()` writes, and the machine it came from. */
export interface MachineSnapshotOptions {
  /** `'full'`, or `'diff'` (only pages written since the last snapshot; needs dirty-page tracking). */
  type: 'full' | 'diff';
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
  /** What device `id`'s kind reports beyond metrics (see {@link DeviceKind.stats}). */
  deviceStats(id: string): Promise<unknown>;
  /** Counters of the machine and every device. */
  metrics(): Promise<Omit<VmMetrics, 'id' | 'state'>>;
  /**
   * Parks every vCPU outside KVM_RUN (devices go on completing what the guest already asked for;
   * their interrupts are delivered on resume). Idempotent.
   */
  pause(): Promise<void>;
  /** Lets paused vCPUs run again. Idempotent. */
  resume(): Promise<void>;
  /**
   * Writes a snapshot of the paused machine to `dir`: waits for device I/O in flight, then saves
   * memory, vCPUs, VM and every device.
   */
  snapshot(dir: string, opts: MachineSnapshotOptions): Promise<SnapshotInfo>;
  /** Stops the machine; resolves once everything is released, with how it ended. */
  stop(): Promise<ExitInfo>;
}

/** The device kinds every machine knows. */
export const BUILTIN_DEVICE_KINDS: DeviceKindRegistry = new Map<string, DeviceKind<any, any, any, any>>([ // eslint-disable-line @typescript-eslint/no-explicit-any
  [blockDeviceKind.kind, blockDeviceKind],
  [netDeviceKind.kind, netDeviceKind],
  [vsockDeviceKind.kind, vsockDeviceKind],
  [entropyDeviceKind.kind, entropyDeviceKind],
  [balloonDeviceKind.kind, balloonDeviceKind],
]);

/**
 * Host capabilities the device kinds draw on (each kind's `create(config, host)` declares the
 * part it needs). Devices never touch the addon; these adapters do.
 */
interface MachineHost {
  memory: GuestMemory;
  net: NetHost;
  vsock: VsockHost;
  entropy: EntropyHost;
  balloon: BalloonHost;
  mmds?: MmdsStore;
  links: ReadonlyMap<string, FrameSwitch | Duplex>;
  /** How a device opens a host file its configuration names (see {@link HostResources}). */
  files: HostFiles;
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

/** What {@link startMachine} and {@link restoreMachine} need besides the configuration. */
export interface StartOptions {
  /** The native addon. */
  addon: NativeAddon;
  /** Where the machine reports output and its end. */
  events: MachineEvents;
  /** Device kinds for `config.devices` (default {@link BUILTIN_DEVICE_KINDS}). */
  kinds?: DeviceKindRegistry;
  /**
   * Device instances built before `start()`, by the id of their `config.devices` entry: the
   * user's own devices (kind `'custom'`) and built-in ones the builder creates early (vsock, so
   * listeners can be registered before start).
   */
  customDevices?: ReadonlyMap<string, VirtioDevice>;
  /** The VM's metadata store, when it has one (`vm.mmds()`). */
  mmds?: MmdsStore;
  /** Link objects of NICs on in-process links, by NIC id. */
  links?: ReadonlyMap<string, FrameSwitch | Duplex>;
  /**
   * How the machine reaches the host resources its configuration names: the KVM device, kernel,
   * initrd and device files (default {@link localResources}: opened here by path). A jailed child
   * passes descriptors its parent opened instead; nothing else in the machine differs.
   */
  resources?: HostResources;
}

/** What a snapshot's `machine` record holds: enough to rebuild the machine around the saved state. */
interface MachineRecord {
  version: number;
  config: VmConfig;
  cmdline: string;
}

/**
 * Creates the VM, loads the kernel and starts the vCPUs; resolves once they run.
 * @throws VmError KVM_UNAVAILABLE / KVM_UNSUPPORTED / START_FAILED, BootError for a bad image,
 *   ConfigError / a device's error when a device cannot be built
 */
export async function startMachine(config: VmConfig, opts: StartOptions): Promise<MachineHandle> {
  if (!config.kernel) throw new ConfigError('NO_KERNEL', 'call kernel() before start()');
  // Many starts at once take one loop iteration each for their JavaScript part (start-turns.ts).
  await startTurn();
  const resources = opts.resources ?? localResources(opts.addon);
  const memSize = config.memoryMib * 1024 * 1024;
  // Plan the image loads before creating anything, so a vanished file or a bad image costs no KVM
  // set-up. Only the kernel's headers are read here; the addon reads the images into guest memory
  // from the descriptors opened here (in a jailed child, the ones its parent passed).
  const files = openImages(resources, config.kernel);
  try {
    const images = planImages(files, memSize);
    const ram = ramLayout(memSize);
    const quirks = hostQuirksOf(config);
    // The command line announces the virtio devices where the device manager will place them (it
    // checks that it did); the boot structures are built here and written by the addon with the
    // rest, so that no page of fresh guest memory is first touched on this thread.
    const announcements = plannedAnnouncements(config);
    const cmdline = composeCmdline(config.kernel.cmdline, {
      root: config.drives.find((d) => d.root),
      announcements,
      extra: quirks.emulatedKvm ? cpu.quirkCmdlineArgs() : [],
    });
    const image = boot.bootMemoryImage({
      kernel: images.kernel.plan.kernel, cmdline, initrdPlacement: images.initrd?.placement, vcpuCount: config.vcpus, memSize,
    });
    const vcpus = (kvm: NativeKvm) => bootVcpuSetups({
      count: config.vcpus,
      entry: images.kernel.plan.kernel.entry,
      supportedCpuid: supportedCpuid(kvm, config.kvmPath),
      quirks,
    });
    return await withVm(config, resources, (kvm) => bootVmSetup(ram, images, image.writes, vcpus(kvm)), async (kvm, made) => {
      const memory = ram.regions.map((r) => ({ guestAddr: r.guestAddr, size: r.size, slot: r.slot, fileOffset: r.fileOffset, buffer: made.memory[r.buffer], byteOffset: r.byteOffset }));
      const machine = new Machine(config, opts, kvm, made.vm, memory, { slotsRegistered: true, vcpus: made.vcpus });
      await machine.build({ cmdline: image.setup.cmdline, announcements });
      return machine;
    });
  } finally {
    closeImages(files);
  }
}

/**
 * Rebuilds a machine from a loaded snapshot: `config` is the snapshot's configuration with the
 * caller's overrides (host resources: drive paths, ids). The vCPUs start paused when `paused`.
 * @throws SnapshotError for a snapshot this host cannot run or whose state does not fit;
 *   VmError / ConfigError / device errors as {@link startMachine}
 */
export async function restoreMachine(
  snap: LoadedSnapshot, config: VmConfig, opts: StartOptions & { memory: 'map' | 'copy'; paused: boolean },
): Promise<MachineHandle> {
  return withVm(config, opts.resources ?? localResources(opts.addon), () => restoreVmSetup(snap.state.vcpuCount), async (kvm, made) => {
    // restoreMemory has registered the slots already.
    const buffer = await restoreMemory(made.vm, snap, opts.memory);
    const memory = snap.state.memory.regions.map((r) => ({ ...r, buffer, byteOffset: r.fileOffset }));
    const machine = new Machine(config, opts, kvm, made.vm, memory, { slotsRegistered: true, vcpus: made.vcpus });
    await machine.build({ snapshot: snap, paused: opts.paused });
    return machine;
  });
}

/** A machine's configuration as a snapshot saved it (validated as it is read back). */
export function machineConfigOf(snap: LoadedSnapshot): { config: VmConfig; cmdline: string } {
  const m = snap.state.machine as unknown as Partial<MachineRecord>;
  if (m === null || typeof m !== 'object' || m.version !== MACHINE_RECORD_VERSION || typeof m.config !== 'object' || m.config === null) {
    throw new SnapshotError('BAD_STATE', `the snapshot's machine record is not version ${MACHINE_RECORD_VERSION} of Kindling's`, {
      field: 'machine.version', expected: String(MACHINE_RECORD_VERSION), actual: String(m?.version),
    });
  }
  return { config: m.config, cmdline: typeof m.cmdline === 'string' ? m.cmdline : '' };
}

/**
 * Opens KVM, checks it, has the addon create and set up the VM as `setup` describes (on the
 * thread pool) and runs `build`; releases everything if it fails.
 */
async function withVm(
  config: VmConfig,
  resources: HostResources,
  setup: (kvm: NativeKvm) => VmSetup,
  build: (kvm: NativeKvm, made: VmSetupResult) => Promise<MachineHandle>,
): Promise<MachineHandle> {
  let kvm: NativeKvm;
  try {
    kvm = resources.openKvm(config.kvmPath);
  } catch (e) {
    throw new VmError('KVM_UNAVAILABLE', `cannot open ${config.kvmPath}: ${(e as Error).message}`, e);
  }
  let vm: NativeVm | undefined;
  try {
    checkKvm(kvm);
    const made = await kvm.createVmAsync(setup(kvm));
    vm = made.vm;
    return await build(kvm, made);
  } catch (e) {
    // A machine that got far enough has released everything itself (Machine.build); these are idempotent.
    try { await vm?.closeAsync(); } catch { /* already failing */ }
    try { kvm.close(); } catch { /* already failing */ }
    // Typed errors of our own modules say what was wrong; a failed ioctl or anything unexpected
    // becomes START_FAILED with the original as its cause.
    if (e instanceof KindlingError && !(e instanceof NativeError)) throw e;
    throw new VmError('START_FAILED', `starting the VM failed: ${(e as Error).message}`, e);
  }
}

/**
 * The `virtio_mmio.device=` arguments of `config`'s virtio devices, in the order the machine
 * attaches them (the drives, root first, then the other devices): where the device manager places
 * the `i`-th one.
 */
function plannedAnnouncements(config: VmConfig): string[] {
  const count = config.drives.length + config.devices.length;
  return Array.from({ length: count }, (_, i) => announcement(virtioPlacement(i, config.bootTimer)));
}

/** The host workarounds in force for `config`. */
function hostQuirksOf(config: VmConfig): cpu.HostQuirks {
  return config.hostQuirks === 'auto' ? cpu.detectHostQuirks() : { emulatedKvm: config.hostQuirks === 'emulated-kvm' };
}

function checkKvm(kvm: NativeKvm): void {
  const version = kvm.apiVersion();
  if (version !== KVM_API_VERSION) throw new VmError('KVM_UNSUPPORTED', `KVM API version ${version}, expected ${KVM_API_VERSION}`);
  for (const [cap, name] of REQUIRED_CAPS) {
    if (kvm.checkExtension(cap) <= 0) throw new VmError('KVM_UNSUPPORTED', `KVM lacks the required capability KVM_CAP_${name}`);
  }
}

/**
 * One region of guest RAM as the machine holds it: its KVM slot, the buffer and offset that back
 * it, and where it goes in a snapshot's memory file.
 */
interface RamRegion extends MemoryRegionRecord {
  /** The mapping behind it (from allocateMemory or mapMemoryFile). */
  buffer: ArrayBuffer;
  /** Where the region starts in `buffer`. */
  byteOffset: number;
}

/** How {@link Machine.build} fills the machine: from a kernel, or from a snapshot. */
type BuildSource =
  | { cmdline: string; announcements: readonly string[] }
  | { snapshot: LoadedSnapshot; paused: boolean };

/** See the module comment. Create with {@link startMachine} or {@link restoreMachine}. */
class Machine implements MachineHandle {
  private readonly pio = new IoBus();
  private readonly mmio = new IoBus();
  private readonly memory: GuestMemory;
  private readonly devices: DeviceManager;
  private readonly serial: Serial;
  private readonly i8042: I8042;
  private readonly bootTimer: BootTimer | undefined;
  private readonly dispatch: ExitDispatcher;
  private readonly quirks: cpu.HostQuirks;
  private readonly kinds: DeviceKindRegistry;
  private hostServices: MachineHost | undefined;
  private readonly events: MachineEvents;
  private readonly resources: HostResources;
  private vcpus: NativeVcpu[] = [];
  private runningVcpus = 0;
  private exit: ExitInfo | undefined;
  private ended = false;
  private paused = false;
  private teardownDone: Promise<ExitInfo> | undefined;
  private closeErrors = 0;
  /** The snapshot guest memory last matched (a diff's base). */
  private parent: SnapshotRef | undefined;
  cmdline = '';

  constructor(
    private readonly config: VmConfig,
    private readonly opts: StartOptions,
    private readonly kvm: NativeKvm,
    private readonly vm: NativeVm,
    private readonly regions: readonly RamRegion[],
    placed: { slotsRegistered?: boolean; vcpus?: readonly NativeVcpu[] } = {},
  ) {
    const { addon, events } = opts;
    this.events = events;
    this.resources = opts.resources ?? localResources(addon);
    this.kinds = opts.kinds ?? BUILTIN_DEVICE_KINDS;
    this.quirks = hostQuirksOf(config);
    if (placed.vcpus) this.vcpus.push(...placed.vcpus);
    if (!placed.slotsRegistered) for (const r of regions) vm.setUserMemoryRegion(r.slot, r.guestAddr, r.buffer, r.byteOffset, r.size);
    const specs: RegionSpec[] = regions.map((r) => ({ guestAddr: r.guestAddr, buffer: r.buffer, byteOffset: r.byteOffset, size: r.size }));
    // Diff snapshots need the pages the host writes too (KVM's dirty log sees only the guest's).
    this.memory = config.trackDirtyPages ? new DirtyTrackingGuestMemory(specs) : new GuestMemory(specs);
    if (config.trackDirtyPages) for (const r of regions) vm.setDirtyLogging(r.slot, true);
    this.devices = new DeviceManager({
      addon, vm, memory: this.memory, pio: this.pio, mmio: this.mmio, beforeNotify: () => this.flushExits(), bootTimer: config.bootTimer,
    });
    this.serial = new Serial({
      irq: new KvmIrqLine(vm, SERIAL_IRQ),
      onOutput: (bytes) => events.serialOutput(bytes),
      onInputSpace: () => events.serialInputSpace(),
      // The UART keeps the native LSR read cache right: it says when its LSR may have changed.
      onLsrChange: () => this.publishLsr(),
      // A driver waiting for the THRE interrupt must get its THR writes handled at once.
      onTransmitInterruptChange: (enabled) => {
        if (!this.ended) vm.setTransmitDeferral(!enabled);
      },
    });
    this.i8042 = new I8042({
      irq: new KvmIrqLine(vm, I8042_IRQ),
      onReset: () => void this.finish({ reason: 'reset' }),
    });
    this.bootTimer = config.bootTimer
      ? new BootTimer({ clock: () => process.hrtime.bigint(), onBootDone: (info) => events.bootDone?.(info) })
      : undefined;
    this.dispatch = new ExitDispatcher({
      pio: this.pio,
      mmio: this.mmio,
      vcpus: this.vcpus,
      quirks: this.quirks,
      finish: (info) => void this.finish(info),
    });
  }

  /** Devices, guest memory contents (or saved state), vCPUs, then run. Releases everything if any step fails. */
  async build(src: BuildSource): Promise<void> {
    const { config, vm } = this;
    // Each vCPU thread filters its own system calls from its first KVM_RUN on (lib/seccomp). The
    // threads made with the VM install their filters now, while the devices are built, and wait;
    // the JavaScript thread waits for none of it.
    const overcommitPathAddress = this.opts.addon.libcStringAddress(GLIBC_OVERCOMMIT_PATH);
    const prepared = Promise.all(this.vcpus.map((v) => v.prepareStart(config.seccomp === false ? undefined : vcpuSeccompFilter({ vcpuFd: v.fd, overcommitPathAddress }))));
    prepared.catch(() => undefined); // awaited below; a failure before then must not go unhandled
    try {
      await this.attachDevices();
      if ('snapshot' in src) {
        this.restoreState(src.snapshot);
        // A paused restore starts its threads parked: they wait for resume() before KVM_RUN.
        if (src.paused) {
          this.paused = true;
          vm.pauseVcpus();
        }
      } else {
        // Kernel, initrd and boot structures are in guest memory and the vCPUs are set up: the
        // addon did all of it with the VM (startMachine). The command line it wrote announced the
        // devices where startMachine expected them.
        const placed = this.devices.announcements();
        if (placed.length !== src.announcements.length || placed.some((a, i) => a !== src.announcements[i])) {
          throw new VmError('START_FAILED', `the devices were placed at ${placed.join(' ')}, the command line announced ${src.announcements.join(' ')}`);
        }
        this.cmdline = src.cmdline;
      }
      vm.setExitHandlers({
        io: (kind, _vcpu, addr, size, value, seq) => this.dispatch.io(kind, addr, size, value, seq),
        pioWriteBatch: (_vcpu, port, bytes, firstSeq) => this.dispatch.pioWriteBatch(port, bytes, firstSeq),
        event: (vcpu, info) => this.dispatch.event(vcpu, info),
        vcpuStopped: () => this.onVcpuStopped(),
      });
      this.publishLsr();
      await prepared;
      this.runningVcpus = this.vcpus.length;
      for (const v of this.vcpus) v.start();
    } catch (e) {
      this.ended = true;
      await this.release();
      throw e;
    }
  }

  /**
   * Every device, in the one order both boot and restore use: UART, i8042, the boot timer, the
   * root drive, the other drives, then the other virtio devices in builder order.
   */
  private async attachDevices(): Promise<void> {
    this.devices.attachPio(this.serial, SERIAL_PORT_BASE, SERIAL_PORT_LEN);
    this.devices.attachPio(this.i8042, I8042_PORT_BASE, I8042_PORT_LEN);
    // LSR polls of the UART are answered by the vCPU threads from a cache, and its output is
    // collected natively into batches.
    this.vm.definePioReadCache(SERIAL_PORT_BASE, SERIAL_PORT_LEN, SERIAL_CACHE_TRANSPARENT_WRITE_MASK);
    this.vm.defineTransmitBuffer(SERIAL_THR_PORT, SERIAL_TX_BATCH_BYTES, SERIAL_TX_MAX_DELAY_MS);
    // The POST/delay port: Linux's outb_p and guests' delay loops write it all the time.
    this.vm.definePioSink(POST_PORT, 1);
    if (this.bootTimer) this.devices.attachMmio(this.bootTimer, BOOT_TIMER_MMIO_BASE, BOOT_TIMER_WINDOW_LEN);
    const drives: DeviceSpec[] = orderedDrives(this.config.drives).map((d) => ({ kind: blockDeviceKind.kind, id: d.id, config: d }));
    for (const spec of [...drives, ...this.config.devices]) await this.addDevice(spec);
    // The metadata store is on no bus, but its data is state and has counters.
    if (this.opts.mmds) this.devices.attach(this.opts.mmds);
  }

  private async addDevice(spec: DeviceSpec): Promise<void> {
    const instance = this.opts.customDevices?.get(spec.id);
    let device: VirtioDevice;
    if (instance) {
      // Built before start(): the user's own device, or one the builder made early (vsock).
      device = instance;
    } else if (spec.kind === 'custom') {
      throw new ConfigError('INVALID_DEVICE', `device ${spec.id} is a device of your own: pass an instance for it`);
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
    // Attached devices are closed by the teardown, also if starting their services fails.
    await this.kinds.get(spec.kind)?.start?.(device, this.host());
  }

  /** Restores vCPUs, VM and device state from a snapshot into this freshly built machine. */
  private restoreState(snap: LoadedSnapshot): void {
    const { state } = snap;
    // The vCPUs were created with the VM (restoreVmSetup: one per saved vCPU).
    const host = hostProfile(this.kvm, this.vm, this.vcpus[0]);
    checkHostCompatibility(state, host);
    restoreVcpus(this.vcpus, state, host);
    restoreVmState(this.vm, state);
    try {
      this.devices.restoreState(state.devices);
    } catch (e) {
      throw new SnapshotError('BAD_STATE', `restoring the devices failed: ${(e as Error).message}`, { field: 'devices', cause: e });
    }
    this.cmdline = machineConfigOf(snap).cmdline;
    this.parent = { snapshotId: state.snapshotId, layoutChecksum: state.memory.layoutChecksum };
  }

  /** Host capabilities for device factories, made once, when the first device needs them. */
  private host(): MachineHost {
    this.hostServices ??= {
      memory: this.memory,
      net: new NativeNetHost(this.opts.addon, this.resources),
      vsock: createVsockHost(),
      entropy: createEntropyHost(),
      balloon: createBalloonHost(this.memory, this.opts.addon),
      mmds: this.opts.mmds,
      links: this.opts.links ?? new Map(),
      files: this.resources,
    };
    return this.hostServices;
  }

  private flushExits(): void {
    if (this.ended) return;
    try {
      this.vm.flushExits();
    } catch (e) {
      void this.finish({ reason: 'error', message: `handling vCPU exits failed: ${(e as Error).message}` });
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
    if (this.runningVcpus <= 0) void this.finish({ reason: 'error', message: 'all vCPUs stopped' });
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
      // The threads are told to stop at once and waited for off the JavaScript thread.
      await this.vm.stopVcpusAsync();
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
      // Unmapping guest memory and closing the VM fd (KVM destroys the VM then) happen off-thread.
      try { await this.vm.closeAsync(); } catch { /* nothing left to do */ }
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
    // A vCPU that was waiting for an answer (an MMIO or port read) counts as paused but is in the
    // middle of an instruction: answer it, so it completes the instruction and parks. Repeat until
    // every vCPU is parked (an answered vCPU may post more exits before it parks).
    for (let i = 0; i < 1000 && this.vcpus.some((v) => v.runState !== 'parked' && v.runState !== 'idle' && v.runState !== 'exited'); i++) {
      this.flushExits();
      if (this.ended) return;
      this.vm.pauseVcpus();
    }
    // What the guest did before it parked is handled now, not when the loop gets to it: the UART
    // output it wrote among it (a transmit batch may wait for its delay otherwise).
    this.flushExits();
  }

  async resume(): Promise<void> {
    if (this.ended || !this.paused) return;
    this.paused = false;
    this.vm.resumeVcpus();
  }

  async snapshot(dir: string, opts: MachineSnapshotOptions): Promise<SnapshotInfo> {
    if (this.ended) throw new ConfigError('NOT_RUNNING', 'the VM has ended');
    if (!this.paused) throw new SnapshotError('NOT_PAUSED', 'pause the VM before taking a snapshot', { field: 'state', expected: 'paused', actual: 'running' });
    if (opts.type === 'diff' && !this.config.trackDirtyPages) {
      throw new SnapshotError('BAD_ARGUMENT', 'diff snapshots need trackDirtyPages(true) on the VM', { field: 'type' });
    }
    // Drive contents and guest memory must agree: let device I/O in flight complete first, and
    // hand over UART output collected so far.
    await this.devices.drain();
    this.serial.flush();
    const record: MachineRecord = { version: MACHINE_RECORD_VERSION, config: this.config, cmdline: this.cmdline };
    const buffer = this.regions[0].buffer;
    if (this.regions.some((r) => r.buffer !== buffer)) {
      throw new SnapshotError('BAD_ARGUMENT', 'snapshots of guests with more than 4 GiB of memory are not supported yet (their memory is in more than one buffer)', { field: 'memory' });
    }
    const info = await takeSnapshot(dir, {
      kvm: this.kvm,
      vm: this.vm,
      vcpus: this.vcpus,
      memory: { buffer, regions: this.regions.map(({ guestAddr, size, fileOffset, slot }) => ({ guestAddr, size, fileOffset, slot })) },
      devices: this.devices.saveState(),
      machine: JSON.parse(JSON.stringify(record)) as StateObject,
    }, {
      type: opts.type,
      parent: this.parent,
      dirtyLogging: this.config.trackDirtyPages,
      hostDirty: this.memory instanceof DirtyTrackingGuestMemory ? this.memory.hostDirty : undefined,
    });
    this.parent = { snapshotId: info.snapshotId, layoutChecksum: info.layoutChecksum };
    return info;
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

  async deviceStats(id: string): Promise<unknown> {
    const spec = this.config.devices.find((d) => d.id === id);
    const device = this.devices.get(id);
    const kind = spec && this.kinds.get(spec.kind);
    if (!spec || !device || !kind?.stats) throw new ConfigError('DEVICE_NOT_FOUND', `no device ${id} with statistics`);
    return kind.stats(device);
  }

  async metrics(): Promise<Omit<VmMetrics, 'id' | 'state'>> {
    const devices = this.devices.metrics();
    const drives: VmMetrics['drives'] = {};
    for (const d of this.config.drives) {
      const e = devices[d.id];
      if (e && e.transport) drives[d.id] = { ...(e.metrics as BlockMetrics), transport: e.transport };
    }
    const nics: VmMetrics['nics'] = {};
    for (const [id, e] of Object.entries(devices)) {
      if (e.kind === netDeviceKind.kind && e.transport) nics[id] = { ...(e.metrics as NetMetrics), transport: e.transport };
    }
    return {
      exits: { ...this.dispatch.counters, unmapped: this.pio.unmappedAccesses + this.mmio.unmappedAccesses },
      serial: this.serial.metrics(),
      i8042: this.i8042.metrics(),
      drives,
      nics,
      devices,
      closeErrors: this.closeErrors,
    };
  }
}
