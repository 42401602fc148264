/*
 * emufail.elf - makes KVM give up on an instruction: an x87 load (flds)
 * from an address in the MMIO hole that no device claims. Any KVM has to
 * emulate an access to guest-physical memory without RAM, and its
 * instruction emulator has no x87 loads, so KVM_RUN returns
 * KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION with the
 * instruction's bytes; the VMM must end the VM with reason 'error', the RIP
 * and those bytes. The guest prints the RIP it is about to fault at.
 *
 * If KVM queued #UD instead (it does so for user-mode code), the IDT
 * handler prints KT: FAIL and resets, which the test also rejects.
 */
#include "kt.h"

/* Inside [0xD0000000, 4 GiB), above the virtio-mmio windows Kindling uses
 * (0xD0000000 + i * 0x1000): no RAM, no device. */
#define UNCLAIMED_MMIO 0xdff00000u

void kt_main(void)
{
	kt_idt_init();
	extern const char kt_emufail_insn[];
	kt_printf("KT: insn_rip=%lx\n", (uint64_t)(uintptr_t)kt_emufail_insn);
	__asm__ __volatile__(
		"fninit\n\t"
		".globl kt_emufail_insn\n"
		"kt_emufail_insn:\n\t"
		"flds (%0)\n\t"
		"fstp %%st(0)"
		: : "r"((uint64_t)UNCLAIMED_MMIO) : "memory");
	uart_puts("KT: FAIL emufail the x87 load from MMIO completed\n");
	kt_reset();
}
