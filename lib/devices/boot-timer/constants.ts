/**
 * Constants of the boot-timer device: Firecracker's guest-visible contract, so that guest images
 * and init programs written for Firecracker's `--boot-timer` work unchanged.
 * @module
 */

/**
 * Guest physical address of the boot timer's MMIO window: the first page of the 32-bit MMIO gap
 * (Firecracker up to 1.12 on x86_64, whose gap starts at 4 GiB - 768 MiB as Kindling's does,
 * places the boot timer there, before any virtio device). Firecracker 1.13 moved its gap to
 * 3 GiB and the boot timer with it to 0xC000_0000, which is RAM in Kindling's layout for guests
 * over 3 GiB; guests built for 1.13 must be told this address instead.
 */
export const BOOT_TIMER_MMIO_BASE = 0xd000_0000;
/** Size of the window (Firecracker's MMIO_LEN). */
export const BOOT_TIMER_WINDOW_LEN = 0x1000;
/** The byte a guest writes at offset 0 of the window when it has booted (Firecracker's MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE). */
export const BOOT_TIMER_MAGIC = 123;
/** The only register: a one-byte write here with {@link BOOT_TIMER_MAGIC} signals boot completion. */
export const BOOT_TIMER_SIGNAL_OFFSET = 0;
/** Version of the boot timer's saved state. */
export const BOOT_TIMER_STATE_VERSION = 1;
