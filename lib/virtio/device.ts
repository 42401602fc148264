/**
 * The contract between a virtio device model and its transport.
 *
 * A virtio device is a {@link Device} (id, metrics, state, close) that also answers its config
 * space and serves its queues. The transport ({@link MmioTransport}) owns feature negotiation, the
 * status state machine, the queue registers and interrupts; the device only sees a
 * {@link VirtioDeviceContext} between DRIVER_OK and reset.
 *
 * Saving and restoring: the transport saves its registers and every queue's {@link QueueState}
 * together with the device's own {@link Device.saveState}. On restore it first puts its registers
 * and queues back, then, if the driver had set DRIVER_OK, calls {@link VirtioDevice.activate} with
 * a context over the restored queues, and only then {@link Device.restoreState}. So a device's
 * `restoreState` runs either on a never-activated device or right after `activate`, and must not
 * assume which: driver-independent data (a config, a backend's position) is restored in both
 * cases; per-activation data (in-flight requests, connections) only when a context exists.
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory';
import type { Device } from '../devices/contract';
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
  queues: readonly Queue[];
  /** Interrupt raiser. */
  interrupt: VirtioInterrupt;
  /** Features both offered and accepted by the driver. */
  ackedFeatures: bigint;
  /**
   * Puts the device into DEVICE_NEEDS_RESET (§2.1.2) — for device-level errors it cannot recover
   * from. The transport also does this by itself when a queue breaks or processQueue throws.
   */
  needsReset(): void;
  /**
   * Runs `fn` later on the event loop, after the current batch of exits (the transport's
   * scheduler; `setImmediate` under KVM, a manual queue in tests). Devices use it instead of
   * timers of their own for "once this turn is over" work such as coalescing interrupts.
   */
  schedule(fn: () => void): void;
}

/** A virtio device model (block, net, ...), independent of the transport. */
export interface VirtioDevice<M extends object = object> extends Device<M> {
  /** Virtio device ID (`VIRTIO_ID_*`, virtio 1.2 §5). */
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
  /** Called once when the driver sets DRIVER_OK and the queues are valid (and on restore, see the module comment). */
  activate(ctx: VirtioDeviceContext): void;
  /** A notification for queue `queueIndex` arrived. Should not throw (the transport guards it anyway). */
  processQueue(queueIndex: number): void;
  /** The driver reset the device: drop in-flight state and the context. */
  reset(): void;
}

/** @internal Keeps the import for the TSDoc link above. */
export type _TransportLink = MmioTransport;
