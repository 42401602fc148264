/**
 * virtio-balloon: the device, its options, host interface and constants.
 * @module
 */
export * from './constants';
export { BalloonError } from './errors';
export type { BalloonErrorCode } from './errors';
export { checkBalloonOptions, checkBalloonUpdate, BALLOON_MAX_AMOUNT_MIB, BALLOON_MAX_STATS_INTERVAL_S } from './config';
export type { BalloonOptions, BalloonConfig, BalloonUpdate } from './config';
export type { BalloonHost } from './host';
export { PageSet } from './pages';
export { BalloonDevice, createBalloonDevice, BALLOON_STATE_VERSION } from './device';
export type { BalloonMetrics, BalloonStats, BalloonDeviceConfig } from './device';
