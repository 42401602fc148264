/**
 * How a balloon joins a machine: built at `start()`, when guest memory exists to release pages of.
 * @module
 */
import type { DeviceKind } from '../contract';
import type { BalloonConfig, BalloonUpdate } from './config';
import { createBalloonDevice, type BalloonDevice } from './device';
import type { BalloonHost } from './host';
import type { GuestMemory } from '../../memory/guest-memory';

/** A balloon's configuration with its id. */
export interface BalloonSpec extends BalloonConfig {
  /** Always `'balloon'`: one per VM. */
  id: string;
}

/** The virtio-balloon device kind. */
export const balloonDeviceKind: DeviceKind<BalloonSpec, BalloonDevice, { balloon: BalloonHost; memory: GuestMemory }, BalloonUpdate> = {
  kind: 'virtio-balloon',
  async create(spec, host) {
    // Targets larger than the guest's memory are refused.
    return createBalloonDevice({ ...spec, guestMemoryMib: Math.floor(host.memory.totalSize / (1024 * 1024)) }, host.balloon);
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
