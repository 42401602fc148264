/**
 * Device state round trips (property tests): drive a device into a random reachable state, save
 * it (through JSON, as a snapshot file would carry it), restore it into a fresh device, then feed
 * both the same further input: they must answer identically and end in equal states. Hostile
 * state objects are refused with DeviceError / VirtioError, never anything else.
 */
import fc from 'fast-check';
import { Serial, UART_REGISTER_COUNT } from '../../lib/devices/serial';
import { I8042 } from '../../lib/devices/i8042';
import { BlockDevice, MemoryBackend } from '../../lib/devices/block';
import { MmioTransport } from '../../lib/virtio/mmio';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { KindlingError } from '../../lib/errors';
import type { StateObject } from '../../lib/devices/contract';
import { BumpAllocator, EchoDevice, MockIrq, MockMmioDriver, MockVirtqueue, allocQueueLayout } from '../../lib/testing/mock-driver';
import { LevelIrq } from './helpers/level-irq';
import {
  VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FEATURES_OK,
} from '../../lib/virtio/constants';

const viaJson = <T>(s: T): T => JSON.parse(JSON.stringify(s));

/** Refusing a hostile state must be a typed error (and must not be a crash of any other kind). */
function expectTypedOrOk(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof KindlingError)) throw e;
  }
}

/** Random mutations of a valid state object. */
function mutate(state: StateObject, rnd: () => number): StateObject {
  const copy = viaJson(state) as Record<string, unknown>;
  const keys = Object.keys(copy);
  const k = keys[Math.floor(rnd() * keys.length)];
  const choices: unknown[] = [null, -1, 1e9, 0.5, 'x', [], {}, true, 'AAAA', [999999], [[300, true]], undefined];
  copy[k] = choices[Math.floor(rnd() * choices.length)];
  return copy as StateObject;
}

// ------------------------------------------------------------------------------------------------
// UART

type UartOp = { op: 'r' | 'w'; off: number; v: number } | { op: 'in'; bytes: number[] };
const uartOp: fc.Arbitrary<UartOp> = fc.oneof(
  fc.record({ op: fc.constant('r' as const), off: fc.integer({ min: 0, max: UART_REGISTER_COUNT - 1 }), v: fc.constant(0) }),
  fc.record({ op: fc.constant('w' as const), off: fc.integer({ min: 0, max: UART_REGISTER_COUNT - 1 }), v: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('in' as const), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 80 }) }),
);

function uartRig() {
  const irq = new LevelIrq('UART');
  const out: number[] = [];
  const uart = new Serial({ irq, onOutput: (b) => out.push(...b) }, { rxFifoCapacity: 64 });
  return { uart, irq, out };
}

function applyUart(r: ReturnType<typeof uartRig>, op: UartOp): number {
  if (op.op === 'in') return r.uart.enqueueInput(Uint8Array.from(op.bytes));
  if (op.op === 'r') return r.uart.read(op.off, 1);
  r.uart.write(op.off, 1, op.v);
  return -1;
}

describe('device state round trips (property)', () => {
  it('UART: a restored UART answers like the original', () => {
    fc.assert(
      fc.property(fc.array(uartOp, { maxLength: 60 }), fc.array(uartOp, { maxLength: 60 }), (before, after) => {
        const a = uartRig();
        for (const op of before) applyUart(a, op);
        const saved = viaJson(a.uart.saveState());
        const b = uartRig();
        b.uart.restoreState(saved);
        expect(b.irq.level).toBe(a.irq.level);
        expect(b.uart.cacheableLsr()).toBe(a.uart.cacheableLsr());
        a.out.length = 0;
        for (const op of after) {
          expect(applyUart(b, op)).toBe(applyUart(a, op));
          expect(b.irq.level).toBe(a.irq.level);
        }
        a.uart.flush();
        b.uart.flush();
        expect(b.out).toEqual(a.out);
        expect(b.uart.saveState()).toEqual(a.uart.saveState());
      }),
      { numRuns: 3000 },
    );
  });

  it('UART: hostile state objects are refused with a typed error', () => {
    const a = uartRig();
    a.uart.enqueueInput(Uint8Array.from([1, 2, 3]));
    const valid = a.uart.saveState();
    fc.assert(fc.property(fc.integer(), (seed) => {
      let x = seed >>> 0;
      const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32);
      expectTypedOrOk(() => uartRig().uart.restoreState(mutate(valid, rnd)));
    }), { numRuns: 2000 });
    expect(() => uartRig().uart.restoreState({ ...valid, rx: Buffer.alloc(65).toString('base64') })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
  });

  // ----------------------------------------------------------------------------------------------
  // i8042

  type KbdOp = { op: 'r' | 'w'; port: 0 | 4; v: number } | { op: 'cad' };
  const kbdOp: fc.Arbitrary<KbdOp> = fc.oneof(
    fc.record({ op: fc.constantFrom('r' as const, 'w' as const), port: fc.constantFrom(0 as const, 4 as const), v: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x20, 0x60, 0xd2, 0xd3, 0xd4, 0xaa, 0xae, 0xad, 0xf0, 0xf2, 0xf4, 0xf5, 0xed, 0xff)) }),
    fc.constant({ op: 'cad' as const }),
  );

  function kbdRig() {
    const irq = new LevelIrq('i8042');
    let resets = 0;
    const dev = new I8042({ irq, onReset: () => resets++ });
    return { dev, irq, resets: () => resets };
  }

  function applyKbd(r: ReturnType<typeof kbdRig>, op: KbdOp): number | boolean {
    if (op.op === 'cad') return r.dev.sendCtrlAltDel();
    if (op.op === 'r') return r.dev.read(op.port, 1);
    r.dev.write(op.port, 1, op.v);
    return -1;
  }

  it('i8042: a restored controller answers like the original', () => {
    fc.assert(
      fc.property(fc.array(kbdOp, { maxLength: 60 }), fc.array(kbdOp, { maxLength: 60 }), (before, after) => {
        const a = kbdRig();
        for (const op of before) applyKbd(a, op);
        const b = kbdRig();
        b.dev.restoreState(viaJson(a.dev.saveState()));
        expect(b.irq.level).toBe(a.irq.level);
        const resetsA = a.resets();
        for (const op of after) {
          expect(applyKbd(b, op)).toBe(applyKbd(a, op));
          expect(b.irq.level).toBe(a.irq.level);
        }
        expect(b.resets()).toBe(a.resets() - resetsA);
        expect(b.dev.saveState()).toEqual(a.dev.saveState());
      }),
      { numRuns: 3000 },
    );
  });

  it('i8042: hostile state objects are refused with a typed error', () => {
    const valid = kbdRig().dev.saveState();
    fc.assert(fc.property(fc.integer(), (seed) => {
      let x = seed >>> 0;
      const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32);
      expectTypedOrOk(() => kbdRig().dev.restoreState(mutate(valid, rnd)));
    }), { numRuns: 2000 });
  });

  // ----------------------------------------------------------------------------------------------
  // virtio-mmio transport with the echo device

  type EchoOp = { op: 'chain'; len: number; wlen: number } | { op: 'notify' } | { op: 'irq' } | { op: 'config'; off: number; v: number };
  const echoOp: fc.Arbitrary<EchoOp> = fc.oneof(
    fc.record({ op: fc.constant('chain' as const), len: fc.integer({ min: 0, max: 64 }), wlen: fc.integer({ min: 0, max: 64 }) }),
    fc.constant({ op: 'notify' as const }),
    fc.constant({ op: 'irq' as const }),
    fc.record({ op: fc.constant('config' as const), off: fc.integer({ min: 0, max: 15 }), v: fc.integer({ min: 0, max: 255 }) }),
  );

  /** A transport + echo device + driver over its own memory; `phase` stops bring-up part way. */
  function echoRig(mem: GuestMemory) {
    const irq = new MockIrq();
    const dev = new EchoDevice([8, 16], 0n);
    const tasks: (() => void)[] = [];
    const transport = new MmioTransport(dev, { mem, irq, defer: (fn) => tasks.push(fn) });
    const driver = new MockMmioDriver(transport, mem);
    return { irq, dev, transport, driver, tasks };
  }

  it('transport: a restored transport and device continue on the same rings like the original', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(0, 1, 2, 3, 4),
        fc.boolean(),
        fc.array(echoOp, { maxLength: 30 }),
        fc.array(echoOp, { maxLength: 30 }),
        (phase, eventIdx, before, after) => {
          const memA = GuestMemory.anonymous(1 << 18);
          const a = echoRig(memA);
          const alloc = new BumpAllocator(memA);
          // Bring-up stopped at `phase`: 0 reset, 1 ack+driver, 2 features ok, 3 queues set, 4 running.
          const layouts = [allocQueueLayout(alloc, 8), allocQueueLayout(alloc, 16)];
          let qs: MockVirtqueue[] = [];
          if (phase >= 1) {
            a.driver.setStatus(VIRTIO_STATUS_ACKNOWLEDGE);
            a.driver.addStatus(VIRTIO_STATUS_DRIVER);
          }
          if (phase >= 2) {
            a.driver.writeDriverFeatures(a.driver.deviceFeatures() & (eventIdx ? ~0n : ~(1n << 29n)));
            a.driver.addStatus(VIRTIO_STATUS_FEATURES_OK);
          }
          if (phase >= 3) layouts.forEach((l, i) => a.driver.setupQueue(i, l));
          if (phase >= 4) {
            a.driver.driverOk();
            qs = layouts.map((l) => new MockVirtqueue(memA, l));
          }
          const buffers = alloc.alloc(64 * 1024);
          // Each side's driver allocates buffers the same way from its own cursor.
          const apply = (r: ReturnType<typeof echoRig>, mem: GuestMemory, q: MockVirtqueue | undefined, op: EchoOp, st: { cursor: number }): unknown => {
            switch (op.op) {
              case 'chain': {
                if (!q || q.freeCount < 2) return 'full';
                const src = st.cursor;
                const dst = st.cursor + 64;
                st.cursor = st.cursor + 128 >= buffers + 64 * 1024 ? buffers : st.cursor + 128;
                for (let i = 0; i < op.len; i++) mem.writeU8(src + i, (i * 7 + op.len) & 0xff);
                const bufs = [{ addr: src, len: op.len }, { addr: dst, len: op.wlen, write: true }].filter((b) => b.len > 0);
                if (bufs.length === 0) return 'empty';
                return q.addChain(bufs);
              }
              case 'notify':
                r.transport.write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0);
                while (r.tasks.length) r.tasks.shift()!();
                return q ? q.readUsed() : [];
              case 'irq':
                return r.driver.handleInterrupt();
              case 'config':
                r.transport.write(0x100 + op.off, 1, op.v);
                return r.transport.read(0x100 + op.off, 1);
            }
          };
          const stA = { cursor: buffers };
          for (const op of before) apply(a, memA, qs[0], op, stA);
          const stB = { ...stA };
          const saved = viaJson(a.transport.saveState());
          // The restored side gets a copy of guest memory, as a restored VM maps the memory file.
          const memB = GuestMemory.anonymous(1 << 18);
          memB.write(0, memA.read(0, memA.totalSize));
          const b = echoRig(memB);
          b.transport.restoreState(saved);
          // The driver's own bookkeeping, carried over as the guest's memory is (the constructor
          // would clear the rings, so copy the object instead).
          const qsB = qs.map((q) => Object.assign(Object.create(MockVirtqueue.prototype) as MockVirtqueue, {
            ...q, mem: memB, free: [...(q as unknown as { free: number[] }).free], owned: new Map((q as unknown as { owned: Map<number, number[]> }).owned),
          }));
          // A restore re-raises a pending interrupt; count only what follows.
          const irqA = a.irq.triggers;
          const irqB = b.irq.triggers;
          expect(b.transport.read(VIRTIO_MMIO_STATUS, 4)).toBe(a.transport.read(VIRTIO_MMIO_STATUS, 4));
          for (const op of after) {
            expect(viaJson(apply(b, memB, qsB[0], op, stB))).toEqual(viaJson(apply(a, memA, qs[0], op, stA)));
          }
          expect(b.irq.triggers - irqB).toBe(a.irq.triggers - irqA);
          expect(b.transport.saveState()).toEqual(a.transport.saveState());
          expect(Buffer.from(memB.read(0, memB.totalSize)).equals(Buffer.from(memA.read(0, memA.totalSize)))).toBe(true);
        },
      ),
      { numRuns: 1500 },
    );
  });

  it('transport: hostile state objects are refused with a typed error and change nothing', () => {
    const mem = GuestMemory.anonymous(1 << 18);
    const a = echoRig(mem);
    a.driver.bringUp(new BumpAllocator(mem), [8, 16]);
    const valid = a.transport.saveState();
    fc.assert(fc.property(fc.integer(), fc.boolean(), (seed, deep) => {
      let x = seed >>> 0;
      const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32);
      const bad = deep
        ? { ...viaJson(valid), queues: [mutate(valid.queues[0], rnd), valid.queues[1]] }
        : mutate(valid, rnd);
      const fresh = echoRig(mem);
      const before = JSON.stringify(fresh.transport.saveState());
      try {
        fresh.transport.restoreState(bad as never);
      } catch (e) {
        if (!(e instanceof KindlingError)) throw e;
        expect(JSON.stringify(fresh.transport.saveState())).toBe(before);
      }
    }), { numRuns: 3000 });
  });

  // ----------------------------------------------------------------------------------------------
  // virtio-blk: requests in flight at the snapshot are re-submitted by the restored device

  it('block: requests in flight when the state is saved complete exactly once after restore', async () => {
    for (let trial = 0; trial < 200; trial++) {
      const mem = GuestMemory.anonymous(1 << 20);
      const disk = new Uint8Array(64 * 512).map((_, i) => (i * 31 + trial) & 0xff);
      // A backend that never completes: the requests stay in flight at the snapshot.
      const stuck = new MemoryBackend(disk.slice());
      stuck.read = () => new Promise<number>(() => undefined);
      stuck.write = () => new Promise<number>(() => undefined);
      const devA = new BlockDevice({ id: 'd0', backend: stuck, readOnly: false, cacheType: 'unsafe' });
      const tA = new MmioTransport(devA, { mem, irq: new MockIrq(), defer: (fn) => fn() });
      const [q] = new MockMmioDriver(tA, mem).bringUp(new BumpAllocator(mem), [32]);
      const alloc = new BumpAllocator(mem, 0x40000);
      const n = 1 + (trial % 6);
      const expected: { data: number; status: number; sector: number; write: boolean }[] = [];
      for (let i = 0; i < n; i++) {
        const write = (trial + i) % 3 === 0;
        const sector = (trial * 7 + i * 5) % 63;
        const hdr = new Uint8Array(16);
        new DataView(hdr.buffer).setUint32(0, write ? 1 : 0, true);
        new DataView(hdr.buffer).setBigUint64(8, BigInt(sector), true);
        const h = alloc.allocData(hdr);
        const data = alloc.alloc(512);
        if (write) mem.write(data, new Uint8Array(512).fill(0xa0 + i));
        const status = alloc.alloc(1);
        mem.writeU8(status, 0xff);
        q.addChain([{ addr: h, len: 16 }, { addr: data, len: 512, write: !write }, { addr: status, len: 1, write: true }]);
        expected.push({ data, status, sector, write });
      }
      tA.notify(0);
      expect(devA.metrics().inFlight).toBe(n);
      const saved = viaJson(tA.saveState());
      expect((saved.device as { inFlight: number[] }).inFlight).toHaveLength(n);
      // Restore onto a working backend with the same contents, over the same guest memory.
      const good = new MemoryBackend(disk.slice());
      const devB = new BlockDevice({ id: 'd0', backend: good, readOnly: false, cacheType: 'unsafe' });
      const tB = new MmioTransport(devB, { mem, irq: new MockIrq(), defer: (fn) => fn() });
      tB.restoreState(saved);
      await devB.drain();
      await new Promise((r) => setImmediate(r));
      const used = q.readUsed();
      expect(used).toHaveLength(n);
      expect(new Set(used.map((u) => u.id)).size).toBe(n);
      for (const e of expected) {
        expect(mem.readU8(e.status)).toBe(0);
        if (e.write) expect(good.bytes[e.sector * 512]).toBe(mem.readU8(e.data));
        else expect(Buffer.from(mem.read(e.data, 512)).equals(Buffer.from(disk.subarray(e.sector * 512, e.sector * 512 + 512)))).toBe(true);
      }
      expect(devB.metrics()).toMatchObject({ resubmitted: n, completed: n, inFlight: 0 });
    }
  });
});
