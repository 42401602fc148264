/**
 * The Firecracker-compatible Unix socket interface of a vsock device.
 *
 * - Host-initiated: a host program connects to the Unix socket at `udsPath`, writes
 *   `CONNECT <port>\n` and reads `OK <hostport>\n` (the local port the connection got); from then
 *   on the Unix stream carries the guest connection's bytes both ways. A malformed request, or a
 *   guest port nobody listens on, closes the Unix stream.
 * - Guest-initiated: a guest connecting to host port P, when no `listen()` handler has P, is
 *   forwarded to a Unix socket listening at `<udsPath>_<P>`; if none does, the guest gets RST.
 *
 * Half-closes pass through in both directions (the Unix streams are half-open), so a program
 * written for Firecracker's vsock works unchanged.
 * @module
 */
import type { Duplex } from 'stream';
import type { UnixServerHandle, VsockHost } from './host';
import type { VsockSocket } from './socket';

/** Longest `CONNECT <port>` line accepted, newline included (Firecracker's is shorter still). */
export const MUXER_MAX_LINE = 32;

/** What the muxer needs from the device. */
export interface MuxerTarget {
  /** Opens a connection to a guest port on behalf of a Unix socket client. */
  connectFromUds(port: number): Promise<VsockSocket>;
}

/** Counters the muxer keeps (part of the device's metrics). */
export interface MuxerCounters {
  /** Unix socket clients accepted. */
  udsAccepted: number;
  /** Unix socket clients whose CONNECT line was malformed or too long. */
  udsBadRequests: number;
  /** Unix socket clients whose guest connect failed. */
  udsConnectFailures: number;
}

/** Parses a `CONNECT <port>` line (without its newline; a trailing CR is tolerated). */
export function parseConnectLine(line: string): number | null {
  const m = /^CONNECT ([0-9]{1,10})\r?$/.exec(line);
  if (m === null) return null;
  const port = Number(m[1]);
  return port <= 0xffffffff ? port : null;
}

/**
 * Joins two streams both ways: data and end-of-stream pass through in each direction; an error or
 * an early close of either destroys both.
 */
export function splice(a: Duplex, b: Duplex): void {
  const kill = () => {
    a.destroy();
    b.destroy();
  };
  a.on('error', kill);
  b.on('error', kill);
  // A stream closed before its end of stream was read was aborted: so is its partner.
  a.on('close', () => {
    if (!a.readableEnded) b.destroy();
  });
  b.on('close', () => {
    if (!b.readableEnded) a.destroy();
  });
  a.pipe(b);
  b.pipe(a);
}

/** See the module comment. */
export class UdsMuxer {
  /** The Unix socket path host programs connect to. */
  readonly udsPath: string;
  private readonly host: VsockHost;
  private readonly target: MuxerTarget;
  private readonly counters: MuxerCounters;
  private server: UnixServerHandle | null = null;
  private readonly clients = new Set<Duplex>();
  private closed = false;

  /**
   * @param target the device
   * @param host Unix socket operations
   * @param udsPath where to listen
   * @param counters where to count
   */
  constructor(target: MuxerTarget, host: VsockHost, udsPath: string, counters: MuxerCounters) {
    this.target = target;
    this.host = host;
    this.udsPath = udsPath;
    this.counters = counters;
  }

  /** Starts listening at {@link udsPath}. Rejects (VsockError UDS_FAILED) if it cannot. */
  async start(): Promise<void> {
    if (this.server !== null || this.closed) return;
    const server = await this.host.listenUnix(this.udsPath, (stream) => this.onClient(stream));
    if (this.closed) {
      await server.close();
      return;
    }
    this.server = server;
  }

  /** The Unix socket a guest connection to host port `port` is forwarded to. */
  forwardPath(port: number): string {
    return `${this.udsPath}_${port}`;
  }

  /** Connects to the Unix socket for host port `port` (rejects when nobody listens there). */
  connectForward(port: number): Promise<Duplex> {
    return this.host.connectUnix(this.forwardPath(port));
  }

  private onClient(stream: Duplex): void {
    if (this.closed) {
      stream.destroy();
      return;
    }
    this.counters.udsAccepted++;
    this.clients.add(stream);
    stream.on('close', () => this.clients.delete(stream));
    stream.on('error', () => stream.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) {
        if (head.length >= MUXER_MAX_LINE) bad();
        return;
      }
      stream.off('data', onData);
      stream.off('end', bad);
      stream.pause();
      const port = nl < MUXER_MAX_LINE ? parseConnectLine(head.subarray(0, nl).toString('latin1')) : null;
      if (port === null) {
        bad();
        return;
      }
      const rest = head.subarray(nl + 1);
      this.target.connectFromUds(port).then(
        (sock) => {
          if (stream.destroyed) {
            sock.destroy();
            return;
          }
          stream.write(`OK ${sock.localPort}\n`);
          if (rest.length > 0) sock.write(rest);
          splice(stream, sock);
          stream.resume();
        },
        () => {
          this.counters.udsConnectFailures++;
          stream.destroy();
        },
      );
    };
    const bad = () => {
      this.counters.udsBadRequests++;
      stream.destroy();
    };
    stream.on('data', onData);
    stream.on('end', bad);
  }

  /** Stops listening and closes every Unix client. */
  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.clients) c.destroy();
    this.clients.clear();
    const server = this.server;
    this.server = null;
    if (server !== null) await server.close();
  }
}
