/**
 * A two-bucket (bandwidth and operations) rate limiter for devices, after Firecracker's: while
 * blocked every consume fails, and one timer unblocks it and tells the device to retry.
 * @module
 */

import { RateLimitError } from './errors';
import { monotonicClock, NanoClock, TokenBucket, TokenBucketConfig, validateTokenBucketConfig } from './token-bucket';

/**
 * Limits for a device. An omitted bucket is unlimited at construction and left unchanged by
 * `RateLimiter.update()`; a bucket with size or refillTime 0 is disabled (unlimited).
 */
export interface RateLimiterConfig {
  /** Bytes. */
  bandwidth?: TokenBucketConfig;
  /** Operations (requests). */
  ops?: TokenBucketConfig;
}

/** Which bucket a consume draws from. */
export type TokenKind = 'bytes' | 'ops';

/** Timer functions, injectable for deterministic tests. Defaults to the global ones. */
export interface TimerFunctions {
  /** Schedules `callback` once after `ms` milliseconds; returns a handle. */
  setTimeout(callback: () => void, ms: number): unknown;
  /** Cancels a handle returned by `setTimeout`. */
  clearTimeout(handle: unknown): void;
}

/** Construction options besides the limits themselves. */
export interface RateLimiterOptions {
  /** Monotonic nanosecond clock; default `process.hrtime.bigint`. */
  clock?: NanoClock;
  /** Timer functions; default the global `setTimeout`/`clearTimeout`. */
  timers?: TimerFunctions;
  /** Called (from the timer) each time the limiter unblocks; the device retries its queue. */
  onUnblocked?: () => void;
}

const defaultTimers: TimerFunctions = {
  setTimeout: (cb, ms) => setTimeout(cb, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

const NS_PER_MS = 1_000_000n;
// setTimeout clamps larger delays to 1 ms; chain re-arms instead (reached only with huge debts).
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Rate limiter with a bandwidth bucket and an ops bucket.
 *
 * When a consume fails, or an oversized request is granted on credit, the limiter becomes
 * blocked and arms a single timer for the exact time (rounded up to a millisecond) until the
 * failed request would fit, or until the credit is repaid; Firecracker instead polls every
 * 100 ms on failure. When the timer fires the limiter unblocks and calls `onUnblocked`, so the
 * device never spins. The timer is a normal (ref'd) timer: a throttled request is outstanding
 * work that must complete even if nothing else keeps the event loop alive; {@link dispose}
 * cancels it.
 */
export class RateLimiter {
  /** Called each time the limiter unblocks. The device sets it to re-process its queue. */
  onUnblocked: (() => void) | undefined;

  private bandwidthBucket: TokenBucket | null;
  private opsBucket: TokenBucket | null;
  private readonly clock: NanoClock;
  private readonly timers: TimerFunctions;
  private timer: unknown = undefined;
  private timerActive = false;
  private disposed = false;

  private consumeCalls = 0;
  private throttled = 0;
  private overConsumptions = 0;
  private timerFires = 0;
  private callbackErrors = 0;
  private bytesGranted = 0;
  private opsGranted = 0;

  /**
   * @param config bucket limits (either may be omitted for no limit of that kind).
   * @throws RateLimitError BAD_CONFIG
   */
  constructor(config: RateLimiterConfig = {}, options: RateLimiterOptions = {}) {
    RateLimiter.validate(config);
    this.clock = options.clock ?? monotonicClock;
    this.timers = options.timers ?? defaultTimers;
    this.onUnblocked = options.onUnblocked;
    this.bandwidthBucket = this.makeBucket(config.bandwidth);
    this.opsBucket = this.makeBucket(config.ops);
  }

  /**
   * Checks a configuration without applying it.
   * @throws RateLimitError BAD_CONFIG
   */
  static validate(config: RateLimiterConfig): void {
    if (typeof config !== 'object' || config === null) {
      throw new RateLimitError('BAD_CONFIG', 'rate limiter config must be an object');
    }
    if (config.bandwidth !== undefined) validateTokenBucketConfig(config.bandwidth);
    if (config.ops !== undefined) validateTokenBucketConfig(config.ops);
  }

  private makeBucket(cfg: TokenBucketConfig | undefined): TokenBucket | null {
    if (cfg === undefined) return null;
    const b = new TokenBucket(cfg, this.clock);
    return b.enabled ? b : null;
  }

  /** The bandwidth bucket, or null when bandwidth is unlimited. */
  get bandwidth(): TokenBucket | null {
    return this.bandwidthBucket;
  }

  /** The ops bucket, or null when operations are unlimited. */
  get ops(): TokenBucket | null {
    return this.opsBucket;
  }

  /** Whether any limit is in effect. */
  get enabled(): boolean {
    return this.bandwidthBucket !== null || this.opsBucket !== null;
  }

  /**
   * Takes `tokens` of `kind`. Returns false (and takes nothing) when the limiter is blocked or
   * the bucket lacks tokens; in the latter case the unblock timer is armed. An oversized request
   * is granted and blocks the limiter for the time it overdrew.
   * @throws RateLimitError BAD_TOKENS unless `tokens` is a non-negative safe integer.
   */
  consume(tokens: number, kind: TokenKind): boolean {
    if (!Number.isSafeInteger(tokens) || tokens < 0) {
      throw new RateLimitError('BAD_TOKENS', `token count must be a non-negative integer, got ${tokens}`);
    }
    this.consumeCalls++;
    if (this.timerActive) {
      this.throttled++;
      return false;
    }
    const bucket = kind === 'bytes' ? this.bandwidthBucket : this.opsBucket;
    if (bucket !== null) {
      const r = bucket.reduce(tokens);
      if (r.kind === 'failure') {
        this.throttled++;
        this.arm(r.waitNs);
        return false;
      }
      if (r.kind === 'overConsumption') {
        this.overConsumptions++;
        this.arm(r.blockNs);
      }
    }
    if (kind === 'bytes') this.bytesGranted += tokens;
    else this.opsGranted += tokens;
    return true;
  }

  /** Gives back tokens taken by a {@link consume} whose request was not carried out. */
  manualReplenish(tokens: number, kind: TokenKind): void {
    const bucket = kind === 'bytes' ? this.bandwidthBucket : this.opsBucket;
    if (bucket !== null) bucket.forceReplenish(tokens);
    if (kind === 'bytes') this.bytesGranted = Math.max(0, this.bytesGranted - tokens);
    else this.opsGranted = Math.max(0, this.opsGranted - tokens);
  }

  /** True from a failed (or over-drawn) consume until the unblock timer fires. */
  isBlocked(): boolean {
    return this.timerActive;
  }

  /**
   * Replaces the buckets given in `config` with new, full buckets (Firecracker semantics); an
   * omitted bucket keeps its state, and one with size or refillTime 0 becomes unlimited. If the
   * limiter is blocked, it is unblocked on a 0 ms timer so the device retries under the new limits.
   * @throws RateLimitError BAD_CONFIG (nothing is changed then).
   */
  update(config: RateLimiterConfig): void {
    RateLimiter.validate(config);
    if (config.bandwidth !== undefined) this.bandwidthBucket = this.makeBucket(config.bandwidth);
    if (config.ops !== undefined) this.opsBucket = this.makeBucket(config.ops);
    if (this.timerActive) {
      this.cancelTimer();
      this.armMs(0);
    }
  }

  /** Cancels the timer and stops all further callbacks; consumes keep working (unblocked). */
  dispose(): void {
    this.cancelTimer();
    this.timerActive = false;
    this.disposed = true;
  }

  /** Same as {@link dispose}. */
  close(): void {
    this.dispose();
  }

  /** Counters and current budgets. */
  metrics(): Record<string, number> {
    return {
      consumeCalls: this.consumeCalls,
      throttled: this.throttled,
      overConsumptions: this.overConsumptions,
      timerFires: this.timerFires,
      callbackErrors: this.callbackErrors,
      bytesGranted: this.bytesGranted,
      opsGranted: this.opsGranted,
      blocked: this.timerActive ? 1 : 0,
      bandwidthBudget: this.bandwidthBucket?.budget ?? -1,
      opsBudget: this.opsBucket?.budget ?? -1,
    };
  }

  private arm(ns: bigint): void {
    // Round up: waking early would only fail again and re-arm.
    const ms = (ns + NS_PER_MS - 1n) / NS_PER_MS;
    this.armMs(ms > BigInt(MAX_TIMER_MS) ? MAX_TIMER_MS : Number(ms));
  }

  private armMs(ms: number): void {
    this.cancelTimer();
    this.timerActive = true;
    if (this.disposed) {
      // A disposed limiter has no one to wake; stay unblocked rather than hang a caller.
      this.timerActive = false;
      return;
    }
    this.timer = this.timers.setTimeout(() => this.fire(), ms);
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) {
      this.timers.clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private fire(): void {
    this.timer = undefined;
    this.timerActive = false;
    this.timerFires++;
    const cb = this.onUnblocked;
    if (cb === undefined) return;
    try {
      cb();
    } catch {
      // A device callback must not take down the event loop; it is counted instead.
      this.callbackErrors++;
    }
  }
}
