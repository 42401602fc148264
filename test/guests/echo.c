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

#define UART_IRQ 4

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
	kt_pic_eoi(UART_IRQ);
}

/* PIC IRQ7 / LAPIC spurious: by definition no EOI. */
static void spurious_irq(struct kt_frame *f)
{
	(void)f;
}

void kt_main(void)
{
	static char line[LINE_MAX + 1];
	unsigned len = 0;

	kt_idt_init();
	kt_set_irq_handler(PIC1_VECTOR + UART_IRQ, uart_irq);
	kt_set_irq_handler(PIC1_VECTOR + PIC_SPURIOUS_IRQ, spurious_irq);
	kt_set_irq_handler(LAPIC_SPURIOUS_VECTOR, spurious_irq);
	kt_pic_init(UART_IRQ);
	kt_lapic_virtual_wire();
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
