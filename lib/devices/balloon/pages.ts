/**
 * The set of guest pages in the balloon: a sparse bitmap of 4 KiB page frame numbers, in chunks
 * of 2^15 pages (128 MiB of guest memory, 4 KiB of bitmap) allocated on first use, so its size
 * follows what was inflated and never exceeds guest memory / 32768.
 * @module
 */

const CHUNK_SHIFT = 15;
const CHUNK_PAGES = 1 << CHUNK_SHIFT;
const CHUNK_MASK = CHUNK_PAGES - 1;

/** A set of page frame numbers; see the module comment. */
export class PageSet {
  private readonly chunks = new Map<number, Uint8Array>();
  private count = 0;

  /** Pages in the set. */
  get size(): number {
    return this.count;
  }

  /** Whether `pfn` is in the set. */
  has(pfn: number): boolean {
    const c = this.chunks.get(Math.floor(pfn / CHUNK_PAGES));
    if (c === undefined) return false;
    const i = pfn & CHUNK_MASK;
    return (c[i >> 3] & (1 << (i & 7))) !== 0;
  }

  /** Adds `pfn`; returns false if it was already there. */
  add(pfn: number): boolean {
    const key = Math.floor(pfn / CHUNK_PAGES);
    let c = this.chunks.get(key);
    if (c === undefined) {
      c = new Uint8Array(CHUNK_PAGES / 8);
      this.chunks.set(key, c);
    }
    const i = pfn & CHUNK_MASK;
    const bit = 1 << (i & 7);
    if ((c[i >> 3] & bit) !== 0) return false;
    c[i >> 3] |= bit;
    this.count++;
    return true;
  }

  /** Removes `pfn`; returns false if it was not there. */
  delete(pfn: number): boolean {
    const key = Math.floor(pfn / CHUNK_PAGES);
    const c = this.chunks.get(key);
    if (c === undefined) return false;
    const i = pfn & CHUNK_MASK;
    const bit = 1 << (i & 7);
    if ((c[i >> 3] & bit) === 0) return false;
    c[i >> 3] &= ~bit;
    this.count--;
    return true;
  }

  /** Empties the set. */
  clear(): void {
    this.chunks.clear();
    this.count = 0;
  }

  /** The set as sorted `[firstPfn, pageCount]` runs (compact for saving). */
  ranges(): [number, number][] {
    const out: [number, number][] = [];
    const keys = [...this.chunks.keys()].sort((a, b) => a - b);
    let start = -1;
    let len = 0;
    for (const key of keys) {
      const c = this.chunks.get(key)!;
      for (let byte = 0; byte < c.length; byte++) {
        const v = c[byte];
        if (v === 0 && start < 0) continue;
        for (let b = 0; b < 8; b++) {
          const pfn = key * CHUNK_PAGES + byte * 8 + b;
          if ((v & (1 << b)) !== 0) {
            if (start >= 0 && start + len === pfn) len++;
            else {
              if (start >= 0) out.push([start, len]);
              start = pfn;
              len = 1;
            }
          }
        }
      }
    }
    if (start >= 0) out.push([start, len]);
    return out;
  }
}
