/**
 * The jailed child: the entry point the launcher execs (`node dist/cjs/jail/child.js`) inside the
 * jail, already in its namespaces and cgroup, as the jail's user, without capabilities.
 *
 * It loads everything the machine needs (this module imports it all, and the addon), installs the
 * seccomp filter for the whole process (`lib/seccomp/process.ts`; from then on an unexpected call
 * kills it), reports `ready`, and only then reads the configuration. The machine is the same
 * `startMachine`/`restoreMachine` as in-process; host resources come from the descriptors the
 * parent passed ({@link PassedResources}), and the machine's events go back over the control
 * socket. When the machine ends, or the parent goes away, the child exits.
 * @module
 */
import * as net from 'net';
import { loadNative } from '../native/binding';
import type { NativeAddon, NativeKvm } from '../native/types';
import { startMachine, restoreMachine, type MachineEvents, type MachineHandle } from '../vm/machine';
import type { HostFile, HostFileAccess, HostResources } from '../vm/host-resources';
import type { TapInfo } from '../devices/net/host';
import type { VmConfig } from '../vm/config';
import { kindlingVersion, type SnapshotState } from '../snapshot/format';
import type { LoadedSnapshot } from '../snapshot';
import { processSeccompFilter } from '../seccomp/process';
import type { VirtioDevice } from '../virtio/device';
import { createVsockDevice } from '../devices/vsock/device';
import { vsockDeviceKind, type VsockSpec } from '../devices/vsock/kind';
import { ChildVsockBridge, ChildVsockHost, bridgeSocket } from './vsock-bridge';
import { FramedLink, childLink } from './link-bridge';
import type { FrameSwitch } from '../devices/net/config';
import { MmdsStore } from '../devices/net/mmds/store';
import { checkMmdsOptions } from '../devices/net/config';
import { netDeviceKind, type NicSpec } from '../devices/net/kind';
import { CONTROL_FD, FD_CHANNEL_FD, SCRATCH_DIR } from './launch';
import { FrameReader, MAX_PARENT_FRAME, encodeFrame, toWireError, wireExitInfo } from './protocol';

/** What one passed descriptor is (as the parent described it). */
interface PassedMeta {
  kind: 'kvm' | 'file' | 'memory' | 'tap' | 'vsock' | 'link';
  /** The file's path, or the TAP's name. */
  path: string;
  access: HostFileAccess;
  size: number;
  blockDevice: boolean;
  /** A TAP's offload flags (what `openTap` probed). */
  offloads?: number;
}

/**
 * {@link HostResources} from descriptors the parent passed in batches over the descriptor socket.
 * Each descriptor is handed out once, to the first request for its kind, path and access; one
 * that nobody asked for is closed when the operation that brought it is over.
 */
export class PassedResources implements HostResources {
  private readonly table = new Map<string, { meta: PassedMeta; fd: number }[]>();
  private readonly batches = new Set<number>();

  constructor(private readonly addon: NativeAddon, private readonly socket: number) {}

  /**
   * Reads batches from the descriptor socket until batch `n` is in (the parent sends a batch
   * before the message that names it, so it is there already).
   */
  receive(n: number): void {
    while (!this.batches.has(n)) {
      const msg = this.addon.receiveFds(this.socket, 1 << 20, 253);
      if (msg === null) throw new Error(`descriptor batch ${n} has not arrived`);
      if (msg.data.length === 0 && msg.fds.length === 0) throw new Error('the descriptor socket is closed');
      let meta: { batch: number; items: PassedMeta[] };
      try {
        meta = JSON.parse(msg.data.toString('utf8')) as { batch: number; items: PassedMeta[] };
        if (!Array.isArray(meta.items) || meta.items.length !== msg.fds.length) throw new Error('descriptor count mismatch');
      } catch (e) {
        for (const fd of msg.fds) this.close(fd);
        throw e;
      }
      meta.items.forEach((m, i) => {
        const key = this.key(m.kind, m.access, m.path);
        this.table.set(key, [...(this.table.get(key) ?? []), { meta: m, fd: msg.fds[i] }]);
      });
      this.batches.add(meta.batch);
    }
  }

  private key(kind: PassedMeta['kind'], access: HostFileAccess, p: string): string {
    return `${kind}\0${access}\0${p}`;
  }

  /** Takes the descriptor passed for `kind`/`access`/`path`. */
  take(kind: PassedMeta['kind'], access: HostFileAccess, p: string): { meta: PassedMeta; fd: number } {
    const list = this.table.get(this.key(kind, access, p));
    const entry = list?.shift();
    if (!entry) throw new Error(`${p} was not passed into the jail (${kind}, ${access})`);
    return entry;
  }

  /** Closes every descriptor nobody took. */
  closeUnused(): void {
    for (const list of this.table.values()) for (const e of list.splice(0)) this.close(e.fd);
    this.table.clear();
  }

  /** Closes a descriptor (one nobody takes, or a taken one that found no use); never throws. */
  close(fd: number): void {
    try { this.addon.closeFd(fd); } catch { /* already closed */ }
  }

  openKvm(p: string): NativeKvm {
    const { fd } = this.take('kvm', 'readWrite', p);
    try {
      return this.addon.adoptKvm(fd);
    } catch (e) {
      this.close(fd);
      throw e;
    }
  }

  openImage(p: string): HostFile {
    const { meta, fd } = this.take('file', 'read', p);
    return { fd, size: meta.size, blockDevice: meta.blockDevice };
  }

  async openFile(p: string, access: HostFileAccess): Promise<HostFile> {
    const { meta, fd } = this.take('file', access, p);
    return { fd, size: meta.size, blockDevice: meta.blockDevice };
  }

  openTap(name: string): TapInfo {
    const { meta, fd } = this.take('tap', 'readWrite', name);
    return { fd, name: meta.path, offloads: meta.offloads ?? 0 };
  }
}

/** The child's main loop; see the module comment. */
export function runChild(): void {
  const addon = loadNative();
  // Everything read from files is read now: after the filter, nothing can be opened for reading.
  // The package version (snapshots record it), and the local time zone (V8 and ICU look it up
  // once, on first use of a local date).
  kindlingVersion();
  void new Date().toString();
  void Intl.DateTimeFormat().resolvedOptions().timeZone;
  const control = new net.Socket({ fd: CONTROL_FD, readable: true, writable: true });
  if (process.env.KINDLING_JAIL_SECCOMP !== '0') addon.installProcessSeccomp(processSeccompFilter());
  const resources = new PassedResources(addon, FD_CHANNEL_FD);
  let machine: MachineHandle | undefined;
  let vsock: ChildVsockBridge | undefined;
  let vsockHost: ChildVsockHost | undefined;
  let mmds: MmdsStore | undefined;
  let ending = false;
  const closeFd = (fd: number) => resources.close(fd);
  const send = (m: object, bytes?: Uint8Array) => {
    if (!control.destroyed) control.write(encodeFrame(m, bytes));
  };
  const exit = () => {
    if (ending) return;
    ending = true;
    control.end(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  const events: MachineEvents = {
    serialOutput: (bytes) => send({ t: 'serial' }, bytes),
    serialInputSpace: () => send({ t: 'space' }),
    bootDone: (info) => send({ t: 'bootDone', info: { elapsedUs: info.elapsedUs, count: info.count } }),
    exited: (info) => {
      // The machine's final counters go with it: the parent answers metrics() from them afterwards.
      void Promise.resolve(machine?.metrics()).catch(() => undefined).then((metrics) => {
        send({ t: 'exited', info: wireExitInfo(info), ...(metrics ? { metrics } : {}) });
        exit();
      });
    },
  };

  const begin = async (m: Record<string, unknown>) => {
    try {
      resources.receive(m.files as number);
      const config = m.config as VmConfig;
      // The vsock device is built here, before the machine, so that the parent's listeners are in
      // place when the guest first runs.
      const customDevices = new Map<string, VirtioDevice>();
      const vsockSpec = config.devices.find((d) => d.kind === vsockDeviceKind.kind);
      if (vsockSpec) {
        const spec = vsockSpec.config as VsockSpec;
        vsockHost = new ChildVsockHost(spec.udsPath, (id, port) => send({ t: 'vsockUdsConnect', id, port }), closeFd);
        const device = createVsockDevice(spec, vsockHost);
        customDevices.set(vsockSpec.id, device);
        vsock = new ChildVsockBridge(device, (conn, port) => send({ t: 'vsockIncoming', conn, port }));
        for (const port of Array.isArray(m.vsockPorts) ? m.vsockPorts : []) vsock.listen(Number(port), true);
      }
      // The metadata store is this process's copy of the parent's: the data the parent had at
      // start, then each change it makes (mmdsSet); a restore brings the snapshot's.
      if (config.mmds) {
        mmds = new MmdsStore(checkMmdsOptions(config.mmds, config.devices.filter((d) => d.kind === netDeviceKind.kind).map((d) => d.id)));
        if (m.mmdsData !== undefined) mmds.set(m.mmdsData);
      }
      // NICs on the parent's in-process links: each attaches to its socket pair's end.
      const links = new Map<string, FrameSwitch>();
      for (const d of config.devices) {
        if (d.kind !== netDeviceKind.kind || !(d.config as NicSpec).link) continue;
        links.set(d.id, childLink(new FramedLink(bridgeSocket(resources.take('link', 'readWrite', d.id).fd))));
      }
      if (m.t === 'start') {
        machine = await startMachine(config, { addon, events, resources, customDevices, mmds, links });
      } else {
        const memory = resources.take('memory', 'read', String(m.memoryPath));
        const snap: LoadedSnapshot = { dir: String(m.dir), state: m.state as SnapshotState, memoryPath: memory.meta.path, memoryFd: memory.fd };
        try {
          machine = await restoreMachine(snap, config, { addon, events, resources, customDevices, mmds, links, memory: m.memory as 'map' | 'copy', paused: m.paused === true });
        } finally {
          addon.closeFd(memory.fd);
        }
      }
      resources.closeUnused();
      send({ t: 'started', cmdline: machine.cmdline });
    } catch (e) {
      resources.closeUnused();
      send({ t: 'failed', error: toWireError(e) });
      exit();
    }
  };

  const call = async (m: Record<string, unknown>, bytes: Buffer) => {
    const id = m.id as number;
    try {
      if (!machine) throw new Error('no machine');
      if (typeof m.files === 'number') resources.receive(m.files);
      let value: unknown;
      switch (m.op) {
        case 'serialInput': value = await machine.serialInput(bytes); break;
        case 'sendCtrlAltDel': await machine.sendCtrlAltDel(); break;
        case 'updateDevice': await machine.updateDevice(String(m.device), m.update); break;
        case 'deviceStats': value = await machine.deviceStats(String(m.device)); break;
        case 'metrics': value = await machine.metrics(); break;
        case 'pause': await machine.pause(); break;
        case 'resume': await machine.resume(); break;
        case 'snapshot': value = await machine.snapshot(`/${SCRATCH_DIR}`, { type: m.type === 'diff' ? 'diff' : 'full' }); break;
        case 'stop': value = wireExitInfo(await machine.stop()); break;
        case 'testAttempt': value = testAttempt(addon, String(m.what)); break;
        case 'vsockConnect': {
          if (!vsock) throw new Error('this VM has no vsock device');
          const { fd } = resources.take('vsock', 'readWrite', 'connect');
          value = await vsock.connect(Number(m.port), Number(m.timeoutMs), fd, closeFd);
          break;
        }
        case 'mmdsSet':
          if (!mmds) throw new Error('this VM has no metadata service');
          mmds.set(m.data);
          break;
        case 'mmdsGet':
          if (!mmds) throw new Error('this VM has no metadata service');
          value = mmds.get();
          break;
        case 'vsockListen':
        case 'vsockUnlisten':
          if (!vsock) throw new Error('this VM has no vsock device');
          vsock.listen(Number(m.port), m.op === 'vsockListen');
          break;
        default: throw new Error(`unknown call ${String(m.op)}`);
      }
      send(value === undefined ? { t: 'reply', id } : { t: 'reply', id, value });
    } catch (e) {
      send({ t: 'reply', id, error: toWireError(e) });
    } finally {
      resources.closeUnused();
    }
  };

  const attach = (m: Record<string, unknown>) => {
    const conn = Number(m.conn);
    if (typeof m.files !== 'number') {
      vsock?.attach(conn, null, closeFd);
      return;
    }
    try {
      resources.receive(m.files);
      const { fd } = resources.take('vsock', 'readWrite', `in:${conn}`);
      if (vsock) vsock.attach(conn, fd, closeFd);
      else closeFd(fd);
    } catch {
      vsock?.attach(conn, null, closeFd);
    }
  };

  /** A client of the udsPath, or the parent's answer to a forward (with a descriptor or without). */
  const udsAnswer = (m: Record<string, unknown>) => {
    let fd: number | null = null;
    if (typeof m.files === 'number') {
      try {
        resources.receive(m.files);
        fd = resources.take('vsock', 'readWrite', m.t === 'vsockUdsAccept' ? 'uds-in' : `uds-out:${Number(m.id)}`).fd;
      } catch { /* no descriptor: a refusal */ }
    }
    if (m.t === 'vsockUdsAccept') {
      if (fd === null) return;
      if (vsockHost) vsockHost.accepted(fd);
      else closeFd(fd);
    } else {
      vsockHost?.connected(Number(m.id), fd);
    }
  };

  const reader = new FrameReader(MAX_PARENT_FRAME, (json, bytes) => {
    const m = json as Record<string, unknown>;
    if (m.t === 'start' || m.t === 'restore') void begin(m);
    else if (m.t === 'call') void call(m, bytes);
    else if (m.t === 'vsockAttach') attach(m);
    else if (m.t === 'vsockUdsAccept' || m.t === 'vsockUdsConnected') udsAnswer(m);
  }, () => {
    // The parent is not speaking the protocol: nothing sensible can follow.
    process.exit(2);
  });
  control.on('data', (c: Buffer) => reader.push(c));
  control.on('error', () => undefined);
  // The parent went away: end the machine (its teardown reports to nobody) and leave.
  control.on('close', () => {
    if (machine) void machine.stop().finally(() => process.exit(0));
    else process.exit(0);
  });
  send({ t: 'ready' });
}

/** Test builds: the forbidden call the parent asked for (the addon's `_testing.jailAttempt`). */
function testAttempt(addon: NativeAddon, what: string): number {
  const hooks = (addon as unknown as { _testing?: { jailAttempt?: (what: string) => number } })._testing;
  if (!hooks?.jailAttempt) throw new Error('this addon has no test hooks (a test build is needed)');
  return hooks.jailAttempt(what);
}

if (require.main === module) runChild();
