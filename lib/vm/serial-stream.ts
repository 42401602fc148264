/**
 * `vm.serial`: a Duplex whose readable side is the guest's UART output and whose writable side is
 * the guest's UART input, with backpressure in both directions.
 * @module
 */
import { Duplex } from 'stream';

/** Where the stream's written bytes go: the UART's receive FIFO (or a buffer before start). */
export interface SerialSink {
  /** Offers bytes to the guest; returns how many were taken (0..bytes.length). */
  offer(bytes: Uint8Array): number;
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
    const p = this.pending;
    if (!p || !this.sink) return;
    const n = this.sink.offer(p.bytes);
    if (n < p.bytes.length) {
      p.bytes = p.bytes.subarray(n);
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
