/**
 * The error class of the virtio module.
 * @module
 */
import { KindlingError } from '../errors';

/**
 * Why a virtqueue operation was refused.
 *
 * Ring-level codes (`AVAIL_IDX_TOO_FAR`, `HEAD_OUT_OF_RANGE`, `RING_OUT_OF_RANGE`, `QUEUE_NOT_READY`,
 * `QUEUE_BROKEN`) are thrown by {@link Queue.pop} and leave the queue broken until reset. Chain-level
 * codes are attached to the {@link DescriptorChain} as `error` so the device can still complete the
 * request. `CHAIN_TOO_SHORT`, `WRITE_ONLY_EXPECTED` and `READ_ONLY_EXPECTED` are for devices and
 * for chain readers/writers running past the end.
 */
export type VirtioErrorCode =
  | 'DESC_OUT_OF_RANGE'
  | 'DESC_LOOP'
  | 'CHAIN_TOO_LONG'
  | 'BAD_INDIRECT'
  | 'NESTED_INDIRECT'
  | 'BAD_DESC_ORDER'
  | 'LENGTH_OVERFLOW'
  | 'AVAIL_IDX_TOO_FAR'
  | 'HEAD_OUT_OF_RANGE'
  | 'RING_OUT_OF_RANGE'
  | 'QUEUE_NOT_READY'
  | 'QUEUE_BROKEN'
  | 'BAD_QUEUE_CONFIG'
  | 'BAD_USED_INDEX'
  | 'CHAIN_TOO_SHORT'
  | 'WRITE_ONLY_EXPECTED'
  | 'READ_ONLY_EXPECTED'
  | 'BAD_QUEUE_STATE';

/** Every {@link VirtioErrorCode}, for checking codes read back from saved state. */
export const VIRTIO_ERROR_CODES: ReadonlySet<VirtioErrorCode> = new Set<VirtioErrorCode>([
  'DESC_OUT_OF_RANGE', 'DESC_LOOP', 'CHAIN_TOO_LONG', 'BAD_INDIRECT', 'NESTED_INDIRECT', 'BAD_DESC_ORDER',
  'LENGTH_OVERFLOW', 'AVAIL_IDX_TOO_FAR', 'HEAD_OUT_OF_RANGE', 'RING_OUT_OF_RANGE', 'QUEUE_NOT_READY',
  'QUEUE_BROKEN', 'BAD_QUEUE_CONFIG', 'BAD_USED_INDEX', 'CHAIN_TOO_SHORT', 'WRITE_ONLY_EXPECTED',
  'READ_ONLY_EXPECTED', 'BAD_QUEUE_STATE',
]);

/** A refused virtqueue operation or a malformed guest structure. */
export class VirtioError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: VirtioErrorCode;

  /** @param code why; @param message details for humans. */
  constructor(code: VirtioErrorCode, message: string) {
    super(message);
    this.name = 'VirtioError';
    this.code = code;
  }
}
