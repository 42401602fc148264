/**
 * The virtio entropy device (virtio-rng, virtio 1.2 §5.4): one request queue whose device-writable
 * buffers the device fills with bytes from the host CSPRNG.
 *
 * Each request draws at most {@link ENTROPY_MAX_REQUEST_BYTES} (as Firecracker: a driver asking for
 * more gets a shorter used length and asks again). An optional {@link RateLimiter} charges one op
 * per request and its byte count to the bandwidth bucket; a request it refuses stays in the avail
 * ring until the limiter's timer calls the queue again. A chain with no writable byte completes
 * with used length 0. The device holds no request between calls, so its state is empty: the
 * limiter's budget and the host CSPRNG are host resources.
 * @module
 */
import type { DescriptorChain } from '../../virtio/chain';
import { ChainWriter } from '../../virtio/chain';
import { VIRTIO_ID_RNG } from '../../virtio/constants';
import type { VirtioDevice, VirtioDeviceContext } from '../../virtio/device';
import { RateLimiter, type RateLimiterConfig } from '../../ratelimit';
import { DeviceError, type StateObject } from '../contract';
import { EntropyError } from './errors';
import type { EntropyHost } from './host';
import type { EntropyOptions } from './config';

/** Largest number of bytes one request gets. */
export const ENTROPY_MAX_REQUEST_BYTES = 64 * 1024;
/** Queue size. */
export const ENTROPY_QUEUE_SIZE = 256;
/** Version of the (empty) saved state. */
export const ENTROPY_STATE_VERSION = 1;
const REQUEST_QUEUE = 0;

/** Counters of a virtio-rng device. */
export interface EntropyMetrics {
  /** Requests completed with random bytes. */
  readonly requests: number;
  /** Random bytes written into the guest. */
  readonly bytes: number;
  /** Chains with no writable buffer, or malformed. */
  readonly malformedChains: number;
  /** Times the rate limiter held a request back. */
  readonly throttles: number;
  /** Host CSPRNG failures (the request completed empty). */
  readonly hostErrors: number;
  /** Used-buffer interrupts raised. */
  readonly notifications: number;
  /** Ring-level failures (the device then needs a reset). */
  readonly queueErrors: number;
  /** Config space writes (there is no config space). */
  readonly configWritesIgnored: number;
}

/** Construction parameters of an {@link EntropyDevice}. */
export interface EntropyDeviceConfig extends EntropyOptions {
  /** Device id (default `'entropy'`). */
  id?: string;
}

/** virtio-rng device model; see the module comment. */
export class EntropyDevice implements VirtioDevice<EntropyMetrics> {
  /** VIRTIO_ID_RNG. */
  readonly deviceType = VIRTIO_ID_RNG;
  /** Device kind in metrics and snapshots. */
  readonly kind = 'virtio-rng';
  /** See {@link ENTROPY_STATE_VERSION}. */
  readonly stateVersion = ENTROPY_STATE_VERSION;
  /** One request queue. */
  readonly queueMaxSizes: readonly number[] = Object.freeze([ENTROPY_QUEUE_SIZE]);
  /** virtio-rng has no feature bits. */
  readonly deviceFeatures = 0n;
  /** Device id. */
  readonly id: string;

  private readonly host: EntropyHost;
  private limiter: RateLimiter | undefined;
  private ctx: VirtioDeviceContext | null = null;
  private closed = false;
  private readonly c = { requests: 0, bytes: 0, malformedChains: 0, throttles: 0, hostErrors: 0, notifications: 0, queueErrors: 0, configWritesIgnored: 0 };

  /**
   * @param config validated options (see `checkEntropyOptions`)
   * @param host the CSPRNG
   * @param limiter an explicit limiter instance (tests inject one with fake timers); otherwise one
   *   is built from `config.rateLimiter`
   * @throws EntropyError BAD_CONFIG; RateLimitError BAD_CONFIG
   */
  constructor(config: EntropyDeviceConfig, host: EntropyHost, limiter?: RateLimiter) {
    if (config === null || typeof config !== 'object') throw new EntropyError('BAD_CONFIG', 'config must be an object');
    if (host === null || typeof host !== 'object' || typeof host.randomFill !== 'function') throw new EntropyError('BAD_CONFIG', 'host must implement EntropyHost');
    this.id = config.id ?? 'entropy';
    this.host = host;
    const l = limiter ?? (config.rateLimiter !== undefined ? new RateLimiter(config.rateLimiter) : undefined);
    if (l !== undefined) this.attachLimiter(l);
  }

  /** The rate limiter, if any. */
  get rateLimiter(): RateLimiter | undefined {
    return this.limiter;
  }

  private attachLimiter(l: RateLimiter): void {
    this.limiter = l;
    l.onUnblocked = () => this.processQueue(REQUEST_QUEUE);
  }

  /** There is no config space: reads are 0. */
  readConfig(_offset: number, _size: number): number {
    return 0;
  }

  /** There is no config space: writes are counted. */
  writeConfig(_offset: number, _size: number, _value: number): void {
    this.c.configWritesIgnored++;
  }

  /** Starts serving the queue. */
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    // Requests made available (and kicked) before DRIVER_OK got no notification through.
    this.processQueue(REQUEST_QUEUE);
  }

  /** Drops the queue context. */
  reset(): void {
    this.ctx = null;
  }

  /** Serves every available request until the queue is empty or the limiter blocks. Never throws. */
  processQueue(queueIndex: number): void {
    const ctx = this.ctx;
    if (queueIndex !== REQUEST_QUEUE || ctx === null || this.closed) return;
    const q = ctx.queues[REQUEST_QUEUE];
    if (!q.ready || q.broken !== null) return;
    let used = false;
    try {
      for (;;) {
        if (this.limiter?.isBlocked()) break;
        const chain = q.pop(ctx.mem);
        if (chain === null) break;
        const n = this.serve(ctx, chain);
        if (n < 0) {
          q.undoPop();
          this.c.throttles++;
          break;
        }
        q.addUsed(ctx.mem, chain.headIndex, n);
        used = true;
      }
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
      return;
    }
    if (used && q.needsNotification(ctx.mem)) {
      this.c.notifications++;
      ctx.interrupt.signalUsedQueue(REQUEST_QUEUE);
    }
  }

  /** Fills one request; returns its used length, or -1 when the limiter refused it. */
  private serve(ctx: VirtioDeviceContext, chain: DescriptorChain): number {
    if (chain.error !== undefined || chain.writableLength === 0) {
      this.c.malformedChains++;
      return 0;
    }
    const n = Math.min(chain.writableLength, ENTROPY_MAX_REQUEST_BYTES);
    const l = this.limiter;
    if (l !== undefined) {
      if (!l.consume(1, 'ops')) return -1;
      if (!l.consume(n, 'bytes')) {
        l.manualReplenish(1, 'ops');
        return -1;
      }
    }
    const views = new ChainWriter(ctx.mem, chain).views(n);
    try {
      for (const v of views) this.host.randomFill(v);
    } catch {
      this.c.hostErrors++;
      return 0;
    }
    this.c.requests++;
    this.c.bytes += n;
    return n;
  }

  /**
   * Changes the rate limits: a config updates the current limiter (RateLimiter.update semantics) or
   * creates one; a RateLimiter instance replaces it.
   * @throws RateLimitError BAD_CONFIG
   */
  updateRateLimiter(config: RateLimiterConfig | RateLimiter): void {
    if (this.closed) throw new EntropyError('CLOSED', 'entropy device is closed');
    if (config instanceof RateLimiter) {
      if (config === this.limiter) return;
      const old = this.limiter;
      this.attachLimiter(config);
      if (old !== undefined) {
        old.onUnblocked = undefined;
        old.dispose();
      }
      this.processQueue(REQUEST_QUEUE);
    } else if (this.limiter !== undefined) {
      this.limiter.update(config);
    } else {
      this.attachLimiter(new RateLimiter(config));
    }
  }

  /** Counters. */
  metrics(): EntropyMetrics {
    return { ...this.c };
  }

  /** No request is ever held between calls: the state is empty. */
  saveState(): StateObject {
    return {};
  }

  /** Accepts only the empty state {@link saveState} produces. */
  restoreState(state: StateObject): void {
    if (state === null || typeof state !== 'object' || Object.keys(state).length !== 0) {
      throw new DeviceError('BAD_STATE', `entropy ${this.id}: unexpected state fields`);
    }
  }

  /** Stops the device and cancels the limiter's timer. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ctx = null;
    this.limiter?.dispose();
  }
}

/** Creates a virtio-rng device from validated options (`checkEntropyOptions`) and the host CSPRNG. */
export function createEntropyDevice(config: EntropyDeviceConfig, host: EntropyHost, limiter?: RateLimiter): EntropyDevice {
  return new EntropyDevice(config, host, limiter);
}
