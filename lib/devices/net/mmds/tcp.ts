/**
 * A passive TCP endpoint for the metadata service (RFC 9293, server side only): it accepts
 * connections on one address and port, delivers in-order bytes to a stream handler, sends its
 * replies within the peer's window in MSS-sized segments and retransmits what is not
 * acknowledged (go-back-N from the oldest unacknowledged byte, exponential back-off).
 *
 * What it deliberately leaves out, with the reason: out-of-order segments are dropped and
 * answered with a duplicate ACK instead of being queued (the peer retransmits; a queue would be
 * guest-controlled memory); no window scaling, SACK or timestamps are offered (replies are small);
 * there is no TIME-WAIT (the peer, which closes last or simultaneously, keeps it).
 *
 * Bounds: at most `maxConnections` connections (new SYNs evict a closing or half-open one, or
 * are refused with RST), at most `maxRecvBuffer` unconsumed bytes per connection (the advertised
 * window), and the handler runs only when the previous reply has been acknowledged, so at most
 * one reply per connection is buffered. Connections idle for {@link TCP_IDLE_TIMEOUT_MS} or
 * unacknowledged after {@link TCP_MAX_RETRANSMITS} back-offs are reset. Nothing a peer sends
 * can make it throw.
 * @module
 */
import type { TimerFunctions } from '../../../ratelimit';
import { DeviceError, encodeBytes, stateField, type StateObject, type StateValue } from '../../contract';
import type { StreamStep } from './http';
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type TcpSegment } from './packet';

/** First retransmission timeout (the peer is on the same host: no need for RFC 6298's 1 s). */
export const TCP_RTO_INITIAL_MS = 200;
/** Largest retransmission timeout after back-off. */
export const TCP_RTO_MAX_MS = 6400;
/** Retransmissions of the same data before the connection is reset. */
export const TCP_MAX_RETRANSMITS = 6;
/** A connection with no segment from the peer for this long is reset. */
export const TCP_IDLE_TIMEOUT_MS = 60_000;
/** MSS assumed when the peer's SYN has none (RFC 9293 §3.7.1). */
export const TCP_DEFAULT_MSS = 536;
/** Largest window a 16-bit field can advertise without window scaling. */
const MAX_WINDOW = 0xffff;
/** Saved connections are bounded by this many bytes of buffers, whatever the configuration says. */
const MAX_SAVED_BUFFER = 64 * 1024 * 1024;

// Sequence space arithmetic (mod 2^32).
const add = (a: number, b: number): number => (a + b) >>> 0;
const sub = (a: number, b: number): number => (a - b) >>> 0;
/** a < b in sequence space. */
const lt = (a: number, b: number): boolean => ((a - b) | 0) < 0;
const gt = (a: number, b: number): boolean => ((a - b) | 0) > 0;

/** A segment as the responder receives it: the TCP fields plus where it came from. */
export interface InboundSegment extends TcpSegment {
  /** IPv4 source. */
  srcIp: number;
  /** Ethernet source (replies go back to it). */
  srcMac: Uint8Array;
}

/** A segment the responder wants sent; the caller wraps it in IPv4 and Ethernet. */
export interface OutboundSegment {
  /** IPv4 destination. */
  dstIp: number;
  /** Ethernet destination. */
  dstMac: Uint8Array;
  /** Our port. */
  srcPort: number;
  /** The peer's port. */
  dstPort: number;
  /** Sequence number. */
  seq: number;
  /** Acknowledgment number (0 when ACK is not set). */
  ack: number;
  /** TCP_* flags. */
  flags: number;
  /** Our receive window. */
  window: number;
  /** MSS option (SYN-ACK only). */
  mss?: number;
  /** Data. */
  payload?: Uint8Array;
}

/** Construction options. */
export interface TcpResponderOptions {
  /** The port we listen on (80). */
  localPort: number;
  /** Largest segment payload we send or accept (MTU minus 40). */
  mss: number;
  /** Bound on simultaneous connections. */
  maxConnections: number;
  /** Bound on received, unconsumed bytes per connection (and so our window). */
  maxRecvBuffer: number;
  /** Turns received bytes into replies. */
  handler: (input: Uint8Array) => StreamStep;
  /** Sends a segment. */
  emit: (seg: OutboundSegment) => void;
  /** Monotonic milliseconds. */
  clock: () => number;
  /** Timers for retransmission and idle timeouts. */
  timers: TimerFunctions;
  /** A random u32 (initial sequence numbers). */
  random: () => number;
}

/** Counters of the responder. */
export interface TcpMetrics {
  /** Segments received. */
  readonly segmentsIn: number;
  /** Segments sent. */
  readonly segmentsOut: number;
  /** Connections accepted. */
  readonly connectionsOpened: number;
  /** Connections that ended (closed, reset or timed out). */
  readonly connectionsClosed: number;
  /** Connections open now. */
  readonly connections: number;
  /** SYNs refused because the table was full of live connections. */
  readonly connectionsRefused: number;
  /** Connections evicted to make room for a new one. */
  readonly connectionsEvicted: number;
  /** RST segments sent. */
  readonly resetsSent: number;
  /** Connections ended by a RST from the peer. */
  readonly resetsReceived: number;
  /** Segments retransmitted (data, FIN or SYN-ACK). */
  readonly retransmits: number;
  /** Connections reset after too many retransmissions or idleness. */
  readonly timeouts: number;
  /** Segments dropped: out of order, outside the window, unacceptable ACKs, bad flags. */
  readonly dropped: number;
}

/** One connection. Plain data so it can be saved as it is. */
interface Conn {
  remoteIp: number;
  remotePort: number;
  remoteMac: Uint8Array;
  synRcvd: boolean;
  irs: number;
  rcvNxt: number;
  iss: number;
  sndUna: number;
  sndNxt: number;
  /** Highest sequence number sent so far (sndNxt is rewound on retransmission). */
  sndMax: number;
  sndWnd: number;
  mss: number;
  recv: Uint8Array;
  recvLen: number;
  /** Bytes from sndUna on, not yet acknowledged (excluding FIN). */
  send: Uint8Array;
  fin: 'none' | 'queued' | 'sent' | 'acked';
  peerFin: boolean;
  rto: number;
  retries: number;
  /** When to retransmit (or probe a zero window); Infinity when nothing is outstanding. */
  rtxAt: number;
  lastActivity: number;
  lastWindow: number;
}

const key = (ip: number, port: number): number => ip * 0x10000 + port;

/** See the module comment. */
export class TcpResponder {
  private readonly o: TcpResponderOptions;
  private readonly conns = new Map<number, Conn>();
  private timer: unknown = undefined;
  private timerAt = Infinity;
  private closed = false;
  private readonly c = {
    segmentsIn: 0,
    segmentsOut: 0,
    connectionsOpened: 0,
    connectionsClosed: 0,
    connectionsRefused: 0,
    connectionsEvicted: 0,
    resetsSent: 0,
    resetsReceived: 0,
    retransmits: 0,
    timeouts: 0,
    dropped: 0,
  };

  constructor(options: TcpResponderOptions) {
    this.o = options;
  }

  /** Counters. */
  metrics(): TcpMetrics {
    return { ...this.c, connections: this.conns.size };
  }

  /** Number of open connections. */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** Handles one segment addressed to us. Never throws. */
  input(seg: InboundSegment): void {
    if (this.closed) return;
    this.c.segmentsIn++;
    try {
      this.process(seg);
    } catch {
      // Only a bug gets here; the segment is dropped rather than taking the event loop down.
      this.c.dropped++;
    }
    this.arm();
  }

  private process(seg: InboundSegment): void {
    if (seg.dstPort !== this.o.localPort) {
      this.resetFor(seg);
      return;
    }
    const k = key(seg.srcIp, seg.srcPort);
    const conn = this.conns.get(k);
    if (conn === undefined) {
      if (seg.flags & TCP_RST) return; // never answer a RST (RFC 9293 §3.10.7.1)
      if ((seg.flags & (TCP_SYN | TCP_ACK | TCP_FIN)) === TCP_SYN) this.accept(seg, k);
      else this.resetFor(seg);
      return;
    }
    const now = this.o.clock();
    if (conn.synRcvd) {
      this.inSynRcvd(conn, k, seg, now);
      return;
    }
    this.inSynchronized(conn, k, seg, now);
  }

  /** A new connection from a SYN. */
  private accept(seg: InboundSegment, k: number): void {
    if (this.conns.size >= this.o.maxConnections && !this.evictOne()) {
      this.c.connectionsRefused++;
      this.resetFor(seg);
      return;
    }
    const now = this.o.clock();
    const iss = this.o.random() >>> 0;
    const peerMss = seg.mss !== undefined && seg.mss >= 64 ? seg.mss : TCP_DEFAULT_MSS;
    const conn: Conn = {
      remoteIp: seg.srcIp,
      remotePort: seg.srcPort,
      remoteMac: seg.srcMac.slice(0, 6),
      synRcvd: true,
      irs: seg.seq,
      rcvNxt: add(seg.seq, 1),
      iss,
      sndUna: iss,
      sndNxt: add(iss, 1),
      sndMax: add(iss, 1),
      sndWnd: seg.window,
      mss: Math.min(peerMss, this.o.mss),
      recv: new Uint8Array(this.o.maxRecvBuffer),
      recvLen: 0,
      send: new Uint8Array(0),
      fin: 'none',
      peerFin: false,
      rto: TCP_RTO_INITIAL_MS,
      retries: 0,
      rtxAt: now + TCP_RTO_INITIAL_MS,
      lastActivity: now,
      lastWindow: 0,
    };
    this.conns.set(k, conn);
    this.c.connectionsOpened++;
    this.sendSynAck(conn);
  }

  /** Makes room: drops the least recently active connection that is half-open or closing. */
  private evictOne(): boolean {
    let victim: number | undefined;
    let oldest = Infinity;
    for (const [k, c] of this.conns) {
      if ((c.synRcvd || c.fin !== 'none' || c.peerFin) && c.lastActivity < oldest) {
        oldest = c.lastActivity;
        victim = k;
      }
    }
    if (victim === undefined) return false;
    const c = this.conns.get(victim)!;
    this.sendReset(c);
    this.remove(victim);
    this.c.connectionsEvicted++;
    return true;
  }

  private inSynRcvd(conn: Conn, k: number, seg: InboundSegment, now: number): void {
    if (seg.flags & TCP_RST) {
      // RFC 9293 §3.10.7.4: acceptable if in the window; in SYN-RECEIVED the window starts at rcvNxt.
      if (seg.seq === conn.rcvNxt) {
        this.c.resetsReceived++;
        this.remove(k);
      } else this.c.dropped++;
      return;
    }
    if (seg.flags & TCP_SYN) {
      // A retransmitted SYN: our SYN-ACK was lost.
      if (seg.seq === conn.irs && !(seg.flags & TCP_ACK)) this.sendSynAck(conn);
      else this.c.dropped++;
      return;
    }
    if (!(seg.flags & TCP_ACK)) {
      this.c.dropped++;
      return;
    }
    if (seg.ack !== add(conn.iss, 1)) {
      this.resetFor(seg);
      return;
    }
    conn.synRcvd = false;
    conn.sndUna = seg.ack;
    conn.sndWnd = seg.window;
    conn.retries = 0;
    conn.rto = TCP_RTO_INITIAL_MS;
    conn.rtxAt = Infinity;
    this.inSynchronized(conn, k, seg, now);
  }

  private inSynchronized(conn: Conn, k: number, seg: InboundSegment, now: number): void {
    const space = this.o.maxRecvBuffer - conn.recvLen;
    if (seg.flags & TCP_RST) {
      if (seg.seq === conn.rcvNxt) {
        this.c.resetsReceived++;
        this.remove(k);
      } else {
        // RFC 5961 §3.2: an in-window RST that is not exact gets a challenge ACK; others are ignored.
        if (!lt(seg.seq, conn.rcvNxt) && lt(seg.seq, add(conn.rcvNxt, Math.max(space, 1)))) this.sendAck(conn);
        this.c.dropped++;
      }
      return;
    }
    if (seg.flags & TCP_SYN) {
      // RFC 5961 §4.2: a SYN on a synchronized connection gets a challenge ACK.
      this.c.dropped++;
      this.sendAck(conn);
      return;
    }
    if (!(seg.flags & TCP_ACK)) {
      this.c.dropped++;
      return;
    }
    conn.lastActivity = now;

    // Acknowledgment.
    if (gt(seg.ack, conn.sndMax)) {
      // Acknowledges something never sent (RFC 9293 §3.10.7.4): answer with an ACK, drop it.
      this.c.dropped++;
      this.sendAck(conn);
      return;
    }
    if (gt(seg.ack, conn.sndUna)) {
      const acked = sub(seg.ack, conn.sndUna);
      const dataAcked = Math.min(acked, conn.send.length);
      conn.send = conn.send.subarray(dataAcked);
      conn.sndUna = seg.ack;
      if (lt(conn.sndNxt, conn.sndUna)) conn.sndNxt = conn.sndUna;
      if (conn.fin === 'sent' && acked > dataAcked) conn.fin = 'acked';
      conn.retries = 0;
      conn.rto = TCP_RTO_INITIAL_MS;
      conn.rtxAt = conn.sndUna === conn.sndMax ? Infinity : now + conn.rto;
    }
    if (!lt(seg.ack, conn.sndUna)) conn.sndWnd = seg.window;

    // Data and FIN, in order only.
    const occupies = seg.payload.length > 0 || (seg.flags & TCP_FIN) !== 0;
    let accepted = 0;
    if (seg.payload.length > 0) {
      if (gt(seg.seq, conn.rcvNxt)) {
        this.c.dropped++; // out of order: the duplicate ACK below asks for rcvNxt again
      } else {
        const skip = sub(conn.rcvNxt, seg.seq);
        if (skip < seg.payload.length && !conn.peerFin) {
          const fresh = seg.payload.subarray(skip);
          accepted = Math.min(fresh.length, space);
          if (accepted < fresh.length) this.c.dropped++;
          conn.recv.set(fresh.subarray(0, accepted), conn.recvLen);
          conn.recvLen += accepted;
          conn.rcvNxt = add(conn.rcvNxt, accepted);
        }
      }
    }
    if (seg.flags & TCP_FIN && !conn.peerFin && add(seg.seq, seg.payload.length) === conn.rcvNxt) {
      conn.peerFin = true;
      conn.rcvNxt = add(conn.rcvNxt, 1);
    }

    this.runHandler(conn);
    if (conn.fin === 'acked' && conn.peerFin) {
      // Both directions are closed; the peer's last ACK (if any) needs no answer.
      if (occupies) this.sendAck(conn);
      this.remove(k);
      return;
    }
    const sent = this.pump(conn, now, false);
    if (!sent && (occupies || this.windowOpened(conn))) this.sendAck(conn);
  }

  /** Feeds the handler while it can make progress and the previous reply is acknowledged. */
  private runHandler(conn: Conn): void {
    while (conn.recvLen > 0 && conn.send.length === 0 && conn.fin === 'none') {
      let step: StreamStep;
      try {
        step = this.o.handler(conn.recv.subarray(0, conn.recvLen));
      } catch {
        step = { consumed: conn.recvLen, close: true };
      }
      const consumed = Math.max(0, Math.min(conn.recvLen, Math.floor(step.consumed)));
      if (consumed === 0 && step.reply === undefined && !step.close) break;
      conn.recv.copyWithin(0, consumed, conn.recvLen);
      conn.recvLen -= consumed;
      if (step.reply !== undefined && step.reply.length > 0) conn.send = step.reply;
      if (step.close) {
        conn.fin = 'queued';
        conn.recvLen = 0;
        break;
      }
    }
    // The peer will send nothing more. Once every complete request has been answered (nothing
    // left, or only an incomplete tail that can never complete), our FIN follows the last reply.
    if (conn.peerFin && conn.fin === 'none' && (conn.recvLen === 0 || conn.send.length === 0)) {
      conn.fin = 'queued';
      conn.recvLen = 0;
    }
  }

  /** Our window grew past one segment after having been smaller: tell the peer. */
  private windowOpened(conn: Conn): boolean {
    const w = this.window(conn);
    return conn.lastWindow < conn.mss && w >= conn.mss;
  }

  private window(conn: Conn): number {
    return Math.min(MAX_WINDOW, this.o.maxRecvBuffer - conn.recvLen);
  }

  /**
   * Sends what the peer's window allows, then the FIN when it is due. `probe`: send at least one
   * byte even into a zero window (a window probe). Returns whether anything was sent.
   */
  private pump(conn: Conn, now: number, probe: boolean): boolean {
    let sent = false;
    const dataEnd = add(conn.sndUna, conn.send.length);
    const wndEnd = add(conn.sndUna, Math.max(conn.sndWnd, probe ? 1 : 0));
    while (lt(conn.sndNxt, dataEnd) && lt(conn.sndNxt, wndEnd)) {
      const off = sub(conn.sndNxt, conn.sndUna);
      const n = Math.min(conn.mss, sub(dataEnd, conn.sndNxt), sub(wndEnd, conn.sndNxt));
      const last = add(conn.sndNxt, n) === dataEnd;
      this.emit(conn, conn.sndNxt, TCP_ACK | (last ? TCP_PSH : 0), conn.send.subarray(off, off + n));
      if (lt(conn.sndNxt, conn.sndMax)) this.c.retransmits++;
      conn.sndNxt = add(conn.sndNxt, n);
      sent = true;
    }
    if ((conn.fin === 'queued' || conn.fin === 'sent') && conn.sndNxt === dataEnd) {
      if (conn.fin === 'sent') this.c.retransmits++;
      this.emit(conn, conn.sndNxt, TCP_FIN | TCP_ACK);
      conn.fin = 'sent';
      conn.sndNxt = add(conn.sndNxt, 1);
      sent = true;
    }
    if (gt(conn.sndNxt, conn.sndMax)) conn.sndMax = conn.sndNxt;
    const outstanding = conn.sndUna !== conn.sndMax || lt(conn.sndNxt, dataEnd);
    if (outstanding && conn.rtxAt === Infinity) conn.rtxAt = now + conn.rto;
    if (!outstanding) conn.rtxAt = Infinity;
    return sent;
  }

  private emit(conn: Conn, seq: number, flags: number, payload?: Uint8Array, mss?: number): void {
    const window = this.window(conn);
    conn.lastWindow = window;
    this.c.segmentsOut++;
    this.o.emit({
      dstIp: conn.remoteIp,
      dstMac: conn.remoteMac,
      srcPort: this.o.localPort,
      dstPort: conn.remotePort,
      seq,
      ack: conn.rcvNxt,
      flags,
      window,
      ...(mss !== undefined ? { mss } : {}),
      ...(payload !== undefined && payload.length > 0 ? { payload } : {}),
    });
  }

  private sendSynAck(conn: Conn): void {
    this.emit(conn, conn.iss, TCP_SYN | TCP_ACK, undefined, this.o.mss);
  }

  private sendAck(conn: Conn): void {
    this.emit(conn, conn.sndNxt, TCP_ACK);
  }

  private sendReset(conn: Conn): void {
    this.c.resetsSent++;
    this.c.segmentsOut++;
    this.o.emit({
      dstIp: conn.remoteIp,
      dstMac: conn.remoteMac,
      srcPort: this.o.localPort,
      dstPort: conn.remotePort,
      seq: conn.sndNxt,
      ack: 0,
      flags: TCP_RST,
      window: 0,
    });
  }

  /** The RST answering a segment that belongs to no connection (RFC 9293 §3.10.7.1). */
  private resetFor(seg: InboundSegment): void {
    if (seg.flags & TCP_RST) return;
    this.c.resetsSent++;
    this.c.segmentsOut++;
    const len = seg.payload.length + (seg.flags & TCP_SYN ? 1 : 0) + (seg.flags & TCP_FIN ? 1 : 0);
    this.o.emit(
      seg.flags & TCP_ACK
        ? { dstIp: seg.srcIp, dstMac: seg.srcMac, srcPort: seg.dstPort, dstPort: seg.srcPort, seq: seg.ack, ack: 0, flags: TCP_RST, window: 0 }
        : { dstIp: seg.srcIp, dstMac: seg.srcMac, srcPort: seg.dstPort, dstPort: seg.srcPort, seq: 0, ack: add(seg.seq, len), flags: TCP_RST | TCP_ACK, window: 0 },
    );
  }

  private remove(k: number): void {
    if (this.conns.delete(k)) this.c.connectionsClosed++;
  }

  // --- Timers --------------------------------------------------------------------------------

  /** Arms the single timer for the earliest retransmission or idle deadline. */
  private arm(): void {
    if (this.closed) return;
    let next = Infinity;
    for (const c of this.conns.values()) next = Math.min(next, c.rtxAt, c.lastActivity + TCP_IDLE_TIMEOUT_MS);
    if (next === this.timerAt) return;
    if (this.timer !== undefined) this.o.timers.clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = next;
    if (next === Infinity) return;
    const delay = Math.max(0, Math.ceil(next - this.o.clock()));
    this.timer = this.o.timers.setTimeout(() => this.fire(), delay);
    // A retransmission is not a reason to keep the process alive once everything else has ended.
    (this.timer as { unref?: () => void } | undefined)?.unref?.();
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.closed) return;
    try {
      this.expire(this.o.clock());
    } catch {
      this.c.dropped++;
    }
    this.arm();
  }

  /** Runs every deadline that has passed. Exposed for tests that drive time by hand. */
  expire(now: number): void {
    for (const [k, c] of [...this.conns]) {
      if (c.lastActivity + TCP_IDLE_TIMEOUT_MS <= now) {
        this.c.timeouts++;
        this.sendReset(c);
        this.remove(k);
        continue;
      }
      if (c.rtxAt > now) continue;
      if (++c.retries > TCP_MAX_RETRANSMITS) {
        this.c.timeouts++;
        this.sendReset(c);
        this.remove(k);
        continue;
      }
      c.rto = Math.min(c.rto * 2, TCP_RTO_MAX_MS);
      c.rtxAt = now + c.rto;
      if (c.synRcvd) {
        this.c.retransmits++;
        this.sendSynAck(c);
        continue;
      }
      // Go back to the oldest unacknowledged byte; with a zero window this is the window probe.
      c.sndNxt = c.sndUna;
      this.pump(c, now, true);
    }
  }

  /** Drops every connection silently (device reset) and stops the timer. */
  reset(): void {
    this.c.connectionsClosed += this.conns.size;
    this.conns.clear();
    this.arm();
  }

  /** Stops for good. */
  close(): void {
    this.closed = true;
    this.conns.clear();
    if (this.timer !== undefined) this.o.timers.clearTimeout(this.timer);
    this.timer = undefined;
  }

  // --- State ---------------------------------------------------------------------------------

  /** Every connection as plain data; deadlines relative to now. */
  saveState(): StateObject {
    const now = this.o.clock();
    const rel = (t: number): StateValue => (t === Infinity ? null : Math.max(0, Math.ceil(t - now)));
    return {
      connections: [...this.conns.values()].map((c) => ({
        remoteIp: c.remoteIp,
        remotePort: c.remotePort,
        remoteMac: encodeBytes(c.remoteMac),
        synRcvd: c.synRcvd,
        irs: c.irs,
        rcvNxt: c.rcvNxt,
        iss: c.iss,
        sndUna: c.sndUna,
        sndNxt: c.sndNxt,
        sndMax: c.sndMax,
        sndWnd: c.sndWnd,
        mss: c.mss,
        recv: encodeBytes(c.recv.subarray(0, c.recvLen)),
        send: encodeBytes(c.send),
        fin: c.fin,
        peerFin: c.peerFin,
        rto: c.rto,
        retries: c.retries,
        rtxIn: rel(c.rtxAt),
        idleFor: Math.max(0, Math.floor(now - c.lastActivity)),
      })),
    };
  }

  /** See {@link saveState}. Validates everything; on error nothing changes. */
  restoreState(state: StateObject): void {
    const list = stateField.arr(state, 'connections', this.o.maxConnections);
    const now = this.o.clock();
    const u32 = (s: StateObject, f: string) => stateField.int(s, f, 0, 0xffffffff);
    const restored: [number, Conn][] = [];
    for (const item of list) {
      if (item === null || typeof item !== 'object' || Array.isArray(item)) throw new DeviceError('BAD_STATE', 'mmds tcp: connection must be an object');
      const s = item as StateObject;
      const fin = stateField.str(s, 'fin');
      if (fin !== 'none' && fin !== 'queued' && fin !== 'sent' && fin !== 'acked') throw new DeviceError('BAD_STATE', `mmds tcp: bad fin state ${fin}`);
      const recvBytes = stateField.bytes(s, 'recv', this.o.maxRecvBuffer);
      const recv = new Uint8Array(this.o.maxRecvBuffer);
      recv.set(recvBytes);
      const rtxIn = s.rtxIn;
      if (rtxIn !== null && (typeof rtxIn !== 'number' || !Number.isInteger(rtxIn) || rtxIn < 0 || rtxIn > TCP_IDLE_TIMEOUT_MS)) {
        throw new DeviceError('BAD_STATE', 'mmds tcp: rtxIn must be null or a delay in ms');
      }
      const c: Conn = {
        remoteIp: u32(s, 'remoteIp'),
        remotePort: stateField.int(s, 'remotePort', 0, 0xffff),
        remoteMac: stateField.bytes(s, 'remoteMac', 6),
        synRcvd: stateField.bool(s, 'synRcvd'),
        irs: u32(s, 'irs'),
        rcvNxt: u32(s, 'rcvNxt'),
        iss: u32(s, 'iss'),
        sndUna: u32(s, 'sndUna'),
        sndNxt: u32(s, 'sndNxt'),
        sndMax: u32(s, 'sndMax'),
        sndWnd: stateField.int(s, 'sndWnd', 0, MAX_WINDOW),
        mss: stateField.int(s, 'mss', 1, this.o.mss),
        recv,
        recvLen: recvBytes.length,
        send: stateField.bytes(s, 'send', MAX_SAVED_BUFFER),
        fin,
        peerFin: stateField.bool(s, 'peerFin'),
        rto: stateField.int(s, 'rto', 1, TCP_RTO_MAX_MS),
        retries: stateField.int(s, 'retries', 0, TCP_MAX_RETRANSMITS),
        rtxAt: rtxIn === null ? Infinity : now + rtxIn,
        lastActivity: now - stateField.int(s, 'idleFor', 0, TCP_IDLE_TIMEOUT_MS),
        lastWindow: 0,
      };
      if (c.remoteMac.length !== 6) throw new DeviceError('BAD_STATE', 'mmds tcp: remoteMac must be 6 bytes');
      restored.push([key(c.remoteIp, c.remotePort), c]);
    }
    this.conns.clear();
    for (const [k, c] of restored) this.conns.set(k, c);
    this.timerAt = NaN; // force re-arming
    this.arm();
  }
}
