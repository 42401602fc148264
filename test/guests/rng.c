/*
 * rng.elf - polled virtio-rng (entropy, virtio 1.2 §5.4) driver. Reads
 * entropy from the first virtio-mmio device with DeviceID 4: a few small
 * requests (their bytes must differ and not be all zero), one request larger
 * than the device's 64 KiB cap (its used length shows the cap), then
 * `rng.requests=<n>` (default 8) requests of 256 bytes in a row, each timed
 * in polls, so a host rate limiter shows as requests that take longer.
 * See README.md for the exact lines.
 */
#include "virtio.h"

#define VIRTIO_ID_RNG 4
#define MAX_POLLS 2000000
#define BIG (80 * 1024)

static struct vq_mem vqm[1];
static struct vqueue q[1];
static uint8_t small[2][64] __attribute__((aligned(64)));
static uint8_t big[BIG] __attribute__((aligned(4096)));

/* One request of `len` bytes into `buf`; returns the used length, or -1 on timeout. *polls gets the wait. */
static long request(struct vdev *d, void *buf, uint32_t len, unsigned *polls)
{
	uint32_t id, used;
	vq_set_desc(&q[0], 0, buf, len, 1);
	vq_publish(d, &q[0], 0, 1);
	for (unsigned i = 0; i < MAX_POLLS; i++) {
		if (vq_take_used(&q[0], &id, &used)) {
			vdev_ack_interrupts(d);
			if (polls)
				*polls = i;
			return id == 0 ? (long)used : -1;
		}
		if (vdev_status(d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
			return -1;
	}
	return -1;
}

static unsigned distinct(const uint8_t *p, unsigned n)
{
	uint8_t seen[256];
	unsigned k = 0;
	memset(seen, 0, sizeof(seen));
	for (unsigned i = 0; i < n; i++)
		if (!seen[p[i]]) {
			seen[p[i]] = 1;
			k++;
		}
	return k;
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	struct vdev d;
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	char arg[16];
	unsigned nreq = 8;

	kt_idt_init();
	if (kt_cmdline_get("rng.requests", arg, sizeof(arg))) {
		nreq = 0;
		for (char *c = arg; *c >= '0' && *c <= '9'; c++)
			nreq = nreq * 10 + (unsigned)(*c - '0');
	}
	unsigned i;
	for (i = 0; i < ndev; i++)
		if (vdev_probe(dev[i].base) == VIRTIO_ID_RNG)
			break;
	if (i == ndev) {
		kt_printf("KT: FAIL rng no device\n");
		kt_done();
	}
	const char *err = vdev_init_queues(&d, dev[i].base, dev[i].irq, 0, q, vqm, 1);
	if (err) {
		kt_printf("KT: FAIL rng init %s\n", err);
		kt_done();
	}
	kt_printf("KT: rng base=%lx qsize=%u\n", d.base, q[0].qsize);

	long a = request(&d, small[0], 64, 0);
	long b = request(&d, small[1], 64, 0);
	kt_printf("KT: rng small_len=%ld,%ld distinct=%u\n", a, b, distinct(small[0], 64));
	if (a == 64 && b == 64 && memcmp(small[0], small[1], 64) != 0 && distinct(small[0], 64) > 16)
		kt_printf("KT: PASS rng random\n");
	else
		kt_printf("KT: FAIL rng random\n");

	long n = request(&d, big, BIG, 0);
	kt_printf("KT: rng big_len=%ld\n", n);

	unsigned long total = 0;
	for (unsigned r = 0; r < nreq; r++) {
		unsigned polls = 0;
		long got = request(&d, big, 256, &polls);
		kt_printf("KT: rng req%u len=%ld polls=%u\n", r, got, polls);
		if (got < 0)
			break;
		total += (unsigned long)got;
	}
	kt_printf("KT: rng bytes=%lu\n", total);
	vdev_reset(&d);
	kt_done();
}
