/**
 * The metadata service as one NIC sees it: recognises frames addressed to the service (ARP for
 * its address, any IPv4 to it), answers ARP, runs the TCP responder on port 80 with the HTTP
 * handler over the shared {@link MmdsStore}, and hands reply frames back to the NIC. None of
 * this traffic reaches the NIC's TAP or link.
 * @module
 */
import type { TimerFunctions } from '../../../ratelimit';
import { stateField, type StateObject } from '../../contract';
import { ETH_HLEN } from '../constants';
import { mmdsStreamHandler, newHttpCounters, type MmdsHttpCounters } from './http';
import {
  ARP_OP_REQUEST,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  FRAME_ARP_TPA,
  FRAME_IPV4_DST,
  IPPROTO_TCP,
  IPV4_HLEN,
  TCP_HLEN,
  buildArpReply,
  buildTcpFrame,
  ipv4ToNumber,
  parseArp,
  parseIpv4,
  parseTcp,
} from './packet';
import type { MmdsStore } from './store';
import { TcpResponder, type OutboundSegment, type TcpMetrics } from './tcp';

/** The MAC address the service answers ARP with (Firecracker's). */
export const MMDS_MAC: Uint8Array = Uint8Array.from([0x06, 0x01, 0x23, 0x45, 0x67, 0x01]);
/** The service's TCP port. */
export const MMDS_TCP_PORT = 80;
/** Simultaneous connections per NIC (Firecracker's default). */
export const MMDS_MAX_CONNECTIONS = 30;
/** Unconsumed request bytes per connection: one request at the HTTP limits, with room to spare. */
export const MMDS_RECV_BUFFER = 16 * 1024;
/** Bytes of a frame {@link MmdsStack.isForMmds} needs to decide (through the ARP target address). */
export const MMDS_PEEK_BYTES = FRAME_ARP_TPA + 4;

/** Counters of one NIC's service endpoint (merged into the NIC's metrics with an `mmds` prefix). */
export interface MmdsStackMetrics extends TcpMetrics, Readonly<MmdsHttpCounters> {
  /** Frames for the service the NIC handed over. */
  readonly framesIn: number;
  /** Frames the service sent back. */
  readonly framesOut: number;
  /** ARP requests answered. */
  readonly arpReplies: number;
  /** Frames for the service that were dropped: malformed, bad checksum, fragments, not TCP, other ARP. */
  readonly framesDropped: number;
}

/** Construction options. */
export interface MmdsStackOptions {
  /** The VM's store. */
  store: MmdsStore;
  /** The NIC's MTU (bounds the segments sent). */
  mtu: number;
  /** Delivers a reply frame (no virtio header) to the guest. */
  emit: (frame: Uint8Array) => void;
  /** Monotonic milliseconds (default `performance.now`). */
  clock?: () => number;
  /** Timers for TCP retransmission (default the global ones). */
  timers?: TimerFunctions;
  /** A random u32 for initial sequence numbers (default `Math.random`). */
  random?: () => number;
}

const defaultTimers: TimerFunctions = {
  setTimeout: (cb, ms) => setTimeout(cb, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** One NIC's endpoint of the metadata service. */
export class MmdsStack {
  /** The service's IPv4 address as a u32. */
  readonly ip: number;
  private readonly store: MmdsStore;
  private readonly emitFrame: (frame: Uint8Array) => void;
  private readonly tcp: TcpResponder;
  private readonly http: MmdsHttpCounters = newHttpCounters();
  private ipId = 0;
  private readonly c = { framesIn: 0, framesOut: 0, arpReplies: 0, framesDropped: 0 };

  constructor(o: MmdsStackOptions) {
    this.store = o.store;
    this.ip = ipv4ToNumber(o.store.config.ipv4Address);
    this.emitFrame = o.emit;
    this.tcp = new TcpResponder({
      localPort: MMDS_TCP_PORT,
      mss: Math.max(1, o.mtu - IPV4_HLEN - TCP_HLEN),
      maxConnections: MMDS_MAX_CONNECTIONS,
      maxRecvBuffer: MMDS_RECV_BUFFER,
      handler: mmdsStreamHandler(this.store, this.http),
      emit: (seg) => this.sendSegment(seg),
      clock: o.clock ?? (() => performance.now()),
      timers: o.timers ?? defaultTimers,
      random: o.random ?? (() => Math.floor(Math.random() * 0x100000000)),
    });
  }

  /**
   * Whether a frame, given by its first {@link MMDS_PEEK_BYTES} bytes (fewer if it is shorter),
   * is for the service: an ARP packet whose target address is the service's, or an IPv4 packet
   * to it (untagged frames only).
   */
  isForMmds(head: Uint8Array): boolean {
    if (head.length < ETH_HLEN) return false;
    const type = (head[12] << 8) | head[13];
    const at = type === ETHERTYPE_ARP ? FRAME_ARP_TPA : type === ETHERTYPE_IPV4 ? FRAME_IPV4_DST : -1;
    if (at < 0 || head.length < at + 4) return false;
    return (((head[at] << 24) | (head[at + 1] << 16) | (head[at + 2] << 8) | head[at + 3]) >>> 0) === this.ip;
  }

  /**
   * Handles a frame for the service. `checksumTrusted`: the driver marked the frame's transport
   * checksum partial or already validated (virtio header NEEDS_CSUM / DATA_VALID), so only the
   * IPv4 header checksum is verified. Never throws.
   */
  handleFrame(frame: Uint8Array, checksumTrusted: boolean): void {
    this.c.framesIn++;
    try {
      if (!this.dispatch(frame, checksumTrusted)) this.c.framesDropped++;
    } catch {
      this.c.framesDropped++;
    }
  }

  private dispatch(frame: Uint8Array, checksumTrusted: boolean): boolean {
    const arp = parseArp(frame);
    if (arp !== null) {
      if (arp.op !== ARP_OP_REQUEST || arp.tpa !== this.ip) return false;
      this.c.arpReplies++;
      this.out(buildArpReply(MMDS_MAC, this.ip, arp.sha, arp.spa));
      return true;
    }
    const ip = parseIpv4(frame, true);
    if (typeof ip === 'string' || ip.dst !== this.ip || ip.protocol !== IPPROTO_TCP) return false;
    const seg = parseTcp(frame, ip, !checksumTrusted);
    if (typeof seg === 'string') return false;
    this.tcp.input({ ...seg, srcIp: ip.src, srcMac: frame.slice(6, 12) });
    return true;
  }

  private sendSegment(seg: OutboundSegment): void {
    this.ipId = (this.ipId + 1) & 0xffff;
    this.out(buildTcpFrame({ ...seg, srcMac: MMDS_MAC, srcIp: this.ip, ipId: this.ipId }));
  }

  private out(frame: Uint8Array): void {
    this.c.framesOut++;
    this.emitFrame(frame);
  }

  /** Runs TCP deadlines that have passed (tests that drive a fake clock call it). */
  expire(now: number): void {
    this.tcp.expire(now);
  }

  /** Counters. */
  metrics(): MmdsStackMetrics {
    return { ...this.c, ...this.http, ...this.tcp.metrics() };
  }

  /** Open TCP connections. */
  get connections(): number {
    return this.tcp.connectionCount;
  }

  /** The driver reset the NIC: connections are gone (the guest's stack was reset too). */
  reset(): void {
    this.tcp.reset();
  }

  /** Stops the retransmission timer for good. */
  close(): void {
    this.tcp.close();
  }

  /** TCP connections and the IP identification counter. */
  saveState(): StateObject {
    return { ipId: this.ipId, tcp: this.tcp.saveState() };
  }

  /** See {@link saveState}. */
  restoreState(state: StateObject): void {
    const ipId = stateField.int(state, 'ipId', 0, 0xffff);
    this.tcp.restoreState(stateField.obj(state, 'tcp'));
    this.ipId = ipId;
  }
}
