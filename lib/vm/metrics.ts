/**
 * The shape of `vm.metrics()`.
 * @module
 */
import type { SerialMetrics } from '../devices/serial/serial';
import type { I8042Metrics } from '../devices/i8042/i8042';
import type { BlockMetrics } from '../devices/block/device';
import type { NetMetrics } from '../devices/net/device';
import type { TransportMetrics } from '../virtio/mmio';
import type { DeviceMetricsEntry } from './device-manager';

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

/** A drive's counters: the device's and its virtio-mmio transport's. */
export type DriveMetrics = BlockMetrics & {
  /** The transport's counters (interrupts, configuration changes, resets…). */
  transport: TransportMetrics;
};

/** A NIC's counters: the device's (frames, bytes, drops by cause, MMDS) and its transport's. */
export type NicMetrics = NetMetrics & {
  /** The transport's counters. */
  transport: TransportMetrics;
};

/** A snapshot of a VM's counters. Numbers only (and strings for ids and kinds), so it serializes as JSON. */
export interface VmMetrics {
  /** The VM's id. */
  id: string;
  /** Lifecycle state when the snapshot was taken. */
  state: string;
  /** vCPU exits that reached JavaScript, by kind. */
  exits: ExitCounters;
  /** The 16550 UART. */
  serial: SerialMetrics;
  /** The i8042 controller. */
  i8042: I8042Metrics;
  /** virtio-blk devices by drive id. */
  drives: Record<string, DriveMetrics>;
  /** virtio-net devices by NIC id. */
  nics: Record<string, NicMetrics>;
  /** Every device of the machine by id (legacy, built-in and custom), with its kind. */
  devices: Record<string, DeviceMetricsEntry>;
  /** Devices whose close failed at teardown (details in the exit info). */
  closeErrors: number;
}
