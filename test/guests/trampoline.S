/*
 * Application-processor trampoline, copied by smp.c to TR_BASE (0x8000)
 * and entered by a STARTUP IPI with vector 0x08 (CS = 0x0800, IP = 0).
 *
 * real mode -> 32-bit protected mode -> long mode (compatibility) -> 64-bit.
 * The code runs at TR_BASE, not where it is linked, so every address is
 * written as TR_BASE + (label - trampoline_start); those differences are
 * assembly-time constants. The BSP fills the tr_* fields in the copy.
 */
#define TR_BASE 0x8000
#define ABS(x) (TR_BASE + ((x) - trampoline_start))
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18
#define CR0_PE 0x1
#define CR4_PAE 0x20
#define MSR_EFER 0xC0000080

	.section .rodata
	.balign	16
	.globl	trampoline_start, trampoline_end
	.globl	tr_cr3, tr_cr0, tr_efer, tr_stack, tr_entry
trampoline_start:
	.code16
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds		/* DS base = TR_BASE: offsets are label - start */
	lgdtl	tr_gdtr - trampoline_start
	movl	%cr0, %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	ljmpl	$SEL_CODE32, $ABS(pm32)

	.code32
pm32:
	movw	$SEL_DATA, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	ABS(tr_cr3), %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	movl	ABS(tr_efer), %eax	/* the BSP's EFER: LME (+ SCE/NXE as the BSP has) */
	xorl	%edx, %edx
	wrmsr
	movl	ABS(tr_cr0), %eax	/* the BSP's CR0: PG|PE and friends */
	movl	%eax, %cr0		/* paging on with LME: long mode, compat */
	ljmpl	$SEL_CODE64, $ABS(lm64)

	.code64
lm64:
	movw	$SEL_DATA, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movq	ABS(tr_stack), %rsp
	movq	ABS(tr_entry), %rax
	call	*%rax
1:	cli
	hlt
	jmp	1b

	.balign	8
tr_gdt:
	.quad	0
	.quad	0x00AF9A000000FFFF	/* 0x08: 64-bit code */
	.quad	0x00CF92000000FFFF	/* 0x10: flat data */
	.quad	0x00CF9A000000FFFF	/* 0x18: 32-bit code */
tr_gdt_end:
tr_gdtr:
	.word	tr_gdt_end - tr_gdt - 1
	.long	ABS(tr_gdt)
	.balign	8
tr_cr3:	.quad	0
tr_stack: .quad	0
tr_entry: .quad	0
tr_cr0:	.long	0
tr_efer: .long	0
trampoline_end:

	.section .note.GNU-stack, "", @progbits
