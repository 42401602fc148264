/**
 * What the vsock device needs from the host, injected so that the device never opens a socket or
 * starts a timer of its own: timers (connect timeouts) and, for the Firecracker-compatible Unix
 * socket interface, listening on and connecting to Unix sockets. `lib/vm/vsock-host.ts` implements
 * it with Node's `net`; tests implement it in memory.
 * @module
 */
import type { Duplex } from 'stream';
import type { TimerFunctions } from '../../ratelimit';

/** A listening Unix socket. */
export interface UnixServerHandle {
  /** Stops listening and removes the socket file. */
  close(): Promise<void>;
}

/** Host operations of the vsock device. */
export interface VsockHost {
  /** Timers for connect timeouts. */
  timers: TimerFunctions;
  /**
   * Listens on a Unix socket at `path` (which must not exist), calling `onConnection` with each
   * accepted stream. Streams must allow half-open operation (`allowHalfOpen`).
   * @throws VsockError UDS_FAILED (rejects) when the socket cannot be created
   */
  listenUnix(path: string, onConnection: (stream: Duplex) => void): Promise<UnixServerHandle>;
  /** Connects to the Unix socket at `path`; rejects when nobody listens there. */
  connectUnix(path: string): Promise<Duplex>;
}
