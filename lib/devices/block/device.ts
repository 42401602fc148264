/**
 * The virtio-blk device (virtio 1.2 §5.2): one request queue served against a {@link BlockBackend},
 * with many requests in flight at once and completions in whatever order the backend finishes them.
 *
 * Every request is checked before any I/O: the chain must be a 16-byte device-readable header,
 * then the data (device-writable for IN, device-readable for OUT), then the status byte, which is
 * the last byte of the last writable descriptor (§5.2.6). A chain with no writable byte has nowhere
 * to put a status and is completed with used length 0; every other failure gets a status.
 * @module
 */

import type { ChainWriter, DescriptorChain } from '../../virtio/chain';
import { parseRequest, isRequestError } from './request';
import { VIRTIO_ID_BLOCK, featureBit, hasFeature } from '../../virtio/constants';
import type { VirtioDevice, VirtioDeviceContext } from '../../virtio/device';
import { DeviceError, stateField, type StateObject } from '../contract';
import type { Queue } from '../../virtio/queue';
import { RateLimiter, type RateLimiterConfig } from '../../ratelimit';
import type { BlockBackend } from './backend';
import {
  BLK_CONFIG_BLK_SIZE,
  BLK_CONFIG_CAPACITY,
  BLK_CONFIG_SEG_MAX,
  BLK_CONFIG_SIZE,
  BLK_REQ_STATUS_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from './constants';
import { BlockError } from './errors';

/**
 * Host caching policy. `'unsafe'`: FLUSH is not offered and nothing is ever synced (the guest
 * believes writes are durable when they reach the page cache). `'writeback'`: FLUSH is offered and
 * completes only after the backend's fdatasync.
 */
export type CacheType = 'unsafe' | 'writeback';

/** Construction parameters of a {@link BlockDevice}. */
export interface BlockDeviceConfig {
  /** Drive id; GET_ID returns it as a NUL-padded 20-byte serial. At most 20 bytes of UTF-8. */
  id: string;
  /** Backing store. The device owns it: see {@link BlockDevice.updateBackend} and {@link BlockDevice.close}. */
  backend: BlockBackend;
  /** Offer VIRTIO_BLK_F_RO and fail every write. */
  readOnly: boolean;
  /** Host caching policy. */
  cacheType: CacheType;
  /**
   * Optional limiter: one op per request, and the data length in bytes for reads and writes.
   * The device takes over its `onUnblocked` callback, so a limiter must not be shared.
   */
  rateLimiter?: RateLimiter;
  /** Maximum queue size (power of two, default 256). */
  queueSize?: number;
}

/** Default maximum size of the request queue, as in Firecracker. */
export const BLOCK_QUEUE_SIZE = 256;
/** The block device has a single request queue. */
const REQUEST_QUEUE = 0;
/** Largest queue size we accept (the split ring maximum). */
const MAX_QUEUE_SIZE = 32768;

/** Per-request facts gathered while parsing, before any I/O. */
interface Completion {
  readonly epoch: number;
  readonly headIndex: number;
  readonly status: ChainWriter;
}

/** Counters of one virtio-blk device (in `vm.metrics().drives[id]`). */
export interface BlockMetrics {
  /** IN requests. */
  readonly readRequests: number;
  /** OUT requests. */
  readonly writeRequests: number;
  /** FLUSH requests. */
  readonly flushRequests: number;
  /** GET_ID requests. */
  readonly getIdRequests: number;
  /** Bytes read into the guest. */
  readonly readBytes: number;
  /** Bytes written from the guest. */
  readonly writeBytes: number;
  /** Requests completed with an error status or none. */
  readonly errors: number;
  /** Backend failures. */
  readonly ioErrors: number;
  /** Chains without room for a header or status. */
  readonly malformedChains: number;
  /** Requests outside the capacity, not whole sectors, or with a wrong data direction. */
  readonly invalidRequests: number;
  /** Writes refused by a read-only drive. */
  readonly readOnlyWrites: number;
  /** Unknown request types and FLUSH without the feature. */
  readonly unsupported: number;
  /** Times the rate limiter held a request back. */
  readonly throttles: number;
  /** Backend operations in flight now. */
  readonly inFlight: number;
  /** Requests completed into the used ring. */
  readonly completed: number;
  /** Completions dropped because the driver reset the device meanwhile. */
  readonly droppedCompletions: number;
  /** Used-buffer interrupts raised. */
  readonly notifications: number;
  /** Ring-level failures (the queue then needs a reset). */
  readonly queueErrors: number;
  /** Config space writes (nothing is writable). */
  readonly configWritesIgnored: number;
  /** Backing file swaps. */
  readonly backendSwaps: number;
  /** Backends whose close failed. */
  readonly backendCloseErrors: number;
  /** Requests re-submitted after a restore. */
  readonly resubmitted: number;
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
}

/** Version of {@link BlockDevice.saveState}'s format. */
export const BLOCK_STATE_VERSION = 1;

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function encodeId(id: unknown): Uint8Array {
  if (typeof id !== 'string' || id.length === 0) {
    throw new BlockError('BAD_CONFIG', 'drive id must be a non-empty string');
  }
  const raw = new TextEncoder().encode(id);
  if (raw.length > VIRTIO_BLK_ID_BYTES) {
    throw new BlockError('ID_TOO_LONG', `drive id "${id}" is ${raw.length} bytes; GET_ID holds ${VIRTIO_BLK_ID_BYTES}`);
  }
  const out = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  out.set(raw);
  return out;
}

function checkBackend(backend: BlockBackend, readOnly: boolean): void {
  if (typeof backend !== 'object' || backend === null || typeof backend.read !== 'function' || typeof backend.write !== 'function') {
    throw new BlockError('BAD_CONFIG', 'backend must implement BlockBackend');
  }
  if (!Number.isSafeInteger(backend.size) || backend.size < 0) {
    throw new BlockError('BAD_CONFIG', `backend size ${String(backend.size)} is not a byte count`);
  }
  if (!readOnly && backend.readOnly === true) {
    throw new BlockError('BAD_CONFIG', 'a writable drive needs a writable backend');
  }
}

/** Calls a backend method, turning a synchronous throw into a rejection. */
function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(e);
  }
}

/** virtio-blk device model; see the module comment. */
export class BlockDevice implements VirtioDevice<BlockMetrics> {
  /** VIRTIO_ID_BLOCK. */
  readonly deviceType = VIRTIO_ID_BLOCK;
  /** Device kind in metrics and snapshots. */
  readonly kind = 'virtio-blk';
  /** See {@link BLOCK_STATE_VERSION}. */
  readonly stateVersion = BLOCK_STATE_VERSION;
  /** One request queue. */
  readonly queueMaxSizes: readonly number[];
  /** RO when read-only, FLUSH with writeback caching, always BLK_SIZE and SEG_MAX. */
  readonly deviceFeatures: bigint;
  /** Drive id as given. */
  readonly id: string;
  /** Whether the drive is read-only. */
  readonly readOnly: boolean;
  /** Host caching policy. */
  readonly cacheType: CacheType;

  private readonly idBytes: Uint8Array;
  private readonly segMax: number;
  private backendRef: BlockBackend;
  private limiter: RateLimiter | undefined;
  private ctx: VirtioDeviceContext | null = null;
  private flushNegotiated = false;
  // Bumped on activate/reset/close: completions from an older epoch are dropped.
  private epoch = 0;
  private notifyPending = false;
  private notifyScheduled = false;
  private closed = false;
  // In-flight request counts per backend, so a replaced backend is closed only once drained.
  private readonly backendUse = new Map<BlockBackend, number>();
  /** Heads of the requests of the current activation whose backend I/O has not completed. */
  private readonly inFlightHeads = new Set<number>();
  private readonly retired = new Set<BlockBackend>();
  /** {@link drain} callers waiting for the last in-flight operation. */
  private drainWaiters: (() => void)[] = [];
  private readonly configScratch = new DataView(new ArrayBuffer(BLK_CONFIG_SIZE));

  private readonly counters = {
    readRequests: 0,
    writeRequests: 0,
    flushRequests: 0,
    getIdRequests: 0,
    readBytes: 0,
    writeBytes: 0,
    errors: 0,
    ioErrors: 0,
    malformedChains: 0,
    invalidRequests: 0,
    readOnlyWrites: 0,
    unsupported: 0,
    throttles: 0,
    inFlight: 0,
    completed: 0,
    droppedCompletions: 0,
    notifications: 0,
    queueErrors: 0,
    configWritesIgnored: 0,
    backendSwaps: 0,
    backendCloseErrors: 0,
    resubmitted: 0,
  };

  /**
   * @throws BlockError BAD_CONFIG (bad backend, queue size, or a writable drive on a read-only
   *   backend), ID_TOO_LONG (id over 20 bytes).
   */
  constructor(config: BlockDeviceConfig) {
    if (typeof config !== 'object' || config === null) throw new BlockError('BAD_CONFIG', 'config must be an object');
    this.idBytes = encodeId(config.id);
    if (typeof config.readOnly !== 'boolean') throw new BlockError('BAD_CONFIG', 'readOnly must be a boolean');
    if (config.cacheType !== 'unsafe' && config.cacheType !== 'writeback') {
      throw new BlockError('BAD_CONFIG', `cacheType must be 'unsafe' or 'writeback', got ${String(config.cacheType)}`);
    }
    checkBackend(config.backend, config.readOnly);
    const queueSize = config.queueSize ?? BLOCK_QUEUE_SIZE;
    // Room for the header and status descriptors besides the data segments.
    if (!isPowerOfTwo(queueSize) || queueSize < 4 || queueSize > MAX_QUEUE_SIZE) {
      throw new BlockError('BAD_CONFIG', `queue size ${queueSize} is not a power of two in [4, ${MAX_QUEUE_SIZE}]`);
    }
    if (config.rateLimiter !== undefined && !(config.rateLimiter instanceof RateLimiter)) {
      throw new BlockError('BAD_CONFIG', 'rateLimiter must be a RateLimiter');
    }
    this.id = config.id;
    this.readOnly = config.readOnly;
    this.cacheType = config.cacheType;
    this.backendRef = config.backend;
    this.queueMaxSizes = Object.freeze([queueSize]);
    this.segMax = queueSize - 2;
    let features = featureBit(VIRTIO_BLK_F_BLK_SIZE) | featureBit(VIRTIO_BLK_F_SEG_MAX);
    if (config.readOnly) features |= featureBit(VIRTIO_BLK_F_RO);
    if (config.cacheType === 'writeback') features |= featureBit(VIRTIO_BLK_F_FLUSH);
    this.deviceFeatures = features;
    if (config.rateLimiter) this.attachLimiter(config.rateLimiter);
  }

  /** The current backend. */
  get backend(): BlockBackend {
    return this.backendRef;
  }

  /** Capacity in 512-byte sectors: the backend size rounded down (a partial last sector is unreachable). */
  get capacity(): number {
    return Math.floor(this.backendRef.size / SECTOR_SIZE);
  }

  /** The rate limiter, if any. */
  get rateLimiter(): RateLimiter | undefined {
    return this.limiter;
  }

  private attachLimiter(limiter: RateLimiter): void {
    this.limiter = limiter;
    limiter.onUnblocked = () => this.processQueue(REQUEST_QUEUE);
  }

  /** Reads struct virtio_blk_config (§5.2.4); 0 for sizes other than 1/2/4 and past the end. */
  readConfig(offset: number, size: number): number {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > BLK_CONFIG_SIZE) {
      return 0;
    }
    const v = this.configScratch;
    for (let i = 0; i < BLK_CONFIG_SIZE; i += 4) v.setUint32(i, 0);
    v.setBigUint64(BLK_CONFIG_CAPACITY, BigInt(this.capacity), true);
    v.setUint32(BLK_CONFIG_SEG_MAX, this.segMax, true);
    v.setUint32(BLK_CONFIG_BLK_SIZE, SECTOR_SIZE, true);
    if (size === 1) return v.getUint8(offset);
    if (size === 2) return v.getUint16(offset, true);
    return v.getUint32(offset, true);
  }

  /** Nothing in this config space is writable (CONFIG_WCE is not offered); writes are counted. */
  writeConfig(_offset: number, _size: number, _value: number): void {
    this.counters.configWritesIgnored++;
  }

  /** Starts serving the queue. */
  activate(ctx: VirtioDeviceContext): void {
    this.epoch++;
    this.inFlightHeads.clear();
    this.ctx = ctx;
    this.flushNegotiated = hasFeature(ctx.ackedFeatures, VIRTIO_BLK_F_FLUSH);
    this.notifyPending = false;
    // A notification scheduled under the previous context never runs (the scheduler drops it).
    this.notifyScheduled = false;
  }

  /**
   * Drops the queue context. Requests still in flight finish their backend I/O (a read may still
   * land in its guest buffers) but their completions are discarded, never written to the rings.
   */
  reset(): void {
    this.epoch++;
    this.inFlightHeads.clear();
    this.ctx = null;
    this.flushNegotiated = false;
    this.notifyPending = false;
    this.notifyScheduled = false;
  }

  /**
   * Pops and starts every available request, until the queue is empty or the rate limiter
   * blocks (the limiter's timer then calls this again). Never throws.
   */
  processQueue(queueIndex: number): void {
    if (queueIndex !== REQUEST_QUEUE) return;
    try {
      this.drainQueue();
    } catch {
      // Only a device bug gets here; it must not reach the event loop.
      this.counters.queueErrors++;
      this.ctx?.needsReset();
    }
    this.flushNotify();
  }

  private drainQueue(): void {
    const ctx = this.ctx;
    if (ctx === null || this.closed) return;
    const queue = ctx.queues[REQUEST_QUEUE];
    if (queue === undefined || !queue.ready || queue.broken !== null) return;
    // Blocked: the limiter's timer will call back; popping now would only be undone.
    if (this.limiter?.isBlocked()) return;
    for (;;) {
      let chain: DescriptorChain | null;
      try {
        chain = queue.pop(ctx.mem);
      } catch {
        // Ring-level corruption: the queue is broken until reset (§2.1.2).
        this.counters.queueErrors++;
        ctx.needsReset();
        return;
      }
      if (chain === null) return;
      if (!this.startRequest(ctx, queue, chain)) return;
    }
  }

  /**
   * Parses ({@link parseRequest}), throttles, counts and starts one request. Returns false if it
   * was throttled and pushed back. `resubmit`: a request restored from a snapshot, already
   * admitted by the limiter before it.
   */
  private startRequest(ctx: VirtioDeviceContext, queue: Queue, chain: DescriptorChain, resubmit = false): boolean {
    const c = this.counters;
    const req = parseRequest(ctx.mem, chain, this.capacity);
    if (isRequestError(req) && req.error === 'malformed') {
      c.malformedChains++;
      c.errors++;
      // No status byte at all: complete with nothing written.
      if (req.status === undefined) this.addUsed(ctx, queue, chain.headIndex, 0);
      else this.finish({ epoch: this.epoch, headIndex: chain.headIndex, status: req.status }, VIRTIO_BLK_S_IOERR, 0);
      return true;
    }
    const type = isRequestError(req) ? req.requestType : req.type;
    const isData = type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT;
    const dataLen = isRequestError(req) ? req.length : 'length' in req ? req.length : 0;
    const limiter = resubmit ? undefined : this.limiter;
    if (limiter !== undefined) {
      if (!limiter.consume(1, 'ops')) {
        queue.undoPop();
        c.throttles++;
        return false;
      }
      if (isData && dataLen > 0 && !limiter.consume(dataLen, 'bytes')) {
        limiter.manualReplenish(1, 'ops');
        queue.undoPop();
        c.throttles++;
        return false;
      }
    }

    if (type === VIRTIO_BLK_T_IN) c.readRequests++;
    else if (type === VIRTIO_BLK_T_OUT) c.writeRequests++;
    const done: Completion = { epoch: this.epoch, headIndex: chain.headIndex, status: req.status! };
    if (isRequestError(req)) {
      c.invalidRequests++;
      c.errors++;
      this.finish(done, VIRTIO_BLK_S_IOERR, 0);
      return true;
    }
    switch (req.type) {
      case VIRTIO_BLK_T_IN:
        this.startRead(done, req.data, req.offset);
        return true;
      case VIRTIO_BLK_T_OUT:
        if (this.readOnly) {
          // §5.2.6.2: a read-only device fails writes and must not write any data.
          c.readOnlyWrites++;
          c.errors++;
          this.finish(done, VIRTIO_BLK_S_IOERR, 0);
          return true;
        }
        this.startWrite(done, req.data, req.offset);
        return true;
      case VIRTIO_BLK_T_FLUSH:
        c.flushRequests++;
        if (!this.flushNegotiated) {
          c.unsupported++;
          this.finish(done, VIRTIO_BLK_S_UNSUPP, 0);
          return true;
        }
        this.startFlush(done);
        return true;
      case VIRTIO_BLK_T_GET_ID: {
        c.getIdRequests++;
        const n = Math.min(VIRTIO_BLK_ID_BYTES, req.id.remaining);
        req.id.write(this.idBytes.subarray(0, n));
        this.finish(done, VIRTIO_BLK_S_OK, n);
        return true;
      }
      default:
        c.unsupported++;
        this.finish(done, VIRTIO_BLK_S_UNSUPP, 0);
        return true;
    }
  }

  private startRead(done: Completion, views: Uint8Array[], offset: number): void {
    const len = views.reduce((n, v) => n + v.length, 0);
    const backend = this.backendRef;
    const io = call(() =>
      backend.readv !== undefined
        ? backend.readv(views, offset)
        : BlockDevice.eachView(views, offset, (v, o) => backend.read(v, o)),
    );
    this.track(backend, done, io, len, (ok) => {
      if (ok) this.counters.readBytes += len;
      return len;
    });
  }

  private startWrite(done: Completion, views: Uint8Array[], offset: number): void {
    const len = views.reduce((n, v) => n + v.length, 0);
    const backend = this.backendRef;
    const io = call(() =>
      backend.writev !== undefined
        ? backend.writev(views, offset)
        : BlockDevice.eachView(views, offset, (v, o) => backend.write(v, o)),
    );
    this.track(backend, done, io, len, (ok) => {
      if (ok) this.counters.writeBytes += len;
      return 0;
    });
  }

  private startFlush(done: Completion): void {
    const backend = this.backendRef;
    this.track(backend, done, call(() => backend.flush()).then(() => 0), 0, () => 0);
  }

  /** Runs `op` on each view in turn at consecutive offsets; resolves to the total, short at EOF. */
  private static async eachView(
    views: readonly Uint8Array[],
    offset: number,
    op: (v: Uint8Array, o: number) => Promise<number>,
  ): Promise<number> {
    let total = 0;
    for (const v of views) {
      const n = await op(v, offset + total);
      total += n;
      if (n < v.length) break;
    }
    return total;
  }

  /**
   * Follows one backend operation to its completion. `expect` is the byte count it must report;
   * `written` maps success to the data bytes written into the guest (for the used length).
   */
  private track(
    backend: BlockBackend,
    done: Completion,
    io: Promise<number>,
    expect: number,
    written: (ok: boolean) => number,
  ): void {
    const c = this.counters;
    c.inFlight++;
    if (done.epoch === this.epoch) this.inFlightHeads.add(done.headIndex);
    this.backendUse.set(backend, (this.backendUse.get(backend) ?? 0) + 1);
    io.then(
      (n) => (n === expect ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR),
      () => VIRTIO_BLK_S_IOERR,
    ).then((status) => {
      // Nothing may escape: an unhandled rejection would take the process down.
      try {
        c.inFlight--;
        if (done.epoch === this.epoch) this.inFlightHeads.delete(done.headIndex);
        const left = (this.backendUse.get(backend) ?? 1) - 1;
        if (left > 0) this.backendUse.set(backend, left);
        else {
          this.backendUse.delete(backend);
          if (this.retired.has(backend)) this.closeRetired(backend);
        }
        const ok = status === VIRTIO_BLK_S_OK;
        if (!ok) {
          c.ioErrors++;
          c.errors++;
        }
        const data = written(ok);
        this.finish(done, status, ok ? data : 0);
      } catch {
        c.queueErrors++;
      }
      if (c.inFlight === 0 && this.drainWaiters.length > 0) for (const w of this.drainWaiters.splice(0)) w();
    });
  }

  /**
   * Writes the status byte and publishes the chain; `dataWritten` excludes the status byte.
   * Completions from before a reset are dropped.
   */
  private finish(done: Completion, status: number, dataWritten: number): void {
    const ctx = this.ctx;
    if (done.epoch !== this.epoch || ctx === null) {
      this.counters.droppedCompletions++;
      return;
    }
    try {
      done.status.writeU8(status);
    } catch {
      // Cannot happen for a reserved tail inside a popped chain; never hide it if it does.
      this.counters.queueErrors++;
    }
    this.addUsed(ctx, ctx.queues[REQUEST_QUEUE], done.headIndex, dataWritten + BLK_REQ_STATUS_SIZE);
  }

  private addUsed(ctx: VirtioDeviceContext, queue: Queue, headIndex: number, len: number): void {
    try {
      queue.addUsed(ctx.mem, headIndex, len);
    } catch {
      this.counters.queueErrors++;
      ctx.needsReset();
      return;
    }
    this.counters.completed++;
    this.notifyPending = true;
    // Completions arriving in one event-loop turn share a single interrupt.
    if (!this.notifyScheduled) {
      this.notifyScheduled = true;
      ctx.schedule(() => {
        this.notifyScheduled = false;
        this.flushNotify();
      });
    }
  }

  private flushNotify(): void {
    const ctx = this.ctx;
    if (!this.notifyPending || ctx === null) return;
    this.notifyPending = false;
    try {
      if (ctx.queues[REQUEST_QUEUE].needsNotification(ctx.mem)) {
        this.counters.notifications++;
        ctx.interrupt.signalUsedQueue(REQUEST_QUEUE);
      }
    } catch {
      // Runs from the scheduler too, where a throw would be an uncaught exception.
      this.counters.queueErrors++;
    }
  }

  /**
   * Switches to another backing store (e.g. a resized or replaced file). New requests use it at
   * once and the capacity in config space follows its size; the caller signals the config change
   * to the driver (transport.configChanged()). The old backend is closed once its in-flight
   * requests have finished.
   * @throws BlockError BAD_CONFIG (nothing is changed then).
   */
  updateBackend(backend: BlockBackend): void {
    checkBackend(backend, this.readOnly);
    if (this.closed) throw new BlockError('CLOSED', 'block device is closed');
    const old = this.backendRef;
    if (old === backend) return;
    this.backendRef = backend;
    this.retired.delete(backend);
    this.counters.backendSwaps++;
    this.retire(old);
  }

  private retire(backend: BlockBackend): void {
    this.retired.add(backend);
    if (!this.backendUse.has(backend)) this.closeRetired(backend);
  }

  private closeRetired(backend: BlockBackend): void {
    this.retired.delete(backend);
    call(() => backend.close()).catch(() => {
      this.counters.backendCloseErrors++;
    });
  }

  /**
   * Changes the rate limits: a config updates the current limiter (see {@link RateLimiter.update})
   * or creates one if the device had none; a RateLimiter instance replaces the current one (whose
   * timer is then cancelled).
   * @throws RateLimitError BAD_CONFIG
   */
  updateRateLimiter(config: RateLimiterConfig | RateLimiter): void {
    if (config instanceof RateLimiter) {
      if (config === this.limiter) return;
      const old = this.limiter;
      this.attachLimiter(config);
      if (old !== undefined) {
        old.onUnblocked = undefined;
        old.dispose();
      }
      // The old limiter may have been blocking the queue; let the new one decide.
      this.processQueue(REQUEST_QUEUE);
    } else if (this.limiter) {
      this.limiter.update(config);
    } else {
      this.attachLimiter(new RateLimiter(config));
    }
  }

  /**
   * Stops the device for good: completions are dropped, the limiter's timer is cancelled and the
   * backend is closed once in-flight requests finish (the returned promise does not wait for them).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reset();
    this.limiter?.dispose();
    const backend = this.backendRef;
    this.retired.add(backend);
    if (!this.backendUse.has(backend)) {
      this.retired.delete(backend);
      await backend.close();
    }
  }

  /** Request, byte, error and throttle counters; `inFlight` is the current number of backend operations. */
  metrics(): BlockMetrics {
    return { ...this.counters, capacity: this.capacity };
  }

  /**
   * Resolves once no backend operation is in flight (every request popped so far has completed
   * or been dropped) and the backend has been flushed: what a snapshot waits for, so that drive
   * contents and guest memory agree. Requests still throttled stay in the avail ring and are not
   * waited for. Rejects when the flush fails.
   */
  async drain(): Promise<void> {
    if (this.counters.inFlight > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    // The drive's contents are the user's from here: what the guest wrote is on disk (fdatasync),
    // whatever the cache policy the guest was offered.
    if (!this.readOnly && !this.closed) await call(() => this.backendRef.flush());
  }

  /**
   * State: the requests of the current activation whose I/O had not completed, by head index
   * (they are re-read from the descriptor table and run again on restore: reads and writes of
   * whole sectors are idempotent, and the driver does not touch a chain until it is used), and
   * whether a used-buffer notification was still owed. The backend, its size and the limiter's
   * configuration are host resources, supplied again when the device is rebuilt.
   */
  saveState(): StateObject {
    return {
      inFlight: [...this.inFlightHeads].sort((a, b) => a - b),
      notifyPending: this.notifyPending,
    };
  }

  /** See {@link saveState}; re-submits the saved in-flight requests when the device is active. */
  restoreState(state: StateObject): void {
    const heads = stateField.arr(state, 'inFlight', this.queueMaxSizes[REQUEST_QUEUE]);
    const notifyPending = stateField.bool(state, 'notifyPending');
    const max = this.queueMaxSizes[REQUEST_QUEUE] - 1;
    if (heads.some((h) => typeof h !== 'number' || !Number.isInteger(h) || h < 0 || h > max) || new Set(heads).size !== heads.length) {
      throw new DeviceError('BAD_STATE', `drive ${this.id}: inFlight must be distinct head indices in [0, ${max}]`);
    }
    const ctx = this.ctx;
    if (ctx === null) {
      if (heads.length > 0) throw new DeviceError('BAD_STATE', `drive ${this.id}: requests in flight on a device that is not active`);
      return;
    }
    const queue = ctx.queues[REQUEST_QUEUE];
    for (const head of heads as number[]) {
      let chain: DescriptorChain;
      try {
        chain = queue.chainAt(ctx.mem, head);
      } catch {
        this.counters.queueErrors++;
        ctx.needsReset();
        return;
      }
      this.counters.resubmitted++;
      this.startRequest(ctx, queue, chain, true);
    }
    if (notifyPending) {
      this.notifyPending = true;
      this.flushNotify();
    }
  }
}
