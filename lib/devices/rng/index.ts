/**
 * virtio-rng: the entropy device, its options and host interface.
 * @module
 */
export { EntropyError } from './errors';
export type { EntropyErrorCode } from './errors';
export { checkEntropyOptions } from './config';
export type { EntropyOptions } from './config';
export type { EntropyHost } from './host';
export { EntropyDevice, createEntropyDevice, ENTROPY_MAX_REQUEST_BYTES, ENTROPY_QUEUE_SIZE, ENTROPY_STATE_VERSION } from './device';
export type { EntropyMetrics, EntropyDeviceConfig } from './device';
