/**
 * The 16550A UART device.
 * @module
 */
export * from './constants';
export * from './serial';
