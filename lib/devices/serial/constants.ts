/**
 * Register offsets and bit assignments of the 16550A UART, as in the National Semiconductor
 * PC16550D datasheet (section 8, "Registers"). Offsets are relative to the UART's base port.
 * @module
 */

/** Receiver Buffer (read) / Transmitter Holding (write) register; Divisor Latch LSB when DLAB=1. */
export const UART_RBR_THR = 0;
/** Divisor Latch LSB (when LCR.DLAB is set). */
export const UART_DLL = 0;
/** Interrupt Enable Register; Divisor Latch MSB when DLAB=1. */
export const UART_IER = 1;
/** Divisor Latch MSB (when LCR.DLAB is set). */
export const UART_DLM = 1;
/** Interrupt Identification Register (read) / FIFO Control Register (write). */
export const UART_IIR_FCR = 2;
/** Line Control Register. */
export const UART_LCR = 3;
/** Modem Control Register. */
export const UART_MCR = 4;
/** Line Status Register. */
export const UART_LSR = 5;
/** Modem Status Register. */
export const UART_MSR = 6;
/** Scratch Register. */
export const UART_SCR = 7;
/** Number of ports the UART decodes. */
export const UART_REGISTER_COUNT = 8;

/** IER: Enable Received Data Available interrupt (ERBFI). */
export const IER_ERBFI = 0x01;
/** IER: Enable Transmitter Holding Register Empty interrupt (ETBEI). */
export const IER_ETBEI = 0x02;
/** IER: Enable Receiver Line Status interrupt (ELSI). */
export const IER_ELSI = 0x04;
/** IER: Enable Modem Status interrupt (EDSSI). */
export const IER_EDSSI = 0x08;
/** IER bits that exist on a 16550A; bits 4..7 always read 0 (Linux probes this). */
export const IER_MASK = 0x0f;

/** IIR bit 0: set when no interrupt is pending. */
export const IIR_NO_INT = 0x01;
/** IIR id: modem status change (lowest priority). */
export const IIR_MSI = 0x00;
/** IIR id: transmitter holding register empty. */
export const IIR_THRI = 0x02;
/** IIR id: received data available. */
export const IIR_RDI = 0x04;
/** IIR id: receiver line status (highest priority). */
export const IIR_RLSI = 0x06;
/** IIR bits 6..7: both set while FCR has the FIFOs enabled (what identifies a 16550A). */
export const IIR_FIFO_ENABLED = 0xc0;

/** FCR: enable both FIFOs; changing it clears them (datasheet, FCR0). */
export const FCR_ENABLE_FIFO = 0x01;
/** FCR: clear the receive FIFO (only acted on when FCR0 is also set). */
export const FCR_CLEAR_RCVR = 0x02;
/** FCR: clear the transmit FIFO (only acted on when FCR0 is also set). */
export const FCR_CLEAR_XMIT = 0x04;
/** FCR: receive trigger level bits. */
export const FCR_TRIGGER_MASK = 0xc0;

/** LCR: Divisor Latch Access Bit; offsets 0 and 1 then address DLL/DLM. */
export const LCR_DLAB = 0x80;

/** MCR: Data Terminal Ready. */
export const MCR_DTR = 0x01;
/** MCR: Request To Send. */
export const MCR_RTS = 0x02;
/** MCR: user output 1. */
export const MCR_OUT1 = 0x04;
/** MCR: user output 2 (gates the IRQ on PC boards; see Serial's notes). */
export const MCR_OUT2 = 0x08;
/** MCR: local loopback. */
export const MCR_LOOP = 0x10;
/** MCR bits that exist on a 16550A (bits 5..7 read 0). */
export const MCR_MASK = 0x1f;

/** LSR: Data Ready. */
export const LSR_DR = 0x01;
/** LSR: Overrun Error. */
export const LSR_OE = 0x02;
/** LSR: Parity Error. */
export const LSR_PE = 0x04;
/** LSR: Framing Error. */
export const LSR_FE = 0x08;
/** LSR: Break Interrupt. */
export const LSR_BI = 0x10;
/** LSR: Transmitter Holding Register Empty. */
export const LSR_THRE = 0x20;
/** LSR: Transmitter Empty (THR and shift register). */
export const LSR_TEMT = 0x40;
/** LSR bits cleared by reading LSR (error conditions). */
export const LSR_ERROR_BITS = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

/** MSR: Delta Clear To Send. */
export const MSR_DCTS = 0x01;
/** MSR: Delta Data Set Ready. */
export const MSR_DDSR = 0x02;
/** MSR: Trailing Edge Ring Indicator. */
export const MSR_TERI = 0x04;
/** MSR: Delta Data Carrier Detect. */
export const MSR_DDCD = 0x08;
/** MSR delta bits, cleared by reading MSR. */
export const MSR_DELTA_BITS = 0x0f;
/** MSR: Clear To Send. */
export const MSR_CTS = 0x10;
/** MSR: Data Set Ready. */
export const MSR_DSR = 0x20;
/** MSR: Ring Indicator. */
export const MSR_RI = 0x40;
/** MSR: Data Carrier Detect. */
export const MSR_DCD = 0x80;

/** Port offset of LSR, for the native read cache (see {@link SERIAL_CACHE_TRANSPARENT_WRITE_MASK}). */
export const SERIAL_LSR_OFFSET = UART_LSR;

/**
 * Offsets (bit i = offset i) whose guest writes can never change LSR while the UART is not in
 * loopback mode, for `NativeVm.definePioReadCache(base, 8, mask)`:
 *
 * - 0 (THR/DLL): transmission is instantaneous, so THRE/TEMT stay set and the byte leaves the
 *   UART; a DLL write changes nothing LSR shows. (In loopback a THR write sets DR, but
 *   `Serial.cacheableLsr()` publishes nothing in loopback and entering loopback takes an
 *   MCR write, which invalidates.)
 * - 1 (IER/DLM): interrupt enables and the divisor do not feed LSR.
 * - 3 (LCR): framing and DLAB do not feed LSR (LSR is not banked by DLAB).
 * - 7 (SCR): plain storage.
 *
 * Not transparent: 2 (FCR clears the receive FIFO, which clears DR), 4 (MCR enters or leaves
 * loopback), 5 and 6 (LSR/MSR writes are ignored by this model, but are factory-test writes on
 * real parts; being conservative costs nothing because guests do not write them).
 *
 * Reads are never "writes" for the cache, so the owner must refresh the cached value after every
 * access that reaches JavaScript and after `Serial.enqueueInput()`; `onLsrChange` says when.
 */
export const SERIAL_CACHE_TRANSPARENT_WRITE_MASK =
  (1 << UART_RBR_THR) | (1 << UART_IER) | (1 << UART_LCR) | (1 << UART_SCR);

/** Default receive FIFO capacity in bytes (as in rust-vmm vm-superio; a real 16550A has 16). */
export const DEFAULT_RX_FIFO_CAPACITY = 64;
/** Largest receive FIFO capacity the constructor accepts. */
export const MAX_RX_FIFO_CAPACITY = 1 << 16;
/** Default number of output bytes collected before a synchronous delivery. */
export const DEFAULT_OUTPUT_CHUNK = 4096;
