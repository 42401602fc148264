import fc from 'fast-check';
import {
  Serial,
  SerialError,
  SERIAL_CACHE_TRANSPARENT_WRITE_MASK,
  SERIAL_LSR_OFFSET,
  UART_IER,
  UART_IIR_FCR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RBR_THR,
  UART_SCR,
} from '../../lib/devices/serial';
import { LevelIrq } from './helpers/level-irq';

class FakeIrq extends LevelIrq {
  constructor() {
    super('UART');
  }
}

interface Rig {
  uart: Serial;
  irq: FakeIrq;
  out: Uint8Array[];
  spaceCalls: number[];
  lsrChanges: number;
}

function rig(options: ConstructorParameters<typeof Serial>[1] = {}): Rig {
  const irq = new FakeIrq();
  const r: Rig = { uart: undefined as unknown as Serial, irq, out: [], spaceCalls: [], lsrChanges: 0 };
  r.uart = new Serial(
    {
      irq,
      onOutput: (b) => r.out.push(b),
      onInputSpace: (s) => r.spaceCalls.push(s),
      onLsrChange: () => r.lsrChanges++,
    },
    options,
  );
  return r;
}

const rd = (u: Serial, off: number): number => u.read(off, 1);
const wr = (u: Serial, off: number, v: number): void => u.write(off, 1, v);
const concat = (chunks: Uint8Array[]): number[] => chunks.flatMap((c) => [...c]);
const nextMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('Serial registers', () => {
  test('power-on state: THR empty, no interrupt, modem lines of a ready peer', () => {
    const { uart } = rig();
    expect(rd(uart, UART_LSR)).toBe(0x60);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x01);
    expect(rd(uart, UART_MSR)).toBe(0xb0);
    expect(rd(uart, UART_IER)).toBe(0);
    expect(rd(uart, UART_LCR)).toBe(0);
    expect(rd(uart, UART_MCR)).toBe(0);
  });

  test('DLAB banks DLL/DLM over THR/IER without transmitting', () => {
    const r = rig();
    const { uart } = r;
    wr(uart, UART_IER, 0x05);
    wr(uart, UART_LCR, 0x83);
    wr(uart, UART_RBR_THR, 0x01);
    wr(uart, UART_IER, 0x02);
    expect(rd(uart, UART_RBR_THR)).toBe(0x01);
    expect(rd(uart, UART_IER)).toBe(0x02);
    wr(uart, UART_LCR, 0x03);
    expect(rd(uart, UART_IER)).toBe(0x05);
    uart.flush();
    expect(r.out).toHaveLength(0);
    expect(uart.metrics().txBytes).toBe(0);
  });

  test('IER keeps only bits 0..3 (Linux autoconfig writes 0x0f and 0 and reads back)', () => {
    const { uart } = rig();
    wr(uart, UART_IER, 0xff);
    expect(rd(uart, UART_IER)).toBe(0x0f);
    wr(uart, UART_IER, 0);
    expect(rd(uart, UART_IER)).toBe(0);
  });

  test('IIR shows 0xC0 only while FCR enables the FIFOs; bit 5 stays clear (not a 16750)', () => {
    const { uart } = rig();
    wr(uart, UART_IIR_FCR, 0x01);
    expect(rd(uart, UART_IIR_FCR)).toBe(0xc1);
    wr(uart, UART_IIR_FCR, 0x21);
    expect(rd(uart, UART_IIR_FCR) & 0x20).toBe(0);
    wr(uart, UART_IIR_FCR, 0x00);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x01);
  });

  test('SCR stores a byte', () => {
    const { uart } = rig();
    wr(uart, UART_SCR, 0xa5);
    expect(rd(uart, UART_SCR)).toBe(0xa5);
  });

  test('wide accesses are split into byte accesses', () => {
    const { uart } = rig();
    expect(uart.read(UART_LSR, 2)).toBe(0x60 | (0xb0 << 8));
    uart.write(UART_LCR, 2, 0x0b03); // LCR=0x03, MCR=0x0b
    expect(rd(uart, UART_LCR)).toBe(0x03);
    expect(rd(uart, UART_MCR)).toBe(0x0b);
  });

  test('a bad FIFO size is refused with a typed error', () => {
    expect(() => rig({ rxFifoCapacity: 0 })).toThrow(SerialError);
    try {
      rig({ rxFifoCapacity: 1.5 });
    } catch (e) {
      expect((e as SerialError).code).toBe('BAD_OPTION');
    }
    expect.assertions(2);
  });
});

describe('Serial loopback', () => {
  test('Linux autoconfig: MCR = LOOP|OUT2|RTS makes MSR high nibble 0x90', () => {
    const { uart } = rig();
    wr(uart, UART_MCR, 0x10 | 0x0a);
    expect(rd(uart, UART_MSR) & 0xf0).toBe(0x90);
    wr(uart, UART_MCR, 0x1f);
    expect(rd(uart, UART_MSR) & 0xf0).toBe(0xf0);
    wr(uart, UART_MCR, 0x10);
    expect(rd(uart, UART_MSR) & 0xf0).toBe(0x00);
    wr(uart, UART_MCR, 0x00);
    expect(rd(uart, UART_MSR) & 0xf0).toBe(0xb0);
  });

  test('MSR delta bits record loopback line changes and clear on read', () => {
    const { uart } = rig();
    wr(uart, UART_MCR, 0x10 | 0x04); // RI on; CTS, DSR, DCD drop from the idle 0xB0
    expect(rd(uart, UART_MSR)).toBe(0x40 | 0x01 | 0x02 | 0x08);
    expect(rd(uart, UART_MSR)).toBe(0x40);
    wr(uart, UART_MCR, 0x10); // RI falls: trailing edge
    expect(rd(uart, UART_MSR)).toBe(0x04);
  });

  test('THR writes loop back into the receiver and never reach the host', async () => {
    const r = rig();
    const { uart } = r;
    wr(uart, UART_MCR, 0x10);
    for (const b of [0x41, 0x42, 0x43]) wr(uart, UART_RBR_THR, b);
    expect(rd(uart, UART_LSR) & 0x01).toBe(1);
    expect([rd(uart, 0), rd(uart, 0), rd(uart, 0)]).toEqual([0x41, 0x42, 0x43]);
    expect(rd(uart, UART_LSR) & 0x01).toBe(0);
    await nextMacrotask();
    expect(r.out).toHaveLength(0);
    expect(uart.metrics().loopbackBytes).toBe(3);
  });

  test('loopback overrun sets OE, keeps the FIFO, and reading LSR clears OE', () => {
    const { uart, irq } = rig({ rxFifoCapacity: 4 });
    wr(uart, UART_IER, 0x04); // ELSI
    wr(uart, UART_MCR, 0x10);
    for (let i = 0; i < 6; i++) wr(uart, UART_RBR_THR, i);
    expect(uart.metrics().overruns).toBe(2);
    expect(irq.level).toBe(true);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x06);
    expect(rd(uart, UART_LSR)).toBe(0x63);
    expect(rd(uart, UART_LSR)).toBe(0x61);
    expect(irq.level).toBe(false);
    expect([0, 1, 2, 3].map(() => rd(uart, 0))).toEqual([0, 1, 2, 3]);
  });
});

describe('Serial interrupts', () => {
  test('THRE: raised by enabling ETBEI, acknowledged by reading IIR, re-raised by a THR write', () => {
    const { uart, irq } = rig();
    wr(uart, UART_IER, 0x02);
    expect(irq.level).toBe(true);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x02);
    expect(irq.level).toBe(false);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x01);
    wr(uart, UART_RBR_THR, 0x41);
    expect(irq.level).toBe(true);
    wr(uart, UART_IER, 0x00);
    expect(irq.level).toBe(false);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x01);
    // Linux's THRE test: disabling and re-enabling ETBEI must raise it again.
    wr(uart, UART_IER, 0x02);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x02);
    // setLevel is only called on changes.
    for (let i = 1; i < irq.history.length; i++) expect(irq.history[i]).not.toBe(irq.history[i - 1]);
    expect(uart.metrics().interrupts).toBe(irq.rises);
  });

  test('without ETBEI a THR write raises nothing (console polling mode)', () => {
    const { uart, irq } = rig();
    for (let i = 0; i < 10; i++) wr(uart, UART_RBR_THR, 0x30 + i);
    expect(irq.history).toHaveLength(0);
    expect(rd(uart, UART_LSR)).toBe(0x60);
  });

  test('received data interrupt has priority over THRE and lasts until the FIFO is drained', () => {
    const { uart, irq } = rig();
    wr(uart, UART_IIR_FCR, 0x01);
    wr(uart, UART_IER, 0x03);
    expect(rd(uart, UART_IIR_FCR)).toBe(0xc2); // acknowledge THRE
    expect(irq.level).toBe(false);
    expect(uart.enqueueInput(new Uint8Array([0x61, 0x62]))).toBe(2);
    expect(irq.level).toBe(true);
    wr(uart, UART_RBR_THR, 0x7a); // THRE pending too now
    expect(rd(uart, UART_IIR_FCR)).toBe(0xc4);
    expect(rd(uart, UART_IIR_FCR)).toBe(0xc4); // reading IIR does not acknowledge RDA
    expect(rd(uart, UART_RBR_THR)).toBe(0x61);
    expect(irq.level).toBe(true);
    expect(rd(uart, UART_RBR_THR)).toBe(0x62);
    expect(rd(uart, UART_IIR_FCR)).toBe(0xc2); // THRE was still pending underneath
    expect(irq.level).toBe(false);
    expect(rd(uart, UART_LSR) & 0x01).toBe(0);
  });

  test('modem status interrupt from loopback line changes, cleared by reading MSR', () => {
    const { uart, irq } = rig();
    wr(uart, UART_IER, 0x08);
    expect(irq.level).toBe(false);
    wr(uart, UART_MCR, 0x10 | 0x02);
    expect(irq.level).toBe(true);
    expect(rd(uart, UART_IIR_FCR)).toBe(0x00);
    rd(uart, UART_MSR);
    expect(irq.level).toBe(false);
  });
});

describe('Serial input and backpressure', () => {
  test('enqueueInput accepts what fits, onInputSpace fires once at half capacity', () => {
    const r = rig({ rxFifoCapacity: 8 });
    const { uart } = r;
    const data = Uint8Array.from({ length: 20 }, (_, i) => 0x41 + i);
    expect(uart.enqueueInput(data)).toBe(8);
    expect(uart.inputSpace()).toBe(0);
    expect(uart.metrics().inputRefused).toBe(12);
    for (let i = 0; i < 3; i++) rd(uart, 0);
    expect(r.spaceCalls).toEqual([]);
    rd(uart, 0);
    expect(r.spaceCalls).toEqual([4]);
    rd(uart, 0);
    expect(r.spaceCalls).toEqual([4]);
  });

  test('FCR receive-FIFO clear discards data, clears DR, and frees space for the host', () => {
    const r = rig({ rxFifoCapacity: 4 });
    const { uart } = r;
    wr(uart, UART_IIR_FCR, 0x01); // entering FIFO mode clears (nothing yet)
    uart.enqueueInput(new Uint8Array([1, 2, 3, 4, 5]));
    expect(rd(uart, UART_LSR) & 1).toBe(1);
    wr(uart, UART_IIR_FCR, 0x03);
    expect(rd(uart, UART_LSR) & 1).toBe(0);
    expect(uart.metrics().rxDiscarded).toBe(4);
    expect(r.spaceCalls).toEqual([4]);
  });

  test('property: no byte is lost or reordered under any interleaving of offers and drains', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 32 }),
        fc.array(fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 40 }), fc.integer({ min: 1, max: 50 })), { maxLength: 40 }),
        (capacity, ops) => {
          const pending: number[] = [];
          const sent: number[] = [];
          const received: number[] = [];
          let uart!: Serial;
          const offer = (): void => {
            const n = uart.enqueueInput(Uint8Array.from(pending));
            sent.push(...pending.splice(0, n));
          };
          uart = new Serial(
            { irq: new FakeIrq(), onOutput: () => undefined, onInputSpace: () => offer() },
            { rxFifoCapacity: capacity },
          );
          const drain = (count: number): void => {
            for (let i = 0; i < count && uart.read(UART_LSR, 1) & 1; i++) received.push(uart.read(0, 1));
          };
          for (const op of ops) {
            if (typeof op === 'number') drain(op);
            else {
              const wasEmpty = pending.length === 0;
              pending.push(...op);
              if (wasEmpty) offer(); // a paused stream only buffers until onInputSpace
            }
          }
          drain(Infinity);
          expect(received).toEqual(sent);
          // Everything offered eventually went in.
          expect(pending).toEqual([]);
          expect(uart.metrics().rxBytes).toBe(received.length);
        },
      ),
    );
  });
});

describe('Serial output batching', () => {
  test('a burst becomes one chunk at the end of the macrotask', async () => {
    const r = rig();
    const text = Buffer.from('Linux version 6.1\r\n');
    for (const b of text) wr(r.uart, UART_RBR_THR, b);
    expect(r.out).toHaveLength(0);
    await nextMacrotask();
    expect(r.out).toHaveLength(1);
    expect(Buffer.from(r.out[0]).toString()).toBe(text.toString());
  });

  test('large bursts are chunked and stay in order across flush() and automatic delivery', async () => {
    const r = rig({ outputChunkBytes: 100 });
    const expected: number[] = [];
    for (let i = 0; i < 250; i++) {
      wr(r.uart, UART_RBR_THR, i & 0xff);
      expected.push(i & 0xff);
    }
    expect(r.out.map((c) => c.length)).toEqual([100, 100]); // full chunks go out synchronously
    r.uart.flush();
    expect(r.out.map((c) => c.length)).toEqual([100, 100, 50]);
    for (let i = 0; i < 7; i++) {
      wr(r.uart, UART_RBR_THR, 0xaa);
      expected.push(0xaa);
    }
    await nextMacrotask();
    expect(concat(r.out)).toEqual(expected);
    expect(r.uart.metrics().txBytes).toBe(257);
    expect(r.uart.metrics().outputChunks).toBe(4);
  });

  test('a throwing consumer is counted and does not stop later output', async () => {
    let calls = 0;
    const got: number[] = [];
    const uart = new Serial({
      irq: new FakeIrq(),
      onOutput: (b) => {
        if (calls++ === 0) throw new Error('consumer failed');
        got.push(...b);
      },
    });
    wr(uart, 0, 1);
    await nextMacrotask();
    wr(uart, 0, 2);
    await nextMacrotask();
    expect(got).toEqual([2]);
    expect(uart.metrics().outputErrors).toBe(1);
  });
});

describe('Serial LSR cache', () => {
  test('constants', () => {
    expect(SERIAL_LSR_OFFSET).toBe(5);
    expect(SERIAL_CACHE_TRANSPARENT_WRITE_MASK).toBe(0x8b);
  });

  test('cacheableLsr follows DR, and is undefined in loopback or with OE pending', () => {
    const r = rig({ rxFifoCapacity: 1 });
    const { uart } = r;
    expect(uart.cacheableLsr()).toBe(0x60);
    const before = r.lsrChanges;
    uart.enqueueInput(new Uint8Array([7]));
    expect(uart.cacheableLsr()).toBe(0x61);
    expect(r.lsrChanges).toBe(before + 1);
    wr(uart, UART_MCR, 0x10);
    expect(uart.cacheableLsr()).toBeUndefined();
    wr(uart, UART_RBR_THR, 1); // FIFO (1 byte) already full: overrun
    wr(uart, UART_MCR, 0x00);
    expect(uart.cacheableLsr()).toBeUndefined(); // OE must be cleared by a real read
    expect(rd(uart, UART_LSR)).toBe(0x63);
    expect(uart.cacheableLsr()).toBe(0x61);
  });

  test('invalidating writes notify even when the value is unchanged', () => {
    const r = rig();
    const n = r.lsrChanges;
    wr(r.uart, UART_SCR, 1);
    wr(r.uart, UART_IER, 0);
    expect(r.lsrChanges).toBe(n);
    wr(r.uart, UART_MCR, 0x03);
    expect(r.lsrChanges).toBe(n + 1);
    wr(r.uart, UART_IIR_FCR, 0x01);
    expect(r.lsrChanges).toBe(n + 2);
  });

  test('property: a write to a transparent offset never changes a cacheable LSR', () => {
    const offsets = [0, 1, 2, 3, 4, 5, 6, 7];
    const op = fc.oneof(
      fc.record({ kind: fc.constant('w' as const), off: fc.constantFrom(...offsets), v: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('r' as const), off: fc.constantFrom(...offsets) }),
      fc.record({ kind: fc.constant('in' as const), n: fc.integer({ min: 0, max: 5 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const uart = new Serial({ irq: new FakeIrq(), onOutput: () => undefined }, { rxFifoCapacity: 4 });
        for (const o of ops) {
          if (o.kind === 'in') uart.enqueueInput(new Uint8Array(o.n));
          else if (o.kind === 'r') uart.read(o.off, 1);
          else {
            const before = uart.cacheableLsr();
            uart.write(o.off, 1, o.v);
            if (before !== undefined && (SERIAL_CACHE_TRANSPARENT_WRITE_MASK >> o.off) & 1) {
              expect(uart.cacheableLsr()).toBe(before);
            }
          }
        }
        uart.flush();
      }),
    );
  });
});

describe('Serial transmit-interrupt notification', () => {
  it('reports IER.ETBEI turning on and off, once per change, whatever else IER does', () => {
    const seen: boolean[] = [];
    const uart = new Serial({ irq: new FakeIrq(), onOutput: () => undefined, onTransmitInterruptChange: (on) => seen.push(on) });
    wr(uart, UART_IER, 0x01); // receive interrupt only
    wr(uart, UART_IER, 0x03); // + ETBEI
    wr(uart, UART_IER, 0x02); // ETBEI stays on
    wr(uart, UART_IER, 0x00);
    wr(uart, UART_LCR, 0x80); // DLAB: offset 1 is DLM, not IER
    wr(uart, UART_IER, 0x02);
    wr(uart, UART_LCR, 0x03);
    expect(seen).toEqual([true, false]);
  });

  it('reports the state a restore brings, when it differs', () => {
    const source = new Serial({ irq: new FakeIrq(), onOutput: () => undefined });
    wr(source, UART_IER, 0x02);
    const seen: boolean[] = [];
    const restored = new Serial({ irq: new FakeIrq(), onOutput: () => undefined, onTransmitInterruptChange: (on) => seen.push(on) });
    restored.restoreState(source.saveState());
    expect(seen).toEqual([true]);
    restored.restoreState(source.saveState());
    expect(seen).toEqual([true]);
  });
});
