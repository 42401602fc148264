/*
 * counter.elf - counts, prints and writes a memory pattern, for snapshot and restore tests.
 *
 * Command line: count=<N> (steps, default 40), pages=<P> (pattern pages, default 64),
 * timer=<0|1> (default 1: wait for a LAPIC timer interrupt between steps).
 *
 * Step i (0..N-1): writes the pattern of step i into page i % P of the area at PATTERN_BASE,
 * adds the page's first word to a running sum, waits for one LAPIC one-shot timer interrupt
 * (vector 0x40), and prints "KT: count=<i> sum=<hex>". A snapshot taken at any point and
 * restored elsewhere must go on with the next step and the same sums; the LAPIC timer, the
 * registers and the memory all have to survive for that. At the end every page is checked
 * against the last pattern written into it:
 *
 *   KT: verify=ok pages=<P>            or  KT: FAIL verify page=<p> word=<w> got=<hex> want=<hex>
 *   KT: ticks=<timer interrupts taken>
 *   KT: DONE                            -> i8042 reset
 */
#include "kt.h"

#define PATTERN_BASE 0x1000000ull /* 16 MiB: above the image, its stack and the boot structures */
#define PAGE_WORDS 512
#define WORDS_WRITTEN 16 /* per step: enough to dirty the page, cheap on an emulated CPU */

#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3E0
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xFF
#define LAPIC_DCR_DIV1 0xB
#define TIMER_VECTOR 0x40
#define TIMER_COUNT 20000 /* bus cycles; KVM's LAPIC bus runs at 1 GHz: 20 us */

static volatile uint32_t ticks;

static uint64_t pattern(uint64_t step, unsigned word)
{
	return (step + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)word << 48);
}

static void timer_irq(struct kt_frame *f)
{
	(void)f;
	ticks++;
	mmio_write32(LAPIC_BASE + LAPIC_EOI, 0);
}

static void spurious_irq(struct kt_frame *f)
{
	(void)f;
}

static unsigned cmdline_uint(const char *key, unsigned dflt)
{
	char buf[16];
	if (!kt_cmdline_get(key, buf, sizeof buf) || buf[0] == '\0')
		return dflt;
	unsigned v = 0;
	for (const char *p = buf; *p >= '0' && *p <= '9'; p++)
		v = v * 10 + (unsigned)(*p - '0');
	return v;
}

static void wait_tick(void)
{
	uint32_t before = ticks;
	mmio_write32(LAPIC_BASE + LAPIC_TIMER_ICR, TIMER_COUNT);
	while (ticks == before)
		kt_wait_for_interrupt();
}

void kt_main(void)
{
	unsigned count = cmdline_uint("count", 40);
	unsigned pages = cmdline_uint("pages", 64);
	unsigned timer = cmdline_uint("timer", 1);
	volatile uint64_t *area = (volatile uint64_t *)(uintptr_t)PATTERN_BASE;
	uint64_t sum = 0;

	if (pages == 0)
		pages = 1;
	kt_idt_init();
	if (timer) {
		kt_set_irq_handler(TIMER_VECTOR, timer_irq);
		kt_set_irq_handler(LAPIC_SPURIOUS_VECTOR, spurious_irq);
		mmio_write32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
		mmio_write32(LAPIC_BASE + LAPIC_TIMER_DCR, LAPIC_DCR_DIV1);
		mmio_write32(LAPIC_BASE + LAPIC_LVT_TIMER, TIMER_VECTOR); /* one-shot, unmasked */
	}
	kt_printf("KT: counter steps=%u pages=%u timer=%u\n", count, pages, timer);

	for (unsigned i = 0; i < count; i++) {
		volatile uint64_t *page = area + (uint64_t)(i % pages) * PAGE_WORDS;
		for (unsigned w = 0; w < WORDS_WRITTEN; w++)
			page[w] = pattern(i, w);
		sum += page[0];
		if (timer)
			wait_tick();
		kt_printf("KT: count=%u sum=%lx\n", i, (unsigned long)sum);
	}

	unsigned checked = count < pages ? count : pages;
	for (unsigned p = 0; p < checked; p++) {
		/* the last step that wrote page p */
		uint64_t step = p + (uint64_t)((count - 1 - p) / pages) * pages;
		volatile uint64_t *page = area + (uint64_t)p * PAGE_WORDS;
		for (unsigned w = 0; w < WORDS_WRITTEN; w++) {
			if (page[w] != pattern(step, w)) {
				kt_printf("KT: FAIL verify page=%u word=%u got=%lx want=%lx\n", p, w,
					  (unsigned long)page[w], (unsigned long)pattern(step, w));
				kt_done();
			}
		}
	}
	kt_printf("KT: verify=ok pages=%u\n", checked);
	kt_printf("KT: ticks=%u\n", ticks);
	kt_done();
}
