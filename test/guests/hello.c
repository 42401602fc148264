/*
 * hello.elf - the demo guest: reports what the boot protocol handed over
 * (command line, E820 map, boot_params header fields, initrd) and the CPU
 * count from the MP table, then resets through the i8042.
 */
#include "kt.h"

void kt_main(void)
{
	kt_idt_init();
	uart_puts("Hello from a Kindling microVM\n");

	const char *cmd = bp_cmdline();
	kt_printf("cmdline: %s\n", cmd);
	uart_puts("KT: cmdline=");
	uart_puts(cmd); /* unbounded by kt_printf's buffer */
	uart_putc('\n');

	unsigned n = bp_e820_count();
	uint64_t ram = 0;
	kt_printf("KT: e820_entries=%u\n", n);
	for (unsigned i = 0; i < n; i++) {
		struct e820_entry e = bp_e820(i);
		kt_printf("KT: e820 %u %lx %lx %u\n", i, e.addr, e.size, e.type);
		if (e.type == E820_TYPE_RAM)
			ram += e.size;
	}
	kt_printf("memory: %lu MiB\n", ram >> 20);
	kt_printf("KT: e820_ram_bytes=%lu\n", ram);

	kt_printf("KT: boot_flag=%x\n", bp_u16(BP_BOOT_FLAG));
	kt_printf("KT: header=%c%c%c%c\n", bp_u8(BP_HEADER), bp_u8(BP_HEADER + 1),
		  bp_u8(BP_HEADER + 2), bp_u8(BP_HEADER + 3));
	kt_printf("KT: loader=%x\n", bp_u8(BP_TYPE_OF_LOADER));
	/* Header fields a bzImage brings and a loader must keep (or, for
	 * loadflags, only add CAN_USE_HEAP to). */
	kt_printf("KT: version=%x\n", bp_u16(BP_VERSION));
	kt_printf("KT: loadflags=%x\n", bp_u8(BP_LOADFLAGS));
	kt_printf("KT: setup_sects=%u\n", bp_u8(BP_SETUP_SECTS));
	kt_printf("KT: init_size=%x\n", bp_u32(BP_INIT_SIZE));
	kt_printf("KT: initrd_addr_max=%x\n", bp_u32(BP_INITRD_ADDR_MAX));

	uint64_t ia = bp_initrd_addr(), is = bp_initrd_size();
	kt_printf("KT: initrd=%lx %lu\n", ia, is);
	if (is) {
		if (ia + is < ia || ia + is > 0x100000000ull)
			kt_printf("KT: FAIL initrd outside the identity map\n");
		else
			kt_printf("KT: initrd_sum=%x\n", kt_byte_sum((const void *)(uintptr_t)ia, is));
	}

	struct kt_mp_info mp;
	kt_mp_scan(&mp);
	if (!mp.found)
		uart_puts("no MP table found\n");
	kt_printf("cpus: %u\n", mp.ncpus);
	kt_printf("KT: cpus=%u\n", mp.ncpus);

	/* boot_timer=1: signal boot completion as a Linux init written for Firecracker does, one
	 * byte 123 at the boot timer's address (Firecracker's --boot-timer device). */
	char bt[4] = "";
	if (kt_cmdline_get("boot_timer", bt, sizeof(bt)) > 0 && bt[0] == '1') {
		*(volatile uint8_t *)(uintptr_t)0xd0000000ull = 123;
		kt_printf("KT: boot_timer=signalled\n");
	}
	kt_done();
}
