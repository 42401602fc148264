/**
 * One vsock stream connection between a host port and a guest port: its state, both directions'
 * credit accounting (virtio 1.2 §5.10.6.3) and shutdown halves, and what it still owes the guest.
 *
 * The connection never touches a queue. The device asks it for its next packet
 * ({@link VsockConnection.nextOutgoing}) when it has a receive buffer, and hands it the guest's
 * packets; the host side (a {@link ConnectionSink}, normally a `VsockSocket`) reads and writes
 * through {@link VsockConnection.hostRead}, {@link VsockConnection.hostWrite} and friends.
 *
 * Credit, both ways (all counters free-running u32):
 * - Guest to host: we advertise `bufAlloc` and `fwdCnt` (bytes handed to the host reader). The guest
 *   may have at most `bufAlloc - (rxCnt - fwdCnt)` bytes in flight; a guest that sends more is
 *   breaking the protocol and is reset. Data waits in {@link VsockConnection.rxQueue} until the host
 *   reads, so a host that does not read stops the guest, and what is held is bounded by `bufAlloc`.
 * - Host to guest: the guest advertises its `buf_alloc` and `fwd_cnt` on every packet; we send at
 *   most `peerBufAlloc - (txCnt - peerFwdCnt)` bytes. The host's write callback is called only when
 *   its chunk has been sent, so a guest that does not read stops the host writer.
 * @module
 */
import {
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE,
  VIRTIO_VSOCK_SHUTDOWN_F_SEND,
  VIRTIO_VSOCK_SHUTDOWN_MASK,
} from './constants';
import { VsockError } from './errors';

/**
 * - `connecting`: host-initiated; REQUEST queued or sent, waiting for RESPONSE or RST.
 * - `accepting`: guest-initiated; the host side is still being set up (a Unix socket connect).
 * - `established`: data may flow (each half until it is shut down).
 * - `closed`: over; the device has removed it from its table.
 */
export type ConnectionState = 'connecting' | 'accepting' | 'established' | 'closed';

/** Who opened the connection, and through what (`uds`: the Firecracker-compatible Unix socket). */
export type ConnectionOrigin = 'host' | 'uds' | 'guest' | 'guest-uds';

/** Where the connection delivers what the guest sends: the host end of the stream. */
export interface ConnectionSink {
  /** Data for the host reader, or null for end of stream. Returns false when the reader wants no more for now. */
  push(chunk: Buffer | null): boolean;
  /** The connection failed or was dropped: the host end is destroyed because of `err`. */
  abort(err: Error): void;
}

/** What the device needs from whoever owns the connection table. */
export interface ConnectionOwner {
  /** The connection has something to send (a control packet, data with credit). */
  wake(conn: VsockConnection): void;
  /** The connection is over (RST sent or received): remove it from the table, free its ports. */
  release(conn: VsockConnection): void;
}

/** One packet a connection wants to send, without addresses (the device fills them in). */
export interface OutgoingPacket {
  /** VIRTIO_VSOCK_OP_*. */
  op: number;
  /** SHUTDOWN flags, else 0. */
  flags: number;
  /** RW payload (a view of the host's chunk; copied into guest memory at once). */
  payload: Uint8Array | null;
  /** Our buf_alloc at the time. */
  bufAlloc: number;
  /** Our fwd_cnt at the time. */
  fwdCnt: number;
}

/** What {@link VsockConnection.onGuestData} made of a data packet. */
export type DataVerdict = 'ok' | 'not-established' | 'after-shutdown' | 'credit-exceeded';

const U32 = 0x100000000;

/**
 * Runs host code (a stream callback, which may run a user's 'data' or 'drain' handler) so that its
 * exception cannot unwind through the device and break a queue: it is re-thrown on the next tick,
 * where it surfaces as the uncaught exception it would be for any Node.js stream.
 */
function hostCall<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch (e) {
    process.nextTick(() => {
      throw e;
    });
    return fallback;
  }
}

/** `(a - b) mod 2^32`. */
export function u32Diff(a: number, b: number): number {
  return (a - b + U32) % U32;
}

/** `(a + n) mod 2^32`. */
function u32Add(a: number, n: number): number {
  return (a + n) % U32;
}

/** One connection; see the module comment. */
export class VsockConnection {
  /** The host-side port. */
  readonly hostPort: number;
  /** The guest-side port. */
  readonly guestPort: number;
  /** Who opened it. */
  readonly origin: ConnectionOrigin;
  /** Our receive buffer size, advertised as buf_alloc. */
  readonly bufAlloc: number;
  /** The table key (see {@link connectionKey}). */
  readonly key: string;

  /** Where the connection is in its life; see {@link ConnectionState}. */
  state: ConnectionState;
  /** Bytes received from the guest (free-running u32). */
  rxCnt = 0;
  /** Bytes handed to the host reader (free-running u32). */
  fwdCnt = 0;
  /** The fwd_cnt the guest last heard from us. */
  lastAdvertisedFwdCnt = 0;
  /** The guest's receive buffer size. */
  peerBufAlloc = 0;
  /** The guest's fwd_cnt. */
  peerFwdCnt = 0;
  /** Bytes sent to the guest (free-running u32). */
  txCnt = 0;
  /** SHUTDOWN flags received from the guest. */
  peerShutdown = 0;
  /** SHUTDOWN flags the host side asked for (sent or still owed). */
  localShutdown = 0;
  /** SHUTDOWN flags already sent. */
  shutdownSent = 0;
  /** Owed control packets. */
  sendRst = false;
  /** See {@link sendRst}. */
  sendRequest = false;
  /** See {@link sendRst}. */
  sendResponse = false;
  /** See {@link sendRst}. */
  sendCreditUpdate = false;
  /** A CREDIT_REQUEST was sent since the guest last gave credit. */
  creditRequested = false;
  /** Guest data not yet read by the host (at most {@link bufAlloc} bytes in all). */
  readonly rxQueue: Buffer[] = [];
  /** Bytes in {@link rxQueue}. */
  rxQueued = 0;
  /** End of stream has been pushed to the sink. */
  eofDelivered = false;
  /** The host reader wants data (its `_read` was called and push has not said stop since). */
  hostReading = false;
  /** The host chunk being sent, the offset reached and its write callback. */
  txChunk: Uint8Array | null = null;
  /** See {@link txChunk}. */
  txOffset = 0;
  /** See {@link txChunk}; null for data restored from a snapshot. */
  txCallback: ((err?: Error | null) => void) | null = null;
  /** The host end; null until one is attached. */
  sink: ConnectionSink | null = null;

  private readonly owner: ConnectionOwner;
  private readonly creditThreshold: number;
  private delivering = false;
  private readDuringPush = false;

  /**
   * @param owner the device's table
   * @param hostPort host-side port (u32)
   * @param guestPort guest-side port (u32)
   * @param origin who opened it
   * @param bufAlloc our receive buffer in bytes
   */
  constructor(owner: ConnectionOwner, hostPort: number, guestPort: number, origin: ConnectionOrigin, bufAlloc: number) {
    this.owner = owner;
    this.hostPort = hostPort;
    this.guestPort = guestPort;
    this.origin = origin;
    this.bufAlloc = bufAlloc;
    this.key = connectionKey(hostPort, guestPort);
    this.state = origin === 'host' || origin === 'uds' ? 'connecting' : 'accepting';
    // Tell the guest about freed space in batches, but always before it can be stuck: once the
    // reader has drained everything, fwdCnt - lastAdvertised is at least what the guest thinks it
    // has in flight, so an update is owed whenever the guest could be waiting.
    this.creditThreshold = Math.max(1, Math.floor(bufAlloc / 4));
  }

  /** Bytes the guest can still take: its buf_alloc minus what we sent and it has not consumed. */
  peerCredit(): number {
    const inFlight = u32Diff(this.txCnt, this.peerFwdCnt);
    // A fwd_cnt ahead of what we sent (hostile) wraps to a huge in-flight count: no credit.
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  /** Bytes the guest may still send us before it breaks its credit. */
  localCredit(): number {
    const used = u32Diff(this.rxCnt, this.fwdCnt);
    return used >= this.bufAlloc ? 0 : this.bufAlloc - used;
  }

  /** Whether the connection has something it could send now. */
  hasWork(): boolean {
    if (this.sendRst) return true;
    if (this.state === 'closed') return false;
    if (this.sendRequest || this.sendResponse) return true;
    if (this.state !== 'established') return false;
    if (this.txChunk !== null && (this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) === 0) {
      if (this.peerCredit() > 0 || !this.creditRequested) return true;
    }
    if (this.pendingShutdownFlags() !== 0) return true;
    return this.sendCreditUpdate;
  }

  /** SHUTDOWN flags owed to the guest now (a SEND shutdown waits for the data before it). */
  private pendingShutdownFlags(): number {
    const owed = this.localShutdown & ~this.shutdownSent & VIRTIO_VSOCK_SHUTDOWN_MASK;
    if (owed === 0) return 0;
    if ((owed & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0 && this.txChunk !== null) return 0;
    return owed;
  }

  /**
   * The next packet to send in a receive buffer with room for `maxPayload` payload bytes, or null.
   * Control packets come first (RST, REQUEST, RESPONSE), then data while the guest has credit, then
   * a SHUTDOWN once the data before it is out, then a bare CREDIT_UPDATE. Every packet carries our
   * buf_alloc and fwd_cnt, so any packet also serves as a credit update.
   */
  nextOutgoing(maxPayload: number): OutgoingPacket | null {
    if (this.sendRst) {
      this.sendRst = false;
      const pkt = this.packet(VIRTIO_VSOCK_OP_RST, 0, null);
      this.finish();
      return pkt;
    }
    if (this.state === 'closed') return null;
    if (this.sendRequest) {
      this.sendRequest = false;
      return this.packet(VIRTIO_VSOCK_OP_REQUEST, 0, null);
    }
    if (this.sendResponse) {
      this.sendResponse = false;
      this.state = 'established';
      return this.packet(VIRTIO_VSOCK_OP_RESPONSE, 0, null);
    }
    if (this.state !== 'established') return null;
    const chunk = this.txChunk;
    if (chunk !== null && (this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) === 0) {
      const credit = this.peerCredit();
      if (credit > 0 && maxPayload > 0) {
        const n = Math.min(maxPayload, credit, chunk.length - this.txOffset);
        const payload = chunk.subarray(this.txOffset, this.txOffset + n);
        this.txOffset += n;
        this.txCnt = u32Add(this.txCnt, n);
        const pkt = this.packet(VIRTIO_VSOCK_OP_RW, 0, payload);
        if (this.txOffset >= chunk.length) this.completeWrite(null);
        return pkt;
      }
      if (credit === 0 && !this.creditRequested) {
        // Linux answers a CREDIT_REQUEST at once; without it a guest that only updates its credit
        // when asked would leave the host writer waiting.
        this.creditRequested = true;
        return this.packet(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 0, null);
      }
    }
    const flags = this.pendingShutdownFlags();
    if (flags !== 0) {
      this.shutdownSent |= flags;
      return this.packet(VIRTIO_VSOCK_OP_SHUTDOWN, flags, null);
    }
    if (this.sendCreditUpdate) return this.packet(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, null);
    return null;
  }

  private packet(op: number, flags: number, payload: Uint8Array | null): OutgoingPacket {
    this.lastAdvertisedFwdCnt = this.fwdCnt;
    this.sendCreditUpdate = false;
    return { op, flags, payload, bufAlloc: this.bufAlloc, fwdCnt: this.fwdCnt };
  }

  /** Takes the guest's buf_alloc and fwd_cnt from any of its packets. */
  updatePeerCredit(bufAlloc: number, fwdCnt: number): void {
    this.peerBufAlloc = bufAlloc;
    this.peerFwdCnt = fwdCnt;
    if (this.peerCredit() > 0) this.creditRequested = false;
    if (this.txChunk !== null && this.hasWork()) this.owner.wake(this);
  }

  /** A RESPONSE to our REQUEST: the connection is established. Returns false if none was expected. */
  onResponse(): boolean {
    if (this.state !== 'connecting' || this.sendRequest) return false;
    this.state = 'established';
    if (this.hasWork()) this.owner.wake(this);
    return true;
  }

  /**
   * Data from the guest. Anything but an established connection whose guest side may still send,
   * within credit, is a protocol violation the caller answers with RST.
   */
  onGuestData(data: Buffer): DataVerdict {
    if (this.state !== 'established') return 'not-established';
    if ((this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) return 'after-shutdown';
    if (data.length > this.localCredit()) return 'credit-exceeded';
    this.rxCnt = u32Add(this.rxCnt, data.length);
    if (data.length > 0) {
      this.rxQueue.push(data);
      this.rxQueued += data.length;
    }
    this.deliver();
    return 'ok';
  }

  /**
   * A SHUTDOWN from the guest. Its SEND half ends the host reader's stream (after the data before
   * it); its RECEIVE half fails the host's pending write. Both halves together end the connection:
   * we answer with RST, as Linux does (the guest waits for it to finish its close).
   */
  onShutdown(flags: number): void {
    const f = flags & VIRTIO_VSOCK_SHUTDOWN_MASK;
    this.peerShutdown |= f;
    if ((f & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) !== 0 && this.txChunk !== null) {
      this.completeWrite(new VsockError('PEER_CLOSED', `guest port ${this.guestPort} stopped receiving`));
    }
    if ((f & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) this.deliver();
    if (this.peerShutdown === VIRTIO_VSOCK_SHUTDOWN_MASK && this.state !== 'closed') {
      this.sendRst = true;
      this.owner.wake(this);
    }
  }

  /** The guest asked for our credit. */
  onCreditRequest(): void {
    if (this.state === 'closed') return;
    this.sendCreditUpdate = true;
    this.owner.wake(this);
  }

  /**
   * An RST from the guest: the connection is over. After the guest's own SEND shutdown (a normal
   * close) the host reader still gets the queued data and its end of stream; otherwise it is an
   * abort and the host end is destroyed with `err`.
   */
  onReset(err: Error): void {
    if (this.state === 'closed') return;
    this.sendRst = false;
    this.finish();
    if (this.txChunk !== null) this.completeWrite(new VsockError('CONNECTION_RESET', `guest port ${this.guestPort} reset the connection`));
    if ((this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) === 0) {
      this.sink?.abort(err);
    } else {
      this.deliver();
    }
  }

  /**
   * Ends the connection from the device side: the guest gets an RST if `rst` (a protocol violation),
   * the host end is destroyed with `err`.
   */
  fail(err: Error, rst: boolean): void {
    if (this.state === 'closed') return;
    this.dropPendingWrite();
    if (rst) {
      this.sendRst = true;
      this.owner.wake(this);
    } else {
      this.finish();
    }
    this.sink?.abort(err);
  }

  /** Over for good, nothing sent (device reset, transport reset, close). */
  abort(err: Error): void {
    if (this.state === 'closed' && !this.sendRst) return;
    this.sendRst = false;
    this.finish();
    this.dropPendingWrite();
    this.sink?.abort(err);
  }

  private finish(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.owner.release(this);
  }

  // ---------------------------------------------------------------------------------------------
  // Host side

  /** The host reader wants data. */
  hostRead(): void {
    this.hostReading = true;
    this.readDuringPush = true;
    this.deliver();
  }

  /** Moves queued guest data to the host reader while it wants it; owes a credit update when due. */
  deliver(): void {
    const sink = this.sink;
    if (sink === null) return;
    // A push can run host code (a 'data' handler) that reads again: never nest.
    if (this.delivering) return;
    this.delivering = true;
    try {
      this.deliverLoop(sink);
    } finally {
      this.delivering = false;
    }
  }

  private deliverLoop(sink: ConnectionSink): void {
    while (this.hostReading && this.rxQueue.length > 0) {
      const chunk = this.rxQueue.shift()!;
      this.rxQueued -= chunk.length;
      this.fwdCnt = u32Add(this.fwdCnt, chunk.length);
      this.readDuringPush = false;
      // After a throw the stream's own bookkeeping is unknown: keep offering (the next push says).
      const more = hostCall(() => sink.push(chunk), true);
      // A read requested from inside push (nested, so not served there) still stands.
      this.hostReading = more || this.readDuringPush;
    }
    if (this.rxQueue.length === 0 && !this.eofDelivered && (this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) {
      this.eofDelivered = true;
      hostCall(() => sink.push(null), false);
    }
    if (this.state === 'established' && !this.sendCreditUpdate && (this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) === 0 &&
        u32Diff(this.fwdCnt, this.lastAdvertisedFwdCnt) >= this.creditThreshold) {
      this.sendCreditUpdate = true;
      this.owner.wake(this);
    }
  }

  /**
   * A host write: `chunk` is sent as the guest's credit and receive buffers allow; `callback` runs
   * once all of it is in guest memory (or with an error if the connection cannot carry it).
   */
  hostWrite(chunk: Uint8Array, callback: (err?: Error | null) => void): void {
    if (this.state === 'closed' || this.sendRst) {
      callback(new VsockError('CONNECTION_RESET', `connection to guest port ${this.guestPort} is closed`));
      return;
    }
    if ((this.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE) !== 0) {
      callback(new VsockError('PEER_CLOSED', `guest port ${this.guestPort} stopped receiving`));
      return;
    }
    if (chunk.length === 0) {
      callback(null);
      return;
    }
    this.txChunk = chunk;
    this.txOffset = 0;
    this.txCallback = callback;
    if (this.hasWork()) this.owner.wake(this);
  }

  /** The host ended its writable side: SHUTDOWN(SEND) once its data is out; the reader goes on. */
  hostEnd(): void {
    if ((this.localShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) return;
    this.localShutdown |= VIRTIO_VSOCK_SHUTDOWN_F_SEND;
    if (this.state !== 'closed' && this.hasWork()) this.owner.wake(this);
  }

  /** The host destroyed its end: an open connection is reset (RST to the guest). */
  hostDestroy(): void {
    this.sink = null;
    this.dropPendingWrite();
    if (this.state === 'closed') return;
    this.sendRst = true;
    this.owner.wake(this);
  }

  private completeWrite(err: Error | null): void {
    const cb = this.txCallback;
    this.txChunk = null;
    this.txOffset = 0;
    this.txCallback = null;
    // The stream may write its next chunk from inside the callback: state is settled first.
    if (cb !== null) hostCall(() => cb(err), undefined);
  }

  private dropPendingWrite(): void {
    this.txChunk = null;
    this.txOffset = 0;
    this.txCallback = null;
  }
}

/** The connection table key: host port and guest port (each a u32). */
export function connectionKey(hostPort: number, guestPort: number): string {
  return `${hostPort}:${guestPort}`;
}
