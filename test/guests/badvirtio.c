/*
 * badvirtio.elf - a hostile virtio-blk driver. On the first virtio-blk
 * device it submits malformed descriptor chains, one per freshly
 * initialised device, and checks that each is refused: completed with a
 * non-OK status byte (or no status written), or answered with
 * DEVICE_NEEDS_RESET. Every wait is bounded; the guest never hangs.
 * Finally it re-initialises the device and reads sector 0 to show the
 * device survived.
 */
#include "virtio.h"

#define MAX_POLLS 50000
#define BEYOND_RAM 0x0001000000000000ull /* 2^48: not RAM on any VM, exact in a double */
#define WRAPPING 0xFFFFFFFFFFFFFE00ull   /* addr + len wraps past 2^64 */
#define HUGE_LEN 0xFFFFFFFFu

static struct vq_mem vq;
static struct virtio_blk_req_hdr hdr __attribute__((aligned(16)));
static uint8_t status_byte;
static uint8_t data[SECTOR_SIZE] __attribute__((aligned(4096)));

enum hostile_case { OOB_ADDR, WRAP_ADDR, HUGE, LOOP, NEXT_OOB, AVAIL_FAR, NCASES };
static const char *const case_name[NCASES] = {
	"oob_addr", "wrap_addr", "huge_len", "loop", "next_oob", "avail_far",
};

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct virtq_desc *t = vq.desc;
	t[i].addr = addr;
	t[i].len = len;
	t[i].flags = flags;
	t[i].next = next;
}

/* A well-formed read of sector 0: header, 512 bytes, status (desc 0..2). */
static void good_read(void)
{
	hdr.type = VIRTIO_BLK_T_IN;
	hdr.reserved = 0;
	hdr.sector = 0;
	set_desc(0, (uintptr_t)&hdr, sizeof(hdr), VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, (uintptr_t)data, SECTOR_SIZE, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	set_desc(2, (uintptr_t)&status_byte, 1, VIRTQ_DESC_F_WRITE, 0);
}

/* Returns 1 when the device refused the request. */
static int run_case(struct vdev *d, enum hostile_case c)
{
	uint16_t advance = 1;

	good_read();
	status_byte = 0xFF;
	switch (c) {
	case OOB_ADDR:
		vq.desc[0].addr = BEYOND_RAM;
		break;
	case WRAP_ADDR:
		vq.desc[1].addr = WRAPPING;
		vq.desc[1].len = 0x400;
		break;
	case HUGE:
		vq.desc[1].len = HUGE_LEN;
		break;
	case LOOP:
		vq.desc[1].next = 0; /* 0 -> 1 -> 0 -> ... never ends */
		break;
	case NEXT_OOB:
		vq.desc[0].next = (uint16_t)(d->qsize + 5);
		break;
	case AVAIL_FAR:
		/* Every ring slot holds the same valid request, but avail->idx
		 * claims far more new entries than the queue has (§2.7.13.3). */
		for (unsigned i = 0; i < d->qsize; i++)
			vq.avail.ring[i] = 0;
		advance = 0x8000;
		break;
	default:
		break;
	}
	KT_BARRIER();

	uint32_t len = 0;
	int r = vdev_run_raw(d, 0, advance, &len, MAX_POLLS);
	uint8_t st = *(volatile uint8_t *)&status_byte;
	uint32_t devstatus = vdev_status(d);
	const char *name = case_name[c];

	if (r == VIO_NEEDS_RESET || (devstatus & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
		kt_printf("KT: hostile %s status=needs_reset devstatus=%x\n", name, devstatus);
		kt_printf("KT: PASS hostile %s\n", name);
		return 1;
	}
	if (r == VIO_TIMEOUT) {
		kt_printf("KT: hostile %s status=timeout devstatus=%x\n", name, devstatus);
		kt_printf("KT: FAIL hostile %s neither completed nor DEVICE_NEEDS_RESET\n", name);
		return 0;
	}
	kt_printf("KT: hostile %s status=used:%x len=%u devstatus=%x\n", name, st, len, devstatus);
	if (r == VIO_BAD_USED) {
		kt_printf("KT: FAIL hostile %s used ring names a descriptor never made available\n",
			  name);
		return 0;
	}
	if (st == VIRTIO_BLK_S_OK) {
		kt_printf("KT: FAIL hostile %s accepted\n", name);
		return 0;
	}
	kt_printf("KT: PASS hostile %s\n", name);
	return 1;
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	struct vdev d;
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	int found = -1;

	kt_idt_init();
	for (unsigned i = 0; i < ndev && found < 0; i++)
		if (vdev_probe(dev[i].base) == VIRTIO_ID_BLOCK)
			found = (int)i;
	if (found < 0) {
		kt_printf("KT: FAIL hostile no virtio-blk device\n");
		kt_done();
	}
	const struct kt_virtio_mmio *m = &dev[found];

	for (int c = 0; c < NCASES; c++) {
		const char *err = vdev_init(&d, m->base, m->irq, 0, &vq);
		if (err) {
			kt_printf("KT: FAIL hostile %s init %s\n", case_name[c], err);
			continue;
		}
		run_case(&d, (enum hostile_case)c);
		if (!vdev_reset(&d))
			kt_printf("KT: FAIL hostile %s reset did not complete\n", case_name[c]);
	}

	/* The device must still work after all that. */
	const char *err = vdev_init(&d, m->base, m->irq, 0, &vq);
	if (err) {
		kt_printf("KT: FAIL hostile recover init %s\n", err);
		kt_done();
	}
	good_read();
	status_byte = 0xFF;
	memset(data, 0, sizeof(data));
	uint32_t len = 0;
	int r = vdev_run(&d, 0, &len, MAX_POLLS * 4);
	uint8_t st = *(volatile uint8_t *)&status_byte;
	if (r == VIO_OK && st == VIRTIO_BLK_S_OK) {
		kt_printf("KT: hostile recovered sum0=%x\n", kt_byte_sum(data, SECTOR_SIZE));
		kt_printf("KT: PASS hostile recover\n");
	} else {
		kt_printf("KT: FAIL hostile recover r=%d status=%x\n", r, st);
	}
	vdev_reset(&d);
	kt_done();
}
