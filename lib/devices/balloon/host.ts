/**
 * What the balloon device needs from the host: releasing guest pages to the host kernel, and
 * timers for the statistics interval. `lib/vm/balloon-host.ts` implements it with the addon's
 * `discardMemory` (madvise MADV_DONTNEED); tests record the calls.
 * @module
 */
import type { TimerFunctions } from '../../ratelimit';

/** Host operations of the balloon device. */
export interface BalloonHost {
  /**
   * Releases the host memory behind guest physical `[guestAddr, guestAddr+length)`: page-aligned,
   * inside guest memory (the device checks both). Afterwards the range reads as zeros and costs
   * no host memory until touched. A throw is counted by the device.
   */
  discard(guestAddr: number, length: number): void;
  /** Timers for the statistics interval. */
  timers: TimerFunctions;
}
