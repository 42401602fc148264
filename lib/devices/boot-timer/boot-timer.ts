/**
 * The boot timer: a one-register MMIO device a guest writes to when it has booted (Firecracker's
 * `--boot-timer`; its guest init writes the byte {@link BOOT_TIMER_MAGIC} through /dev/mem at
 * {@link BOOT_TIMER_MMIO_BASE}). The device reports the time since it started counting through
 * `onBootDone`, which the machine turns into a `'bootDone'` event.
 *
 * Only a one-byte write of the magic value at offset 0 counts, as in Firecracker; every other
 * access is ignored (reads return 0) and counted. Each signal is reported, not just the first:
 * a guest that reboots, or a restored one, may signal again.
 *
 * A saved state holds the counters but not the start time: a monotonic clock reading means
 * nothing in another process. A restored boot timer measures from when it was constructed,
 * i.e. from the restore.
 * @module
 */
import type { BusDevice } from '../../bus';
import { DeviceError, stateField, type Device, type StateObject } from '../contract';
import { BOOT_TIMER_MAGIC, BOOT_TIMER_SIGNAL_OFFSET, BOOT_TIMER_STATE_VERSION } from './constants';

/** What the guest's boot-complete signal reports. */
export interface BootDoneInfo {
  /** Nanoseconds from the start of counting (construction, or {@link BootTimerOptions.startNs}) to the signal. */
  elapsedNs: bigint;
  /** The same in microseconds (Firecracker logs microseconds). */
  elapsedUs: number;
  /** How many times the guest has signalled, this one included. */
  count: number;
}

/** Effects and options of a {@link BootTimer}. */
export interface BootTimerOptions {
  /** Device id (default `'boot-timer'`). */
  id?: string;
  /** A monotonic clock in nanoseconds (e.g. `process.hrtime.bigint`). */
  clock: () => bigint;
  /** When counting started, on `clock`'s scale (default: `clock()` at construction). */
  startNs?: bigint;
  /**
   * The guest signalled boot completion. Called synchronously inside the guest's MMIO write; an
   * exception thrown here is caught and counted, never passed to the guest's exit handler.
   */
  onBootDone: (info: BootDoneInfo) => void;
}

/** Counters of a {@link BootTimer}. */
export interface BootTimerMetrics {
  /** Boot-complete signals received. */
  signals: number;
  /** Accesses that were not a one-byte magic write at offset 0 (reads included). */
  ignoredAccesses: number;
  /** Microseconds reported by the last signal (0 before the first). */
  lastBootTimeUs: number;
  /** onBootDone callbacks that threw. */
  callbackErrors: number;
}

/** Firecracker's boot-timer pseudo device; see the module notes. */
export class BootTimer implements Device<BootTimerMetrics>, BusDevice {
  /** Device id. */
  readonly id: string;
  /** Device kind. */
  readonly kind = 'boot-timer';
  /** Saved-state format version. */
  readonly stateVersion = BOOT_TIMER_STATE_VERSION;

  private readonly clock: () => bigint;
  private readonly onBootDone: (info: BootDoneInfo) => void;
  private readonly startNs: bigint;
  private counters: BootTimerMetrics = { signals: 0, ignoredAccesses: 0, lastBootTimeUs: 0, callbackErrors: 0 };
  private closed = false;

  /** @param opts clock, start time and the boot-done effect */
  constructor(opts: BootTimerOptions) {
    this.id = opts.id ?? 'boot-timer';
    this.clock = opts.clock;
    this.onBootDone = opts.onBootDone;
    this.startNs = opts.startNs ?? opts.clock();
  }

  /** A guest read: the device has no readable register. */
  read(_offset: number, _size: number): number {
    this.counters.ignoredAccesses++;
    return 0;
  }

  /** A guest write: a one-byte {@link BOOT_TIMER_MAGIC} at offset 0 signals boot completion. */
  write(offset: number, size: number, value: number): void {
    if (this.closed || offset !== BOOT_TIMER_SIGNAL_OFFSET || size !== 1 || (value & 0xff) !== BOOT_TIMER_MAGIC) {
      this.counters.ignoredAccesses++;
      return;
    }
    const elapsed = this.clock() - this.startNs;
    const elapsedNs = elapsed > 0n ? elapsed : 0n;
    const elapsedUs = Number(elapsedNs / 1000n);
    this.counters.signals++;
    this.counters.lastBootTimeUs = elapsedUs;
    try {
      this.onBootDone({ elapsedNs, elapsedUs, count: this.counters.signals });
    } catch {
      // The guest's write must not fail because of what the host does with the news.
      this.counters.callbackErrors++;
    }
  }

  /** Counter snapshot. */
  metrics(): BootTimerMetrics {
    return { ...this.counters };
  }

  /** The counters (not the start time: see the module notes). */
  saveState(): StateObject {
    return { ...this.counters };
  }

  /** Continues the counters of a saved boot timer. */
  restoreState(state: StateObject): void {
    const max = Number.MAX_SAFE_INTEGER;
    let next: BootTimerMetrics;
    try {
      next = {
        signals: stateField.int(state, 'signals', 0, max),
        ignoredAccesses: stateField.int(state, 'ignoredAccesses', 0, max),
        lastBootTimeUs: stateField.int(state, 'lastBootTimeUs', 0, max),
        callbackErrors: stateField.int(state, 'callbackErrors', 0, max),
      };
    } catch (e) {
      throw new DeviceError('BAD_STATE', `boot timer ${this.id}: ${(e as Error).message}`, { cause: e });
    }
    this.counters = next;
  }

  /** Stops reporting signals. */
  async close(): Promise<void> {
    this.closed = true;
  }
}
