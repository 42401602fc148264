/**
 * Where the boot path puts things in guest physical memory (x86_64).
 *
 * Everything the loader writes lives below 1 MiB ({@link HIMEM_START}); kernels load at or above
 * it. The numbers follow the layout Firecracker uses, so guests that boot there boot here.
 * @module
 */

/** Global descriptor table. */
export const GDT_START = 0x500;
/** Interrupt descriptor table (one empty entry: the kernel installs its own before enabling interrupts). */
export const IDT_START = 0x520;
/** `struct boot_params`, the "zero page"; RSI points here at entry. */
export const ZERO_PAGE_START = 0x7000;
/** Size of `struct boot_params`. */
export const ZERO_PAGE_SIZE = 0x1000;
/** Initial stack pointer (RSP and RBP): top of the page below the page tables, 16-byte aligned. */
export const BOOT_STACK_POINTER = 0x8ff0;
/** Level-4 page map (CR3). */
export const PML4_START = 0x9000;
/** Page directory pointer table. */
export const PDPT_START = 0xa000;
/** First of the four page directories that map the first 4 GiB. */
export const PD_START = 0xb000;
/** Kernel command line. */
export const CMDLINE_START = 0x20000;
/** Largest command line we pass, including its terminating NUL (Linux's x86 COMMAND_LINE_SIZE). */
export const CMDLINE_MAX_SIZE = 2048;
/** Extended BIOS data area: holds the MP table. */
export const EBDA_START = 0x9fc00;
/** End of conventional memory (start of the legacy VGA hole). */
export const EBDA_END = 0xa0000;
/** First byte above the legacy 1 MiB: kernels load here or higher. */
export const HIMEM_START = 0x100000;
/** Start of the 32-bit MMIO hole (virtio-mmio windows, IOAPIC, LAPIC). */
export const MMIO_GAP_START = 0xd000_0000;
/** End of the 32-bit MMIO hole: RAM that did not fit below it continues here. */
export const MMIO_GAP_END = 0x1_0000_0000;
/** Size of the 32-bit MMIO hole (768 MiB). */
export const MMIO_GAP_SIZE = MMIO_GAP_END - MMIO_GAP_START;
/** IOAPIC register window (Linux apicdef.h IO_APIC_DEFAULT_PHYS_BASE). */
export const IOAPIC_START = 0xfec0_0000;
/** Local APIC register window (APIC_DEFAULT_PHYS_BASE). */
export const LAPIC_START = 0xfee0_0000;
/** Guest page size. */
export const PAGE_SIZE = 0x1000;
