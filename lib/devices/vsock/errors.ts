/**
 * Errors of the virtio-vsock device and its host-side sockets.
 * @module
 */
import { KindlingError } from '../../errors';

/**
 * Why a vsock operation failed:
 * - `CONNECTION_REFUSED`: the guest answered a host connect with RST (no listener on that port).
 * - `CONNECT_TIMEOUT`: the guest did not answer a host connect in time (driver not up, or busy).
 * - `CONNECTION_RESET`: the guest aborted an established connection (RST), or broke the protocol
 *   on it (e.g. sent more than its credit allowed).
 * - `PEER_CLOSED`: a host write after the guest shut down its receiving side.
 * - `TRANSPORT_RESET`: the driver reset the device, or the host reset the transport; every
 *   connection was dropped.
 * - `TOO_MANY_CONNECTIONS`: the connection limit is reached.
 * - `PORT_IN_USE`: a listener is already registered on that port.
 * - `BAD_PORT`: a port that is not a u32.
 * - `CLOSED`: the device is closed.
 * - `UDS_FAILED`: the Firecracker-compatible Unix socket could not be set up.
 * - `BAD_CONFIG`: an invalid device configuration.
 */
export type VsockErrorCode =
  | 'CONNECTION_REFUSED'
  | 'CONNECT_TIMEOUT'
  | 'CONNECTION_RESET'
  | 'PEER_CLOSED'
  | 'TRANSPORT_RESET'
  | 'TOO_MANY_CONNECTIONS'
  | 'PORT_IN_USE'
  | 'BAD_PORT'
  | 'CLOSED'
  | 'UDS_FAILED'
  | 'BAD_CONFIG';

/** A failed vsock operation; see {@link VsockErrorCode}. */
export class VsockError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: VsockErrorCode;

  /**
   * @param code why
   * @param message details (names the port)
   * @param options `cause`: the underlying error
   */
  constructor(code: VsockErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VsockError';
    this.code = code;
  }
}
