/**
 * A token bucket with Firecracker's semantics: it starts full, refills lazily and in proportion
 * to elapsed time (exact integer arithmetic, the unused fraction of a token is carried over),
 * spends a non-refilling one-time burst first, and lets a single request larger than the bucket
 * through while reporting how long the caller must then stay blocked.
 * @module
 */

import { RateLimitError } from './errors';

/** Configuration of one token bucket. `size` or `refillTime` 0 disables limiting. */
export interface TokenBucketConfig {
  /** Capacity in tokens (bytes or operations). */
  size: number;
  /** Extra tokens available once, spent before the regular budget; never refilled. */
  oneTimeBurst?: number;
  /** Milliseconds to refill the bucket from empty to `size`. */
  refillTime: number;
}

/** A monotonic clock in nanoseconds. */
export type NanoClock = () => bigint;

/** The default clock: `process.hrtime.bigint`, which is monotonic. */
export const monotonicClock: NanoClock = () => process.hrtime.bigint();

/** Outcome of {@link TokenBucket.reduce}. */
export type BucketReduction =
  | {
      /** The tokens were taken. */
      readonly kind: 'success';
    }
  | {
      /** Not enough tokens; nothing was taken. */
      readonly kind: 'failure';
      /** Nanoseconds until the request would fit. */
      readonly waitNs: bigint;
    }
  | {
      /**
       * The request exceeded the bucket size: it was granted and the bucket emptied, and the
       * caller must not consume again for `blockNs`.
       */
      readonly kind: 'overConsumption';
      /** Tokens taken beyond the budget, in bucket sizes. */
      readonly ratio: number;
      /** Nanoseconds the bucket needs to produce the excess. */
      readonly blockNs: bigint;
    };

const SUCCESS: BucketReduction = Object.freeze({ kind: 'success' });
const NS_PER_MS = 1_000_000n;

function gcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) {
    const t = b;
    b = a % b;
    a = t;
  }
  return a;
}

/** Integer division rounding up, for non-negative operands. */
function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

/** @throws RateLimitError BAD_CONFIG unless `v` is a non-negative safe integer. */
function checkCount(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new RateLimitError('BAD_CONFIG', `${what} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

/**
 * Validates a bucket configuration without building anything.
 * @throws RateLimitError BAD_CONFIG for negative, fractional, non-finite or missing numbers.
 */
export function validateTokenBucketConfig(config: TokenBucketConfig): void {
  if (typeof config !== 'object' || config === null) {
    throw new RateLimitError('BAD_CONFIG', 'token bucket config must be an object');
  }
  checkCount('size', config.size);
  checkCount('refillTime', config.refillTime);
  if (config.oneTimeBurst !== undefined) checkCount('oneTimeBurst', config.oneTimeBurst);
}

/**
 * One token bucket. A disabled bucket (size or refillTime 0) grants every request.
 *
 * Refill is exact rational arithmetic: the bucket produces `size` tokens per `refillTime`, i.e.
 * `processedCapacity` tokens per `processedRefillNs` ns (the fraction reduced by its gcd). The
 * part of elapsed time that has not yet made a whole token is carried in `carry` (in units of
 * 1/processedCapacity ns), so any sequence of refills yields exactly as many tokens as one
 * refill over the same span: no drift. (Firecracker carries by moving its timestamp back, rounded
 * to a nanosecond, which can lose up to a nanosecond's worth of tokens per refill.)
 */
export class TokenBucket {
  /** Capacity in tokens (0 when disabled). */
  readonly size: number;
  /** Refill time in milliseconds (0 when disabled). */
  readonly refillTime: number;
  /** The one-time burst as configured. */
  readonly initialOneTimeBurst: number;
  /** False when size or refillTime is 0: the bucket then grants everything. */
  readonly enabled: boolean;

  private readonly clock: NanoClock;
  private readonly processedCapacity: bigint;
  private readonly processedRefillNs: bigint;
  private burstLeft: number;
  private tokens: number;
  private lastUpdate: bigint;
  // Elapsed time not yet turned into tokens, times processedCapacity; always < processedRefillNs.
  private carry = 0n;

  /**
   * @param config capacity, refill time and optional one-time burst.
   * @param clock monotonic nanosecond clock (inject a fake one in tests).
   * @throws RateLimitError BAD_CONFIG
   */
  constructor(config: TokenBucketConfig, clock: NanoClock = monotonicClock) {
    validateTokenBucketConfig(config);
    this.clock = clock;
    this.enabled = config.size > 0 && config.refillTime > 0;
    this.size = this.enabled ? config.size : 0;
    this.refillTime = this.enabled ? config.refillTime : 0;
    this.initialOneTimeBurst = this.enabled ? config.oneTimeBurst ?? 0 : 0;
    this.burstLeft = this.initialOneTimeBurst;
    this.tokens = this.size;
    if (this.enabled) {
      const sizeBig = BigInt(this.size);
      const refillNs = BigInt(this.refillTime) * NS_PER_MS;
      const g = gcd(sizeBig, refillNs);
      this.processedCapacity = sizeBig / g;
      this.processedRefillNs = refillNs / g;
    } else {
      this.processedCapacity = 1n;
      this.processedRefillNs = 1n;
    }
    this.lastUpdate = clock();
  }

  /** Regular budget as of the last refill (the one-time burst not included). */
  get budget(): number {
    return this.tokens;
  }

  /** One-time burst tokens still unspent. */
  get oneTimeBurst(): number {
    return this.burstLeft;
  }

  /** Brings the budget up to date with the clock (it is otherwise refilled lazily). */
  replenish(): void {
    if (this.enabled) this.autoReplenish(this.clock());
  }

  private autoReplenish(now: bigint): void {
    const delta = now - this.lastUpdate;
    // A clock that does not advance (or a fake one stepping back) produces nothing.
    if (delta <= 0n) return;
    this.lastUpdate = now;
    const acc = delta * this.processedCapacity + this.carry;
    const room = BigInt(this.size - this.tokens);
    if (acc >= room * this.processedRefillNs) {
      // Full: time beyond filling the bucket is not banked.
      this.tokens = this.size;
      this.carry = 0n;
      return;
    }
    this.tokens += Number(acc / this.processedRefillNs);
    this.carry = acc % this.processedRefillNs;
  }

  /**
   * Tries to take `tokens`. The one-time burst is spent first; the regular budget is refilled
   * only when it alone cannot cover the request (lazy refill, as in Firecracker).
   *
   * A request larger than `size` is granted: the budget is emptied and the caller is told to
   * block the bucket for `excess / size × refillTime` (Firecracker's OverConsumption). As in
   * Firecracker, the bucket refills as usual while it is blocked.
   * @throws RateLimitError BAD_TOKENS unless `tokens` is a non-negative safe integer.
   */
  reduce(tokens: number): BucketReduction {
    if (!Number.isSafeInteger(tokens) || tokens < 0) {
      throw new RateLimitError('BAD_TOKENS', `token count must be a non-negative integer, got ${tokens}`);
    }
    if (!this.enabled) return SUCCESS;
    if (this.burstLeft > 0) {
      if (this.burstLeft >= tokens) {
        this.burstLeft -= tokens;
        // The budget stays full while the burst lasts, so restarting the refill clock loses nothing.
        this.lastUpdate = this.clock();
        this.carry = 0n;
        return SUCCESS;
      }
      tokens -= this.burstLeft;
      this.burstLeft = 0;
    }
    if (tokens > this.tokens) {
      this.autoReplenish(this.clock());
      if (tokens > this.size) {
        const excess = BigInt(tokens - this.tokens);
        this.tokens = 0;
        const blockNs = ceilDiv(excess * this.processedRefillNs, this.processedCapacity);
        return { kind: 'overConsumption', ratio: Number(excess) / this.size, blockNs };
      }
      if (tokens > this.tokens) {
        const need = BigInt(tokens - this.tokens) * this.processedRefillNs - this.carry;
        return { kind: 'failure', waitNs: ceilDiv(need, this.processedCapacity) };
      }
    }
    this.tokens -= tokens;
    return SUCCESS;
  }

  /**
   * Gives `tokens` back (to undo a {@link reduce} whose request was not carried out). While the
   * one-time burst lasts it goes back to the burst, else to the budget; neither exceeds its cap.
   */
  forceReplenish(tokens: number): void {
    if (!this.enabled || !(tokens > 0)) return;
    if (this.burstLeft > 0) {
      this.burstLeft = Math.min(this.burstLeft + tokens, this.initialOneTimeBurst);
      return;
    }
    this.tokens = Math.min(this.tokens + tokens, this.size);
  }
}
