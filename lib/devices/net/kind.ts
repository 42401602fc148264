/**
 * How a NIC joins a machine: its configuration as plain data (what the builder keeps and a
 * snapshot saves), and the device kind that builds it at `start()`.
 * @module
 */
import type { Duplex } from 'stream';
import type { DeviceKind } from '../contract';
import type { RateLimiterConfig } from '../../ratelimit';
import { formatMac, parseMac, type FrameSwitch, type NicConfig, type NicUpdateOptions } from './config';
import type { NetDevice } from './device';
import { createNetDevice } from './factory';
import type { NetHost } from './host';
import type { MmdsStore } from './mmds/store';

/** A NIC's configuration as plain data: a link backend is named, not held (see {@link NetKindHost.links}). */
export interface NicSpec {
  /** The NIC's id. */
  id: string;
  /** TAP interface name, for a TAP backend. */
  tap?: string;
  /** True for an in-process link; the link object is supplied by the host. */
  link?: boolean;
  /** The MAC as `aa:bb:cc:dd:ee:ff`. */
  mac?: string;
  /** The MTU. */
  mtu: number;
  /** Receive limits. */
  rxRateLimiter?: RateLimiterConfig;
  /** Transmit limits. */
  txRateLimiter?: RateLimiterConfig;
}

/** What building a NIC needs from the machine. */
export interface NetKindHost {
  /** TAPs and fd I/O. */
  net: NetHost;
  /** The VM's metadata store, when it has one. */
  mmds?: MmdsStore;
  /** The link objects of link NICs, by NIC id. */
  links: ReadonlyMap<string, FrameSwitch | Duplex>;
}

/** A validated NIC configuration as plain data. */
export function nicSpecOf(config: NicConfig): NicSpec {
  const b = config.backend;
  return {
    id: config.id,
    ...(b.kind === 'tap' ? { tap: b.name } : { link: true }),
    ...(config.mac ? { mac: formatMac(config.mac) } : {}),
    mtu: config.mtu,
    ...(config.rxRateLimiter ? { rxRateLimiter: config.rxRateLimiter } : {}),
    ...(config.txRateLimiter ? { txRateLimiter: config.txRateLimiter } : {}),
  };
}

/** Whether a link object is a switch (it hands out ports) rather than a stream of frames. */
function isSwitch(link: FrameSwitch | Duplex): link is FrameSwitch {
  return typeof (link as FrameSwitch).attach === 'function';
}

/** The virtio-net device kind. */
export const netDeviceKind: DeviceKind<NicSpec, NetDevice, NetKindHost, NicUpdateOptions> = {
  kind: 'virtio-net',
  async create(spec, host) {
    let backend: NicConfig['backend'];
    if (spec.tap !== undefined) {
      backend = { kind: 'tap', name: spec.tap };
    } else {
      const link = host.links.get(spec.id);
      if (link === undefined) throw new Error(`nic ${spec.id}: no link object was supplied for it`);
      backend = isSwitch(link) ? { kind: 'switch', sw: link } : { kind: 'duplex', stream: link };
    }
    const config: NicConfig = {
      id: spec.id,
      backend,
      mtu: spec.mtu,
      ...(spec.mac ? { mac: parseMac(spec.mac) } : {}),
      ...(spec.rxRateLimiter ? { rxRateLimiter: spec.rxRateLimiter } : {}),
      ...(spec.txRateLimiter ? { txRateLimiter: spec.txRateLimiter } : {}),
    };
    return createNetDevice(config, host.net, { mmds: host.mmds });
  },
  async update(device, spec, update) {
    device.updateRateLimiters(update);
    if (update.rxRateLimiter) spec.rxRateLimiter = update.rxRateLimiter;
    if (update.txRateLimiter) spec.txRateLimiter = update.txRateLimiter;
  },
};
