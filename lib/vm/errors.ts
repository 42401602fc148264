/**
 * Errors of the MicroVM façade.
 * @module
 */
import { KindlingError } from '../errors';

export { ConfigError } from '../config';
export type { ConfigErrorCode } from '../config';

/** Why a VM could not be started or run. */
export type VmErrorCode = 'KVM_UNAVAILABLE' | 'KVM_UNSUPPORTED' | 'START_FAILED';

/** Starting the VM failed after the configuration was accepted (KVM missing, an ioctl refused…). */
export class VmError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: VmErrorCode;
  constructor(code: VmErrorCode, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'VmError';
    this.code = code;
  }
}
