/**
 * Errors of the jailed mode that only the host can tell at `start()`: a jail directory already
 * there, a launcher that failed, a child that broke the protocol or stopped answering. Options a
 * jail cannot be built with are refused earlier, at the builder call, as ConfigErrors.
 * @module
 */
import { KindlingError } from '../errors';

/** Why a jailed VM could not be started or run. */
export type JailErrorCode =
  /** `<chrootBase>/<id>` exists: another VM with this id runs there, or one was not cleaned up. */
  | 'JAIL_EXISTS'
  /** Setting up the jail failed (a mount, the cgroup, the launcher); the message names the step. */
  | 'LAUNCH_FAILED'
  /** The child sent something the protocol does not allow; it was killed. */
  | 'PROTOCOL_ERROR'
  /** The child did not answer in time; it was killed. */
  | 'UNRESPONSIVE'
  /** The child ended (or was killed) while a call was waiting for it. */
  | 'CHILD_EXITED'
  /** The child reported an error of a kind this process does not know (the message has it). */
  | 'CHILD_ERROR'
  /** Moving a snapshot out of the jail failed, or the child's files were not what it said. */
  | 'SNAPSHOT_TRANSFER';

/** A jailed VM could not be started or run. */
export class JailError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: JailErrorCode;
  /**
   * @param code why
   * @param message details for humans
   * @param options `cause`: the underlying error
   */
  constructor(code: JailErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'JailError';
    this.code = code;
  }
}
