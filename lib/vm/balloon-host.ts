/**
 * The balloon device's host services: releasing guest pages with the addon's `discardMemory`
 * (madvise MADV_DONTNEED on the guest RAM mapping) and the global timers.
 * @module
 */
import type { BalloonHost } from '../devices/balloon/host';
import type { GuestMemory } from '../memory/guest-memory';
import type { NativeAddon } from '../native/types';

/**
 * A {@link BalloonHost} over `memory` (whose regions alias the VM's mapping). A range is split at
 * region boundaries, so each madvise stays inside one buffer; NativeError (ioctl 'madvise', errno)
 * and RangeError propagate to the device, which counts them.
 */
export function createBalloonHost(memory: GuestMemory, addon: Pick<NativeAddon, 'discardMemory'>): BalloonHost {
  return {
    discard(guestAddr: number, length: number): void {
      let addr = guestAddr;
      const end = guestAddr + length;
      while (addr < end) {
        const r = memory.regions.find((x) => addr >= x.guestAddr && addr < x.guestAddr + x.size);
        if (r === undefined) throw new RangeError(`guest address 0x${addr.toString(16)} is not in guest memory`);
        const n = Math.min(end, r.guestAddr + r.size) - addr;
        addon.discardMemory(r.buffer, r.byteOffset + (addr - r.guestAddr), n);
        addr += n;
      }
    },
    timers: {
      setTimeout: (cb, ms) => setTimeout(cb, ms),
      clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
    },
  };
}
