/**
 * Validation of `vm.nic()` and `vm.mmds()` options, run once at the builder call: every wrong
 * value or unknown (misspelled) key is refused there with a {@link ConfigError} naming it.
 * @module
 */
import type { Duplex } from 'stream';
import {
  ConfigError,
  checkInteger,
  checkOneOf,
  checkOptionsObject,
  checkRateLimiter,
  describe,
} from '../../config';
import type { RateLimiterConfig } from '../../ratelimit';
import { DEFAULT_MTU, MAX_MTU, MIN_MTU } from './constants';

/**
 * Something a NIC can be plugged into that hands out ports: `attach()` returns an objectMode
 * Duplex that carries one Ethernet frame per Buffer each way. `VirtualSwitch` is one.
 */
export interface FrameSwitch {
  /** A new port of the switch. */
  attach(): Duplex;
}

/** Options of `vm.nic(id, opts)`: exactly one of `tap` and `link`. */
export interface NicOptions {
  /** Name of an existing host TAP interface (e.g. `'tap0'`), opened with a vnet header. */
  tap?: string;
  /**
   * An in-process link instead of a TAP: a {@link FrameSwitch} (the NIC attaches a port), or any
   * objectMode Duplex where one Buffer is one Ethernet frame (without the virtio header).
   */
  link?: FrameSwitch | Duplex;
  /**
   * The guest's MAC address, `'06:00:ac:10:00:02'`. Offered to the driver (VIRTIO_NET_F_MAC), and
   * transmitted frames with another source address are dropped. Without it the guest picks one
   * and no source check is made.
   */
  mac?: string;
  /** The MTU offered to the driver (VIRTIO_NET_F_MTU), 68..65535; default 1500. */
  mtu?: number;
  /** Limits on frames delivered to the guest (bytes and/or frames). */
  rxRateLimiter?: RateLimiterConfig;
  /** Limits on frames the guest sends (bytes and/or frames). */
  txRateLimiter?: RateLimiterConfig;
}

/** Where a NIC's frames go. */
export type NicBackendConfig =
  | {
      /** A host TAP. */
      readonly kind: 'tap';
      /** Its interface name. */
      readonly name: string;
    }
  | {
      /** A switch the NIC attaches a port of. */
      readonly kind: 'switch';
      /** The switch. */
      readonly sw: FrameSwitch;
    }
  | {
      /** An objectMode Duplex of frames. */
      readonly kind: 'duplex';
      /** The stream. */
      readonly stream: Duplex;
    };

/** A validated NIC configuration (what {@link checkNicOptions} returns). */
export interface NicConfig {
  /** The NIC's id. */
  readonly id: string;
  /** Where frames go. */
  readonly backend: NicBackendConfig;
  /** The MAC address as 6 bytes, or undefined. */
  readonly mac?: Uint8Array;
  /** The MTU. */
  readonly mtu: number;
  /** Receive limits, validated. */
  readonly rxRateLimiter?: RateLimiterConfig;
  /** Transmit limits, validated. */
  readonly txRateLimiter?: RateLimiterConfig;
}

/** Options of `vm.updateNic(id, opts)`. */
export interface NicUpdateOptions {
  /** New receive limits (see `RateLimiter.update`: omitted buckets keep their state). */
  rxRateLimiter?: RateLimiterConfig;
  /** New transmit limits. */
  txRateLimiter?: RateLimiterConfig;
}

const NIC_KEYS = ['tap', 'link', 'mac', 'mtu', 'rxRateLimiter', 'txRateLimiter'] as const;
const NIC_UPDATE_KEYS = ['rxRateLimiter', 'txRateLimiter'] as const;
/** NIC ids: the same alphabet as VM and drive ids. */
const NIC_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
/** Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or white space (dev_valid_name). */
const IFNAME_RE = /^[^/:\s]{1,15}$/;
const MAC_RE = /^([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})$/;

/**
 * Parses `'aa:bb:cc:dd:ee:ff'` into 6 bytes. Multicast addresses (low bit of the first octet) and
 * all zeros cannot be a NIC's own address.
 * @throws ConfigError INVALID_MAC
 */
export function parseMac(value: unknown, where = 'mac'): Uint8Array {
  const m = typeof value === 'string' ? MAC_RE.exec(value) : null;
  if (m === null) throw new ConfigError('INVALID_MAC', `${where} must look like '06:00:ac:10:00:02', not ${describe(value)}`);
  const bytes = new Uint8Array(m.slice(1).map((h) => parseInt(h, 16)));
  if (bytes[0] & 1) throw new ConfigError('INVALID_MAC', `${where} ${value as string} is a multicast address`);
  if (bytes.every((b) => b === 0)) throw new ConfigError('INVALID_MAC', `${where} must not be all zeros`);
  return bytes;
}

/** Formats 6 bytes as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(mac: Uint8Array): string {
  return Array.from(mac.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Whether `v` looks like an objectMode Duplex (both sides in object mode). */
function isObjectDuplex(v: unknown): v is Duplex {
  if (v === null || typeof v !== 'object') return false;
  const d = v as Partial<Duplex>;
  return (
    typeof d.write === 'function' &&
    typeof d.on === 'function' &&
    typeof d.read === 'function' &&
    d.readableObjectMode === true &&
    d.writableObjectMode === true
  );
}

function isFrameSwitch(v: unknown): v is FrameSwitch {
  return v !== null && typeof v === 'object' && typeof (v as FrameSwitch).attach === 'function' && !isObjectDuplex(v);
}

/**
 * Validates `vm.nic(id, opts)`.
 * @param existingIds ids of the NICs already configured (a duplicate is refused)
 * @throws ConfigError INVALID_NIC, INVALID_MAC, INVALID_RATE_LIMITER, UNKNOWN_OPTION, DUPLICATE_ID
 */
export function checkNicOptions(id: unknown, opts: unknown, existingIds: Iterable<string> = []): NicConfig {
  if (typeof id !== 'string' || !NIC_ID_RE.test(id)) {
    throw new ConfigError('INVALID_NIC', `NIC id ${describe(id)} must be 1-64 characters of [A-Za-z0-9._-]`);
  }
  for (const other of existingIds) {
    if (other === id) throw new ConfigError('DUPLICATE_ID', `NIC ${id} is already configured`);
  }
  const where = `nic ${id}`;
  const o = checkOptionsObject(opts, NIC_KEYS, where, 'INVALID_NIC');
  let backend: NicBackendConfig;
  if (o.tap !== undefined && o.link !== undefined) {
    throw new ConfigError('INVALID_NIC', `${where}: give either tap or link, not both`);
  } else if (o.tap !== undefined) {
    if (typeof o.tap !== 'string' || !IFNAME_RE.test(o.tap) || o.tap === '.' || o.tap === '..') {
      throw new ConfigError('INVALID_NIC', `${where}: tap must be an interface name of 1-15 characters without '/', ':' or spaces, not ${describe(o.tap)}`);
    }
    backend = { kind: 'tap', name: o.tap };
  } else if (o.link !== undefined) {
    if (isObjectDuplex(o.link)) backend = { kind: 'duplex', stream: o.link };
    else if (isFrameSwitch(o.link)) backend = { kind: 'switch', sw: o.link };
    else throw new ConfigError('INVALID_NIC', `${where}: link must be a VirtualSwitch or an objectMode Duplex, not ${describe(o.link)}`);
  } else {
    throw new ConfigError('INVALID_NIC', `${where}: a tap or a link is required`);
  }
  const mac = o.mac === undefined ? undefined : parseMac(o.mac, `${where}: mac`);
  const mtu = o.mtu === undefined ? DEFAULT_MTU : checkInteger(o.mtu, `${where}: mtu`, 'INVALID_NIC', MIN_MTU, MAX_MTU);
  const rxRateLimiter = checkRateLimiter(o.rxRateLimiter, `${where}.rx`);
  const txRateLimiter = checkRateLimiter(o.txRateLimiter, `${where}.tx`);
  return {
    id,
    backend,
    mtu,
    ...(mac ? { mac } : {}),
    ...(rxRateLimiter ? { rxRateLimiter } : {}),
    ...(txRateLimiter ? { txRateLimiter } : {}),
  };
}

/**
 * Validates `vm.updateNic(id, opts)`'s options.
 * @throws ConfigError INVALID_NIC, INVALID_RATE_LIMITER, UNKNOWN_OPTION
 */
export function checkNicUpdate(id: string, opts: unknown): NicUpdateOptions {
  const where = `nic ${id}`;
  const o = checkOptionsObject(opts, NIC_UPDATE_KEYS, where, 'INVALID_NIC');
  const rx = checkRateLimiter(o.rxRateLimiter, `${where}.rx`);
  const tx = checkRateLimiter(o.txRateLimiter, `${where}.tx`);
  return { ...(rx ? { rxRateLimiter: rx } : {}), ...(tx ? { txRateLimiter: tx } : {}) };
}

// --- MMDS --------------------------------------------------------------------------------------

/** Options of `vm.mmds(opts)`: Firecracker's metadata service, reachable through some NICs. */
export interface MmdsOptions {
  /** `'v1'` (GET without a token; the default) or `'v2'` (a session token is required). */
  version?: 'v1' | 'v2';
  /** The service's IPv4 address, link-local (169.254.0.0/16); default `'169.254.169.254'`. */
  ipv4Address?: string;
  /** Ids of the NICs through which the guest reaches the service (at least one). */
  nics: string[];
  /** Largest serialized (JSON, UTF-8) size of the metadata in bytes; default 51200. */
  sizeLimit?: number;
}

/** A validated MMDS configuration. */
export interface MmdsConfig {
  /** Protocol version. */
  readonly version: 'v1' | 'v2';
  /** The service's address as 4 bytes. */
  readonly ipv4Address: Uint8Array;
  /** NIC ids. */
  readonly nics: readonly string[];
  /** Metadata size limit in bytes. */
  readonly sizeLimit: number;
}

/** Firecracker's default MMDS address. */
export const DEFAULT_MMDS_IPV4 = '169.254.169.254';
/** Firecracker's default data store limit. */
export const DEFAULT_MMDS_SIZE_LIMIT = 51200;
/** Largest size limit we accept (the data is held in memory and serialized on every change). */
export const MAX_MMDS_SIZE_LIMIT = 64 * 1024 * 1024;
const MMDS_KEYS = ['version', 'ipv4Address', 'nics', 'sizeLimit'] as const;

/** Parses a dotted-quad IPv4 address; null when malformed. */
export function parseIpv4(value: unknown): Uint8Array | null {
  if (typeof value !== 'string') return null;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(value);
  if (m === null) return null;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return null;
  return new Uint8Array(parts);
}

/**
 * Validates `vm.mmds(opts)` against the NICs configured so far.
 * @throws ConfigError INVALID_MMDS, UNKNOWN_OPTION
 */
export function checkMmdsOptions(opts: unknown, nicIds: Iterable<string>): MmdsConfig {
  const o = checkOptionsObject(opts, MMDS_KEYS, 'mmds', 'INVALID_MMDS');
  const version = checkOneOf(o.version, 'mmds: version', 'INVALID_MMDS', ['v1', 'v2'] as const, 'v1');
  const ipText = o.ipv4Address ?? DEFAULT_MMDS_IPV4;
  const ip = parseIpv4(ipText);
  if (ip === null) throw new ConfigError('INVALID_MMDS', `mmds: ipv4Address must be a dotted-quad IPv4 address, not ${describe(ipText)}`);
  // As in Firecracker: the service lives in the link-local range, which is never routed.
  if (ip[0] !== 169 || ip[1] !== 254) {
    throw new ConfigError('INVALID_MMDS', `mmds: ipv4Address ${ipText as string} must be link-local (169.254.0.0/16)`);
  }
  const sizeLimit = o.sizeLimit === undefined ? DEFAULT_MMDS_SIZE_LIMIT : checkInteger(o.sizeLimit, 'mmds: sizeLimit', 'INVALID_MMDS', 1, MAX_MMDS_SIZE_LIMIT);
  if (!Array.isArray(o.nics) || o.nics.length === 0) {
    throw new ConfigError('INVALID_MMDS', 'mmds: nics must be a non-empty array of NIC ids');
  }
  const known = new Set(nicIds);
  const seen = new Set<string>();
  for (const n of o.nics as unknown[]) {
    if (typeof n !== 'string' || !known.has(n)) {
      throw new ConfigError('INVALID_MMDS', `mmds: ${describe(n)} is not a configured NIC${known.size ? ` (configured: ${[...known].join(', ')})` : ''}`);
    }
    if (seen.has(n)) throw new ConfigError('INVALID_MMDS', `mmds: NIC ${n} is listed twice`);
    seen.add(n);
  }
  return { version, ipv4Address: ip, nics: [...seen], sizeLimit };
}
