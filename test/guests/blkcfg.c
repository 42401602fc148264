/*
 * blkcfg.elf - a configuration change that happens while the driver is
 * still initialising. Linux's virtio-blk reads the capacity before it sets
 * DRIVER_OK; a capacity change in between must still reach the driver as a
 * configuration change interrupt once DRIVER_OK is set.
 *
 * On the first virtio-blk device: features and queue 0 set up, capacity
 * read, "KT: READY"; the host changes the capacity, then sends a line; the
 * guest sets DRIVER_OK and waits (interrupts on) for an interrupt whose
 * InterruptStatus has the configuration change bit, taken through the 8259
 * PIC like echo.elf's. Without one it waits until the host stops it.
 * See README.md for the lines.
 */
#include "virtio.h"

#define LINE_MAX 64

static struct vq_mem vq;
static struct vdev d;
static volatile uint32_t irqs, config_irqs, isr_seen;
static unsigned dev_irq;

static void virtio_irq(struct kt_frame *f)
{
	(void)f;
	uint32_t isr = vdev_read(&d, VIRTIO_MMIO_INTERRUPT_STATUS);
	irqs++;
	isr_seen |= isr;
	if (isr & VIRTIO_INT_CONFIG_CHANGE)
		config_irqs++;
	if (isr)
		vdev_write(&d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	kt_pic_eoi(dev_irq);
}

/* PIC IRQ7/IRQ15 / LAPIC spurious: by definition no EOI. */
static void spurious_irq(struct kt_frame *f)
{
	(void)f;
}

/* Polls the UART (interrupts stay off) for one line; '\r' dropped. */
static void read_line(char *buf, unsigned max)
{
	unsigned len = 0;
	for (;;) {
		while (!(inb(COM1 + UART_LSR) & UART_LSR_DR))
			;
		char c = (char)inb(COM1 + UART_RBR);
		if (c == '\n')
			break;
		if (c != '\r' && len < max)
			buf[len++] = c;
	}
	buf[len] = '\0';
}

void kt_main(void)
{
	struct kt_virtio_mmio dev[KT_MAX_VIRTIO];
	unsigned ndev = kt_cmdline_virtio(dev, KT_MAX_VIRTIO);
	static char line[LINE_MAX + 1];
	unsigned i;

	kt_idt_init();
	for (i = 0; i < ndev; i++)
		if (vdev_probe(dev[i].base) == VIRTIO_ID_BLOCK)
			break;
	if (i == ndev) {
		kt_printf("KT: FAIL cfg no virtio-blk device\n");
		kt_done();
	}
	dev_irq = dev[i].irq;
	kt_printf("KT: cfg irq=%u\n", dev_irq);
	if (dev_irq >= 16) {
		kt_printf("KT: FAIL cfg irq %u is not on the 8259 PIC\n", dev_irq);
		kt_done();
	}
	kt_set_irq_handler((dev_irq < 8 ? PIC1_VECTOR : PIC2_VECTOR - 8) + dev_irq, virtio_irq);
	kt_set_irq_handler(PIC1_VECTOR + PIC_SPURIOUS_IRQ, spurious_irq);
	kt_set_irq_handler(PIC2_VECTOR + PIC_SPURIOUS_IRQ, spurious_irq);
	kt_set_irq_handler(LAPIC_SPURIOUS_VECTOR, spurious_irq);
	kt_pic_init(dev_irq);
	kt_lapic_virtual_wire();

	const char *err = vdev_setup(&d, dev[i].base, dev_irq, 0, &vq);
	if (err) {
		kt_printf("KT: FAIL cfg init %s\n", err);
		kt_done();
	}
	kt_printf("KT: cfg capacity=%lu generation=%u\n", vblk_capacity(&d),
		  vdev_read(&d, VIRTIO_MMIO_CONFIG_GENERATION));
	uart_puts("KT: READY\n");
	read_line(line, LINE_MAX);
	kt_printf("KT: cfg host=%s\n", line);
	/* Nothing may be signalled before DRIVER_OK (the change waits for it). */
	kt_printf("KT: cfg isr_before=%x\n", vdev_read(&d, VIRTIO_MMIO_INTERRUPT_STATUS));

	err = vdev_driver_ok(&d);
	if (err) {
		kt_printf("KT: FAIL cfg %s\n", err);
		kt_done();
	}
	uart_puts("KT: cfg driver_ok\n");
	while (!config_irqs)
		kt_wait_for_interrupt();
	kt_printf("KT: cfg interrupts=%u isr=%x\n", irqs, isr_seen);
	kt_printf("KT: cfg capacity_after=%lu generation=%u\n", vblk_capacity(&d),
		  vdev_read(&d, VIRTIO_MMIO_CONFIG_GENERATION));
	if (!vdev_reset(&d))
		kt_printf("KT: FAIL cfg reset did not complete\n");
	kt_done();
}
