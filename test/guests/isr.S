/*
 * 256 interrupt entry stubs (16 bytes apart) and their common path.
 *
 * Each stub pushes a zero error code when the CPU does not push one, then
 * its vector, so kt_isr_dispatch sees a uniform struct kt_frame.
 *
 * Returning from an IRQ deliberately avoids IRETQ. The guests enable
 * interrupts only inside kt_wait_for_interrupt() ("sti; hlt; cli"), so an
 * IRQ can only interrupt the instruction after HLT, with IF=0 wanted
 * afterwards and no live flags. That lets the return be a plain RET onto
 * the interrupted stack: it needs only MOV/PUSH/RET, which every emulator
 * executes, whereas KVM's instruction emulator (which runs whole guests on
 * the nested PVM hosts, see KVM-HOST-NOTES.md) has historically implemented
 * IRET for real mode only. Exceptions never return (they end the VM).
 */
	.text
	.code64

	.balign	16
	.globl	kt_isr_stubs
kt_isr_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	/* vectors where the CPU pushes an error code: 8, 10-14, 17, 21, 29, 30 */
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set	vec, vec + 1
	.endr

isr_common:
	cld
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	movq	%rsp, %rdi		/* struct kt_frame *; RSP is 16-aligned here */
	call	kt_isr_dispatch
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$16, %rsp		/* vector, error code */
	/* (%rsp) = RIP, 8 = CS, 16 = RFLAGS, 24 = RSP, 32 = SS */
	movq	%rax, isr_scratch(%rip)
	movq	(%rsp), %rax
	/* Should an implementation ignore the STI shadow and interrupt before
	 * HLT, returning there with IF=0 would halt forever: step over it. */
	cmpb	$0xF4, (%rax)
	jne	1f
	incq	%rax
1:	movq	24(%rsp), %rsp
	pushq	%rax			/* below the interrupted RSP: no red zone */
	movq	isr_scratch(%rip), %rax
	ret

	.section .bss
	.balign	8
isr_scratch:
	.skip	8

	.section .note.GNU-stack, "", @progbits
