/**
 * Where a NIC's frames go: a host TAP (through {@link NetHost}: frames move between the TAP and
 * guest memory with one readv/writev each, virtio header included), or an in-process link (an
 * objectMode Duplex of Ethernet frames, such as a VirtualSwitch port).
 * @module
 */
import type { Duplex } from 'stream';
import type { FdPoll, NetHost, SpanList, TapInfo } from './host';

/** A TAP opened through a {@link NetHost}. */
export class TapBackend {
  /** Discriminant. */
  readonly kind = 'tap';
  /** The TAP's fd. */
  readonly fd: number;
  /** Its interface name. */
  readonly name: string;
  /** TUN_F_* flags it accepted when probed. */
  readonly acceptedOffloads: number;
  private readonly host: NetHost;
  private poll: FdPoll | null = null;
  private paused = true;
  private closed = false;
  private currentOffload = -1;

  /** @param info what `host.openTap` returned; the backend owns the fd from now on. */
  constructor(host: NetHost, info: TapInfo) {
    this.host = host;
    this.fd = info.fd;
    this.name = info.name;
    this.acceptedOffloads = info.offloads;
  }

  /** TUNSETOFFLOAD, skipped when unchanged. Throws (errno `code`) when refused. */
  setOffload(flags: number): void {
    if (this.closed || flags === this.currentOffload) return;
    this.host.setTapOffload(this.fd, flags);
    this.currentOffload = flags;
  }

  /** One frame into the spans; see {@link NetHost.readv}. */
  readv(list: SpanList): number {
    return this.host.readv(this.fd, list);
  }

  /** One frame from the spans; see {@link NetHost.writev}. */
  writev(list: SpanList): number {
    return this.host.writev(this.fd, list);
  }

  /** Starts (or resumes) calling `onReadable` while the TAP has frames. */
  resume(onReadable: () => void): void {
    if (this.closed || !this.paused) return;
    if (this.poll === null) this.poll = this.host.watchReadable(this.fd, onReadable);
    else this.poll.resume();
    this.paused = false;
  }

  /** Stops calling back (the kernel queues frames meanwhile, and drops beyond txqueuelen). */
  pause(): void {
    if (this.closed || this.paused || this.poll === null) return;
    this.poll.pause();
    this.paused = true;
  }

  /** Whether the watch is paused. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** Ends the watch and closes the fd (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poll?.close();
    this.poll = null;
    this.host.closeFd(this.fd);
  }
}

/** What a {@link LinkBackend} reports to its NIC. */
export interface LinkEvents {
  /** A frame arrived (not yet checked). */
  frame(frame: unknown): void;
  /** The stream can take writes again after refusing one. */
  drain(): void;
  /** The stream ended, closed or failed: the link is down. */
  down(error?: unknown): void;
}

/** An objectMode Duplex of frames. */
export class LinkBackend {
  /** Discriminant. */
  readonly kind = 'link';
  /** The stream. */
  readonly stream: Duplex;
  private readonly owned: boolean;
  private events: LinkEvents | null = null;
  private up = true;
  private readonly onData = (f: unknown) => this.events?.frame(f);
  private readonly onDrain = () => this.events?.drain();
  private readonly onEnd = () => this.setDown();
  private readonly onError = (e: unknown) => this.setDown(e);

  /**
   * @param stream the link
   * @param owned whether closing the NIC destroys the stream (a switch port the NIC attached) or
   *   only detaches from it (a stream the user passed in)
   */
  constructor(stream: Duplex, owned: boolean) {
    this.stream = stream;
    this.owned = owned;
  }

  /** Whether the stream is still usable. */
  get isUp(): boolean {
    return this.up;
  }

  private setDown(error?: unknown): void {
    if (!this.up) return;
    this.up = false;
    this.events?.down(error);
  }

  /** Starts listening (once). */
  start(events: LinkEvents): void {
    if (this.events !== null) return;
    this.events = events;
    const s = this.stream;
    s.on('data', this.onData);
    s.on('drain', this.onDrain);
    s.on('end', this.onEnd);
    s.on('close', this.onEnd);
    s.on('error', this.onError);
    if (s.destroyed || s.writableEnded) this.setDown();
  }

  /** Sends a frame; false when the stream asks us to wait for 'drain' (the frame was taken). */
  write(frame: Buffer): boolean {
    return this.stream.write(frame);
  }

  /** Detaches (and destroys an owned stream). */
  close(): void {
    const s = this.stream;
    s.off('data', this.onData);
    s.off('drain', this.onDrain);
    s.off('end', this.onEnd);
    s.off('close', this.onEnd);
    // An error after we leave must still not become an uncaught exception on an owned stream.
    if (!this.owned) s.off('error', this.onError);
    this.events = null;
    this.up = false;
    if (this.owned) s.destroy();
    // Our 'data' listener put the user's stream in flowing mode: without a reader left, frames
    // would be discarded, so it stops flowing and buffers for whoever reads next.
    else if (s.listenerCount('data') === 0) s.pause();
  }
}

/** A NIC's backend. */
export type NetBackend = TapBackend | LinkBackend;
