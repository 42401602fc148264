/**
 * The virtio-net device (virtio 1.2 §5.1): one receive and one transmit queue, a MAC, an MTU,
 * link status, checksum/segmentation offloads passed through the virtio header where the backend
 * carries them, and mergeable receive buffers.
 *
 * Receive. With a TAP, frames go straight from the kernel into the guest's buffers: the device
 * gathers enough popped chains for the largest frame that may come, does one readv into their
 * writable segments, then completes only the chains the frame filled (the rest stay popped for
 * the next frame). A frame the kernel reports longer than the buffers was truncated and is
 * dropped, never delivered. Frames from a link, and the metadata service's replies, are copied in
 * from JavaScript. When the guest has posted no buffers, TAP frames wait in the TAP's own queue
 * (the watch is paused) and link frames wait in a bounded queue; beyond it they are dropped and
 * counted.
 *
 * Transmit. Each chain is one header plus one frame. Frames whose source MAC is not the NIC's
 * (when it has one), whose header asks for offloads the driver did not negotiate, or that are
 * malformed are dropped and counted. Frames for the metadata service go to it; the rest go to the
 * TAP with one writev from guest memory, or are copied into a Buffer for the link.
 *
 * Nothing here throws into the event loop: backend failures are counted, ring corruption puts the
 * device into DEVICE_NEEDS_RESET.
 * @module
 */
import type { GuestMemory } from '../../memory/guest-memory';
import type { DescriptorChain, DescriptorSegment } from '../../virtio/chain';
import { VIRTIO_ID_NET, featureBit, hasFeature } from '../../virtio/constants';
import type { VirtioDevice, VirtioDeviceContext } from '../../virtio/device';
import type { Queue } from '../../virtio/queue';
import { RateLimiter, type RateLimiterConfig, type TimerFunctions } from '../../ratelimit';
import { DeviceError, encodeBytes, stateField, type StateObject, type StateValue } from '../contract';
import { LinkBackend, TapBackend, type NetBackend } from './backend';
import { formatMac } from './config';
import {
  ETH_ALEN,
  ETH_HLEN,
  ETH_SRC,
  MAX_GSO_FRAME,
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VQ_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_SIZE,
  NET_CONFIG_STATUS,
  NET_QUEUE_SIZE,
  NET_RX_QUEUE,
  NET_TX_QUEUE,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_S_LINK_UP,
  VNET_HDR_FLAGS,
  VNET_HDR_GSO_TYPE,
  VNET_HDR_NUM_BUFFERS,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VNET_HDR_SIZE,
  maxFrameForMtu,
} from './constants';
import type { SpanList } from './host';
import { MmdsStack, MMDS_PEEK_BYTES } from './mmds/service';
import type { MmdsStore } from './mmds/store';
import { NetError } from './errors';
import { checkTxHeader, decodeVnetHeader, guestTakesGso, rxFlagsMask, tapOffloadFeatures, tunOffloadsFor } from './vnet-header';

/** Version of {@link NetDevice.saveState}'s format. */
export const NET_STATE_VERSION = 1;
/** Frames waiting for guest buffers (link and metadata service), at most. */
export const DEFAULT_RX_QUEUE_FRAMES = 256;
/** Bytes waiting for guest buffers, at most. */
export const DEFAULT_RX_QUEUE_BYTES = 4 * 1024 * 1024;
/** Frames read from the TAP per readable callback before yielding to the event loop. */
const TAP_RX_BATCH = 256;
/** Largest number of spans one readv/writev takes (Linux's UIO_MAXIOV). */
const MAX_SPANS = 1024;
/** Largest queue size we accept (the split ring maximum). */
const MAX_QUEUE_SIZE = 32768;

/** Construction parameters of a {@link NetDevice} (the factory builds them from a NicConfig). */
export interface NetDeviceConfig {
  /** The NIC's id. */
  id: string;
  /** Where frames go; the device owns it. */
  backend: NetBackend;
  /** The guest's MAC (6 bytes); offered with VIRTIO_NET_F_MAC and enforced on transmit. */
  mac?: Uint8Array;
  /** The MTU offered with VIRTIO_NET_F_MTU. */
  mtu: number;
  /** Receive limiter; the device takes over its `onUnblocked`. */
  rxRateLimiter?: RateLimiter;
  /** Transmit limiter; the device takes over its `onUnblocked`. */
  txRateLimiter?: RateLimiter;
  /** The VM's metadata store, when this NIC is one of those that reach the service. */
  mmds?: MmdsStore;
  /** Maximum size of each queue (power of two, default 256). */
  queueSize?: number;
  /** Bound on frames waiting for receive buffers (default {@link DEFAULT_RX_QUEUE_FRAMES}). */
  rxQueueFrames?: number;
  /** Bound on bytes waiting for receive buffers (default {@link DEFAULT_RX_QUEUE_BYTES}). */
  rxQueueBytes?: number;
  /** Monotonic milliseconds for the metadata service's TCP (default `performance.now`). */
  clock?: () => number;
  /** Timers for the metadata service's TCP (default the global ones). */
  timers?: TimerFunctions;
}

/** Counters of one NIC (in `vm.metrics().nics[id]`). */
export interface NetMetrics {
  /** Frames delivered to the guest. */
  readonly rxFrames: number;
  /** Bytes delivered to the guest (frames without the virtio header). */
  readonly rxBytes: number;
  /** Frames the guest sent that left through the backend or reached the metadata service. */
  readonly txFrames: number;
  /** Bytes of those frames. */
  readonly txBytes: number;
  /** Receive drops: the wait queue for guest buffers was full. */
  readonly rxDropsQueueFull: number;
  /** Receive drops: a frame (not GSO) longer than MTU + Ethernet header + VLAN tag. */
  readonly rxDropsOversize: number;
  /** Receive drops: a frame shorter than an Ethernet header (or not a byte array). */
  readonly rxDropsRunt: number;
  /** Receive drops: a TAP frame longer than the guest's buffers (never delivered truncated). */
  readonly rxDropsTruncated: number;
  /** Receive drops: a receive chain (without mergeable buffers) too small for the frame. */
  readonly rxDropsNoRoom: number;
  /** Receive drops: the driver was not running (before DRIVER_OK, or frames queued at a reset). */
  readonly rxDropsNotReady: number;
  /** Receive chains returned empty because they were malformed or could not hold a header. */
  readonly rxBadChains: number;
  /** Transmit drops: source MAC not the NIC's. */
  readonly txDropsSpoofed: number;
  /** Transmit drops: the header asked for offloads that were not negotiated, or is inconsistent. */
  readonly txDropsBadHeader: number;
  /** Transmit drops: malformed chain, or shorter than a header and an Ethernet header. */
  readonly txDropsMalformed: number;
  /** Transmit drops: longer than any frame can be. */
  readonly txDropsOversize: number;
  /** Transmit drops: the link is down. */
  readonly txDropsLinkDown: number;
  /** Frames the backend refused (TAP write errors). */
  readonly txErrors: number;
  /** TAP read errors other than "nothing to read". */
  readonly rxErrors: number;
  /** Times the receive limiter held delivery back. */
  readonly rxThrottles: number;
  /** Times the transmit limiter held a frame back. */
  readonly txThrottles: number;
  /** Frames waiting for guest buffers now. */
  readonly rxQueued: number;
  /** Receive chains popped and held for the next frames now. */
  readonly rxChainsHeld: number;
  /** Frames the guest sent to the metadata service. */
  readonly mmdsFrames: number;
  /** HTTP requests the metadata service answered. */
  readonly mmdsRequests: number;
  /** Successful metadata GETs. */
  readonly mmdsGets: number;
  /** Session tokens issued. */
  readonly mmdsTokens: number;
  /** Requests answered with an error status (400, 401, 404, 405, 413, 501). */
  readonly mmdsErrors: number;
  /** ARP requests for the service answered. */
  readonly mmdsArpReplies: number;
  /** Metadata service TCP connections open now. */
  readonly mmdsConnections: number;
  /** Frames for the service that were dropped (malformed, bad checksum, not TCP…). */
  readonly mmdsDrops: number;
  /** Used-buffer interrupts raised. */
  readonly notifications: number;
  /** Ring-level failures (the device then needs a reset). */
  readonly queueErrors: number;
  /** Config space writes (nothing is writable). */
  readonly configWritesIgnored: number;
  /** Link failures (stream errors) and TAP offload changes the kernel refused. */
  readonly backendErrors: number;
  /** Whether the link is up (1) or down (0). */
  readonly linkUp: number;
}

/** A popped receive chain, its writable segments mapped once. */
interface HeldChain {
  readonly headIndex: number;
  readonly segs: readonly DescriptorSegment[];
  readonly len: number;
}

/** A TAP frame already in guest buffers, waiting for the receive limiter. */
interface DeferredFrame {
  readonly chains: readonly HeldChain[];
  readonly lens: readonly number[];
  readonly bytes: number;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** A reusable {@link SpanList} over a GuestMemory's regions. */
class GuestSpans implements SpanList {
  readonly buffers: ArrayBuffer[];
  readonly spans = new Float64Array(3 * MAX_SPANS);
  count = 0;
  total = 0;
  private readonly starts: number[];
  private readonly ends: number[];
  private readonly offsets: number[];

  constructor(readonly mem: GuestMemory) {
    this.buffers = mem.regions.map((r) => r.buffer);
    this.starts = mem.regions.map((r) => r.guestAddr);
    this.ends = mem.regions.map((r) => r.guestAddr + r.size);
    this.offsets = mem.regions.map((r) => r.byteOffset);
  }

  reset(): void {
    this.count = 0;
    this.total = 0;
  }

  /** Adds `[addr, addr+len)` (already validated to lie in one region); false when full. */
  add(addr: number, len: number): boolean {
    if (this.count >= MAX_SPANS) return false;
    for (let i = 0; i < this.starts.length; i++) {
      if (addr >= this.starts[i] && addr + len <= this.ends[i]) {
        const j = 3 * this.count++;
        this.spans[j] = i;
        this.spans[j + 1] = this.offsets[i] + (addr - this.starts[i]);
        this.spans[j + 2] = len;
        this.total += len;
        return true;
      }
    }
    return false;
  }
}

/** virtio-net device model; see the module comment. */
export class NetDevice implements VirtioDevice<NetMetrics> {
  /** VIRTIO_ID_NET. */
  readonly deviceType = VIRTIO_ID_NET;
  /** Device kind in metrics and snapshots. */
  readonly kind = 'virtio-net';
  /** See {@link NET_STATE_VERSION}. */
  readonly stateVersion = NET_STATE_VERSION;
  /** The NIC's id. */
  readonly id: string;
  /** Receive and transmit queue. */
  readonly queueMaxSizes: readonly number[];
  /** MAC (when set), MTU, STATUS, MRG_RXBUF, and the backend's offloads. */
  readonly deviceFeatures: bigint;
  /** The MTU offered. */
  readonly mtu: number;
  /** The backend. */
  readonly backend: NetBackend;

  private readonly mac: Uint8Array | undefined;
  private readonly mmds: MmdsStack | null;
  private rxLimiter: RateLimiter | undefined;
  private txLimiter: RateLimiter | undefined;
  private readonly rxQueueFrames: number;
  private readonly rxQueueBytes: number;
  private readonly maxLinkFrame: number;

  private ctx: VirtioDeviceContext | null = null;
  private spans: GuestSpans | null = null;
  private epoch = 0;
  private closed = false;
  private linkUp = true;
  // Per activation.
  private mrg = false;
  private flagsMask = 0;
  private tapNeed = 0;
  private readonly held: HeldChain[] = [];
  private deferred: DeferredFrame | null = null;
  private readonly pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private txBlocked = false;
  // Re-entrancy guards: a link may deliver a frame synchronously from inside our own write.
  private inRx = false;
  private rxAgain = false;
  private inTx = false;
  private txAgain = false;
  private readonly notifyPending = [false, false];
  private notifyScheduled = false;

  /** The start of a transmitted chain: header and enough of the frame for the MMDS check. */
  private readonly scratch = new Uint8Array(VNET_HDR_SIZE + MMDS_PEEK_BYTES);
  /** The header in front of frames copied in (separate: receive can run inside a transmit). */
  private readonly rxHeader = new Uint8Array(VNET_HDR_SIZE);
  private readonly configScratch = new DataView(new ArrayBuffer(NET_CONFIG_SIZE));
  private readonly onTapReadable = () => this.guarded(() => this.rxPump());

  private readonly counters = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    rxDropsQueueFull: 0,
    rxDropsOversize: 0,
    rxDropsRunt: 0,
    rxDropsTruncated: 0,
    rxDropsNoRoom: 0,
    rxDropsNotReady: 0,
    rxBadChains: 0,
    txDropsSpoofed: 0,
    txDropsBadHeader: 0,
    txDropsMalformed: 0,
    txDropsOversize: 0,
    txDropsLinkDown: 0,
    txErrors: 0,
    rxErrors: 0,
    rxThrottles: 0,
    txThrottles: 0,
    mmdsFrames: 0,
    notifications: 0,
    queueErrors: 0,
    configWritesIgnored: 0,
    backendErrors: 0,
  };

  /** @throws NetError BAD_CONFIG */
  constructor(config: NetDeviceConfig) {
    if (typeof config !== 'object' || config === null) throw new NetError('BAD_CONFIG', 'config must be an object');
    if (typeof config.id !== 'string' || config.id.length === 0) throw new NetError('BAD_CONFIG', 'id must be a non-empty string');
    const b = config.backend;
    if (!(b instanceof TapBackend) && !(b instanceof LinkBackend)) throw new NetError('BAD_CONFIG', `nic ${config.id}: backend must be a TapBackend or LinkBackend`);
    if (!Number.isInteger(config.mtu) || config.mtu < 68 || config.mtu > 65535) throw new NetError('BAD_CONFIG', `nic ${config.id}: mtu ${config.mtu} out of range`);
    if (config.mac !== undefined && (!(config.mac instanceof Uint8Array) || config.mac.length !== ETH_ALEN)) {
      throw new NetError('BAD_CONFIG', `nic ${config.id}: mac must be 6 bytes`);
    }
    const queueSize = config.queueSize ?? NET_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize < 2 || queueSize > MAX_QUEUE_SIZE) {
      throw new NetError('BAD_CONFIG', `nic ${config.id}: queue size ${queueSize} is not a power of two in [2, ${MAX_QUEUE_SIZE}]`);
    }
    for (const l of [config.rxRateLimiter, config.txRateLimiter]) {
      if (l !== undefined && !(l instanceof RateLimiter)) throw new NetError('BAD_CONFIG', `nic ${config.id}: rate limiters must be RateLimiter instances`);
    }
    this.id = config.id;
    this.backend = b;
    this.mtu = config.mtu;
    this.mac = config.mac?.slice();
    this.queueMaxSizes = Object.freeze([queueSize, queueSize]);
    this.rxQueueFrames = config.rxQueueFrames ?? DEFAULT_RX_QUEUE_FRAMES;
    this.rxQueueBytes = config.rxQueueBytes ?? DEFAULT_RX_QUEUE_BYTES;
    this.maxLinkFrame = maxFrameForMtu(config.mtu);
    let features = featureBit(VIRTIO_NET_F_MTU) | featureBit(VIRTIO_NET_F_STATUS) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
    if (this.mac) features |= featureBit(VIRTIO_NET_F_MAC);
    if (b instanceof TapBackend) features |= tapOffloadFeatures(b.acceptedOffloads);
    this.deviceFeatures = features;
    if (config.rxRateLimiter) this.attachLimiter('rx', config.rxRateLimiter);
    if (config.txRateLimiter) this.attachLimiter('tx', config.txRateLimiter);
    this.mmds =
      config.mmds !== undefined
        ? new MmdsStack({
            store: config.mmds,
            mtu: config.mtu,
            emit: (f) => this.enqueueRx(f, true),
            ...(config.clock ? { clock: config.clock } : {}),
            ...(config.timers ? { timers: config.timers } : {}),
          })
        : null;
    if (b instanceof LinkBackend) {
      b.start({
        frame: (f) => this.onLinkFrame(f),
        drain: () => {
          this.txBlocked = false;
          this.guarded(() => this.txPump());
        },
        down: (e) => {
          if (e !== undefined) this.counters.backendErrors++;
          this.setLinkUp(false);
        },
      });
      this.linkUp = b.isUp;
    }
  }

  /** The MAC as `aa:bb:…`, or undefined when the guest chooses its own. */
  get macAddress(): string | undefined {
    return this.mac ? formatMac(this.mac) : undefined;
  }

  /** The metadata service endpoint of this NIC, if it has one. */
  get mmdsStack(): MmdsStack | null {
    return this.mmds;
  }

  /** The receive limiter, if any. */
  get rxRateLimiter(): RateLimiter | undefined {
    return this.rxLimiter;
  }

  /** The transmit limiter, if any. */
  get txRateLimiter(): RateLimiter | undefined {
    return this.txLimiter;
  }

  private attachLimiter(which: 'rx' | 'tx', limiter: RateLimiter): void {
    if (which === 'rx') {
      this.rxLimiter = limiter;
      limiter.onUnblocked = () => this.guarded(() => this.rxPump());
    } else {
      this.txLimiter = limiter;
      limiter.onUnblocked = () => this.guarded(() => this.txPump());
    }
  }

  // --- Config space ----------------------------------------------------------------------------

  /** Reads struct virtio_net_config (§5.1.4); 0 for other sizes and past the end. */
  readConfig(offset: number, size: number): number {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > NET_CONFIG_SIZE) return 0;
    const v = this.configScratch;
    for (let i = 0; i < NET_CONFIG_SIZE; i += 4) v.setUint32(i, 0);
    if (this.mac) for (let i = 0; i < ETH_ALEN; i++) v.setUint8(NET_CONFIG_MAC + i, this.mac[i]);
    v.setUint16(NET_CONFIG_STATUS, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    v.setUint16(NET_CONFIG_MAX_VQ_PAIRS, 1, true);
    v.setUint16(NET_CONFIG_MTU, this.mtu, true);
    if (size === 1) return v.getUint8(offset);
    if (size === 2) return v.getUint16(offset, true);
    return v.getUint32(offset, true);
  }

  /** Nothing is writable (the MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR); writes are counted. */
  writeConfig(_offset: number, _size: number, _value: number): void {
    this.counters.configWritesIgnored++;
  }

  private setLinkUp(up: boolean): void {
    if (this.linkUp === up) return;
    this.linkUp = up;
    // §5.1.4: with VIRTIO_NET_F_STATUS a status change is a configuration change.
    this.ctx?.interrupt.signalConfigChange();
  }

  // --- Lifecycle -------------------------------------------------------------------------------

  /** Starts serving the queues: offloads follow the acked features, the TAP watch starts. */
  activate(ctx: VirtioDeviceContext): void {
    this.epoch++;
    this.ctx = ctx;
    this.spans = new GuestSpans(ctx.mem);
    this.clearActivation();
    const acked = ctx.ackedFeatures;
    this.mrg = hasFeature(acked, VIRTIO_NET_F_MRG_RXBUF);
    this.flagsMask = rxFlagsMask(acked);
    // A TAP frame can be as long as a GSO frame when those were negotiated, else MTU-sized.
    this.tapNeed = VNET_HDR_SIZE + (guestTakesGso(acked) ? MAX_GSO_FRAME : this.maxLinkFrame);
    const b = this.backend;
    if (b instanceof TapBackend) {
      try {
        b.setOffload(tunOffloadsFor(acked, b.acceptedOffloads));
      } catch {
        this.counters.backendErrors++;
      }
      b.resume(this.onTapReadable);
    }
  }

  /** The driver reset the device: held buffers and queued frames are dropped, connections too. */
  reset(): void {
    this.epoch++;
    this.ctx = null;
    this.spans = null;
    this.counters.rxDropsNotReady += this.pending.length;
    this.clearActivation();
    this.mmds?.reset();
    if (this.backend instanceof TapBackend) this.backend.pause();
  }

  private clearActivation(): void {
    this.held.length = 0;
    this.deferred = null;
    this.pending.length = 0;
    this.pendingBytes = 0;
    this.txBlocked = false;
    this.notifyPending[0] = this.notifyPending[1] = false;
  }

  /** A notification for a queue: the driver posted receive buffers or frames to send. Never throws. */
  processQueue(queueIndex: number): void {
    if (queueIndex === NET_RX_QUEUE) this.guarded(() => this.rxPump());
    else if (queueIndex === NET_TX_QUEUE) this.guarded(() => this.txPump());
  }

  /** Runs `fn`, turning any exception (a bug) into a queue error, then flushes notifications. */
  private guarded(fn: () => void): void {
    try {
      fn();
    } catch {
      this.counters.queueErrors++;
      this.ctx?.needsReset();
    }
    this.flushNotify();
  }

  // --- Receive ---------------------------------------------------------------------------------

  private rxQueue(): Queue | null {
    const ctx = this.ctx;
    if (ctx === null || this.closed) return null;
    const q = ctx.queues[NET_RX_QUEUE];
    return q !== undefined && q.ready && q.broken === null ? q : null;
  }

  /** Delivers what can be delivered: a deferred TAP frame, queued frames, then the TAP. */
  private rxPump(): void {
    if (this.inRx) {
      this.rxAgain = true;
      return;
    }
    this.inRx = true;
    try {
      do {
        this.rxAgain = false;
        this.rxOnce();
      } while (this.rxAgain);
    } finally {
      this.inRx = false;
    }
  }

  private rxOnce(): void {
    const tap = this.backend instanceof TapBackend ? this.backend : null;
    // Whenever delivery stops for a reason other than an empty TAP, the watch is paused: it is
    // level-triggered and would otherwise call back in a loop. Whatever unblocks delivery (the
    // driver's notification, the limiter's timer) runs this again and resumes it.
    if (!this.rxDeliverQueued()) tap?.pause();
    else if (tap !== null) this.readTap(this.ctx!, this.rxQueue()!, tap);
  }

  /** Delivers the deferred TAP frame and the queued frames; false if something still waits. */
  private rxDeliverQueued(): boolean {
    const q = this.rxQueue();
    if (q === null) return false;
    const ctx = this.ctx!;
    if (this.deferred !== null) {
      if (!this.admitRx(this.deferred.bytes)) return false;
      const d = this.deferred;
      this.deferred = null;
      this.completeRx(ctx, q, d.chains, d.lens, d.bytes);
    }
    while (this.pending.length > 0) {
      if (this.rxLimiter?.isBlocked()) return false;
      const frame = this.pending[0];
      const chains = this.chainsFor(ctx, q, VNET_HDR_SIZE + frame.length);
      if (chains === null) return false;
      if (chains.length === 0) {
        // Without mergeable buffers the next chain is too small for this frame.
        this.shiftPending();
        this.counters.rxDropsNoRoom++;
        continue;
      }
      if (!this.admitRx(frame.length)) return false;
      this.shiftPending();
      const lens = this.copyIntoChains(ctx.mem, chains, frame);
      this.held.splice(0, chains.length);
      this.completeRx(ctx, q, chains, lens, frame.length);
    }
    return true;
  }

  private shiftPending(): void {
    const f = this.pending.shift()!;
    this.pendingBytes -= f.length;
  }

  /** Takes the receive limiter's tokens for one frame; false (counted) when it must wait. */
  private admitRx(bytes: number): boolean {
    const l = this.rxLimiter;
    if (l === undefined) return true;
    if (!l.consume(1, 'ops')) {
      this.counters.rxThrottles++;
      return false;
    }
    if (!l.consume(bytes, 'bytes')) {
      l.manualReplenish(1, 'ops');
      this.counters.rxThrottles++;
      return false;
    }
    return true;
  }

  /**
   * Pops receive chains until the held ones can take `bytes` (with mergeable buffers: as many as
   * needed; without: the first one, which must be large enough). Returns the chains to use (a
   * prefix of the held list), [] when the single chain is too small, or null when the guest has
   * not posted enough (notifications are then re-enabled so its next post wakes us).
   */
  private chainsFor(ctx: VirtioDeviceContext, q: Queue, bytes: number): HeldChain[] | null {
    const n = this.heldFor(ctx, q, bytes);
    return n < 0 ? null : this.held.slice(0, n);
  }

  /** {@link chainsFor} without the copy: how many of the held chains to use, -1 for none yet. */
  private heldFor(ctx: VirtioDeviceContext, q: Queue, bytes: number): number {
    if (!this.mrg) {
      if (this.held.length === 0 && !this.popRx(ctx, q)) return -1;
      return this.held[0].len >= bytes ? 1 : 0;
    }
    let total = 0;
    let n = 0;
    for (;;) {
      while (n < this.held.length && total < bytes) total += this.held[n++].len;
      if (total >= bytes) return n;
      if (!this.popRx(ctx, q)) return -1;
    }
  }

  /** Pops one usable receive chain into `held`; false when none is available. */
  private popRx(ctx: VirtioDeviceContext, q: Queue): boolean {
    for (;;) {
      let chain: DescriptorChain | null;
      try {
        chain = q.pop(ctx.mem);
        if (chain === null && q.enableNotification(ctx.mem)) chain = q.pop(ctx.mem);
      } catch {
        this.counters.queueErrors++;
        ctx.needsReset();
        return false;
      }
      if (chain === null) return false;
      if (chain.error !== undefined || chain.writableLength < VNET_HDR_SIZE + ETH_HLEN) {
        // Nothing can be delivered into it: give it back empty so the driver can recycle it.
        this.counters.rxBadChains++;
        this.addUsed(ctx, q, NET_RX_QUEUE, chain.headIndex, 0);
        continue;
      }
      this.held.push({ headIndex: chain.headIndex, segs: chain.writable, len: chain.writableLength });
      return true;
    }
  }

  /** Writes a zeroed header (with num_buffers) and `frame` across `chains`; returns each chain's used length. */
  private copyIntoChains(mem: GuestMemory, chains: readonly HeldChain[], frame: Uint8Array): number[] {
    const hdr = this.rxHeader;
    hdr.fill(0);
    hdr[VNET_HDR_NUM_BUFFERS] = chains.length & 0xff;
    hdr[VNET_HDR_NUM_BUFFERS + 1] = chains.length >>> 8;
    const lens: number[] = [];
    let src: Uint8Array = hdr;
    let srcOff = 0;
    let left = VNET_HDR_SIZE + frame.length;
    for (const c of chains) {
      let used = 0;
      for (const s of c.segs) {
        let segOff = 0;
        while (segOff < s.len && left > 0) {
          if (srcOff === src.length) {
            src = frame;
            srcOff = 0;
          }
          const n = Math.min(s.len - segOff, src.length - srcOff);
          mem.slice(s.addr + segOff, n).set(src.subarray(srcOff, srcOff + n));
          segOff += n;
          srcOff += n;
          used += n;
          left -= n;
        }
        if (left === 0) break;
      }
      lens.push(used);
    }
    return lens;
  }

  /** Publishes a frame's chains (in order) and counts it. */
  private completeRx(ctx: VirtioDeviceContext, q: Queue, chains: readonly HeldChain[], lens: readonly number[], bytes: number): void {
    for (let i = 0; i < chains.length; i++) {
      if (!this.addUsed(ctx, q, NET_RX_QUEUE, chains[i].headIndex, lens[i])) return;
    }
    this.counters.rxFrames++;
    this.counters.rxBytes += bytes;
  }

  /** Reads frames from the TAP straight into held chains. */
  private readTap(ctx: VirtioDeviceContext, q: Queue, tap: TapBackend): void {
    const spans = this.spans!;
    for (let budget = TAP_RX_BATCH; budget > 0; budget--) {
      if (this.deferred !== null || this.rxLimiter?.isBlocked()) {
        tap.pause();
        return;
      }
      // Without mergeable buffers the one chain is tried whatever its size (a frame that does not
      // fit is dropped as truncated); with them, enough chains for the largest possible frame.
      const k = this.mrg ? this.heldFor(ctx, q, this.tapNeed) : this.heldFor(ctx, q, 0);
      if (k < 0) {
        // No buffers: frames wait in the TAP until the driver posts some (processQueue resumes).
        tap.pause();
        return;
      }
      const held = this.held;
      spans.reset();
      for (let i = 0; i < k; i++) for (const s of held[i].segs) spans.add(s.addr, s.len);
      let n: number;
      try {
        n = tap.readv(spans);
      } catch {
        this.counters.rxErrors++;
        tap.pause();
        return;
      }
      if (n <= 0) {
        // EAGAIN (or 0, which a TAP never returns for a frame): wait for the next readable event.
        tap.resume(this.onTapReadable);
        return;
      }
      if (n > spans.total) {
        // The kernel reports the whole frame's length even when it could only copy part of it.
        this.counters.rxDropsTruncated++;
        continue;
      }
      if (n < VNET_HDR_SIZE + ETH_HLEN) {
        this.counters.rxDropsRunt++;
        continue;
      }
      const bytes = n - VNET_HDR_SIZE;
      // §5.1.6.3: with VIRTIO_NET_F_MTU the device must not pass a non-GSO frame longer than the
      // MTU plus link headers (a host TAP configured with a larger MTU can produce one).
      if (bytes > this.maxLinkFrame && (ctx.mem.readU8(this.addrOf(held[0], VNET_HDR_GSO_TYPE)) & ~VIRTIO_NET_HDR_GSO_ECN) === VIRTIO_NET_HDR_GSO_NONE) {
        this.counters.rxDropsOversize++;
        continue;
      }
      if (n <= held[0].len) {
        // The common case: the frame fits in the first chain.
        const c = held.shift()!;
        this.fixRxHeader(ctx.mem, c, 1);
        if (!this.admitRx(bytes)) {
          this.deferred = { chains: [c], lens: [n], bytes };
          tap.pause();
          return;
        }
        if (!this.addUsed(ctx, q, NET_RX_QUEUE, c.headIndex, n)) return;
        this.counters.rxFrames++;
        this.counters.rxBytes += bytes;
        continue;
      }
      let count = 0;
      const lens: number[] = [];
      for (let left = n; left > 0; count++) {
        const l = Math.min(left, held[count].len);
        lens.push(l);
        left -= l;
      }
      const used = held.splice(0, count);
      this.fixRxHeader(ctx.mem, used[0], count);
      if (!this.admitRx(bytes)) {
        this.deferred = { chains: used, lens, bytes };
        tap.pause();
        return;
      }
      this.completeRx(ctx, q, used, lens, bytes);
    }
    // Budget used up with frames possibly left: the level-triggered watch calls again next turn.
    tap.resume(this.onTapReadable);
  }

  /** Sets num_buffers and masks the flags the driver may not see (§5.1.6.4). */
  private fixRxHeader(mem: GuestMemory, chain: HeldChain, numBuffers: number): void {
    this.writeHeaderByte(mem, chain, VNET_HDR_NUM_BUFFERS, numBuffers & 0xff);
    this.writeHeaderByte(mem, chain, VNET_HDR_NUM_BUFFERS + 1, numBuffers >>> 8);
    if (this.flagsMask !== (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) {
      const at = this.addrOf(chain, VNET_HDR_FLAGS);
      mem.writeU8(at, mem.readU8(at) & this.flagsMask);
    }
  }

  private addrOf(chain: HeldChain, offset: number): number {
    for (const s of chain.segs) {
      if (offset < s.len) return s.addr + offset;
      offset -= s.len;
    }
    throw new RangeError('offset past the chain'); // cannot happen: chains hold at least a header
  }

  private writeHeaderByte(mem: GuestMemory, chain: HeldChain, offset: number, value: number): void {
    mem.writeU8(this.addrOf(chain, offset), value);
  }

  /** A frame from the link. */
  private onLinkFrame(f: unknown): void {
    if (!(f instanceof Uint8Array) || f.length < ETH_HLEN) {
      this.counters.rxDropsRunt++;
      return;
    }
    if (f.length > this.maxLinkFrame) {
      this.counters.rxDropsOversize++;
      return;
    }
    this.enqueueRx(f, false);
  }

  /**
   * Queues a frame for the guest (bounded). Metadata service replies are delivered on a later
   * turn (`deferred`): they are produced while the transmit queue is being processed.
   */
  private enqueueRx(frame: Uint8Array, deferred: boolean): void {
    const ctx = this.ctx;
    if (ctx === null || this.closed) {
      this.counters.rxDropsNotReady++;
      return;
    }
    if (this.pending.length >= this.rxQueueFrames || this.pendingBytes + frame.length > this.rxQueueBytes) {
      this.counters.rxDropsQueueFull++;
      return;
    }
    this.pending.push(frame);
    this.pendingBytes += frame.length;
    if (!deferred) {
      this.guarded(() => this.rxPump());
      return;
    }
    const epoch = this.epoch;
    ctx.schedule(() => {
      if (epoch === this.epoch) this.guarded(() => this.rxPump());
    });
  }

  // --- Transmit --------------------------------------------------------------------------------

  private txPump(): void {
    if (this.inTx) {
      this.txAgain = true;
      return;
    }
    this.inTx = true;
    try {
      do {
        this.txAgain = false;
        this.txOnce();
      } while (this.txAgain);
    } finally {
      this.inTx = false;
    }
  }

  private txOnce(): void {
    const ctx = this.ctx;
    if (ctx === null || this.closed || this.txBlocked) return;
    const q = ctx.queues[NET_TX_QUEUE];
    if (q === undefined || !q.ready || q.broken !== null) return;
    const mem = ctx.mem;
    do {
      q.disableNotification(mem);
      for (;;) {
        if (this.txLimiter?.isBlocked()) return;
        let chain: DescriptorChain | null;
        try {
          chain = q.pop(mem);
        } catch {
          this.counters.queueErrors++;
          ctx.needsReset();
          return;
        }
        if (chain === null) break;
        if (!this.transmit(ctx, q, chain)) return;
        if (this.txBlocked) return;
      }
    } while (q.enableNotification(mem));
  }

  /** Sends one chain. Returns false when throttled (the chain was pushed back). */
  private transmit(ctx: VirtioDeviceContext, q: Queue, chain: DescriptorChain): boolean {
    const c = this.counters;
    const mem = ctx.mem;
    if (chain.error !== undefined || chain.readableLength < VNET_HDR_SIZE + ETH_HLEN) {
      c.txDropsMalformed++;
      this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
      return true;
    }
    const frameLen = chain.readableLength - VNET_HDR_SIZE;
    if (frameLen > MAX_GSO_FRAME) {
      c.txDropsOversize++;
      this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
      return true;
    }
    const head = this.copyPrefix(mem, chain.readable, Math.min(this.scratch.length, chain.readableLength));
    const hdr = decodeVnetHeader(head);
    if (checkTxHeader(hdr, ctx.ackedFeatures, frameLen) !== null) {
      c.txDropsBadHeader++;
      this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
      return true;
    }
    if (this.mac !== undefined) {
      const src = VNET_HDR_SIZE + ETH_SRC;
      for (let i = 0; i < ETH_ALEN; i++) {
        if (head[src + i] !== this.mac[i]) {
          c.txDropsSpoofed++;
          this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
          return true;
        }
      }
    }
    const l = this.txLimiter;
    if (l !== undefined) {
      if (!l.consume(1, 'ops')) {
        q.undoPop();
        c.txThrottles++;
        return false;
      }
      if (!l.consume(frameLen, 'bytes')) {
        l.manualReplenish(1, 'ops');
        q.undoPop();
        c.txThrottles++;
        return false;
      }
    }
    const frameHead = head.subarray(VNET_HDR_SIZE);
    if (this.mmds !== null && this.mmds.isForMmds(frameHead)) {
      c.mmdsFrames++;
      const frame = this.copyFrame(mem, chain.readable, frameLen);
      const trusted = (hdr.flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) !== 0;
      this.mmds.handleFrame(frame, trusted);
    } else if (!this.sendToBackend(mem, chain, frameLen)) {
      this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
      return true;
    }
    c.txFrames++;
    c.txBytes += frameLen;
    this.addUsed(ctx, q, NET_TX_QUEUE, chain.headIndex, 0);
    return true;
  }

  /** Hands a frame to the backend; false (counted) when it was not taken. */
  private sendToBackend(mem: GuestMemory, chain: DescriptorChain, frameLen: number): boolean {
    const b = this.backend;
    if (b instanceof TapBackend) {
      const spans = this.spans!;
      spans.reset();
      for (const s of chain.readable) {
        if (!spans.add(s.addr, s.len)) {
          this.counters.txDropsMalformed++;
          return false;
        }
      }
      let n: number;
      try {
        n = b.writev(spans);
      } catch {
        n = -1;
      }
      if (n !== spans.total) {
        this.counters.txErrors++;
        return false;
      }
      return true;
    }
    if (!this.linkUp) {
      this.counters.txDropsLinkDown++;
      return false;
    }
    const frame = this.copyFrame(mem, chain.readable, frameLen);
    try {
      if (!b.write(Buffer.from(frame.buffer, frame.byteOffset, frame.length))) this.txBlocked = true;
    } catch {
      this.counters.backendErrors++;
      return false;
    }
    return true;
  }

  /** Copies the first `len` readable bytes of a chain into the scratch buffer. */
  private copyPrefix(mem: GuestMemory, segs: readonly DescriptorSegment[], len: number): Uint8Array {
    const out = this.scratch.subarray(0, len);
    let at = 0;
    for (const s of segs) {
      if (at >= len) break;
      const n = Math.min(s.len, len - at);
      out.set(mem.slice(s.addr, n), at);
      at += n;
    }
    return out;
  }

  /** Copies the frame (the readable bytes after the header) out of guest memory. */
  private copyFrame(mem: GuestMemory, segs: readonly DescriptorSegment[], frameLen: number): Uint8Array {
    // Its own ArrayBuffer (not Buffer's shared pool): frames live on in switch queues and the MMDS.
    const out = new Uint8Array(frameLen);
    let skip = VNET_HDR_SIZE;
    let at = 0;
    for (const s of segs) {
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const n = s.len - skip;
      out.set(mem.slice(s.addr + skip, n), at);
      at += n;
      skip = 0;
    }
    return out;
  }

  // --- Notifications ---------------------------------------------------------------------------

  private addUsed(ctx: VirtioDeviceContext, q: Queue, queueIndex: number, headIndex: number, len: number): boolean {
    try {
      q.addUsed(ctx.mem, headIndex, len);
    } catch {
      this.counters.queueErrors++;
      ctx.needsReset();
      return false;
    }
    this.notifyPending[queueIndex] = true;
    // Completions outside a batch (link frames) share one interrupt per event-loop turn.
    if (!this.notifyScheduled) {
      this.notifyScheduled = true;
      const epoch = this.epoch;
      ctx.schedule(() => {
        this.notifyScheduled = false;
        if (epoch === this.epoch) this.flushNotify();
      });
    }
    return true;
  }

  private flushNotify(): void {
    const ctx = this.ctx;
    if (ctx === null) return;
    for (const qi of [NET_RX_QUEUE, NET_TX_QUEUE]) {
      if (!this.notifyPending[qi]) continue;
      this.notifyPending[qi] = false;
      try {
        if (ctx.queues[qi].needsNotification(ctx.mem)) {
          this.counters.notifications++;
          ctx.interrupt.signalUsedQueue(qi);
        }
      } catch {
        this.counters.queueErrors++;
      }
    }
  }

  // --- Updates, metrics, teardown ---------------------------------------------------------------

  /**
   * Changes the rate limits of either direction: a config updates the current limiter (see
   * {@link RateLimiter.update}) or creates one; a RateLimiter replaces the current one.
   * @throws RateLimitError BAD_CONFIG; NetError CLOSED
   */
  updateRateLimiters(update: { rxRateLimiter?: RateLimiterConfig | RateLimiter; txRateLimiter?: RateLimiterConfig | RateLimiter }): void {
    if (this.closed) throw new NetError('CLOSED', `nic ${this.id} is closed`);
    // Validate both before changing either, so a bad tx config leaves rx untouched too.
    for (const u of [update.rxRateLimiter, update.txRateLimiter]) if (u !== undefined && !(u instanceof RateLimiter)) RateLimiter.validate(u);
    for (const which of ['rx', 'tx'] as const) {
      const u = which === 'rx' ? update.rxRateLimiter : update.txRateLimiter;
      if (u === undefined) continue;
      const cur = which === 'rx' ? this.rxLimiter : this.txLimiter;
      if (u instanceof RateLimiter) {
        if (u === cur) continue;
        this.attachLimiter(which, u);
        if (cur !== undefined) {
          cur.onUnblocked = undefined;
          cur.dispose();
        }
      } else if (cur !== undefined) {
        cur.update(u);
      } else {
        this.attachLimiter(which, new RateLimiter(u));
      }
    }
    // A previous limiter may have been holding a direction back; let the new one decide.
    this.guarded(() => {
      this.rxPump();
      this.txPump();
    });
  }

  /** Counters, including the metadata service's when this NIC serves it. */
  metrics(): NetMetrics {
    const m = this.mmds?.metrics();
    return {
      ...this.counters,
      rxQueued: this.pending.length,
      rxChainsHeld: this.held.length,
      mmdsRequests: m?.requests ?? 0,
      mmdsGets: m?.gets ?? 0,
      mmdsTokens: m?.tokens ?? 0,
      mmdsErrors: m ? m.badRequests + m.unauthorized + m.notFound + m.methodNotAllowed + m.tooLarge + m.notImplemented : 0,
      mmdsArpReplies: m?.arpReplies ?? 0,
      mmdsConnections: m?.connections ?? 0,
      mmdsDrops: m?.framesDropped ?? 0,
      linkUp: this.linkUp ? 1 : 0,
    };
  }

  /** Stops for good: the TAP is closed (or the switch port detached), timers cancelled. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.reset();
    this.closed = true;
    this.rxLimiter?.dispose();
    this.txLimiter?.dispose();
    this.mmds?.close();
    this.backend.close();
  }

  // --- State -----------------------------------------------------------------------------------

  /**
   * State: the receive chains popped and held (by head index, in order), a TAP frame waiting in
   * guest buffers for the limiter, frames queued for the guest, owed notifications, the link
   * status and the metadata service's TCP connections. The MAC is saved to check that the
   * restoring NIC is configured alike; the backend and limits are host configuration.
   */
  saveState(): StateObject {
    const d = this.deferred;
    return {
      mac: this.mac ? formatMac(this.mac) : null,
      linkUp: this.linkUp,
      held: this.held.map((h) => h.headIndex),
      deferred: d === null ? null : { heads: d.chains.map((c) => c.headIndex), lens: [...d.lens], bytes: d.bytes },
      pending: this.pending.map((f) => encodeBytes(f)),
      notifyPending: [...this.notifyPending],
      mmds: this.mmds ? this.mmds.saveState() : null,
    };
  }

  /** See {@link saveState}; re-reads held chains from the restored queue when the device is active. */
  restoreState(state: StateObject): void {
    const bad = (what: string) => new DeviceError('BAD_STATE', `nic ${this.id}: ${what}`);
    const mac = state.mac;
    if (mac !== (this.mac ? formatMac(this.mac) : null)) throw bad(`saved MAC ${JSON.stringify(mac)} differs from the configured one`);
    const linkUp = stateField.bool(state, 'linkUp');
    const qmax = this.queueMaxSizes[NET_RX_QUEUE];
    const heads = (v: StateValue[], what: string): number[] => {
      if (v.some((h) => typeof h !== 'number' || !Number.isInteger(h) || h < 0 || h >= qmax)) throw bad(`${what} must be head indices below ${qmax}`);
      return v as number[];
    };
    const held = heads(stateField.arr(state, 'held', qmax), 'held');
    let deferred: { heads: number[]; lens: number[]; bytes: number } | null = null;
    if (state.deferred !== null) {
      const d = stateField.obj(state, 'deferred');
      const dh = heads(stateField.arr(d, 'heads', qmax), 'deferred.heads');
      const dl = stateField.arr(d, 'lens', qmax);
      if (dl.length !== dh.length || dl.some((l) => typeof l !== 'number' || !Number.isInteger(l) || l < 0)) throw bad('deferred.lens must match deferred.heads');
      deferred = { heads: dh, lens: dl as number[], bytes: stateField.int(d, 'bytes', 0, MAX_GSO_FRAME) };
    }
    if (new Set([...held, ...(deferred?.heads ?? [])]).size !== held.length + (deferred?.heads.length ?? 0)) throw bad('head indices repeat');
    const pending = stateField.arr(state, 'pending', this.rxQueueFrames).map((f) => {
      const b = stateField.bytes({ f }, 'f', MAX_GSO_FRAME);
      if (b.length < ETH_HLEN) throw bad('a queued frame is shorter than an Ethernet header');
      return b;
    });
    const np = stateField.arr(state, 'notifyPending', 2);
    if (np.length !== 2 || np.some((b) => typeof b !== 'boolean')) throw bad('notifyPending must be two booleans');
    const ctx = this.ctx;
    if (ctx === null && (held.length > 0 || deferred !== null || pending.length > 0)) throw bad('buffers held by a device that is not active');
    if (this.mmds !== null && state.mmds !== null) this.mmds.restoreState(stateField.obj(state, 'mmds'));

    this.linkUp = this.backend instanceof LinkBackend ? this.backend.isUp && linkUp : linkUp;
    if (ctx === null) return;
    const q = ctx.queues[NET_RX_QUEUE];
    const reread = (h: number): HeldChain | null => {
      try {
        const chain = q.chainAt(ctx.mem, h);
        if (chain.error !== undefined || chain.writableLength < VNET_HDR_SIZE + ETH_HLEN) return null;
        return { headIndex: h, segs: chain.writable, len: chain.writableLength };
      } catch {
        return null;
      }
    };
    this.held.length = 0;
    for (const h of held) {
      const c = reread(h);
      if (c === null) {
        this.counters.queueErrors++;
        ctx.needsReset();
        return;
      }
      this.held.push(c);
    }
    if (deferred !== null) {
      const chains = deferred.heads.map(reread);
      if (chains.some((c) => c === null)) {
        this.counters.queueErrors++;
        ctx.needsReset();
        return;
      }
      this.deferred = { chains: chains as HeldChain[], lens: deferred.lens, bytes: deferred.bytes };
    }
    this.pending.length = 0;
    this.pendingBytes = 0;
    for (const f of pending) {
      this.pending.push(f);
      this.pendingBytes += f.length;
    }
    this.notifyPending[0] = np[0] as boolean;
    this.notifyPending[1] = np[1] as boolean;
    this.guarded(() => {
      this.rxPump();
      this.txPump();
    });
  }
}
