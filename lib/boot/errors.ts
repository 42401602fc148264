/**
 * The error type of the boot module.
 * @module
 */
import { KindlingError } from '../errors';

/** Why preparing the guest for boot failed. */
export type BootErrorCode =
  | 'BAD_IMAGE'
  | 'UNSUPPORTED_PROTOCOL'
  | 'CMDLINE_TOO_LONG'
  | 'BAD_CMDLINE'
  | 'NO_ROOM'
  | 'INITRD_TOO_LARGE'
  | 'BAD_MEMORY_SIZE'
  | 'BAD_MEMORY_LAYOUT'
  | 'TOO_MANY_CPUS'
  | 'BAD_LAPIC';

/** A kernel, command line, initrd or machine shape the boot path refuses. */
export class BootError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: BootErrorCode;

  constructor(code: BootErrorCode, message: string) {
    super(message);
    this.name = 'BootError';
    this.code = code;
  }
}

/** `0x…` rendering for messages. */
export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}
