/*
 * balloon.elf - polled virtio-balloon (virtio 1.2 §5.5) driver for the first
 * virtio-mmio device with DeviceID 5. Negotiates STATS_VQ and DEFLATE_ON_OOM
 * when offered (not free page reporting), then:
 *
 *  1. reads num_pages (the host's target) and inflates min(target,
 *     balloon.max_pages, 2048) pages of its own 8 MiB pool, 256 PFNs per
 *     buffer, after writing a pattern into each page (so the host had them
 *     resident); writes `actual`;
 *  2. checks that the host released them: every inflated page reads 0;
 *  3. sends two hostile PFNs (one beyond guest memory, one already
 *     inflated), which the host must ignore and count;
 *  4. with STATS_VQ: sends one statistics buffer (MEMTOT from the E820 map,
 *     MEMFREE = the pool pages not inflated, MAJFLT = 7) and waits for the
 *     host to hand it back (one polling interval), then sends it again;
 *  5. with balloon.wait_target=1: waits for a new target (a configuration
 *     change), inflates up to it (same cap) and writes `actual` again;
 *  6. deflates half of what it inflated and writes `actual`.
 *
 * See README.md for the exact lines.
 */
#include "virtio.h"

#define VIRTIO_ID_BALLOON 5
#define F_STATS_VQ 1
#define F_DEFLATE_ON_OOM 2
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4
#define POOL_PAGES 2048
#define PFNS_PER_BUF 256
#define STAT_MAJFLT 2
#define STAT_MEMFREE 4
#define STAT_MEMTOT 5
#define MAX_POLLS 3000000

struct stat_entry {
	uint16_t tag;
	uint64_t val;
} __attribute__((packed));

static struct vq_mem vqm[3];
static struct vqueue q[3];
static uint8_t pool[POOL_PAGES][4096] __attribute__((aligned(4096)));
static uint32_t pfns[PFNS_PER_BUF] __attribute__((aligned(64)));
static struct stat_entry stats[3] __attribute__((aligned(16)));
static struct vdev d;
static unsigned long max_wait = MAX_POLLS;
static unsigned inflated;

/* Hands `n` PFNs over on queue `qi` and waits for the device to use the buffer. */
static int give(unsigned qi, const uint32_t *list, unsigned n)
{
	uint32_t id, len;
	memcpy(pfns, list, n * 4);
	vq_set_desc(&q[qi], 0, pfns, n * 4, 0);
	vq_publish(&d, &q[qi], 0, 1);
	for (unsigned long i = 0; i < max_wait; i++) {
		if (vq_take_used(&q[qi], &id, &len)) {
			vdev_ack_interrupts(&d);
			return 1;
		}
		if (vdev_status(&d) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
			return 0;
	}
	return 0;
}

static uint32_t pfn_of(unsigned page)
{
	return (uint32_t)((uint64_t)(uintptr_t)pool[page] >> 12);
}

/* Inflates pool pages [inflated, upto). Returns 0 if the device stopped answering. */
static int inflate_to(unsigned upto)
{
	uint32_t list[PFNS_PER_BUF];
	while (inflated < upto) {
		unsigned n = upto - inflated;
		if (n > PFNS_PER_BUF)
			n = PFNS_PER_BUF;
		for (unsigned i = 0; i < n; i++) {
			/* Touch the page so it costs the host memory until released. */
			memset(pool[inflated + i], 0xA5, 64);
			pool[inflated + i][4095] = 0xA5;
			list[i] = pfn_of(inflated + i);
		}
		if (!give(0, list, n))
			return 0;
		inflated += n;
	}
	vdev_write(&d, VIRTIO_MMIO_CONFIG + CFG_ACTUAL, inflated);
	return 1;
}

static unsigned long arg_num(const char *key, unsigned long def)
{
	char buf[24];
	if (!kt_cmdline_get(key, buf, sizeof(buf)))
		return def;
	unsigned long v = 0;
	for (char *c = buf; *c >= '0' && *c <= '9'; c++)
		v = v * 10 + (unsigned long)(*c - '0');
	return v;
}

static uint64_t ram_bytes(void)
{
	uint64_t total = 0;
	for (unsigned i = 0; i < bp_e820_count(); i++) {
		struct e820_entry e = bp_e820(i);
		if (e.type == E820_TYPE_RAM)
			total += e.size;
	}
	return total;
}

static void send_stats(void)
{
	stats[0].tag = STAT_MEMTOT;
	stats[0].val = ram_bytes();
	stats[1].tag = STAT_MEMFREE;
	stats[1].val = (uint64_t)(POOL_PAGES - inflated) * 4096;
	stats[2].tag = STAT_MAJFLT;
	stats[2].val = 7;
	vq_set_desc(&q[2], 0, stats, sizeof(stats), 0);
	vq_publish(&d, &q[2], 0, 1);
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	unsigned i;
	uint32_t id, len;

	kt_idt_init();
	max_wait = arg_num("balloon.wait", max_wait);
	unsigned cap = (unsigned)arg_num("balloon.max_pages", POOL_PAGES);
	if (cap > POOL_PAGES)
		cap = POOL_PAGES;
	for (i = 0; i < ndev; i++)
		if (vdev_probe(dev[i].base) == VIRTIO_ID_BALLOON)
			break;
	if (i == ndev) {
		kt_printf("KT: FAIL balloon no device\n");
		kt_done();
	}
	/* Queues: inflate, deflate, and stats only if offered (numbered as Linux's virtio-mmio does). */
	memset(&d, 0, sizeof(d));
	d.base = dev[i].base;
	vdev_write(&d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	int has_stats = (vdev_read(&d, VIRTIO_MMIO_DEVICE_FEATURES) >> F_STATS_VQ) & 1;
	const char *err = vdev_init_queues(&d, dev[i].base, dev[i].irq, FEATURE(F_STATS_VQ) | FEATURE(F_DEFLATE_ON_OOM), q, vqm, has_stats ? 3 : 2);
	if (err) {
		kt_printf("KT: FAIL balloon init %s\n", err);
		kt_done();
	}
	uint32_t target = vdev_read(&d, VIRTIO_MMIO_CONFIG + CFG_NUM_PAGES);
	kt_printf("KT: balloon features=%lx target_pages=%u\n", d.features, target);

	unsigned want = target < cap ? target : cap;
	if (!inflate_to(want)) {
		kt_printf("KT: FAIL balloon inflate timeout\n");
		kt_done();
	}
	kt_printf("KT: balloon inflated=%u\n", inflated);
	unsigned zeroed = 0;
	for (i = 0; i < inflated; i++)
		if (*(volatile uint32_t *)pool[i] == 0 && pool[i][4095] == 0)
			zeroed++;
	kt_printf("KT: balloon zeroed=%u\n", zeroed);

	uint32_t hostile[2] = { 0xFFFFFFF0u, inflated ? pfn_of(0) : 0xFFFFFFF1u };
	if (!give(0, hostile, 2))
		kt_printf("KT: FAIL balloon hostile timeout\n");
	else
		kt_printf("KT: balloon hostile=sent\n");

	if (has_stats && (d.features & FEATURE(F_STATS_VQ))) {
		send_stats();
		unsigned long w;
		for (w = 0; w < max_wait; w++)
			if (vq_take_used(&q[2], &id, &len))
				break;
		vdev_ack_interrupts(&d);
		kt_printf("KT: balloon stats_returned=%d\n", w < max_wait);
		if (w < max_wait)
			send_stats();
	}

	if (arg_num("balloon.wait_target", 0)) {
		/* The generation is read before the host is told to change the target: a change that
		 * comes in before the loop below starts still differs from it. */
		uint32_t gen = vdev_read(&d, VIRTIO_MMIO_CONFIG_GENERATION);
		kt_printf("KT: balloon waiting_for_target\n");
		unsigned long w;
		for (w = 0; w < max_wait; w++) {
			if (vdev_read(&d, VIRTIO_MMIO_CONFIG_GENERATION) != gen)
				break;
		}
		vdev_ack_interrupts(&d);
		target = vdev_read(&d, VIRTIO_MMIO_CONFIG + CFG_NUM_PAGES);
		if (w >= max_wait) {
			kt_printf("KT: balloon new_target=timeout\n");
		} else {
			kt_printf("KT: balloon new_target=%u\n", target);
			want = target < cap ? target : cap;
			if (want > inflated && !inflate_to(want))
				kt_printf("KT: FAIL balloon inflate timeout\n");
			kt_printf("KT: balloon inflated=%u\n", inflated);
		}
	}

	unsigned half = inflated / 2;
	uint32_t list[PFNS_PER_BUF];
	unsigned done = 0;
	while (done < half) {
		unsigned n = half - done;
		if (n > PFNS_PER_BUF)
			n = PFNS_PER_BUF;
		for (i = 0; i < n; i++)
			list[i] = pfn_of(inflated - 1 - done - i);
		if (!give(1, list, n))
			break;
		done += n;
	}
	inflated -= done;
	vdev_write(&d, VIRTIO_MMIO_CONFIG + CFG_ACTUAL, inflated);
	kt_printf("KT: balloon deflated=%u actual=%u\n", done, inflated);
	kt_done();
}
