/**
 * The error type of the cpu module.
 * @module
 */
import { KindlingError } from '../errors';

/** Why a CPU configuration was refused. */
export type CpuErrorCode = 'BAD_TOPOLOGY';

/** A refused CPU configuration. */
export class CpuError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: CpuErrorCode;

  constructor(code: CpuErrorCode, message: string) {
    super(message);
    this.name = 'CpuError';
    this.code = code;
  }
}
