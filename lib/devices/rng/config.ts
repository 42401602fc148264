/**
 * Options of `vm.entropy()` and their validation.
 * @module
 */
import { checkOptionsObject, checkRateLimiter } from '../../config';
import type { RateLimiterConfig } from '../../ratelimit';

/** Options of a virtio-rng device (`vm.entropy(options)`). */
export interface EntropyOptions {
  /** Limits bytes (bandwidth) and requests (ops) the guest may draw, with token buckets. */
  rateLimiter?: RateLimiterConfig;
}

/**
 * Validates `vm.entropy()`'s options (undefined means none).
 * @throws ConfigError INVALID_ENTROPY, INVALID_RATE_LIMITER, UNKNOWN_OPTION
 */
export function checkEntropyOptions(opts: unknown = {}): EntropyOptions {
  const o = checkOptionsObject(opts, ['rateLimiter'], 'entropy', 'INVALID_ENTROPY');
  const rateLimiter = checkRateLimiter(o.rateLimiter, 'entropy');
  return rateLimiter === undefined ? {} : { rateLimiter };
}
