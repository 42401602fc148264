/**
 * Errors of the virtio-rng (entropy) device.
 * @module
 */
import { KindlingError } from '../../errors';

/** Why an entropy device operation was refused: a bad configuration, or the device is closed. */
export type EntropyErrorCode = 'BAD_CONFIG' | 'CLOSED';

/** A refused entropy device configuration or operation. */
export class EntropyError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: EntropyErrorCode;

  /**
   * @param code why
   * @param message details
   */
  constructor(code: EntropyErrorCode, message: string) {
    super(message);
    this.name = 'EntropyError';
    this.code = code;
  }
}
