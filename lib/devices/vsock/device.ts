/**
 * The virtio-vsock device (virtio 1.2 §5.10), stream sockets only.
 *
 * Queues: rx (0) holds empty buffers the device fills with packets for the guest, tx (1) carries
 * the guest's packets, event (2) holds buffers for `struct virtio_vsock_event`. The host is CID 2.
 *
 * - Guest-initiated: a REQUEST to host port P is accepted when a {@link VsockDevice.listen} handler
 *   has P (or, with `udsPath`, when a Unix socket listens at `<udsPath>_<P>`), else answered with
 *   RST.
 * - Host-initiated: {@link VsockDevice.connect} sends a REQUEST from a local port in [2^30, 2^31)
 *   and resolves with a {@link VsockSocket} on RESPONSE; RST rejects with `CONNECTION_REFUSED`.
 * - Per-connection credit, shutdown halves and back-pressure: see `connection.ts` and `socket.ts`.
 *
 * Every guest header is hostile: a spoofed source CID or a length that does not match the chain
 * is dropped; a packet for another CID, another socket type, an unknown operation or an unknown
 * connection is answered with RST (bounded: at most {@link VSOCK_MAX_ORPHAN_RSTS} such answers wait
 * for receive buffers, the rest are dropped and counted). A guest that sends beyond its credit, or
 * data on a connection that cannot take it, has that connection reset. Host memory per connection
 * is bounded by its buffer size plus one host write.
 *
 * Receive buffers are popped only when there is something to put in them, and event buffers only
 * when there is an event, so the device holds no guest buffers between packets and its state is
 * the connection table alone.
 * @module
 */
import { ChainReader, ChainWriter, type DescriptorChain } from '../../virtio/chain';
import { VIRTIO_ID_VSOCK, featureBit } from '../../virtio/constants';
import type { VirtioDevice, VirtioDeviceContext } from '../../virtio/device';
import type { Queue } from '../../virtio/queue';
import { DeviceError, encodeBytes, stateField, type StateObject, type StateValue } from '../contract';
import type { VsockConfig } from './config';
import { VSOCK_MAX_BUFFER_SIZE, VSOCK_MIN_BUFFER_SIZE } from './config';
import { VsockConnection, connectionKey, u32Diff, type ConnectionOrigin, type ConnectionOwner, type OutgoingPacket } from './connection';
import {
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_F_STREAM,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_MASK,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_CONFIG_SIZE,
  VSOCK_EVENT_QUEUE,
  VSOCK_EVENT_SIZE,
  VSOCK_HDR_SIZE,
  VSOCK_HOST_CID,
  VSOCK_LOCAL_PORT_END,
  VSOCK_LOCAL_PORT_FIRST,
  VSOCK_MAX_PAYLOAD,
  VSOCK_QUEUE_SIZE,
  VSOCK_RX_QUEUE,
  VSOCK_TX_QUEUE,
} from './constants';
import { addListener, isU32, type VsockListener } from './listeners';
import { VsockError } from './errors';
import type { VsockHost } from './host';
import { UdsMuxer, splice } from './muxer';
import { checkGuestHeader, decodeHeader, encodeHeader, type VsockHeader } from './packet';
import { VsockSocket } from './socket';

/** Counters of a virtio-vsock device. */
export interface VsockMetrics {
  /** Connections open now. */
  readonly connections: number;
  /** Connections the guest opened and the host accepted. */
  readonly guestConnections: number;
  /** Connections the host opened and the guest accepted. */
  readonly hostConnections: number;
  /** Guest REQUESTs refused (no listener, limit reached, forwarding failed). */
  readonly refusedRequests: number;
  /** Host connects the guest refused with RST. */
  readonly connectRefused: number;
  /** Host connects the guest did not answer in time. */
  readonly connectTimeouts: number;
  /** Packets put into receive buffers (to the guest). */
  readonly rxPackets: number;
  /** Payload bytes sent to the guest. */
  readonly rxBytes: number;
  /** Packets taken from the transmit queue (from the guest). */
  readonly txPackets: number;
  /** Payload bytes received from the guest. */
  readonly txBytes: number;
  /** RSTs sent to the guest. */
  readonly rstSent: number;
  /** RSTs received from the guest. */
  readonly rstReceived: number;
  /** CREDIT_UPDATEs sent. */
  readonly creditUpdatesSent: number;
  /** CREDIT_REQUESTs sent (host writer out of guest credit). */
  readonly creditRequestsSent: number;
  /** Guest chains too short for a header, or malformed. */
  readonly malformedChains: number;
  /** Guest packets dropped: source CID not the guest's. */
  readonly badSourceCid: number;
  /** Guest packets dropped: length over 64 KiB, beyond the chain, or on an operation without payload. */
  readonly badLength: number;
  /** Guest packets answered with RST: another destination CID, socket type or an unknown op. */
  readonly rejectedPackets: number;
  /** Guest packets for no known connection. */
  readonly unknownConnection: number;
  /** Connections reset because the guest broke the protocol (credit exceeded, data when it may not send). */
  readonly protocolViolations: number;
  /** RST answers dropped because too many were waiting for receive buffers. */
  readonly droppedRsts: number;
  /** Receive buffers returned empty: too small for any packet that was waiting. */
  readonly rxBuffersTooSmall: number;
  /** Events written to the event queue. */
  readonly events: number;
  /** Host-requested transport resets. */
  readonly transportResets: number;
  /** Listener handlers that threw. */
  readonly handlerErrors: number;
  /** Connections continued from a snapshot. */
  readonly restoredConnections: number;
  /** Unix socket clients accepted (udsPath). */
  readonly udsAccepted: number;
  /** Unix socket clients with a malformed CONNECT line. */
  readonly udsBadRequests: number;
  /** Unix socket clients whose guest connect failed. */
  readonly udsConnectFailures: number;
  /** Guest connections forwarded to `<udsPath>_<port>`. */
  readonly udsForwarded: number;
  /** Guest connections whose `<udsPath>_<port>` could not be reached. */
  readonly udsForwardFailures: number;
  /** Used-buffer interrupts raised. */
  readonly notifications: number;
  /** Ring-level failures (the device then needs a reset). */
  readonly queueErrors: number;
  /** Config space writes (nothing is writable). */
  readonly configWritesIgnored: number;
}

/** Version of {@link VsockDevice.saveState}'s format. */
export const VSOCK_STATE_VERSION = 1;
/** RST answers to unknown connections that may wait for receive buffers. */
export const VSOCK_MAX_ORPHAN_RSTS = 256;
/** Default {@link VsockConnectOptions.timeoutMs}. */
export const VSOCK_DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** Largest host data one restored connection may carry (its pending write). */
const MAX_RESTORED_TX_BYTES = 64 * 1024 * 1024;

/** Options of a vsock connect (`vm.vsockConnect()`). */
export interface VsockConnectOptions {
  /** How long to wait for the guest's RESPONSE, in ms (default 5000). */
  timeoutMs?: number;
}

/** Called with each accepted guest connection. */
export type VsockConnectionHandler = (socket: VsockSocket) => void;

export type { VsockListener } from './listeners';

/** Construction parameters of a {@link VsockDevice}. */
export interface VsockDeviceConfig extends VsockConfig {
  /** Device id in metrics and snapshots (default `'vsock'`). */
  id?: string;
}

interface PendingConnect {
  socket: VsockSocket;
  resolve: (s: VsockSocket) => void;
  reject: (e: Error) => void;
  timer: unknown;
}

/** An RST owed to a guest packet that matched no connection: reply addresses. */
interface OrphanRst {
  /** Source CID of the reply (the CID the guest addressed). */
  srcCid: number;
  srcPort: number;
  dstPort: number;
}

const ORIGINS: readonly ConnectionOrigin[] = ['host', 'uds', 'guest', 'guest-uds'];
const STATES = ['connecting', 'accepting', 'established'] as const;

/** virtio-vsock device model; see the module comment. */
export class VsockDevice implements VirtioDevice<VsockMetrics>, ConnectionOwner {
  /** VIRTIO_ID_VSOCK. */
  readonly deviceType = VIRTIO_ID_VSOCK;
  /** Device kind in metrics and snapshots. */
  readonly kind = 'virtio-vsock';
  /** See {@link VSOCK_STATE_VERSION}. */
  readonly stateVersion = VSOCK_STATE_VERSION;
  /** rx, tx, event. */
  readonly queueMaxSizes: readonly number[] = Object.freeze([VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE]);
  /** VIRTIO_VSOCK_F_STREAM. */
  readonly deviceFeatures = featureBit(VIRTIO_VSOCK_F_STREAM);
  /** Device id. */
  readonly id: string;
  /** The guest's context id. */
  readonly guestCid: number;
  /** Receive buffer per connection (buf_alloc). */
  readonly bufferSize: number;
  /** Connection limit. */
  readonly maxConnections: number;
  /** The Firecracker-compatible Unix socket interface, when `udsPath` was given. */
  readonly muxer: UdsMuxer | null;

  private readonly host: VsockHost;
  private ctx: VirtioDeviceContext | null = null;
  private closed = false;
  private readonly conns = new Map<string, VsockConnection>();
  /** Connections that may have something to send, in round-robin order. */
  private readonly ready = new Set<VsockConnection>();
  private readonly listeners = new Map<number, VsockConnectionHandler>();
  private readonly pending = new Map<VsockConnection, PendingConnect>();
  private readonly localPorts = new Set<number>();
  private orphanRsts: OrphanRst[] = [];
  private nextLocalPort = VSOCK_LOCAL_PORT_FIRST;
  private eventPending = false;
  private draining = false;
  private drainAgain = false;
  private restoredSockets: VsockSocket[] = [];
  private readonly hdrScratch = new Uint8Array(VSOCK_HDR_SIZE);
  private readonly hdrOut: VsockHeader = {
    srcCid: VSOCK_HOST_CID, dstCid: 0, srcPort: 0, dstPort: 0, len: 0, type: VIRTIO_VSOCK_TYPE_STREAM, op: 0, flags: 0, bufAlloc: 0, fwdCnt: 0,
  };

  private readonly c = {
    guestConnections: 0,
    hostConnections: 0,
    refusedRequests: 0,
    connectRefused: 0,
    connectTimeouts: 0,
    rxPackets: 0,
    rxBytes: 0,
    txPackets: 0,
    txBytes: 0,
    rstSent: 0,
    rstReceived: 0,
    creditUpdatesSent: 0,
    creditRequestsSent: 0,
    malformedChains: 0,
    badSourceCid: 0,
    badLength: 0,
    rejectedPackets: 0,
    unknownConnection: 0,
    protocolViolations: 0,
    droppedRsts: 0,
    rxBuffersTooSmall: 0,
    events: 0,
    transportResets: 0,
    handlerErrors: 0,
    restoredConnections: 0,
    udsAccepted: 0,
    udsBadRequests: 0,
    udsConnectFailures: 0,
    udsForwarded: 0,
    udsForwardFailures: 0,
    notifications: 0,
    queueErrors: 0,
    configWritesIgnored: 0,
  };

  /**
   * @param config validated options (see `checkVsockOptions`)
   * @param host timers and Unix sockets
   * @throws VsockError BAD_CONFIG
   */
  constructor(config: VsockDeviceConfig, host: VsockHost) {
    if (config === null || typeof config !== 'object') throw new VsockError('BAD_CONFIG', 'config must be an object');
    if (!Number.isInteger(config.guestCid) || config.guestCid < 3 || config.guestCid > 0xfffffffe) {
      throw new VsockError('BAD_CONFIG', `guestCid ${String(config.guestCid)} is not in [3, 2^32 - 2]`);
    }
    if (!Number.isInteger(config.bufferSize) || config.bufferSize < VSOCK_MIN_BUFFER_SIZE || config.bufferSize > VSOCK_MAX_BUFFER_SIZE) {
      throw new VsockError('BAD_CONFIG', `bufferSize ${String(config.bufferSize)} is out of range`);
    }
    if (!Number.isInteger(config.maxConnections) || config.maxConnections < 1) {
      throw new VsockError('BAD_CONFIG', `maxConnections ${String(config.maxConnections)} is out of range`);
    }
    if (host === null || typeof host !== 'object' || typeof host.timers?.setTimeout !== 'function') {
      throw new VsockError('BAD_CONFIG', 'host must implement VsockHost');
    }
    this.id = config.id ?? 'vsock';
    this.guestCid = config.guestCid;
    this.bufferSize = config.bufferSize;
    this.maxConnections = config.maxConnections;
    this.host = host;
    this.muxer = config.udsPath !== undefined
      ? new UdsMuxer({ connectFromUds: (port) => this.openConnection(port, {}, 'uds') }, host, config.udsPath, this.c)
      : null;
  }

  // ---------------------------------------------------------------------------------------------
  // Host-facing API (what vm.vsockConnect / vm.vsockListen delegate to)

  /**
   * Accepts guest connections to host port `port`: `handler` gets a {@link VsockSocket} for each.
   * May be called before the guest's driver is up (also before the machine starts), so a guest can
   * connect in its first millisecond.
   * @throws VsockError BAD_PORT, PORT_IN_USE, CLOSED
   */
  listen(port: number, handler: VsockConnectionHandler): VsockListener {
    if (this.closed) throw new VsockError('CLOSED', 'vsock device is closed');
    return addListener(this.listeners, port, handler);
  }

  /**
   * Connects to a guest listener on `port`. Resolves with the host end once the guest accepts;
   * rejects with VsockError CONNECTION_REFUSED (RST: nothing listens there), CONNECT_TIMEOUT,
   * TRANSPORT_RESET, TOO_MANY_CONNECTIONS, BAD_PORT or CLOSED. A connect made before the driver is
   * up waits for it (within the timeout).
   */
  connect(port: number, options: VsockConnectOptions = {}): Promise<VsockSocket> {
    return this.openConnection(port, options, 'host');
  }

  /** Starts the Unix socket interface, if `udsPath` was configured (the machine awaits it at start). */
  async startHostServices(): Promise<void> {
    if (this.closed) throw new VsockError('CLOSED', 'vsock device is closed');
    await this.muxer?.start();
  }

  /**
   * Drops every connection (their host ends are destroyed with TRANSPORT_RESET, pending connects
   * rejected) and tells the guest with a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event (§5.10.6.6), as
   * after a migration: the guest closes its connections and re-reads its CID.
   */
  resetTransport(): void {
    this.c.transportResets++;
    this.dropAll(new VsockError('TRANSPORT_RESET', 'the vsock transport was reset'), () => true);
    this.orphanRsts = [];
    this.eventPending = true;
    this.deliverEvent();
  }

  /**
   * Host ends of the host-initiated connections continued from a snapshot by the last
   * {@link restoreState} (guest-initiated ones went to their port's listener). Each call hands
   * them over once.
   */
  takeRestoredConnections(): VsockSocket[] {
    const out = this.restoredSockets;
    this.restoredSockets = [];
    return out;
  }

  private openConnection(port: number, options: VsockConnectOptions, origin: 'host' | 'uds'): Promise<VsockSocket> {
    if (!isU32(port)) return Promise.reject(new VsockError('BAD_PORT', `port ${String(port)} is not a u32`));
    if (this.closed) return Promise.reject(new VsockError('CLOSED', 'vsock device is closed'));
    const timeoutMs = options.timeoutMs ?? VSOCK_DEFAULT_CONNECT_TIMEOUT_MS;
    if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
      return Promise.reject(new VsockError('BAD_CONFIG', `timeoutMs must be a finite number ≥ 0, not ${String(timeoutMs)}`));
    }
    if (this.conns.size >= this.maxConnections) {
      return Promise.reject(new VsockError('TOO_MANY_CONNECTIONS', `${this.conns.size} vsock connections are open (limit ${this.maxConnections})`));
    }
    const local = this.allocateLocalPort();
    if (local < 0) return Promise.reject(new VsockError('TOO_MANY_CONNECTIONS', 'no free local port'));
    const conn = new VsockConnection(this, local, port, origin, this.bufferSize);
    conn.sendRequest = true;
    this.conns.set(conn.key, conn);
    this.localPorts.add(local);
    const socket = new VsockSocket(conn, this.guestCid);
    return new Promise<VsockSocket>((resolve, reject) => {
      const timer = this.host.timers.setTimeout(() => {
        if (!this.pending.has(conn)) return;
        this.c.connectTimeouts++;
        const err = new VsockError('CONNECT_TIMEOUT', `guest port ${port} did not answer within ${timeoutMs} ms`);
        this.settle(conn, err);
        // Sent already: a late RESPONSE then finds no connection and is answered with RST.
        conn.abort(err);
      }, timeoutMs);
      this.pending.set(conn, { socket, resolve, reject, timer });
      this.wake(conn);
    });
  }

  /** Resolves (no error) or rejects a pending connect. */
  private settle(conn: VsockConnection, err: Error | null): void {
    const p = this.pending.get(conn);
    if (p === undefined) return;
    this.pending.delete(conn);
    this.host.timers.clearTimeout(p.timer);
    if (err === null) p.resolve(p.socket);
    else p.reject(err);
  }

  /** A free local port, cycling through [2^30, 2^31) so a closed port is not reused at once; -1 if none. */
  private allocateLocalPort(): number {
    const span = VSOCK_LOCAL_PORT_END - VSOCK_LOCAL_PORT_FIRST;
    for (let i = 0; i < span; i++) {
      const p = this.nextLocalPort;
      this.nextLocalPort = p + 1 >= VSOCK_LOCAL_PORT_END ? VSOCK_LOCAL_PORT_FIRST : p + 1;
      if (!this.localPorts.has(p) && !this.listeners.has(p)) return p;
      // More ports in use than connections allowed cannot happen; bail out rather than scan 2^30.
      if (i > this.maxConnections + this.listeners.size) break;
    }
    return -1;
  }

  // ---------------------------------------------------------------------------------------------
  // ConnectionOwner

  /** @internal A connection has something to send. */
  wake(conn: VsockConnection): void {
    this.ready.add(conn);
    if (this.ctx !== null) this.drainRx();
  }

  /** @internal A connection is over. */
  release(conn: VsockConnection): void {
    if (this.conns.get(conn.key) === conn) this.conns.delete(conn.key);
    if (conn.origin === 'host' || conn.origin === 'uds') this.localPorts.delete(conn.hostPort);
    if (!conn.sendRst) this.ready.delete(conn);
    if (this.pending.has(conn)) this.settle(conn, new VsockError('CONNECTION_RESET', `connection to guest port ${conn.guestPort} was reset`));
  }

  // ---------------------------------------------------------------------------------------------
  // VirtioDevice

  /** struct virtio_vsock_config: le64 guest_cid. */
  readConfig(offset: number, size: number): number {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > VSOCK_CONFIG_SIZE) return 0;
    const bytes = [this.guestCid & 0xff, (this.guestCid >>> 8) & 0xff, (this.guestCid >>> 16) & 0xff, (this.guestCid >>> 24) & 0xff, 0, 0, 0, 0];
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + bytes[offset + i];
    return v;
  }

  /** The config space is read-only; writes are counted. */
  writeConfig(_offset: number, _size: number, _value: number): void {
    this.c.configWritesIgnored++;
  }

  /** Starts serving the queues; takes packets queued before DRIVER_OK, sends what waited for the driver (host connects, a pending event). */
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    // Packets a driver queued (and kicked) before DRIVER_OK got no notification through. Scheduled,
    // not now: on a restore, restoreState (the connection table) runs right after activate.
    ctx.schedule(() => this.processTx());
    this.drainRx();
    this.deliverEvent();
  }

  /**
   * The driver reset the device: every connection that reached the guest is dropped (host ends
   * destroyed with TRANSPORT_RESET). Host connects whose REQUEST was not sent yet keep waiting
   * for the next activation (Linux resets the device while probing it).
   */
  reset(): void {
    this.ctx = null;
    this.dropAll(new VsockError('TRANSPORT_RESET', 'the guest reset the vsock device'), (conn) => !(conn.state === 'connecting' && conn.sendRequest));
    this.orphanRsts = [];
    this.eventPending = false;
  }

  private dropAll(err: VsockError, which: (conn: VsockConnection) => boolean): void {
    for (const conn of [...this.conns.values()]) {
      if (!which(conn)) continue;
      this.settle(conn, err);
      conn.abort(err);
    }
    for (const conn of [...this.ready]) if (conn.state === 'closed') this.ready.delete(conn);
  }

  /** A notification: rx (new buffers), tx (new packets), event (new buffers). Never throws. */
  processQueue(queueIndex: number): void {
    try {
      if (queueIndex === VSOCK_TX_QUEUE) this.processTx();
      else if (queueIndex === VSOCK_RX_QUEUE) this.drainRx();
      else if (queueIndex === VSOCK_EVENT_QUEUE) this.deliverEvent();
    } catch {
      // Only a device bug gets here; it must not reach the event loop.
      this.c.queueErrors++;
      this.ctx?.needsReset();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Guest to host

  private processTx(): void {
    const ctx = this.ctx;
    if (ctx === null || this.closed) return;
    const q = ctx.queues[VSOCK_TX_QUEUE];
    if (!q.ready || q.broken !== null) return;
    let used = false;
    try {
      do {
        q.disableNotification(ctx.mem);
        for (let chain = q.pop(ctx.mem); chain !== null; chain = q.pop(ctx.mem)) {
          this.handleTxChain(ctx, chain);
          q.addUsed(ctx.mem, chain.headIndex, 0);
          used = true;
        }
      } while (q.enableNotification(ctx.mem));
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
      return;
    }
    if (used) this.signal(ctx, q, VSOCK_TX_QUEUE);
    // Answers (RESPONSE, RST, credit) and data unblocked by new credit go out now.
    this.drainRx();
  }

  private handleTxChain(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    if (chain.error !== undefined || chain.readableLength < VSOCK_HDR_SIZE) {
      this.c.malformedChains++;
      return;
    }
    const reader = new ChainReader(ctx.mem, chain);
    const h = decodeHeader(reader.read(VSOCK_HDR_SIZE));
    this.c.txPackets++;
    const verdict = checkGuestHeader(h, this.guestCid, reader.remaining);
    if (verdict.kind === 'drop') {
      if (verdict.reason === 'bad-src-cid') this.c.badSourceCid++;
      else this.c.badLength++;
      return;
    }
    if (verdict.kind === 'rst') {
      this.c.rejectedPackets++;
      if (h.op !== VIRTIO_VSOCK_OP_RST && h.dstCid >= 0) this.queueOrphanRst(h);
      return;
    }
    let payload: Buffer | null = null;
    if (h.op === VIRTIO_VSOCK_OP_RW) {
      // Copied out: the guest reuses its buffer as soon as the chain is used.
      payload = Buffer.allocUnsafe(h.len);
      let at = 0;
      for (const v of reader.views(h.len)) {
        payload.set(v, at);
        at += v.length;
      }
      this.c.txBytes += h.len;
    }
    this.onGuestPacket(h, payload);
  }

  private onGuestPacket(h: VsockHeader, payload: Buffer | null): void {
    const conn = this.conns.get(connectionKey(h.dstPort, h.srcPort));
    if (conn === undefined) {
      if (h.op === VIRTIO_VSOCK_OP_REQUEST) {
        this.onRequest(h);
        return;
      }
      this.c.unknownConnection++;
      if (h.op === VIRTIO_VSOCK_OP_RST) this.c.rstReceived++;
      else this.queueOrphanRst(h);
      return;
    }
    // Being reset: only the guest's own RST still matters.
    if (conn.sendRst && h.op !== VIRTIO_VSOCK_OP_RST) return;
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case VIRTIO_VSOCK_OP_REQUEST:
        // A second REQUEST on an open connection: the guest lost track of it; start over.
        this.violation(conn, 'REQUEST on an open connection');
        return;
      case VIRTIO_VSOCK_OP_RESPONSE:
        if (!conn.onResponse()) {
          this.violation(conn, 'unexpected RESPONSE');
          return;
        }
        this.c.hostConnections++;
        this.settle(conn, null);
        return;
      case VIRTIO_VSOCK_OP_RST: {
        this.c.rstReceived++;
        const wasConnecting = conn.state === 'connecting';
        const err = wasConnecting
          ? new VsockError('CONNECTION_REFUSED', `guest port ${conn.guestPort} refused the connection`)
          : new VsockError('CONNECTION_RESET', `guest port ${conn.guestPort} reset the connection`);
        if (wasConnecting) this.c.connectRefused++;
        this.settle(conn, err);
        conn.onReset(err);
        return;
      }
      case VIRTIO_VSOCK_OP_SHUTDOWN:
        if (conn.state !== 'established') {
          this.violation(conn, 'SHUTDOWN before the connection was established');
          return;
        }
        conn.onShutdown(h.flags & VIRTIO_VSOCK_SHUTDOWN_MASK);
        return;
      case VIRTIO_VSOCK_OP_RW: {
        const verdict = conn.onGuestData(payload ?? Buffer.alloc(0));
        if (verdict !== 'ok') this.violation(conn, verdict);
        return;
      }
      case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
        return; // the credit was taken above
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
        conn.onCreditRequest();
        return;
    }
  }

  private violation(conn: VsockConnection, what: string): void {
    this.c.protocolViolations++;
    const err = new VsockError('CONNECTION_RESET', `guest port ${conn.guestPort} broke the protocol (${what}); connection reset`);
    this.settle(conn, err);
    conn.fail(err, true);
  }

  private onRequest(h: VsockHeader): void {
    const handler = this.listeners.get(h.dstPort);
    if ((handler === undefined && this.muxer === null) || this.conns.size >= this.maxConnections || this.closed) {
      this.c.refusedRequests++;
      this.queueOrphanRst(h);
      return;
    }
    const origin: ConnectionOrigin = handler !== undefined ? 'guest' : 'guest-uds';
    const conn = new VsockConnection(this, h.dstPort, h.srcPort, origin, this.bufferSize);
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    this.conns.set(conn.key, conn);
    if (handler !== undefined) {
      const socket = new VsockSocket(conn, this.guestCid);
      conn.sendResponse = true;
      this.c.guestConnections++;
      this.wake(conn);
      this.callHandler(handler, socket);
      return;
    }
    this.muxer!.connectForward(h.dstPort).then(
      (stream) => {
        if (conn.state !== 'accepting' || conn.sendRst) {
          stream.destroy();
          return;
        }
        this.c.udsForwarded++;
        this.c.guestConnections++;
        const socket = new VsockSocket(conn, this.guestCid);
        conn.sendResponse = true;
        this.wake(conn);
        splice(stream, socket);
      },
      () => {
        this.c.udsForwardFailures++;
        this.c.refusedRequests++;
        if (conn.state === 'accepting') {
          conn.sendRst = true;
          this.wake(conn);
        }
      },
    );
  }

  private callHandler(handler: VsockConnectionHandler, socket: VsockSocket): void {
    try {
      handler(socket);
    } catch {
      this.c.handlerErrors++;
      socket.destroy();
    }
  }

  private queueOrphanRst(h: VsockHeader): void {
    if (this.orphanRsts.length >= VSOCK_MAX_ORPHAN_RSTS) {
      this.c.droppedRsts++;
      return;
    }
    this.orphanRsts.push({ srcCid: h.dstCid >= 0 ? h.dstCid : VSOCK_HOST_CID, srcPort: h.dstPort, dstPort: h.srcPort });
    if (this.ctx !== null) this.drainRx();
  }

  // ---------------------------------------------------------------------------------------------
  // Host to guest

  /** Fills receive buffers with waiting packets, round-robin over connections. Re-entrant calls coalesce. */
  private drainRx(): void {
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    const ctx = this.ctx;
    if (ctx === null || this.closed) return;
    const q = ctx.queues[VSOCK_RX_QUEUE];
    if (!q.ready || q.broken !== null) return;
    this.draining = true;
    let used = false;
    try {
      do {
        this.drainAgain = false;
        while (this.orphanRsts.length > 0 || this.ready.size > 0) {
          const chain = q.pop(ctx.mem);
          if (chain === null) break;
          if (chain.error !== undefined || chain.writableLength < VSOCK_HDR_SIZE) {
            this.c.malformedChains++;
            q.addUsed(ctx.mem, chain.headIndex, 0);
            used = true;
            continue;
          }
          const room = Math.min(chain.writableLength - VSOCK_HDR_SIZE, VSOCK_MAX_PAYLOAD);
          const len = this.fillRxChain(ctx, chain, room);
          if (len < 0) {
            if (room === 0 && this.ready.size > 0) {
              // Only data is waiting and this buffer has no room for any: give it back empty.
              this.c.rxBuffersTooSmall++;
              q.addUsed(ctx.mem, chain.headIndex, 0);
              used = true;
              continue;
            }
            q.undoPop();
            break;
          }
          q.addUsed(ctx.mem, chain.headIndex, len);
          used = true;
        }
      } while (this.drainAgain);
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
    } finally {
      this.draining = false;
    }
    if (used) this.signal(ctx, q, VSOCK_RX_QUEUE);
  }

  /** Writes the next waiting packet into `chain`; returns the used length, or -1 if nothing fits. */
  private fillRxChain(ctx: VirtioDeviceContext, chain: DescriptorChain, room: number): number {
    const h = this.hdrOut;
    if (this.orphanRsts.length > 0) {
      const o = this.orphanRsts.shift()!;
      h.srcCid = o.srcCid;
      h.srcPort = o.srcPort;
      h.dstPort = o.dstPort;
      h.op = VIRTIO_VSOCK_OP_RST;
      h.flags = 0;
      h.len = 0;
      h.bufAlloc = 0;
      h.fwdCnt = 0;
      return this.writePacket(ctx, chain, null);
    }
    // Each listed connection is looked at once; one that sends goes to the back (round robin).
    for (let n = this.ready.size; n > 0; n--) {
      const conn: VsockConnection | undefined = this.ready.values().next().value;
      if (conn === undefined) break;
      this.ready.delete(conn);
      const pkt = conn.nextOutgoing(room);
      if (pkt === null) {
        // Waiting for credit (unlisted until it comes) or for a bigger buffer (stays listed).
        if (room === 0 && conn.hasWork()) this.ready.add(conn);
        continue;
      }
      if (conn.hasWork()) this.ready.add(conn);
      return this.writeConnPacket(ctx, chain, conn, pkt);
    }
    return -1;
  }

  private writeConnPacket(ctx: VirtioDeviceContext, chain: DescriptorChain, conn: VsockConnection, pkt: OutgoingPacket): number {
    const h = this.hdrOut;
    h.srcCid = VSOCK_HOST_CID;
    h.srcPort = conn.hostPort;
    h.dstPort = conn.guestPort;
    h.op = pkt.op;
    h.flags = pkt.flags;
    h.len = pkt.payload === null ? 0 : pkt.payload.length;
    h.bufAlloc = pkt.bufAlloc;
    h.fwdCnt = pkt.fwdCnt;
    if (pkt.op === VIRTIO_VSOCK_OP_RST) this.c.rstSent++;
    else if (pkt.op === VIRTIO_VSOCK_OP_CREDIT_UPDATE) this.c.creditUpdatesSent++;
    else if (pkt.op === VIRTIO_VSOCK_OP_CREDIT_REQUEST) this.c.creditRequestsSent++;
    return this.writePacket(ctx, chain, pkt.payload);
  }

  private writePacket(ctx: VirtioDeviceContext, chain: DescriptorChain, payload: Uint8Array | null): number {
    const h = this.hdrOut;
    h.dstCid = this.guestCid;
    h.type = VIRTIO_VSOCK_TYPE_STREAM;
    encodeHeader(h, this.hdrScratch);
    const w = new ChainWriter(ctx.mem, chain);
    w.write(this.hdrScratch);
    if (payload !== null && payload.length > 0) {
      w.write(payload);
      this.c.rxBytes += payload.length;
    }
    this.c.rxPackets++;
    return w.written;
  }

  private deliverEvent(): void {
    const ctx = this.ctx;
    if (!this.eventPending || ctx === null || this.closed) return;
    const q = ctx.queues[VSOCK_EVENT_QUEUE];
    if (!q.ready || q.broken !== null) return;
    let used = false;
    try {
      while (this.eventPending) {
        const chain = q.pop(ctx.mem);
        if (chain === null) break;
        if (chain.error !== undefined || chain.writableLength < VSOCK_EVENT_SIZE) {
          this.c.malformedChains++;
          q.addUsed(ctx.mem, chain.headIndex, 0);
          used = true;
          continue;
        }
        new ChainWriter(ctx.mem, chain).writeU32(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
        q.addUsed(ctx.mem, chain.headIndex, VSOCK_EVENT_SIZE);
        used = true;
        this.eventPending = false;
        this.c.events++;
      }
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
      return;
    }
    if (used) this.signal(ctx, q, VSOCK_EVENT_QUEUE);
  }

  private signal(ctx: VirtioDeviceContext, q: Queue, index: number): void {
    if (q.needsNotification(ctx.mem)) {
      this.c.notifications++;
      ctx.interrupt.signalUsedQueue(index);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Contract

  /** Counters; `connections` is the number open now. */
  metrics(): VsockMetrics {
    return { ...this.c, connections: this.conns.size };
  }

  /** Stops the device: every connection dropped (CLOSED), listeners and the Unix socket closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.dropAll(new VsockError('CLOSED', 'the vsock device was closed'), () => true);
    this.closed = true;
    this.ctx = null;
    this.listeners.clear();
    this.ready.clear();
    this.orphanRsts = [];
    await this.muxer?.close();
  }

  /**
   * Everything the device holds: the connection table with each connection's state, both
   * directions' credit counters, shutdown halves, owed control packets, the guest data the host has
   * not read and the host data not yet sent; owed RST answers; the next local port; a pending
   * transport-reset event. Host connects whose REQUEST was never sent are not state (their promise
   * lives in this process). Listeners and the Unix socket are host resources.
   */
  saveState(): StateObject {
    const connections: StateValue[] = [];
    for (const conn of this.conns.values()) {
      if (conn.state === 'connecting' && conn.sendRequest) continue;
      const rx = Buffer.concat(conn.rxQueue);
      const tx = conn.txChunk === null ? new Uint8Array(0) : conn.txChunk.subarray(conn.txOffset);
      connections.push({
        hostPort: conn.hostPort,
        guestPort: conn.guestPort,
        origin: conn.origin,
        state: conn.state,
        bufAlloc: conn.bufAlloc,
        rxCnt: conn.rxCnt,
        fwdCnt: conn.fwdCnt,
        lastAdvertisedFwdCnt: conn.lastAdvertisedFwdCnt,
        peerBufAlloc: conn.peerBufAlloc,
        peerFwdCnt: conn.peerFwdCnt,
        txCnt: conn.txCnt,
        peerShutdown: conn.peerShutdown,
        localShutdown: conn.localShutdown,
        shutdownSent: conn.shutdownSent,
        sendRst: conn.sendRst,
        sendResponse: conn.sendResponse,
        sendCreditUpdate: conn.sendCreditUpdate,
        creditRequested: conn.creditRequested,
        eofDelivered: conn.eofDelivered,
        rxData: encodeBytes(rx),
        txData: encodeBytes(tx),
      });
    }
    return {
      guestCid: this.guestCid,
      nextLocalPort: this.nextLocalPort,
      eventPending: this.eventPending,
      orphanRsts: this.orphanRsts.map((o) => [o.srcCid, o.srcPort, o.dstPort]),
      connections,
    };
  }

  /**
   * Continues from {@link saveState}. Connections come back with their counters and buffered data,
   * each with a new host end ({@link VsockSocket.restored} set): a guest-initiated one goes to the
   * listener of its host port, a host-initiated one to {@link takeRestoredConnections}. Connections
   * whose host end cannot exist here (no listener, a Unix socket client, a connect still waiting
   * for its RESPONSE) are reset: the guest gets an RST.
   * @throws DeviceError BAD_STATE (nothing is changed)
   */
  restoreState(state: StateObject): void {
    const bad = (what: string) => new DeviceError('BAD_STATE', `vsock ${this.id}: ${what}`);
    const guestCid = stateField.int(state, 'guestCid', 3, 0xfffffffe);
    if (guestCid !== this.guestCid) throw bad(`saved with guest CID ${guestCid}, this device has ${this.guestCid}`);
    const nextLocalPort = stateField.int(state, 'nextLocalPort', VSOCK_LOCAL_PORT_FIRST, VSOCK_LOCAL_PORT_END - 1);
    const eventPending = stateField.bool(state, 'eventPending');
    const orphans: OrphanRst[] = stateField.arr(state, 'orphanRsts', VSOCK_MAX_ORPHAN_RSTS).map((o) => {
      if (!Array.isArray(o) || o.length !== 3 || !o.every(isU32)) throw bad('orphanRsts entries must be three u32s');
      const [srcCid, srcPort, dstPort] = o as number[];
      return { srcCid, srcPort, dstPort };
    });
    const saved = stateField.arr(state, 'connections', this.maxConnections);
    const conns: VsockConnection[] = [];
    const keys = new Set<string>();
    for (const v of saved) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad('a connection must be an object');
      const conn = this.connectionFromState(v);
      if (keys.has(conn.key)) throw bad(`connection ${conn.key} appears twice`);
      keys.add(conn.key);
      conns.push(conn);
    }
    if (this.ctx === null && conns.length > 0) throw bad('connections saved on a device that is not active');

    // Accepted: apply.
    this.dropAll(new VsockError('TRANSPORT_RESET', 'replaced by a restored state'), () => true);
    this.nextLocalPort = nextLocalPort;
    this.eventPending = eventPending;
    this.orphanRsts = orphans;
    this.restoredSockets = [];
    for (const conn of conns) {
      this.conns.set(conn.key, conn);
      if (conn.origin === 'host' || conn.origin === 'uds') this.localPorts.add(conn.hostPort);
      this.c.restoredConnections++;
      const handler = this.listeners.get(conn.hostPort);
      const reachable = conn.state === 'established' && (conn.origin === 'host' || (conn.origin === 'guest' && handler !== undefined));
      if (!reachable || conn.sendRst) {
        conn.sendRst = true;
        this.ready.add(conn);
        continue;
      }
      const socket = new VsockSocket(conn, this.guestCid, true);
      if (conn.hasWork()) this.ready.add(conn);
      if (conn.origin === 'guest') this.callHandler(handler!, socket);
      else this.restoredSockets.push(socket);
    }
    this.drainRx();
    this.deliverEvent();
  }

  private connectionFromState(s: StateObject): VsockConnection {
    const bad = (what: string) => new DeviceError('BAD_STATE', `vsock ${this.id}: connection ${what}`);
    const u32 = (k: string) => stateField.int(s, k, 0, 0xffffffff);
    const hostPort = u32('hostPort');
    const guestPort = u32('guestPort');
    const origin = stateField.str(s, 'origin') as ConnectionOrigin;
    if (!ORIGINS.includes(origin)) throw bad(`origin ${JSON.stringify(origin)}`);
    const st = stateField.str(s, 'state');
    if (!(STATES as readonly string[]).includes(st)) throw bad(`state ${JSON.stringify(st)}`);
    if ((origin === 'host' || origin === 'uds') && (hostPort < VSOCK_LOCAL_PORT_FIRST || hostPort >= VSOCK_LOCAL_PORT_END)) {
      throw bad(`local port ${hostPort} outside [2^30, 2^31)`);
    }
    const bufAlloc = stateField.int(s, 'bufAlloc', VSOCK_MIN_BUFFER_SIZE, VSOCK_MAX_BUFFER_SIZE);
    const conn = new VsockConnection(this, hostPort, guestPort, origin, bufAlloc);
    conn.state = st as VsockConnection['state'];
    conn.rxCnt = u32('rxCnt');
    conn.fwdCnt = u32('fwdCnt');
    conn.lastAdvertisedFwdCnt = u32('lastAdvertisedFwdCnt');
    conn.peerBufAlloc = u32('peerBufAlloc');
    conn.peerFwdCnt = u32('peerFwdCnt');
    conn.txCnt = u32('txCnt');
    conn.peerShutdown = stateField.int(s, 'peerShutdown', 0, VIRTIO_VSOCK_SHUTDOWN_MASK);
    conn.localShutdown = stateField.int(s, 'localShutdown', 0, VIRTIO_VSOCK_SHUTDOWN_MASK);
    conn.shutdownSent = stateField.int(s, 'shutdownSent', 0, VIRTIO_VSOCK_SHUTDOWN_MASK);
    if ((conn.shutdownSent & ~conn.localShutdown) !== 0) throw bad('sent a SHUTDOWN the host never asked for');
    conn.sendRst = stateField.bool(s, 'sendRst');
    conn.sendResponse = stateField.bool(s, 'sendResponse');
    conn.sendCreditUpdate = stateField.bool(s, 'sendCreditUpdate');
    conn.creditRequested = stateField.bool(s, 'creditRequested');
    conn.eofDelivered = stateField.bool(s, 'eofDelivered');
    const rx = stateField.bytes(s, 'rxData', bufAlloc);
    if (rx.length !== u32Diff(conn.rxCnt, conn.fwdCnt)) throw bad(`holds ${rx.length} unread bytes but rxCnt - fwdCnt is ${u32Diff(conn.rxCnt, conn.fwdCnt)}`);
    if (rx.length > 0) {
      conn.rxQueue.push(Buffer.from(rx));
      conn.rxQueued = rx.length;
    }
    const tx = stateField.bytes(s, 'txData', MAX_RESTORED_TX_BYTES);
    if (tx.length > 0) {
      conn.txChunk = Buffer.from(tx);
      conn.txOffset = 0;
    }
    return conn;
  }
}

/** Creates a virtio-vsock device from validated options (`checkVsockOptions`) and its host services. */
export function createVsockDevice(config: VsockDeviceConfig, host: VsockHost): VsockDevice {
  return new VsockDevice(config, host);
}
