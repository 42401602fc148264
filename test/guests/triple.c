/*
 * triple.elf - ends the VM with a triple fault: an exception with an empty
 * IDT (limit 0) cannot be delivered (#GP), neither can the resulting #DF,
 * so the CPU shuts down and the VMM sees KVM_EXIT_SHUTDOWN.
 *
 * The first exception is selected by "triple=<kind>" on the command line:
 *   gp  (default) load from a non-canonical address -> #GP
 *   ud  ud2 -> #UD
 *   de  divide by zero -> #DE
 * gp is the default because KVM's instruction emulator, which executes
 * whole guests on the nested PVM hosts, cannot decode ud2 and would report
 * an emulation failure instead of raising #UD; a non-canonical access and
 * a division by zero are raised by the emulator itself.
 */
#include "kt.h"

void kt_main(void)
{
	char kind[8] = "gp";
	kt_cmdline_get("triple", kind, sizeof(kind));
	kt_printf("KT: triple_kind=%s\n", kind);
	uart_puts("KT: TRIPLE\n");

	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) empty = { 0, 0 };
	__asm__ __volatile__("lidt %0" : : "m"(empty));

	if (kt_strncmp(kind, "ud", 3) == 0) {
		__asm__ __volatile__("ud2");
	} else if (kt_strncmp(kind, "de", 3) == 0) {
		__asm__ __volatile__("xorl %%ecx, %%ecx; divl %%ecx" : : : "eax", "ecx", "edx", "cc");
	} else {
		__asm__ __volatile__("movabsq $0x8000000000000000, %%rax; movq (%%rax), %%rax"
				     : : : "rax", "memory");
	}
	/* Not reached when the CPU (or emulator) behaves. */
	uart_puts("KT: FAIL triple still running\n");
	kt_reset();
}
