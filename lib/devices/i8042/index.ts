/**
 * The i8042 keyboard controller device.
 * @module
 */
export * from './constants';
export * from './i8042';
