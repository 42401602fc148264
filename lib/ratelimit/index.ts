/**
 * Token-bucket rate limiting for devices (bandwidth and operations), with Firecracker's semantics.
 * @module
 */

export { RateLimitError } from './errors';
export type { RateLimitErrorCode } from './errors';
export { monotonicClock, TokenBucket, validateTokenBucketConfig } from './token-bucket';
export type { BucketReduction, NanoClock, TokenBucketConfig } from './token-bucket';
export { RateLimiter } from './rate-limiter';
export type { RateLimiterConfig, RateLimiterOptions, TimerFunctions, TokenKind } from './rate-limiter';
