/**
 * `vm.serial`: a Duplex whose readable side is the guest's UART output and whose writable side is
 * the guest's UART input, with backpressure in both directions.
 * @module
 */
import { Duplex } from 'stream';

/** Where the stream's written bytes go: the UART's receive FIFO. */
export interface SerialSink {
  /** Offers bytes to the guest; resolves with how many were taken (0..bytes.length). */
  offer(bytes: Uint8Array): Promise<number>;
}

/**
 * Guest input is accepted only as fast as the guest drains its receive FIFO: a write whose bytes
 * do not all fit is held (with its callback) until {@link SerialStream.inputSpace} is called.
 * Nothing is dropped while the VM runs; bytes written after the VM ended are discarded and counted.
 */
export class SerialStream extends Duplex {
  private sink: SerialSink | undefined;
  private pending: { bytes: Uint8Array; cb: (err?: Error | null) => void } | undefined;
  private ended = false;
  /** An offer is on its way to the machine: the next one waits for its answer. */
  private offering = false;
  /** Space was announced while an offer was out: offer again when it returns. */
  private retry = false;
  /** Bytes written after the VM ended (they have nowhere to go). */
  discardedBytes = 0;

  constructor() {
    super({ allowHalfOpen: true });
  }

  /** Connects the writable side to the running UART; input written before start is delivered now. */
  attach(sink: SerialSink): void {
    this.sink = sink;
    this.inputSpace();
  }

  /** The guest made room in its receive FIFO: continue a held write. */
  inputSpace(): void {
    if (this.offering) {
      this.retry = true;
      return;
    }
    const p = this.pending;
    const sink = this.sink;
    if (!p || !sink) return;
    this.offering = true;
    this.retry = false;
    sink.offer(p.bytes).then(
      (n) => this.offered(p, n),
      () => this.offered(p, 0),
    );
  }

  private offered(p: NonNullable<SerialStream['pending']>, n: number): void {
    this.offering = false;
    if (this.pending !== p) return; // the VM ended meanwhile and released the write
    if (n < p.bytes.length) {
      p.bytes = p.bytes.subarray(n);
      // The FIFO filled: wait for the guest to drain it, unless it already said it did.
      if (this.retry) this.inputSpace();
      return;
    }
    this.pending = undefined;
    p.cb();
  }

  /** Guest output: delivered to readers (buffered by the stream until read). */
  output(bytes: Uint8Array): void {
    if (!this.ended) this.push(Buffer.from(bytes));
  }

  /** The VM ended: the readable side ends, held input is discarded. */
  vmEnded(): void {
    if (this.ended) return;
    this.ended = true;
    this.sink = undefined;
    if (this.pending) {
      this.discardedBytes += this.pending.bytes.length;
      const cb = this.pending.cb;
      this.pending = undefined;
      cb();
    }
    this.push(null);
  }

  /** @internal */
  override _read(): void {
    // Output is pushed as the guest produces it; there is nothing to pull.
  }

  /** @internal */
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.ended) {
      this.discardedBytes += chunk.length;
      cb();
      return;
    }
    this.pending = { bytes: new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength), cb };
    this.inputSpace();
  }
}
