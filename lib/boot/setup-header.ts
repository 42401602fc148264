/**
 * Offsets and flags of the x86 boot protocol setup header (`struct setup_header`), which sits at
 * offset 0x1F1 both in a bzImage file and in `struct boot_params`.
 * Source: Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header".
 * @module
 */

/** `setup_sects`: size of the real-mode setup in 512-byte sectors (0 means 4). */
export const HDR_SETUP_SECTS = 0x1f1;
/** `boot_flag`: 0xAA55. */
export const HDR_BOOT_FLAG = 0x1fe;
/** `jump`: its second byte gives the header's end ({@link HDR_START_OF_HEADER} + byte). */
export const HDR_JUMP = 0x200;
/** `header`: the "HdrS" magic. */
export const HDR_HEADER = 0x202;
/** `version`: boot protocol version, e.g. 0x020f. */
export const HDR_VERSION = 0x206;
/** `type_of_loader`. */
export const HDR_TYPE_OF_LOADER = 0x210;
/** `loadflags`. */
export const HDR_LOADFLAGS = 0x211;
/** `code32_start`: where the protected-mode kernel expects to be loaded. */
export const HDR_CODE32_START = 0x214;
/** `ramdisk_image`: low 32 bits of the initrd address. */
export const HDR_RAMDISK_IMAGE = 0x218;
/** `ramdisk_size`: low 32 bits of the initrd size. */
export const HDR_RAMDISK_SIZE = 0x21c;
/** `heap_end_ptr`. */
export const HDR_HEAP_END_PTR = 0x224;
/** `cmd_line_ptr`: low 32 bits of the command line address. */
export const HDR_CMD_LINE_PTR = 0x228;
/** `initrd_addr_max`: highest address the initrd may occupy. */
export const HDR_INITRD_ADDR_MAX = 0x22c;
/** `kernel_alignment`. */
export const HDR_KERNEL_ALIGNMENT = 0x230;
/** `relocatable_kernel`. */
export const HDR_RELOCATABLE_KERNEL = 0x234;
/** `xloadflags`. */
export const HDR_XLOADFLAGS = 0x236;
/** `cmdline_size`: longest command line the kernel accepts, without the NUL. */
export const HDR_CMDLINE_SIZE = 0x238;
/** `pref_address`. */
export const HDR_PREF_ADDRESS = 0x258;
/** `init_size`: linear memory the kernel needs from its runtime start before it reads the memory map. */
export const HDR_INIT_SIZE = 0x260;
/** Where the header's length is measured from. */
export const HDR_START_OF_HEADER = 0x202;
/** End of the space boot_params reserves for the setup header. */
export const HDR_MAX_END = 0x290;

/** `boot_flag` value. */
export const BOOT_FLAG_MAGIC = 0xaa55;
/** `header` value: "HdrS" little-endian. */
export const HDRS_MAGIC = 0x53726448;
/** `type_of_loader` for a loader without an assigned ID. */
export const LOADER_TYPE_UNDEFINED = 0xff;
/** `loadflags` bit: the protected-mode code is loaded at 0x100000. */
export const LOADED_HIGH = 1 << 0;
/** `loadflags` bit: `heap_end_ptr` is valid. */
export const CAN_USE_HEAP = 1 << 7;
/** `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200. */
export const XLF_KERNEL_64 = 1 << 0;
/** `xloadflags` bit: kernel, initrd and boot_params may be above 4 GiB. */
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;
/** Offset of the 64-bit entry point from the protected-mode kernel's load address. */
export const STARTUP_64_OFFSET = 0x200;
/** Lowest protocol version we load: 2.12 added xloadflags, so the 64-bit entry is declared. */
export const MIN_BZIMAGE_PROTOCOL = 0x020c;
/** Protocol version we claim in a header synthesized for an ELF kernel. */
export const SYNTHESIZED_PROTOCOL = 0x020f;
/** `heap_end_ptr` a loader sets with CAN_USE_HEAP: end of setup heap, 0x200 below the 0x10000 real-mode segment end. */
export const HEAP_END_PTR = 0xfe00;
/** `kernel_alignment` we claim for ELF kernels (Linux's CONFIG_PHYSICAL_ALIGN default). */
export const SYNTHESIZED_KERNEL_ALIGNMENT = 0x100_0000;
/** `initrd_addr_max` the protocol prescribes when a kernel predates the field. */
export const DEFAULT_INITRD_ADDR_MAX = 0x37ff_ffff;
