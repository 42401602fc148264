/**
 * Errors of the rate limiter module.
 * @module
 */
import { KindlingError } from '../errors';

/** Why the rate limiter refused a configuration or an argument. */
export type RateLimitErrorCode = 'BAD_CONFIG' | 'BAD_TOKENS';

/** A refused rate limiter configuration (`BAD_CONFIG`) or token count (`BAD_TOKENS`). */
export class RateLimitError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: RateLimitErrorCode;

  constructor(code: RateLimitErrorCode, message: string) {
    super(message);
    this.name = 'RateLimitError';
    this.code = code;
  }
}
