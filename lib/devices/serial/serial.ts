/**
 * A 16550A UART (COM1 on the PC: ports 0x3f8..0x3ff, IRQ 4) as a state machine.
 *
 * Transmission is instantaneous: a THR write hands the byte to the host at once, so THRE and
 * TEMT never clear. Output is batched (see {@link Serial.flush}) so that a guest burst becomes a
 * few host callbacks. Input is a bounded receive FIFO filled by {@link Serial.enqueueInput}, which
 * accepts only what fits and later announces free space, so a host stream can be paused instead
 * of losing bytes.
 *
 * Deliberate simplifications, none visible to Linux's 8250 driver:
 * - The receive FIFO is one size (default 64) whether or not FCR enables FIFOs; the trigger level
 *   is not modelled and "received data available" is reported whenever data is present (Linux
 *   treats that and the character-timeout id alike).
 * - MCR.OUT2 does not gate the interrupt (Firecracker and vm-superio do not gate it either).
 * - No parity/framing/break errors are ever produced; overrun only happens in loopback mode.
 * @module
 */

import { KindlingError } from '../../errors';
import { encodeBytes, stateField, type Device, type StateObject } from '../contract';
import type { BusDevice, IrqLine } from '../../bus';
import {
  DEFAULT_OUTPUT_CHUNK,
  DEFAULT_RX_FIFO_CAPACITY,
  FCR_CLEAR_RCVR,
  FCR_ENABLE_FIFO,
  IER_EDSSI,
  IER_ELSI,
  IER_ERBFI,
  IER_ETBEI,
  IER_MASK,
  IIR_FIFO_ENABLED,
  IIR_MSI,
  IIR_NO_INT,
  IIR_RDI,
  IIR_RLSI,
  IIR_THRI,
  LCR_DLAB,
  LSR_DR,
  LSR_ERROR_BITS,
  LSR_OE,
  LSR_TEMT,
  LSR_THRE,
  MAX_RX_FIFO_CAPACITY,
  MCR_DTR,
  MCR_LOOP,
  MCR_MASK,
  MCR_OUT1,
  MCR_OUT2,
  MCR_RTS,
  MSR_CTS,
  MSR_DCD,
  MSR_DCTS,
  MSR_DDCD,
  MSR_DDSR,
  MSR_DELTA_BITS,
  MSR_DSR,
  MSR_RI,
  MSR_TERI,
  SERIAL_CACHE_TRANSPARENT_WRITE_MASK,
  UART_IER,
  UART_IIR_FCR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RBR_THR,
  UART_REGISTER_COUNT,
  UART_SCR,
} from './constants';

/** Why a serial device could not be built. */
export type SerialErrorCode = 'BAD_OPTION';

/** A refused serial device configuration. */
export class SerialError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: SerialErrorCode;
  constructor(code: SerialErrorCode, message: string) {
    super(message);
    this.name = 'SerialError';
    this.code = code;
  }
}

/** What the UART does to the outside world. */
export interface SerialEffects {
  /** The UART's interrupt line (IRQ 4 for COM1); driven with `setLevel` on changes only. */
  irq: IrqLine;
  /**
   * Receives transmitted bytes, in order, in chunks. The array is owned by the callee. Called
   * from a `setImmediate` callback or from {@link Serial.flush}; a throw is caught and counted
   * (`outputErrors`) and the chunk counts as delivered.
   */
  onOutput: (bytes: Uint8Array) => void;
  /**
   * Called once after {@link Serial.enqueueInput} refused bytes, when the guest has drained the
   * receive FIFO to half its capacity (or cleared it). The argument is the free space. May be
   * called synchronously inside a guest access, and may call `enqueueInput` from there.
   */
  onInputSpace?: (space: number) => void;
  /**
   * Called when {@link Serial.cacheableLsr} may have changed, or after a guest write that
   * invalidates the native LSR cache; the owner re-publishes `cacheableLsr() ?? -1` with
   * `NativeVm.setPioReadCache`. May be called synchronously inside a guest access.
   */
  onLsrChange?: () => void;
  /**
   * Called with the new state when IER.ETBEI (the transmitter-empty interrupt) turns on or off,
   * by the guest or by {@link Serial.restoreState}: a driver that waits for that interrupt before
   * it writes more (Linux's 8250 driver for tty output) needs its THR writes handled promptly,
   * where a driver that polls LSR (a console) does not. May be called synchronously inside a
   * guest access.
   */
  onTransmitInterruptChange?: (enabled: boolean) => void;
}

/** Tunables. */
export interface SerialOptions {
  /** Receive FIFO capacity in bytes, 1..65536; default 64. */
  rxFifoCapacity?: number;
  /** Output bytes collected before they are delivered synchronously; default 4096. */
  outputChunkBytes?: number;
  /** Device id (default `'serial'`). */
  id?: string;
}

/** Counters of the UART (in `vm.metrics().serial`). */
export interface SerialMetrics {
  /** Bytes the guest transmitted (THR writes outside loopback). */
  readonly txBytes: number;
  /** Output chunks delivered to the host. */
  readonly outputChunks: number;
  /** Output callbacks that threw. */
  readonly outputErrors: number;
  /** Host input bytes accepted into the receive FIFO. */
  readonly inputBytes: number;
  /** Host input bytes refused because the FIFO was full (offered again later). */
  readonly inputRefused: number;
  /** Bytes the guest read from RBR. */
  readonly rxBytes: number;
  /** Bytes the guest discarded by clearing the FIFO. */
  readonly rxDiscarded: number;
  /** Loopback overruns. */
  readonly overruns: number;
  /** Bytes looped back. */
  readonly loopbackBytes: number;
  /** Interrupts raised. */
  readonly interrupts: number;
  /** Register reads. */
  readonly reads: number;
  /** Register writes. */
  readonly writes: number;
  /** Writes to read-only registers. */
  readonly ignoredWrites: number;
  /** RBR reads with nothing to read. */
  readonly emptyReads: number;
  /** Bytes in the receive FIFO now. */
  readonly rxFifoLevel: number;
  /** Output bytes not yet delivered. */
  readonly pendingOutput: number;
}

/** Version of {@link Serial.saveState}'s format. */
export const SERIAL_STATE_VERSION = 1;

/** A 16550A UART; see the module notes for what is and is not modelled. */
export class Serial implements BusDevice, Device<SerialMetrics> {
  /** Device id. */
  readonly id: string;
  /** Device kind. */
  readonly kind = 'serial';
  /** See {@link SERIAL_STATE_VERSION}. */
  readonly stateVersion = SERIAL_STATE_VERSION;
  private readonly effects: SerialEffects;

  // Registers.
  private dll = 0x0c; // 9600 baud, what firmware would leave behind; the value only matters to readers.
  private dlm = 0;
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private fifoEnabled = false;
  /** Sticky LSR error bits (OE only, in this model), cleared by reading LSR. */
  private lsrErrors = 0;
  /** MSR delta bits, cleared by reading MSR. */
  private msrDeltas = 0;
  /**
   * The THRE interrupt condition (datasheet table IV): set when ETBEI turns on or THR is
   * written (transmission being instantaneous, THR is empty again at once); cleared by an IIR
   * read that reports it, by a THR write, or by clearing ETBEI.
   */
  private threPending = false;

  // Receive FIFO (ring buffer).
  private readonly rx: Uint8Array;
  private rxHead = 0;
  private rxCount = 0;
  /** Set when enqueueInput refused bytes: the owner is waiting for onInputSpace. */
  private inputBlocked = false;

  // Output batching.
  private readonly outChunk: number;
  private out: Uint8Array;
  private outLen = 0;
  private flushHandle: NodeJS.Immediate | undefined;

  private irqLevel = false;
  private lastPublishedLsr: number | undefined;
  private inAccess = false;

  private counters = {
    txBytes: 0,
    outputChunks: 0,
    outputErrors: 0,
    inputBytes: 0,
    inputRefused: 0,
    rxBytes: 0,
    rxDiscarded: 0,
    overruns: 0,
    loopbackBytes: 0,
    interrupts: 0,
    reads: 0,
    writes: 0,
    ignoredWrites: 0,
    emptyReads: 0,
  };

  /**
   * @param effects interrupt line and host callbacks.
   * @param options FIFO and batching sizes.
   */
  constructor(effects: SerialEffects, options: SerialOptions = {}) {
    const cap = options.rxFifoCapacity ?? DEFAULT_RX_FIFO_CAPACITY;
    if (!Number.isInteger(cap) || cap < 1 || cap > MAX_RX_FIFO_CAPACITY) {
      throw new SerialError('BAD_OPTION', `rxFifoCapacity must be an integer in 1..${MAX_RX_FIFO_CAPACITY}, got ${cap}`);
    }
    const chunk = options.outputChunkBytes ?? DEFAULT_OUTPUT_CHUNK;
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > 1 << 24) {
      throw new SerialError('BAD_OPTION', `outputChunkBytes must be an integer in 1..${1 << 24}, got ${chunk}`);
    }
    this.id = options.id ?? 'serial';
    this.effects = effects;
    this.rx = new Uint8Array(cap);
    this.outChunk = chunk;
    this.out = new Uint8Array(chunk);
    this.lastPublishedLsr = this.cacheableLsr();
  }

  // ---------------------------------------------------------------------------------------------
  // BusDevice

  /**
   * A guest read. The UART's registers are byte wide; a wider access is split into byte accesses
   * at consecutive offsets, as an ISA bus does for an 8-bit device.
   */
  read(offset: number, size: number): number {
    let value = 0;
    this.inAccess = true;
    try {
      for (let i = 0; i < size; i++) {
        const off = offset + i;
        const b = off >= 0 && off < UART_REGISTER_COUNT ? this.readByte(off) : 0xff;
        value |= b << (8 * i);
      }
    } finally {
      this.inAccess = false;
    }
    this.afterChange(false);
    return value >>> 0;
  }

  /** A guest write; wider accesses are split into byte writes like {@link Serial.read}. */
  write(offset: number, size: number, value: number): void {
    let invalidating = false;
    this.inAccess = true;
    try {
      for (let i = 0; i < size; i++) {
        const off = offset + i;
        if (off < 0 || off >= UART_REGISTER_COUNT) continue;
        if (((SERIAL_CACHE_TRANSPARENT_WRITE_MASK >> off) & 1) === 0) invalidating = true;
        this.writeByte(off, (value >>> (8 * i)) & 0xff);
      }
    } finally {
      this.inAccess = false;
    }
    this.afterChange(invalidating);
  }

  // ---------------------------------------------------------------------------------------------
  // Host side

  /**
   * Offers `bytes` to the receive FIFO; returns how many (a prefix) were accepted. When fewer
   * than all were accepted, `onInputSpace` fires once the guest has drained the FIFO to half
   * its capacity; the caller keeps the rest and offers it again then. Accepted bytes are only
   * lost if the guest itself clears the FIFO (FCR), as on real hardware (counted `rxDiscarded`).
   */
  enqueueInput(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.rx.length - this.rxCount);
    for (let i = 0; i < n; i++) this.pushRx(bytes[i]);
    this.counters.inputBytes += n;
    if (n < bytes.length) {
      this.counters.inputRefused += bytes.length - n;
      this.inputBlocked = true;
    }
    if (!this.inAccess) this.afterChange(false);
    return n;
  }

  /** Free bytes in the receive FIFO. */
  inputSpace(): number {
    return this.rx.length - this.rxCount;
  }

  /** Delivers all collected output now (synchronously), if there is any. */
  flush(): void {
    if (this.flushHandle !== undefined) {
      clearImmediate(this.flushHandle);
      this.flushHandle = undefined;
    }
    if (this.outLen === 0) return;
    // Hand over a fresh buffer before calling out, so a re-entrant write cannot reorder bytes.
    const chunk = this.out.subarray(0, this.outLen);
    this.out = new Uint8Array(this.outChunk);
    this.outLen = 0;
    this.counters.outputChunks++;
    try {
      this.effects.onOutput(chunk);
    } catch {
      this.counters.outputErrors++;
    }
  }

  /**
   * The LSR value the native layer may return for guest LSR reads without asking JavaScript, or
   * undefined when it must not: in loopback mode (a THR write, which is cache-transparent, would
   * change DR) and while an error bit is set (reading LSR clears it, a side effect only
   * JavaScript can perform).
   */
  cacheableLsr(): number | undefined {
    if (this.mcr & MCR_LOOP || this.lsrErrors !== 0) return undefined;
    return this.lsr();
  }

  /** Counters: bytes in each direction, interrupts raised, and anomalies. */
  metrics(): SerialMetrics {
    return { ...this.counters, rxFifoLevel: this.rxCount, pendingOutput: this.outLen };
  }

  /**
   * Registers, the receive FIFO's contents and the interrupt conditions. Output collected but not
   * yet delivered is delivered first (it belongs to the host, not to the device's state).
   */
  saveState(): StateObject {
    this.flush();
    const rx = new Uint8Array(this.rxCount);
    for (let i = 0; i < this.rxCount; i++) rx[i] = this.rx[(this.rxHead + i) % this.rx.length];
    return {
      dll: this.dll, dlm: this.dlm, ier: this.ier, lcr: this.lcr, mcr: this.mcr, scr: this.scr,
      fifoEnabled: this.fifoEnabled, lsrErrors: this.lsrErrors, msrDeltas: this.msrDeltas,
      threPending: this.threPending, rx: encodeBytes(rx), inputBlocked: this.inputBlocked,
    };
  }

  /** See {@link saveState}. Re-drives the IRQ line and the LSR cache to match. */
  restoreState(state: StateObject): void {
    const byte = (k: string) => stateField.int(state, k, 0, 0xff);
    const v = {
      dll: byte('dll'), dlm: byte('dlm'), ier: byte('ier') & IER_MASK, lcr: byte('lcr'), mcr: byte('mcr') & MCR_MASK,
      scr: byte('scr'), fifoEnabled: stateField.bool(state, 'fifoEnabled'), lsrErrors: byte('lsrErrors') & LSR_ERROR_BITS,
      msrDeltas: byte('msrDeltas') & MSR_DELTA_BITS, threPending: stateField.bool(state, 'threPending'),
      rx: stateField.bytes(state, 'rx', this.rx.length), inputBlocked: stateField.bool(state, 'inputBlocked'),
    };
    this.dll = v.dll;
    this.dlm = v.dlm;
    const oldIer = this.ier;
    this.ier = v.ier;
    this.lcr = v.lcr;
    this.mcr = v.mcr;
    this.scr = v.scr;
    this.fifoEnabled = v.fifoEnabled;
    this.lsrErrors = v.lsrErrors;
    this.msrDeltas = v.msrDeltas;
    this.threPending = v.threPending;
    this.rx.set(v.rx);
    this.rxHead = 0;
    this.rxCount = v.rx.length;
    this.inputBlocked = v.inputBlocked;
    // Force the line and the cache to be re-published.
    this.irqLevel = !(this.pendingId() !== IIR_NO_INT);
    this.lastPublishedLsr = undefined;
    this.afterChange(true);
    if ((oldIer ^ this.ier) & IER_ETBEI) this.effects.onTransmitInterruptChange?.((this.ier & IER_ETBEI) !== 0);
  }

  /** Delivers pending output; the UART holds nothing else. */
  async close(): Promise<void> {
    this.flush();
  }

  // ---------------------------------------------------------------------------------------------
  // Registers

  private get dlab(): boolean {
    return (this.lcr & LCR_DLAB) !== 0;
  }

  private readByte(off: number): number {
    this.counters.reads++;
    switch (off) {
      case UART_RBR_THR:
        return this.dlab ? this.dll : this.readRbr();
      case UART_IER:
        return this.dlab ? this.dlm : this.ier;
      case UART_IIR_FCR:
        return this.readIir();
      case UART_LCR:
        return this.lcr;
      case UART_MCR:
        return this.mcr;
      case UART_LSR: {
        const v = this.lsr();
        this.lsrErrors = 0;
        return v;
      }
      case UART_MSR: {
        const v = this.msrLines() | this.msrDeltas;
        this.msrDeltas = 0;
        return v;
      }
      default:
        return this.scr;
    }
  }

  private writeByte(off: number, v: number): void {
    this.counters.writes++;
    switch (off) {
      case UART_RBR_THR:
        if (this.dlab) this.dll = v;
        else this.writeThr(v);
        return;
      case UART_IER:
        if (this.dlab) this.dlm = v;
        else this.writeIer(v);
        return;
      case UART_IIR_FCR:
        this.writeFcr(v);
        return;
      case UART_LCR:
        this.lcr = v;
        return;
      case UART_MCR:
        this.writeMcr(v);
        return;
      case UART_SCR:
        this.scr = v;
        return;
      default:
        // LSR and MSR writes are factory-test features; nothing uses them.
        this.counters.ignoredWrites++;
        return;
    }
  }

  private readRbr(): number {
    if (this.rxCount === 0) {
      this.counters.emptyReads++;
      return 0;
    }
    const b = this.rx[this.rxHead];
    this.rxHead = (this.rxHead + 1) % this.rx.length;
    this.rxCount--;
    this.counters.rxBytes++;
    return b;
  }

  private pushRx(b: number): boolean {
    if (this.rxCount === this.rx.length) return false;
    this.rx[(this.rxHead + this.rxCount) % this.rx.length] = b;
    this.rxCount++;
    return true;
  }

  private clearRx(): void {
    this.counters.rxDiscarded += this.rxCount;
    this.rxHead = 0;
    this.rxCount = 0;
  }

  private writeThr(v: number): void {
    if (this.mcr & MCR_LOOP) {
      // Loopback: the transmitter output feeds the receiver; nothing leaves the UART.
      this.counters.loopbackBytes++;
      if (!this.pushRx(v)) {
        // FIFO mode overrun: the character in the shift register is lost, the FIFO is kept.
        this.lsrErrors |= LSR_OE;
        this.counters.overruns++;
      }
    } else {
      this.emit(v);
    }
    // Writing THR clears the THRE interrupt; the holding register is empty again at once.
    this.threPending = (this.ier & IER_ETBEI) !== 0;
  }

  private writeIer(v: number): void {
    const old = this.ier;
    this.ier = v & IER_MASK;
    if ((old ^ this.ier) & IER_ETBEI) this.effects.onTransmitInterruptChange?.((this.ier & IER_ETBEI) !== 0);
    if (!(this.ier & IER_ETBEI)) {
      this.threPending = false;
    } else if (!(old & IER_ETBEI)) {
      // Enabling ETBEI while THR is empty raises the interrupt (Linux's THRE test relies on it).
      this.threPending = true;
    }
  }

  private writeFcr(v: number): void {
    const enable = (v & FCR_ENABLE_FIFO) !== 0;
    if (enable !== this.fifoEnabled) {
      // Datasheet, FCR0: switching between FIFO and 16450 mode clears the FIFOs.
      this.clearRx();
      this.fifoEnabled = enable;
    }
    if (enable) {
      if (v & FCR_CLEAR_RCVR) this.clearRx();
      // FCR_CLEAR_XMIT needs no action: the transmit FIFO is always empty. The trigger level
      // bits are not modelled (see the module notes).
    }
  }

  private writeMcr(v: number): void {
    const before = this.msrLines();
    this.mcr = v & MCR_MASK;
    const after = this.msrLines();
    const changed = before ^ after;
    if (changed & MSR_CTS) this.msrDeltas |= MSR_DCTS;
    if (changed & MSR_DSR) this.msrDeltas |= MSR_DDSR;
    if (changed & MSR_DCD) this.msrDeltas |= MSR_DDCD;
    if (before & MSR_RI && !(after & MSR_RI)) this.msrDeltas |= MSR_TERI;
  }

  /**
   * MSR bits 4..7. In loopback the modem inputs are wired to the modem outputs (RTS→CTS,
   * DTR→DSR, OUT1→RI, OUT2→DCD; datasheet, MCR bit 4), which is what Linux's autoconfig checks
   * with MCR = LOOP|OUT2|RTS expecting 0x90. Otherwise a connected, ready peer: DCD|DSR|CTS.
   */
  private msrLines(): number {
    const m = this.mcr;
    if (!(m & MCR_LOOP)) return MSR_DCD | MSR_DSR | MSR_CTS;
    return (
      (m & MCR_RTS ? MSR_CTS : 0) |
      (m & MCR_DTR ? MSR_DSR : 0) |
      (m & MCR_OUT1 ? MSR_RI : 0) |
      (m & MCR_OUT2 ? MSR_DCD : 0)
    );
  }

  private lsr(): number {
    return (this.rxCount > 0 ? LSR_DR : 0) | this.lsrErrors | LSR_THRE | LSR_TEMT;
  }

  /** The highest-priority pending interrupt id (datasheet table IV), or IIR_NO_INT. */
  private pendingId(): number {
    if (this.ier & IER_ELSI && this.lsrErrors & LSR_ERROR_BITS) return IIR_RLSI;
    if (this.ier & IER_ERBFI && this.rxCount > 0) return IIR_RDI;
    if (this.threPending) return IIR_THRI;
    if (this.ier & IER_EDSSI && this.msrDeltas & MSR_DELTA_BITS) return IIR_MSI;
    return IIR_NO_INT;
  }

  private readIir(): number {
    const id = this.pendingId();
    // Reading IIR acknowledges THRE only when THRE is the source it reports.
    if (id === IIR_THRI) this.threPending = false;
    return id | (this.fifoEnabled ? IIR_FIFO_ENABLED : 0);
  }

  private emit(b: number): void {
    this.out[this.outLen++] = b;
    this.counters.txBytes++;
    if (this.outLen === this.outChunk) {
      this.flush();
    } else if (this.flushHandle === undefined) {
      this.flushHandle = setImmediate(() => {
        this.flushHandle = undefined;
        this.flush();
      });
    }
  }

  /** Recomputes the IRQ level and notifies the owner; runs after every completed access. */
  private afterChange(invalidatingWrite: boolean): void {
    const level = this.pendingId() !== IIR_NO_INT;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      if (level) this.counters.interrupts++;
      this.effects.irq.setLevel(level);
    }
    const lsr = this.cacheableLsr();
    if (invalidatingWrite || lsr !== this.lastPublishedLsr) {
      this.lastPublishedLsr = lsr;
      this.effects.onLsrChange?.();
    }
    if (this.inputBlocked && this.rxCount * 2 <= this.rx.length) {
      this.inputBlocked = false;
      this.effects.onInputSpace?.(this.rx.length - this.rxCount);
    }
  }
}
