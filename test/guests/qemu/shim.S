/*
 * QEMU boot shim (host-side testing only; Kindling never uses it).
 *
 * QEMU starts this ELF through PVH (Xen ELF note PHYS32_ENTRY): 32-bit
 * protected mode, paging off, EBX = struct hvm_start_info. The shim builds
 * the state Kindling hands a guest (boot GDT at 0x500, identity map of
 * 4 GiB with 2 MiB pages at 0x9000, boot_params at 0x7000, command line
 * at 0x20000, MP table at 0x9FC00) and jumps to the test guest, which
 * QEMU's generic loader placed at its ELF addresses (entry 0x200000).
 */
/* Transition page tables live in the shim's own .bss so nothing QEMU's
 * PVH option ROM left in low memory (start_info, memmap, command line) is
 * overwritten before shim_main has copied it; shim_main then writes
 * Kindling's tables at 0x9000 and the shim switches CR3 to them. */
#define PML4 shim_pt
#define PDPT (shim_pt + 0x1000)
#define PD0 (shim_pt + 0x2000)
#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CR0_PG 0x80000000
#define CR0_PE 0x1
#define CR4_PAE 0x20

	.section .note.pvh, "a"
	.balign	4
	.long	4		/* namesz */
	.long	4		/* descsz */
	.long	18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.long	pvh_entry

	.text
	.code32
	.globl	pvh_entry
pvh_entry:
	cli
	cld
	movl	%ebx, %esi		/* start_info, survives to 64-bit */
	lgdt	shim_gdtr
	/* page tables: zero 0x9000..0xEFFF, then fill */
	movl	$PML4, %edi
	movl	$(6 * 4096 / 4), %ecx
	xorl	%eax, %eax
	rep stosl
	movl	$(PDPT + 3), PML4
	movl	$(PD0 + 3), PDPT
	movl	$(PD0 + 0x1000 + 3), PDPT + 8
	movl	$(PD0 + 0x2000 + 3), PDPT + 16
	movl	$(PD0 + 0x3000 + 3), PDPT + 24
	movl	$PD0, %edi
	xorl	%eax, %eax		/* physical address >> 0, low 32 bits */
	xorl	%edx, %edx		/* high 32 bits */
	movl	$2048, %ecx
1:	movl	%eax, %ebx
	orl	$0x83, %ebx		/* present, writable, 2 MiB */
	movl	%ebx, (%edi)
	movl	%edx, 4(%edi)
	addl	$0x200000, %eax
	adcl	$0, %edx
	addl	$8, %edi
	loop	1b

	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$PML4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$0x08, $long64

	.code64
long64:
	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movq	$shim_stack_top, %rsp
	movl	%esi, %edi
	call	shim_main		/* builds boot_params etc., returns the entry */
	movl	$0x9000, %ecx		/* Kindling's PML4, same identity map */
	movq	%rcx, %cr3
	/* Kindling's boot GDT at 0x500 was written by shim_main: load it */
	lgdt	boot_gdtr
	movq	%rax, %rbx
	pushq	$0x08
	leaq	2f(%rip), %rcx
	pushq	%rcx
	lretq
2:	movw	$0x10, %cx
	movw	%cx, %ds
	movw	%cx, %es
	movw	%cx, %ss
	movw	%cx, %fs
	movw	%cx, %gs
	movq	$0x8FF0, %rsp
	movq	$0x7000, %rsi
	xorl	%eax, %eax
	jmp	*%rbx

	.data
	.balign	8
shim_gdt:
	.quad	0
	.quad	0x00AF9A000000FFFF
	.quad	0x00CF92000000FFFF
shim_gdtr:
	.word	3 * 8 - 1
	.long	shim_gdt
boot_gdtr:
	.word	4 * 8 - 1
	.quad	0x500

	.bss
	.balign	4096
shim_pt:
	.skip	6 * 4096
	.balign	16
	.skip	16384
shim_stack_top:

	.section .note.GNU-stack, "", @progbits
