/**
 * The options of `MicroVM.drive()` and `updateDrive()`, their validation, and how a drive is
 * built when the machine starts.
 * @module
 */
import * as fs from 'fs';
import {
  ConfigError, checkBoolean, checkOneOf, checkOptionsObject, checkRateLimiter, describe,
} from '../../config';
import type { RateLimiterConfig } from '../../ratelimit';
import { RateLimiter } from '../../ratelimit';
import type { DeviceKind } from '../contract';
import type { HostFiles } from '../host-files';
import { FileBackend } from './backend';
import { BlockDevice, type CacheType } from './device';
import { VIRTIO_BLK_ID_BYTES } from './constants';

/** Options of `MicroVM.drive()`: a virtio-blk device backed by a host file. */
export interface DriveOptions {
  /** Host path of the backing file (a raw disk image). */
  path: string;
  /** Expose the drive read-only (VIRTIO_BLK_F_RO) and open the file O_RDONLY. */
  readOnly?: boolean;
  /** Make this the root drive: `/dev/vda` and `root=/dev/vda rw|ro` (or `root=PARTUUID=`). */
  root?: boolean;
  /** With `root`, boot from this partition UUID instead of the whole disk. */
  partuuid?: string;
  /**
   * `'unsafe'` (default): no FLUSH feature, writes reach the page cache only.
   * `'writeback'`: offer FLUSH and complete it only after fdatasync.
   */
  cacheType?: CacheType;
  /** Throttle the drive's bytes and/or operations. */
  rateLimiter?: RateLimiterConfig;
}

/** A validated drive. */
export interface DriveConfig {
  /** The drive's id (also its virtio-blk serial). */
  id: string;
  /** Host path of the backing file. */
  path: string;
  /** See {@link DriveOptions.readOnly}. */
  readOnly: boolean;
  /** See {@link DriveOptions.root}. */
  root: boolean;
  /** See {@link DriveOptions.partuuid}. */
  partuuid?: string;
  /** See {@link DriveOptions.cacheType}. */
  cacheType: CacheType;
  /** See {@link DriveOptions.rateLimiter}. */
  rateLimiter?: RateLimiterConfig;
}

/** What `updateDrive()` may change while the VM runs. */
export interface DriveUpdate {
  /** A new backing file: the guest gets a configuration change interrupt and sees its capacity. */
  path?: string;
  /** New limits: updates the drive's limiter in place (or gives it one). */
  rateLimiter?: RateLimiterConfig;
}

const DRIVE_KEYS = ['path', 'readOnly', 'root', 'partuuid', 'cacheType', 'rateLimiter'] as const;
const UPDATE_KEYS = ['path', 'rateLimiter'] as const;
/** Drive ids: what GET_ID can return and the kernel command line can carry. */
const DRIVE_ID_RE = /^[A-Za-z0-9._-]{1,20}$/;

/** Whether `path` names an existing regular file or block device. */
function isDiskFile(path: string): boolean {
  try {
    const st = fs.statSync(path);
    return st.isFile() || st.isBlockDevice();
  } catch {
    return false;
  }
}

function isWritable(path: string): boolean {
  try {
    fs.accessSync(path, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function checkPath(value: unknown, where: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new ConfigError('INVALID_DRIVE', `${where}: path must be a non-empty string, not ${describe(value)}`);
  }
  if (!isDiskFile(value)) {
    throw new ConfigError('DRIVE_NOT_FOUND', `${where}: backing file not found or not a regular file: ${value}`);
  }
  return value;
}

/**
 * Validates `drive(id, options)` against the drives already configured.
 * @throws ConfigError INVALID_DRIVE, DRIVE_NOT_FOUND, DUPLICATE_DRIVE, MULTIPLE_ROOT_DRIVES,
 *   INVALID_RATE_LIMITER, UNKNOWN_OPTION
 */
export function checkDriveOptions(id: unknown, options: unknown, existing: readonly DriveConfig[]): DriveConfig {
  if (typeof id !== 'string' || !DRIVE_ID_RE.test(id) || Buffer.byteLength(id) > VIRTIO_BLK_ID_BYTES) {
    throw new ConfigError('INVALID_DRIVE', `drive id ${describe(id)} must be 1-${VIRTIO_BLK_ID_BYTES} characters of [A-Za-z0-9._-]`);
  }
  const where = `drive ${id}`;
  if (existing.some((d) => d.id === id)) throw new ConfigError('DUPLICATE_DRIVE', `${where} is already configured`);
  const o = checkOptionsObject(options, DRIVE_KEYS, where, 'INVALID_DRIVE');
  const path = checkPath(o.path, where);
  const readOnly = checkBoolean(o.readOnly, `${where}: readOnly`, 'INVALID_DRIVE', false);
  const root = checkBoolean(o.root, `${where}: root`, 'INVALID_DRIVE', false);
  const cacheType = checkOneOf(o.cacheType, `${where}: cacheType`, 'INVALID_DRIVE', ['unsafe', 'writeback'] as const, 'unsafe');
  if (root && existing.some((d) => d.root)) {
    throw new ConfigError('MULTIPLE_ROOT_DRIVES', `${where}: only one drive can be the root drive`);
  }
  let partuuid: string | undefined;
  if (o.partuuid !== undefined) {
    if (!root) throw new ConfigError('INVALID_DRIVE', `${where}: partuuid only applies to the root drive`);
    if (typeof o.partuuid !== 'string' || !/^[0-9A-Fa-f-]{1,36}$/.test(o.partuuid)) {
      throw new ConfigError('INVALID_DRIVE', `${where}: partuuid ${describe(o.partuuid)} is not a UUID`);
    }
    partuuid = o.partuuid;
  }
  if (!readOnly && !isWritable(path)) {
    throw new ConfigError('INVALID_DRIVE', `${where}: ${path} is not writable by this process; pass readOnly: true to attach it read-only`);
  }
  const rateLimiter = checkRateLimiter(o.rateLimiter, where);
  return { id, path, readOnly, root, cacheType, ...(partuuid !== undefined ? { partuuid } : {}), ...(rateLimiter ? { rateLimiter } : {}) };
}

/**
 * Validates `updateDrive(id, update)`.
 * @throws ConfigError INVALID_DRIVE, DRIVE_NOT_FOUND, INVALID_RATE_LIMITER, UNKNOWN_OPTION
 */
export function checkDriveUpdate(id: string, update: unknown): DriveUpdate {
  const where = `updateDrive ${id}`;
  const o = checkOptionsObject(update, UPDATE_KEYS, where, 'INVALID_DRIVE');
  const out: DriveUpdate = {};
  if (o.path !== undefined) out.path = checkPath(o.path, where);
  const rl = checkRateLimiter(o.rateLimiter, where);
  if (rl !== undefined) out.rateLimiter = rl;
  return out;
}

/** What a drive needs from the machine: how to open its backing file. */
export interface BlockHost {
  /** The machine's host files; without them the file is opened here by path. */
  files?: HostFiles;
}

/** Opens a drive's backing file through the machine's host files when there are any. */
function openBackend(host: BlockHost | undefined, path: string, readOnly: boolean): Promise<FileBackend> {
  return host?.files ? FileBackend.openWith(host.files, path, readOnly) : FileBackend.open(path, readOnly);
}

/** The virtio-blk device kind: builds a drive from its configuration and applies updates. */
export const blockDeviceKind: DeviceKind<DriveConfig, BlockDevice, BlockHost | undefined, DriveUpdate> = {
  kind: 'virtio-blk',
  async create(config, host) {
    const backend = await openBackend(host, config.path, config.readOnly);
    try {
      // The device points the limiter's onUnblocked at its own queue and owns it from here.
      const rateLimiter = config.rateLimiter ? new RateLimiter(config.rateLimiter) : undefined;
      return new BlockDevice({ id: config.id, backend, readOnly: config.readOnly, cacheType: config.cacheType, rateLimiter });
    } catch (e) {
      await backend.close().catch(() => undefined);
      throw e;
    }
  },
  async update(device, config, update, host) {
    if (update.path !== undefined) {
      const backend = await openBackend(host, update.path, config.readOnly);
      device.updateBackend(backend);
      config.path = update.path;
    }
    if (update.rateLimiter !== undefined) {
      device.updateRateLimiter(update.rateLimiter);
      config.rateLimiter = update.rateLimiter;
    }
    // The capacity in config space follows the new backend.
    return { configChanged: update.path !== undefined };
  },
};
