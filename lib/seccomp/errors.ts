/**
 * The error type of the seccomp module.
 * @module
 */
import { KindlingError } from '../errors';

/** Why a seccomp policy cannot be compiled. */
export type SeccompErrorCode = 'BAD_RULE' | 'TOO_LONG';

/** A seccomp policy the filter builder refuses. */
export class SeccompError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: SeccompErrorCode;

  constructor(code: SeccompErrorCode, message: string) {
    super(message);
    this.name = 'SeccompError';
    this.code = code;
  }
}
