/**
 * The exit path's batching and its off-thread halves, driven by scripted vCPU threads (the
 * addon's `_testing` hooks stand in for KVM_RUN): transmit batches keep the order and the seq
 * numbering of every other record; a batch alone reaches JavaScript after the transmit delay;
 * stopVcpusAsync/closeAsync deliver everything queued before they release; guest memory buffers
 * cannot be moved out of reach of the VM that unmaps them, and V8 does not count small ones as
 * memory a garbage collection could free.
 */
import * as fc from 'fast-check';

import { loadNative } from '../../lib/native/binding';
import { ExitKind, VcpuVerdict } from '../../lib/native/types';
import type { ExitHandlers, NativeAddon } from '../../lib/native/types';
import { ADDON_PATH, runNode, testHooks, type Step } from './helpers/native-hooks';

const addon: NativeAddon = loadNative();
const hooks = testHooks(addon);

const THR = 0x3f8;
const IER = 0x3f9;
const LSR = 0x3fd;

/** One guest access as JavaScript saw it, batches expanded byte by byte. */
interface Seen {
  kind: ExitKind;
  vcpu: number;
  addr: number;
  size: number;
  value: number;
  seq: number;
  /** Index of the handler call it came in (accesses of one batch share it). */
  call: number;
}

function recorder(opts: { batches?: boolean; readValue?: (addr: number) => number } = {}) {
  const seen: Seen[] = [];
  const events: number[] = [];
  const stopped: number[] = [];
  let calls = 0;
  const handlers: ExitHandlers = {
    io(kind, vcpu, addr, size, value, seq) {
      seen.push({ kind, vcpu, addr, size, value, seq, call: calls++ });
      if (kind === ExitKind.PioRead || kind === ExitKind.MmioRead) return opts.readValue?.(addr) ?? 0;
      return undefined;
    },
    event(vcpu) {
      events.push(vcpu);
      calls++;
      return VcpuVerdict.Resume;
    },
    vcpuStopped(vcpu) {
      stopped.push(vcpu);
      calls++;
    },
  };
  if (opts.batches !== false) {
    handlers.pioWriteBatch = (vcpu, port, bytes, firstSeq) => {
      const call = calls++;
      bytes.forEach((b, i) => seen.push({ kind: ExitKind.PioWrite, vcpu, addr: port, size: 1, value: b, seq: firstSeq + i, call }));
    };
  }
  return { seen, events, stopped, handlers, calls: () => calls };
}

function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = () => {
      if (cond()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 2);
    };
    tick();
  });
}

const w = (addr: number, value: number, size = 1): Step => ['w', ExitKind.PioWrite, addr, size, value];
const r = (addr: number, size = 1): Step => ['r', ExitKind.PioRead, addr, size];

describe('transmit batches', () => {
  it('deliver consecutive THR bytes as one call, in order with every other record and dense seq', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 0);
    const rec = recorder({ readValue: () => 0x60 });
    vm.setExitHandlers(rec.handlers);
    const script: Step[] = [w(THR, 0x61), w(THR, 0x62), r(LSR), w(THR, 0x63), w(IER, 1), w(THR, 0x64), w(THR, 0x65), w(THR, 0x66), w(THR, 0x3412, 2)];
    hooks.startScript(vm, 0, script);
    await until(() => rec.stopped.length === 1, 'the script to end');
    expect(rec.seen.map((s) => [s.kind, s.addr, s.size, s.value, s.seq])).toEqual([
      [ExitKind.PioWrite, THR, 1, 0x61, 1],
      [ExitKind.PioWrite, THR, 1, 0x62, 2],
      [ExitKind.PioRead, LSR, 1, 0, 3],
      [ExitKind.PioWrite, THR, 1, 0x63, 4],
      [ExitKind.PioWrite, IER, 1, 1, 5],
      [ExitKind.PioWrite, THR, 1, 0x64, 6],
      [ExitKind.PioWrite, THR, 1, 0x65, 7],
      [ExitKind.PioWrite, THR, 1, 0x66, 8],
      // Only one-byte writes are batched: a wider access to the port is an ordinary record.
      [ExitKind.PioWrite, THR, 2, 0x3412, 9],
    ]);
    // 'ab' came in one call, 'def' in one call.
    expect(rec.seen[0].call).toBe(rec.seen[1].call);
    expect(rec.seen[5].call).toBe(rec.seen[7].call);
    const stats = vm.exitStats();
    expect(stats.txBatches).toBe(3);
    expect(stats.txBytes).toBe(6);
    vm.stopVcpus();
    vm.close();
  });

  it('fall back to one io() call per byte without a pioWriteBatch handler', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 0);
    const rec = recorder({ batches: false });
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 1), w(THR, 2), w(IER, 0), w(THR, 3)]);
    await until(() => rec.stopped.length === 1, 'the script to end');
    expect(rec.seen.map((s) => [s.addr, s.value, s.seq])).toEqual([[THR, 1, 1], [THR, 2, 2], [IER, 0, 3], [THR, 3, 4]]);
    expect(new Set(rec.seen.map((s) => s.call)).size).toBe(4);
    vm.stopVcpus();
    vm.close();
  });

  it('hold at most `capacity` bytes each', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4, 0);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, Array.from({ length: 10 }, (_, i) => w(THR, i)));
    await until(() => rec.stopped.length === 1, 'the script to end');
    expect(rec.seen.map((s) => s.value)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const perCall = new Map<number, number>();
    for (const s of rec.seen) perCall.set(s.call, (perCall.get(s.call) ?? 0) + 1);
    expect(Math.max(...perCall.values())).toBeLessThanOrEqual(4);
    vm.stopVcpus();
    vm.close();
  });

  it('reach JavaScript after the delay when nothing else is queued (the vCPU keeps running)', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 5);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 0x68), w(THR, 0x69), ['spin']]);
    await until(() => rec.seen.length === 2, 'the deferred batch');
    expect(rec.seen.map((s) => s.value)).toEqual([0x68, 0x69]);
    expect(rec.stopped).toEqual([]);
    vm.stopVcpus();
    vm.close();
    expect(rec.stopped).toEqual([0]);
  });

  it('do not wait for the delay while deferral is off (a driver waiting for the THRE interrupt)', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 1000);
    vm.setTransmitDeferral(false);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 1), w(THR, 2), ['spin']]);
    await until(() => rec.seen.length === 2, 'the batch');
    expect(vm.exitStats().deferredWakes).toBe(0);
    // Back on: the next lone batch waits for the timer again.
    vm.setTransmitDeferral(true);
    vm.stopVcpus();
    vm.close();

    const vm2 = hooks.createVm();
    vm2.defineTransmitBuffer(THR, 4096, 0);
    const rec2 = recorder();
    vm2.setExitHandlers(rec2.handlers);
    hooks.startScript(vm2, 0, [w(THR, 3), ['spin']]);
    await until(() => rec2.seen.length === 1, 'the deferred batch');
    expect(vm2.exitStats().deferredWakes).toBe(1);
    vm2.stopVcpus();
    vm2.close();
  });

  it('turning deferral off releases a batch that waits for the timer', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 1000);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 9), ['spin']]);
    await until(() => vm.exitStats().deferredWakes === 1, 'the deferred wake');
    // Give the deferred wake time to arm the timer, then turn deferral off: the batch comes at
    // the next turn of the loop rather than after the second-long delay.
    await new Promise((r) => setImmediate(r));
    vm.setTransmitDeferral(false);
    await until(() => rec.seen.length === 1, 'the released batch');
    expect(rec.seen[0].value).toBe(9);
    vm.stopVcpus();
    vm.close();
  });

  it('do not mix the bytes of two vCPUs in one batch', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 0);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, Array.from({ length: 200 }, () => w(THR, 0x30)));
    hooks.startScript(vm, 1, Array.from({ length: 200 }, () => w(THR, 0x31)));
    await until(() => rec.stopped.length === 2, 'both scripts to end');
    const byCall = new Map<number, Set<number>>();
    for (const s of rec.seen) {
      expect(s.value).toBe(0x30 + s.vcpu);
      byCall.set(s.call, (byCall.get(s.call) ?? new Set()).add(s.vcpu));
    }
    for (const vcpus of byCall.values()) expect(vcpus.size).toBe(1);
    expect(rec.seen.map((s) => s.seq)).toEqual(Array.from({ length: 400 }, (_, i) => i + 1));
    vm.stopVcpus();
    vm.close();
  });

  it('are delivered by close() when the timer has not fired yet', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 1000);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 0x7a), ['spin']]);
    await until(() => vm.exitStats().txBytes === 1, 'the byte to be queued');
    vm.close();
    expect(rec.seen.map((s) => s.value)).toEqual([0x7a]);
    expect(rec.stopped).toEqual([0]);
  });

  it('keep the read cache valid across transparent THR writes, and invalidate it per byte otherwise', async () => {
    for (const transparent of [true, false]) {
      const vm = hooks.createVm();
      vm.defineTransmitBuffer(THR, 4096, 0);
      vm.definePioReadCache(THR, 8, transparent ? 0x01 : 0x00);
      const rec = recorder({ readValue: () => 0x20 });
      vm.setExitHandlers(rec.handlers);
      expect(vm.setPioReadCache(LSR, 0x60, 0)).toBe(true);
      hooks.startScript(vm, 0, [w(THR, 1), w(THR, 2), r(LSR)]);
      await until(() => rec.stopped.length === 1, 'the script to end');
      vm.stopVcpus();
      const [lsr] = hooks.scriptResults(vm, 0);
      // Transparent: the cached 0x60 answered without JavaScript; otherwise the read reached it.
      expect(lsr).toBe(transparent ? 0x60 : 0x20);
      expect(rec.seen.filter((s) => s.kind === ExitKind.PioRead).length).toBe(transparent ? 0 : 1);
      // A value published for a seq before the second byte is refused: that byte invalidated it.
      if (!transparent) expect(vm.setPioReadCache(LSR, 0x60, 1)).toBe(false);
      vm.close();
    }
  });

  it('refuse bad arguments and a definition after a vCPU started', () => {
    const vm = hooks.createVm();
    const rangeError = expect.objectContaining({ name: 'RangeError' });
    expect(() => vm.defineTransmitBuffer(0x10000, 16, 1)).toThrow(rangeError);
    expect(() => vm.defineTransmitBuffer(THR, 0, 1)).toThrow(rangeError);
    expect(() => vm.defineTransmitBuffer(THR, 16, 1001)).toThrow(rangeError);
    vm.setExitHandlers(recorder().handlers);
    hooks.startScript(vm, 0, [['spin']]);
    vm.close();
    expect(() => vm.defineTransmitBuffer(THR, 16, 1)).toThrow();
  });

  it('property: any mix of accesses from one vCPU arrives as the guest made it, seq 1..n', async () => {
    const access = fc.oneof(
      fc.integer({ min: 0, max: 255 }).map((v) => w(THR, v)),
      fc.integer({ min: 0, max: 255 }).map((v) => w(IER, v)),
      fc.constant(r(LSR)),
      fc.constant(['w', ExitKind.MmioWrite, 0xd0000070, 4, 1] as Step),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(access, { minLength: 1, maxLength: 120 }), fc.integer({ min: 1, max: 8 }), async (script, capacity) => {
        const vm = hooks.createVm();
        vm.defineTransmitBuffer(THR, capacity, 0);
        const rec = recorder({ readValue: () => 0x60 });
        vm.setExitHandlers(rec.handlers);
        hooks.startScript(vm, 0, script);
        await until(() => rec.stopped.length === 1, 'the script to end');
        vm.stopVcpus();
        vm.close();
        const expected = script.map((s, i) => [s[1], s[2], s[3], s[0] === 'w' ? s[4] : 0, i + 1]);
        expect(rec.seen.map((s) => [s.kind, s.addr, s.size, s.value, s.seq])).toEqual(expected);
      }),
      { numRuns: 60 },
    );
  });
});

describe('asynchronous stop and close', () => {
  it('stopVcpusAsync ends the threads off the JavaScript thread; closeAsync delivers what is left, then releases', async () => {
    const vm = hooks.createVm();
    vm.defineTransmitBuffer(THR, 4096, 1000);
    const mem = vm.allocateMemory(1 << 20);
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [w(THR, 0x41), w(THR, 0x42), ['spin']]);
    hooks.startScript(vm, 1, [['spin']]);
    await until(() => vm.exitStats().txBytes === 2, 'the bytes to be queued');
    await vm.stopVcpusAsync();
    // The threads are gone; what they queued is still to be handled.
    expect(hooks.scriptResults(vm, 0)).toEqual([]);
    await vm.closeAsync();
    expect(rec.seen.map((s) => s.value)).toEqual([0x41, 0x42]);
    expect(rec.stopped.sort()).toEqual([0, 1]);
    expect(mem.byteLength).toBe(0);
    await vm.closeAsync(); // idempotent
    vm.close();
  });

  it('closeAsync with running vCPUs stops them first and loses nothing they queued', async () => {
    const vm = hooks.createVm();
    const rec = recorder();
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [...Array.from({ length: 50 }, (_, i) => w(IER, i)), ['spin']]);
    await until(() => vm.exitStats().records >= 50, 'the writes to be queued');
    await vm.closeAsync();
    expect(rec.seen.map((s) => s.value)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(rec.stopped).toEqual([0]);
  });

  it('closeAsync called again while it runs answers with the same promise; close() meanwhile is safe', async () => {
    const vm = hooks.createVm();
    const mem = vm.allocateMemory(1 << 20);
    vm.setExitHandlers(recorder().handlers);
    hooks.startScript(vm, 0, [['spin']]);
    const a = vm.closeAsync();
    const b = vm.closeAsync();
    expect(b).toBe(a);
    vm.close(); // joins and closes on this thread while the worker may be doing the same
    await Promise.all([a, b]);
    expect(mem.byteLength).toBe(0);
    await expect(vm.closeAsync()).resolves.toBeUndefined();
  });

  it('a handler error during closeAsync reaches the caller (or uncaughtException), after releasing everything', () => {
    // Whether the last batch is handled by the loop (after the 'stopped' record wakes it) or by
    // closeAsync's own drain is a race; either way the error must surface once and the VM be gone.
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const seen = [];
      process.on('uncaughtException', (e) => seen.push('uncaught ' + e.message));
      const vm = a._testing.createVm();
      const mem = vm.allocateMemory(4096);
      vm.defineTransmitBuffer(${THR}, 4096, 1000);
      vm.setExitHandlers({ io() {}, event() { return 1; }, vcpuStopped() {}, pioWriteBatch() { throw new Error('device bug'); } });
      a._testing.startScript(vm, 0, [['w', 0, ${THR}, 1, 65], ['spin']]);
      const wait = () => vm.exitStats().txBytes === 1 ? go() : setTimeout(wait, 1);
      const go = () => vm.closeAsync().then(() => seen.push('resolved'), (e) => seen.push('rejected ' + e.message)).then(() => {
        setTimeout(() => console.log(JSON.stringify({ seen, released: mem.byteLength === 0 })), 20);
      });
      wait();
    `);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim()) as { seen: string[]; released: boolean };
    expect(out.released).toBe(true);
    expect(out.seen.filter((x) => x.endsWith('device bug'))).toHaveLength(1);
    expect(out.seen).toEqual(expect.arrayContaining([expect.stringMatching(/^(rejected|uncaught) device bug$/)]));
  });
});

describe('guest memory buffers', () => {
  it('are copied, not moved, by a transfer (the VM that unmaps them keeps them)', () => {
    const vm = hooks.createVm();
    const mem = vm.allocateMemory(1 << 16);
    new Uint8Array(mem)[5] = 42;
    const clone = structuredClone(mem, { transfer: [mem] });
    expect(mem.byteLength).toBe(1 << 16);
    expect(new Uint8Array(clone)[5]).toBe(42);
    new Uint8Array(clone)[5] = 1;
    expect(new Uint8Array(mem)[5]).toBe(42);
    vm.close();
    expect(mem.byteLength).toBe(0);
    expect(new Uint8Array(clone)[5]).toBe(1);
  });

  it('of at most 32 MiB are not counted as external memory while they live, and the count comes back level', () => {
    // V8 starts a full collection whenever its external-memory count rises 64 MiB above its
    // lowest value since the last one; guest RAM is freed by close(), never by a collection.
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const ext = () => a._testing.externalMemory();
      const MiB = 1 << 20;
      const out = {};
      for (const size of [32 * MiB, 128 * MiB]) {
        const before = ext();
        const vm = a._testing.createVm();
        const mem = vm.allocateMemory(size);
        const during = ext();
        vm.close();
        out[size / MiB] = { grew: (during - before) / MiB, after: (ext() - before) / MiB, detached: mem.byteLength === 0 };
      }
      console.log(JSON.stringify(out));
    `);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim()) as Record<string, { grew: number; after: number; detached: boolean }>;
    // Small: not counted (within a MiB of other allocations); large: counted, as V8 would anyway.
    expect(Math.abs(out['32'].grew)).toBeLessThan(1);
    expect(out['128'].grew).toBeGreaterThanOrEqual(127);
    for (const k of ['32', '128']) {
      expect(Math.abs(out[k].after)).toBeLessThan(1);
      expect(out[k].detached).toBe(true);
    }
  });

  it('of at most 32 MiB, 40 of them at once, start no garbage collection', () => {
    const r = runNode(`
      const { PerformanceObserver, constants } = require('perf_hooks');
      const a = require(${JSON.stringify(ADDON_PATH)});
      let major = 0;
      const obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++;
      });
      obs.observe({ entryTypes: ['gc'] });
      (async () => {
        // From a fresh collection: V8 measures the rise of its count from its lowest value since.
        global.gc();
        await new Promise((r) => setTimeout(r, 20));
        major = 0;
        const vms = [];
        for (let i = 0; i < 40; i++) {
          const vm = a._testing.createVm();
          vm.allocateMemory(32 << 20);
          vms.push(vm);
          await new Promise((r) => setImmediate(r));
        }
        await new Promise((r) => setTimeout(r, 20));
        const during = major;
        for (const vm of vms) vm.close();
        obs.disconnect();
        console.log(JSON.stringify({ major: during }));
      })();
    `);
    expect(r.stderr).toBe('');
    // Counted, every other buffer would start one (about 10 for 40 measured).
    expect(JSON.parse(r.stdout.trim()).major).toBeLessThanOrEqual(1);
  });
});
