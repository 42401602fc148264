/**
 * Virtio core: split virtqueues, descriptor chains and the virtio-mmio transport.
 * @module
 */
export * from './constants';
export * from './errors';
export * from './chain';
export * from './queue';
export * from './device';
export * from './mmio';
