/**
 * vsock for a jailed VM. The device, its queues and its connections live in the child, next to
 * guest memory; the parent keeps what the user holds: the listeners and the host ends of the
 * connections. Each connection is a Unix stream socket pair made by the parent: one end becomes
 * the user's Duplex, the other crosses into the child as a descriptor, where it is spliced to the
 * device's {@link VsockSocket}. Bytes then flow child ↔ parent through the kernel, never through
 * the control socket; half-closes and aborts pass through as on any stream socket.
 *
 * The Firecracker-style Unix socket interface (`udsPath`) is the parent's too: it listens at
 * `udsPath` and hands each client to the child over a pair, and a guest connection the device
 * forwards to `<udsPath>_<P>` is connected by the parent, which the child asks by port number only
 * (never by path: the child cannot make the parent open anything else).
 *
 * Descriptors only ever travel parent → child. What the child may ask for is bounded: it can
 * report a guest connection to a port the parent listens on (anything else is refused) or ask for
 * `<udsPath>_<P>`, and the parent holds at most {@link MAX_BRIDGED_CONNECTIONS} connections open
 * or being opened.
 * @module
 */
import * as net from 'net';
import type { Duplex } from 'stream';
import { VsockError } from '../devices/vsock/errors';
import type { UnixServerHandle, VsockHost } from '../devices/vsock/host';
import { createVsockHost } from '../vm/vsock-host';
import type { VsockConnectOptions, VsockDevice } from '../devices/vsock/device';
import { addListener, isU32, type VsockListener } from '../devices/vsock/listeners';
import { VSOCK_DEFAULT_CONNECT_TIMEOUT_MS } from '../devices/vsock/device';
import { splice } from '../devices/vsock/muxer';

/** Clients of udsPath the child keeps while its device's interface is not started yet. */
const EARLY_CLIENTS = 64;

/** Most connections one jailed VM's vsock keeps open in the parent at a time. */
export const MAX_BRIDGED_CONNECTIONS = 1024;

/** What {@link RemoteVsock} needs from the jailed machine (the RemoteMachineHandle). */
export interface VsockBridgeHandle {
  /**
   * Makes a socket pair, passes one end into the child with `vsockConnect`, and resolves with
   * this process's end once the guest accepted (rejects with the child's VsockError otherwise).
   */
  vsockConnect(port: number, timeoutMs: number): Promise<number>;
  /** Registers (or drops) a host port in the child's device. */
  vsockListen(port: number, listen: boolean): Promise<void>;
}

/** A socket over one end of a pair: half-open, so `end()` is a half-close as on a VsockSocket. */
export function bridgeSocket(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
}

/**
 * The parent's side of a jailed VM's vsock device: `connect` and `listen` as on the in-process
 * {@link VsockDevice}, usable before start (listeners) and across the child's life.
 */
export class RemoteVsock {
  private readonly listeners = new Map<number, (socket: Duplex) => void>();
  private handle: VsockBridgeHandle | undefined;
  private open = 0;
  /** The connections open now (host ends, and clients of udsPath and of its forwards). */
  private readonly sockets = new Set<Duplex>();
  private server: UnixServerHandle | null = null;

  /**
   * @param udsPath where the Unix socket interface listens, when the device has one
   * @param host Unix sockets of this process (tests stand in for them)
   */
  constructor(private readonly udsPath?: string, private readonly host: VsockHost = createVsockHost()) {}

  /**
   * @internal Starts listening at `udsPath` (before the child starts, so that a socket that
   * cannot be made fails the start); `accept` passes each client on.
   * @throws VsockError UDS_FAILED
   */
  async startUds(accept: (client: Duplex) => void): Promise<void> {
    if (this.udsPath === undefined || this.server) return;
    this.server = await this.host.listenUnix(this.udsPath, (client) => {
      if (this.open >= MAX_BRIDGED_CONNECTIONS) {
        client.destroy();
        return;
      }
      this.track(client);
      accept(client);
    });
  }

  /** @internal Stops listening at `udsPath` (the socket file is removed). */
  async stopUds(): Promise<void> {
    const server = this.server;
    this.server = null;
    await server?.close();
  }

  /**
   * @internal The device forwards a guest connection to `<udsPath>_<port>`: the connected client,
   * or null when there is no udsPath, nobody listens there, or too many are open.
   */
  async udsConnect(port: number): Promise<Duplex | null> {
    if (this.udsPath === undefined || !isU32(port) || this.open >= MAX_BRIDGED_CONNECTIONS) return null;
    this.open++;
    let client: Duplex;
    try {
      client = await this.host.connectUnix(`${this.udsPath}_${port}`);
    } catch {
      this.open--;
      return null;
    }
    this.open--;
    return this.track(client);
  }

  /** The ports listened on now (sent with the start message, so a guest's first connect finds them). */
  ports(): number[] {
    return [...this.listeners.keys()];
  }

  /** @internal The machine is there: later listen()/close() go to it. */
  attach(handle: VsockBridgeHandle | undefined): void {
    this.handle = handle;
  }

  /**
   * Accepts guest connections to host port `port`.
   * @throws VsockError BAD_PORT / BAD_CONFIG / PORT_IN_USE
   */
  listen(port: number, handler: (socket: Duplex) => void): VsockListener {
    const listener = addListener(this.listeners, port, handler, () => {
      void this.handle?.vsockListen(port, false).catch(() => undefined);
    });
    // A machine that ended refuses; there is nothing left to listen to then.
    void this.handle?.vsockListen(port, true).catch(() => undefined);
    return listener;
  }

  /**
   * Connects to a guest listener on `port`.
   * @throws VsockError BAD_PORT / TOO_MANY_CONNECTIONS, and what the device in the child reports
   *   (CONNECTION_REFUSED, CONNECT_TIMEOUT…)
   */
  async connect(port: number, options: VsockConnectOptions = {}): Promise<Duplex> {
    if (!isU32(port)) throw new VsockError('BAD_PORT', `port ${String(port)} is not a u32`);
    if (!this.handle) throw new VsockError('CLOSED', 'the VM is not running');
    if (this.open >= MAX_BRIDGED_CONNECTIONS) throw new VsockError('TOO_MANY_CONNECTIONS', `${MAX_BRIDGED_CONNECTIONS} vsock connections are open`);
    const timeoutMs = options.timeoutMs ?? VSOCK_DEFAULT_CONNECT_TIMEOUT_MS;
    return this.track(bridgeSocket(await this.handle.vsockConnect(port, timeoutMs)));
  }

  /**
   * @internal The child reports a guest connection to `port`: the handler that takes it, or null
   * to refuse it (no listener there, or too many open).
   */
  acceptor(port: number): ((fd: number) => void) | null {
    const handler = this.listeners.get(port);
    if (!handler || this.open >= MAX_BRIDGED_CONNECTIONS) return null;
    return (fd) => {
      const socket = this.track(bridgeSocket(fd));
      try {
        handler(socket);
      } catch {
        socket.destroy();
      }
    };
  }

  private track<T extends Duplex>(socket: T): T {
    this.open++;
    this.sockets.add(socket);
    socket.once('close', () => {
      this.open--;
      this.sockets.delete(socket);
    });
    return socket;
  }

  /**
   * @internal The VM ended: its connections end with it, as an in-process device's do. (The
   * child's ends are gone, but a half-open socket here would only see end of stream and stay
   * open for writing, keeping this process alive.)
   */
  closeAll(): void {
    for (const socket of [...this.sockets]) socket.destroy();
  }
}

/**
 * The child's {@link VsockHost}: the device's Unix socket interface, served by the parent. Clients
 * of `udsPath` arrive as descriptors ({@link ChildVsockHost.accepted}); a forward to
 * `<udsPath>_<P>` is a request for port P, answered with a descriptor or a refusal.
 */
export class ChildVsockHost implements VsockHost {
  readonly timers = createVsockHost().timers;
  private onClient: ((stream: Duplex) => void) | null = null;
  private readonly pending = new Map<number, { resolve: (s: Duplex) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private readonly early: number[] = [];

  /**
   * @param udsPath the device's udsPath (the parent's path; nothing is opened here)
   * @param request asks the parent to connect `<udsPath>_<port>` (`vsockUdsConnect`)
   * @param closeFd closes a descriptor nobody takes
   */
  constructor(
    private readonly udsPath: string | undefined,
    private readonly request: (id: number, port: number) => void,
    private readonly closeFd: (fd: number) => void,
  ) {}

  listenUnix(_path: string, onConnection: (stream: Duplex) => void): Promise<UnixServerHandle> {
    this.onClient = onConnection;
    for (const fd of this.early.splice(0)) onConnection(bridgeSocket(fd));
    return Promise.resolve({ close: async () => { this.onClient = null; } });
  }

  connectUnix(p: string): Promise<Duplex> {
    const prefix = `${this.udsPath ?? ''}_`;
    const port = Number(p.slice(prefix.length));
    if (this.udsPath === undefined || !p.startsWith(prefix) || !isU32(port)) {
      return Promise.reject(new VsockError('UDS_FAILED', `${p} is not a forwarding path of this device`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.request(id, port);
    });
  }

  /** The parent passed a client of `udsPath`. */
  accepted(fd: number): void {
    if (this.onClient) this.onClient(bridgeSocket(fd));
    // A client quicker than the machine's start waits for the device's interface to start.
    else if (this.early.length < EARLY_CLIENTS) this.early.push(fd);
    else this.closeFd(fd);
  }

  /** The parent's answer to request `id`: the connected stream's descriptor, or null. */
  connected(id: number, fd: number | null): void {
    const p = this.pending.get(id);
    this.pending.delete(id);
    if (!p) {
      if (fd !== null) this.closeFd(fd);
      return;
    }
    if (fd === null) p.reject(new VsockError('UDS_FAILED', `nothing listens at ${this.udsPath}_<port> (or the host refused it)`));
    else p.resolve(bridgeSocket(fd));
  }
}

/**
 * The child's side: the device's listeners and connects on behalf of the parent, each connection
 * spliced to the descriptor the parent passed for it.
 */
export class ChildVsockBridge {
  private readonly listeners = new Map<number, VsockListener>();
  private readonly waiting = new Map<number, Duplex>();
  private nextConn = 0;

  /**
   * @param device the machine's vsock device
   * @param report sends `vsockIncoming` to the parent
   */
  constructor(private readonly device: VsockDevice, private readonly report: (conn: number, port: number) => void) {}

  /** Registers or drops host port `port` (the parent's listeners). */
  listen(port: number, listen: boolean): void {
    if (!listen) {
      this.listeners.get(port)?.close();
      this.listeners.delete(port);
      return;
    }
    if (this.listeners.has(port)) return;
    this.listeners.set(port, this.device.listen(port, (socket) => {
      const conn = this.nextConn++;
      this.waiting.set(conn, socket);
      socket.once('close', () => this.waiting.delete(conn));
      this.report(conn, port);
    }));
  }

  /** The parent's answer to `vsockIncoming`: the descriptor of its pair's end, or null (refused). */
  attach(conn: number, fd: number | null, closeFd: (fd: number) => void): void {
    const socket = this.waiting.get(conn);
    this.waiting.delete(conn);
    if (fd === null) {
      socket?.destroy();
      return;
    }
    if (!socket || socket.destroyed) {
      closeFd(fd);
      return;
    }
    splice(socket, bridgeSocket(fd));
  }

  /** Connects to guest `port` and splices the connection to `fd`; resolves with the local port. */
  async connect(port: number, timeoutMs: number, fd: number, closeFd: (fd: number) => void): Promise<number> {
    let socket;
    try {
      socket = await this.device.connect(port, { timeoutMs });
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    splice(socket, bridgeSocket(fd));
    return socket.localPort;
  }
}
