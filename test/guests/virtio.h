/*
 * virtio.h - minimal virtio-mmio (version 2, virtio 1.2 §4.2) driver core
 * with one split virtqueue (§2.7), polled, one request in flight at a time.
 */
#ifndef KT_VIRTIO_H
#define KT_VIRTIO_H

#include "kt.h"

/* §4.2.2 register layout */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00C
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0A0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0A4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0FC
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_MMIO_VERSION_MODERN 2

/* §2.1 device status */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_INT_USED_RING 0x1
#define VIRTIO_INT_CONFIG_CHANGE 0x2

/* feature bits (bit numbers) */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define FEATURE(n) (1ull << (n))

#define VIRTIO_ID_BLOCK 2

/* §2.7.5 descriptor flags */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4

#define VQ_MAX 16 /* queue size used when the device allows it */

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[VQ_MAX];
	uint16_t used_event; /* only meaningful with EVENT_IDX, never negotiated */
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[VQ_MAX];
	uint16_t avail_event;
};

/* §2.7: descriptor table 16-, available ring 2-, used ring 4-byte aligned;
 * page alignment is stricter than needed and harmless. */
struct vq_mem {
	struct virtq_desc desc[VQ_MAX] __attribute__((aligned(4096)));
	struct virtq_avail avail __attribute__((aligned(64)));
	struct virtq_used used __attribute__((aligned(64)));
};

struct vdev {
	uint64_t base;
	uint32_t irq;
	uint64_t offered;    /* device features */
	uint64_t features;   /* negotiated */
	uint16_t qsize;
	uint16_t avail_idx;  /* driver's free-running copy of avail->idx */
	uint16_t last_used;  /* used->idx already consumed */
	struct vq_mem *vq;
	uint32_t completions;
	uint32_t isr_used;   /* completions that showed InterruptStatus bit 0 */
};

/* Results of vdev_run() */
#define VIO_OK 0
#define VIO_TIMEOUT (-1)
#define VIO_NEEDS_RESET (-2)
#define VIO_BAD_USED (-3)

uint32_t vdev_read(const struct vdev *d, unsigned reg);
void vdev_write(const struct vdev *d, unsigned reg, uint32_t v);
uint32_t vdev_status(const struct vdev *d);

/* Magic and version check; returns the DeviceID, or -1 if not virtio-mmio v2. */
int vdev_probe(uint64_t base);

/*
 * Full §3.1.1 / §4.2.3.1 initialisation with queue 0 on vq. Accepts
 * VERSION_1 (required) plus the offered subset of `wanted`. Returns NULL
 * on success, else a short reason.
 */
const char *vdev_init(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
		      struct vq_mem *vq);

/* vdev_init split in two: everything up to and including QueueReady, then
 * DRIVER_OK (for a driver that reads the configuration in between, as
 * Linux's virtio-blk does). */
const char *vdev_setup(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
		       struct vq_mem *vq);
const char *vdev_driver_ok(struct vdev *d);

/* Writes 0 to Status and waits (bounded) for it to read back 0. */
int vdev_reset(struct vdev *d);

/*
 * Publishes `head` in the available ring, notifies queue 0 and polls the
 * used ring for up to max_polls status reads (each a VM exit). On
 * completion reads InterruptStatus and acknowledges it. *len gets the used
 * length. Returns VIO_OK, VIO_TIMEOUT, VIO_NEEDS_RESET or VIO_BAD_USED.
 */
int vdev_run(struct vdev *d, uint16_t head, uint32_t *len, unsigned max_polls);

/* Like vdev_run but moves avail->idx by `advance` (hostile use). */
int vdev_run_raw(struct vdev *d, uint16_t head, uint16_t advance, uint32_t *len,
		 unsigned max_polls);

/* ---- several queues (vsock, balloon, rng) ----------------------------- */
/*
 * One polled split queue of a device with several. Descriptor i is the
 * driver's buffer slot i; a guest adds a slot's descriptor (or a chain
 * starting at it) and collects used heads without waiting.
 */
struct vqueue {
	struct vq_mem *mem;
	uint16_t index;      /* queue number */
	uint16_t qsize;
	uint16_t avail_idx;  /* driver's free-running copy of avail->idx */
	uint16_t last_used;  /* used->idx already consumed */
};

/*
 * §3.1.1 initialisation with queues 0..nq-1 (each of size
 * min(QueueNumMax, VQ_MAX) rounded down to a power of two). Accepts
 * VERSION_1 plus the offered subset of `wanted`. NULL on success.
 */
const char *vdev_init_queues(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
			     struct vqueue *qs, struct vq_mem *mems, unsigned nq);
/* Fills descriptor `slot` of q (one buffer, NEXT clear). */
void vq_set_desc(struct vqueue *q, uint16_t slot, const void *addr, uint32_t len, int device_writes);
/* Publishes `head` in the available ring; notifies the device when `notify`. */
void vq_publish(const struct vdev *d, struct vqueue *q, uint16_t head, int notify);
/* Takes one used element if there is one: returns 1 and fills *id, *len. */
int vq_take_used(struct vqueue *q, uint32_t *id, uint32_t *len);
/* Reads InterruptStatus and acknowledges it (the guests poll; the IRQ is unused). */
void vdev_ack_interrupts(const struct vdev *d);

/* ---- virtio-blk (§5.2) ------------------------------------------------ */
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_CFG_CAPACITY 0x00 /* le64, in 512-byte sectors */

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR_SIZE 512

struct virtio_blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

/* Capacity read as two 32-bit config accesses under ConfigGeneration. */
uint64_t vblk_capacity(const struct vdev *d);

#endif
