/**
 * The shape of `vm.metrics()`.
 * @module
 */

/** Counters of one device; every device has at least requests/bytes/errors where they apply. */
export type DeviceMetrics = Record<string, number>;

/**
 * vCPU exits handled in JavaScript. UART status polls answered from the native read cache and
 * virtqueue notifications (ioeventfd) do not reach JavaScript and are not counted here.
 */
export interface ExitCounters {
  /** Port reads (the vCPU waited for the answer). */
  pioReads: number;
  /** Port writes (posted). */
  pioWrites: number;
  /** MMIO reads (the vCPU waited for the answer). */
  mmioReads: number;
  /** MMIO writes (posted). */
  mmioWrites: number;
  /** Non-I/O exits: shutdown, emulation failures, failed entries. */
  events: number;
  /** Accesses to addresses no device claims. */
  unmapped: number;
}

/** A snapshot of a VM's counters. Numbers only, so it serializes as JSON as it is. */
export interface VmMetrics {
  /** The VM's id. */
  id: string;
  /** Lifecycle state when the snapshot was taken. */
  state: string;
  /** vCPU exits that reached JavaScript, by kind. */
  exits: ExitCounters;
  /** The 16550 UART. */
  serial: DeviceMetrics;
  /** The i8042 controller. */
  i8042: DeviceMetrics;
  /** virtio-blk devices by drive id: the device's counters plus its transport's. */
  drives: Record<string, DeviceMetrics>;
}
