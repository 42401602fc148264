/**
 * The shape of `vm.metrics()`.
 * @module
 */

/** Counters of one device; every device has at least requests/bytes/errors where they apply. */
export type DeviceMetrics = Record<string, number>;

/** A snapshot of a VM's counters. Numbers only, so it serializes as JSON as it is. */
export interface VmMetrics {
  /** The VM's id. */
  id: string;
  /** Lifecycle state when the snapshot was taken. */
  state: string;
  /** vCPU exits that reached JavaScript, by kind. */
  exits: { pioReads: number; pioWrites: number; mmioReads: number; mmioWrites: number; events: number; unmapped: number };
  /** The 16550 UART. */
  serial: DeviceMetrics;
  /** The i8042 controller. */
  i8042: DeviceMetrics;
  /** virtio-blk devices by drive id: the device's counters plus its transport's. */
  drives: Record<string, DeviceMetrics>;
}
