/**
 * Errors of the virtio-net device module.
 * @module
 */
import { KindlingError } from '../../errors';

/**
 * Why a network device operation was refused: a device configuration the factory cannot build
 * (`BAD_CONFIG`: a programming error, user options are checked by `checkNicOptions` first), a
 * runtime update it does not accept (`BAD_UPDATE`), or use after `close()` (`CLOSED`).
 */
export type NetErrorCode = 'BAD_CONFIG' | 'BAD_UPDATE' | 'CLOSED';

/** A refused network device configuration or operation. */
export class NetError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: NetErrorCode;

  /**
   * @param code why
   * @param message details for humans (names the NIC)
   * @param options `cause`: the underlying error
   */
  constructor(code: NetErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NetError';
    this.code = code;
  }
}
