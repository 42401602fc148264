/*
 * kt.h - runtime shared by Kindling's freestanding test guests.
 *
 * Everything here runs on one CPU with interrupts off unless a guest says
 * otherwise. No libc: the guests are built with -ffreestanding -nostdlib.
 */
#ifndef KT_H
#define KT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define KT_NORETURN __attribute__((noreturn))
#define KT_BARRIER() __asm__ __volatile__("" ::: "memory")

/* ---- port and MMIO access ------------------------------------------- */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
/* One aligned 32-bit access, never split or merged by the compiler. */
static inline uint32_t mmio_read32(uint64_t addr)
{
	return *(volatile uint32_t *)(uintptr_t)addr;
}
static inline void mmio_write32(uint64_t addr, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)addr = v;
}

/* ---- boot_params (Linux zero page) offsets --------------------------- */
#define BP_EXT_RAMDISK_IMAGE 0x0C0
#define BP_EXT_RAMDISK_SIZE 0x0C4
#define BP_EXT_CMD_LINE_PTR 0x0C8
#define BP_E820_ENTRIES 0x1E8
#define BP_SETUP_SECTS 0x1F1
#define BP_BOOT_FLAG 0x1FE
#define BP_HEADER 0x202
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS 0x211
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21C
#define BP_CMD_LINE_PTR 0x228
#define BP_INITRD_ADDR_MAX 0x22C
#define BP_INIT_SIZE 0x260
#define BP_E820_TABLE 0x2D0
#define BP_E820_MAX 128
#define E820_TYPE_RAM 1

struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

/* Set by start.S from RSI before main() runs. */
extern const uint8_t *kt_boot_params;

uint8_t bp_u8(unsigned off);
uint16_t bp_u16(unsigned off);
uint32_t bp_u32(unsigned off);
const char *bp_cmdline(void);  /* "" when no command line */
unsigned bp_e820_count(void);  /* clamped to BP_E820_MAX */
struct e820_entry bp_e820(unsigned i);
uint64_t bp_initrd_addr(void);
uint64_t bp_initrd_size(void);

/* ---- serial (16550 at COM1) ----------------------------------------- */
#define COM1 0x3F8
#define UART_RBR 0 /* DLAB=0, read */
#define UART_THR 0 /* DLAB=0, write */
#define UART_IER 1
#define UART_IIR 2 /* read */
#define UART_FCR 2 /* write */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_DLL 0 /* DLAB=1 */
#define UART_DLM 1 /* DLAB=1 */
#define UART_IER_RDA 0x01
#define UART_LCR_8N1 0x03
#define UART_LCR_DLAB 0x80
#define UART_FCR_ENABLE_CLEAR 0x07 /* FIFO on, both cleared, trigger 1 byte */
#define UART_MCR_DTR 0x01
#define UART_MCR_RTS 0x02
#define UART_MCR_OUT2 0x08 /* gates the UART's IRQ line on PCs */
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20

void uart_init(void);
void uart_putc(char c);
void uart_puts(const char *s);

/* ---- formatted output ----------------------------------------------- */
/* %s %c %d %i %u %x %p %% with optional '0', width and l/ll/z modifiers. */
int kt_vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int kt_snprintf(char *buf, size_t n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void kt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- strings and memory (gcc may also emit calls to the first four) -- */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t kt_strlen(const char *s);
int kt_strncmp(const char *a, const char *b, size_t n);
/* Sum of all bytes modulo 2^32 (SWAR: few instructions per byte). */
uint32_t kt_byte_sum(const void *p, uint64_t n);

/* ---- command line ---------------------------------------------------- */
#define KT_MAX_VIRTIO 32
struct kt_virtio_mmio {
	uint64_t base;
	uint64_t size;
	uint32_t irq;
};
/* Parses every "virtio_mmio.device=<size>@<base>:<irq>" token, in order. */
unsigned kt_cmdline_virtio(struct kt_virtio_mmio *out, unsigned max);
/* Value of "key=value" on the command line copied to buf; 0 if absent. */
int kt_cmdline_get(const char *key, char *buf, size_t n);

/* ---- MP table (Intel MultiProcessor Specification 1.4) ---------------- */
#define KT_MAX_CPUS 16
struct kt_mp_info {
	int found;
	unsigned ncpus;         /* enabled processor entries */
	uint8_t apic_id[KT_MAX_CPUS];
	uint8_t is_bsp[KT_MAX_CPUS];
	uint32_t lapic_addr;
};
void kt_mp_scan(struct kt_mp_info *out);

/* ---- CPU, interrupts, ending the VM ----------------------------------- */
struct kt_frame {
	uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*kt_irq_handler)(struct kt_frame *f);

/* Builds and loads a 256-entry IDT; exceptions print a FAIL line and reset. */
void kt_idt_init(void);
/* Loads the already-built IDT on this CPU (for application processors). */
void kt_idt_load(void);
/* Handler for a vector >= 32. Returns into the sti;hlt window (see isr.S). */
void kt_set_irq_handler(unsigned vector, kt_irq_handler h);
/* sti; hlt; cli: the only place interrupts are ever enabled. */
static inline void kt_wait_for_interrupt(void)
{
	__asm__ __volatile__("sti; hlt; cli" ::: "memory", "cc");
}

/* ---- 8259 PIC and LAPIC virtual-wire mode ---------------------------- */
#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIC_EOI 0x20
#define PIC1_VECTOR 0x20 /* IRQ 0-7 */
#define PIC2_VECTOR 0x28 /* IRQ 8-15 */
#define PIC_CASCADE_IRQ 2
#define PIC_SPURIOUS_IRQ 7
#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_SPURIOUS_VECTOR 0xFF

/* Remaps both PICs to PIC1_VECTOR/PIC2_VECTOR (edge-triggered) with only
 * IRQ `irq` (0-15) unmasked, the cascade too when it is on the slave. */
void kt_pic_init(unsigned irq);
/* End of interrupt for `irq` (0-15) at the PIC(s). */
void kt_pic_eoi(unsigned irq);
/*
 * KVM hands PIC interrupts to a hardware-enabled LAPIC only through an
 * unmasked ExtINT LINT0 (virtual-wire mode). LVT writes are forced masked
 * while the APIC is software-disabled, so this enables it first.
 */
void kt_lapic_virtual_wire(void);

/* Delay measured in VM exits (reads of the UART's LSR), so it scales with
 * the host's exit cost rather than with instruction speed. */
void kt_io_delay(unsigned n);

KT_NORETURN void kt_reset(void);  /* 0xFE to the i8042 command port */
KT_NORETURN void kt_done(void);   /* "KT: DONE", then kt_reset() */
KT_NORETURN void kt_halt(void);   /* cli; hlt forever */

/* Each guest defines this; start.S calls it and resets if it returns. */
void kt_main(void);

#endif
