/**
 * The host end of a vsock stream connection: a Node.js Duplex.
 *
 * - Reading pulls guest data from the connection only while the stream wants more, so a reader that
 *   does not read stops the guest through its credit.
 * - A write completes once its bytes are in guest memory, so the writable buffer fills and `write()`
 *   returns false when the guest does not read.
 * - `end()` is a half-close: SHUTDOWN with only the SEND flag; the guest's answer can still be read.
 * - `destroy()` (or both halves finishing) resets the connection (RST) if it is still open.
 * - When the guest aborts the connection (RST) or the transport is reset, the socket is destroyed
 *   with a {@link VsockError} if it has an `'error'` listener, and quietly otherwise (the error is
 *   still in {@link VsockSocket.abortError}): a guest must not be able to crash a host program that
 *   forgot its error handler.
 * @module
 */
import { Duplex } from 'stream';
import type { ConnectionSink, VsockConnection } from './connection';
import type { VsockError } from './errors';

/** Default high-water mark of each direction's stream buffer, in bytes. */
export const VSOCK_SOCKET_HIGH_WATER_MARK = 64 * 1024;

/** The host end of one connection; see the module comment. */
export class VsockSocket extends Duplex implements ConnectionSink {
  /** The host-side port (the listener's port, or the local port a host connect was given). */
  readonly localPort: number;
  /** The guest-side port. */
  readonly remotePort: number;
  /** The guest's context id. */
  readonly remoteCid: number;
  /** Whether the connection was continued from a snapshot rather than opened in this process. */
  readonly restored: boolean;
  /** Why the device ended the connection, if it did (guest RST, protocol violation, transport reset). */
  abortError: Error | null = null;
  private readonly conn: VsockConnection;

  /**
   * @param conn the connection this socket is the host end of (the socket attaches itself)
   * @param remoteCid the guest's context id
   * @param restored continued from a snapshot
   */
  constructor(conn: VsockConnection, remoteCid: number, restored = false) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: VSOCK_SOCKET_HIGH_WATER_MARK,
      writableHighWaterMark: VSOCK_SOCKET_HIGH_WATER_MARK,
      decodeStrings: true,
    });
    this.conn = conn;
    this.localPort = conn.hostPort;
    this.remotePort = conn.guestPort;
    this.remoteCid = remoteCid;
    this.restored = restored;
    conn.sink = this;
  }

  /** @internal Called by the connection; see the module comment. */
  abort(err: Error): void {
    if (this.destroyed) return;
    this.abortError = err;
    this.destroy(this.listenerCount('error') > 0 ? err : undefined);
  }

  /** @internal */
  override _read(): void {
    this.conn.hostRead();
  }

  /** @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.conn.hostWrite(chunk, callback);
  }

  /** @internal */
  override _final(callback: (error?: Error | null) => void): void {
    this.conn.hostEnd();
    callback();
  }

  /** @internal */
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.conn.sink === this) this.conn.hostDestroy();
    callback(error);
  }
}
