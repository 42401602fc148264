/**
 * The parent's side of a jailed VM: a {@link MachineHandle} whose machine runs in a child process
 * inside a jail (`lib/jail/child.ts`), so that the `MicroVM` façade works the same either way.
 *
 * The parent opens every host resource the configuration names (the KVM device, kernel, initrd,
 * drive files; a snapshot's memory file) and passes the descriptors in; the child opens nothing
 * of the host's. Calls cross the control socket as `call`/`reply` messages; the machine's events
 * come back as messages and are forwarded to the façade. Bulk data (guest memory, drive I/O) never
 * crosses: it stays in the child.
 *
 * The child is untrusted: every message is checked (`protocol.ts`), every call has a deadline, and
 * a child that breaks the protocol, misses a deadline or dies ends the VM with reason `'error'`
 * (and the signal, when one killed it). The jail's cgroup and directory are removed before the
 * exit is reported.
 * @module
 */
import * as fs from 'fs';
import * as path from 'path';
import { ConfigError } from '../config';
import { BootError } from '../boot/errors';
import { DeviceError } from '../devices/contract';
import { BlockError } from '../devices/block/errors';
import { tapError } from '../devices/net/factory';
import { netDeviceKind, type NicSpec } from '../devices/net/kind';
import { vsockDeviceKind } from '../devices/vsock/kind';
import { VsockError } from '../devices/vsock/errors';
import { bridgeSocket, type RemoteVsock, type VsockBridgeHandle } from './vsock-bridge';
import { splice } from '../devices/vsock/muxer';
import type { Duplex } from 'stream';
import type { MmdsStore } from '../devices/net/mmds/store';
import type { FrameSwitch } from '../devices/net/config';
import { FramedLink, joinLink } from './link-bridge';
import type { NativeAddon } from '../native/types';
import { NativeError } from '../native/errors';
import { SnapshotError } from '../snapshot/errors';
import { MEMORY_FILE, STATE_FILE } from '../snapshot/format';
import type { LoadedSnapshot, SnapshotInfo } from '../snapshot';
import * as cpu from '../cpu';
import type { VmConfig } from '../vm/config';
import { VmError } from '../vm/errors';
import type { ExitInfo } from '../vm/exit-dispatch';
import type { MachineEvents, MachineHandle, MachineSnapshotOptions } from '../vm/machine';
import type { VmMetrics } from '../vm/metrics';
import { openLocalFileSync } from '../vm/host-resources';
import type { JailConfig } from './config';
import { JailError } from './errors';
import { describeEnd, launchJail, SCRATCH_DIR, type JailProcess } from './launch';
import {
  FrameReader, MAX_CHILD_FRAME, ProtocolViolation, checkChildMessage, encodeFrame,
  type CallOp, type ChildMessage, type WireError,
} from './protocol';

/** How long the child may take to load and report `ready` (Node's start-up, on a loaded host). */
export const READY_TIMEOUT_MS = 30_000;
/** How long a call may take before the child counts as unresponsive. */
export const CALL_TIMEOUT_MS = 30_000;
/** How long a snapshot may take (it writes all of guest memory). */
export const SNAPSHOT_TIMEOUT_MS = 600_000;
/** How long a child that reported its exit may take to end before it is killed. */
const EXIT_GRACE_MS = 5_000;

/** What {@link prepareJail} needs. */
export interface JailLaunchOptions {
  /** The loaded addon (this process's: socket pairs, descriptor passing). */
  addon: NativeAddon;
  /** The file the addon was loaded from (the child loads the same one). */
  addonPath: string;
  /** The validated jail. */
  jail: JailConfig;
  /** Deadlines in ms (defaults {@link READY_TIMEOUT_MS}, {@link CALL_TIMEOUT_MS}, {@link SNAPSHOT_TIMEOUT_MS}). */
  timeouts?: { ready?: number; call?: number; snapshot?: number };
}

/** What {@link startJailedMachine} needs. */
export interface JailedStartOptions extends JailLaunchOptions {
  /** Where the machine's events go. */
  events: MachineEvents;
  /**
   * A child made ready ahead of time by {@link prepareJail} for this VM; without it the jail is
   * built now.
   */
  prepared?: RemoteMachineHandle;
  /** The parent's side of the VM's vsock device, when it has one. */
  vsock?: RemoteVsock;
  /** The VM's metadata store: its data goes with the start message. */
  mmds?: MmdsStore;
  /** The link objects of NICs on in-process links, by NIC id. */
  links?: ReadonlyMap<string, FrameSwitch | Duplex>;
}

/** Where a jailed VM is, for operators and tests. */
export interface JailInfo {
  /** The child's pid (in this process's PID namespace). */
  pid: number;
  /** The jail's root directory on the host (`<chrootBase>/<id>/root`). */
  root: string;
  /** The cgroup directories the child is in. */
  cgroups: readonly string[];
}

/** What the handle uses of a launched jail (a {@link JailProcess}; tests stand in for it). */
export type JailChild = Pick<JailProcess, 'control' | 'ended' | 'pid' | 'root' | 'cgroups' | 'fdSocket' | 'stderrTail' | 'kill' | 'cleanup' | 'oomKills' | 'hold'>;

/** One descriptor for the child and what it is. */
export interface PassedResource {
  meta: { kind: 'kvm' | 'file' | 'memory' | 'tap' | 'vsock' | 'link'; path: string; access: 'read' | 'readWrite'; size: number; blockDevice: boolean; offloads?: number };
  fd: number;
  /** A link pair's other end (this process's), until it is joined to the link. */
  peer?: number;
}

/**
 * Starts a machine in a jailed child.
 * @throws ConfigError KERNEL_NOT_FOUND / INITRD_NOT_FOUND, VmError KVM_UNAVAILABLE, BlockError
 *   OPEN_FAILED (host resources, opened here before anything is built); JailError for the jail;
 *   whatever the child's startMachine threw, as the same class
 */
export async function startJailedMachine(config: VmConfig, opts: JailedStartOptions): Promise<RemoteMachineHandle> {
  let resources: PassedResource[];
  try {
    if (!config.kernel) throw new ConfigError('NO_KERNEL', 'call kernel() before start()');
    resources = await openResources(config, { kernel: true }, opts);
  } catch (e) {
    await opts.prepared?.abort();
    throw e;
  }
  return launchAndSend(config, opts, resources, (files) => ({
    t: 'start', config: childConfig(config), files, vsockPorts: opts.vsock?.ports() ?? [], ...(opts.mmds ? { mmdsData: opts.mmds.get() } : {}),
  }));
}

/**
 * Builds VM `id`'s jail and starts its child, up to the point where the child has loaded
 * everything and installed its seccomp filter and waits for a configuration: what start() then
 * saves. The waiting child does not keep this process alive.
 * @throws JailError JAIL_EXISTS / LAUNCH_FAILED (nothing left behind)
 */
export async function prepareJail(id: string, seccomp: boolean, opts: JailLaunchOptions): Promise<RemoteMachineHandle> {
  const jp = await launchJail({ id, jail: opts.jail, addon: opts.addon, addonPath: opts.addonPath, seccomp });
  const handle = new RemoteMachineHandle(jp, undefined, opts);
  try {
    await handle.ready();
  } catch (e) {
    await handle.abort();
    throw e;
  }
  jp.hold(false);
  return handle;
}

/**
 * Restores a snapshot in a jailed child (the parent has loaded and checked it).
 * @throws as {@link startJailedMachine}; SnapshotError from the child's restore
 */
export async function restoreJailedMachine(
  snap: LoadedSnapshot, config: VmConfig, opts: JailedStartOptions & { memory: 'map' | 'copy'; paused: boolean },
): Promise<RemoteMachineHandle> {
  const resources = await openResources(config, { kernel: false }, opts);
  try {
    const fd = fs.openSync(snap.memoryPath, fs.constants.O_RDONLY);
    resources.push({ meta: { kind: 'memory', path: snap.memoryPath, access: 'read', size: 0, blockDevice: false }, fd });
  } catch (e) {
    closeResources(resources);
    throw new SnapshotError('NOT_FOUND', `cannot open the memory file ${snap.memoryPath}: ${(e as Error).message}`, { field: snap.memoryPath, cause: e });
  }
  const handle = await launchAndSend(config, opts, resources, (files) => ({
    t: 'restore', config: childConfig(config), state: snap.state, dir: snap.dir, memoryPath: snap.memoryPath, memory: opts.memory, paused: opts.paused, files,
    vsockPorts: opts.vsock?.ports() ?? [],
  }));
  return handle;
}

/** The configuration as the child runs it: host quirks resolved here, where /sys can be read. */
function childConfig(config: VmConfig): VmConfig {
  if (config.hostQuirks !== 'auto') return config;
  return { ...config, hostQuirks: cpu.detectHostQuirks().emulatedKvm ? 'emulated-kvm' : 'none' };
}

async function launchAndSend(
  config: VmConfig, opts: JailedStartOptions, resources: PassedResource[], message: (files: number) => object,
): Promise<RemoteMachineHandle> {
  let handle: RemoteMachineHandle;
  if (opts.prepared) {
    handle = opts.prepared;
  } else {
    let jp: JailProcess;
    try {
      jp = await launchJail({ id: config.id, jail: opts.jail, addon: opts.addon, addonPath: opts.addonPath, seccomp: config.seccomp !== false });
    } catch (e) {
      closeResources(resources);
      throw e;
    }
    handle = new RemoteMachineHandle(jp, undefined, opts);
  }
  handle.attach(config, opts.events);
  handle.attachVsock(opts.vsock);
  handle.attachLinks(resources, opts.links);
  try {
    await handle.ready();
    // vsock's Unix socket is this process's: made before the child starts, so that a path that
    // cannot be used fails the start.
    await opts.vsock?.startUds((client) => handle.vsockUdsAccept(client));
    const files = handle.sendBatch(resources);
    await handle.begin(message(files));
  } catch (e) {
    closeResources(resources);
    await handle.abort();
    throw e;
  }
  closeResources(resources);
  return handle;
}

/**
 * Refuses what a jailed child cannot serve: parts of the machine that are objects of this
 * process (devices of your own, in-process links) cannot cross into the child.
 * @throws ConfigError INVALID_JAIL naming the first such part
 */
export function checkJailable(config: VmConfig): void {
  for (const d of config.devices) {
    if (d.kind === 'custom') throw new ConfigError('INVALID_JAIL', 'devices of your own (vm.device()) cannot run in a jailed child');
  }
}

/** Opens what the configuration names, in this process, with the errors start() would give. */
async function openResources(config: VmConfig, what: { kernel: boolean }, opts: JailedStartOptions): Promise<PassedResource[]> {
  checkJailable(config);
  const out: PassedResource[] = [];
  try {
    try {
      const fd = fs.openSync(config.kvmPath, fs.constants.O_RDWR);
      out.push({ meta: { kind: 'kvm', path: config.kvmPath, access: 'readWrite', size: 0, blockDevice: false }, fd });
    } catch (e) {
      throw new VmError('KVM_UNAVAILABLE', `cannot open ${config.kvmPath}: ${(e as Error).message}`, e);
    }
    if (what.kernel && config.kernel) {
      for (const [p, code] of [[config.kernel.path, 'KERNEL_NOT_FOUND'], [config.kernel.initrd, 'INITRD_NOT_FOUND']] as const) {
        if (p === undefined) continue;
        try {
          const f = openLocalFileSync(p, 'read');
          out.push({ meta: { kind: 'file', path: p, access: 'read', size: f.size, blockDevice: f.blockDevice }, fd: f.fd });
        } catch (e) {
          throw new ConfigError(code, `cannot read the ${code === 'KERNEL_NOT_FOUND' ? 'kernel' : 'initrd'} ${p}: ${(e as Error).message}`);
        }
      }
    }
    for (const d of config.drives) out.push(await openDriveFile(d.path, d.readOnly));
    for (const d of config.devices) {
      if (d.kind === 'custom') throw new ConfigError('INVALID_JAIL', 'devices of your own (vm.device()) cannot run in a jailed child');
      if (d.kind === netDeviceKind.kind && (d.config as NicSpec).link) out.push(linkPair(d.id, opts));
      else if (d.kind === netDeviceKind.kind) out.push(openNicTap(d.id, d.config as NicSpec, opts));
    }
  } catch (e) {
    closeResources(out);
    throw e;
  }
  return out;
}

async function openDriveFile(p: string, readOnly: boolean): Promise<PassedResource> {
  const access = readOnly ? 'read' : 'readWrite';
  try {
    const f = openLocalFileSync(p, access);
    return { meta: { kind: 'file', path: p, access, size: f.size, blockDevice: f.blockDevice }, fd: f.fd };
  } catch (e) {
    throw new BlockError('OPEN_FAILED', `cannot open ${p}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * A NIC on an in-process link: a socket pair, the child's end passed in (see link-bridge.ts). This
 * process's end travels in the resource as `peer`, joined to the link once the child has it.
 */
function linkPair(id: string, opts: JailedStartOptions): PassedResource {
  if (!opts.links?.has(id)) throw new ConfigError('INVALID_NIC', `nic ${id} is on an in-process link, and none was given for it`);
  const [ours, theirs] = opts.addon.socketPair('stream');
  return { meta: { kind: 'link', path: id, access: 'readWrite', size: 0, blockDevice: false }, fd: theirs, peer: ours };
}

/**
 * A NIC's TAP, opened here in the jail's network namespace (where the TAP lives; the child could
 * not open /dev/net/tun). Links to in-process switches and streams are objects of this process
 * and cannot cross.
 */
function openNicTap(id: string, config: NicSpec, opts: JailLaunchOptions): PassedResource {
  const name = config.tap;
  if (typeof name !== 'string') {
    throw new ConfigError('INVALID_JAIL', `NIC ${id}: only TAP backends can run in a jailed child (a link is an object of this process)`);
  }
  let tap;
  try {
    tap = opts.addon.openTap(name, opts.jail.netns);
  } catch (e) {
    throw tapError(name, e);
  }
  return { meta: { kind: 'tap', path: name, access: 'readWrite', size: 0, blockDevice: false, offloads: tap.offloads }, fd: tap.fd };
}

function closeResources(list: PassedResource[]): void {
  for (const r of list.splice(0)) {
    for (const fd of r.peer === undefined ? [r.fd] : [r.fd, r.peer]) {
      try { fs.closeSync(fd); } catch { /* already closed */ }
    }
  }
}

/** A call waiting for its reply. */
interface Pending {
  op: CallOp;
  resolve(value: unknown): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout;
}

/** See the module comment. Made by {@link startJailedMachine} / {@link restoreJailedMachine}. */
export class RemoteMachineHandle implements MachineHandle, VsockBridgeHandle {
  cmdline = '';
  /** The parent's side of the VM's vsock device, when it has one. */
  private vsock: RemoteVsock | undefined;
  /** Ends the joins of the NICs' link pairs to their links. */
  private readonly linkJoins: (() => void)[] = [];
  private readonly calls = new Map<number, Pending>();
  private nextId = 1;
  private nextBatch = 1;
  private exitInfo: ExitInfo | undefined;
  private finishing: Promise<ExitInfo> | undefined;
  private started = false;
  private readyWaiter: { resolve(): void; reject(e: unknown): void } | undefined;
  private beginWaiter: { resolve(cmdline: string): void; reject(e: unknown): void } | undefined;
  private isReady = false;
  private snapshotChain: Promise<unknown> = Promise.resolve();
  /** The counters the child sent with its exit report: what metrics() answers afterwards. */
  private finalMetrics: Omit<VmMetrics, 'id' | 'state'> | undefined;
  /** The first thing that went wrong with the child, if anything did before its exit. */
  private failure: ExitInfo | undefined;
  private resolveExited!: (info: ExitInfo) => void;
  /** Resolves with the exit info once the VM has ended and its jail is removed. */
  readonly exited: Promise<ExitInfo> = new Promise((resolve) => { this.resolveExited = resolve; });

  /** The VM's configuration (this process's copy: updates are recorded in it). */
  private config: VmConfig | undefined;
  /** Where the machine's events go (nowhere until {@link attach}). */
  private events: MachineEvents = { serialOutput: () => undefined, serialInputSpace: () => undefined, exited: () => undefined };

  /** @internal */
  constructor(
    private readonly jp: JailChild,
    config: VmConfig | undefined,
    private readonly opts: JailLaunchOptions,
    events?: MachineEvents,
  ) {
    this.config = config;
    if (events) this.events = events;
    const reader = new FrameReader(MAX_CHILD_FRAME, (json, bytes) => this.onFrame(json, bytes), (reason) => this.violation(reason));
    jp.control.on('data', (c: Buffer) => reader.push(c));
    jp.control.on('error', () => undefined);
    this.controlClosed = new Promise<void>((resolve) => jp.control.once('close', () => resolve()));
    jp.control.on('close', () => void this.childGone());
    void jp.ended.then(() => this.childGone());
  }

  /** Resolves once everything the child sent has been read (its end of the socket is closed). */
  private readonly controlClosed: Promise<void>;

  /** Where the VM's process is. */
  get jail(): JailInfo {
    return { pid: this.jp.pid, root: this.jp.root, cgroups: this.jp.cgroups.dirs };
  }

  /** @internal Gives the handle its VM's configuration and events, and lets the child keep this process alive. */
  attach(config: VmConfig, events: MachineEvents): void {
    this.config = config;
    this.events = events;
    this.jp.hold(true);
  }

  /** @internal Waits for the child's `ready`. */
  ready(): Promise<void> {
    if (this.isReady) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const ms = this.opts.timeouts?.ready ?? READY_TIMEOUT_MS;
      const timer = setTimeout(() => {
        this.fail({ reason: 'error', message: `the jailed child did not start within ${ms} ms` });
      }, ms);
      this.readyWaiter = {
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  /** @internal Sends the start/restore message and waits for `started`. */
  begin(message: object): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const ms = this.opts.timeouts?.call ?? CALL_TIMEOUT_MS;
      const timer = setTimeout(() => {
        this.fail({ reason: 'error', message: `the jailed child did not finish starting the VM within ${ms} ms` });
      }, ms);
      this.beginWaiter = {
        resolve: (cmdline) => { clearTimeout(timer); this.cmdline = cmdline; this.started = true; resolve(); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      this.send(message);
    });
  }

  /** @internal Ends a child that failed to start; resolves once its jail is removed. */
  async abort(): Promise<void> {
    this.jp.kill();
    for (const end of this.linkJoins.splice(0)) end();
    await this.vsock?.stopUds();
    this.vsock?.closeAll();
    await this.jp.cleanup();
  }

  /** @internal Passes descriptors (duplicated into the child); returns the batch number. */
  sendBatch(resources: readonly PassedResource[]): number {
    const batch = this.nextBatch++;
    const meta = Buffer.from(JSON.stringify({ batch, items: resources.map((r) => r.meta) }));
    this.opts.addon.sendFds(this.jp.fdSocket, meta, resources.map((r) => r.fd));
    return batch;
  }

  private send(message: object, bytes?: Uint8Array): void {
    if (this.jp.control.destroyed) return;
    this.jp.control.write(encodeFrame(message, bytes));
  }

  private onFrame(json: unknown, bytes: Buffer): void {
    if (this.held) {
      this.held.push([json, bytes]);
      return;
    }
    let m: ChildMessage;
    try {
      m = checkChildMessage(json, bytes);
    } catch (e) {
      this.violation(e instanceof ProtocolViolation ? e.message : String(e));
      return;
    }
    try {
      this.dispatch(m);
    } catch (e) {
      // Our own handlers (the façade's listeners among them) must not let the child's input throw here.
      this.violation(`handling ${m.t} failed: ${(e as Error).message}`);
    }
    if (m.t === 'started') {
      // The guest's first output may be in the same read as `started`. It must reach the caller
      // of start()/restore() after that promise has resolved (which happens in microtasks), so
      // that listeners attached then see it, as in-process (where output leaves on a later turn).
      this.held = [];
      setImmediate(() => {
        const held = this.held ?? [];
        this.held = null;
        for (const [j, b] of held) this.onFrame(j, b);
      });
    }
  }

  /** Frames read in the turn `started` came in, delivered on the next (see onFrame). */
  private held: [unknown, Buffer][] | null = null;

  private dispatch(m: ChildMessage): void {
    switch (m.t) {
      case 'ready':
        if (this.isReady) return this.violation('a second ready');
        this.isReady = true;
        this.readyWaiter?.resolve();
        return;
      case 'started':
        if (!this.beginWaiter || this.started) return this.violation('started out of turn');
        this.beginWaiter.resolve(m.cmdline);
        return;
      case 'failed':
        if (!this.beginWaiter || this.started) return this.violation('failed out of turn');
        this.beginWaiter.reject(fromWireError(m.error));
        return;
      case 'reply': {
        const p = this.calls.get(m.id);
        if (!p) return this.violation(`a reply to call ${m.id}, which is not waiting`);
        this.calls.delete(m.id);
        clearTimeout(p.timer);
        if (m.error) p.reject(fromWireError(m.error));
        else p.resolve(m.value);
        return;
      }
      case 'serial':
        if (!this.started) return this.violation('serial output before the VM started');
        this.events.serialOutput(new Uint8Array(m.bytes.buffer, m.bytes.byteOffset, m.bytes.length));
        return;
      case 'space':
        if (this.started) this.events.serialInputSpace();
        return;
      case 'bootDone':
        if (this.started) this.events.bootDone?.({ elapsedNs: BigInt(m.info.elapsedUs) * 1000n, elapsedUs: m.info.elapsedUs, count: m.info.count });
        return;
      case 'vsockUdsConnect':
        if (!this.started && !this.beginWaiter) return this.violation('a vsock forward before the VM started');
        void this.vsockUdsConnect(m.id, m.port);
        return;
      case 'vsockIncoming':
        // The guest may connect while the child is still reporting its start.
        if (!this.started && !this.beginWaiter) return this.violation('a vsock connection before the VM started');
        this.vsockIncoming(m.conn, m.port);
        return;
      case 'exited':
        if (!this.started) return this.violation('exited before the VM started');
        this.exitInfo ??= m.info;
        if (m.metrics !== undefined) {
          try {
            this.finalMetrics = checkMetrics(m.metrics);
          } catch { /* a bad report only costs the counters */ }
        }
        void this.finish();
        return;
    }
  }

  private violation(reason: string): void {
    this.fail({ reason: 'error', message: `the jailed child broke the control protocol (${reason}); it was killed` }, 'PROTOCOL_ERROR');
  }

  /** Records the first failure, kills the child and ends the handle. */
  private fail(info: ExitInfo, code: 'PROTOCOL_ERROR' | 'UNRESPONSIVE' = 'UNRESPONSIVE'): void {
    if (!this.failure && !this.exitInfo) this.failure = { ...info, signal: 'SIGKILL' };
    const err = new JailError(code, info.message ?? 'the jailed child failed');
    this.readyWaiter?.reject(err);
    this.beginWaiter?.reject(err);
    this.jp.kill();
    void this.finish();
  }

  private childGone(): void {
    if (!this.started) {
      // Starting: report the child's end to whoever waits for it.
      void this.jp.ended.then((end) => {
        const err = new JailError('LAUNCH_FAILED', `the jailed child ended before the VM ran: ${describeEnd(end)}${this.stderrNote()}`);
        this.readyWaiter?.reject(err);
        this.beginWaiter?.reject(err);
      });
      return;
    }
    void this.finish();
  }

  private stderrNote(): string {
    const tail = this.jp.stderrTail.trim();
    return tail ? `; its stderr ends: ${tail.slice(-2000)}` : '';
  }

  /**
   * The end, once: wait for the child (killing it if it lingers), fail what still waits, remove
   * the jail, then report. Only for a VM that started; a failed start is cleaned up by abort().
   */
  private finish(): Promise<ExitInfo> {
    if (!this.started) return Promise.resolve({ reason: 'error' });
    this.finishing ??= (async () => {
      const grace = setTimeout(() => this.jp.kill(), this.exitInfo ? EXIT_GRACE_MS : 0);
      const end = await this.jp.ended;
      clearTimeout(grace);
      // The launcher can report before the last frames are read: read up to the end of the stream
      // (the child is gone, so that is what is already in the socket), but never wait long.
      await Promise.race([this.controlClosed, new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
      let info: ExitInfo;
      if (this.exitInfo && !end.signal) info = this.exitInfo;
      else if (this.failure) info = this.failure;
      else if (end.signal) {
        const oom = end.signal === 'SIGKILL' && this.jp.oomKills() > 0 ? ' (its cgroup\'s memory limit: the OOM killer)' : '';
        info = { reason: 'error', message: `the jailed VM process was killed by ${end.signal}${oom}${this.stderrNote()}`, signal: end.signal };
      }
      else info = { reason: 'error', message: `the jailed VM process ended (${describeEnd(end)}) without reporting why${this.stderrNote()}` };
      for (const [id, p] of this.calls) {
        this.calls.delete(id);
        clearTimeout(p.timer);
        if (p.op === 'stop') p.resolve(undefined);
        else p.reject(new JailError('CHILD_EXITED', `the VM ended (${info.reason}) before ${p.op} completed`));
      }
      await this.vsock?.stopUds();
      this.vsock?.closeAll();
      for (const end of this.linkJoins.splice(0)) end();
      const left = await this.jp.cleanup();
      if (left.length > 0) info = { ...info, closeErrors: [...(info.closeErrors ?? []), ...left.map((l) => ({ id: 'jail', error: `not removed: ${l}` }))] };
      this.exitInfo = info;
      this.resolveExited(info);
      try {
        this.events.exited(info);
      } catch { /* the owner's callback must not undo the teardown */ }
      return info;
    })();
    return this.finishing;
  }

  private call(op: CallOp, args: object = {}, options: { bytes?: Uint8Array; files?: number; timeoutMs?: number } = {}): Promise<unknown> {
    if (this.finishing) return Promise.reject(new ConfigError('NOT_RUNNING', 'the VM has ended'));
    const id = this.nextId++;
    const timeoutMs = options.timeoutMs ?? this.opts.timeouts?.call ?? CALL_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        reject(new JailError('UNRESPONSIVE', `the jailed child did not answer ${op} within ${timeoutMs} ms; it was killed`));
        this.fail({ reason: 'error', message: `the jailed child did not answer ${op} within ${timeoutMs} ms; it was killed` });
      }, timeoutMs);
      this.calls.set(id, { op, resolve, reject, timer });
      this.send({ t: 'call', id, op, ...args, ...(options.files !== undefined ? { files: options.files } : {}) }, options.bytes);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // MachineHandle

  async serialInput(bytes: Uint8Array): Promise<number> {
    if (this.finishing || bytes.length === 0) return 0;
    const n = await this.call('serialInput', {}, { bytes }).catch(() => 0);
    return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= bytes.length ? n : 0;
  }

  async sendCtrlAltDel(): Promise<void> {
    if (this.finishing) return;
    await this.call('sendCtrlAltDel');
  }

  async updateDevice(id: string, update: unknown): Promise<void> {
    const drive = this.config?.drives.find((d) => d.id === id);
    const u = update as { path?: unknown; rateLimiter?: unknown };
    let files: number | undefined;
    if (drive && typeof u.path === 'string') {
      const r = await openDriveFile(u.path, drive.readOnly);
      try {
        files = this.sendBatch([r]);
      } finally {
        closeResources([r]);
      }
    }
    await this.call('updateDevice', { device: id, update }, { files });
    // The child's copy of the configuration changed; keep this one (what a snapshot records) alike.
    if (drive && typeof u.path === 'string') drive.path = u.path;
    if (drive && u.rateLimiter !== undefined) drive.rateLimiter = u.rateLimiter as typeof drive.rateLimiter;
  }

  /** @internal Connects the VM's vsock listeners and connects to this machine. */
  attachVsock(vsock: RemoteVsock | undefined): void {
    this.vsock = vsock;
    vsock?.attach(this);
  }

  /** A socket pair whose second end is passed into the child as batch `files`; returns [ours, files]. */
  private vsockPair(name: string): [number, number] {
    const [ours, theirs] = this.opts.addon.socketPair('stream');
    try {
      return [ours, this.sendBatch([{ meta: { kind: 'vsock', path: name, access: 'readWrite', size: 0, blockDevice: false }, fd: theirs }])];
    } catch (e) {
      this.opts.addon.closeFd(ours);
      throw e;
    } finally {
      this.opts.addon.closeFd(theirs);
    }
  }

  async vsockConnect(port: number, timeoutMs: number): Promise<number> {
    if (this.finishing) throw new VsockError('CLOSED', 'the VM has ended');
    const [ours, files] = this.vsockPair('connect');
    try {
      const callMs = this.opts.timeouts?.call ?? CALL_TIMEOUT_MS;
      await this.call('vsockConnect', { port, timeoutMs }, { files, timeoutMs: timeoutMs + callMs });
      return ours;
    } catch (e) {
      this.opts.addon.closeFd(ours);
      throw e;
    }
  }

  async vsockListen(port: number, listen: boolean): Promise<void> {
    if (this.finishing) return;
    await this.call(listen ? 'vsockListen' : 'vsockUnlisten', { port });
  }

  /** The child reports a guest connection: pass it a pair's end for a listener, or refuse it. */
  private vsockIncoming(conn: number, port: number): void {
    const take = this.vsock?.acceptor(port) ?? null;
    if (!take) {
      this.send({ t: 'vsockAttach', conn });
      return;
    }
    const [ours, files] = this.vsockPair(`in:${conn}`);
    this.send({ t: 'vsockAttach', conn, files });
    take(ours);
  }

  /** @internal A client of the vsock udsPath: passed into the child over a pair. */
  vsockUdsAccept(client: Duplex): void {
    if (this.finishing) {
      client.destroy();
      return;
    }
    const [ours, files] = this.vsockPair('uds-in');
    this.send({ t: 'vsockUdsAccept', files });
    splice(client, bridgeSocket(ours));
  }

  /** The device forwards a guest connection to `<udsPath>_<port>`: connect it here, pass a pair's end. */
  private async vsockUdsConnect(id: number, port: number): Promise<void> {
    const client = await this.vsock?.udsConnect(port) ?? null;
    if (!client || this.finishing) {
      client?.destroy();
      this.send({ t: 'vsockUdsConnected', id });
      return;
    }
    const [ours, files] = this.vsockPair(`uds-out:${id}`);
    this.send({ t: 'vsockUdsConnected', id, files });
    splice(client, bridgeSocket(ours));
  }

  /** Replaces the child's copy of the metadata (the façade's store checked it already). */
  async setMetadata(data: unknown): Promise<void> {
    if (this.finishing) return;
    await this.call('mmdsSet', { data });
  }

  /** The child's metadata (after a restore: the snapshot's), unchecked: the caller's store checks it. */
  async getMetadata(): Promise<unknown> {
    return this.call('mmdsGet');
  }

  /** @internal Joins each link pair's end of this process to its NIC's link object. */
  attachLinks(resources: PassedResource[], links: ReadonlyMap<string, FrameSwitch | Duplex> | undefined): void {
    for (const r of resources) {
      if (r.meta.kind !== 'link' || r.peer === undefined) continue;
      const link = links?.get(r.meta.path);
      const fd = r.peer;
      r.peer = undefined;
      if (link) this.linkJoins.push(joinLink(link, new FramedLink(bridgeSocket(fd))));
      else this.opts.addon.closeFd(fd);
    }
  }

  async deviceStats(id: string): Promise<unknown> {
    // What the device reports (e.g. the balloon's statistics), as the child sends it: plain JSON
    // data, bounded by the protocol's frame limit; the caller reads it as the device's own type.
    const v = await this.call('deviceStats', { device: id });
    if (typeof v !== 'object' || v === null) throw this.badReply('deviceStats', 'not an object');
    return v;
  }

  async metrics(): Promise<Omit<VmMetrics, 'id' | 'state'>> {
    if (this.finishing) {
      await this.finishing;
      if (this.finalMetrics) return this.finalMetrics;
      throw new ConfigError('NOT_RUNNING', 'the jailed VM ended without reporting its final counters');
    }
    const v = await this.call('metrics');
    try {
      return checkMetrics(v);
    } catch (e) {
      throw this.badReply('metrics', (e as Error).message);
    }
  }

  async pause(): Promise<void> {
    if (this.finishing) return;
    await this.call('pause');
  }

  async resume(): Promise<void> {
    if (this.finishing) return;
    await this.call('resume');
  }

  /**
   * The child writes the snapshot into its own writable `/snapshot`; the files are then moved
   * here into `dir` (renamed when on the same filesystem), checked to be plain files the child
   * made (not links to anything else), and handed to this process's user.
   */
  snapshot(dir: string, opts: MachineSnapshotOptions): Promise<SnapshotInfo> {
    const run = this.snapshotChain.then(async () => {
      const v = await this.call('snapshot', { type: opts.type }, { timeoutMs: this.opts.timeouts?.snapshot ?? SNAPSHOT_TIMEOUT_MS });
      const info = checkSnapshotInfo(v);
      if (!info) throw this.badReply('snapshot', 'not a snapshot description');
      await moveSnapshotOut(path.join(this.jp.root, SCRATCH_DIR), dir);
      return { ...info, dir };
    });
    this.snapshotChain = run.catch(() => undefined);
    return run;
  }

  async stop(): Promise<ExitInfo> {
    if (!this.finishing) {
      // The reply may never come (the child ends while answering): the exit is what counts.
      void this.call('stop').catch(() => undefined);
    }
    return this.exited;
  }

  /**
   * Test builds only: makes the child attempt a call its seccomp filter refuses (`'execve'`,
   * `'open'`, `'socket'`, `'ioctl'`). The child is killed; the VM ends with `'error'` and SIGSYS.
   */
  testAttempt(what: 'execve' | 'open' | 'socket' | 'ioctl'): Promise<unknown> {
    return this.call('testAttempt', { what });
  }

  private badReply(op: string, what: string): JailError {
    this.violation(`the reply to ${op} was ${what}`);
    return new JailError('PROTOCOL_ERROR', `the jailed child's reply to ${op} was ${what}; it was killed`);
  }
}

/** Checks the shape of the child's counters (their values are only numbers reported on). */
function checkMetrics(v: unknown): Omit<VmMetrics, 'id' | 'state'> {
  const o = v as Record<string, unknown> | null;
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new Error('not an object');
  for (const k of ['exits', 'serial', 'i8042', 'drives', 'devices']) {
    const f = o[k];
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw new Error(`${k} is not an object`);
  }
  if (typeof o.closeErrors !== 'number') throw new Error('closeErrors is not a number');
  return o as unknown as Omit<VmMetrics, 'id' | 'state'>;
}

/** Checks the child's description of a snapshot it wrote. */
function checkSnapshotInfo(v: unknown): Omit<SnapshotInfo, 'dir'> | undefined {
  const o = v as Record<string, unknown> | null;
  if (o === null || typeof o !== 'object') return undefined;
  const m = o.memory as Record<string, unknown> | null;
  const num = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x >= 0;
  if (typeof o.snapshotId !== 'string' || typeof o.layoutChecksum !== 'string' || (o.type !== 'full' && o.type !== 'diff')) return undefined;
  if (!num(o.stateBytes) || !num(o.captureMs) || !num(o.memoryWriteMs) || m === null || typeof m !== 'object') return undefined;
  if (!num(m.bytes) || !num(m.pagesWritten) || !num(m.pagesZero) || !num(m.pagesAbsent)) return undefined;
  return {
    snapshotId: o.snapshotId, layoutChecksum: o.layoutChecksum, type: o.type, stateBytes: o.stateBytes as number,
    memory: { bytes: m.bytes as number, pagesWritten: m.pagesWritten as number, pagesZero: m.pagesZero as number, pagesAbsent: m.pagesAbsent as number },
    captureMs: o.captureMs as number, memoryWriteMs: o.memoryWriteMs as number,
  };
}

/**
 * Moves the memory and state files the child wrote in `scratch` into `dir`: each is first renamed
 * (or, across filesystems, copied through a descriptor opened without following links) to a
 * temporary name in `dir`, out of the child's reach; then checked to be a regular file with one
 * link, given to this process's user, and renamed into place (memory first: a state file means a
 * complete snapshot). Whatever else the child left in `scratch` is removed.
 * @throws JailError SNAPSHOT_TRANSFER (nothing half-moved is left in `dir`)
 */
export async function moveSnapshotOut(scratch: string, dir: string): Promise<void> {
  const temps: string[] = [];
  try {
    fs.mkdirSync(dir, { recursive: true });
    for (const name of [MEMORY_FILE, STATE_FILE]) {
      const tmp = path.join(dir, `.${name}.from-jail-${process.pid}`);
      temps.push(tmp);
      takeOut(path.join(scratch, name), tmp);
      const st = fs.lstatSync(tmp);
      if (!st.isFile() || st.nlink !== 1) throw new Error(`the child's ${name} is not a plain file`);
      fs.chownSync(tmp, process.geteuid?.() ?? st.uid, process.getegid?.() ?? st.gid);
      fs.chmodSync(tmp, 0o600);
      fs.renameSync(tmp, path.join(dir, name));
      temps.pop();
    }
  } catch (e) {
    for (const t of temps) fs.rmSync(t, { force: true });
    throw new JailError('SNAPSHOT_TRANSFER', `moving the snapshot out of the jail into ${dir} failed: ${(e as Error).message}`, { cause: e });
  } finally {
    clearScratch(scratch);
  }
}

function takeOut(src: string, dst: string): void {
  try {
    fs.renameSync(src, dst);
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
  }
  // Another filesystem: copy from a descriptor that cannot have followed a link.
  const inFd = fs.openSync(src, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(inFd);
    if (!st.isFile() || st.nlink !== 1) throw new Error(`${src} is not a plain file`);
    const outFd = fs.openSync(dst, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      const buf = Buffer.alloc(1024 * 1024);
      let pos = 0;
      for (;;) {
        const n = fs.readSync(inFd, buf, 0, buf.length, pos);
        if (n <= 0) break;
        // Zero runs stay holes, as the child wrote them.
        if (!isZero(buf, n)) fs.writeSync(outFd, buf, 0, n, pos);
        pos += n;
      }
      fs.ftruncateSync(outFd, pos);
    } finally {
      fs.closeSync(outFd);
    }
  } finally {
    fs.closeSync(inFd);
  }
  fs.rmSync(src, { force: true });
}

function isZero(buf: Buffer, n: number): boolean {
  for (let i = 0; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}

function clearScratch(scratch: string): void {
  try {
    for (const e of fs.readdirSync(scratch)) fs.rmSync(path.join(scratch, e), { recursive: true, force: true });
  } catch { /* the jail is gone */ }
}

/** The error a child reported, as this process's class of the same name where it knows it. */
export function fromWireError(w: WireError): Error {
  const code = w.code ?? '';
  switch (w.name) {
    case 'ConfigError': return new ConfigError(code as ConfigError['code'], w.message);
    case 'VmError': return new VmError(code as VmError['code'], w.message);
    case 'BootError': return new BootError(code as BootError['code'], w.message);
    case 'DeviceError': return new DeviceError(code as DeviceError['code'], w.message);
    case 'BlockError': return new BlockError(code as BlockError['code'], w.message);
    case 'NativeError': return new NativeError(code as NativeError['code'], w.message, w.ioctl ?? '', w.errno ?? 0);
    case 'SnapshotError':
      return new SnapshotError(code as SnapshotError['code'], w.message, { field: w.field, expected: w.expected, actual: w.actual });
    case 'JailError': return new JailError(code as JailError['code'], w.message);
    case 'VsockError': return new VsockError(code as VsockError['code'], w.message);
    default: return new JailError('CHILD_ERROR', `${w.name}: ${w.message}`);
  }
}
