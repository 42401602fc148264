/**
 * virtio-blk: the device model, its backends and constants.
 * @module
 */

export * from './constants';
export { BlockError } from './errors';
export type { BlockErrorCode } from './errors';
export { FileBackend, MemoryBackend } from './backend';
export type { BlockBackend } from './backend';
export { BlockDevice, BLOCK_QUEUE_SIZE } from './device';
export type { BlockDeviceConfig, CacheType } from './device';
