/**
 * Options of `vm.balloon()` and `vm.updateBalloon()`, and their validation.
 * @module
 */
import { ConfigError, checkBoolean, checkInteger, checkOptionsObject } from '../../config';

/** Options of a virtio-balloon device (`vm.balloon(options)`), after Firecracker's. */
export interface BalloonOptions {
  /** Target balloon size in MiB (guest memory the host wants back). */
  amountMib: number;
  /** Let the guest deflate the balloon when it runs out of memory (VIRTIO_BALLOON_F_DEFLATE_ON_OOM). */
  deflateOnOom: boolean;
  /**
   * Seconds between statistics updates; 0 disables the statistics queue. It can be changed while
   * running, but not switched on or off after boot (as in Firecracker). Default 0.
   */
  statsPollingIntervalS?: number;
  /** Free page reporting (VIRTIO_BALLOON_F_PAGE_REPORTING): freed guest pages go back to the host. Default false. */
  freePageReporting?: boolean;
}

/** {@link BalloonOptions} with defaults filled in. */
export interface BalloonConfig {
  /** See {@link BalloonOptions.amountMib}. */
  amountMib: number;
  /** See {@link BalloonOptions.deflateOnOom}. */
  deflateOnOom: boolean;
  /** See {@link BalloonOptions.statsPollingIntervalS}. */
  statsPollingIntervalS: number;
  /** See {@link BalloonOptions.freePageReporting}. */
  freePageReporting: boolean;
}

/** Options of `vm.updateBalloon()`. */
export interface BalloonUpdate {
  /** New target in MiB. */
  amountMib?: number;
  /** New statistics interval in seconds (only while statistics are enabled, and not to 0). */
  statsPollingIntervalS?: number;
}

/** Largest balloon target: the config field counts 4 KiB pages in a u32 (16 TiB). */
export const BALLOON_MAX_AMOUNT_MIB = 0xffffffff / 256;
/** Longest statistics interval (a day). */
export const BALLOON_MAX_STATS_INTERVAL_S = 86400;

/**
 * Validates `vm.balloon()`'s options and fills in defaults. `amountMib` and `deflateOnOom` are
 * required, as in Firecracker's API.
 * @throws ConfigError INVALID_BALLOON, UNKNOWN_OPTION
 */
export function checkBalloonOptions(opts: unknown): BalloonConfig {
  const o = checkOptionsObject(opts, ['amountMib', 'deflateOnOom', 'statsPollingIntervalS', 'freePageReporting'], 'balloon', 'INVALID_BALLOON');
  if (o.amountMib === undefined) throw new ConfigError('INVALID_BALLOON', 'balloon.amountMib is required');
  if (o.deflateOnOom === undefined) throw new ConfigError('INVALID_BALLOON', 'balloon.deflateOnOom is required');
  return {
    amountMib: checkInteger(o.amountMib, 'balloon.amountMib', 'INVALID_BALLOON', 0, Math.floor(BALLOON_MAX_AMOUNT_MIB)),
    deflateOnOom: checkBoolean(o.deflateOnOom, 'balloon.deflateOnOom', 'INVALID_BALLOON', false),
    statsPollingIntervalS: o.statsPollingIntervalS === undefined
      ? 0
      : checkInteger(o.statsPollingIntervalS, 'balloon.statsPollingIntervalS', 'INVALID_BALLOON', 0, BALLOON_MAX_STATS_INTERVAL_S),
    freePageReporting: checkBoolean(o.freePageReporting, 'balloon.freePageReporting', 'INVALID_BALLOON', false),
  };
}

/**
 * Validates `vm.updateBalloon()`'s options (what the device can accept is checked by the device).
 * @throws ConfigError INVALID_BALLOON, UNKNOWN_OPTION
 */
export function checkBalloonUpdate(opts: unknown): BalloonUpdate {
  const o = checkOptionsObject(opts, ['amountMib', 'statsPollingIntervalS'], 'updateBalloon', 'INVALID_BALLOON');
  const out: BalloonUpdate = {};
  if (o.amountMib !== undefined) out.amountMib = checkInteger(o.amountMib, 'updateBalloon.amountMib', 'INVALID_BALLOON', 0, Math.floor(BALLOON_MAX_AMOUNT_MIB));
  if (o.statsPollingIntervalS !== undefined) {
    out.statsPollingIntervalS = checkInteger(o.statsPollingIntervalS, 'updateBalloon.statsPollingIntervalS', 'INVALID_BALLOON', 0, BALLOON_MAX_STATS_INTERVAL_S);
  }
  if (out.amountMib === undefined && out.statsPollingIntervalS === undefined) {
    throw new ConfigError('INVALID_BALLOON', 'updateBalloon needs amountMib or statsPollingIntervalS');
  }
  return out;
}
