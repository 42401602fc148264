/**
 * Errors of the virtio-balloon device.
 * @module
 */
import { KindlingError } from '../../errors';

/**
 * Why a balloon operation was refused: a bad configuration (`BAD_CONFIG`), an update the device
 * cannot make (`BAD_UPDATE`: a target beyond guest memory, statistics switched on or off after
 * boot), statistics asked for when they are disabled (`STATS_DISABLED`), or a closed device.
 */
export type BalloonErrorCode = 'BAD_CONFIG' | 'BAD_UPDATE' | 'STATS_DISABLED' | 'CLOSED';

/** A refused balloon configuration or operation. */
export class BalloonError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: BalloonErrorCode;

  /**
   * @param code why
   * @param message details
   */
  constructor(code: BalloonErrorCode, message: string) {
    super(message);
    this.name = 'BalloonError';
    this.code = code;
  }
}
