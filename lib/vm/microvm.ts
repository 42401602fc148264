/**
 * The public MicroVM class: a builder for the configuration, then a handle on the running VM.
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import type { Duplex } from 'stream';
import { loadNative } from '../native/binding';
import type { NativeAddon } from '../native/types';
import {
  VmConfig, MicroVMOptions, KernelOptions, DriveOptions,
  initialConfig, checkVcpus, checkMemory, checkKernel, checkDrive,
} from './config';
import { ConfigError } from './errors';
import { Machine, ExitInfo, MAX_VIRTIO_DEVICES } from './machine';
import { SerialStream } from './serial-stream';
import type { VmMetrics } from './metrics';
import type { RateLimiterConfig } from '../ratelimit';

/** Lifecycle states, in order. A VM never goes back. */
export type VmState = 'configuring' | 'starting' | 'running' | 'stopping' | 'exited';

/** Events a MicroVM emits. */
export interface MicroVMEvents {
  /** Guest UART output, in order, in chunks. */
  serial: (chunk: Buffer) => void;
  /** The VM has ended and released its resources. */
  exit: (info: ExitInfo) => void;
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
 * Builder methods validate at once and throw {@link ConfigError}; they are refused after `start()`.
 */
export class MicroVM extends EventEmitter<MicroVMEvents> {
  private readonly config: VmConfig;
  private stateValue: VmState = 'configuring';
  private machine: Machine | undefined;
  private serialStream: SerialStream | undefined;
  private exitInfo: ExitInfo | undefined;
  private readonly exitPromise: Promise<ExitInfo>;
  private resolveExit!: (info: ExitInfo) => void;
  private readonly addonLoader: () => NativeAddon;

  /**
   * @param options id, KVM device path and host-quirk mode; all optional.
   * @throws ConfigError INVALID_ID / INVALID_OPTION
   */
  constructor(options: MicroVMOptions = {}) {
    super();
    this.config = initialConfig(options);
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

  /** The command line the guest was booted with (empty before start). */
  get cmdline(): string {
    return this.machine?.cmdline ?? '';
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
    this.config.memoryMib = checkMemory(mib);
    return this;
  }

  /**
   * The kernel: an ELF64 image (vmlinux, or any image following the 64-bit boot protocol) or a bzImage.
   * @throws ConfigError KERNEL_NOT_FOUND (the message names the path) / INITRD_NOT_FOUND / INVALID_CMDLINE
   */
  kernel(path: string, options: KernelOptions = {}): this {
    this.configurable();
    this.config.kernel = checkKernel(path, options);
    return this;
  }

  /**
   * Adds a virtio-blk drive backed by a host file.
   * @throws ConfigError INVALID_DRIVE / DRIVE_NOT_FOUND / DUPLICATE_DRIVE / MULTIPLE_ROOT_DRIVES / TOO_MANY_DEVICES
   */
  drive(id: string, options: DriveOptions): this {
    this.configurable();
    if (this.config.drives.length >= MAX_VIRTIO_DEVICES) {
      throw new ConfigError('TOO_MANY_DEVICES', `at most ${MAX_VIRTIO_DEVICES} virtio devices fit the interrupt controller`);
    }
    this.config.drives.push(checkDrive(id, options, this.config.drives));
    return this;
  }

  /**
   * The guest's console as a stream: read it for UART output, write to it for UART input.
   * Created on first use, so a VM whose console nobody reads buffers nothing here.
   */
  get serial(): Duplex {
    if (!this.serialStream) {
      this.serialStream = new SerialStream();
      if (this.machine) this.serialStream.attach({ offer: (b) => this.machine!.offerSerialInput(b) });
      if (this.stateValue === 'exited') this.serialStream.vmEnded();
    }
    return this.serialStream;
  }

  /**
   * Creates the VM and starts its vCPUs; resolves once they run.
   * @throws ConfigError NO_KERNEL / ALREADY_STARTED; VmError when KVM is missing or refuses; BootError for a bad image
   */
  async start(): Promise<void> {
    this.configurable();
    if (!this.config.kernel) throw new ConfigError('NO_KERNEL', 'call kernel() before start()');
    this.stateValue = 'starting';
    try {
      const addon = this.addonLoader();
      this.machine = await Machine.create(this.config, addon, {
        serialOutput: (bytes) => {
          const chunk = Buffer.from(bytes);
          this.emit('serial', chunk);
          this.serialStream?.output(chunk);
        },
        serialInputSpace: () => this.serialStream?.inputSpace(),
        exited: (info) => this.onExited(info),
      });
    } catch (e) {
      this.stateValue = 'exited';
      const info: ExitInfo = { reason: 'error', message: (e as Error).message };
      this.exitInfo = info;
      this.serialStream?.vmEnded();
      this.resolveExit(info);
      throw e;
    }
    if (this.stateValue === 'starting') this.stateValue = 'running';
    this.serialStream?.attach({ offer: (b) => this.machine!.offerSerialInput(b) });
  }

  private onExited(info: ExitInfo): void {
    this.stateValue = 'exited';
    this.exitInfo = info;
    this.serialStream?.vmEnded();
    this.resolveExit(info);
    this.emit('exit', info);
  }

  /** Resolves when the VM ends, with why. */
  wait(): Promise<ExitInfo> {
    return this.exitPromise;
  }

  /**
   * Stops the VM (if it runs) and releases its threads, memory and fds. Idempotent; resolves with
   * the exit info (reason `'stopped'` unless the VM had already ended for another reason).
   */
  async stop(): Promise<ExitInfo> {
    if (this.stateValue === 'configuring') {
      this.stateValue = 'exited';
      this.exitInfo = { reason: 'stopped' };
      this.resolveExit(this.exitInfo);
      return this.exitInfo;
    }
    if (this.stateValue === 'starting') {
      // Let start() finish (or fail) first; then stop what it built.
      await new Promise<void>((r) => setImmediate(r));
      return this.stop();
    }
    if (this.machine && this.stateValue === 'running') {
      this.stateValue = 'stopping';
      await this.machine.stop();
    }
    return this.exitPromise;
  }

  /** Presses Ctrl+Alt+Del on the guest's keyboard (Linux then reboots, i.e. exits with `'reset'` under `reboot=k`). */
  sendCtrlAltDel(): void {
    if (this.stateValue !== 'running' || !this.machine) {
      throw new ConfigError('NOT_RUNNING', `VM ${this.config.id} is ${this.stateValue}`);
    }
    this.machine.sendCtrlAltDel();
  }

  /**
   * Changes a drive while the VM runs: a new backing file (the guest gets a config-change
   * interrupt and sees the new capacity) and/or a new rate limiter.
   * @throws ConfigError NOT_RUNNING / DRIVE_NOT_FOUND / INVALID_DRIVE
   */
  async updateDrive(id: string, update: { path?: string; rateLimiter?: RateLimiterConfig }): Promise<void> {
    if (this.stateValue !== 'running' || !this.machine) {
      throw new ConfigError('NOT_RUNNING', `VM ${this.config.id} is ${this.stateValue}`);
    }
    const current = this.config.drives.find((d) => d.id === id);
    if (!current) throw new ConfigError('DRIVE_NOT_FOUND', `no drive ${id}`);
    // Re-run the builder's checks on the merged options (the duplicate check excludes itself).
    const others = this.config.drives.filter((d) => d !== current);
    checkDrive(id, { ...current, path: update.path ?? current.path, rateLimiter: update.rateLimiter ?? current.rateLimiter }, others);
    await this.machine.updateDrive(id, update);
  }

  /** Counters of the VM and every device. */
  metrics(): VmMetrics {
    if (this.machine) return this.machine.metrics(this.stateValue);
    return {
      id: this.config.id,
      state: this.stateValue,
      exits: { pioReads: 0, pioWrites: 0, mmioReads: 0, mmioWrites: 0, events: 0, unmapped: 0 },
      serial: {},
      i8042: {},
      drives: {},
    };
  }

  /** Exit info once the VM has ended, else undefined. */
  get exitStatus(): ExitInfo | undefined {
    return this.exitInfo;
  }
}
