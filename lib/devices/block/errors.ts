/**
 * Errors of the virtio-blk device module.
 * @module
 */
import { KindlingError } from '../../errors';

/**
 * Why a block device or backend operation was refused: a bad device configuration, a drive id
 * longer than the 20-byte GET_ID serial, a backing file that could not be opened, an I/O failure
 * (including an unexpected end of file), or use of a closed or read-only backend.
 */
export type BlockErrorCode = 'BAD_CONFIG' | 'ID_TOO_LONG' | 'OPEN_FAILED' | 'IO_ERROR' | 'CLOSED' | 'READ_ONLY';

/** A refused block device configuration or a failed backend operation. */
export class BlockError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: BlockErrorCode;

  constructor(code: BlockErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BlockError';
    this.code = code;
  }
}
