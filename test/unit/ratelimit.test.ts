import fc from 'fast-check';
import { RateLimiter, RateLimitError, TokenBucket } from '../../lib/ratelimit';
import { FakeTime, MS } from './helpers/fake-time';


/** A fake monotonic clock plus a fake timer queue driven by it. */

describe('TokenBucket', () => {
  let t: FakeTime;
  beforeEach(() => {
    t = new FakeTime();
  });

  test('starts full and refuses one token more', () => {
    const b = new TokenBucket({ size: 1000, refillTime: 1000 }, t.clock);
    expect(b.budget).toBe(1000);
    expect(b.reduce(1000).kind).toBe('success');
    const r = b.reduce(1);
    expect(r.kind).toBe('failure');
    expect(b.budget).toBe(0);
  });

  test('refills in proportion to elapsed time and reports the exact wait', () => {
    const b = new TokenBucket({ size: 1000, refillTime: 1000 }, t.clock); // 1 token per ms
    expect(b.reduce(1000).kind).toBe('success');
    t.advance(100);
    expect(b.reduce(100).kind).toBe('success');
    const r = b.reduce(50);
    expect(r).toEqual({ kind: 'failure', waitNs: 50n * MS });
    t.advance(49);
    expect(b.reduce(50).kind).toBe('failure');
    t.advance(1);
    expect(b.reduce(50).kind).toBe('success');
  });

  test('failure wait accounts for the carried fraction', () => {
    const b = new TokenBucket({ size: 3, refillTime: 1 }, t.clock); // one token per 333,333.3 ns
    b.reduce(3);
    t.advanceNs(500_000n); // 1.5 tokens worth
    const r = b.reduce(2); // 1 token in hand + 0.5 carried; needs 0.5 token = 166,666.67 ns
    expect(r).toEqual({ kind: 'failure', waitNs: 166_667n });
    t.advanceNs(166_666n);
    expect(b.reduce(2).kind).toBe('failure');
    t.advanceNs(1n);
    expect(b.reduce(2).kind).toBe('success');
  });

  test('never exceeds its size', () => {
    const b = new TokenBucket({ size: 500, refillTime: 100 }, t.clock);
    b.reduce(200);
    t.advance(10_000);
    b.replenish();
    expect(b.budget).toBe(500);
    expect(b.reduce(501).kind).toBe('overConsumption');
  });

  test('many tiny steps carry fractions without drift (exact)', () => {
    // 7 tokens per 3 ms: a token every 428,571.43 ns. Drain, then drain again at every 1 µs
    // step for 1 s (a full bucket banks no time, so it is drained before the clock moves).
    const b = new TokenBucket({ size: 7, refillTime: 3 }, t.clock);
    expect(b.reduce(7).kind).toBe('success');
    let granted = 7;
    const steps = 1_000_000;
    for (let i = 0; i < steps; i++) {
      t.now += 1_000n;
      b.replenish();
      const n = b.budget;
      if (n > 0) {
        expect(b.reduce(n).kind).toBe('success');
        granted += n;
      }
    }
    // Initial fill (7) plus exactly floor(1 s * 7 / 3 ms) = 2333.
    expect(granted).toBe(7 + 2333);
  });

  test('property: drained bucket yields exactly size + floor(elapsed*size/refill)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1_000_000_000 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.array(fc.bigInt({ min: 1n, max: 5_000_000n }), { minLength: 1, maxLength: 200 }),
        (size, refillTime, stepsRaw) => {
          const time = new FakeTime();
          const b = new TokenBucket({ size, refillTime }, time.clock);
          const refillNs = BigInt(refillTime) * MS;
          // Keep each step below a full refill so the cap never discards time.
          const limit = (refillNs * BigInt(Math.max(size - 1, 1))) / BigInt(size) / 2n + 1n;
          let granted = BigInt(b.budget);
          b.reduce(b.budget);
          let elapsed = 0n;
          for (const s0 of stepsRaw) {
            const s = s0 % limit || 1n;
            time.now += s;
            elapsed += s;
            b.replenish();
            const n = b.budget;
            if (n > 0) {
              b.reduce(n);
              granted += BigInt(n);
            }
          }
          return granted === BigInt(size) + (elapsed * BigInt(size)) / refillNs;
        },
      ),
      { numRuns: 200 },
    );
  });

  test('one-time burst is spent first and never refills', () => {
    const b = new TokenBucket({ size: 100, oneTimeBurst: 50, refillTime: 100 }, t.clock);
    expect(b.reduce(30).kind).toBe('success');
    expect(b.oneTimeBurst).toBe(20);
    expect(b.budget).toBe(100);
    // 20 from the burst, 10 from the budget.
    expect(b.reduce(30).kind).toBe('success');
    expect(b.oneTimeBurst).toBe(0);
    expect(b.budget).toBe(90);
    t.advance(100_000);
    b.replenish();
    expect(b.oneTimeBurst).toBe(0);
    expect(b.budget).toBe(100);
    expect(b.reduce(101).kind).toBe('overConsumption');
  });

  test('oversized request is granted, empties the bucket and blocks for the proportional time', () => {
    const b = new TokenBucket({ size: 1000, refillTime: 100 }, t.clock);
    const r = b.reduce(3500);
    expect(r).toEqual({ kind: 'overConsumption', ratio: 2.5, blockNs: 250n * MS });
    expect(b.budget).toBe(0);
    // As in Firecracker the bucket keeps refilling while the caller blocks: 10 ms make 100 tokens,
    // and after the whole 250 ms block it is full again.
    t.advance(10);
    b.replenish();
    expect(b.budget).toBe(100);
    t.advance(240);
    b.replenish();
    expect(b.budget).toBe(1000);
  });

  test('size or refillTime 0 disables the bucket', () => {
    for (const cfg of [{ size: 0, refillTime: 100 }, { size: 100, refillTime: 0 }]) {
      const b = new TokenBucket(cfg, t.clock);
      expect(b.enabled).toBe(false);
      for (let i = 0; i < 10; i++) expect(b.reduce(1e12).kind).toBe('success');
    }
  });

  test('forceReplenish returns tokens to the burst first, then the budget, capped', () => {
    const b = new TokenBucket({ size: 100, oneTimeBurst: 10, refillTime: 1000 }, t.clock);
    b.reduce(5);
    b.forceReplenish(50);
    expect(b.oneTimeBurst).toBe(10);
    b.reduce(60);
    expect(b.budget).toBe(50);
    b.forceReplenish(20);
    expect(b.budget).toBe(70);
    b.forceReplenish(1000);
    expect(b.budget).toBe(100);
  });

  test('bad configuration and token counts are refused', () => {
    const bad = [
      { size: -1, refillTime: 100 },
      { size: 10, refillTime: NaN },
      { size: Infinity, refillTime: 100 },
      { size: 10, refillTime: 100, oneTimeBurst: -5 },
      { size: 1.5, refillTime: 100 },
    ];
    for (const cfg of bad) {
      expect(() => new TokenBucket(cfg, t.clock)).toThrow(RateLimitError);
      try {
        new TokenBucket(cfg, t.clock);
      } catch (e) {
        expect((e as RateLimitError).code).toBe('BAD_CONFIG');
      }
    }
    const b = new TokenBucket({ size: 10, refillTime: 10 }, t.clock);
    expect(() => b.reduce(-1)).toThrow(expect.objectContaining({ code: 'BAD_TOKENS' }));
    expect(() => b.reduce(NaN)).toThrow(RateLimitError);
  });
});

describe('RateLimiter', () => {
  let t: FakeTime;
  beforeEach(() => {
    t = new FakeTime();
  });
  const make = (cfg: ConstructorParameters<typeof RateLimiter>[0], onUnblocked?: () => void) =>
    new RateLimiter(cfg, { clock: t.clock, timers: t, onUnblocked });

  test('no config means no limits', () => {
    const rl = make({});
    expect(rl.enabled).toBe(false);
    for (let i = 0; i < 100; i++) expect(rl.consume(1e9, 'bytes')).toBe(true);
    expect(rl.consume(1, 'ops')).toBe(true);
    expect(t.armed).toEqual([]);
  });

  test('a failed consume arms one timer for the exact wait, which unblocks and calls back', () => {
    const onUnblocked = jest.fn();
    const rl = make({ ops: { size: 10, refillTime: 1000 } }, onUnblocked); // 1 op per 100 ms
    for (let i = 0; i < 10; i++) expect(rl.consume(1, 'ops')).toBe(true);
    expect(rl.consume(1, 'ops')).toBe(false);
    expect(rl.isBlocked()).toBe(true);
    // Further consumes fail without arming again, even for the other (unlimited) kind.
    expect(rl.consume(1, 'ops')).toBe(false);
    expect(rl.consume(1, 'bytes')).toBe(false);
    expect(t.armed).toEqual([100]);
    t.advance(99);
    expect(onUnblocked).not.toHaveBeenCalled();
    expect(rl.isBlocked()).toBe(true);
    t.advance(1);
    expect(onUnblocked).toHaveBeenCalledTimes(1);
    expect(rl.isBlocked()).toBe(false);
    expect(rl.consume(1, 'ops')).toBe(true);
    expect(rl.metrics()).toMatchObject({ throttled: 3, timerFires: 1, opsGranted: 11 });
  });

  test('oversized consume is granted and blocks for ratio * refillTime', () => {
    const onUnblocked = jest.fn();
    const rl = make({ bandwidth: { size: 1000, refillTime: 10 } }, onUnblocked);
    expect(rl.consume(5000, 'bytes')).toBe(true); // 4000 over = 4 refills = 40 ms
    expect(rl.isBlocked()).toBe(true);
    expect(t.armed).toEqual([40]);
    expect(rl.consume(1, 'bytes')).toBe(false);
    t.advance(40);
    expect(onUnblocked).toHaveBeenCalledTimes(1);
    expect(rl.metrics().overConsumptions).toBe(1);
  });

  test('sustained oversized requests follow Firecracker: each blocks for its excess over the budget', () => {
    const rl = make({ bandwidth: { size: 1000, refillTime: 10 } });
    let bytes = 0;
    rl.onUnblocked = () => {
      while (rl.consume(2500, 'bytes')) bytes += 2500;
    };
    rl.onUnblocked();
    t.advance(10_000);
    // Each 2500-byte request finds a full bucket (1000), blocks for (2500-1000)/1000 × 10 ms = 15 ms,
    // during which the bucket refills to full again: 2500 bytes per 15 ms over 10 s.
    const expected = 2500 * Math.floor(10_000 / 15);
    expect(bytes).toBeGreaterThanOrEqual(expected);
    expect(bytes).toBeLessThanOrEqual(expected + 2 * 2500);
  });

  test('manualReplenish undoes a consume', () => {
    const rl = make({ ops: { size: 2, refillTime: 1000 } });
    expect(rl.consume(1, 'ops')).toBe(true);
    expect(rl.consume(1, 'ops')).toBe(true);
    rl.manualReplenish(1, 'ops');
    expect(rl.consume(1, 'ops')).toBe(true);
    expect(rl.consume(1, 'ops')).toBe(false);
  });

  test('throughput under a steady stream of requests matches size/refillTime', () => {
    const rl = make({ bandwidth: { size: 64 * 1024, refillTime: 100 } });
    let bytes = 0;
    let wakeups = 0;
    const pump = () => {
      wakeups++;
      while (rl.consume(4096, 'bytes')) bytes += 4096;
    };
    rl.onUnblocked = pump;
    pump();
    t.advance(5000);
    const expected = 64 * 1024 * 50 + 64 * 1024; // 50 refills + initial fill
    expect(Math.abs(bytes - expected) / expected).toBeLessThan(0.01);
    // One wakeup per 4 KiB, no spinning.
    expect(wakeups).toBeLessThanOrEqual(bytes / 4096 + 2);
  });

  test('update replaces given buckets with full ones, keeps omitted ones, disables with size 0', () => {
    const rl = make({ bandwidth: { size: 100, refillTime: 1000 }, ops: { size: 5, refillTime: 1000 } });
    expect(rl.consume(100, 'bytes')).toBe(true);
    expect(rl.consume(5, 'ops')).toBe(true);
    rl.update({ bandwidth: { size: 200, refillTime: 1000 } });
    expect(rl.bandwidth?.size).toBe(200);
    expect(rl.consume(200, 'bytes')).toBe(true);
    expect(rl.ops?.budget).toBe(0); // untouched
    rl.update({ ops: { size: 0, refillTime: 0 } });
    expect(rl.ops).toBeNull();
    expect(rl.consume(1000, 'ops')).toBe(true);
    expect(() => rl.update({ bandwidth: { size: -1, refillTime: 1 } })).toThrow(RateLimitError);
    expect(rl.bandwidth?.size).toBe(200);
  });

  test('update while blocked unblocks promptly through the callback', () => {
    const onUnblocked = jest.fn();
    const rl = make({ bandwidth: { size: 100, refillTime: 100_000 } }, onUnblocked);
    rl.consume(100, 'bytes');
    expect(rl.consume(50, 'bytes')).toBe(false);
    expect(t.armed).toEqual([50_000]);
    rl.update({ bandwidth: { size: 1000, refillTime: 100 } });
    expect(t.timers.size).toBe(1);
    t.advance(0);
    expect(onUnblocked).toHaveBeenCalledTimes(1);
    expect(rl.consume(1000, 'bytes')).toBe(true);
  });

  test('a throwing callback is contained and counted', () => {
    const rl = make({ ops: { size: 1, refillTime: 10 } }, () => {
      throw new Error('boom');
    });
    rl.consume(1, 'ops');
    rl.consume(1, 'ops');
    expect(() => t.advance(10)).not.toThrow();
    expect(rl.metrics().callbackErrors).toBe(1);
  });

  test('dispose cancels the timer', () => {
    const onUnblocked = jest.fn();
    const rl = make({ ops: { size: 1, refillTime: 10 } }, onUnblocked);
    rl.consume(1, 'ops');
    rl.consume(1, 'ops');
    rl.dispose();
    t.advance(100);
    expect(onUnblocked).not.toHaveBeenCalled();
    expect(rl.isBlocked()).toBe(false);
  });

  test('works with real timers and the real clock', async () => {
    // Only lower bounds on time: a loaded machine may be late, never early.
    // The timer may fire a little early (libuv arms it from a cached loop time); the limiter then
    // blocks again for the rest, so retry until the token exists.
    const t0 = performance.now();
    const rl = new RateLimiter({ ops: { size: 1, refillTime: 200 } });
    expect(rl.consume(1, 'ops')).toBe(true);
    let wakeups = 0;
    while (!rl.consume(1, 'ops')) {
      await new Promise<void>((resolve) => (rl.onUnblocked = resolve));
      wakeups++;
    }
    expect(wakeups).toBeGreaterThanOrEqual(1);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(199);
    rl.dispose();
  });

  test('bad config is refused with BAD_CONFIG', () => {
    expect(() => make({ ops: { size: 1, refillTime: -1 } })).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
    expect(() => make(null as never)).toThrow(RateLimitError);
  });
});
