/* QEMU boot shim, 64-bit part: see shim.S. Host-side testing only. */
#include <stdint.h>

#define BOOT_PARAMS 0x7000
#define CMDLINE 0x20000
#define CMDLINE_MAX 4095
#define BOOT_GDT 0x500
#define MP_BASE 0x9FC00
#define GUEST_ENTRY 0x200000 /* start.S is first in .text (link.ld) */
#define HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};
struct hvm_modlist_entry {
	uint64_t paddr, size, cmdline_paddr, reserved;
};

uint64_t shim_main(uint32_t start_info);

static void put8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static void put16(uint64_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static void put32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static void put64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }
static void zero(uint64_t a, uint64_t n) { while (n--) put8(a++, 0); }

static uint8_t checksum(uint64_t a, unsigned n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *(volatile uint8_t *)a++);
	return (uint8_t)-s;
}

/* "shim.cpus=N" on the command line, default 1 */
static unsigned cmdline_cpus(const char *c)
{
	static const char key[] = "shim.cpus=";
	for (; *c; c++) {
		unsigned i = 0;
		while (key[i] && c[i] == key[i])
			i++;
		if (!key[i]) {
			unsigned n = 0;
			for (c += i; *c >= '0' && *c <= '9'; c++)
				n = n * 10 + (unsigned)(*c - '0');
			return n ? n : 1;
		}
	}
	return 1;
}

static void mp_table(unsigned ncpus)
{
	uint64_t fp = MP_BASE, cfg = MP_BASE + 16;
	unsigned len = 44 + 20 * ncpus;
	zero(MP_BASE, 0x400);
	/* floating pointer */
	put32(fp, 0x5f504d5f); /* "_MP_" */
	put32(fp + 4, (uint32_t)cfg);
	put8(fp + 8, 1);       /* length in 16-byte units */
	put8(fp + 9, 4);       /* spec 1.4 */
	put8(fp + 10, checksum(fp, 16));
	/* configuration table header */
	put32(cfg, 0x504d4350); /* "PCMP" */
	put16(cfg + 4, (uint16_t)len);
	put8(cfg + 6, 4);
	for (unsigned i = 0; i < 8; i++)
		put8(cfg + 8 + i, (uint8_t)"KTSHIM  "[i]);
	put16(cfg + 34, (uint16_t)ncpus);
	put32(cfg + 36, 0xFEE00000);
	for (unsigned i = 0; i < ncpus; i++) {
		uint64_t e = cfg + 44 + 20 * i;
		put8(e, 0);                         /* processor */
		put8(e + 1, (uint8_t)i);            /* APIC ID */
		put8(e + 2, 0x14);                  /* APIC version */
		put8(e + 3, (uint8_t)(1 | (i == 0 ? 2 : 0))); /* enabled, BSP */
	}
	put8(cfg + 7, checksum(cfg, len));
}

static char cmd[CMDLINE_MAX + 1];
static struct hvm_memmap_entry map[128];
static unsigned nmap;
static uint64_t initrd_addr, initrd_size;

uint64_t shim_main(uint32_t si_addr)
{
	const struct hvm_start_info *si = (const void *)(uint64_t)si_addr;
	uint64_t bp = BOOT_PARAMS;

	/* Snapshot everything QEMU handed over before writing low memory. */
	if (si->magic == HVM_START_MAGIC) {
		if (si->cmdline_paddr) {
			const char *c = (const char *)si->cmdline_paddr;
			for (unsigned i = 0; c[i] && i < CMDLINE_MAX; i++)
				cmd[i] = c[i];
		}
		if (si->version >= 1 && si->memmap_paddr) {
			const struct hvm_memmap_entry *m = (const void *)si->memmap_paddr;
			nmap = si->memmap_entries > 128 ? 128 : si->memmap_entries;
			for (unsigned i = 0; i < nmap; i++)
				map[i] = m[i];
		}
		if (si->nr_modules && si->modlist_paddr) {
			const struct hvm_modlist_entry *mod = (const void *)si->modlist_paddr;
			initrd_addr = mod->paddr;
			initrd_size = mod->size;
		}
	}

	zero(bp, 4096);
	for (unsigned i = 0; i < nmap; i++) {
		uint64_t e = bp + 0x2D0 + 20 * i;
		put64(e, map[i].addr);
		put64(e + 8, map[i].size);
		put32(e + 16, map[i].type);
	}
	put8(bp + 0x1E8, (uint8_t)nmap);
	put32(bp + 0x218, (uint32_t)initrd_addr);
	put32(bp + 0x0C0, (uint32_t)(initrd_addr >> 32));
	put32(bp + 0x21C, (uint32_t)initrd_size);
	put32(bp + 0x0C4, (uint32_t)(initrd_size >> 32));

	unsigned i = 0;
	for (; cmd[i]; i++)
		put8(CMDLINE + i, (uint8_t)cmd[i]);
	put8(CMDLINE + i, 0);

	/* Kindling's identity map: PML4 0x9000, PDPT 0xA000, PDs 0xB000.. */
	zero(0x9000, 6 * 4096);
	put64(0x9000, 0xA000 | 3);
	for (unsigned g = 0; g < 4; g++)
		put64(0xA000 + 8 * g, (0xB000 + 0x1000 * g) | 3);
	for (uint64_t j = 0; j < 2048; j++)
		put64(0xB000 + 8 * j, (j << 21) | 0x83);
	put32(bp + 0x228, CMDLINE);
	put16(bp + 0x1FE, 0xAA55);
	put32(bp + 0x202, 0x53726448); /* "HdrS" */
	put8(bp + 0x210, 0xFF);

	mp_table(cmdline_cpus(cmd));

	put64(BOOT_GDT, 0);
	put64(BOOT_GDT + 8, 0x00AF9B000000FFFFull);
	put64(BOOT_GDT + 16, 0x00CF93000000FFFFull);
	put64(BOOT_GDT + 24, 0);
	return GUEST_ENTRY;
}
