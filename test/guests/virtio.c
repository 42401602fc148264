/* virtio.c - see virtio.h */
#include "virtio.h"

#define RESET_POLLS 1000
#define ISR_POLLS 1000

uint32_t vdev_read(const struct vdev *d, unsigned reg)
{
	return mmio_read32(d->base + reg);
}

void vdev_write(const struct vdev *d, unsigned reg, uint32_t v)
{
	mmio_write32(d->base + reg, v);
}

uint32_t vdev_status(const struct vdev *d)
{
	return vdev_read(d, VIRTIO_MMIO_STATUS);
}

int vdev_probe(uint64_t base)
{
	if (mmio_read32(base + VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC)
		return -1;
	if (mmio_read32(base + VIRTIO_MMIO_VERSION) != VIRTIO_MMIO_VERSION_MODERN)
		return -1;
	return (int)mmio_read32(base + VIRTIO_MMIO_DEVICE_ID);
}

int vdev_reset(struct vdev *d)
{
	vdev_write(d, VIRTIO_MMIO_STATUS, 0);
	for (unsigned i = 0; i < RESET_POLLS; i++)
		if (vdev_status(d) == 0)
			return 1;
	return 0;
}

static void set_status(struct vdev *d, uint32_t bits)
{
	vdev_write(d, VIRTIO_MMIO_STATUS, vdev_status(d) | bits);
}

static const char *fail(struct vdev *d, const char *why)
{
	set_status(d, VIRTIO_STATUS_FAILED); /* §3.1.1 step 8 */
	return why;
}

const char *vdev_setup(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
		       struct vq_mem *vq)
{
	memset(d, 0, sizeof(*d));
	d->base = base;
	d->irq = irq;
	d->vq = vq;

	if (vdev_probe(base) < 0)
		return "not virtio-mmio v2";
	if (!vdev_reset(d))
		return "reset did not complete";
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);

	vdev_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = vdev_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	vdev_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t hi = vdev_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	d->offered = lo | hi << 32;
	if (!(d->offered & FEATURE(VIRTIO_F_VERSION_1)))
		return fail(d, "VERSION_1 not offered");
	d->features = d->offered & (wanted | FEATURE(VIRTIO_F_VERSION_1));
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(vdev_status(d) & VIRTIO_STATUS_FEATURES_OK))
		return fail(d, "FEATURES_OK not accepted");

	/* §4.2.3.2 virtqueue configuration */
	vdev_write(d, VIRTIO_MMIO_QUEUE_SEL, 0);
	if (vdev_read(d, VIRTIO_MMIO_QUEUE_READY) != 0)
		return fail(d, "queue 0 already ready");
	uint32_t max = vdev_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return fail(d, "queue 0 not available");
	uint16_t q = VQ_MAX;
	while (q > max) /* largest power of two <= max */
		q >>= 1;
	d->qsize = q;
	memset(vq, 0, sizeof(*vq));
	KT_BARRIER();
	uint64_t desc = (uint64_t)(uintptr_t)vq->desc;
	uint64_t avail = (uint64_t)(uintptr_t)&vq->avail;
	uint64_t used = (uint64_t)(uintptr_t)&vq->used;
	vdev_write(d, VIRTIO_MMIO_QUEUE_NUM, q);
	vdev_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	vdev_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	vdev_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	vdev_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	vdev_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	vdev_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	vdev_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

const char *vdev_driver_ok(struct vdev *d)
{
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
	uint32_t st = vdev_status(d);
	if (st & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return "device failed at DRIVER_OK";
	return 0;
}

const char *vdev_init(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
		      struct vq_mem *vq)
{
	const char *err = vdev_setup(d, base, irq, wanted, vq);
	return err ? err : vdev_driver_ok(d);
}

int vdev_run_raw(struct vdev *d, uint16_t head, uint16_t advance, uint32_t *len,
		 unsigned max_polls)
{
	volatile struct virtq_avail *av = &d->vq->avail;
	volatile struct virtq_used *us = &d->vq->used;

	av->ring[d->avail_idx % d->qsize] = head;
	KT_BARRIER(); /* ring entry before idx (§2.7.13); x86 keeps store order */
	d->avail_idx = (uint16_t)(d->avail_idx + advance);
	av->idx = d->avail_idx;
	KT_BARRIER();
	vdev_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

	for (unsigned i = 0;; i++) {
		if (us->idx != d->last_used)
			break;
		if (vdev_status(d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
			return VIO_NEEDS_RESET;
		if (i >= max_polls)
			return VIO_TIMEOUT;
	}
	KT_BARRIER();
	volatile struct virtq_used_elem *e = &us->ring[d->last_used % d->qsize];
	uint32_t id = e->id;
	if (len)
		*len = e->len;
	d->last_used++;
	d->completions++;

	/* §4.2.2: InterruptStatus says why the (unused) IRQ line was raised;
	 * acknowledge exactly what was reported. */
	for (unsigned i = 0; i < ISR_POLLS; i++) {
		uint32_t isr = vdev_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
		if (isr) {
			if (isr & VIRTIO_INT_USED_RING)
				d->isr_used++;
			vdev_write(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
			break;
		}
	}
	if (id != head)
		return VIO_BAD_USED;
	return VIO_OK;
}

int vdev_run(struct vdev *d, uint16_t head, uint32_t *len, unsigned max_polls)
{
	return vdev_run_raw(d, head, 1, len, max_polls);
}

uint64_t vblk_capacity(const struct vdev *d)
{
	uint32_t gen, lo, hi, tries = 0;
	do {
		gen = vdev_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
		lo = vdev_read(d, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_CAPACITY);
		hi = vdev_read(d, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_CAPACITY + 4);
	} while (gen != vdev_read(d, VIRTIO_MMIO_CONFIG_GENERATION) && ++tries < 10);
	return lo | (uint64_t)hi << 32;
}

const char *vdev_init_queues(struct vdev *d, uint64_t base, uint32_t irq, uint64_t wanted,
			     struct vqueue *qs, struct vq_mem *mems, unsigned nq)
{
	memset(d, 0, sizeof(*d));
	d->base = base;
	d->irq = irq;
	d->vq = &mems[0];

	if (vdev_probe(base) < 0)
		return "not virtio-mmio v2";
	if (!vdev_reset(d))
		return "reset did not complete";
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);

	vdev_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = vdev_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	vdev_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t hi = vdev_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	d->offered = lo | hi << 32;
	if (!(d->offered & FEATURE(VIRTIO_F_VERSION_1)))
		return fail(d, "VERSION_1 not offered");
	d->features = d->offered & (wanted | FEATURE(VIRTIO_F_VERSION_1));
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vdev_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(vdev_status(d) & VIRTIO_STATUS_FEATURES_OK))
		return fail(d, "FEATURES_OK not accepted");

	for (unsigned i = 0; i < nq; i++) {
		struct vqueue *q = &qs[i];
		struct vq_mem *vq = &mems[i];
		vdev_write(d, VIRTIO_MMIO_QUEUE_SEL, i);
		if (vdev_read(d, VIRTIO_MMIO_QUEUE_READY) != 0)
			return fail(d, "queue already ready");
		uint32_t max = vdev_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
		if (max == 0)
			return fail(d, "queue not available");
		uint16_t size = VQ_MAX;
		while (size > max)
			size >>= 1;
		memset(q, 0, sizeof(*q));
		q->mem = vq;
		q->index = (uint16_t)i;
		q->qsize = size;
		memset(vq, 0, sizeof(*vq));
		KT_BARRIER();
		uint64_t desc = (uint64_t)(uintptr_t)vq->desc;
		uint64_t avail = (uint64_t)(uintptr_t)&vq->avail;
		uint64_t used = (uint64_t)(uintptr_t)&vq->used;
		vdev_write(d, VIRTIO_MMIO_QUEUE_NUM, size);
		vdev_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
		vdev_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
		vdev_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
		vdev_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
		vdev_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
		vdev_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
		vdev_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
	}
	d->qsize = qs[0].qsize;
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
	if (vdev_status(d) & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return "device failed at DRIVER_OK";
	return 0;
}

void vq_set_desc(struct vqueue *q, uint16_t slot, const void *addr, uint32_t len, int device_writes)
{
	volatile struct virtq_desc *dd = &q->mem->desc[slot];
	dd->addr = (uint64_t)(uintptr_t)addr;
	dd->len = len;
	dd->flags = device_writes ? VIRTQ_DESC_F_WRITE : 0;
	dd->next = 0;
}

void vq_publish(const struct vdev *d, struct vqueue *q, uint16_t head, int notify)
{
	volatile struct virtq_avail *av = &q->mem->avail;
	av->ring[q->avail_idx % q->qsize] = head;
	KT_BARRIER(); /* ring entry before idx (§2.7.13) */
	q->avail_idx++;
	av->idx = q->avail_idx;
	KT_BARRIER();
	if (notify)
		vdev_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int vq_take_used(struct vqueue *q, uint32_t *id, uint32_t *len)
{
	volatile struct virtq_used *us = &q->mem->used;
	if (us->idx == q->last_used)
		return 0;
	KT_BARRIER();
	volatile struct virtq_used_elem *e = &us->ring[q->last_used % q->qsize];
	*id = e->id;
	*len = e->len;
	q->last_used++;
	return 1;
}

void vdev_ack_interrupts(const struct vdev *d)
{
	uint32_t isr = vdev_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		vdev_write(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
}
