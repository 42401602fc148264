/**
 * The public MicroVM class: a builder for the configuration, then a handle on the running VM.
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import type { Duplex } from 'stream';
import { loadNative, loadedAddonPath } from '../native/binding';
import type { NativeAddon } from '../native/types';
import { ConfigError, describe, checkBoolean, checkInteger, checkOneOf, checkOptionsObject } from '../config';
import { loadSnapshot, type LoadedSnapshot, type SnapshotInfo } from '../snapshot';
import * as fs from 'fs';
import { checkNicOptions, checkNicUpdate, checkMmdsOptions, type FrameSwitch, type NicOptions, type NicUpdateOptions, type MmdsOptions } from '../devices/net/config';
import { netDeviceKind, nicSpecOf, type NicSpec } from '../devices/net/kind';
import { MmdsStore } from '../devices/net/mmds/store';
import { checkVsockOptions, type VsockOptions } from '../devices/vsock/config';
import { createVsockDevice, type VsockDevice, type VsockConnectOptions, type VsockListener } from '../devices/vsock/device';
import { vsockDeviceKind } from '../devices/vsock/kind';
import { createVsockHost } from './vsock-host';
import { Invoker, type InvokeOptions, type InvokePayload, type InvokeResult } from '../invoke/client';
import { checkEntropyOptions, type EntropyOptions } from '../devices/rng/config';
import { entropyDeviceKind } from '../devices/rng/kind';
import { checkBalloonOptions, checkBalloonUpdate, type BalloonOptions, type BalloonUpdate } from '../devices/balloon/config';
import type { BalloonStats } from '../devices/balloon/device';
import { balloonDeviceKind } from '../devices/balloon/kind';
import * as cpu from '../cpu';
import type { VirtioDevice } from '../virtio/device';
import { checkDriveOptions, checkDriveUpdate, type DriveOptions, type DriveUpdate } from '../devices/block/config';
import {
  VmConfig, MicroVMOptions, KernelOptions,
  initialConfig, checkVcpus, checkMemory, checkKernel, composeCmdline, orderedDrives,
} from './config';
import { startMachine, restoreMachine, machineConfigOf, type MachineHandle, type MachineEvents, type ExitInfo } from './machine';
import { restoredConfig } from './restore-config';
import { MAX_VIRTIO_DEVICES, announcement, virtioPlacement } from './device-manager';
import { SerialStream } from './serial-stream';
import { checkJailOptions, type JailConfig, type JailOptions } from '../jail/config';
import { RemoteVsock } from '../jail/vsock-bridge';
import { RemoteMachineHandle, checkJailable, prepareJail, restoreJailedMachine, startJailedMachine, type JailInfo } from '../jail/remote-machine';
import type { VmMetrics } from './metrics';

/** What the façade uses of a vsock device: the device itself, or a jailed VM's {@link RemoteVsock}. */
type VsockEndpoint = Pick<RemoteVsock, 'connect' | 'listen'>;

/** Ids of the devices every VM has (or may have) besides those the user names. */
const RESERVED_IDS = ['serial', 'i8042', 'mmds', 'boot-timer'];
/** Ids of the devices a VM has at most one of. */
const VSOCK_ID = 'vsock';
const ENTROPY_ID = 'rng';
const BALLOON_ID = 'balloon';

/** A device spec's config without its id (the validators take options, not specs). */
function withoutId<T extends { id: string }>(c: T): Omit<T, 'id'> {
  const { id: _id, ...rest } = c;
  return rest;
}

/**
 * The largest guest whose memory fits the addon's single 4 GiB buffer, which snapshots (and
 * dirty-page tracking) need for now.
 */
export const MAX_SNAPSHOT_MEMORY_MIB = 4096;

/**
 * Lifecycle states. A VM moves forward through configuring → starting → running → stopping →
 * exited, and between running and paused in either direction.
 */
export type VmState = 'configuring' | 'starting' | 'running' | 'paused' | 'stopping' | 'exited';

/** Events a MicroVM emits. */
export interface MicroVMEvents {
  /** Guest UART output, in order, in chunks (at most one chunk per event-loop turn). */
  serial: (chunk: Buffer) => void;
  /** The VM has ended and released its resources. */
  exit: (info: ExitInfo) => void;
  /** The vCPUs were paused. */
  pause: () => void;
  /** The vCPUs run again after a pause. */
  resume: () => void;
  /**
   * The guest signalled boot completion through the boot timer (see {@link MicroVM.bootTimer}):
   * milliseconds since `start()` began (or since the restore began, for a restored VM).
   */
  bootDone: (ms: number) => void;
}

/** Options of {@link MicroVM.snapshot}. */
export interface SnapshotOptions {
  /**
   * `'full'` (default) writes all guest memory (never-touched pages stay holes); `'diff'` only the
   * pages written since the VM's previous snapshot or the snapshot it was restored from (needs
   * {@link MicroVM.trackDirtyPages}); a diff is restored after merging it onto its base.
   */
  type?: 'full' | 'diff';
}

/** Options of {@link MicroVM.restore}: the host resources of the restored VM. */
export interface RestoreOptions {
  /** The new VM's id (default: a fresh one; the snapshot's id is not reused). */
  id?: string;
  /** Start the vCPUs at once (default `true`); with `false` the VM is `'paused'` until `resume()`. */
  resume?: boolean;
  /**
   * `'map'` (default): guest memory is the memory file mapped copy-on-write, pages load when the
   * guest touches them and VMs restored from one file share what they only read. `'copy'`: the
   * file is read into fresh memory (the VM then does not depend on the file).
   */
  memory?: 'map' | 'copy';
  /** Per-drive overrides: another backing file (e.g. a copy of the root filesystem for a clone). */
  drives?: Record<string, {
    /** The backing file to use instead of the one the snapshot names. */
    path: string;
  }>;
  /** Instances for devices of your own (`vm.device()`), by id: fresh ones, given the saved state. */
  devices?: Record<string, VirtioDevice>;
  /**
   * Per-NIC overrides: another TAP (a clone needs its own), or the link object for a NIC that was
   * on an in-process link (required: links are not saved).
   */
  nics?: Record<string, {
    /** TAP interface name instead of the saved one. */
    tap?: string;
    /** The link (a VirtualSwitch or an objectMode Duplex) for a NIC saved on a link. */
    link?: FrameSwitch | Duplex;
  }>;
  /** vsock override: another Unix socket path (two VMs cannot listen on one). */
  vsock?: {
    /** The Firecracker-compatible socket path instead of the saved one. */
    udsPath?: string;
  };
  /** Run the restored VM in a jailed child (see {@link MicroVMOptions.jail}). */
  jail?: JailOptions;
}

/** Options of {@link MicroVM.clones}. */
export interface ClonesOptions {
  /** How many VMs (1-1024). */
  count: number;
  /** Adjusts each clone's restore options (a distinct drive copy, id…); gets the defaults. */
  prepare?: (index: number, options: RestoreOptions) => RestoreOptions;
}

/**
 * A KVM microVM.
 *
 * ```ts
 * const vm = new MicroVM({ id: 'fn-1' }).vcpus(2).memory(256).kernel('/path/vmlinux', { cmdline: 'console=ttyS0' });
 * vm.on('serial', (chunk) => process.stdout.write(chunk));
 * await vm.start();
 * const info = await vm.wait();
 * ```
 *
 * Builder methods validate at once and throw {@link ConfigError} (an unknown option included);
 * they are refused after `start()`. A configuration the builder accepted does not fail `start()`
 * on validation: `start()` fails only for what only the host can tell (KVM missing, a file that
 * vanished, a kernel image that does not load).
 */
export class MicroVM extends EventEmitter<MicroVMEvents> {
  private readonly config: VmConfig;
  /** Devices built before start(): the user's own, and the vsock device (listeners come early). */
  private readonly customDevices = new Map<string, VirtioDevice>();
  /** Link objects of NICs on in-process links, by NIC id. */
  private readonly links = new Map<string, FrameSwitch | Duplex>();
  private mmdsStore: MmdsStore | undefined;
  /** A jailed VM's vsock: the parent's side of the device in the child. */
  private remoteVsock: RemoteVsock | undefined;
  private invoker: Invoker | undefined;
  private stateValue: VmState = 'configuring';
  private handle: MachineHandle | undefined;
  private starting: Promise<void> | undefined;
  private serialStream: SerialStream | undefined;
  private exitInfo: ExitInfo | undefined;
  private readonly exitPromise: Promise<ExitInfo>;
  private resolveExit!: (info: ExitInfo) => void;
  private readonly addonLoader: () => NativeAddon;
  /** Host quirks as detected at construction: they decide the command-line additions. */
  private readonly quirks: cpu.HostQuirks;
  /** The validated jail, when the VM runs in a jailed child. */
  private readonly jailConfig: JailConfig | undefined;
  /** The jailed child made ready by {@link prepare}, or on its way. */
  private preparing: Promise<RemoteMachineHandle> | undefined;

  /**
   * @param options id, KVM device path, host-quirk mode, seccomp, jail; all optional.
   * @throws ConfigError INVALID_ID / INVALID_OPTION / UNKNOWN_OPTION; for `jail`: INVALID_JAIL /
   *   UID_MISSING / JAIL_REQUIRES_ROOT / CGROUP_UNAVAILABLE
   */
  constructor(options: MicroVMOptions = {}) {
    super();
    this.config = initialConfig(options);
    this.jailConfig = options.jail !== undefined ? checkJailOptions(options.jail) : undefined;
    this.quirks = this.config.hostQuirks === 'auto' ? cpu.detectHostQuirks() : { emulatedKvm: this.config.hostQuirks === 'emulated-kvm' };
    this.exitPromise = new Promise((resolve) => { this.resolveExit = resolve; });
    this.addonLoader = loadNative;
  }

  /** The VM's id. */
  get id(): string {
    return this.config.id;
  }

  /** Current lifecycle state. */
  get state(): VmState {
    return this.stateValue;
  }

  /**
   * Where a jailed VM's process is (its pid, jail root and cgroups) while it runs; undefined for
   * a VM run in this process, and before start.
   */
  get jail(): JailInfo | undefined {
    return this.handle instanceof RemoteMachineHandle && this.stateValue !== 'exited' ? this.handle.jail : undefined;
  }

  /** The command line the guest was booted with (empty before start). */
  get cmdline(): string {
    return this.handle?.cmdline ?? '';
  }

  private configurable(): void {
    if (this.stateValue !== 'configuring') {
      throw new ConfigError('ALREADY_STARTED', `VM ${this.config.id} is ${this.stateValue}; configure it before start()`);
    }
  }

  /**
   * Number of vCPUs (1-32). Linux brings the extra ones up through the MP table and INIT/SIPI.
   * @throws ConfigError INVALID_VCPUS
   */
  vcpus(count: number): this {
    this.configurable();
    this.config.vcpus = checkVcpus(count);
    return this;
  }

  /**
   * Guest RAM in MiB. Pages are allocated by the host only when the guest touches them.
   * @throws ConfigError INVALID_MEMORY
   */
  memory(mib: number): this {
    this.configurable();
    const checked = checkMemory(mib);
    if (this.config.trackDirtyPages && checked > MAX_SNAPSHOT_MEMORY_MIB) throw new ConfigError('INVALID_MEMORY', `with trackDirtyPages() memory is limited to ${MAX_SNAPSHOT_MEMORY_MIB} MiB for now`);
    this.config.memoryMib = checked;
    return this;
  }

  /**
   * The kernel: an ELF64 image (vmlinux, or any image following the 64-bit boot protocol) or a bzImage.
   * @throws ConfigError KERNEL_NOT_FOUND (the message names the path) / INITRD_NOT_FOUND / INVALID_CMDLINE / UNKNOWN_OPTION
   */
  kernel(path: string, options: KernelOptions = {}): this {
    this.configurable();
    const kernel = checkKernel(path, options);
    this.checkCmdlineFits({ ...this.config, kernel });
    this.config.kernel = kernel;
    return this;
  }

  /**
   * Adds a virtio-blk drive backed by a host file. The root drive is announced first (`/dev/vda`),
   * the others in the order they were added.
   * @throws ConfigError INVALID_DRIVE / DRIVE_NOT_FOUND / DUPLICATE_DRIVE / MULTIPLE_ROOT_DRIVES /
   *   INVALID_RATE_LIMITER / UNKNOWN_OPTION / TOO_MANY_DEVICES / INVALID_CMDLINE
   */
  drive(id: string, options: DriveOptions): this {
    this.configurable();
    const drive = checkDriveOptions(id, options, this.config.drives);
    this.checkDeviceId(drive.id);
    this.checkCmdlineFits({ ...this.config, drives: [...this.config.drives, drive] });
    this.config.drives.push(drive);
    return this;
  }

  /**
   * Attaches a virtio device of your own (see {@link VirtioDevice} and `kindling/testing` for
   * unit-testing it without KVM). It gets the next virtio-mmio window and interrupt after the
   * drives and the devices added before it, and is announced to the guest on the command line;
   * the machine calls its `close()` at teardown.
   * @throws ConfigError INVALID_DEVICE (not a virtio device) / DUPLICATE_ID / TOO_MANY_DEVICES / INVALID_CMDLINE;
   *   INVALID_JAIL for a jailed VM
   */
  device(device: VirtioDevice): this {
    this.configurable();
    if (this.jailConfig) throw new ConfigError('INVALID_JAIL', 'device(): devices of your own cannot run in a jailed child (they are objects of this process)');
    checkVirtioDevice(device);
    this.checkDeviceId(device.id);
    const spec = { kind: 'custom', id: device.id, config: { id: device.id } };
    this.checkCmdlineFits({ ...this.config, devices: [...this.config.devices, spec] });
    this.config.devices.push(spec);
    this.customDevices.set(device.id, device);
    return this;
  }

  /**
   * Adds a virtio-net NIC: on a host TAP (`{ tap: 'tap0' }`, which must exist), or on an
   * in-process link (`{ link: new VirtualSwitch() }` or any objectMode Duplex of Ethernet frames).
   * NICs are announced after the drives, in the order added (`eth0`, `eth1`… in a Linux guest).
   * @throws ConfigError INVALID_NIC / INVALID_MAC / TAP_NOT_FOUND / DUPLICATE_ID /
   *   INVALID_RATE_LIMITER / UNKNOWN_OPTION / TOO_MANY_DEVICES / INVALID_CMDLINE
   */
  nic(id: string, options: NicOptions): this {
    this.configurable();
    const config = checkNicOptions(id, options, this.config.devices.filter((d) => d.kind === netDeviceKind.kind).map((d) => d.id));
    this.checkDeviceId(config.id);
    const b = config.backend;
    // A jailed VM's TAP lives in the jail's network namespace, where start() opens it.
    if (b.kind === 'tap' && this.jailConfig?.netns === undefined && !fs.existsSync(`/sys/class/net/${b.name}/tun_flags`)) {
      throw new ConfigError('TAP_NOT_FOUND', `nic ${id}: there is no TAP interface ${b.name} (create it first, e.g. ip tuntap add ${b.name} mode tap)`);
    }
    const spec = { kind: netDeviceKind.kind, id: config.id, config: nicSpecOf(config) };
    this.checkCmdlineFits({ ...this.config, devices: [...this.config.devices, spec] });
    this.config.devices.push(spec);
    if (b.kind === 'switch') this.links.set(config.id, b.sw);
    if (b.kind === 'duplex') this.links.set(config.id, b.stream);
    return this;
  }

  /**
   * Changes a NIC's rate limits while the VM runs.
   * @throws ConfigError DEVICE_NOT_FOUND / NOT_RUNNING / INVALID_RATE_LIMITER / UNKNOWN_OPTION
   */
  updateNic(id: string, update: NicUpdateOptions): Promise<void> {
    if (!this.config.devices.some((d) => d.id === id && d.kind === netDeviceKind.kind)) {
      throw new ConfigError('DEVICE_NOT_FOUND', `no NIC ${describe(id)}`);
    }
    const checked = checkNicUpdate(id, update);
    return this.running().updateDevice(id, checked);
  }

  /**
   * Turns on the metadata service (Firecracker's MMDS) for the guest, reachable through the NICs
   * listed (which must have been added): HTTP on port 80 at `ipv4Address` (default
   * 169.254.169.254), `version: 'v2'` with session tokens. Set its data with `setMetadata()`.
   * @throws ConfigError INVALID_MMDS / UNKNOWN_OPTION
   */
  mmds(options: MmdsOptions): this {
    this.configurable();
    const nics = this.config.devices.filter((d) => d.kind === netDeviceKind.kind).map((d) => d.id);
    const config = checkMmdsOptions(options, nics);
    const previous = this.mmdsStore?.get();
    this.mmdsStore = new MmdsStore(config);
    if (previous !== undefined) this.mmdsStore.set(previous);
    this.config.mmds = { version: config.version, ipv4Address: [...config.ipv4Address].join('.'), nics: [...config.nics], sizeLimit: config.sizeLimit };
    return this;
  }

  private store(): MmdsStore {
    if (!this.mmdsStore) throw new ConfigError('INVALID_MMDS', 'call mmds() before setting or reading metadata');
    return this.mmdsStore;
  }

  /**
   * Replaces the metadata the guest reads (any JSON value; before or after start). Over the
   * configured size limit it throws and keeps the old data.
   * @throws ConfigError INVALID_MMDS when mmds() was not called; MmdsError TOO_LARGE / INVALID_DATA
   */
  setMetadata(data: unknown): void {
    this.store().set(data);
    this.pushMetadata();
  }

  /**
   * A jailed VM's guest reads the child's copy of the store: send it the data as it is now. The
   * control socket keeps the order of changes; a VM that ended has nothing to update.
   */
  private pushMetadata(): void {
    if (this.handle instanceof RemoteMachineHandle && this.mmdsStore) void this.handle.setMetadata(this.mmdsStore.get()).catch(() => undefined);
  }

  /**
   * Applies an RFC 7396 JSON merge patch to the metadata.
   * @throws ConfigError INVALID_MMDS; MmdsError TOO_LARGE / INVALID_DATA (the old data is kept)
   */
  updateMetadata(patch: unknown): void {
    this.store().patch(patch);
    this.pushMetadata();
  }

  /** The current metadata. @throws ConfigError INVALID_MMDS when mmds() was not called */
  getMetadata(): unknown {
    return this.store().get();
  }

  /**
   * Adds a virtio-vsock device with guest CID `guestCid`. With `udsPath`, host programs reach
   * guest ports through that Unix socket as with Firecracker (`CONNECT <port>\n`), and guest
   * connections to host port P go to `<udsPath>_<P>`. Listeners (`vsockListen`) may be added
   * before `start()`.
   * @throws ConfigError INVALID_VSOCK / DUPLICATE_ID / UNKNOWN_OPTION / TOO_MANY_DEVICES
   */
  vsock(options: VsockOptions): this {
    this.configurable();
    const config = checkVsockOptions(options);
    this.checkDeviceId(VSOCK_ID);
    const spec = { kind: vsockDeviceKind.kind, id: VSOCK_ID, config: { ...config, id: VSOCK_ID } };
    this.checkCmdlineFits({ ...this.config, devices: [...this.config.devices, spec] });
    this.config.devices.push(spec);
    if (this.jailConfig) this.remoteVsock = new RemoteVsock(config.udsPath);
    else this.customDevices.set(VSOCK_ID, createVsockDevice(spec.config, createVsockHost()));
    return this;
  }

  /** The vsock device, or (jailed) the parent's side of the one in the child. */
  private vsockDevice(): VsockEndpoint {
    const d = this.remoteVsock ?? this.customDevices.get(VSOCK_ID) as VsockDevice | undefined;
    if (!d) throw new ConfigError('DEVICE_NOT_FOUND', 'this VM has no vsock device: call vsock() before start()');
    return d;
  }

  /**
   * Connects to a guest listener on vsock `port`; resolves with a Duplex (its `end()` half-closes:
   * the guest's answer can still be read).
   * @throws ConfigError DEVICE_NOT_FOUND / NOT_RUNNING; rejects with VsockError when the guest
   *   has no listener there (CONNECTION_REFUSED) or does not answer
   */
  async vsockConnect(port: number, options?: VsockConnectOptions): Promise<Duplex> {
    const device = this.vsockDevice();
    this.running();
    return device.connect(port, options);
  }

  /**
   * Accepts guest connections to host CID 2, `port`; `handler` gets one Duplex per connection.
   * May be called before `start()`. Returns a handle whose `close()` stops listening.
   * @throws ConfigError DEVICE_NOT_FOUND; VsockError when the port is taken
   */
  vsockListen(port: number, handler: (socket: Duplex) => void): VsockListener {
    return this.vsockDevice().listen(port, handler);
  }

  /**
   * One request to a guest agent and its answer, over vsock (see docs/invoke-protocol.md): a
   * Buffer or string is sent as bytes, anything else as JSON; resolves with the answer in the
   * same form. Connections are reused between calls.
   * @throws ConfigError DEVICE_NOT_FOUND / NOT_RUNNING; rejects with InvokeError (TIMEOUT,
   *   AGENT_CLOSED, TOO_LARGE, CONNECT_FAILED, AGENT_ERROR…)
   */
  async invoke(payload: InvokePayload, options: InvokeOptions = {}): Promise<InvokeResult> {
    const device = this.vsockDevice();
    this.running();
    this.invoker ??= new Invoker((port) => device.connect(port));
    return this.invoker.invoke(payload, options);
  }

  /**
   * Adds a virtio-rng device: the guest's `/dev/hwrng` draws from the host's CSPRNG, optionally
   * rate-limited (bytes and requests).
   * @throws ConfigError INVALID_ENTROPY / INVALID_RATE_LIMITER / DUPLICATE_ID / UNKNOWN_OPTION
   */
  entropy(options: EntropyOptions = {}): this {
    this.configurable();
    const config = checkEntropyOptions(options);
    this.checkDeviceId(ENTROPY_ID);
    const spec = { kind: entropyDeviceKind.kind, id: ENTROPY_ID, config: { ...config, id: ENTROPY_ID } };
    this.checkCmdlineFits({ ...this.config, devices: [...this.config.devices, spec] });
    this.config.devices.push(spec);
    return this;
  }

  /**
   * Adds a virtio-balloon device: `amountMib` is how much guest memory the host wants back;
   * pages the guest gives up are released to the host (madvise). `statsPollingIntervalS` > 0
   * enables guest statistics (`balloonStats()`), `freePageReporting` returns freed pages without
   * a target.
   * @throws ConfigError INVALID_BALLOON / DUPLICATE_ID / UNKNOWN_OPTION
   */
  balloon(options: BalloonOptions): this {
    this.configurable();
    const config = checkBalloonOptions(options);
    this.checkDeviceId(BALLOON_ID);
    const spec = { kind: balloonDeviceKind.kind, id: BALLOON_ID, config: { ...config, id: BALLOON_ID } };
    this.checkCmdlineFits({ ...this.config, devices: [...this.config.devices, spec] });
    this.config.devices.push(spec);
    return this;
  }

  /**
   * Changes the balloon's target (and/or statistics interval) while the VM runs.
   * @throws ConfigError DEVICE_NOT_FOUND / NOT_RUNNING / INVALID_BALLOON; BalloonError BAD_UPDATE
   */
  updateBalloon(update: BalloonUpdate): Promise<void> {
    if (!this.config.devices.some((d) => d.id === BALLOON_ID)) throw new ConfigError('DEVICE_NOT_FOUND', 'this VM has no balloon');
    const checked = checkBalloonUpdate(update);
    return this.running().updateDevice(BALLOON_ID, checked);
  }

  /**
   * The balloon's target and actual size and the guest's latest statistics.
   * @throws ConfigError DEVICE_NOT_FOUND / NOT_RUNNING
   */
  async balloonStats(): Promise<BalloonStats> {
    if (!this.config.devices.some((d) => d.id === BALLOON_ID)) throw new ConfigError('DEVICE_NOT_FOUND', 'this VM has no balloon');
    return (await this.running().deviceStats(BALLOON_ID)) as BalloonStats;
  }

  /**
   * Tracks the pages the guest and the devices write (KVM dirty logging), so that
   * `snapshot(dir, { type: 'diff' })` can write only those. Costs a little on every guest write.
   * @throws ConfigError INVALID_OPTION
   */
  trackDirtyPages(enable = true): this {
    this.configurable();
    if (typeof enable !== 'boolean') throw new ConfigError('INVALID_OPTION', `trackDirtyPages() takes a boolean, not ${describe(enable)}`);
    if (enable && this.config.memoryMib > MAX_SNAPSHOT_MEMORY_MIB) throw new ConfigError('INVALID_OPTION', `diff snapshots are limited to guests of ${MAX_SNAPSHOT_MEMORY_MIB} MiB for now`);
    this.config.trackDirtyPages = enable;
    return this;
  }

  /**
   * Adds Firecracker's boot-timer device: a guest writes the byte 123 to guest physical
   * 0xd0000000 when it has booted, and the VM emits `'bootDone'` with the milliseconds since
   * `start()`. As in Firecracker, the virtio-mmio windows then start one page higher.
   * @throws ConfigError INVALID_OPTION / INVALID_CMDLINE
   */
  bootTimer(enable = true): this {
    this.configurable();
    if (typeof enable !== 'boolean') throw new ConfigError('INVALID_OPTION', `bootTimer() takes a boolean, not ${describe(enable)}`);
    this.checkCmdlineFits({ ...this.config, bootTimer: enable });
    this.config.bootTimer = enable;
    return this;
  }

  private checkDeviceId(id: string): void {
    if (this.config.drives.some((d) => d.id === id) || this.config.devices.some((d) => d.id === id) || RESERVED_IDS.includes(id)) {
      throw new ConfigError('DUPLICATE_ID', `a device with id ${id} is already configured`);
    }
  }

  /**
   * The kernel command line must hold the user's command line and every device announcement:
   * checked whenever either changes, so that `start()` never finds it too long.
   */
  private checkCmdlineFits(next: VmConfig): void {
    const count = next.drives.length + next.devices.length;
    if (count > MAX_VIRTIO_DEVICES) {
      throw new ConfigError('TOO_MANY_DEVICES', `at most ${MAX_VIRTIO_DEVICES} virtio devices fit the interrupt controller`);
    }
    if (!next.kernel) return;
    const announcements = Array.from({ length: count }, (_, i) => announcement(virtioPlacement(i, next.bootTimer)));
    composeCmdline(next.kernel.cmdline, {
      root: orderedDrives(next.drives).find((d) => d.root),
      announcements,
      extra: this.quirks.emulatedKvm ? cpu.quirkCmdlineArgs() : [],
    });
  }

  /**
   * The guest's console as a stream: read it for UART output, write to it for UART input.
   * Created on first use, so a VM whose console nobody reads buffers nothing here.
   */
  get serial(): Duplex {
    if (!this.serialStream) {
      this.serialStream = new SerialStream();
      if (this.handle && this.stateValue !== 'exited') this.attachSerial();
      if (this.stateValue === 'exited') this.serialStream.vmEnded();
    }
    return this.serialStream;
  }

  private attachSerial(): void {
    const handle = this.handle!;
    this.serialStream?.attach({ offer: (b) => handle.serialInput(b) });
  }

  /**
   * For a jailed VM: builds the jail and starts its child now, up to where the child has loaded
   * everything, installed its seccomp filter and waits for the configuration; `start()` then only
   * sends it (which is what makes a jailed start about as quick as one in this process). Optional:
   * `start()` does all of it when `prepare()` was not called. The waiting child does not keep this
   * process alive; `stop()` removes it. Nothing to do for a VM run in this process.
   * @throws ConfigError ALREADY_STARTED; JailError JAIL_EXISTS / LAUNCH_FAILED (then `start()`
   *   fails the same way)
   */
  prepare(): Promise<void> {
    this.configurable();
    const jail = this.jailConfig;
    if (!jail) return Promise.resolve();
    if (!this.preparing) {
      this.preparing = prepareJail(this.config.id, this.config.seccomp !== false, { addon: this.addonLoader(), addonPath: loadedAddonPath(), jail });
      // Reported by whoever awaits prepare() or start(); never an unhandled rejection.
      this.preparing.catch(() => undefined);
    }
    return this.preparing.then(() => undefined);
  }

  /**
   * Creates the VM and starts its vCPUs; resolves once they run.
   * @throws ConfigError NO_KERNEL / ALREADY_STARTED; VmError when KVM is missing or refuses;
   *   BootError for an image that does not load; a device's error when it cannot be built
   */
  async start(): Promise<void> {
    this.configurable();
    if (!this.config.kernel) throw new ConfigError('NO_KERNEL', 'call kernel() before start()');
    this.stateValue = 'starting';
    this.starting = this.doStart();
    return this.starting;
  }

  private async doStart(launch?: (events: MachineEvents, addon: NativeAddon) => Promise<MachineHandle>, paused = false): Promise<void> {
    const startedAt = performance.now();
    const events: MachineEvents = {
      serialOutput: (bytes) => {
        const chunk = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        this.emit('serial', chunk);
        this.serialStream?.output(chunk);
      },
      serialInputSpace: () => this.serialStream?.inputSpace(),
      bootDone: () => this.emit('bootDone', performance.now() - startedAt),
      exited: (info) => this.onExited(info),
    };
    try {
      const addon = this.addonLoader();
      if (launch) this.handle = await launch(events, addon);
      else if (this.jailConfig) {
        const prepared = this.preparing ? await this.preparing : undefined;
        this.handle = await startJailedMachine(this.config, {
          addon, addonPath: loadedAddonPath(), events, jail: this.jailConfig, prepared, vsock: this.remoteVsock, mmds: this.mmdsStore, links: this.links,
        });
        // Changes made while the child was starting.
        this.pushMetadata();
      }
      else this.handle = await startMachine(this.config, { addon, customDevices: this.customDevices, events, mmds: this.mmdsStore, links: this.links });
    } catch (e) {
      this.onExited({ reason: 'error', message: (e as Error).message }, false);
      throw e;
    }
    if (this.stateValue === 'starting') this.stateValue = paused ? 'paused' : 'running';
    if (this.stateValue !== 'exited') this.attachSerial();
  }

  /**
   * Writes a snapshot of the VM to `dir` (created if needed; a snapshot already there is replaced):
   * `memory` (guest RAM, sparse) and `state` (versioned, checksummed: vCPUs, VM, every device, the
   * configuration). The VM must be paused; device I/O in flight completes first, and drive
   * contents are the user's (a file-backed drive's writes are already in its file).
   * @throws SnapshotError NOT_PAUSED / BAD_ARGUMENT / IO_ERROR; ConfigError NOT_RUNNING
   */
  async snapshot(dir: string, options: SnapshotOptions = {}): Promise<SnapshotInfo> {
    if (typeof dir !== 'string' || dir.length === 0) throw new ConfigError('INVALID_OPTION', 'snapshot() needs a directory path');
    const o = checkOptionsObject(options, ['type'], 'snapshot options', 'INVALID_OPTION');
    const type = checkOneOf(o.type, 'snapshot type', 'INVALID_OPTION', ['full', 'diff'] as const, 'full');
    return this.running().snapshot(dir, { type });
  }

  /**
   * Creates a VM from a snapshot directory written by {@link MicroVM.snapshot} and starts it where
   * the snapshot left off. The snapshot's configuration is reused; `options` supply what belongs
   * to this host and this VM (its id, drive files, instances of your own devices).
   * @throws SnapshotError naming what does not match (version, checksum, memory file size, CPU
   *   features, vCPU count); ConfigError for bad options; VmError when KVM is missing
   */
  static async restore(dir: string, options: RestoreOptions = {}): Promise<MicroVM> {
    return MicroVM.restoreLoaded(await loadSnapshot(dir), options);
  }

  /**
   * Restores `count` VMs from one snapshot: the snapshot is read and checked once, and with
   * `memory: 'map'` (the default) every clone maps the same memory file copy-on-write, so what
   * the clones only read is in host memory once. `prepare(i, options)` gives each clone its own
   * resources. Resolves when all run; if one fails, the others are stopped and the error is thrown.
   */
  static async clones(dir: string, options: ClonesOptions): Promise<MicroVM[]> {
    const o = checkOptionsObject(options, ['count', 'prepare'], 'clones options', 'INVALID_OPTION');
    const count = checkInteger(o.count, 'clones count', 'INVALID_OPTION', 1, 1024);
    if (o.prepare !== undefined && typeof o.prepare !== 'function') throw new ConfigError('INVALID_OPTION', 'clones prepare must be a function');
    const prepare = (o.prepare as ClonesOptions['prepare']) ?? ((_i: number, opts: RestoreOptions) => opts);
    const snap = await loadSnapshot(dir);
    const vms: MicroVM[] = [];
    const toResume: MicroVM[] = [];
    try {
      // Each clone is restored paused and those that asked to run are resumed together at the
      // end: a restore waits for the thread pool, and a clone running meanwhile would print
      // before the caller has it to listen.
      for (let i = 0; i < count; i++) {
        const { vm, resume } = await MicroVM.restoreLoadedHeld(snap, prepare(i, {}));
        vms.push(vm);
        if (resume) toResume.push(vm);
      }
      for (const vm of toResume) await vm.resumeHeld();
    } catch (e) {
      await Promise.all(vms.map((vm) => vm.stop()));
      throw e;
    }
    return vms;
  }

  /**
   * For a VM rebuilt from a saved configuration: the objects the builder methods would have made
   * (the vsock device, the metadata store). Their state comes from the snapshot.
   */
  private rebuildServices(): void {
    const vsock = this.config.devices.find((d) => d.kind === vsockDeviceKind.kind);
    if (vsock && this.jailConfig) this.remoteVsock = new RemoteVsock(checkVsockOptions(withoutId(vsock.config)).udsPath);
    else if (vsock) this.customDevices.set(vsock.id, createVsockDevice(checkVsockOptions(withoutId(vsock.config)), createVsockHost()));
    if (this.config.mmds) {
      const nics = this.config.devices.filter((d) => d.kind === netDeviceKind.kind).map((d) => d.id);
      this.mmdsStore = new MmdsStore(checkMmdsOptions(this.config.mmds, nics));
    }
    for (const d of this.config.devices) {
      if (d.kind === netDeviceKind.kind && (d.config as NicSpec).link && !this.links.has(d.id)) {
        throw new ConfigError('INVALID_NIC', `nic ${d.id} was on an in-process link: pass one in restore options nics.${d.id}.link`);
      }
    }
  }

  private static async restoreLoaded(snap: LoadedSnapshot, options: RestoreOptions): Promise<MicroVM> {
    return (await MicroVM.restoreLoadedHeld(snap, options, false)).vm;
  }

  /**
   * Restores one VM; with `hold` it starts paused whatever `options.resume` says, and `resume`
   * tells whether the caller should let it run ({@link MicroVM.resumeHeld}).
   */
  private static async restoreLoadedHeld(snap: LoadedSnapshot, options: RestoreOptions, hold = true): Promise<{ vm: MicroVM; resume: boolean }> {
    const o = checkOptionsObject(options, ['id', 'resume', 'memory', 'drives', 'devices', 'nics', 'vsock', 'jail'], 'restore options', 'INVALID_OPTION');
    const resume = checkBoolean(o.resume, 'restore resume', 'INVALID_OPTION', true);
    const paused = !resume || hold;
    const memory = checkOneOf(o.memory, 'restore memory', 'INVALID_OPTION', ['map', 'copy'] as const, 'map');
    const saved = machineConfigOf(snap).config;
    const vm = new MicroVM({
      ...(o.id !== undefined ? { id: o.id as string } : {}), kvmPath: saved.kvmPath, hostQuirks: saved.hostQuirks, seccomp: saved.seccomp !== false,
      ...(o.jail !== undefined ? { jail: o.jail as JailOptions } : {}),
    });
    if (vm.jailConfig && Array.isArray(saved.devices) && saved.devices.some((d) => d.kind === 'custom')) {
      throw new ConfigError('INVALID_JAIL', 'the snapshot has devices of your own, which cannot run in a jailed child');
    }
    // The saved configuration, checked again as any input, with this VM's host resources.
    const config = restoredConfig(saved, vm.config.id, { drives: o.drives, devices: o.devices, nics: o.nics, vsock: o.vsock }, vm.customDevices, vm.links);
    if (vm.jailConfig) checkJailable({ ...vm.config, ...config });
    Object.assign(vm.config, config);
    vm.stateValue = 'starting';
    vm.rebuildServices();
    const jail = vm.jailConfig;
    const store = vm.mmdsStore;
    if (jail && store) {
      // The child restores its copy of the metadata from the snapshot; this process's store, the
      // one the API reads, takes the same saved data here (the child's restore checks it too).
      const saved = snap.state.devices.find((d) => d.kind === store.kind && d.id === store.id);
      try {
        if (saved) store.restoreState(saved.state);
      } catch { /* the child's restore refuses the same state, with its error */ }
    }
    vm.starting = vm.doStart(
      (events, addon) => (jail
        ? restoreJailedMachine(snap, vm.config, { addon, addonPath: loadedAddonPath(), events, jail, memory, paused, vsock: vm.remoteVsock, links: vm.links })
        : restoreMachine(snap, vm.config, { addon, events, customDevices: vm.customDevices, mmds: vm.mmdsStore, links: vm.links, memory, paused })),
      paused,
    );
    await vm.starting;
    return { vm, resume };
  }

  /** Lets a VM restored with `hold` run, as if it had been restored running (no 'resume' event). */
  private async resumeHeld(): Promise<void> {
    if (this.stateValue !== 'paused' || !this.handle) return;
    await this.handle.resume();
    if (this.stateValue === 'paused') this.stateValue = 'running';
  }

  private onExited(info: ExitInfo, emit = true): void {
    if (this.stateValue === 'exited') return;
    this.invoker?.close();
    this.stateValue = 'exited';
    this.exitInfo = info;
    this.serialStream?.vmEnded();
    this.resolveExit(info);
    if (emit) this.emit('exit', info);
  }

  /** Resolves when the VM ends, with why. */
  wait(): Promise<ExitInfo> {
    return this.exitPromise;
  }

  /**
   * Stops the VM (if it runs) and releases its threads, memory and fds. Idempotent; resolves with
   * the exit info (reason `'stopped'` unless the VM had already ended for another reason). Never
   * rejects: a device that fails to close is reported in the exit info's `closeErrors`.
   */
  async stop(): Promise<ExitInfo> {
    if (this.stateValue === 'configuring') {
      this.onExited({ reason: 'stopped' }, false);
      // Devices the builder made early (vsock) hold nothing yet but timers; close them all the same.
      await Promise.allSettled([...this.customDevices.values()].map((d) => Promise.resolve().then(() => d.close())));
      // A child prepared for a start that will not come: end it and remove its jail.
      const prepared = await this.preparing?.catch(() => undefined);
      await prepared?.abort();
      return this.exitPromise;
    }
    if (this.stateValue === 'starting') {
      // Let start() finish (or fail) first; then stop what it built.
      await this.starting!.catch(() => undefined);
    }
    if (this.handle && (this.stateValue === 'running' || this.stateValue === 'paused')) {
      this.stateValue = 'stopping';
      await this.handle.stop();
    }
    return this.exitPromise;
  }

  /**
   * Pauses the vCPUs: the guest stops executing (its clock is not stopped); devices finish what
   * the guest had already asked for. Idempotent; emits `'pause'` when the state changes.
   * @throws ConfigError NOT_RUNNING when the VM is neither running nor paused
   */
  async pause(): Promise<void> {
    if (this.stateValue === 'paused') return;
    const handle = this.running();
    await handle.pause();
    if (this.stateValue === 'running') {
      this.stateValue = 'paused';
      this.emit('pause');
    }
  }

  /**
   * Resumes paused vCPUs. Idempotent; emits `'resume'` when the state changes.
   * @throws ConfigError NOT_RUNNING when the VM is neither running nor paused
   */
  async resume(): Promise<void> {
    if (this.stateValue === 'running') return;
    if (this.stateValue !== 'paused' || !this.handle) {
      throw new ConfigError('NOT_RUNNING', `VM ${this.config.id} is ${this.stateValue}`);
    }
    await this.handle.resume();
    if (this.stateValue === 'paused') {
      this.stateValue = 'running';
      this.emit('resume');
    }
  }

  /** The machine, when it runs or is paused (updates, input and keys work on a paused VM too). */
  private running(): MachineHandle {
    if ((this.stateValue !== 'running' && this.stateValue !== 'paused') || !this.handle) {
      throw new ConfigError('NOT_RUNNING', `VM ${this.config.id} is ${this.stateValue}`);
    }
    return this.handle;
  }

  /**
   * Presses Ctrl+Alt+Del on the guest's keyboard (Linux then reboots, i.e. exits with `'reset'`
   * under `reboot=k`).
   * @throws ConfigError NOT_RUNNING
   */
  sendCtrlAltDel(): Promise<void> {
    return this.running().sendCtrlAltDel();
  }

  /**
   * Changes a drive while the VM runs: a new backing file (the guest gets a config-change
   * interrupt and sees the new capacity) and/or new rate limits.
   * @throws ConfigError NOT_RUNNING / DEVICE_NOT_FOUND / INVALID_DRIVE / DRIVE_NOT_FOUND /
   *   INVALID_RATE_LIMITER / UNKNOWN_OPTION (thrown at the call, before anything changes)
   */
  updateDrive(id: string, update: DriveUpdate): Promise<void> {
    if (typeof id !== 'string' || !this.config.drives.some((d) => d.id === id)) {
      throw new ConfigError('DEVICE_NOT_FOUND', `no drive ${describe(id)}`);
    }
    const checked = checkDriveUpdate(id, update);
    return this.running().updateDevice(id, checked);
  }

  /** Counters of the VM and every device. */
  async metrics(): Promise<VmMetrics> {
    const base = { id: this.config.id, state: this.stateValue };
    if (this.handle) return { ...base, ...(await this.handle.metrics()), state: this.stateValue };
    return { ...base, ...emptyMetrics() };
  }

  /** Exit info once the VM has ended, else undefined. */
  get exitStatus(): ExitInfo | undefined {
    return this.exitInfo;
  }
}

/** Counters of a VM that has not run: every device's zeros. */
function emptyMetrics(): Omit<VmMetrics, 'id' | 'state'> {
  const serial = {
    txBytes: 0, outputChunks: 0, outputErrors: 0, inputBytes: 0, inputRefused: 0, rxBytes: 0, rxDiscarded: 0, overruns: 0,
    loopbackBytes: 0, interrupts: 0, reads: 0, writes: 0, ignoredWrites: 0, emptyReads: 0, rxFifoLevel: 0, pendingOutput: 0,
  };
  const i8042 = {
    commands: 0, unknownCommands: 0, dataWrites: 0, kbdCommands: 0, bytesRead: 0, emptyReads: 0, ignoredAccesses: 0,
    droppedBytes: 0, interrupts: 0, resets: 0, ctrlAltDels: 0, keysInjected: 0, injectRefused: 0, queuedBytes: 0,
  };
  return {
    exits: { pioReads: 0, pioWrites: 0, mmioReads: 0, mmioWrites: 0, events: 0, unmapped: 0 },
    serial,
    i8042,
    drives: {},
    nics: {},
    devices: {},
    closeErrors: 0,
  };
}

/** Checks that a user's device object has the virtio device contract's members. */
function checkVirtioDevice(d: unknown): asserts d is VirtioDevice {
  const bad = (what: string) => new ConfigError('INVALID_DEVICE', `device(): ${what}`);
  if (d === null || typeof d !== 'object') throw bad('expects a VirtioDevice object');
  const o = d as Record<string, unknown>;
  if (typeof o.id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(o.id)) throw bad(`id ${describe(o.id)} must be 1-64 characters of [A-Za-z0-9._-]`);
  if (typeof o.kind !== 'string' || o.kind.length === 0) throw bad('kind must be a non-empty string');
  if (typeof o.stateVersion !== 'number' || !Number.isInteger(o.stateVersion)) throw bad('stateVersion must be an integer');
  if (typeof o.deviceType !== 'number' || !Number.isInteger(o.deviceType) || o.deviceType <= 0 || o.deviceType > 0xffff) throw bad('deviceType must be a virtio device ID');
  if (typeof o.deviceFeatures !== 'bigint') throw bad('deviceFeatures must be a bigint');
  const sizes = o.queueMaxSizes;
  if (!Array.isArray(sizes) || sizes.length === 0 || sizes.length > 64 ||
      sizes.some((n) => typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 32768 || (n & (n - 1)) !== 0)) {
    throw bad('queueMaxSizes must list 1-64 queue sizes, each a power of two ≤ 32768');
  }
  for (const m of ['readConfig', 'writeConfig', 'activate', 'processQueue', 'reset', 'metrics', 'saveState', 'restoreState', 'close']) {
    if (typeof o[m] !== 'function') throw bad(`${m}() is missing`);
  }
}
