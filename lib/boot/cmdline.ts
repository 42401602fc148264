/**
 * Kernel command line builder.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { BootError } from './errors';
import { CMDLINE_MAX_SIZE } from './layout';

const PRINTABLE_MIN = 0x20;
const PRINTABLE_MAX = 0x7e;

/** A kernel command line: space-separated tokens of printable ASCII, bounded in size. */
export class Cmdline {
  /** Largest size in bytes, including the terminating NUL. */
  readonly maxSize: number;
  private text = '';

  /**
   * @param maxSize largest size including the NUL; defaults to {@link CMDLINE_MAX_SIZE}
   * @param initial tokens to append right away
   */
  constructor(maxSize: number = CMDLINE_MAX_SIZE, initial?: string) {
    if (!Number.isSafeInteger(maxSize) || maxSize < 1) {
      throw new BootError('BAD_CMDLINE', `command line size limit ${maxSize} is not a positive integer`);
    }
    this.maxSize = maxSize;
    if (initial !== undefined && initial.trim() !== '') this.append(initial.trim());
  }

  /**
   * Appends `token` (separated by one space). The token may itself contain spaces, e.g.
   * `"a=1 b=2"`, but only printable ASCII.
   * @throws BootError BAD_CMDLINE (empty or non-printable), CMDLINE_TOO_LONG
   */
  append(token: string): this {
    if (token.length === 0) throw new BootError('BAD_CMDLINE', 'empty command line token');
    for (let i = 0; i < token.length; i++) {
      const c = token.charCodeAt(i);
      if (c < PRINTABLE_MIN || c > PRINTABLE_MAX) {
        throw new BootError('BAD_CMDLINE', `command line token ${JSON.stringify(token)} has a non-printable or non-ASCII character at ${i} (code ${c})`);
      }
    }
    const next = this.text === '' ? token : `${this.text} ${token}`;
    if (next.length + 1 > this.maxSize) {
      throw new BootError('CMDLINE_TOO_LONG', `command line would be ${next.length + 1} bytes including its NUL; the limit is ${this.maxSize}`);
    }
    this.text = next;
    return this;
  }

  /** Appends each token in order. */
  appendAll(tokens: Iterable<string>): this {
    for (const t of tokens) this.append(t);
    return this;
  }

  /** Length in bytes, without the NUL. */
  get length(): number {
    return this.text.length;
  }

  /** The command line text. */
  toString(): string {
    return this.text;
  }

  /** The command line as NUL-terminated bytes. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.text.length + 1);
    for (let i = 0; i < this.text.length; i++) out[i] = this.text.charCodeAt(i);
    return out;
  }

  /**
   * A copy with a different size limit (e.g. a bzImage's lower `cmdline_size`).
   * @throws BootError CMDLINE_TOO_LONG when the current text does not fit
   */
  withMaxSize(maxSize: number): Cmdline {
    const c = new Cmdline(maxSize);
    if (this.text !== '') c.append(this.text);
    return c;
  }
}

/**
 * Writes the NUL-terminated command line at `addr`.
 * @throws MemoryError when it does not fit in guest memory
 */
export function writeCmdline(mem: GuestMemory, addr: number, cmdline: Cmdline): void {
  mem.write(addr, cmdline.toBytes());
}
