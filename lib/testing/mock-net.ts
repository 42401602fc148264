/**
 * A mock virtio-net driver and a minimal guest TCP client, for unit tests and benchmarks of the
 * network device without KVM: the driver posts receive buffers and transmits frames through the
 * rings as Linux's virtio_net does (12-byte header, mergeable buffers), and the client speaks
 * ARP, TCP and HTTP to the metadata service through it.
 */
import type { GuestMemory } from '../memory/guest-memory';
import type { MockMmioDriver, MockVirtqueue, BumpAllocator } from './mock-driver';
import { VNET_HDR_SIZE } from '../devices/net/constants';
import {
  ETHERTYPE_IPV4,
  IPPROTO_TCP,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  buildArpRequest,
  buildTcpFrame,
  parseArp,
  parseIpv4,
  parseTcp,
} from '../devices/net/mmds/packet';

/** A frame the mock driver received, header split off. */
export interface ReceivedFrame {
  /** The 12-byte virtio header. */
  header: Uint8Array;
  /** The Ethernet frame. */
  frame: Uint8Array;
  /** Chains it spanned (num_buffers). */
  chains: number;
}

/** The driver side of a virtio-net device's two queues. */
export class MockNetDriver {
  /** Guest memory. */
  readonly mem: GuestMemory;
  /** Receive buffers by head index. */
  private readonly rxBufs = new Map<number, { addr: number; len: number }>();
  /** Free transmit buffers (address), each `txBufSize` bytes. */
  private readonly txFree: number[] = [];
  private readonly txOwned = new Map<number, number>();

  /**
   * @param driver the transport driver (already brought up)
   * @param rxq receive queue
   * @param txq transmit queue
   * @param alloc allocator for buffers
   * @param txBufSize size of each transmit buffer (header + largest frame sent)
   * @param txBufs number of transmit buffers
   */
  constructor(
    readonly driver: MockMmioDriver,
    readonly rxq: MockVirtqueue,
    readonly txq: MockVirtqueue,
    readonly alloc: BumpAllocator,
    readonly txBufSize = VNET_HDR_SIZE + 65550,
    txBufs = 64,
  ) {
    this.mem = rxq.mem;
    for (let i = 0; i < txBufs; i++) this.txFree.push(alloc.alloc(txBufSize, 64));
  }

  /** Posts `n` receive buffers of `size` bytes; notifies unless told not to. */
  postRx(n: number, size: number, notify = true): void {
    for (let i = 0; i < n; i++) {
      const addr = this.alloc.alloc(size, 64);
      const head = this.rxq.addChain([{ addr, len: size, write: true }], false);
      this.rxBufs.set(head, { addr, len: size });
    }
    this.rxq.publish();
    if (notify) this.driver.notify(0);
  }

  /** Re-posts the buffers of `used` receive heads (recycling, as a driver refills its ring). */
  private repost(heads: number[]): void {
    for (const h of heads) {
      const b = this.rxBufs.get(h)!;
      this.rxBufs.delete(h);
      const head = this.rxq.addChain([{ addr: b.addr, len: b.len, write: true }], false);
      this.rxBufs.set(head, b);
    }
  }

  /**
   * Collects every frame the device published, then recycles their buffers and notifies the
   * device (when any were recycled).
   */
  receive(copy = true): ReceivedFrame[] {
    const used = this.rxq.readUsed();
    const out: ReceivedFrame[] = [];
    const heads: number[] = [];
    for (let i = 0; i < used.length; ) {
      const first = this.rxBufs.get(used[i].id)!;
      const head0 = this.mem.slice(first.addr, used[i].len);
      const nb = Math.max(1, head0[10] | (head0[11] << 8));
      let all: Uint8Array;
      if (nb === 1) all = copy ? new Uint8Array(head0) : head0;
      else {
        let total = 0;
        for (let k = 0; k < nb; k++) total += used[i + k].len;
        all = new Uint8Array(total);
        let at = 0;
        for (let k = 0; k < nb; k++) {
          const u = used[i + k];
          all.set(this.mem.slice(this.rxBufs.get(u.id)!.addr, u.len), at);
          at += u.len;
        }
      }
      out.push({ header: all.subarray(0, VNET_HDR_SIZE), frame: all.subarray(VNET_HDR_SIZE), chains: nb });
      for (let k = 0; k < nb; k++) heads.push(used[i + k].id);
      i += nb;
    }
    if (heads.length > 0) {
      this.repost(heads);
      this.rxq.publish();
      // Re-arm the EVENT_IDX threshold as Linux's virtqueue_enable_cb does.
      this.rxq.setUsedEvent(this.rxq.lastUsedIdx);
      this.driver.notify(0);
    }
    return out;
  }

  /** Frames the device has published and not yet collected. */
  pendingRx(): number {
    return (this.rxq.usedIdx() - this.rxq.lastUsedIdx) & 0xffff;
  }

  /** Reclaims transmit buffers the device has used. Returns how many. */
  reclaimTx(): number {
    const used = this.txq.readUsed();
    for (const u of used) {
      const a = this.txOwned.get(u.id);
      if (a !== undefined) {
        this.txOwned.delete(u.id);
        this.txFree.push(a);
      }
    }
    this.txq.setUsedEvent(this.txq.lastUsedIdx);
    return used.length;
  }

  /**
   * Queues a frame (after `header`, zeros by default) in one descriptor; notifies unless told not
   * to. Returns false when no transmit buffer is free (reclaim first).
   */
  send(frame: Uint8Array, header?: Uint8Array, notify = true): boolean {
    if (this.txFree.length === 0) this.reclaimTx();
    const addr = this.txFree.pop();
    if (addr === undefined || VNET_HDR_SIZE + frame.length > this.txBufSize) return false;
    const buf = this.mem.slice(addr, VNET_HDR_SIZE + frame.length);
    if (header) buf.set(header.subarray(0, VNET_HDR_SIZE));
    else buf.fill(0, 0, VNET_HDR_SIZE);
    buf.set(frame, VNET_HDR_SIZE);
    const head = this.txq.addChain([{ addr, len: VNET_HDR_SIZE + frame.length }], false);
    this.txOwned.set(head, addr);
    this.txq.publish();
    if (notify) this.driver.notify(1);
    return true;
  }
}

/** Parameters of a {@link GuestTcpClient}. */
export interface GuestTcpClientOptions {
  /** The guest's MAC. */
  mac: Uint8Array;
  /** The guest's IPv4 address (u32). */
  ip: number;
  /** The server's IPv4 address (u32), e.g. the MMDS's. */
  serverIp: number;
  /** The server's port. */
  serverPort: number;
  /** Our MSS option. */
  mss?: number;
  /** Our receive window. */
  window?: number;
}

/**
 * One TCP connection from the guest, driven by hand: `frames()` hands out what to transmit,
 * `input()` takes received frames. Handles ARP resolution first, in-order data, ACKs and FIN.
 * Meant for well-behaved tests and benchmarks, not as a general TCP.
 */
export class GuestTcpClient {
  /** The server's MAC once ARP resolved it. */
  serverMac: Uint8Array | null = null;
  /** Bytes received from the server, in order. */
  received: number[] = [];
  /** Whether the server's SYN-ACK arrived. */
  established = false;
  /** Whether the server sent FIN. */
  serverClosed = false;
  /** Whether the server sent RST. */
  reset = false;
  private readonly o: Required<GuestTcpClientOptions>;
  private port: number;
  private sndNxt: number;
  private rcvNxt = 0;
  private ipId = 1;
  private outbox: Uint8Array[] = [];

  constructor(options: GuestTcpClientOptions, localPort = 40000, iss = 1000) {
    this.o = { mss: 1460, window: 65535, ...options };
    this.port = localPort;
    this.sndNxt = iss;
  }

  /** The ARP request for the server. */
  arp(): Uint8Array {
    return buildArpRequest(this.o.mac, this.o.ip, this.o.serverIp);
  }

  private segment(flags: number, payload?: Uint8Array, mss?: number): Uint8Array {
    const f = buildTcpFrame({
      srcMac: this.o.mac,
      dstMac: this.serverMac ?? new Uint8Array(6).fill(0xff),
      srcIp: this.o.ip,
      dstIp: this.o.serverIp,
      ipId: this.ipId++,
      srcPort: this.port,
      dstPort: this.o.serverPort,
      seq: this.sndNxt,
      ack: flags & TCP_ACK ? this.rcvNxt : 0,
      flags,
      window: this.o.window,
      ...(mss !== undefined ? { mss } : {}),
      ...(payload ? { payload } : {}),
    });
    return f;
  }

  /** Starts a new connection (from a new local port): the SYN. */
  connect(localPort?: number): Uint8Array {
    if (localPort !== undefined) this.port = localPort;
    this.established = false;
    this.serverClosed = false;
    this.reset = false;
    this.received = [];
    const syn = this.segment(TCP_SYN, undefined, this.o.mss);
    this.sndNxt = (this.sndNxt + 1) >>> 0;
    return syn;
  }

  /** A data segment with `bytes` (PSH|ACK). */
  send(bytes: Uint8Array): Uint8Array {
    const f = this.segment(TCP_ACK | TCP_PSH, bytes);
    this.sndNxt = (this.sndNxt + bytes.length) >>> 0;
    return f;
  }

  /** Our FIN. */
  fin(): Uint8Array {
    const f = this.segment(TCP_ACK | TCP_FIN);
    this.sndNxt = (this.sndNxt + 1) >>> 0;
    return f;
  }

  /** Takes the frames generated by {@link input} (ACKs). */
  takeOutbox(): Uint8Array[] {
    return this.outbox.splice(0);
  }

  /** Processes a received frame: ARP replies, then our connection's segments. */
  input(frame: Uint8Array): void {
    const arp = parseArp(frame);
    if (arp !== null) {
      if (arp.spa === this.o.serverIp) this.serverMac = arp.sha;
      return;
    }
    if (frame.length < 14 || ((frame[12] << 8) | frame[13]) !== ETHERTYPE_IPV4) return;
    const ip = parseIpv4(frame, true);
    if (typeof ip === 'string' || ip.protocol !== IPPROTO_TCP || ip.src !== this.o.serverIp) return;
    const seg = parseTcp(frame, ip, true);
    if (typeof seg === 'string' || seg.dstPort !== this.port) return;
    if (seg.flags & TCP_RST) {
      this.reset = true;
      return;
    }
    if (seg.flags & TCP_SYN) {
      this.rcvNxt = (seg.seq + 1) >>> 0;
      this.established = true;
      this.outbox.push(this.segment(TCP_ACK));
      return;
    }
    let advanced = false;
    if (seg.payload.length > 0 && seg.seq === this.rcvNxt) {
      for (const b of seg.payload) this.received.push(b);
      this.rcvNxt = (this.rcvNxt + seg.payload.length) >>> 0;
      advanced = true;
    }
    if (seg.flags & TCP_FIN && ((seg.seq + seg.payload.length) >>> 0) === this.rcvNxt) {
      this.rcvNxt = (this.rcvNxt + 1) >>> 0;
      this.serverClosed = true;
      advanced = true;
    }
    if (advanced || seg.payload.length > 0) this.outbox.push(this.segment(TCP_ACK));
  }

  /** The received bytes as text. */
  text(): string {
    return Buffer.from(this.received).toString('latin1');
  }
}
