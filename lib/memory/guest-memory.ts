/**
 * Guest physical memory as seen from the host: a set of non-overlapping regions, each backed by an
 * ArrayBuffer that aliases one of the VM's mappings (or, in tests, a plain ArrayBuffer).
 *
 * Every access is bounds-checked: guest-supplied addresses and lengths are hostile, so nothing
 * here trusts them, and an access that does not lie wholly inside one region throws
 * {@link MemoryError} instead of touching anything.
 *
 * A region is at most one buffer, and buffers from the addon are at most 4 GiB, so guest RAM
 * larger than that comes as several regions ({@link splitRegions}) cut at multiples of 4 GiB of
 * guest physical address. An access is still served by one region: a guest range that crosses
 * such a cut (at 8 GiB, 12 GiB…) is refused as if it were outside memory. Nothing naturally
 * aligned crosses one (pages, folios, rings), and Linux's block layer keeps every segment inside a
 * 4 GiB window (its default segment boundary mask).
 * @module
 */
import { KindlingError } from '../errors';

/** Why a guest memory access was refused. */
export type MemoryErrorCode = 'OUT_OF_RANGE' | 'OVERLAP' | 'BAD_REGION';

/** A refused guest memory access or layout. */
export class MemoryError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: MemoryErrorCode;
  /** The guest physical address involved, when there is one. */
  readonly address?: number;
  /** The length involved, when there is one. */
  readonly length?: number;

  constructor(code: MemoryErrorCode, message: string, address?: number, length?: number) {
    super(message);
    this.name = 'MemoryError';
    this.code = code;
    this.address = address;
    this.length = length;
  }
}

/** One contiguous range of guest physical memory. */
export interface MemoryRegion {
  /** First guest physical address. */
  readonly guestAddr: number;
  /** Length in bytes. */
  readonly size: number;
  /** Backing store; byte `i` of the region is byte `byteOffset + i` of `buffer`. */
  readonly buffer: ArrayBuffer;
  /** Where the region starts inside `buffer`. */
  readonly byteOffset: number;
}

/** How a region is given to {@link GuestMemory}: either a byte array, or a range of an ArrayBuffer. */
export type RegionSpec =
  | {
      /** Guest physical address of the region's first byte. */
      guestAddr: number;
      /** The region's bytes. */
      bytes: Uint8Array;
    }
  | {
      /** Guest physical address of the region's first byte. */
      guestAddr: number;
      /** The buffer holding the region. */
      buffer: ArrayBuffer;
      /** Where in `buffer` the region starts. */
      byteOffset: number;
      /** The region's length in bytes. */
      size: number;
    };

/** Largest address we accept as a JS number: 2^52 keeps every sum of address + length exact. */
const MAX_ADDR = 2 ** 52;

/** A range of guest physical addresses. */
export interface GuestRange {
  /** First guest physical address. */
  readonly guestAddr: number;
  /** Length in bytes. */
  readonly size: number;
}

/**
 * Cuts RAM ranges at every multiple of `maxBytes` of guest physical address, so that each piece
 * fits one buffer of at most `maxBytes` and anything naturally aligned to `maxBytes` or less lies
 * inside one piece.
 * @param maxBytes the largest buffer the backing store provides (the addon's MAX_MEMORY_BUFFER)
 * @throws MemoryError BAD_REGION for a range or limit that is not a positive safe integer
 */
export function splitRegions(ranges: readonly GuestRange[], maxBytes: number): GuestRange[] {
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
    throw new MemoryError('BAD_REGION', `buffer limit ${maxBytes} is not a positive integer`);
  }
  const out: GuestRange[] = [];
  for (const r of ranges) {
    if (!Number.isSafeInteger(r.guestAddr) || r.guestAddr < 0 || !Number.isSafeInteger(r.size) || r.size <= 0 ||
        r.guestAddr + r.size > MAX_ADDR) {
      throw new MemoryError('BAD_REGION', `range ${r.guestAddr}+${r.size} is not a valid guest range`, r.guestAddr, r.size);
    }
    const end = r.guestAddr + r.size;
    for (let at = r.guestAddr; at < end;) {
      const cut = Math.min(end, (Math.floor(at / maxBytes) + 1) * maxBytes);
      out.push({ guestAddr: at, size: cut - at });
      at = cut;
    }
  }
  return out;
}

/** Bounds-checked guest physical memory. */
export class GuestMemory {
  /** Regions sorted by address. */
  readonly regions: readonly MemoryRegion[];
  // Kept alongside `regions` so the hot lookup avoids property loads through an interface.
  private readonly starts: number[];
  private readonly ends: number[];
  private readonly views: DataView[];

  /**
   * @param regions guest address and backing bytes of each region; they must not overlap.
   */
  constructor(regions: RegionSpec[]) {
    const norm: MemoryRegion[] = regions.map((r) =>
      'bytes' in r
        ? { guestAddr: r.guestAddr, size: r.bytes.byteLength, buffer: r.bytes.buffer as ArrayBuffer, byteOffset: r.bytes.byteOffset }
        : { guestAddr: r.guestAddr, size: r.size, buffer: r.buffer, byteOffset: r.byteOffset },
    );
    norm.sort((a, b) => a.guestAddr - b.guestAddr);
    const out: MemoryRegion[] = [];
    for (const r of norm) {
      if (!Number.isSafeInteger(r.guestAddr) || r.guestAddr < 0 || r.guestAddr + r.size > MAX_ADDR) {
        throw new MemoryError('BAD_REGION', `region at ${r.guestAddr} is outside the addressable range`, r.guestAddr);
      }
      if (!Number.isSafeInteger(r.size) || r.size <= 0 || r.byteOffset < 0 || r.byteOffset + r.size > r.buffer.byteLength) {
        throw new MemoryError('BAD_REGION', `region at 0x${r.guestAddr.toString(16)} does not fit its buffer`, r.guestAddr, r.size);
      }
      const prev = out[out.length - 1];
      if (prev && prev.guestAddr + prev.size > r.guestAddr) {
        throw new MemoryError('OVERLAP', `regions at 0x${prev.guestAddr.toString(16)} and 0x${r.guestAddr.toString(16)} overlap`, r.guestAddr);
      }
      out.push(r);
    }
    this.regions = out;
    this.starts = out.map((r) => r.guestAddr);
    this.ends = out.map((r) => r.guestAddr + r.size);
    this.views = out.map((r) => new DataView(r.buffer, r.byteOffset, r.size));
  }

  /** Convenience for tests and tools: one region of `size` zeroed bytes at guest address 0. */
  static anonymous(size: number): GuestMemory {
    return new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(size) }]);
  }

  /** Total bytes of guest memory. */
  get totalSize(): number {
    let n = 0;
    for (const r of this.regions) n += r.size;
    return n;
  }

  /** Index of the region holding all of `[addr, addr+len)`, or -1. */
  private find(addr: number, len: number): number {
    // NaN fails the comparisons; fractions would index nothing sensible, so they are refused too.
    if (!(addr >= 0) || !(len >= 0) || addr > MAX_ADDR || len > MAX_ADDR) return -1;
    if (!Number.isInteger(addr) || !Number.isInteger(len)) return -1;
    const end = addr + len;
    for (let i = 0; i < this.starts.length; i++) {
      if (addr >= this.starts[i] && end <= this.ends[i]) return i;
    }
    return -1;
  }

  /** Whether `[addr, addr+len)` lies wholly inside one region (what every access needs). */
  checkRange(addr: number, len: number): boolean {
    return this.find(addr, len) >= 0;
  }

  /**
   * Whether every byte of `[addr, addr+len)` is guest memory, possibly in several adjacent
   * regions (for checking a RAM layout; accesses need {@link checkRange}).
   */
  covers(addr: number, len: number): boolean {
    if (this.find(addr, 0) < 0 || !(len >= 0) || !Number.isInteger(len) || len > MAX_ADDR) return false;
    const end = addr + len;
    let at = addr;
    for (let i = 0; i < this.starts.length && at < end; i++) {
      if (this.starts[i] <= at && at < this.ends[i]) at = this.ends[i];
    }
    return at >= end;
  }

  private region(addr: number, len: number): number {
    const i = this.find(addr, len);
    if (i < 0) {
      throw new MemoryError('OUT_OF_RANGE', `guest range 0x${Number(addr).toString(16)}+${len} is not inside guest memory`, addr, len);
    }
    return i;
  }

  /**
   * A view (no copy) of `[addr, addr+len)`. Writing to it writes guest memory.
   * @throws MemoryError OUT_OF_RANGE
   */
  slice(addr: number, len: number): Uint8Array {
    const i = this.region(addr, len);
    const r = this.regions[i];
    return new Uint8Array(r.buffer, r.byteOffset + (addr - r.guestAddr), len);
  }

  /** Copies `data` into guest memory at `addr`. */
  write(addr: number, data: Uint8Array): void {
    this.slice(addr, data.length).set(data);
  }

  /** Copies `len` bytes out of guest memory. */
  read(addr: number, len: number): Uint8Array {
    return new Uint8Array(this.slice(addr, len));
  }

  /** Little-endian u8 read. */
  readU8(addr: number): number {
    const i = this.region(addr, 1);
    return this.views[i].getUint8(addr - this.starts[i]);
  }

  /** Little-endian u16 read. */
  readU16(addr: number): number {
    const i = this.region(addr, 2);
    return this.views[i].getUint16(addr - this.starts[i], true);
  }

  /** Little-endian u32 read. */
  readU32(addr: number): number {
    const i = this.region(addr, 4);
    return this.views[i].getUint32(addr - this.starts[i], true);
  }

  /** Little-endian u64 read as a bigint. */
  readU64(addr: number): bigint {
    const i = this.region(addr, 8);
    return this.views[i].getBigUint64(addr - this.starts[i], true);
  }

  /**
   * Little-endian u64 read as a number, or -1 when the value is 2^53 or more. Guest addresses
   * arrive as u64: anything that large cannot be inside guest memory, and -1 fails every range check.
   */
  readU64Number(addr: number): number {
    const i = this.region(addr, 8);
    const v = this.views[i];
    const off = addr - this.starts[i];
    const lo = v.getUint32(off, true);
    const hi = v.getUint32(off + 4, true);
    if (hi >= 0x200000) return -1;
    return hi * 0x100000000 + lo;
  }

  /** u8 write. */
  writeU8(addr: number, value: number): void {
    const i = this.region(addr, 1);
    this.views[i].setUint8(addr - this.starts[i], value);
  }

  /** Little-endian u16 write. */
  writeU16(addr: number, value: number): void {
    const i = this.region(addr, 2);
    this.views[i].setUint16(addr - this.starts[i], value, true);
  }

  /** Little-endian u32 write. */
  writeU32(addr: number, value: number): void {
    const i = this.region(addr, 4);
    this.views[i].setUint32(addr - this.starts[i], value >>> 0, true);
  }

  /** Little-endian u64 write. */
  writeU64(addr: number, value: bigint | number): void {
    const i = this.region(addr, 8);
    this.views[i].setBigUint64(addr - this.starts[i], BigInt(value), true);
  }
}
