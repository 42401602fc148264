/*
 * Entry from Kindling (Linux x86 64-bit boot protocol): long mode, paging
 * with the first 4 GiB identity-mapped, RSI = boot_params (zero page),
 * interrupts off, no IDT. The boot RSP (0x8FF0) sits in a page the SMP
 * guest reuses for its trampoline, so switch to our own stack first.
 */
	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	movq	%rsi, %r12		/* boot_params, kept across the bss clear */

	/* .bss is normally zero already (fresh guest RAM); clear it anyway so
	 * a loader that skips p_memsz > p_filesz cannot change behaviour. */
	movl	$__bss_start, %edi
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	shrl	$3, %ecx
	xorl	%eax, %eax
	rep stosq

	movq	$kt_stack_top, %rsp
	xorl	%ebp, %ebp
	movq	%r12, kt_boot_params(%rip)
	call	uart_init
	call	kt_main
	call	kt_done			/* a guest that returns has finished */
1:	cli
	hlt
	jmp	1b

	.section .bss
	.balign	16
kt_stack:
	.skip	16384
	.globl	kt_stack_top
kt_stack_top:

	.section .note.GNU-stack, "", @progbits
