/**
 * The i8042 keyboard controller with a PS/2 keyboard behind it, mapped at ports 0x60..0x64
 * (IRQ 1). Its real jobs in a microVM are two: letting the guest reset the machine (command
 * 0xFE, or an output-port write with bit 0 low) and letting the host send Ctrl-Alt-Del.
 *
 * Enough of the controller is modelled for Linux's i8042 and atkbd drivers to probe it, with or
 * without `i8042.noaux i8042.nomux i8042.dumbkbd`. There is no AUX (mouse) device and no IRQ 12:
 * AUX loop bytes (command 0xD3) come back with STR_AUXDATA but raise no interrupt, so Linux's
 * AUX IRQ delivery test times out (250 ms) and it registers no AUX port; `i8042.noaux` skips that.
 *
 * Bytes reach the guest one at a time through the one-byte output buffer. IRQ 1 is driven as a
 * level that is high while a keyboard-side byte waits and CTR_KBDINT is set; reading port 0x60
 * drops it and, if another byte is queued, raises it again, so each byte is a separate edge for
 * the edge-triggered ISA interrupt (Linux's handler reads one byte per interrupt).
 * @module
 */

import type { BusDevice, IrqLine } from '../../bus';
import { DeviceError, stateField, type Device, type StateObject, type StateValue } from '../contract';
import {
  CMD_AUX_DISABLE,
  CMD_AUX_ENABLE,
  CMD_AUX_TEST,
  CMD_KBD_DISABLE,
  CMD_KBD_ENABLE,
  CMD_KBD_TEST,
  CMD_PULSE_OUTPUT_BASE,
  CMD_READ_CTR,
  CMD_READ_OUTPUT_PORT,
  CMD_SELF_TEST,
  CMD_WRITE_AUX_BUFFER,
  CMD_WRITE_AUX_DEVICE,
  CMD_WRITE_CTR,
  CMD_WRITE_KBD_BUFFER,
  CMD_WRITE_OUTPUT_PORT,
  CTL_QUEUE_CAPACITY,
  CTR_AUXDIS,
  CTR_INITIAL,
  CTR_KBDDIS,
  CTR_KBDINT,
  CTR_SYS,
  CTR_XLATE,
  CTRL_ALT_DEL_SET1,
  CTRL_ALT_DEL_SET2,
  I8042_DATA_OFFSET,
  I8042_PORT_B_OFFSET,
  I8042_STATUS_OFFSET,
  I8042_WINDOW_LEN,
  KBD_CMD_ECHO,
  KBD_CMD_ENABLE,
  KBD_CMD_GET_ID,
  KBD_CMD_RESEND,
  KBD_CMD_RESET,
  KBD_CMD_RESET_DIS,
  KBD_CMD_SCANCODE_SET,
  KBD_CMD_SET_LEDS,
  KBD_CMD_SET_REPEAT,
  KBD_ID_1,
  KBD_ID_2,
  KBD_ID_2_XLATE,
  KBD_QUEUE_CAPACITY,
  KBD_RET_ACK,
  KBD_RET_BAT_OK,
  KBD_RET_ECHO,
  KBD_RET_NAK,
  KBD_SCANCODE_SET,
  KBD_SCANCODE_SET_XLATE,
  OUTPUT_PORT_INITIAL,
  OUTPUT_PORT_RESET,
  PORT_B_VALUE,
  RET_INTERFACE_OK,
  RET_SELF_TEST_OK,
  STR_AUXDATA,
  STR_CMDDAT,
  STR_KEYLOCK,
  STR_OBF,
  STR_SYS,
} from './constants';

/** What the controller does to the outside world. */
export interface I8042Effects {
  /** IRQ 1. */
  irq: IrqLine;
  /** The guest pulsed the CPU reset line. Called synchronously inside the guest's port write. */
  onReset: () => void;
}

/** One byte waiting for, or sitting in, the output buffer. */
interface OutByte {
  value: number;
  aux: boolean;
}

/** A keyboard command that takes a parameter byte. */
type KbdParamCommand = typeof KBD_CMD_SET_LEDS | typeof KBD_CMD_SET_REPEAT | typeof KBD_CMD_SCANCODE_SET;

/** Counters of the i8042 (in `vm.metrics().i8042`). */
export interface I8042Metrics {
  /** Controller commands (port 0x64). */
  readonly commands: number;
  /** Commands not implemented. */
  readonly unknownCommands: number;
  /** Data port writes. */
  readonly dataWrites: number;
  /** Bytes sent to the keyboard. */
  readonly kbdCommands: number;
  /** Output buffer bytes read by the guest. */
  readonly bytesRead: number;
  /** Data port reads with nothing in the output buffer. */
  readonly emptyReads: number;
  /** Accesses to ports nothing decodes. */
  readonly ignoredAccesses: number;
  /** Bytes dropped because a queue was full or nothing listens. */
  readonly droppedBytes: number;
  /** IRQ 1 assertions. */
  readonly interrupts: number;
  /** CPU reset pulses. */
  readonly resets: number;
  /** Ctrl+Alt+Del sequences injected. */
  readonly ctrlAltDels: number;
  /** Keys injected. */
  readonly keysInjected: number;
  /** Injections refused (scanning off or no room). */
  readonly injectRefused: number;
  /** Bytes waiting for the guest. */
  readonly queuedBytes: number;
}

/** Version of {@link I8042.saveState}'s format. */
export const I8042_STATE_VERSION = 1;

/** The i8042 controller and keyboard; see the module notes. */
export class I8042 implements BusDevice, Device<I8042Metrics> {
  /** Device id. */
  readonly id: string;
  /** Device kind. */
  readonly kind = 'i8042';
  /** See {@link I8042_STATE_VERSION}. */
  readonly stateVersion = I8042_STATE_VERSION;
  private readonly effects: I8042Effects;

  private ctr = CTR_INITIAL;
  private outputPort = OUTPUT_PORT_INITIAL;
  /** The one-byte output buffer (port 0x60); STR_OBF is set while it holds a byte. */
  private outputBuffer: OutByte | undefined;
  /** Controller replies waiting for the output buffer; they go before keyboard bytes. */
  private readonly ctlQueue: OutByte[] = [];
  /** Bytes the keyboard wants to send; they move only while the keyboard interface is enabled. */
  private readonly kbdQueue: number[] = [];
  /** A controller command waiting for its parameter at port 0x60. */
  private pendingCommand: number | undefined;
  private lastWriteWasCommand = false;
  private lastDataRead = 0;

  // The keyboard.
  private scanning = true;
  private kbdPendingParam: KbdParamCommand | undefined;
  private kbdLastSent = KBD_RET_ACK;

  private irqLevel = false;

  private counters = {
    commands: 0,
    unknownCommands: 0,
    dataWrites: 0,
    kbdCommands: 0,
    bytesRead: 0,
    emptyReads: 0,
    ignoredAccesses: 0,
    droppedBytes: 0,
    interrupts: 0,
    resets: 0,
    ctrlAltDels: 0,
    keysInjected: 0,
    injectRefused: 0,
  };

  /**
   * @param effects IRQ 1 and the reset callback.
   * @param id device id (default `'i8042'`)
   */
  constructor(effects: I8042Effects, id = 'i8042') {
    this.effects = effects;
    this.id = id;
  }

  // ---------------------------------------------------------------------------------------------
  // BusDevice

  /** A guest read; wider accesses are split into byte reads at consecutive ports. */
  read(offset: number, size: number): number {
    let value = 0;
    for (let i = 0; i < size; i++) value |= this.readByte(offset + i) << (8 * i);
    return value >>> 0;
  }

  /** A guest write; wider accesses are split into byte writes at consecutive ports. */
  write(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) this.writeByte(offset + i, (value >>> (8 * i)) & 0xff);
  }

  // ---------------------------------------------------------------------------------------------
  // Host side

  /**
   * Presses and releases Ctrl, Alt and Delete on the keyboard: scan code set 2, or the set-1
   * bytes the controller would deliver with translation on. Returns false (and queues nothing)
   * when the keyboard has scanning disabled or too little buffer room. The bytes reach the guest
   * one per interrupt as it reads them.
   */
  sendCtrlAltDel(): boolean {
    const seq = this.ctr & CTR_XLATE ? CTRL_ALT_DEL_SET1 : CTRL_ALT_DEL_SET2;
    if (!this.scanning || KBD_QUEUE_CAPACITY - this.kbdQueue.length < seq.length) {
      this.counters.injectRefused++;
      return false;
    }
    for (const b of seq) this.kbdQueue.push(b);
    this.counters.ctrlAltDels++;
    this.counters.keysInjected += 3;
    this.service();
    return true;
  }

  /** Counters: commands, bytes, interrupts, resets and injected keys. */
  metrics(): I8042Metrics {
    return { ...this.counters, queuedBytes: this.kbdQueue.length + this.ctlQueue.length + (this.outputBuffer ? 1 : 0) };
  }

  /** Controller and keyboard registers, the output buffer and both queues. */
  saveState(): StateObject {
    const ob = (b: OutByte) => [b.value, b.aux];
    return {
      ctr: this.ctr,
      outputPort: this.outputPort,
      outputBuffer: this.outputBuffer ? ob(this.outputBuffer) : null,
      ctlQueue: this.ctlQueue.map(ob),
      kbdQueue: [...this.kbdQueue],
      pendingCommand: this.pendingCommand ?? null,
      lastWriteWasCommand: this.lastWriteWasCommand,
      lastDataRead: this.lastDataRead,
      scanning: this.scanning,
      kbdPendingParam: this.kbdPendingParam ?? null,
      kbdLastSent: this.kbdLastSent,
    };
  }

  /** See {@link saveState}. Re-drives IRQ 1 to match. */
  restoreState(state: StateObject): void {
    const byte = (k: string) => stateField.int(state, k, 0, 0xff);
    const bad = (k: string) => new DeviceError('BAD_STATE', `i8042 state field ${k} is malformed`);
    const outByte = (v: StateValue, k: string): OutByte => {
      if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== 'number' || !Number.isInteger(v[0]) || v[0] < 0 || v[0] > 0xff || typeof v[1] !== 'boolean') throw bad(k);
      return { value: v[0], aux: v[1] };
    };
    const ctr = byte('ctr');
    const outputPort = byte('outputPort');
    const outputBuffer = state.outputBuffer === null ? undefined : outByte(state.outputBuffer, 'outputBuffer');
    const ctlQueue = stateField.arr(state, 'ctlQueue', CTL_QUEUE_CAPACITY).map((v) => outByte(v, 'ctlQueue'));
    const kbdQueue = stateField.arr(state, 'kbdQueue', KBD_QUEUE_CAPACITY).map((v) => {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xff) throw bad('kbdQueue');
      return v;
    });
    const pendingCommand = state.pendingCommand === null ? undefined : byte('pendingCommand');
    const param = state.kbdPendingParam;
    if (param !== null && param !== KBD_CMD_SET_LEDS && param !== KBD_CMD_SET_REPEAT && param !== KBD_CMD_SCANCODE_SET) throw bad('kbdPendingParam');
    const lastWriteWasCommand = stateField.bool(state, 'lastWriteWasCommand');
    const lastDataRead = byte('lastDataRead');
    const scanning = stateField.bool(state, 'scanning');
    const kbdLastSent = byte('kbdLastSent');
    this.ctr = ctr;
    this.outputPort = outputPort;
    this.outputBuffer = outputBuffer;
    this.ctlQueue.splice(0, this.ctlQueue.length, ...ctlQueue);
    this.kbdQueue.splice(0, this.kbdQueue.length, ...kbdQueue);
    this.pendingCommand = pendingCommand;
    this.lastWriteWasCommand = lastWriteWasCommand;
    this.lastDataRead = lastDataRead;
    this.scanning = scanning;
    this.kbdPendingParam = param === null ? undefined : (param as KbdParamCommand);
    this.kbdLastSent = kbdLastSent;
    this.irqLevel = !(outputBuffer !== undefined && !outputBuffer.aux && (ctr & CTR_KBDINT) !== 0);
    this.updateIrq();
  }

  /** Holds nothing outside its own state. */
  async close(): Promise<void> {}

  // ---------------------------------------------------------------------------------------------
  // Ports

  private readByte(off: number): number {
    switch (off) {
      case I8042_DATA_OFFSET:
        return this.readData();
      case I8042_STATUS_OFFSET:
        return this.status();
      case I8042_PORT_B_OFFSET:
        this.counters.ignoredAccesses++;
        return PORT_B_VALUE;
      default:
        // 0x62, 0x63: nothing decodes them on a PC; an undriven ISA bus reads all ones.
        this.counters.ignoredAccesses++;
        return 0xff;
    }
  }

  private writeByte(off: number, v: number): void {
    if (off === I8042_DATA_OFFSET) this.writeData(v);
    else if (off === I8042_STATUS_OFFSET) this.writeCommand(v);
    else if (off >= 0 && off < I8042_WINDOW_LEN) this.counters.ignoredAccesses++;
  }

  private status(): number {
    const ob = this.outputBuffer;
    return (
      (ob ? STR_OBF : 0) |
      (ob?.aux ? STR_AUXDATA : 0) |
      (this.ctr & CTR_SYS ? STR_SYS : 0) |
      (this.lastWriteWasCommand ? STR_CMDDAT : 0) |
      STR_KEYLOCK
    );
  }

  private readData(): number {
    const ob = this.outputBuffer;
    if (!ob) {
      // Like the real part, the data port keeps returning the last byte.
      this.counters.emptyReads++;
      return this.lastDataRead;
    }
    this.outputBuffer = undefined;
    this.lastDataRead = ob.value;
    this.counters.bytesRead++;
    // Lower the line before the next byte moves in, so that byte is a fresh edge.
    this.updateIrq();
    this.service();
    return ob.value;
  }

  private writeCommand(cmd: number): void {
    this.counters.commands++;
    this.lastWriteWasCommand = true;
    // A new command abandons one that was still waiting for its parameter.
    this.pendingCommand = undefined;
    switch (cmd) {
      case CMD_READ_CTR:
        this.reply(this.ctr, false);
        break;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTPUT_PORT:
      case CMD_WRITE_KBD_BUFFER:
      case CMD_WRITE_AUX_BUFFER:
      case CMD_WRITE_AUX_DEVICE:
        this.pendingCommand = cmd;
        break;
      case CMD_AUX_DISABLE:
        this.ctr |= CTR_AUXDIS;
        break;
      case CMD_AUX_ENABLE:
        this.ctr &= ~CTR_AUXDIS;
        break;
      case CMD_AUX_TEST:
      case CMD_KBD_TEST:
        this.reply(RET_INTERFACE_OK, false);
        break;
      case CMD_SELF_TEST:
        this.ctr |= CTR_SYS;
        this.reply(RET_SELF_TEST_OK, false);
        break;
      case CMD_KBD_DISABLE:
        this.ctr |= CTR_KBDDIS;
        break;
      case CMD_KBD_ENABLE:
        this.ctr &= ~CTR_KBDDIS;
        break;
      case CMD_READ_OUTPUT_PORT:
        this.reply(this.outputPort, false);
        break;
      default:
        if ((cmd & 0xf0) === CMD_PULSE_OUTPUT_BASE) {
          // 0xF0..0xFF pulse the lines whose bit is 0 in the low nibble; line 0 is CPU reset.
          if ((cmd & OUTPUT_PORT_RESET) === 0) this.reset();
        } else {
          // Includes vendor commands such as 0xCA/0xCB and the MUX prefix 0x90..0x93, which
          // Linux only sends after detecting them.
          this.counters.unknownCommands++;
        }
        break;
    }
    this.service();
  }

  private writeData(v: number): void {
    this.counters.dataWrites++;
    this.lastWriteWasCommand = false;
    const cmd = this.pendingCommand;
    this.pendingCommand = undefined;
    switch (cmd) {
      case CMD_WRITE_CTR:
        this.ctr = v & 0x7f; // bit 7 is reserved and reads 0
        break;
      case CMD_WRITE_OUTPUT_PORT:
        this.outputPort = v;
        if ((v & OUTPUT_PORT_RESET) === 0) this.reset();
        break;
      case CMD_WRITE_KBD_BUFFER:
        this.reply(v, false);
        break;
      case CMD_WRITE_AUX_BUFFER:
        this.reply(v, true);
        break;
      case CMD_WRITE_AUX_DEVICE:
        // No AUX device is attached: the byte goes nowhere.
        this.counters.droppedBytes++;
        break;
      default:
        this.keyboardReceive(v);
        break;
    }
    this.service();
  }

  private reset(): void {
    this.counters.resets++;
    this.effects.onReset();
  }

  // ---------------------------------------------------------------------------------------------
  // The keyboard

  private keyboardReceive(b: number): void {
    this.counters.kbdCommands++;
    const xlate = (this.ctr & CTR_XLATE) !== 0;
    const param = this.kbdPendingParam;
    if (param !== undefined) {
      this.kbdPendingParam = undefined;
      if (param === KBD_CMD_SCANCODE_SET) {
        if (b === 0) this.keyboardSend(KBD_RET_ACK, xlate ? KBD_SCANCODE_SET_XLATE : KBD_SCANCODE_SET);
        else if (b === KBD_SCANCODE_SET) this.keyboardSend(KBD_RET_ACK);
        else this.keyboardSend(KBD_RET_NAK); // sets 1 and 3 are not implemented
      } else {
        this.keyboardSend(KBD_RET_ACK); // LED state and typematic rate have no effect here
      }
      return;
    }
    switch (b) {
      case KBD_CMD_RESET:
        this.kbdQueue.length = 0;
        this.scanning = true;
        this.keyboardSend(KBD_RET_ACK, KBD_RET_BAT_OK);
        return;
      case KBD_CMD_GET_ID:
        this.keyboardSend(KBD_RET_ACK, KBD_ID_1, xlate ? KBD_ID_2_XLATE : KBD_ID_2);
        return;
      case KBD_CMD_ENABLE:
        this.scanning = true;
        this.keyboardSend(KBD_RET_ACK);
        return;
      case KBD_CMD_RESET_DIS:
        this.scanning = false;
        this.keyboardSend(KBD_RET_ACK);
        return;
      case KBD_CMD_ECHO:
        this.keyboardSend(KBD_RET_ECHO);
        return;
      case KBD_CMD_RESEND:
        this.keyboardSend(this.kbdLastSent);
        return;
      case KBD_CMD_SET_LEDS:
      case KBD_CMD_SET_REPEAT:
      case KBD_CMD_SCANCODE_SET:
        this.kbdPendingParam = b;
        this.keyboardSend(KBD_RET_ACK);
        return;
      default:
        this.keyboardSend(KBD_RET_ACK);
        return;
    }
  }

  private keyboardSend(...bytes: number[]): void {
    for (const b of bytes) {
      if (this.kbdQueue.length >= KBD_QUEUE_CAPACITY) {
        this.counters.droppedBytes++;
        continue;
      }
      this.kbdQueue.push(b);
      this.kbdLastSent = b;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Output buffer and interrupt

  private reply(value: number, aux: boolean): void {
    if (this.ctlQueue.length >= CTL_QUEUE_CAPACITY) {
      this.counters.droppedBytes++;
      return;
    }
    this.ctlQueue.push({ value, aux });
  }

  /** Moves the next byte into an empty output buffer and recomputes IRQ 1. */
  private service(): void {
    if (!this.outputBuffer) {
      const ctl = this.ctlQueue.shift();
      if (ctl) this.outputBuffer = ctl;
      else if (this.kbdQueue.length > 0 && !(this.ctr & CTR_KBDDIS)) {
        this.outputBuffer = { value: this.kbdQueue.shift() as number, aux: false };
      }
    }
    this.updateIrq();
  }

  private updateIrq(): void {
    const ob = this.outputBuffer;
    const level = ob !== undefined && !ob.aux && (this.ctr & CTR_KBDINT) !== 0;
    if (level === this.irqLevel) return;
    this.irqLevel = level;
    if (level) this.counters.interrupts++;
    this.effects.irq.setLevel(level);
  }
}
