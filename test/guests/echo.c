/*
 * echo.elf - interrupt-driven serial input. Proves the path
 * host -> UART receive -> IRQ4 -> 8259 PIC -> LAPIC LINT0 (ExtINT) -> CPU.
 *
 * Protocol: prints "KT: READY", then echoes each received line as
 * "KT: echo=<line>" ('\r' dropped, lines cut at 200 bytes). After echoing
 * the line "quit" it prints "KT: irqs=<UART interrupts taken>", "KT: DONE"
 * and resets.
 */
#include "kt.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIC_ICW1_INIT_ICW4 0x11 /* edge, cascade, ICW4 follows */
#define PIC_ICW4_8086 0x01
#define PIC_EOI 0x20
#define PIC1_VECTOR 0x20
#define PIC2_VECTOR 0x28
#define PIC_CASCADE_IRQ 2
#define UART_IRQ 4
#define PIC_SPURIOUS_IRQ 7

#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_SVR 0x0F0
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xFF
#define LAPIC_DM_EXTINT 0x700
#define LAPIC_DM_NMI 0x400

#define RING_SIZE 1024 /* power of two */
#define LINE_MAX 200
#define DRAIN_MAX 4096 /* bounds a stuck LSR.DR; must exceed what can arrive
			* during one drain, or a level IRQ on an edge PIC stays high */

static volatile uint8_t ring[RING_SIZE];
static volatile uint32_t ring_head, ring_tail;
static volatile uint32_t uart_irqs, dropped;

static void uart_irq(struct kt_frame *f)
{
	(void)f;
	uart_irqs++;
	(void)inb(COM1 + UART_IIR);
	for (unsigned i = 0; i < DRAIN_MAX && (inb(COM1 + UART_LSR) & UART_LSR_DR); i++) {
		uint8_t c = inb(COM1 + UART_RBR);
		if (ring_head - ring_tail < RING_SIZE)
			ring[ring_head++ % RING_SIZE] = c;
		else
			dropped++;
	}
	outb(PIC1_CMD, PIC_EOI);
}

/* PIC IRQ7 / LAPIC spurious: by definition no EOI. */
static void spurious_irq(struct kt_frame *f)
{
	(void)f;
}

static void pic_init(void)
{
	outb(PIC1_CMD, PIC_ICW1_INIT_ICW4);
	outb(PIC2_CMD, PIC_ICW1_INIT_ICW4);
	outb(PIC1_DATA, PIC1_VECTOR);
	outb(PIC2_DATA, PIC2_VECTOR);
	outb(PIC1_DATA, 1 << PIC_CASCADE_IRQ); /* slave on IRQ2 */
	outb(PIC2_DATA, PIC_CASCADE_IRQ);      /* slave identity */
	outb(PIC1_DATA, PIC_ICW4_8086);
	outb(PIC2_DATA, PIC_ICW4_8086);
	outb(PIC1_DATA, (uint8_t)~(1u << UART_IRQ)); /* only IRQ4 */
	outb(PIC2_DATA, 0xFF);
}

/*
 * KVM hands PIC interrupts to a hardware-enabled LAPIC only through an
 * unmasked ExtINT LINT0 (virtual-wire mode). LVT writes are forced masked
 * while the APIC is software-disabled, so enable it first.
 */
static void lapic_virtual_wire(void)
{
	mmio_write32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
	mmio_write32(LAPIC_BASE + LAPIC_LVT_LINT0, LAPIC_DM_EXTINT);
	mmio_write32(LAPIC_BASE + LAPIC_LVT_LINT1, LAPIC_DM_NMI);
}

void kt_main(void)
{
	static char line[LINE_MAX + 1];
	unsigned len = 0;

	kt_idt_init();
	kt_set_irq_handler(PIC1_VECTOR + UART_IRQ, uart_irq);
	kt_set_irq_handler(PIC1_VECTOR + PIC_SPURIOUS_IRQ, spurious_irq);
	kt_set_irq_handler(LAPIC_SPURIOUS_VECTOR, spurious_irq);
	pic_init();
	lapic_virtual_wire();
	outb(COM1 + UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2);
	outb(COM1 + UART_IER, UART_IER_RDA);
	uart_puts("KT: READY\n");

	for (;;) {
		/* Interrupts are off here; the handler only runs inside the wait. */
		while (ring_tail != ring_head) {
			char c = (char)ring[ring_tail++ % RING_SIZE];
			if (c == '\r')
				continue;
			if (c != '\n') {
				if (len < LINE_MAX)
					line[len++] = c;
				continue;
			}
			line[len] = '\0';
			uart_puts("KT: echo=");
			uart_puts(line);
			uart_putc('\n');
			if (len == 4 && kt_strncmp(line, "quit", 4) == 0) {
				outb(COM1 + UART_IER, 0);
				if (dropped)
					kt_printf("KT: dropped=%u\n", dropped);
				kt_printf("KT: irqs=%u\n", uart_irqs);
				kt_done();
			}
			len = 0;
		}
		kt_wait_for_interrupt();
	}
}
