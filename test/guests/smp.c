/*
 * smp.elf - starts the second CPU with INIT-SIPI-SIPI (xAPIC ICR) into a
 * real-mode trampoline at 0x8000 that climbs to long mode on the BSP's page
 * tables. The AP records its APIC ID and bumps a counter; only the BSP
 * touches the serial port.
 *
 * Output: "KT: BSP apic=<id>", then "KT: AP apic=<id>" and
 * "KT: cpus_running=2", or "KT: FAIL smp timeout" / "KT: FAIL smp no-ap";
 * then "KT: DONE".
 */
#include "kt.h"

#define TR_BASE 0x8000
#define SIPI_VECTOR (TR_BASE >> 12)

#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xFF
#define ICR_DM_INIT 0x00000500
#define ICR_DM_STARTUP 0x00000600
#define ICR_LEVEL_ASSERT 0x00004000
#define ICR_DELIVERY_PENDING 0x00001000
#define ICR_ALL_BUT_SELF 0x000C0000
#define MSR_EFER 0xC0000080
#define EFER_LMA 0x400

/* Delays in VM exits (kt_io_delay): short on purpose, the AP flag is polled. */
#define DELAY_AFTER_INIT 200
#define DELAY_AFTER_SIPI 200
#define AP_WAIT_POLLS 100000

extern char trampoline_start[], trampoline_end[];
extern char tr_cr3[], tr_cr0[], tr_efer[], tr_stack[], tr_entry[];

static volatile uint32_t ap_running;
static volatile uint32_t ap_apic_id = 0xFFFFFFFF;
static uint8_t ap_stack[8192] __attribute__((aligned(16)));

static uint32_t lapic_read(unsigned reg)
{
	return mmio_read32(LAPIC_BASE + reg);
}

static void lapic_write(unsigned reg, uint32_t v)
{
	mmio_write32(LAPIC_BASE + reg, v);
}

static void ap_main(void)
{
	kt_idt_load();
	ap_apic_id = lapic_read(LAPIC_ID) >> 24;
	/* The ID store is ordered before the locked add (x86 TSO). */
	__atomic_fetch_add(&ap_running, 1, __ATOMIC_RELEASE);
	kt_halt();
}

static int icr_wait_idle(void)
{
	for (unsigned i = 0; i < 1000; i++)
		if (!(lapic_read(LAPIC_ICR_LO) & ICR_DELIVERY_PENDING))
			return 1;
	return 0;
}

static void send_ipi(int dest, uint32_t lo)
{
	if (dest >= 0) {
		lapic_write(LAPIC_ICR_HI, (uint32_t)dest << 24);
		lapic_write(LAPIC_ICR_LO, lo);
	} else {
		lapic_write(LAPIC_ICR_LO, lo | ICR_ALL_BUT_SELF);
	}
	if (!icr_wait_idle())
		uart_puts("ICR stayed busy\n");
}

static void put_field64(char *field, uint64_t v)
{
	memcpy((uint8_t *)TR_BASE + (field - trampoline_start), &v, 8);
}

static void put_field32(char *field, uint32_t v)
{
	memcpy((uint8_t *)TR_BASE + (field - trampoline_start), &v, 4);
}

void kt_main(void)
{
	kt_idt_init();
	/* Software-enable the APIC (its IPIs work either way; this is the norm). */
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
	uint32_t bsp = lapic_read(LAPIC_ID) >> 24;
	kt_printf("KT: BSP apic=%u\n", bsp);

	struct kt_mp_info mp;
	kt_mp_scan(&mp);
	int dest = -1; /* -1: "all excluding self" shorthand when no MP table */
	if (mp.found) {
		for (unsigned i = 0; i < mp.ncpus; i++)
			if (mp.apic_id[i] != bsp) {
				dest = mp.apic_id[i];
				break;
			}
		if (dest < 0) {
			kt_printf("KT: FAIL smp no-ap (MP table lists %u cpu)\n", mp.ncpus);
			kt_done();
		}
	}

	uint64_t cr0, cr3, efer_lo, efer_hi;
	__asm__ __volatile__("mov %%cr0, %0" : "=r"(cr0));
	__asm__ __volatile__("mov %%cr3, %0" : "=r"(cr3));
	__asm__ __volatile__("rdmsr" : "=a"(efer_lo), "=d"(efer_hi) : "c"(MSR_EFER));
	if (cr3 >= 0x100000000ull) { /* the AP loads CR3 in 32-bit mode */
		kt_printf("KT: FAIL smp cr3 above 4 GiB\n");
		kt_done();
	}

	size_t tlen = (size_t)(trampoline_end - trampoline_start);
	memcpy((void *)TR_BASE, trampoline_start, tlen);
	put_field64(tr_cr3, cr3);
	put_field32(tr_cr0, (uint32_t)cr0);
	put_field32(tr_efer, (uint32_t)efer_lo & ~EFER_LMA);
	put_field64(tr_stack, (uint64_t)(uintptr_t)(ap_stack + sizeof(ap_stack)));
	put_field64(tr_entry, (uint64_t)(uintptr_t)ap_main);
	KT_BARRIER();

	send_ipi(dest, ICR_DM_INIT | ICR_LEVEL_ASSERT);
	kt_io_delay(DELAY_AFTER_INIT);
	send_ipi(dest, ICR_DM_STARTUP | SIPI_VECTOR);
	kt_io_delay(DELAY_AFTER_SIPI);
	send_ipi(dest, ICR_DM_STARTUP | SIPI_VECTOR);

	unsigned polls = 0;
	while (!ap_running && polls < AP_WAIT_POLLS) {
		kt_io_delay(1);
		polls++;
	}
	if (!ap_running) {
		kt_printf("KT: FAIL smp timeout\n");
		kt_done();
	}
	kt_printf("AP up after %u polls\n", polls);
	kt_printf("KT: AP apic=%u\n", ap_apic_id);
	kt_printf("KT: cpus_running=%u\n", 1 + ap_running);
	kt_done();
}
