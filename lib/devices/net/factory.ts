/**
 * Builds a {@link NetDevice} from a validated NIC configuration: opens the TAP through the host
 * (turning its errno into the ConfigError codes users handle), or attaches to the link, builds the
 * rate limiters, and joins the metadata service when the MMDS configuration names this NIC.
 * @module
 */
import { ConfigError } from '../../config';
import { RateLimiter, type RateLimiterOptions, type TimerFunctions } from '../../ratelimit';
import { LinkBackend, TapBackend, type NetBackend } from './backend';
import type { NicConfig } from './config';
import { NetDevice } from './device';
import type { NetHost } from './host';
import type { MmdsStore } from './mmds/store';

/** What {@link createNetDevice} needs besides the NIC's configuration. */
export interface NetDeviceOptions {
  /** The VM's metadata store; used when its configuration lists this NIC. */
  mmds?: MmdsStore;
  /** Clock and timers for the rate limiters (tests inject fake ones). */
  rateLimiterOptions?: Omit<RateLimiterOptions, 'onUnblocked'>;
  /** Monotonic milliseconds for the metadata service's TCP. */
  clock?: () => number;
  /** Timers for the metadata service's TCP. */
  timers?: TimerFunctions;
}

/** errno names of a failed TAP open, mapped to what the user can do about them. */
export function tapError(name: string, e: unknown): ConfigError {
  const code = (e as { code?: unknown } | null)?.code;
  const why = e instanceof Error ? e.message : String(e);
  if (code === 'ENODEV' || code === 'ENXIO' || code === 'ENOENT') {
    return new ConfigError('TAP_NOT_FOUND', `TAP ${name} does not exist (create it first, e.g. ip tuntap add ${name} mode tap): ${why}`);
  }
  if (code === 'EBUSY') return new ConfigError('TAP_BUSY', `TAP ${name} is already in use by another process or NIC: ${why}`);
  if (code === 'EINVAL') {
    return new ConfigError('TAP_NOT_FOUND', `${name} is not a TAP that can be opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (a TUN device, or multi-queue?): ${why}`);
  }
  return new ConfigError('TAP_OPEN_FAILED', `TAP ${name} could not be opened: ${why}`);
}

/**
 * Opens the backend and builds the device. The device owns the backend from then on: its
 * `close()` closes the TAP or detaches from the link.
 * @throws ConfigError TAP_NOT_FOUND, TAP_BUSY, TAP_OPEN_FAILED
 */
export function createNetDevice(config: NicConfig, host: NetHost, options: NetDeviceOptions = {}): NetDevice {
  let backend: NetBackend;
  const b = config.backend;
  if (b.kind === 'tap') {
    try {
      backend = new TapBackend(host, host.openTap(b.name));
    } catch (e) {
      throw tapError(b.name, e);
    }
  } else if (b.kind === 'switch') {
    backend = new LinkBackend(b.sw.attach(), true);
  } else {
    backend = new LinkBackend(b.stream, false);
  }
  const lo = options.rateLimiterOptions ?? {};
  try {
    const mmds = options.mmds !== undefined && options.mmds.config.nics.includes(config.id) ? options.mmds : undefined;
    return new NetDevice({
      id: config.id,
      backend,
      mtu: config.mtu,
      ...(config.mac ? { mac: config.mac } : {}),
      ...(config.rxRateLimiter ? { rxRateLimiter: new RateLimiter(config.rxRateLimiter, lo) } : {}),
      ...(config.txRateLimiter ? { txRateLimiter: new RateLimiter(config.txRateLimiter, lo) } : {}),
      ...(mmds ? { mmds } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
      ...(options.timers ? { timers: options.timers } : {}),
    });
  } catch (e) {
    backend.close();
    throw e;
  }
}
