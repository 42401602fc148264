/**
 * The vsock device's host services, implemented with Node's `net` (Unix sockets) and the global
 * timers. No addon is needed: Unix stream sockets are what Node already does well.
 * @module
 */
import * as net from 'net';
import type { Duplex } from 'stream';
import { VsockError } from '../devices/vsock/errors';
import type { UnixServerHandle, VsockHost } from '../devices/vsock/host';

/** A {@link VsockHost} over real Unix sockets and timers. */
export function createVsockHost(): VsockHost {
  return {
    timers: {
      setTimeout: (cb, ms) => setTimeout(cb, ms),
      clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
    },
    listenUnix,
    connectUnix,
  };
}

/**
 * Listens at `path`. Like Firecracker, refuses a path that exists (a socket file left by a crashed
 * process must be removed by whoever owns it), and removes the file again on close.
 */
function listenUnix(path: string, onConnection: (stream: Duplex) => void): Promise<UnixServerHandle> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (sock) => onConnection(sock));
    const fail = (e: Error) => reject(new VsockError('UDS_FAILED', `cannot listen on ${path}: ${e.message}`, { cause: e }));
    server.once('error', fail);
    server.listen(path, () => {
      server.off('error', fail);
      // Errors after listening (e.g. EMFILE on accept) must not crash the host process.
      server.on('error', () => {});
      resolve({
        close: () => new Promise<void>((done) => {
          server.close(() => done());
          // server.close removes the socket file itself; a failure to do so is not worth a crash.
        }),
      });
    });
  });
}

function connectUnix(path: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path, allowHalfOpen: true });
    const fail = (e: Error) => {
      sock.destroy();
      reject(e);
    };
    sock.once('error', fail);
    sock.once('connect', () => {
      sock.off('error', fail);
      resolve(sock);
    });
  });
}
