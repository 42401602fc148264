/*
 * rt.c - runtime for the test guests: serial output, printf-lite, memory
 * helpers, boot_params and command-line parsing, the MP table, an IDT
 * whose exception handlers report over serial, and the i8042 reset.
 */
#include "kt.h"

const uint8_t *kt_boot_params;

/* ---- strings and memory ---------------------------------------------- */

/*
 * Word-at-a-time when aligned: under KVM's instruction emulator every
 * instruction costs about a microsecond, so byte loops over sector
 * buffers would dominate a guest's run time.
 */
void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;
	if ((((uintptr_t)dp | (uintptr_t)sp) & 7) == 0) {
		for (; n >= 8; n -= 8, dp += 8, sp += 8)
			*(uint64_t *)dp = *(const uint64_t *)sp;
	}
	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memset(void *d, int c, size_t n)
{
	uint8_t *dp = d;
	if (((uintptr_t)dp & 7) == 0) {
		uint64_t w = 0x0101010101010101ull * (uint8_t)c;
		for (; n >= 8; n -= 8, dp += 8)
			*(uint64_t *)dp = w;
	}
	while (n--)
		*dp++ = (uint8_t)c;
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;
	if (dp < sp) {
		while (n--)
			*dp++ = *sp++;
	} else {
		while (n--)
			dp[n] = sp[n];
	}
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t kt_strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int kt_strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (uint8_t)*a - (uint8_t)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

/*
 * Byte sum with 16-bit lanes: each 64-bit word adds at most 2*255 to every
 * lane, so folding the lanes every 64 words can never overflow them.
 */
uint32_t kt_byte_sum(const void *p, uint64_t n)
{
	const uint8_t *b = p;
	uint32_t sum = 0;
	const uint64_t m = 0x00FF00FF00FF00FFull;

	while (n && ((uintptr_t)b & 7)) {
		sum += *b++;
		n--;
	}
	while (n >= 8) {
		uint64_t lanes = 0;
		unsigned k = 0;
		const uint64_t *w = (const uint64_t *)b;
		for (; k < 64 && n >= 8; k++, n -= 8) {
			uint64_t x = w[k];
			lanes += (x & m) + ((x >> 8) & m);
		}
		b += 8 * k;
		lanes = (lanes & 0x0000FFFF0000FFFFull) + ((lanes >> 16) & 0x0000FFFF0000FFFFull);
		sum += (uint32_t)lanes + (uint32_t)(lanes >> 32);
	}
	while (n--)
		sum += *b++;
	return sum;
}

/* ---- serial ----------------------------------------------------------- */

void uart_init(void)
{
	outb(COM1 + UART_IER, 0);
	outb(COM1 + UART_LCR, UART_LCR_DLAB);
	outb(COM1 + UART_DLL, 1); /* 115200 baud; meaningless to a VMM, but valid */
	outb(COM1 + UART_DLM, 0);
	outb(COM1 + UART_LCR, UART_LCR_8N1);
	outb(COM1 + UART_FCR, UART_FCR_ENABLE_CLEAR);
	outb(COM1 + UART_MCR, UART_MCR_DTR | UART_MCR_RTS);
}

void uart_putc(char c)
{
	/* Bounded: a VMM that never reports THRE must not hang the guest. */
	for (unsigned i = 0; i < 1000; i++)
		if (inb(COM1 + UART_LSR) & UART_LSR_THRE)
			break;
	outb(COM1 + UART_THR, (uint8_t)c);
}

void uart_puts(const char *s)
{
	while (*s)
		uart_putc(*s++);
}

/* ---- printf-lite ---------------------------------------------------- */

struct outbuf {
	char *buf;
	size_t n, len;
};

static void ob_put(struct outbuf *o, char c)
{
	if (o->len + 1 < o->n)
		o->buf[o->len] = c;
	o->len++;
}

static void ob_num(struct outbuf *o, uint64_t v, unsigned base, int neg,
		   unsigned width, char pad)
{
	char tmp[24];
	unsigned i = 0;
	do {
		unsigned d = (unsigned)(v % base);
		tmp[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	for (unsigned w = i; w < width; w++)
		ob_put(o, pad);
	while (i)
		ob_put(o, tmp[--i]);
}

int kt_vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct outbuf o = { buf, n, 0 };

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			ob_put(&o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		unsigned width = 0, lng = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			size_t l = kt_strlen(s);
			for (size_t w = l; w < width; w++)
				ob_put(&o, ' ');
			while (*s)
				ob_put(&o, *s++);
			break;
		}
		case 'c':
			ob_put(&o, (char)va_arg(ap, int));
			break;
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
			ob_num(&o, u, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			ob_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0, width, pad);
			break;
		case 'x':
			ob_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 0, width, pad);
			break;
		case 'p':
			ob_put(&o, '0');
			ob_put(&o, 'x');
			ob_num(&o, (uint64_t)(uintptr_t)va_arg(ap, void *), 16, 0, width, pad);
			break;
		case '%':
			ob_put(&o, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			ob_put(&o, '%');
			ob_put(&o, *fmt);
			break;
		}
	}
	if (n)
		buf[o.len < n ? o.len : n - 1] = '\0';
	return (int)o.len;
}

int kt_snprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = kt_vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

void kt_printf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	kt_vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	uart_puts(buf);
}

/* ---- boot_params --------------------------------------------------- */

uint8_t bp_u8(unsigned off)
{
	return kt_boot_params[off];
}

uint16_t bp_u16(unsigned off)
{
	return (uint16_t)(kt_boot_params[off] | kt_boot_params[off + 1] << 8);
}

uint32_t bp_u32(unsigned off)
{
	return (uint32_t)bp_u16(off) | (uint32_t)bp_u16(off + 2) << 16;
}

const char *bp_cmdline(void)
{
	uint64_t p = bp_u32(BP_CMD_LINE_PTR) | (uint64_t)bp_u32(BP_EXT_CMD_LINE_PTR) << 32;
	/* Outside the 4 GiB identity map we cannot read it; treat as absent. */
	if (p == 0 || p >= 0x100000000ull)
		return "";
	return (const char *)(uintptr_t)p;
}

unsigned bp_e820_count(void)
{
	unsigned n = bp_u8(BP_E820_ENTRIES);
	return n > BP_E820_MAX ? BP_E820_MAX : n;
}

struct e820_entry bp_e820(unsigned i)
{
	struct e820_entry e;
	memcpy(&e, kt_boot_params + BP_E820_TABLE + 20 * i, sizeof(e));
	return e;
}

uint64_t bp_initrd_addr(void)
{
	return bp_u32(BP_RAMDISK_IMAGE) | (uint64_t)bp_u32(BP_EXT_RAMDISK_IMAGE) << 32;
}

uint64_t bp_initrd_size(void)
{
	return bp_u32(BP_RAMDISK_SIZE) | (uint64_t)bp_u32(BP_EXT_RAMDISK_SIZE) << 32;
}

/* ---- command line ---------------------------------------------------- */

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses an unsigned number (0x prefix = hex) at *s; 0 digits -> fail. */
static int parse_u64(const char **s, uint64_t *out)
{
	const char *p = *s;
	uint64_t v = 0;
	unsigned base = 10, digits = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	for (;; p++, digits++) {
		unsigned d;
		if (*p >= '0' && *p <= '9')
			d = (unsigned)(*p - '0');
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = (unsigned)(*p - 'a' + 10);
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			d = (unsigned)(*p - 'A' + 10);
		else
			break;
		v = v * base + d;
	}
	if (!digits)
		return 0;
	*s = p;
	*out = v;
	return 1;
}

/* Finds "key=" at the start of a token; returns a pointer to the value. */
static const char *find_param(const char *cmd, const char *key, const char **resume)
{
	size_t kl = kt_strlen(key);
	const char *p = cmd;
	while (*p) {
		while (is_space(*p))
			p++;
		const char *tok = p;
		while (*p && !is_space(*p))
			p++;
		if ((size_t)(p - tok) > kl && kt_strncmp(tok, key, kl) == 0 && tok[kl] == '=') {
			if (resume)
				*resume = p;
			return tok + kl + 1;
		}
	}
	return 0;
}

unsigned kt_cmdline_virtio(struct kt_virtio_mmio *out, unsigned max)
{
	const char *cmd = bp_cmdline();
	unsigned n = 0;
	const char *v;

	while (n < max && (v = find_param(cmd, "virtio_mmio.device", &cmd)) != 0) {
		/* <size>[KMG]@<base>:<irq>[:<id>] (Linux virtio_mmio_setup) */
		uint64_t size, base, irq;
		if (!parse_u64(&v, &size))
			continue;
		if (*v == 'K' || *v == 'k') {
			size <<= 10;
			v++;
		} else if (*v == 'M' || *v == 'm') {
			size <<= 20;
			v++;
		} else if (*v == 'G' || *v == 'g') {
			size <<= 30;
			v++;
		}
		if (*v++ != '@' || !parse_u64(&v, &base) || *v++ != ':' || !parse_u64(&v, &irq))
			continue;
		out[n].base = base;
		out[n].size = size;
		out[n].irq = (uint32_t)irq;
		n++;
	}
	return n;
}

int kt_cmdline_get(const char *key, char *buf, size_t n)
{
	const char *v = find_param(bp_cmdline(), key, 0);
	if (!v || !n)
		return 0;
	size_t i = 0;
	while (v[i] && !is_space(v[i]) && i + 1 < n) {
		buf[i] = v[i];
		i++;
	}
	buf[i] = '\0';
	return 1;
}

/* ---- MP table ------------------------------------------------------- */

#define MP_EBDA_START 0x9FC00
#define MP_EBDA_END 0xA0000
#define MP_PROC_ENTRY 0
#define MP_PROC_ENTRY_LEN 20
#define MP_OTHER_ENTRY_LEN 8
#define MP_CPU_ENABLED 0x01
#define MP_CPU_BSP 0x02

static uint8_t sum8(const uint8_t *p, unsigned n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

void kt_mp_scan(struct kt_mp_info *out)
{
	memset(out, 0, sizeof(*out));
	for (uintptr_t a = MP_EBDA_START; a + 16 <= MP_EBDA_END; a += 16) {
		const uint8_t *fp = (const uint8_t *)a;
		if (memcmp(fp, "_MP_", 4) != 0 || sum8(fp, 16) != 0)
			continue;
		uint32_t cfg_addr = (uint32_t)(fp[4] | fp[5] << 8 | fp[6] << 16 | (uint32_t)fp[7] << 24);
		if (cfg_addr == 0 || cfg_addr >= 0x100000) /* must be in the first MiB here */
			return;
		const uint8_t *cfg = (const uint8_t *)(uintptr_t)cfg_addr;
		if (memcmp(cfg, "PCMP", 4) != 0)
			return;
		unsigned base_len = (unsigned)(cfg[4] | cfg[5] << 8);
		unsigned count = (unsigned)(cfg[34] | cfg[35] << 8);
		out->found = 1;
		out->lapic_addr = (uint32_t)(cfg[36] | cfg[37] << 8 | cfg[38] << 16 | (uint32_t)cfg[39] << 24);
		unsigned off = 44; /* header length */
		for (unsigned i = 0; i < count && off < base_len; i++) {
			const uint8_t *e = cfg + off;
			if (e[0] == MP_PROC_ENTRY) {
				if ((e[3] & MP_CPU_ENABLED) && out->ncpus < KT_MAX_CPUS) {
					out->apic_id[out->ncpus] = e[1];
					out->is_bsp[out->ncpus] = (e[3] & MP_CPU_BSP) != 0;
					out->ncpus++;
				}
				off += MP_PROC_ENTRY_LEN;
			} else {
				off += MP_OTHER_ENTRY_LEN;
			}
		}
		return;
	}
}

/* ---- interrupts ----------------------------------------------------- */

#define IDT_ENTRIES 256
#define KERNEL_CS 0x08 /* Kindling's boot GDT: 64-bit code */
#define GATE_INTERRUPT 0x8E /* present, DPL 0, 64-bit interrupt gate */

struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
} __attribute__((packed));

struct idtr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

extern char kt_isr_stubs[];
static struct idt_gate idt[IDT_ENTRIES] __attribute__((aligned(16)));
static kt_irq_handler irq_handlers[IDT_ENTRIES];

void kt_idt_load(void)
{
	struct idtr r = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
	__asm__ __volatile__("lidt %0" : : "m"(r));
}

void kt_idt_init(void)
{
	for (unsigned v = 0; v < IDT_ENTRIES; v++) {
		uint64_t a = (uint64_t)(uintptr_t)(kt_isr_stubs + 16 * v);
		idt[v].off_lo = (uint16_t)a;
		idt[v].sel = KERNEL_CS;
		idt[v].ist = 0;
		idt[v].type = GATE_INTERRUPT;
		idt[v].off_mid = (uint16_t)(a >> 16);
		idt[v].off_hi = (uint32_t)(a >> 32);
		idt[v].zero = 0;
	}
	kt_idt_load();
}

void kt_set_irq_handler(unsigned vector, kt_irq_handler h)
{
	if (vector >= 32 && vector < IDT_ENTRIES)
		irq_handlers[vector] = h;
}

void kt_isr_dispatch(struct kt_frame *f);
void kt_isr_dispatch(struct kt_frame *f)
{
	if (f->vector >= 32 && irq_handlers[f->vector]) {
		irq_handlers[f->vector](f);
		return;
	}
	uint32_t apic_id = mmio_read32(0xFEE00020) >> 24;
	kt_printf("KT: FAIL exception vector=%u error=%lx rip=%lx apic=%u\n",
		  (unsigned)f->vector, f->error, f->rip, apic_id);
	kt_reset();
}

/* ---- 8259 PIC and LAPIC ------------------------------------------------ */

#define PIC_ICW1_INIT_ICW4 0x11 /* edge, cascade, ICW4 follows */
#define PIC_ICW4_8086 0x01
#define LAPIC_SVR 0x0F0
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_DM_EXTINT 0x700
#define LAPIC_DM_NMI 0x400

void kt_pic_init(unsigned irq)
{
	uint16_t unmasked = (uint16_t)(1u << irq);
	if (irq >= 8)
		unmasked |= 1u << PIC_CASCADE_IRQ;
	outb(PIC1_CMD, PIC_ICW1_INIT_ICW4);
	outb(PIC2_CMD, PIC_ICW1_INIT_ICW4);
	outb(PIC1_DATA, PIC1_VECTOR);
	outb(PIC2_DATA, PIC2_VECTOR);
	outb(PIC1_DATA, 1 << PIC_CASCADE_IRQ); /* slave on IRQ2 */
	outb(PIC2_DATA, PIC_CASCADE_IRQ);      /* slave identity */
	outb(PIC1_DATA, PIC_ICW4_8086);
	outb(PIC2_DATA, PIC_ICW4_8086);
	outb(PIC1_DATA, (uint8_t)~unmasked);
	outb(PIC2_DATA, (uint8_t)~(unmasked >> 8));
}

void kt_pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2_CMD, PIC_EOI);
	outb(PIC1_CMD, PIC_EOI);
}

void kt_lapic_virtual_wire(void)
{
	mmio_write32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
	mmio_write32(LAPIC_BASE + LAPIC_LVT_LINT0, LAPIC_DM_EXTINT);
	mmio_write32(LAPIC_BASE + LAPIC_LVT_LINT1, LAPIC_DM_NMI);
}

/* ---- delays and ending ------------------------------------------------ */

void kt_io_delay(unsigned n)
{
	while (n--)
		(void)inb(COM1 + UART_LSR);
}

void kt_halt(void)
{
	for (;;)
		__asm__ __volatile__("cli; hlt");
}

#define I8042_COMMAND 0x64
#define I8042_CMD_RESET 0xFE

void kt_reset(void)
{
	outb(I8042_COMMAND, I8042_CMD_RESET);
	kt_halt();
}

void kt_done(void)
{
	uart_puts("KT: DONE\n");
	kt_reset();
}
