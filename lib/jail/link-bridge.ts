/**
 * In-process links (a `VirtualSwitch`, any objectMode Duplex of Ethernet frames) for a jailed
 * VM. The NIC runs in the child; the link object stays in the parent. Between them is one Unix
 * stream socket pair per NIC, made by the parent, with one end passed into the child, carrying
 * frames as `u32 length (little endian) | frame`. In the child the end is the NIC's switch port;
 * in the parent it is spliced to a port of the user's switch, or to the user's stream (which is
 * only detached, never destroyed, when the VM ends: it is the user's).
 *
 * The child is untrusted: a frame longer than {@link MAX_LINK_FRAME} ends the link, and the
 * parent buffers at most one frame per read.
 * @module
 */
import type * as net from 'net';
import { Duplex } from 'stream';
import type { FrameSwitch } from '../devices/net/config';

/** Longest frame that crosses: a 64 KiB MTU's frame with its Ethernet and VLAN headers. */
export const MAX_LINK_FRAME = 65536 + 18;
const HEADER = 4;

/** An objectMode Duplex of frames over a byte stream, framed as in the module comment. */
export class FramedLink extends Duplex {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** @param socket one end of the pair (destroyed with this stream) */
  constructor(private readonly socket: net.Socket) {
    super({ objectMode: true, allowHalfOpen: false });
    socket.on('data', (c: Buffer) => this.onBytes(c));
    socket.on('end', () => this.push(null));
    socket.on('error', (e) => this.destroy(e));
    socket.on('close', () => this.destroy());
  }

  private onBytes(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (this.buffered >= HEADER) {
      const head = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      this.chunks = [head];
      const length = head.readUInt32LE(0);
      if (length === 0 || length > MAX_LINK_FRAME) {
        this.destroy(new Error(`a link frame of ${length} bytes (limit ${MAX_LINK_FRAME})`));
        return;
      }
      if (this.buffered < HEADER + length) return;
      const frame = Buffer.from(head.subarray(HEADER, HEADER + length));
      const rest = head.subarray(HEADER + length);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      if (!this.push(frame)) this.socket.pause();
    }
  }

  /** @internal */
  override _read(): void {
    this.socket.resume();
  }

  /** @internal */
  override _write(frame: unknown, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (!(frame instanceof Uint8Array) || frame.length === 0 || frame.length > MAX_LINK_FRAME) {
      // Not a frame this link can carry: dropped, as a switch drops what it cannot forward.
      callback();
      return;
    }
    const head = Buffer.allocUnsafe(HEADER);
    head.writeUInt32LE(frame.length, 0);
    this.socket.write(head);
    if (this.socket.write(frame)) callback();
    else this.socket.once('drain', () => callback());
  }

  /** @internal */
  override _final(callback: (error?: Error | null) => void): void {
    this.socket.end();
    callback();
  }

  /** @internal */
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy();
    callback(error);
  }
}

/**
 * Joins a NIC's pair end to the user's link, in the parent: a switch gets a new port (destroyed
 * with the VM), a stream is written to and read from (and only detached at the end). Returns the
 * function that ends the join.
 */
export function joinLink(link: FrameSwitch | Duplex, framed: FramedLink): () => void {
  const isSwitch = typeof (link as FrameSwitch).attach === 'function';
  const stream = isSwitch ? (link as FrameSwitch).attach() : (link as Duplex);
  const toUser = (frame: Buffer) => {
    if (!stream.write(frame)) {
      framed.pause();
      stream.once('drain', () => framed.resume());
    }
  };
  const toChild = (frame: unknown) => {
    if (!framed.write(frame)) {
      stream.pause();
      framed.once('drain', () => stream.resume());
    }
  };
  let joined = true;
  const end = () => {
    if (!joined) return;
    joined = false;
    framed.off('data', toUser);
    stream.off('data', toChild);
    framed.destroy();
    if (isSwitch) {
      stream.destroy();
    } else {
      stream.off('error', ignore);
      if (stream.listenerCount('data') === 0) stream.pause();
    }
  };
  const ignore = () => undefined;
  framed.on('data', toUser);
  framed.on('error', ignore);
  framed.on('close', end);
  stream.on('data', toChild);
  // A failing switch port must not become an uncaught exception here.
  stream.on('error', ignore);
  return end;
}

/** The child's side: the NIC attaches to the pair's end as to a switch port, once. */
export function childLink(framed: FramedLink): FrameSwitch {
  let attached = false;
  return {
    attach: () => {
      if (attached) throw new Error('a jailed link is attached once');
      attached = true;
      return framed;
    },
  };
}
