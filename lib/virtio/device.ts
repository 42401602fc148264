/**
 * The contract between a virtio device model and its transport.
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory';
import type { Queue } from './queue';
import type { MmioTransport } from './mmio';

/** How a device raises interrupts; implemented by the transport. */
export interface VirtioInterrupt {
  /** The device put buffers in queue `queueIndex`'s used ring and the driver wants to know. */
  signalUsedQueue(queueIndex: number): void;
  /** The device configuration space changed. */
  signalConfigChange(): void;
}

/** What a device gets when the driver sets DRIVER_OK. */
export interface VirtioDeviceContext {
  /** Guest memory the queues and buffers live in. */
  mem: GuestMemory;
  /** The device's queues, configured and validated (only `ready` ones may be used). */
  queues: Queue[];
  /** Interrupt raiser. */
  interrupt: VirtioInterrupt;
  /** Features both offered and accepted by the driver. */
  ackedFeatures: bigint;
  /**
   * Puts the device into DEVICE_NEEDS_RESET (§2.1.2) — for device-level errors it cannot recover
   * from. The transport also does this by itself when a queue breaks or processQueue throws.
   * Optional so that tests can build a context by hand; {@link MmioTransport} always provides it.
   */
  needsReset?(): void;
}

/** A virtio device model (block, net, ...), independent of the transport. */
export interface VirtioDevice {
  /** Virtio device ID (`VIRTIO_ID_*`). */
  readonly deviceType: number;
  /** Maximum size of each queue; the length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /**
   * Device-specific feature bits. The transport adds VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC
   * and VIRTIO_F_EVENT_IDX, which the queue implementation handles.
   */
  readonly deviceFeatures: bigint;
  /** Reads `size` (1, 2, 4) bytes of device config space at `offset`; 0 past the end. */
  readConfig(offset: number, size: number): number;
  /** Writes `size` bytes of device config space at `offset`. */
  writeConfig(offset: number, size: number, value: number): void;
  /** Called once when the driver sets DRIVER_OK and the queues are valid. */
  activate(ctx: VirtioDeviceContext): void;
  /** A notification for queue `queueIndex` arrived. Should not throw (the transport guards it anyway). */
  processQueue(queueIndex: number): void;
  /** The driver reset the device: drop in-flight state and the context. */
  reset(): void;
  /** Device counters. */
  metrics(): Record<string, number>;
}
