/*
 * Boot sector and setup header of hello.bzImage: the part of a bzImage a
 * 64-bit boot loader reads (Documentation/arch/x86/boot.rst, "The Real-Mode
 * Kernel Header"). There is no real-mode setup code: Kindling enters the
 * protected-mode part at load address + 0x200, which is what the test checks.
 * Values differ from what Kindling synthesizes for ELF kernels, so the guest's
 * report shows whose header reached the zero page.
 */
	.section .bzhead, ""
	.org	0x1f1
	.byte	1			/* setup_sects: payload at file offset (1+1)*512 */
	.word	0			/* root_flags */
	.long	0			/* syssize (unused by 64-bit loaders) */
	.word	0			/* ram_size */
	.word	0xffff			/* vid_mode */
	.word	0			/* root_dev */
	.word	0xaa55			/* boot_flag */
	.byte	0xeb, hdr_end - 0x202	/* jump; its second byte gives the header's length */
	.ascii	"HdrS"			/* header */
	.word	0x020f			/* version 2.15 */
	.long	0			/* realmode_swtch */
	.word	0x1000			/* start_sys_seg */
	.word	0			/* kernel_version */
	.byte	0			/* type_of_loader: the loader writes it */
	.byte	0x01			/* loadflags: LOADED_HIGH */
	.word	0x8000			/* setup_move_size */
	.long	0x100000		/* code32_start */
	.long	0			/* ramdisk_image */
	.long	0			/* ramdisk_size */
	.long	0			/* bootsect_kludge */
	.word	0			/* heap_end_ptr */
	.byte	0			/* ext_loader_ver */
	.byte	0			/* ext_loader_type */
	.long	0			/* cmd_line_ptr */
	.long	0x1ffffff		/* initrd_addr_max: 32 MiB, below the top of a 64 MiB guest */
	.long	0x200000		/* kernel_alignment */
	.byte	0			/* relocatable_kernel: runs where it is linked */
	.byte	21			/* min_alignment (2 MiB) */
	.word	0x0001			/* xloadflags: XLF_KERNEL_64 */
	.long	511			/* cmdline_size */
	.long	0			/* hardware_subarch */
	.quad	0			/* hardware_subarch_data */
	.long	0			/* payload_offset */
	.long	0			/* payload_length */
	.quad	0			/* setup_data */
	.quad	0x100000		/* pref_address */
	.long	__bz_init_size		/* init_size: from the load address to the end of .bss */
	.long	0			/* handover_offset */
	.long	0			/* kernel_info_offset */
hdr_end:
	.org	0x400			/* end of the setup sector */

/* The protected-mode part starts with 0x200 bytes where a kernel keeps its
 * 32-bit entry; a 64-bit loader must skip them. hlt, so a wrong entry stops. */
	.section .bzstub, "ax"
	.fill	0x200, 1, 0xf4

	.section .note.GNU-stack, "", @progbits
