/**
 * A popped descriptor chain and cursor-style readers/writers over its buffers.
 *
 * Every segment of a chain has been checked against guest memory when the chain was popped
 * ({@link Queue.pop}), so readers and writers never touch anything outside it; running past the end
 * of the chain throws {@link VirtioError} `CHAIN_TOO_SHORT`.
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory';
import { VirtioError } from './errors';
import type { Queue } from './queue';

/** One guest buffer of a chain: `len` bytes at guest physical `addr`, wholly inside guest memory. */
export interface DescriptorSegment {
  /** Guest physical address. */
  addr: number;
  /** Length in bytes (never 0: zero-length descriptors are dropped). */
  len: number;
}

const EMPTY: readonly DescriptorSegment[] = Object.freeze([]);

/**
 * A descriptor chain made available by the driver, split into its device-readable buffers
 * followed by its device-writable buffers (§2.7.4: device-readable descriptors come first).
 *
 * When `error` is set the chain was malformed: its head was consumed, `readable` and `writable`
 * are empty, and the device should complete it with `addUsed(headIndex, 0)`.
 */
export class DescriptorChain {
  /** Index of the head descriptor in the descriptor table; the id to hand back in the used ring. */
  readonly headIndex: number;
  /** Device-readable buffers, in chain order. */
  readonly readable: readonly DescriptorSegment[];
  /** Device-writable buffers, in chain order. */
  readonly writable: readonly DescriptorSegment[];
  /** Sum of the readable lengths (≤ 2^32 - 1). */
  readonly readableLength: number;
  /** Sum of the writable lengths (≤ 2^32 - 1). */
  readonly writableLength: number;
  /** Why the chain was rejected, if it was. */
  readonly error?: VirtioError;

  /** Builds a chain from already validated segments (see {@link Queue.pop}). */
  constructor(
    headIndex: number,
    readable: readonly DescriptorSegment[],
    writable: readonly DescriptorSegment[],
    readableLength: number,
    writableLength: number,
    error?: VirtioError,
  ) {
    this.headIndex = headIndex;
    this.readable = readable;
    this.writable = writable;
    this.readableLength = readableLength;
    this.writableLength = writableLength;
    if (error) this.error = error;
  }

  /** A consumed but rejected chain: no buffers, only the head to complete. */
  static malformed(headIndex: number, error: VirtioError): DescriptorChain {
    return new DescriptorChain(headIndex, EMPTY, EMPTY, 0, 0, error);
  }
}

/** Shared cursor over a list of segments. */
abstract class SegmentCursor {
  /** @internal Guest memory the segments live in. */
  protected readonly mem: GuestMemory;
  /** @internal Segments still owned by this cursor. */
  protected segs: readonly DescriptorSegment[];
  /** @internal Index of the current segment. */
  protected seg = 0;
  /** @internal Offset inside the current segment. */
  protected off = 0;
  /** @internal Bytes not yet consumed. */
  protected left: number;

  constructor(mem: GuestMemory, segs: readonly DescriptorSegment[], total: number) {
    this.mem = mem;
    this.segs = segs;
    this.left = total;
  }

  /** Bytes not yet consumed. */
  get remaining(): number {
    return this.left;
  }

  /** @internal Throws CHAIN_TOO_SHORT unless `len` more bytes exist. */
  protected need(len: number, what: string): void {
    if (!Number.isSafeInteger(len) || len < 0 || len > this.left) {
      throw new VirtioError('CHAIN_TOO_SHORT', `${what} of ${len} bytes but only ${this.left} remain in the chain`);
    }
  }

  /** @internal Views over the next `len` bytes (already bounds-checked by `need`), consuming them. */
  protected take(len: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (len > 0) {
      const s = this.segs[this.seg];
      const n = Math.min(len, s.len - this.off);
      out.push(this.mem.slice(s.addr + this.off, n));
      this.advance(n);
      len -= n;
    }
    return out;
  }

  /** @internal Consumes `n` bytes of the current segment. */
  protected advance(n: number): void {
    this.left -= n;
    this.off += n;
    if (this.off === this.segs[this.seg].len) {
      this.seg++;
      this.off = 0;
    }
  }

  /** Consumes `len` bytes without touching them. */
  skip(len: number): void {
    this.need(len, 'skip');
    while (len > 0) {
      const n = Math.min(len, this.segs[this.seg].len - this.off);
      this.advance(n);
      len -= n;
    }
  }

  /**
   * Zero-copy views of guest memory covering the next `len` bytes (one per segment touched),
   * consuming them. Writing into them writes guest memory.
   */
  views(len: number): Uint8Array[] {
    this.need(len, 'views');
    return this.take(len);
  }
}

/** Reads the device-readable part of a chain front to back. */
export class ChainReader extends SegmentCursor {
  /**
   * @param chain a popped chain, or (for sub-ranges) an explicit segment list.
   */
  constructor(mem: GuestMemory, chain: DescriptorChain | readonly DescriptorSegment[]) {
    if (chain instanceof DescriptorChain) super(mem, chain.readable, chain.readableLength);
    else super(mem, chain, sumLengths(chain));
  }

  /** Copies the next `len` bytes out of the chain. */
  read(len: number): Uint8Array {
    this.need(len, 'read');
    const out = new Uint8Array(len);
    let at = 0;
    for (const v of this.take(len)) {
      out.set(v, at);
      at += v.length;
    }
    return out;
  }

  /** Reads a little-endian u8. */
  readU8(): number {
    this.need(1, 'readU8');
    const s = this.segs[this.seg];
    const v = this.mem.readU8(s.addr + this.off);
    this.advance(1);
    return v;
  }

  /** Reads a little-endian u16. */
  readU16(): number {
    this.need(2, 'readU16');
    const s = this.segs[this.seg];
    if (s.len - this.off >= 2) {
      const v = this.mem.readU16(s.addr + this.off);
      this.advance(2);
      return v;
    }
    const b = this.read(2);
    return b[0] | (b[1] << 8);
  }

  /** Reads a little-endian u32. */
  readU32(): number {
    this.need(4, 'readU32');
    const s = this.segs[this.seg];
    if (s.len - this.off >= 4) {
      const v = this.mem.readU32(s.addr + this.off);
      this.advance(4);
      return v;
    }
    const b = this.read(4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  /** Reads a little-endian u64 as a bigint. */
  readU64(): bigint {
    const lo = this.readU32();
    const hi = this.readU32();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }
}

/** Fills the device-writable part of a chain front to back, counting the bytes written. */
export class ChainWriter extends SegmentCursor {
  private wrote = 0;

  /**
   * @param chain a popped chain, or (for sub-ranges) an explicit segment list.
   */
  constructor(mem: GuestMemory, chain: DescriptorChain | readonly DescriptorSegment[]) {
    if (chain instanceof DescriptorChain) super(mem, chain.writable, chain.writableLength);
    else super(mem, chain, sumLengths(chain));
  }

  /** Bytes written or handed out through {@link views} so far (skipped bytes are not counted). */
  get written(): number {
    return this.wrote;
  }

  /** Copies `data` into the chain. */
  write(data: Uint8Array): void {
    this.need(data.length, 'write');
    let at = 0;
    for (const v of this.take(data.length)) {
      v.set(data.subarray(at, at + v.length));
      at += v.length;
    }
    this.wrote += data.length;
  }

  /** Writes one byte. */
  writeU8(value: number): void {
    this.need(1, 'writeU8');
    const s = this.segs[this.seg];
    this.mem.writeU8(s.addr + this.off, value & 0xff);
    this.advance(1);
    this.wrote += 1;
  }

  /** Writes a little-endian u16. */
  writeU16(value: number): void {
    this.write(new Uint8Array([value & 0xff, (value >>> 8) & 0xff]));
  }

  /** Writes a little-endian u32. */
  writeU32(value: number): void {
    this.write(new Uint8Array([value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff]));
  }

  /** Zero-copy views over the next `len` bytes, counted as written. */
  override views(len: number): Uint8Array[] {
    const v = super.views(len);
    this.wrote += len;
    return v;
  }

  /**
   * Splits the last `len` bytes off the writable area (e.g. a block request's status byte, which
   * sits at the very end of the chain) and returns a separate writer for them; this writer then
   * ends where the tail begins.
   */
  reserveTail(len: number): ChainWriter {
    this.need(len, 'reserveTail');
    const tail: DescriptorSegment[] = [];
    let want = len;
    // Walk segments from the end, trimming them off this writer's list.
    const mine: DescriptorSegment[] = this.segs.slice();
    while (want > 0) {
      const last = mine[mine.length - 1];
      const startInSeg = mine.length - 1 === this.seg ? this.off : 0;
      const avail = last.len - startInSeg;
      const n = Math.min(want, avail);
      tail.unshift({ addr: last.addr + last.len - n, len: n });
      if (n === last.len) mine.pop();
      else mine[mine.length - 1] = { addr: last.addr, len: last.len - n };
      want -= n;
    }
    this.segs = mine;
    this.left -= len;
    return new ChainWriter(this.mem, tail);
  }
}

function sumLengths(segs: readonly DescriptorSegment[]): number {
  let n = 0;
  for (const s of segs) n += s.len;
  return n;
}
