/**
 * How a balloon joins a machine: built at `start()`, when guest memory exists to release pages of.
 * @module
 */
import type { DeviceKind } from '../contract';
import type { BalloonConfig, BalloonUpdate } from './config';
import { createBalloonDevice, type BalloonDevice } from './device';
import type { BalloonHost } from './host';

/** A balloon's configuration with its id and the guest's memory size. */
export interface BalloonSpec extends BalloonConfig {
  /** Always `'balloon'`: one per VM. */
  id: string;
  /** Guest memory in MiB (targets above it are refused). */
  guestMemoryMib: number;
}

/** The virtio-balloon device kind. */
export const balloonDeviceKind: DeviceKind<BalloonSpec, BalloonDevice, { balloon: BalloonHost }, BalloonUpdate> = {
  kind: 'virtio-balloon',
  async create(spec, host) {
    return createBalloonDevice(spec, host.balloon);
  },
  async update(device, spec, update) {
    device.update(update);
    if (update.amountMib !== undefined) spec.amountMib = update.amountMib;
    if (update.statsPollingIntervalS !== undefined) spec.statsPollingIntervalS = update.statsPollingIntervalS;
  },
  stats(device) {
    return device.balloonStats();
  },
};
