/*
 * blk.elf - polled virtio-blk driver over virtio-mmio v2. Runs the same
 * checks on every virtio-mmio device with DeviceID 2 named on the command
 * line, numbered blk0, blk1, ... in command-line order. Reads come before
 * writes, so sum0 and sum0_7 describe the image as the host provided it.
 * See README.md for the exact lines.
 */
#include "virtio.h"

#define MAX_POLLS 200000
#define MULTI_SECTORS 8
#define WRITE_SECTOR 1
#define MAX_BLK 8 /* devices tested; later ones are reported and skipped */

static struct vq_mem vqs[MAX_BLK];
static struct virtio_blk_req_hdr hdr __attribute__((aligned(16)));
static uint8_t status_byte __attribute__((aligned(16)));
static uint8_t data[MULTI_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
static uint8_t pattern[SECTOR_SIZE] __attribute__((aligned(16)));
static struct virtq_desc itable[3] __attribute__((aligned(16)));

struct seg {
	void *addr;
	uint32_t len;
	int device_writes;
};

static uint64_t pa(const void *p)
{
	return (uint64_t)(uintptr_t)p; /* identity-mapped */
}

static void fill_desc(struct virtq_desc *t, unsigned i, uint64_t addr, uint32_t len,
		      uint16_t flags, unsigned n)
{
	t[i].addr = addr;
	t[i].len = len;
	t[i].flags = (uint16_t)(flags | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
	t[i].next = (uint16_t)(i + 1 < n ? i + 1 : 0);
}

/*
 * One request: header, the data segments, status. With `indirect`, the
 * chain lives in itable and descriptor 0 points to it (§2.7.5.3).
 * Returns the status byte (0..255), or a negative VIO_* code.
 */
static int blk_request(struct vdev *d, uint32_t type, uint64_t sector,
		       const struct seg *segs, unsigned nsegs, int indirect)
{
	struct virtq_desc *t = indirect ? itable : d->vq->desc;
	unsigned n = nsegs + 2;
	if (n > (indirect ? 3u : d->qsize))
		return VIO_BAD_USED;

	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = 0xFF; /* a device that never writes it is caught */

	fill_desc(t, 0, pa(&hdr), sizeof(hdr), 0, n);
	for (unsigned i = 0; i < nsegs; i++)
		fill_desc(t, i + 1, pa(segs[i].addr), segs[i].len,
			  segs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0, n);
	fill_desc(t, n - 1, pa(&status_byte), 1, VIRTQ_DESC_F_WRITE, n);
	if (indirect) {
		d->vq->desc[0].addr = pa(itable);
		d->vq->desc[0].len = n * sizeof(struct virtq_desc);
		d->vq->desc[0].flags = VIRTQ_DESC_F_INDIRECT;
		d->vq->desc[0].next = 0;
	}
	KT_BARRIER();
	uint32_t len = 0;
	int r = vdev_run(d, 0, &len, MAX_POLLS);
	KT_BARRIER();
	return r < 0 ? r : *(volatile uint8_t *)&status_byte;
}

static const char *vio_err(int r)
{
	switch (r) {
	case VIO_TIMEOUT:
		return "timeout";
	case VIO_NEEDS_RESET:
		return "needs_reset";
	default:
		return "bad_used";
	}
}

/* Prints "KT: blk<n> <key>=<status>"; returns 0 when the device is unusable. */
static int report_status(unsigned n, const char *key, int r)
{
	if (r < 0) {
		kt_printf("KT: FAIL blk%u %s %s\n", n, key, vio_err(r));
		return 0;
	}
	kt_printf("KT: blk%u %s=%d\n", n, key, r);
	return 1;
}

static int read_into(struct vdev *d, uint64_t sector, unsigned nsectors, int indirect)
{
	struct seg s = { data, nsectors * SECTOR_SIZE, 1 };
	memset(data, 0, nsectors * SECTOR_SIZE); /* an OK without data must not pass */
	return blk_request(d, VIRTIO_BLK_T_IN, sector, &s, 1, indirect);
}

/* Returns 0 when the device stopped answering and the rest is skipped. */
static int test_device(struct vdev *d, unsigned n)
{
	uint64_t cap = vblk_capacity(d);
	int ro = (d->features & FEATURE(VIRTIO_BLK_F_RO)) != 0;
	int flush = (d->features & FEATURE(VIRTIO_BLK_F_FLUSH)) != 0;
	int indirect = (d->features & FEATURE(VIRTIO_F_INDIRECT_DESC)) != 0;
	int r;

	kt_printf("KT: blk%u base=%lx irq=%u qsize=%u features=%lx\n", n, d->base, d->irq,
		  d->qsize, d->features);
	kt_printf("KT: blk%u capacity=%lu ro=%d flush=%d\n", n, cap, ro, flush);

	/* GET_ID: 20 bytes, NUL-padded, not terminated when all 20 are used. */
	char id[VIRTIO_BLK_ID_BYTES + 1];
	struct seg ids = { data, VIRTIO_BLK_ID_BYTES, 1 };
	memset(data, 0, VIRTIO_BLK_ID_BYTES);
	r = blk_request(d, VIRTIO_BLK_T_GET_ID, 0, &ids, 1, 0);
	if (r < 0)
		return report_status(n, "id_status", r);
	if (r == VIRTIO_BLK_S_OK) {
		unsigned i;
		for (i = 0; i < VIRTIO_BLK_ID_BYTES && data[i]; i++)
			id[i] = (data[i] >= ' ' && data[i] < 0x7F) ? (char)data[i] : '?';
		id[i] = '\0';
		kt_printf("KT: blk%u id=%s\n", n, id);
	} else {
		kt_printf("KT: blk%u id_status=%d\n", n, r);
	}

	r = read_into(d, 0, 1, 0);
	if (r == VIRTIO_BLK_S_OK)
		kt_printf("KT: blk%u sum0=%x\n", n, kt_byte_sum(data, SECTOR_SIZE));
	else if (!report_status(n, "read0_status", r))
		return 0;

	/* header + 8 separate 512-byte descriptors + status */
	struct seg multi[MULTI_SECTORS];
	memset(data, 0, sizeof(data));
	for (unsigned i = 0; i < MULTI_SECTORS; i++) {
		multi[i].addr = data + i * SECTOR_SIZE;
		multi[i].len = SECTOR_SIZE;
		multi[i].device_writes = 1;
	}
	if (d->qsize < MULTI_SECTORS + 2) {
		kt_printf("KT: FAIL blk%u sum0_7 queue size %u too small\n", n, d->qsize);
	} else {
		r = blk_request(d, VIRTIO_BLK_T_IN, 0, multi, MULTI_SECTORS, 0);
		if (r == VIRTIO_BLK_S_OK)
			kt_printf("KT: blk%u sum0_7=%x\n", n, kt_byte_sum(data, sizeof(data)));
		else if (!report_status(n, "sum0_7_status", r))
			return 0;
	}

	if (indirect) {
		r = read_into(d, 0, 1, 1);
		if (r == VIRTIO_BLK_S_OK)
			kt_printf("KT: blk%u indirect_sum0=%x\n", n, kt_byte_sum(data, SECTOR_SIZE));
		else if (!report_status(n, "indirect_status", r))
			return 0;
	} else {
		kt_printf("KT: blk%u indirect=unsupported\n", n);
	}

	for (unsigned i = 0; i < SECTOR_SIZE; i++)
		pattern[i] = (uint8_t)(i * 7 + 3);
	struct seg ws = { pattern, SECTOR_SIZE, 0 };
	if (!ro) {
		r = blk_request(d, VIRTIO_BLK_T_OUT, WRITE_SECTOR, &ws, 1, 0);
		if (r != VIRTIO_BLK_S_OK) {
			if (r < 0)
				return report_status(n, "write_status", r);
			kt_printf("KT: FAIL blk%u write-readback write status=%d\n", n, r);
		} else {
			r = read_into(d, WRITE_SECTOR, 1, 0);
			if (r < 0)
				return report_status(n, "readback_status", r);
			if (r == VIRTIO_BLK_S_OK && memcmp(data, pattern, SECTOR_SIZE) == 0)
				kt_printf("KT: PASS blk%u write-readback\n", n);
			else
				kt_printf("KT: FAIL blk%u write-readback status=%d\n", n, r);
		}
	} else {
		r = blk_request(d, VIRTIO_BLK_T_OUT, WRITE_SECTOR, &ws, 1, 0);
		if (!report_status(n, "ro_write_status", r))
			return 0;
	}

	if (flush) {
		r = blk_request(d, VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
		if (!report_status(n, "flush_status", r))
			return 0;
	}

	r = read_into(d, cap, 1, 0);
	if (!report_status(n, "oor_status", r))
		return 0;

	kt_printf("KT: blk%u isr_used=%u completions=%u\n", n, d->isr_used, d->completions);
	return 1;
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	struct vdev d;
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	unsigned nblk = 0;

	kt_idt_init();
	kt_printf("virtio-mmio devices on the command line: %u\n", ndev);
	for (unsigned i = 0; i < ndev; i++) {
		int id = vdev_probe(dev[i].base);
		if (id != VIRTIO_ID_BLOCK)
			continue;
		unsigned n = nblk++;
		if (n >= MAX_BLK) {
			kt_printf("KT: FAIL blk%u skipped (only %u devices supported)\n", n, MAX_BLK);
			continue;
		}
		const char *err = vdev_init(&d, dev[i].base, dev[i].irq,
					    FEATURE(VIRTIO_BLK_F_RO) | FEATURE(VIRTIO_BLK_F_FLUSH) |
						    FEATURE(VIRTIO_F_INDIRECT_DESC),
					    &vqs[n]);
		if (err) {
			kt_printf("KT: FAIL blk%u init %s\n", n, err);
			continue;
		}
		test_device(&d, n);
		if (!vdev_reset(&d))
			kt_printf("KT: FAIL blk%u reset did not complete\n", n);
	}
	kt_printf("KT: blk_devices=%u\n", nblk);
	kt_done();
}
