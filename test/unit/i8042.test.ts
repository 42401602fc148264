import {
  CTRL_ALT_DEL_SET1,
  CTRL_ALT_DEL_SET2,
  I8042,
  I8042_DATA_OFFSET as DATA,
  I8042_STATUS_OFFSET as CMD,
  STR_AUXDATA,
  STR_CMDDAT,
  STR_OBF,
  STR_SYS,
} from '../../lib/devices/i8042';
import { LevelIrq } from './helpers/level-irq';

class FakeIrq extends LevelIrq {
  constructor() {
    super('i8042');
  }
}

function rig(): { kbc: I8042; irq: FakeIrq; resets: () => number } {
  const irq = new FakeIrq();
  let resets = 0;
  const kbc = new I8042({ irq, onReset: () => resets++ });
  return { kbc, irq, resets: () => resets };
}

const status = (k: I8042): number => k.read(CMD, 1);
const data = (k: I8042): number => k.read(DATA, 1);

/** Like Linux's __i8042_command: write the command, its parameters, then poll OBF for replies. */
function command(k: I8042, cmd: number, params: number[] = [], replies = 0): number[] {
  k.write(CMD, 1, cmd);
  for (const p of params) k.write(DATA, 1, p);
  const out: number[] = [];
  for (let i = 0; i < replies; i++) {
    if (!(status(k) & STR_OBF)) throw new Error(`no reply ${i} to command 0x${cmd.toString(16)}`);
    out.push(data(k));
  }
  return out;
}

/** Reads the output buffer the way Linux's interrupt handler does: one byte per rising edge. */
function drainByInterrupts(k: I8042, irq: FakeIrq): number[] {
  const got: number[] = [];
  for (let guard = 0; irq.level && guard < 100; guard++) {
    const rises = irq.rises;
    expect(status(k) & STR_OBF).toBe(STR_OBF);
    got.push(data(k));
    // Either the line fell and stayed low, or it fell and rose again for the next byte.
    if (irq.level) expect(irq.rises).toBe(rises + 1);
  }
  return got;
}

describe('i8042 controller', () => {
  test('self test answers 0x55 and sets the system flag', () => {
    const { kbc } = rig();
    kbc.write(CMD, 1, 0x60);
    kbc.write(DATA, 1, 0x00); // CTR with SYS clear
    expect(status(kbc) & STR_SYS).toBe(0);
    expect(command(kbc, 0xaa, [], 1)).toEqual([0x55]);
    expect(status(kbc) & STR_SYS).toBe(STR_SYS);
    expect(status(kbc) & STR_OBF).toBe(0);
  });

  test('CTR read and write; bit 7 reads 0', () => {
    const { kbc } = rig();
    expect(command(kbc, 0x20, [], 1)).toEqual([0x05]);
    command(kbc, 0x60, [0xc7]);
    expect(command(kbc, 0x20, [], 1)).toEqual([0x47]);
  });

  test('interface tests pass, and AUX enable/disable toggle CTR bit 5 (Linux i8042_toggle_aux)', () => {
    const { kbc } = rig();
    expect(command(kbc, 0xab, [], 1)).toEqual([0x00]);
    expect(command(kbc, 0xa9, [], 1)).toEqual([0x00]);
    command(kbc, 0xa7);
    expect(command(kbc, 0x20, [], 1)[0] & 0x20).toBe(0x20);
    command(kbc, 0xa8);
    expect(command(kbc, 0x20, [], 1)[0] & 0x20).toBe(0);
  });

  test('status CMD/DATA bit follows the last write target', () => {
    const { kbc } = rig();
    kbc.write(CMD, 1, 0xae);
    expect(status(kbc) & STR_CMDDAT).toBe(STR_CMDDAT);
    kbc.write(DATA, 1, 0xf4);
    expect(status(kbc) & STR_CMDDAT).toBe(0);
  });

  test('0xFE pulses reset; 0xFF pulses nothing; output port bit 0 low resets too', () => {
    const { kbc, resets } = rig();
    kbc.write(CMD, 1, 0xff);
    expect(resets()).toBe(0);
    kbc.write(CMD, 1, 0xfe);
    expect(resets()).toBe(1);
    command(kbc, 0xd1, [0xdf]); // Linux's A20 enable: bit 0 high, no reset
    expect(resets()).toBe(1);
    expect(command(kbc, 0xd0, [], 1)).toEqual([0xdf]);
    command(kbc, 0xd1, [0xde]);
    expect(resets()).toBe(2);
    expect(kbc.metrics().resets).toBe(2);
  });

  test('a command that expects a parameter consumes exactly the next data byte', () => {
    const { kbc } = rig();
    command(kbc, 0x60, [0x44]);
    // The next data byte goes to the keyboard again (F2 identify).
    kbc.write(DATA, 1, 0xf2);
    expect(command(kbc, 0x20, [], 0)).toEqual([]);
    // The ACK already sits in the output buffer; the CTR reply overtakes the rest of the keyboard's
    // bytes, and with CTR_XLATE (0x40) set the ID's second byte arrives translated.
    expect([data(kbc), data(kbc), data(kbc), data(kbc)]).toEqual([0xfa, 0x44, 0xab, 0x41]);
  });

  test('AUX loop (0xD3) echoes with STR_AUXDATA and does not raise IRQ 1', () => {
    const { kbc, irq } = rig();
    kbc.write(CMD, 1, 0xd3);
    kbc.write(DATA, 1, 0x5a);
    expect(status(kbc) & (STR_OBF | STR_AUXDATA)).toBe(STR_OBF | STR_AUXDATA);
    expect(irq.level).toBe(false);
    expect(data(kbc)).toBe(0x5a);
    expect(status(kbc) & (STR_OBF | STR_AUXDATA)).toBe(0);
  });

  test('keyboard loop (0xD2) raises IRQ 1 when CTR enables it', () => {
    const { kbc, irq } = rig();
    command(kbc, 0xd2, [0x1c]);
    expect(irq.level).toBe(true);
    expect(data(kbc)).toBe(0x1c);
    expect(irq.level).toBe(false);
    command(kbc, 0x60, [0x04]); // KBDINT off
    command(kbc, 0xd2, [0x1c]);
    expect(irq.level).toBe(false);
    command(kbc, 0x60, [0x05]); // turning KBDINT on with a byte waiting raises the line
    expect(irq.level).toBe(true);
  });

  test('ports 0x61..0x63 are benign', () => {
    const { kbc } = rig();
    expect(kbc.read(1, 1)).toBe(0x20);
    expect(kbc.read(2, 1)).toBe(0xff);
    expect(kbc.read(3, 1)).toBe(0xff);
    kbc.write(1, 1, 0x03);
    expect(status(kbc) & STR_OBF).toBe(0);
  });

  test('Linux probe without i8042.noaux: flush, self test, CTR dance, AUX loop and toggle', () => {
    const { kbc } = rig();
    expect(status(kbc) & STR_OBF).toBe(0); // i8042_flush finds nothing
    expect(command(kbc, 0xaa, [], 1)).toEqual([0x55]);
    const ctr1 = command(kbc, 0x20, [], 1)[0];
    const ctr2 = command(kbc, 0x20, [], 1)[0];
    expect(ctr1).toBe(ctr2);
    const ctr = (ctr1 | 0x10) & ~0x01; // KBDDIS, no KBDINT; XLATE clear -> Linux goes direct
    expect(ctr1 & 0x40).toBe(0);
    command(kbc, 0x60, [ctr]);
    expect(command(kbc, 0x20, [], 1)).toEqual([ctr]);
    expect(command(kbc, 0xd3, [0x5a], 1)).toEqual([0x5a]);
    command(kbc, 0xa7);
    expect(command(kbc, 0x20, [], 1)[0] & 0x20).toBe(0x20);
    command(kbc, 0xa8);
    expect(command(kbc, 0x20, [], 1)[0] & 0x20).toBe(0);
    expect(status(kbc) & STR_OBF).toBe(0);
  });
});

describe('i8042 keyboard', () => {
  test('reset answers ACK then BAT OK, one interrupt per byte', () => {
    const { kbc, irq } = rig();
    kbc.write(DATA, 1, 0xff);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xfa, 0xaa]);
    expect(irq.rises).toBe(2);
  });

  test('identify, scan-code-set query, parameter commands, echo, resend', () => {
    const { kbc, irq } = rig();
    kbc.write(DATA, 1, 0xf2);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xfa, 0xab, 0x83]);
    kbc.write(DATA, 1, 0xf0);
    kbc.write(DATA, 1, 0x00);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xfa, 0xfa, 0x02]);
    kbc.write(DATA, 1, 0xf0);
    kbc.write(DATA, 1, 0x03);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xfa, 0xfe]);
    kbc.write(DATA, 1, 0xed);
    kbc.write(DATA, 1, 0xf2); // LED bits, not an identify command
    expect(drainByInterrupts(kbc, irq)).toEqual([0xfa, 0xfa]);
    kbc.write(DATA, 1, 0xee);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xee]);
    kbc.write(DATA, 1, 0xfe);
    expect(drainByInterrupts(kbc, irq)).toEqual([0xee]);
  });

  test('Ctrl-Alt-Del arrives as set-2 make and break codes, one interrupt per byte', () => {
    const { kbc, irq } = rig();
    expect(kbc.sendCtrlAltDel()).toBe(true);
    expect(irq.level).toBe(true);
    const got = drainByInterrupts(kbc, irq);
    expect(got).toEqual([0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]);
    expect(got).toEqual(CTRL_ALT_DEL_SET2);
    expect(irq.rises).toBe(got.length);
    expect(status(kbc) & STR_OBF).toBe(0);
    expect(kbc.metrics().keysInjected).toBe(3);
  });

  test('with CTR translation on, Ctrl-Alt-Del arrives in set 1', () => {
    const { kbc, irq } = rig();
    command(kbc, 0x60, [0x45]);
    kbc.sendCtrlAltDel();
    expect(drainByInterrupts(kbc, irq)).toEqual([...CTRL_ALT_DEL_SET1]);
    expect(CTRL_ALT_DEL_SET1).toEqual([0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
  });

  test('keyboard bytes wait while the interface is disabled and flow after 0xAE', () => {
    const { kbc, irq } = rig();
    command(kbc, 0xad);
    expect(kbc.sendCtrlAltDel()).toBe(true);
    expect(status(kbc) & STR_OBF).toBe(0);
    expect(irq.level).toBe(false);
    command(kbc, 0xae);
    expect(irq.level).toBe(true);
    expect(drainByInterrupts(kbc, irq)).toEqual([...CTRL_ALT_DEL_SET2]);
  });

  test('a controller reply issued mid-sequence is delivered next, keyboard bytes resume after', () => {
    const { kbc } = rig();
    kbc.sendCtrlAltDel();
    kbc.write(CMD, 1, 0x20);
    expect([data(kbc), data(kbc), data(kbc)]).toEqual([0x14, 0x05, 0x11]);
  });

  test('injection is refused when scanning is off or the keyboard buffer lacks room', () => {
    const { kbc, irq } = rig();
    expect(kbc.sendCtrlAltDel()).toBe(true);
    expect(kbc.sendCtrlAltDel()).toBe(false); // 11 + 11 bytes exceed the 16-byte buffer
    drainByInterrupts(kbc, irq);
    kbc.write(DATA, 1, 0xf5);
    drainByInterrupts(kbc, irq);
    expect(kbc.sendCtrlAltDel()).toBe(false);
    kbc.write(DATA, 1, 0xf4);
    drainByInterrupts(kbc, irq);
    expect(kbc.sendCtrlAltDel()).toBe(true);
    expect(kbc.metrics().injectRefused).toBe(2);
  });

  test('reading an empty output buffer repeats the last byte and raises nothing', () => {
    const { kbc, irq } = rig();
    command(kbc, 0xd2, [0x42]);
    expect(data(kbc)).toBe(0x42);
    const rises = irq.rises;
    expect(data(kbc)).toBe(0x42);
    expect(irq.rises).toBe(rises);
    expect(kbc.metrics().emptyReads).toBe(1);
  });
});
