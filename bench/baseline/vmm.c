/*
 * The bare C baseline for Kindling's start-rate, start-latency and density benchmarks: one process
 * per VM, the same KVM set-up Kindling performs (lib/vm/machine.ts and src-native/), the same
 * guest image, the same boot structures (lib/boot), the same run-loop work per exit. Nothing
 * here is shared between VMs, nothing is prepared ahead: each process opens /dev/kvm, reads the
 * image and builds everything itself, as a VMM started once per VM does.
 *
 * What the process does, in order (timed from main() to the first KVM_RUN, the "set-up"):
 *   open /dev/kvm, KVM_GET_API_VERSION, KVM_CHECK_EXTENSION x6, KVM_GET_VCPU_MMAP_SIZE,
 *   KVM_CREATE_VM, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,
 *   KVM_CREATE_PIT2, mmap guest RAM, KVM_SET_USER_MEMORY_REGION per RAM region, load the kernel
 *   (ELF64 PT_LOAD segments read straight into guest memory), command line, zero page with the
 *   E820 map, identity page tables, GDT/IDT, MP table, KVM_GET_SUPPORTED_CPUID, per vCPU:
 *   KVM_CREATE_VCPU + mmap kvm_run, CPUID normalised as lib/cpu does (with the emulated-KVM
 *   quirks when /sys/module/kvm_pvm exists), KVM_SET_CPUID2, KVM_SET_MSRS, KVM_GET/SET_LAPIC
 *   (LINT0 ExtINT, LINT1 NMI), for the BSP KVM_SET_REGS, KVM_GET/SET_SREGS, KVM_GET/SET_FPU.
 * Run loop: KVM_RUN on the main thread (one vCPU); COM1 is a 16550A reduced to what the test
 * guests use (LSR reports THRE|TEMT, THR bytes are collected and written to stdout at exit);
 * a write of 0xFE to the i8042 command port ends the VM ("reset"), as does KVM_EXIT_SHUTDOWN.
 *
 * Usage:
 *   vmm KERNEL MEM_MIB CMDLINE             run one VM; stderr gets one summary line:
 *                                          "setup_ns=N run_ns=N bytes=N exit=reset|shutdown|error"
 *   vmm --spawn N KERNEL MEM_MIB CMDLINE   start N such processes at once (posix_spawn of this
 *                                          binary), wait for all; stdout gets "wall_ns=N ok=N"
 *                                          and each child's summary line
 *   vmm --idle ...                          as the first form, but the VM is kept until SIGTERM;
 *                                          stderr gets "ready" when the guest printed "KT: READY"
 *   vmm --setup-only ...                    the set-up only: ends right before the first KVM_RUN
 *                                          (start latency of guests too slow to run here)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Layout (lib/boot/layout.ts). */
#define GDT_START 0x500
#define IDT_START 0x520
#define ZERO_PAGE_START 0x7000
#define BOOT_STACK_POINTER 0x8ff0
#define PML4_START 0x9000
#define PDPT_START 0xa000
#define PD_START 0xb000
#define CMDLINE_START 0x20000
#define CMDLINE_MAX_SIZE 2048
#define EBDA_START 0x9fc00
#define EBDA_END 0xa0000
#define HIMEM_START 0x100000
#define MMIO_GAP_START 0xd0000000ull
#define MMIO_GAP_END 0x100000000ull
#define IOAPIC_START 0xfec00000u
#define LAPIC_START 0xfee00000u
#define KVM_TSS_ADDRESS 0xfffbd000
#define KVM_IDENTITY_MAP_ADDRESS 0xfffbc000ull

#define COM1 0x3f8
#define I8042_COMMAND 0x64
#define I8042_CMD_RESET 0xfe

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "vmm: %s failed: %s\n", what, strerror(errno));
	exit(2);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int r = ioctl(fd, req, arg);
	if (r < 0)
		die(what);
	return r;
}

/* VMM_TRACE=1: time of each set-up step on stderr, for comparing with Kindling's. */
static uint64_t trace_t;
static void lap(const char *what)
{
	if (!getenv("VMM_TRACE"))
		return;
	uint64_t n = now_ns();
	fprintf(stderr, "%s=%llu ", what, (unsigned long long)((n - trace_t) / 1000));
	trace_t = n;
}

static uint8_t *mem;
static uint64_t mem_size;

static void w8(uint64_t a, uint8_t v) { mem[a] = v; }
static void w16(uint64_t a, uint16_t v) { memcpy(mem + a, &v, 2); }
static void w32(uint64_t a, uint32_t v) { memcpy(mem + a, &v, 4); }
static void w64(uint64_t a, uint64_t v) { memcpy(mem + a, &v, 8); }

/* ---- kernel (lib/boot/elf.ts: strict ELF64 loader, segments above 1 MiB) ---- */

static uint64_t load_elf(int fd)
{
	unsigned char eh[64];
	if (pread(fd, eh, sizeof eh, 0) != (ssize_t)sizeof eh || memcmp(eh, "\177ELF", 4) || eh[4] != 2 || eh[5] != 1) {
		fprintf(stderr, "vmm: not an ELF64 little-endian image\n");
		exit(2);
	}
	uint64_t entry, phoff;
	uint16_t phentsize, phnum;
	memcpy(&entry, eh + 24, 8);
	memcpy(&phoff, eh + 32, 8);
	memcpy(&phentsize, eh + 54, 2);
	memcpy(&phnum, eh + 56, 2);
	if (phentsize != 56 || phnum == 0 || phnum > 64) {
		fprintf(stderr, "vmm: bad program headers\n");
		exit(2);
	}
	unsigned char ph[64 * 56];
	if (pread(fd, ph, (size_t)phnum * 56, (off_t)phoff) != (ssize_t)phnum * 56)
		die("pread program headers");
	uint64_t phys_entry = 0;
	for (unsigned i = 0; i < phnum; i++) {
		const unsigned char *p = ph + i * 56;
		uint32_t type;
		uint64_t off, vaddr, paddr, filesz, memsz;
		memcpy(&type, p, 4);
		memcpy(&off, p + 8, 8);
		memcpy(&vaddr, p + 16, 8);
		memcpy(&paddr, p + 24, 8);
		memcpy(&filesz, p + 32, 8);
		memcpy(&memsz, p + 40, 8);
		if (type != 1 || memsz == 0)
			continue;
		if (filesz > memsz || paddr < HIMEM_START || paddr + memsz > mem_size) {
			fprintf(stderr, "vmm: segment %u outside guest RAM\n", i);
			exit(2);
		}
		uint64_t done = 0;
		while (done < filesz) {
			ssize_t n = pread(fd, mem + paddr + done, filesz - done, (off_t)(off + done));
			if (n <= 0)
				die("pread segment");
			done += (uint64_t)n;
		}
		memset(mem + paddr + filesz, 0, memsz - filesz);
		if (entry >= paddr && entry < paddr + memsz)
			phys_entry = entry;
		else if (!phys_entry && entry >= vaddr && entry - vaddr < memsz)
			phys_entry = paddr + (entry - vaddr);
	}
	if (!phys_entry) {
		fprintf(stderr, "vmm: entry point outside the segments\n");
		exit(2);
	}
	return phys_entry;
}

/* ---- boot structures (lib/boot: cmdline, zero-page, e820, page-tables, gdt, mptable) ---- */

static uint8_t checksum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;
	for (size_t i = 0; i < n; i++)
		s = (uint8_t)(s + p[i]);
	return (uint8_t)(0x100 - s);
}

static void write_boot_memory(const char *cmdline, unsigned cpus)
{
	size_t cl = strlen(cmdline);
	if (cl + 1 > CMDLINE_MAX_SIZE) {
		fprintf(stderr, "vmm: command line too long\n");
		exit(2);
	}
	memcpy(mem + CMDLINE_START, cmdline, cl + 1);

	/* Zero page with a synthesised setup header (ELF kernels). */
	uint64_t zp = ZERO_PAGE_START;
	memset(mem + zp, 0, 0x1000);
	w16(zp + 0x1fe, 0xaa55);
	w32(zp + 0x202, 0x53726448);
	w16(zp + 0x206, 0x020f);
	w8(zp + 0x210, 0xff);
	w8(zp + 0x211, 0x01 | 0x80);
	w16(zp + 0x224, 0xfe00);
	w32(zp + 0x230, 0x1000000);
	w32(zp + 0x238, (uint32_t)cl);
	w32(zp + 0x228, CMDLINE_START);
	w32(zp + 0xc8, 0);
	/* E820 (lib/boot/e820.ts). */
	uint64_t low = mem_size <= MMIO_GAP_START ? mem_size : MMIO_GAP_START;
	struct { uint64_t a, s; uint32_t t; } e[4] = {
		{ 0, EBDA_START, 1 },
		{ EBDA_START, EBDA_END - EBDA_START, 2 },
		{ HIMEM_START, low - HIMEM_START, 1 },
		{ MMIO_GAP_END, mem_size - low, 1 },
	};
	unsigned ne = mem_size > low ? 4 : 3;
	w8(zp + 0x1e8, (uint8_t)ne);
	for (unsigned i = 0; i < ne; i++) {
		w64(zp + 0x2d0 + i * 20, e[i].a);
		w64(zp + 0x2d0 + i * 20 + 8, e[i].s);
		w32(zp + 0x2d0 + i * 20 + 16, e[i].t);
	}

	/* Identity page tables for 4 GiB with 2 MiB pages. */
	memset(mem + PML4_START, 0, 0x1000);
	memset(mem + PDPT_START, 0, 0x1000);
	w64(PML4_START, PDPT_START | 3);
	for (unsigned g = 0; g < 4; g++) {
		uint64_t pd = PD_START + g * 0x1000;
		w64(PDPT_START + g * 8, pd | 3);
		for (unsigned i = 0; i < 512; i++)
			w64(pd + i * 8, ((uint64_t)(g * 512 + i) << 21) | 0x83);
	}

	/* GDT: null, 64-bit code (0xa09b), data (0xc093), TSS (0x808b); flat limits; empty IDT. */
	w64(GDT_START, 0);
	w64(GDT_START + 8, 0x00af9b000000ffffull);
	w64(GDT_START + 16, 0x00cf93000000ffffull);
	w64(GDT_START + 24, 0x008f8b000000ffffull);
	w64(IDT_START, 0);

	/* MP table (lib/boot/mptable.ts). */
	size_t size = 16 + 44 + cpus * 20 + (1 + 1 + 24 + 2) * 8;
	uint8_t *b = mem + EBDA_START;
	memset(b, 0, size);
	memcpy(b, "_MP_", 4);
	uint32_t ptr = EBDA_START + 16;
	memcpy(b + 4, &ptr, 4);
	b[8] = 1;
	b[9] = 4;
	b[10] = checksum(b, 16);
	uint8_t *t = b + 16;
	uint8_t *p = t + 44;
	unsigned entries = 0;
	uint8_t ioapic_id = (uint8_t)cpus;
	for (unsigned id = 0; id < cpus; id++, p += 20, entries++) {
		p[0] = 0;
		p[1] = (uint8_t)id;
		p[2] = 0x14;
		p[3] = 1 | (id == 0 ? 2 : 0);
		uint32_t sig = 0x600, feat = (1 << 0) | (1 << 9);
		memcpy(p + 4, &sig, 4);
		memcpy(p + 8, &feat, 4);
	}
	p[0] = 1;
	memcpy(p + 2, "ISA   ", 6);
	p += 8;
	entries++;
	p[0] = 2;
	p[1] = ioapic_id;
	p[2] = 0x11;
	p[3] = 1;
	uint32_t ioapic = IOAPIC_START;
	memcpy(p + 4, &ioapic, 4);
	p += 8;
	entries++;
	for (unsigned irq = 0; irq < 24; irq++, p += 8, entries++) {
		p[0] = 3;
		p[5] = (uint8_t)irq;
		p[6] = ioapic_id;
		p[7] = (uint8_t)irq;
	}
	p[0] = 4; p[1] = 3; p[6] = 0; p[7] = 0; p += 8; entries++;
	p[0] = 4; p[1] = 1; p[6] = 0xff; p[7] = 1; p += 8; entries++;
	memcpy(t, "PCMP", 4);
	uint16_t len = (uint16_t)(size - 16), ne16 = (uint16_t)entries;
	memcpy(t + 4, &len, 2);
	t[6] = 4;
	memcpy(t + 8, "KINDLING", 8);
	memcpy(t + 16, "000000000000", 12);
	memcpy(t + 34, &ne16, 2);
	uint32_t lapic = LAPIC_START;
	memcpy(t + 36, &lapic, 4);
	t[7] = checksum(t, size - 16);
}

/* ---- CPUID (lib/cpu/cpuid.ts normalizeCpuid + host-quirks.ts applyCpuidQuirks) ---- */

static void normalize_cpuid(struct kvm_cpuid2 *c, unsigned id, unsigned count, int emulated)
{
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		switch (e->function) {
		case 1: {
			uint32_t clflush = (e->ebx >> 8) & 0xff;
			if (!clflush)
				clflush = 8;
			e->ebx = (e->ebx & 0xff) | (clflush << 8) | (count << 16) | (id << 24);
			e->ecx = (e->ecx & ~(1u << 15)) | (1u << 31);
			e->edx = count > 1 ? e->edx | (1u << 28) : e->edx & ~(1u << 28);
			if (emulated)
				e->ecx &= ~(1u << 13);
			break;
		}
		case 4:
			if ((e->eax & 0x1f) == 0)
				break;
			{
				uint32_t level = (e->eax >> 5) & 7;
				uint32_t sharing = level >= 3 ? count - 1 : 0;
				e->eax = (e->eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
			}
			break;
		case 6:
			e->eax &= ~(1u << 1);
			e->ecx &= ~(1u << 3);
			break;
		case 0xa:
			e->eax = e->ebx = e->ecx = e->edx = 0;
			break;
		case 0xb:
		case 0x1f:
			e->flags |= 1;
			e->edx = id;
			if (e->index == 0) {
				e->eax = 0; e->ebx = 1; e->ecx = (1 << 8);
			} else if (e->index == 1) {
				unsigned bits = 0;
				while ((1u << bits) < count)
					bits++;
				e->eax = bits; e->ebx = count; e->ecx = (2 << 8) | 1;
			} else {
				e->eax = 0; e->ebx = 0; e->ecx = e->index & 0xff;
			}
			break;
		case 0x40000001:
			if (emulated)
				e->eax &= ~((1u << 7) | (1u << 9) | (1u << 11) | (1u << 12) | (1u << 13));
			break;
		}
	}
}

/* ---- the VM ---- */

static volatile sig_atomic_t terminate;
static void on_term(int s) { (void)s; terminate = 1; }

enum mode { RUN, IDLE, SETUP_ONLY };

static int run_vm(const char *kernel, unsigned mem_mib, const char *cmdline, enum mode mode)
{
	int idle = mode == IDLE;
	uint64_t t0 = now_ns();
	trace_t = t0;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != 12) {
		fprintf(stderr, "vmm: KVM API version is not 12\n");
		return 2;
	}
	static const int caps[] = { KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_CAP_IRQFD, KVM_CAP_PIT2,
				    KVM_CAP_IOEVENTFD, KVM_CAP_IMMEDIATE_EXIT };
	for (unsigned i = 0; i < sizeof caps / sizeof caps[0]; i++)
		if (ioctl(kvm, KVM_CHECK_EXTENSION, caps[i]) <= 0) {
			fprintf(stderr, "vmm: KVM lacks capability %d\n", caps[i]);
			return 2;
		}
	int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
	int vm;
	do
		vm = ioctl(kvm, KVM_CREATE_VM, 0);
	while (vm < 0 && errno == EINTR);
	if (vm < 0)
		die("KVM_CREATE_VM");
	lap("open+createVm");
	if (ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)KVM_TSS_ADDRESS) < 0)
		die("KVM_SET_TSS_ADDR");
	uint64_t idmap = KVM_IDENTITY_MAP_ADDRESS;
	xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap, "KVM_SET_IDENTITY_MAP_ADDR");
	xioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	xioctl(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

	lap("tss..pit");
	mem_size = (uint64_t)mem_mib << 20;
	/* Between guard pages, as Kindling maps it (a VMA of its own in smaps). */
	uint8_t *res = mmap(NULL, mem_size + 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		die("mmap guest memory");
	mem = res + 4096;
	if (mprotect(mem, mem_size, PROT_READ | PROT_WRITE) < 0)
		die("mprotect guest memory");
	uint64_t low = mem_size <= MMIO_GAP_START ? mem_size : MMIO_GAP_START;
	struct kvm_userspace_memory_region r0 = { .slot = 0, .guest_phys_addr = 0, .memory_size = low,
						   .userspace_addr = (uint64_t)(uintptr_t)mem };
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r0, "KVM_SET_USER_MEMORY_REGION");
	if (mem_size > low) {
		struct kvm_userspace_memory_region r1 = { .slot = 1, .guest_phys_addr = MMIO_GAP_END,
							   .memory_size = mem_size - low,
							   .userspace_addr = (uint64_t)(uintptr_t)(mem + low) };
		xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r1, "KVM_SET_USER_MEMORY_REGION");
	}

	lap("mmap+slots");
	int kfd = open(kernel, O_RDONLY | O_CLOEXEC);
	if (kfd < 0)
		die("open kernel");
	uint64_t entry = load_elf(kfd);
	close(kfd);
	lap("loads");
	write_boot_memory(cmdline, 1);
	lap("writes");

	int nent = 256;
	struct kvm_cpuid2 *cpuid;
	for (;;) {
		cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			break;
		if (errno != E2BIG || nent >= 4096)
			die("KVM_GET_SUPPORTED_CPUID");
		free(cpuid);
		nent *= 2;
	}
	int emulated = access("/sys/module/kvm_pvm", F_OK) == 0;

	int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	normalize_cpuid(cpuid, 0, 1, emulated);
	xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
	free(cpuid);

	static const uint32_t msr_index[] = { 0x174, 0x175, 0x176, 0xc0000081, 0xc0000083, 0xc0000102,
					      0xc0000084, 0xc0000082, 0x10, 0x1a0, 0x2ff };
	static const uint64_t msr_data[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, (1 << 11) | 6 };
	const unsigned nmsrs = sizeof msr_index / sizeof msr_index[0];
	struct kvm_msrs *msrs = calloc(1, sizeof *msrs + nmsrs * sizeof(struct kvm_msr_entry));
	msrs->nmsrs = nmsrs;
	for (unsigned i = 0; i < nmsrs; i++) {
		msrs->entries[i].index = msr_index[i];
		msrs->entries[i].data = msr_data[i];
	}
	if (ioctl(vcpu, KVM_SET_MSRS, msrs) != (int)nmsrs)
		die("KVM_SET_MSRS");
	free(msrs);

	struct kvm_lapic_state lapic;
	xioctl(vcpu, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC");
	uint32_t lint0, lint1;
	memcpy(&lint0, lapic.regs + 0x350, 4);
	memcpy(&lint1, lapic.regs + 0x360, 4);
	lint0 = (lint0 & ~0x700u) | (7u << 8);
	lint1 = (lint1 & ~0x700u) | (4u << 8);
	memcpy(lapic.regs + 0x350, &lint0, 4);
	memcpy(lapic.regs + 0x360, &lint1, 4);
	xioctl(vcpu, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");

	struct kvm_regs regs;
	memset(&regs, 0, sizeof regs);
	regs.rip = entry;
	regs.rsi = ZERO_PAGE_START;
	regs.rsp = regs.rbp = BOOT_STACK_POINTER;
	regs.rflags = 2;
	xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

	struct kvm_sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1,
				    .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1, .avl = 0, .unusable = 0 };
	struct kvm_segment data = { .base = 0, .limit = 0xffffffff, .selector = 16, .type = 3, .present = 1,
				    .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1, .avl = 0, .unusable = 0 };
	struct kvm_segment tss = { .base = 0, .limit = 0xffffffff, .selector = 24, .type = 11, .present = 1,
				   .dpl = 0, .db = 0, .s = 0, .l = 0, .g = 1, .avl = 0, .unusable = 0 };
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.tr = tss;
	sregs.gdt.base = GDT_START;
	sregs.gdt.limit = 4 * 8 - 1;
	sregs.idt.base = IDT_START;
	sregs.idt.limit = 7;
	sregs.cr0 = 1 | (1 << 4) | (1u << 31);
	sregs.cr3 = PML4_START;
	sregs.cr4 = 1 << 5;
	sregs.efer = (1 << 8) | (1 << 10);
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

	struct kvm_fpu fpu;
	xioctl(vcpu, KVM_GET_FPU, &fpu, "KVM_GET_FPU");
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	xioctl(vcpu, KVM_SET_FPU, &fpu, "KVM_SET_FPU");

	lap("vcpus");
	uint64_t t1 = now_ns();
	if (mode == SETUP_ONLY) {
		fprintf(stderr, "setup_ns=%llu run_ns=0 bytes=0 exit=setup\n", (unsigned long long)(t1 - t0));
		return 0;
	}

	/* Run loop. */
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap);
	uint8_t lcr = 0;
	const char *why = "error";
	int ready_reported = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				if (terminate) {
					why = "stopped";
					break;
				}
				continue;
			}
			die("KVM_RUN");
		}
		if (run->exit_reason == KVM_EXIT_IO) {
			uint8_t *d = (uint8_t *)run + run->io.data_offset;
			uint16_t port = run->io.port;
			int is_out = run->io.direction == KVM_EXIT_IO_OUT;
			for (uint32_t i = 0; i < run->io.count; i++, d += run->io.size) {
				if (port >= COM1 && port < COM1 + 8) {
					unsigned off = port - COM1;
					if (is_out) {
						if (off == 3)
							lcr = d[0];
						else if (off == 0 && !(lcr & 0x80)) {
							if (len == cap)
								out = realloc(out, cap *= 2);
							out[len++] = (char)d[0];
							if (idle && !ready_reported && len >= 10 && memmem(out, len, "KT: READY", 9)) {
								ready_reported = 1;
								fprintf(stderr, "ready\n");
							}
						}
					} else {
						memset(d, 0, run->io.size);
						if (off == 5)
							d[0] = 0x60;
						else if (off == 2)
							d[0] = 0x01;
						else if (off == 6)
							d[0] = 0xb0;
						else if (off == 3)
							d[0] = lcr;
					}
				} else if (port == I8042_COMMAND && is_out && d[0] == I8042_CMD_RESET) {
					why = "reset";
					goto done;
				} else if (!is_out) {
					memset(d, 0xff, run->io.size);
				}
			}
			continue;
		}
		if (run->exit_reason == KVM_EXIT_MMIO) {
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, run->mmio.len);
			continue;
		}
		if (run->exit_reason == KVM_EXIT_INTR)
			continue;
		why = run->exit_reason == KVM_EXIT_SHUTDOWN ? "shutdown" : "error";
		break;
	}
done:;
	uint64_t t2 = now_ns();
	for (size_t w = 0; w < len;) {
		ssize_t n = write(1, out + w, len - w);
		if (n <= 0)
			break;
		w += (size_t)n;
	}
	fprintf(stderr, "setup_ns=%llu run_ns=%llu bytes=%zu exit=%s\n", (unsigned long long)(t1 - t0),
		(unsigned long long)(t2 - t1), len, why);
	munmap(run, run_size);
	close(vcpu);
	munmap(mem - 4096, mem_size + 8192);
	close(vm);
	close(kvm);
	return 0;
}

static int spawn_many(int n, char **args)
{
	char *self = "/proc/self/exe";
	char path[4096];
	ssize_t pl = readlink(self, path, sizeof path - 1);
	if (pl < 0)
		die("readlink /proc/self/exe");
	path[pl] = 0;
	int errp[2];
	if (pipe(errp) < 0)
		die("pipe");
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	posix_spawn_file_actions_addclose(&fa, errp[0]);
	char *argv[8] = { path, args[0], args[1], args[2], NULL };
	pid_t *pids = calloc((size_t)n, sizeof *pids);
	uint64_t t0 = now_ns();
	for (int i = 0; i < n; i++) {
		int e = posix_spawn(&pids[i], path, &fa, NULL, argv, environ);
		if (e) {
			errno = e;
			die("posix_spawn");
		}
	}
	close(errp[1]);
	int ok = 0;
	for (int i = 0; i < n; i++) {
		int st;
		if (waitpid(pids[i], &st, 0) > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
	}
	uint64_t t1 = now_ns();
	printf("wall_ns=%llu ok=%d\n", (unsigned long long)(t1 - t0), ok);
	char buf[65536];
	ssize_t r;
	while ((r = read(errp[0], buf, sizeof buf)) > 0)
		fwrite(buf, 1, (size_t)r, stdout);
	return ok == n ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "--spawn") == 0)
		return spawn_many(atoi(argv[2]), argv + 3);
	if (argc == 5 && strcmp(argv[1], "--idle") == 0) {
		signal(SIGTERM, on_term);
		/* SIGTERM must interrupt KVM_RUN (no SA_RESTART). */
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_term;
		sigaction(SIGTERM, &sa, NULL);
		return run_vm(argv[2], (unsigned)atoi(argv[3]), argv[4], IDLE);
	}
	if (argc == 5 && strcmp(argv[1], "--setup-only") == 0)
		return run_vm(argv[2], (unsigned)atoi(argv[3]), argv[4], SETUP_ONLY);
	if (argc == 4)
		return run_vm(argv[1], (unsigned)atoi(argv[2]), argv[3], RUN);
	fprintf(stderr, "usage: vmm [--spawn N | --idle | --setup-only] KERNEL MEM_MIB CMDLINE\n");
	return 2;
}
