/**
 * The error type of the snapshot module.
 * @module
 */
import { KindlingError } from '../errors';

/**
 * Why a snapshot could not be written, read, merged or restored:
 * - `NOT_FOUND`: the snapshot directory, its state file or its memory file does not exist;
 * - `TRUNCATED`: the state file ends before its header or body does;
 * - `BAD_MAGIC`: the file is not a Kindling state file;
 * - `UNSUPPORTED_VERSION`: the state file's format version is not one this Kindling reads;
 * - `CHECKSUM_MISMATCH`: the state's SHA-256 does not match its bytes (corruption);
 * - `BAD_STATE`: the state parses but a field is missing, mistyped or out of range (`field` names it);
 * - `VCPU_COUNT_MISMATCH`: the vCPU count does not match the vCPU states, or the VM being restored into;
 * - `LAYOUT_MISMATCH`: the memory layout is inconsistent or does not match its checksum, or a
 *   diff's base has another layout;
 * - `MEMORY_SIZE_MISMATCH`: the memory file is not as large as the layout says;
 * - `CPUID_MISMATCH`: the guest was given CPU features (or a vendor) this host does not have;
 * - `HOST_INCOMPATIBLE`: another host property the state needs is missing (XSAVE area size,
 *   TSC frequency without TSC scaling, a KVM capability);
 * - `BASE_MISMATCH`: a diff is merged onto a snapshot that is not its base, or a full snapshot is given as the diff;
 * - `NOT_PAUSED`: a vCPU was not paused at an instruction boundary when the snapshot was taken;
 * - `IO_ERROR`: reading or writing a snapshot file failed (`cause` holds the system error);
 * - `BAD_ARGUMENT`: the caller passed something unusable.
 */
export type SnapshotErrorCode =
  | 'NOT_FOUND'
  | 'TRUNCATED'
  | 'BAD_MAGIC'
  | 'UNSUPPORTED_VERSION'
  | 'CHECKSUM_MISMATCH'
  | 'BAD_STATE'
  | 'VCPU_COUNT_MISMATCH'
  | 'LAYOUT_MISMATCH'
  | 'MEMORY_SIZE_MISMATCH'
  | 'CPUID_MISMATCH'
  | 'HOST_INCOMPATIBLE'
  | 'BASE_MISMATCH'
  | 'NOT_PAUSED'
  | 'IO_ERROR'
  | 'BAD_ARGUMENT';

/** What a {@link SnapshotError} found, beyond its code. */
export interface SnapshotErrorDetails {
  /** The field, file or property that does not match (`vcpus[1].regs`, `memory`, `cpuid 0x7.0 ebx`…). */
  field?: string;
  /** What was expected there, for people. */
  expected?: string;
  /** What was found there, for people. */
  actual?: string;
  /** The underlying error. */
  cause?: unknown;
}

/** A snapshot operation failed; `code` says why and `field` names what does not match. */
export class SnapshotError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: SnapshotErrorCode;
  /** The field, file or property that does not match, when there is one. */
  readonly field?: string;
  /** What was expected there. */
  readonly expected?: string;
  /** What was found there. */
  readonly actual?: string;

  /**
   * @param code why
   * @param message details for humans
   * @param details what does not match, and the cause
   */
  constructor(code: SnapshotErrorCode, message: string, details: SnapshotErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.code = code;
    this.field = details.field;
    this.expected = details.expected;
    this.actual = details.actual;
  }
}
