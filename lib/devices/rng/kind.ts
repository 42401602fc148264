/**
 * How an entropy device joins a machine.
 * @module
 */
import { RateLimiter } from '../../ratelimit';
import type { DeviceKind } from '../contract';
import type { EntropyOptions } from './config';
import { createEntropyDevice, type EntropyDevice } from './device';
import type { EntropyHost } from './host';

/** An entropy device's configuration with its id. */
export interface EntropySpec extends EntropyOptions {
  /** Always `'rng'`: one per VM. */
  id: string;
}

/** The virtio-rng device kind. */
export const entropyDeviceKind: DeviceKind<EntropySpec, EntropyDevice, { entropy: EntropyHost }> = {
  kind: 'virtio-rng',
  async create(spec, host) {
    const limiter = spec.rateLimiter ? new RateLimiter(spec.rateLimiter) : undefined;
    return createEntropyDevice({ ...spec }, host.entropy, limiter);
  },
};
