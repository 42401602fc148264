/**
 * The boot-timer device: Firecracker's magic byte at offset 0 reports the time since the device
 * started counting (injected clock); everything else is ignored; counters survive save/restore.
 */
import fc from 'fast-check';

import { IoBus } from '../../lib/bus';
import { DeviceError } from '../../lib/devices/contract';
import {
  BOOT_TIMER_MAGIC,
  BOOT_TIMER_MMIO_BASE,
  BOOT_TIMER_WINDOW_LEN,
  BootTimer,
  type BootDoneInfo,
} from '../../lib/devices/boot-timer';

function make(startNs = 1_000_000n) {
  let now = startNs;
  const done: BootDoneInfo[] = [];
  const timer = new BootTimer({ clock: () => now, onBootDone: (i) => done.push(i) });
  return { timer, done, advance: (ns: bigint) => { now += ns; } };
}

describe('BootTimer', () => {
  it("has Firecracker's guest-visible contract", () => {
    expect(BOOT_TIMER_MAGIC).toBe(123);
    expect(BOOT_TIMER_MMIO_BASE).toBe(0xd0000000);
    expect(BOOT_TIMER_WINDOW_LEN).toBe(0x1000);
  });

  it('reports the time from construction to the magic write, through the MMIO bus', () => {
    const { timer, done, advance } = make();
    const bus = new IoBus();
    bus.insert(BOOT_TIMER_MMIO_BASE, BOOT_TIMER_WINDOW_LEN, timer);
    advance(1_234_567_890n);
    bus.write(BOOT_TIMER_MMIO_BASE, 1, BOOT_TIMER_MAGIC);
    expect(done).toEqual([{ elapsedNs: 1_234_567_890n, elapsedUs: 1_234_567, count: 1 }]);
    advance(1000n);
    bus.write(BOOT_TIMER_MMIO_BASE, 1, BOOT_TIMER_MAGIC);
    expect(done[1]).toEqual({ elapsedNs: 1_234_568_890n, elapsedUs: 1_234_568, count: 2 });
    expect(timer.metrics()).toEqual({ signals: 2, ignoredAccesses: 0, lastBootTimeUs: 1_234_568, callbackErrors: 0 });
  });

  it('counts from startNs when given', () => {
    const done: BootDoneInfo[] = [];
    const t = new BootTimer({ clock: () => 5_000n, startNs: 1_000n, onBootDone: (i) => done.push(i) });
    t.write(0, 1, BOOT_TIMER_MAGIC);
    expect(done[0].elapsedNs).toBe(4_000n);
  });

  it('ignores anything but a one-byte magic write at offset 0, and reads 0 (property)', () => {
    fc.assert(
      fc.property(fc.nat(BOOT_TIMER_WINDOW_LEN - 1), fc.constantFrom(1, 2, 4), fc.nat(0xffffffff), (offset, size, value) => {
        const { timer, done } = make();
        timer.write(offset, size, value);
        const signal = offset === 0 && size === 1 && (value & 0xff) === BOOT_TIMER_MAGIC;
        expect(done.length).toBe(signal ? 1 : 0);
        expect(timer.read(offset, size)).toBe(0);
        expect(timer.metrics().ignoredAccesses).toBe(signal ? 1 : 2);
      }),
      { numRuns: 500 },
    );
  });

  it('a throwing onBootDone is counted, not passed to the guest', () => {
    const t = new BootTimer({ clock: () => 0n, onBootDone: () => { throw new Error('host bug'); } });
    expect(() => t.write(0, 1, BOOT_TIMER_MAGIC)).not.toThrow();
    expect(t.metrics()).toMatchObject({ signals: 1, callbackErrors: 1 });
  });

  it('a clock that goes backwards reports zero, not a negative time', () => {
    let now = 10n;
    const done: BootDoneInfo[] = [];
    const t = new BootTimer({ clock: () => now, onBootDone: (i) => done.push(i) });
    now = 5n;
    t.write(0, 1, BOOT_TIMER_MAGIC);
    expect(done[0]).toMatchObject({ elapsedNs: 0n, elapsedUs: 0 });
  });

  it('saves and restores its counters; a restored timer measures from its own start', () => {
    const a = make();
    a.advance(2_000_000n);
    a.timer.write(0, 1, BOOT_TIMER_MAGIC);
    a.timer.read(0, 4);
    const state = JSON.parse(JSON.stringify(a.timer.saveState()));
    const b = make(50_000_000n);
    expect(b.timer.stateVersion).toBe(1);
    expect(b.timer.kind).toBe('boot-timer');
    b.timer.restoreState(state);
    expect(b.timer.metrics()).toEqual(a.timer.metrics());
    b.advance(3000n);
    b.timer.write(0, 1, BOOT_TIMER_MAGIC);
    expect(b.done).toEqual([{ elapsedNs: 3000n, elapsedUs: 3, count: 2 }]);
  });

  it('refuses a bad state with BAD_STATE and keeps its counters', () => {
    const { timer } = make();
    timer.write(0, 1, BOOT_TIMER_MAGIC);
    for (const bad of [{}, { signals: -1, ignoredAccesses: 0, lastBootTimeUs: 0, callbackErrors: 0 }, { signals: 'x' }]) {
      let err: unknown;
      try {
        timer.restoreState(bad as never);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DeviceError);
      expect(err).toMatchObject({ code: 'BAD_STATE' });
    }
    expect(timer.metrics().signals).toBe(1);
  });

  it('reports nothing after close', async () => {
    const { timer, done } = make();
    await timer.close();
    timer.write(0, 1, BOOT_TIMER_MAGIC);
    expect(done).toEqual([]);
    expect(timer.metrics().ignoredAccesses).toBe(1);
  });
});
