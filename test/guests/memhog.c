/*
 * memhog.elf - touches guest RAM page by page, so that the host has to back all of it: the test
 * of a jailed VM's memory limit (its cgroup stops the process before the guest is done).
 *
 * Command line: mib=<N> (how much to touch, from 8 MiB up; default: all RAM below 4 GiB). One
 * 8-byte write per 4 KiB page, ascending, of every E820 RAM range from 8 MiB (the image, stack
 * and boot structures are below), prints "KT: touched=<MiB>" every 16 MiB and at the end, then
 * "KT: DONE" and resets. A guest that gets to DONE was not stopped.
 */
#include "kt.h"

#define START (8ull << 20)
#define PAGE 4096ull
#define REPORT_EVERY (16ull << 20)

void kt_main(void)
{
	kt_idt_init();
	char arg[24];
	uint64_t limit = ~0ull;
	if (kt_cmdline_get("mib", arg, sizeof arg) > 0) {
		uint64_t v = 0;
		for (const char *p = arg; *p >= '0' && *p <= '9'; p++)
			v = v * 10 + (uint64_t)(*p - '0');
		limit = v << 20;
	}
	uint64_t touched = 0, next = REPORT_EVERY;
	unsigned n = bp_e820_count();
	for (unsigned i = 0; i < n && touched < limit; i++) {
		struct e820_entry e = bp_e820(i);
		if (e.type != E820_TYPE_RAM)
			continue;
		uint64_t lo = e.addr < START ? START : e.addr;
		uint64_t hi = e.addr + e.size;
		if (hi > 0x100000000ull)
			hi = 0x100000000ull; /* the identity map ends at 4 GiB */
		for (uint64_t a = lo; a + PAGE <= hi && touched < limit; a += PAGE) {
			*(volatile uint64_t *)(uintptr_t)a = a;
			touched += PAGE;
			if (touched >= next) {
				kt_printf("KT: touched=%lu\n", (unsigned long)(touched >> 20));
				next += REPORT_EVERY;
			}
		}
	}
	kt_printf("KT: touched=%lu\n", (unsigned long)(touched >> 20));
	kt_done();
}
