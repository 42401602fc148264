/**
 * Page bitmaps: which 4 KiB pages of a guest memory buffer a diff snapshot holds. Bit i (LSB first
 * in byte i/8) is page i, the layout of KVM's dirty log and of
 * `NativeVm.writeMemoryFile`'s `pages`.
 * @module
 */
import type { NativeVm } from '../native/types';
import { SnapshotError } from './errors';

/** Snapshot page size: x86-64 base pages, the granularity of KVM's dirty log. */
export const SNAPSHOT_PAGE_SIZE = 4096;

/** A run of consecutive pages: `[firstPage, pageCount]`. */
export type PageRange = [number, number];

/** One bit per page of a memory buffer. */
export class PageBitmap {
  /** The bits; byte i/8, bit i%8 is page i. */
  readonly bits: Uint8Array;

  /**
   * @param pages how many pages the buffer has
   * @param bits existing bits to adopt (must be `ceil(pages/8)` bytes; bits past `pages` are ignored)
   */
  constructor(readonly pages: number, bits?: Uint8Array) {
    if (!Number.isSafeInteger(pages) || pages < 0) throw new SnapshotError('BAD_ARGUMENT', `page count ${pages} is not a non-negative integer`);
    const len = Math.ceil(pages / 8);
    if (bits && bits.length !== len) {
      throw new SnapshotError('BAD_ARGUMENT', `a bitmap of ${pages} pages is ${len} bytes, got ${bits.length}`);
    }
    this.bits = bits ?? new Uint8Array(len);
    // Bits past the last page would name pages that do not exist.
    if (pages % 8 !== 0 && len > 0) this.bits[len - 1] &= (1 << (pages % 8)) - 1;
  }

  /** A bitmap for a buffer of `bytes` bytes (rounded up to whole pages). */
  static forBytes(bytes: number): PageBitmap {
    return new PageBitmap(Math.ceil(bytes / SNAPSHOT_PAGE_SIZE));
  }

  /** Whether page `i` is set. */
  has(i: number): boolean {
    return i >= 0 && i < this.pages && ((this.bits[i >>> 3] >>> (i & 7)) & 1) === 1;
  }

  /** Sets page `i`. */
  set(i: number): void {
    if (i >= 0 && i < this.pages) this.bits[i >>> 3] |= 1 << (i & 7);
  }

  /** Sets every page that `[byteOffset, byteOffset+length)` touches (clipped to the buffer). */
  markBytes(byteOffset: number, length: number): void {
    if (!(length > 0)) return;
    const first = Math.max(0, Math.floor(byteOffset / SNAPSHOT_PAGE_SIZE));
    const last = Math.min(this.pages - 1, Math.floor((byteOffset + length - 1) / SNAPSHOT_PAGE_SIZE));
    for (let p = first; p <= last; p++) this.bits[p >>> 3] |= 1 << (p & 7);
  }

  /**
   * ORs in a slot's dirty log (from `NativeVm.getDirtyLog`) whose first page is page
   * `firstPage` of this buffer.
   */
  orAt(firstPage: number, log: Uint8Array, logPages: number): void {
    if (firstPage % 8 === 0) {
      const base = firstPage / 8;
      const n = Math.min(Math.ceil(logPages / 8), this.bits.length - base);
      for (let i = 0; i < n; i++) this.bits[base + i] |= log[i];
      // A log whose page count is not a multiple of 8 has no bits past its end (KVM zero-fills).
    } else {
      for (let i = 0; i < logPages; i++) if ((log[i >>> 3] >>> (i & 7)) & 1) this.set(firstPage + i);
    }
    if (this.pages % 8 !== 0 && this.bits.length > 0) this.bits[this.bits.length - 1] &= (1 << (this.pages % 8)) - 1;
  }

  /** ORs in another bitmap of the same size. */
  or(other: PageBitmap): void {
    if (other.pages !== this.pages) throw new SnapshotError('BAD_ARGUMENT', `bitmaps of ${this.pages} and ${other.pages} pages`);
    for (let i = 0; i < this.bits.length; i++) this.bits[i] |= other.bits[i];
  }

  /** Clears every page. */
  clear(): void {
    this.bits.fill(0);
  }

  /** How many pages are set. */
  count(): number {
    let n = 0;
    for (const b of this.bits) {
      let v = b;
      while (v) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }

  /** The set pages as sorted, non-adjacent runs. */
  toRanges(): PageRange[] {
    const out: PageRange[] = [];
    let start = -1;
    for (let i = 0; i < this.pages; i++) {
      const byte = this.bits[i >>> 3];
      if (byte === 0 && (i & 7) === 0 && start < 0) {
        i += 7;  // skip a clear byte at once
        continue;
      }
      const on = ((byte >>> (i & 7)) & 1) === 1;
      if (on && start < 0) start = i;
      if (!on && start >= 0) {
        out.push([start, i - start]);
        start = -1;
      }
    }
    if (start >= 0) out.push([start, this.pages - start]);
    return out;
  }

  /**
   * The bitmap for `ranges`.
   * @throws SnapshotError BAD_STATE when a range is malformed, unsorted, overlapping or outside `pages`
   */
  static fromRanges(pages: number, ranges: readonly PageRange[]): PageBitmap {
    const bm = new PageBitmap(pages);
    let end = 0;
    for (const [i, r] of ranges.entries()) {
      const ok = Array.isArray(r) && r.length === 2 && Number.isSafeInteger(r[0]) && Number.isSafeInteger(r[1]) &&
        r[0] >= end && r[1] > 0 && r[0] + r[1] <= pages;
      if (!ok) {
        throw new SnapshotError('BAD_STATE', `dirty page range ${i} (${JSON.stringify(r)}) is malformed, unsorted or outside ${pages} pages`, {
          field: `memory.dirtyPages[${i}]`,
        });
      }
      for (let p = r[0]; p < r[0] + r[1]; p++) bm.bits[p >>> 3] |= 1 << (p & 7);
      end = r[0] + r[1];
    }
    return bm;
  }
}

/** A KVM memory slot and where its pages start in the memory buffer. */
export interface SlotPages {
  /** KVM slot number. */
  slot: number;
  /** Byte offset of the slot's first byte in the memory buffer (a multiple of 4096). */
  byteOffset: number;
  /** Slot size in bytes. */
  size: number;
}

/**
 * Collects (and thereby clears) KVM's dirty logs of `slots` into one bitmap of the memory buffer.
 * @param memoryBytes size of the memory buffer the slots are carved from
 */
export function collectDirtyLogs(vm: NativeVm, slots: readonly SlotPages[], memoryBytes: number): PageBitmap {
  const bm = PageBitmap.forBytes(memoryBytes);
  for (const s of slots) {
    if (s.byteOffset % SNAPSHOT_PAGE_SIZE !== 0) {
      throw new SnapshotError('BAD_ARGUMENT', `slot ${s.slot} starts at byte ${s.byteOffset}, not on a page boundary`);
    }
    const log = vm.getDirtyLog(s.slot);
    bm.orAt(s.byteOffset / SNAPSHOT_PAGE_SIZE, log, Math.ceil(s.size / SNAPSHOT_PAGE_SIZE));
  }
  return bm;
}
