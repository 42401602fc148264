/**
 * Errors of the MicroVM façade.
 * @module
 */
import { KindlingError } from '../errors';

/** Why a configuration call was refused. */
export type ConfigErrorCode =
  | 'INVALID_VCPUS'
  | 'INVALID_MEMORY'
  | 'KERNEL_NOT_FOUND'
  | 'INITRD_NOT_FOUND'
  | 'INVALID_CMDLINE'
  | 'INVALID_ID'
  | 'INVALID_DRIVE'
  | 'DRIVE_NOT_FOUND'
  | 'DUPLICATE_DRIVE'
  | 'TOO_MANY_DEVICES'
  | 'MULTIPLE_ROOT_DRIVES'
  | 'NO_KERNEL'
  | 'ALREADY_STARTED'
  | 'NOT_RUNNING'
  | 'INVALID_OPTION';

/**
 * A builder method or `start()` was given a configuration that cannot work. Thrown at once,
 * before anything is created, so the caller can fix the call.
 */
export class ConfigError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: ConfigErrorCode;
  constructor(code: ConfigErrorCode, message: string) {
    super(message);
    this.name = 'ConfigError';
    this.code = code;
  }
}

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
