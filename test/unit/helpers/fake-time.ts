import type { TimerFunctions } from '../../../lib/ratelimit/rate-limiter';

/** Nanoseconds per millisecond. */
export const MS = 1_000_000n;

/**
 * A fake monotonic clock with fake timers: time moves only when the test says, and due timers
 * fire in order, each at its own due time.
 */
export class FakeTime implements TimerFunctions {
  now: bigint;
  private nextId = 1;
  timers = new Map<number, { due: bigint; cb: () => void }>();
  /** Delays of every setTimeout call, in ms. */
  armed: number[] = [];
  clock = (): bigint => this.now;

  /** @param startMs where the clock starts (not zero, so nothing depends on the epoch). */
  constructor(startMs = 1_000) {
    this.now = BigInt(startMs) * MS;
  }

  setTimeout(cb: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.armed.push(ms);
    this.timers.set(id, { due: this.now + BigInt(ms) * MS, cb });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time forward by `ns`, firing due timers in order at their due time. */
  advanceNs(ns: bigint): void {
    const end = this.now + ns;
    for (;;) {
      let first: [number, { due: bigint; cb: () => void }] | undefined;
      for (const e of this.timers) if (e[1].due <= end && (!first || e[1].due < first[1].due)) first = e;
      if (!first) break;
      this.timers.delete(first[0]);
      if (first[1].due > this.now) this.now = first[1].due;
      first[1].cb();
    }
    this.now = end;
  }

  /** Moves time forward by `ms`. */
  advance(ms: number): void {
    this.advanceNs(BigInt(ms) * MS);
  }
}
