/**
 * Firecracker's boot-timer pseudo device.
 * @module
 */
export * from './constants';
export * from './boot-timer';
