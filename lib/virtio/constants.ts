/**
 * Virtio 1.2 constants shared by the split-virtqueue code, the virtio-mmio transport and devices.
 *
 * Feature bits are exported as bit numbers (`VIRTIO_F_*`); {@link featureBit} turns one into the
 * 64-bit mask used in feature words, which are bigints throughout.
 * @module
 */

/** Turns a feature bit number into its 64-bit mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Whether `features` has feature bit `bit` set. */
export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}

// --- Reserved (device-independent) feature bits, §6 ---------------------------------------

/** Driver may use indirect descriptor tables (§2.7.5.3). */
export const VIRTIO_F_INDIRECT_DESC = 28;
/** used_event / avail_event notification suppression (§2.7.7, §2.7.10). */
export const VIRTIO_F_EVENT_IDX = 29;
/** Device complies with virtio 1.x; required by the virtio-mmio v2 transport here. */
export const VIRTIO_F_VERSION_1 = 32;
/** Device is behind an IOMMU / platform address translation. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Packed virtqueue layout (§2.8). Not implemented: never offered. */
export const VIRTIO_F_RING_PACKED = 34;
/** Buffers are used in the order they were made available. Not offered. */
export const VIRTIO_F_IN_ORDER = 35;
/** Memory ordering as on real hardware platforms. Not offered. */
export const VIRTIO_F_ORDER_PLATFORM = 36;
/** Single Root I/O Virtualization. Not offered. */
export const VIRTIO_F_SR_IOV = 37;
/** Driver passes extra data in notifications. Not offered. */
export const VIRTIO_F_NOTIFICATION_DATA = 38;
/** Per-queue reset (QueueReset register). Not offered. */
export const VIRTIO_F_RING_RESET = 40;

// --- Device status field, §2.1 ---------------------------------------------------------------

/** Guest OS has found the device and recognised it as a valid virtio device. */
export const VIRTIO_STATUS_ACKNOWLEDGE = 0x01;
/** Guest OS knows how to drive the device. */
export const VIRTIO_STATUS_DRIVER = 0x02;
/** Driver is set up and ready to drive the device. */
export const VIRTIO_STATUS_DRIVER_OK = 0x04;
/** Driver has acknowledged the features it understands; feature negotiation is complete. */
export const VIRTIO_STATUS_FEATURES_OK = 0x08;
/** Device hit an error from which only a reset recovers (§2.1.2). */
export const VIRTIO_STATUS_DEVICE_NEEDS_RESET = 0x40;
/** Driver gave up on the device. */
export const VIRTIO_STATUS_FAILED = 0x80;

// --- Split virtqueue layout, §2.7 -----------------------------------------------------------

/** Descriptor continues via the `next` field. */
export const VIRTQ_DESC_F_NEXT = 1;
/** Buffer is device write-only (otherwise device read-only). */
export const VIRTQ_DESC_F_WRITE = 2;
/** Buffer holds a table of descriptors (§2.7.5.3). */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Driver's hint: don't interrupt when consuming buffers (ignored under EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Device's hint: don't notify when adding buffers (ignored under EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Size in bytes of one descriptor (`struct virtq_desc`). */
export const VIRTQ_DESC_SIZE = 16;
/** Size in bytes of one used ring element (`struct virtq_used_elem`). */
export const VIRTQ_USED_ELEM_SIZE = 8;
/** Required alignment of the descriptor table (§2.7, table "Virtqueue Part Alignment"). */
export const VIRTQ_DESC_ALIGN = 16;
/** Required alignment of the available ring. */
export const VIRTQ_AVAIL_ALIGN = 2;
/** Required alignment of the used ring. */
export const VIRTQ_USED_ALIGN = 4;
/** Largest queue size the split layout allows (§2.7: "maximum Queue Size value is 32768"). */
export const VIRTQ_MAX_SIZE_SPEC = 32768;

/** Byte size of a descriptor table for `size` entries. */
export function descTableBytes(size: number): number {
  return VIRTQ_DESC_SIZE * size;
}
/** Byte size of an available ring (flags, idx, ring[size], used_event). */
export function availRingBytes(size: number): number {
  return 6 + 2 * size;
}
/** Byte size of a used ring (flags, idx, ring[size], avail_event). */
export function usedRingBytes(size: number): number {
  return 6 + VIRTQ_USED_ELEM_SIZE * size;
}

// --- Device IDs, §5 ----------------------------------------------------------------------------

/** Network card. */
export const VIRTIO_ID_NET = 1;
/** Block device. */
export const VIRTIO_ID_BLOCK = 2;
/** Console. */
export const VIRTIO_ID_CONSOLE = 3;
/** Entropy source. */
export const VIRTIO_ID_RNG = 4;
/** Memory balloon (traditional). */
export const VIRTIO_ID_BALLOON = 5;
/** Socket device. */
export const VIRTIO_ID_VSOCK = 19;

// --- virtio-mmio register layout, §4.2.2 ---------------------------------------------------------

/** "virt" in little-endian ASCII. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** Non-legacy virtio-mmio interface version. */
export const VIRTIO_MMIO_VERSION_2 = 2;
/** Vendor ID Kindling reports: "KNDL" as ASCII. */
export const VIRTIO_MMIO_VENDOR_KINDLING = 0x4c444e4b;

/** R: magic value {@link VIRTIO_MMIO_MAGIC}. */
export const VIRTIO_MMIO_MAGIC_VALUE = 0x000;
/** R: device version number (2). */
export const VIRTIO_MMIO_VERSION = 0x004;
/** R: virtio subsystem device ID. */
export const VIRTIO_MMIO_DEVICE_ID = 0x008;
/** R: virtio subsystem vendor ID. */
export const VIRTIO_MMIO_VENDOR_ID = 0x00c;
/** R: 32 bits of device features selected by DeviceFeaturesSel. */
export const VIRTIO_MMIO_DEVICE_FEATURES = 0x010;
/** W: which 32-bit half of device features to show. */
export const VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014;
/** W: 32 bits of driver (accepted) features selected by DriverFeaturesSel. */
export const VIRTIO_MMIO_DRIVER_FEATURES = 0x020;
/** W: which 32-bit half of driver features is written. */
export const VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024;
/** W: selects the queue the Queue* registers refer to. */
export const VIRTIO_MMIO_QUEUE_SEL = 0x030;
/** R: maximum size of the selected queue, 0 if it does not exist. */
export const VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034;
/** W: size the driver chose for the selected queue. */
export const VIRTIO_MMIO_QUEUE_NUM = 0x038;
/** RW: the selected queue is ready to be used. */
export const VIRTIO_MMIO_QUEUE_READY = 0x044;
/** W: queue notifier; the value is the queue index. */
export const VIRTIO_MMIO_QUEUE_NOTIFY = 0x050;
/** R: pending interrupt causes. */
export const VIRTIO_MMIO_INTERRUPT_STATUS = 0x060;
/** W: clears the written interrupt causes. */
export const VIRTIO_MMIO_INTERRUPT_ACK = 0x064;
/** RW: device status (§2.1); writing 0 resets the device. */
export const VIRTIO_MMIO_STATUS = 0x070;
/** W: descriptor table address, low 32 bits. */
export const VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080;
/** W: descriptor table address, high 32 bits. */
export const VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084;
/** W: available ring ("driver area") address, low 32 bits. */
export const VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090;
/** W: available ring address, high 32 bits. */
export const VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094;
/** W: used ring ("device area") address, low 32 bits. */
export const VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0;
/** W: used ring address, high 32 bits. */
export const VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4;
/** W: selects a shared memory region. */
export const VIRTIO_MMIO_SHM_SEL = 0x0ac;
/** R: selected shared memory region length, low 32 bits (-1 when the region does not exist). */
export const VIRTIO_MMIO_SHM_LEN_LOW = 0x0b0;
/** R: selected shared memory region length, high 32 bits. */
export const VIRTIO_MMIO_SHM_LEN_HIGH = 0x0b4;
/** R: selected shared memory region base, low 32 bits. */
export const VIRTIO_MMIO_SHM_BASE_LOW = 0x0b8;
/** R: selected shared memory region base, high 32 bits. */
export const VIRTIO_MMIO_SHM_BASE_HIGH = 0x0bc;
/** RW: per-queue reset (only with VIRTIO_F_RING_RESET, which is not offered). */
export const VIRTIO_MMIO_QUEUE_RESET = 0x0c0;
/** R: configuration atomicity value. */
export const VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc;
/** Start of the device-specific configuration space. */
export const VIRTIO_MMIO_CONFIG = 0x100;
/** Size of one virtio-mmio window. */
export const VIRTIO_MMIO_WINDOW_SIZE = 0x1000;

/** InterruptStatus bit: a used buffer notification (§2.7.7). */
export const VIRTIO_MMIO_INT_VRING = 1;
/** InterruptStatus bit: the device configuration changed. */
export const VIRTIO_MMIO_INT_CONFIG = 2;
/** Alias of {@link VIRTIO_MMIO_INT_VRING} under the contract's name. */
export const INTERRUPT_USED_RING = VIRTIO_MMIO_INT_VRING;
/** Alias of {@link VIRTIO_MMIO_INT_CONFIG} under the contract's name. */
export const INTERRUPT_CONFIG_CHANGE = VIRTIO_MMIO_INT_CONFIG;
