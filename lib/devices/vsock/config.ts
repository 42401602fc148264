/**
 * Options of `vm.vsock()` and their validation.
 * @module
 */
import { ConfigError, checkInteger, checkOptionsObject, describe } from '../../config';
import { VSOCK_MAX_GUEST_CID, VSOCK_MIN_GUEST_CID } from './constants';

/** Options of a virtio-vsock device (`vm.vsock(options)`). */
export interface VsockOptions {
  /** The guest's context id (3 to 2^32 - 2): what the guest's `getsockname` reports. */
  guestCid: number;
  /**
   * Firecracker-compatible Unix socket: host programs connect here and write `CONNECT <port>\n`
   * to reach a guest port; a guest connecting to host port P is forwarded to `<udsPath>_<P>`.
   */
  udsPath?: string;
  /** Receive buffer per connection in bytes (advertised to the guest as buf_alloc). Default 256 KiB. */
  bufferSize?: number;
  /** Connections open at once, both directions together. Default 1024. */
  maxConnections?: number;
}

/** {@link VsockOptions} with defaults filled in. */
export interface VsockConfig {
  /** See {@link VsockOptions.guestCid}. */
  guestCid: number;
  /** See {@link VsockOptions.udsPath}. */
  udsPath?: string;
  /** See {@link VsockOptions.bufferSize}. */
  bufferSize: number;
  /** See {@link VsockOptions.maxConnections}. */
  maxConnections: number;
}

/** Default {@link VsockOptions.bufferSize}: Linux's default vsock buffer size. */
export const VSOCK_DEFAULT_BUFFER_SIZE = 256 * 1024;
/** Smallest {@link VsockOptions.bufferSize}. */
export const VSOCK_MIN_BUFFER_SIZE = 4096;
/** Largest {@link VsockOptions.bufferSize}. */
export const VSOCK_MAX_BUFFER_SIZE = 64 * 1024 * 1024;
/** Default {@link VsockOptions.maxConnections}. */
export const VSOCK_DEFAULT_MAX_CONNECTIONS = 1024;
/** Largest {@link VsockOptions.maxConnections}. */
export const VSOCK_MAX_CONNECTIONS = 65536;
/**
 * Longest `udsPath` in bytes: sockaddr_un holds 107 bytes and a NUL, and the forwarding path
 * `<udsPath>_<port>` adds up to 11 bytes.
 */
export const VSOCK_MAX_UDS_PATH_BYTES = 107 - 11;

const KEYS = ['guestCid', 'udsPath', 'bufferSize', 'maxConnections'] as const;

/**
 * Validates `vm.vsock()`'s options and fills in defaults.
 * @throws ConfigError INVALID_VSOCK, UNKNOWN_OPTION
 */
export function checkVsockOptions(opts: unknown): VsockConfig {
  const o = checkOptionsObject(opts, KEYS, 'vsock', 'INVALID_VSOCK');
  if (o.guestCid === undefined) throw new ConfigError('INVALID_VSOCK', 'vsock.guestCid is required');
  const guestCid = checkInteger(o.guestCid, 'vsock.guestCid', 'INVALID_VSOCK', VSOCK_MIN_GUEST_CID, VSOCK_MAX_GUEST_CID);
  let udsPath: string | undefined;
  if (o.udsPath !== undefined) {
    if (typeof o.udsPath !== 'string' || o.udsPath.length === 0 || o.udsPath.includes('\0')) {
      throw new ConfigError('INVALID_VSOCK', `vsock.udsPath must be a non-empty path without NUL, not ${describe(o.udsPath)}`);
    }
    const bytes = Buffer.byteLength(o.udsPath);
    if (bytes > VSOCK_MAX_UDS_PATH_BYTES) {
      throw new ConfigError('INVALID_VSOCK', `vsock.udsPath is ${bytes} bytes; at most ${VSOCK_MAX_UDS_PATH_BYTES} fit a Unix socket address with the _<port> suffix`);
    }
    udsPath = o.udsPath;
  }
  const bufferSize = o.bufferSize === undefined
    ? VSOCK_DEFAULT_BUFFER_SIZE
    : checkInteger(o.bufferSize, 'vsock.bufferSize', 'INVALID_VSOCK', VSOCK_MIN_BUFFER_SIZE, VSOCK_MAX_BUFFER_SIZE);
  const maxConnections = o.maxConnections === undefined
    ? VSOCK_DEFAULT_MAX_CONNECTIONS
    : checkInteger(o.maxConnections, 'vsock.maxConnections', 'INVALID_VSOCK', 1, VSOCK_MAX_CONNECTIONS);
  return { guestCid, ...(udsPath !== undefined ? { udsPath } : {}), bufferSize, maxConnections };
}
