/**
 * The native addon where it can run without KVM: loading, errno errors, eventfds and their
 * event-loop watches, guest memory buffers, and the exit queue driven by scripted vCPU threads
 * (the addon's `_testing` hooks stand in for KVM_RUN).
 */
import { NativeError, isKvmAvailable, loadNative } from '../../lib/native/binding';
import { ExitKind, MAX_MEMORY_BUFFER, VcpuVerdict } from '../../lib/native/types';
import type { ExitHandlers, NativeAddon, VcpuEventInfo } from '../../lib/native/types';
import { ADDON_PATH, runNode, testHooks, type Step } from './helpers/native-hooks';

const addon: NativeAddon = loadNative();
const hooks = testHooks(addon);

type IoRecord = { kind: ExitKind; vcpu: number; addr: number; size: number; value: number; seq: number };

/** Records everything a VM delivers; `onIo`/`onEvent` decide the answers. */
function recorder(opts: {
  onIo?: (r: IoRecord) => number | void;
  onEvent?: (vcpu: number, info: VcpuEventInfo) => VcpuVerdict;
}) {
  const io: IoRecord[] = [];
  const events: { vcpu: number; info: VcpuEventInfo }[] = [];
  const stopped: number[] = [];
  const waiters: (() => void)[] = [];
  const handlers: ExitHandlers = {
    io(kind, vcpu, addr, size, value, seq) {
      const r = { kind, vcpu, addr, size, value, seq };
      io.push(r);
      return opts.onIo?.(r);
    },
    event(vcpu, info) {
      events.push({ vcpu, info });
      return opts.onEvent ? opts.onEvent(vcpu, info) : VcpuVerdict.Resume;
    },
    vcpuStopped(vcpu) {
      stopped.push(vcpu);
      waiters.splice(0).forEach((w) => w());
    },
  };
  /** Resolves once `n` vCPUs have reported vcpuStopped. */
  function allStopped(n: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${stopped.length}/${n} vCPUs stopped`)), 5000);
      const check = () => {
        if (stopped.length >= n) {
          clearTimeout(timer);
          resolve();
        } else waiters.push(check);
      };
      check();
    });
  }
  return { io, events, stopped, handlers, allStopped };
}

function until(cond: () => boolean, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 5000;
    const tick = () => {
      if (cond()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 2);
    };
    tick();
  });
}

describe('loading', () => {
  it('loads once and exposes the NativeAddon functions', () => {
    expect(loadNative()).toBe(addon);
    for (const name of ['openKvm', 'eventfd', 'eventfdWrite', 'eventfdRead', 'watchEventfd', 'closeFd', 'residentPages']) {
      expect(typeof (addon as unknown as Record<string, unknown>)[name]).toBe('function');
    }
  });

  it('reports resident pages', () => {
    expect(addon.residentPages!()).toBeGreaterThan(0);
  });
});

describe('errno errors', () => {
  it('names open and ENOENT for a missing device', () => {
    let caught: unknown;
    try {
      addon.openKvm('/nonexistent');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(NativeError);
    const err = caught as NativeError;
    expect(err.code).toBe('ENOENT');
    expect(err.ioctl).toBe('open');
    expect(err.errno).toBe(2);
    expect(err.message).toMatch(/^open failed: ENOENT \(No such file or directory\)/);
  });

  it('names the ioctl and ENOTTY when the device is not KVM', () => {
    const kvm = addon.openKvm('/dev/null');
    try {
      expect(() => kvm.apiVersion()).toThrow(
        expect.objectContaining({ code: 'ENOTTY', ioctl: 'KVM_GET_API_VERSION', errno: 25 }),
      );
      expect(() => kvm.checkExtension(1)).toThrow(expect.objectContaining({ code: 'ENOTTY', ioctl: 'KVM_CHECK_EXTENSION' }));
      expect(() => kvm.createVm()).toThrow(expect.objectContaining({ code: 'ENOTTY', ioctl: 'KVM_GET_VCPU_MMAP_SIZE' }));
      expect(() => kvm.supportedCpuid()).toThrow(NativeError);
    } finally {
      kvm.close();
    }
    kvm.close(); // idempotent
    expect(() => kvm.apiVersion()).toThrow(expect.objectContaining({ code: 'EBADF', ioctl: 'KVM_GET_API_VERSION' }));
  });

  it('rejects bad arguments with TypeError/RangeError, not NativeError', () => {
    // Errors built by the addon come from Node's own realm, not jest's sandbox: compare by name.
    expect(() => addon.eventfdWrite(-1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(() => addon.openKvm(42 as unknown as string)).toThrow(expect.objectContaining({ name: 'TypeError' }));
  });

  it('isKvmAvailable says why KVM cannot be used', () => {
    const here = isKvmAvailable('/nonexistent');
    expect(here.ok).toBe(false);
    if (!here.ok) expect(here.reason).toMatch(/ENOENT/);
    const notKvm = isKvmAvailable('/dev/null');
    expect(notKvm.ok).toBe(false);
    if (!notKvm.ok) expect(notKvm.reason).toMatch(/ENOTTY/);
    // This machine has no usable /dev/kvm; elsewhere it may succeed.
    const dflt = isKvmAvailable();
    if (!dflt.ok) expect(dflt.reason.length).toBeGreaterThan(0);
  });
});

describe('eventfd', () => {
  it('round-trips the counter and reads 0 when empty', () => {
    const fd = addon.eventfd();
    try {
      expect(addon.eventfdRead(fd)).toBe(0);
      addon.eventfdWrite(fd, 5);
      addon.eventfdWrite(fd);
      expect(addon.eventfdRead(fd)).toBe(6);
      expect(addon.eventfdRead(fd)).toBe(0);
    } finally {
      addon.closeFd(fd);
    }
    expect(() => addon.closeFd(fd)).toThrow(expect.objectContaining({ code: 'EBADF', ioctl: 'close' }));
  });

  it('honours the initial value', () => {
    const fd = addon.eventfd(3);
    expect(addon.eventfdRead(fd)).toBe(3);
    addon.closeFd(fd);
  });

  it('watchEventfd delivers the count on the event loop and stops after close()', async () => {
    const fd = addon.eventfd();
    const counts: number[] = [];
    const watch = addon.watchEventfd(fd, (n) => counts.push(n));
    addon.eventfdWrite(fd, 2);
    addon.eventfdWrite(fd, 5);
    expect(counts).toEqual([]); // never synchronously
    await until(() => counts.length > 0, 'the watch callback');
    expect(counts).toEqual([7]);
    addon.eventfdWrite(fd, 1);
    await until(() => counts.length > 1, 'the second callback');
    expect(counts).toEqual([7, 1]);
    watch.close();
    watch.close(); // idempotent
    addon.eventfdWrite(fd, 4);
    await new Promise((r) => setTimeout(r, 30));
    expect(counts).toEqual([7, 1]);
    expect(addon.eventfdRead(fd)).toBe(4); // nobody consumed it
    addon.closeFd(fd);
  });

  it('an open watch keeps Node running and a closed one lets it exit', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const fd = a.eventfd();
      const w = a.watchEventfd(fd, (n) => { console.log('got', n); w.close(); a.closeFd(fd); });
      setTimeout(() => a.eventfdWrite(fd, 9), 50);
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('got 9');
    expect(r.status).toBe(0);
  });
});

describe('guest memory buffers', () => {
  it('aliases an anonymous mapping, and close() detaches it', () => {
    const vm = hooks.createVm();
    const before = addon.residentPages!();
    const size = 256 * 1024 * 1024;
    const mem = vm.allocateMemory(size);
    expect(mem.byteLength).toBe(size);
    // MAP_NORESERVE and no copy: nothing becomes resident until touched.
    expect(addon.residentPages!() - before).toBeLessThan(1024);
    const bytes = new Uint8Array(mem);
    expect(bytes[size - 1]).toBe(0);
    bytes[0] = 0xab;
    bytes[size - 1] = 0xcd;
    expect(new Uint8Array(mem)[0]).toBe(0xab);
    vm.close();
    expect(mem.byteLength).toBe(0);
    expect(bytes.length).toBe(0);
    vm.close(); // idempotent
    expect(() => vm.allocateMemory(4096)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('refuses sizes outside (0, 4 GiB]', () => {
    const vm = hooks.createVm();
    expect(() => vm.allocateMemory(0)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(() => vm.allocateMemory(-1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(() => vm.allocateMemory(MAX_MEMORY_BUFFER + 4096)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    vm.close();
  });

  it('gives a whole 4 GiB buffer, addressable to its last byte, without touching it', () => {
    const vm = hooks.createVm();
    const before = addon.residentPages!();
    const mem = vm.allocateMemory(MAX_MEMORY_BUFFER);
    expect(mem.byteLength).toBe(MAX_MEMORY_BUFFER);
    const bytes = new Uint8Array(mem);
    bytes[MAX_MEMORY_BUFFER - 1] = 0x5a;
    expect(new DataView(mem).getUint8(MAX_MEMORY_BUFFER - 1)).toBe(0x5a);
    expect(addon.residentPages!() - before).toBeLessThan(1024);
    vm.close();
    expect(mem.byteLength).toBe(0);
  });

  it('a buffer collected before close() does not break close()', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const vm = a._testing.createVm();
      for (let i = 0; i < 8; i++) new Uint8Array(vm.allocateMemory(1 << 20))[0] = 1;
      if (global.gc) global.gc();
      const keep = vm.allocateMemory(4096);
      vm.close();
      console.log(keep.byteLength);
    `.replace(/\n/g, ' '));
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('0');
    expect(r.status).toBe(0);
  });
});

describe('exit queue', () => {
  it('delivers records in order with dense seq, answers reads masked to size, waits for verdicts', async () => {
    const vm = hooks.createVm();
    let next = 0x1234;
    const rec = recorder({
      onIo: (r) => (r.kind === ExitKind.PioRead || r.kind === ExitKind.MmioRead ? next++ : undefined),
      onEvent: () => VcpuVerdict.Resume,
    });
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [
      ['w', ExitKind.PioWrite, 0x3f8, 1, 0x41],
      ['r', ExitKind.PioRead, 0x3fd, 1],
      ['w', ExitKind.MmioWrite, 0xd0000000, 4, 0xdeadbeef],
      ['r', ExitKind.MmioRead, 0xd0000010, 2],
      ['e', 5],
      ['r', ExitKind.MmioRead, 0xd0000014, 4],
    ]);
    await rec.allStopped(1);
    vm.stopVcpus();
    expect(rec.io).toEqual([
      { kind: ExitKind.PioWrite, vcpu: 0, addr: 0x3f8, size: 1, value: 0x41, seq: 1 },
      { kind: ExitKind.PioRead, vcpu: 0, addr: 0x3fd, size: 1, value: 0, seq: 2 },
      { kind: ExitKind.MmioWrite, vcpu: 0, addr: 0xd0000000, size: 4, value: 0xdeadbeef, seq: 3 },
      { kind: ExitKind.MmioRead, vcpu: 0, addr: 0xd0000010, size: 2, value: 0, seq: 4 },
      { kind: ExitKind.MmioRead, vcpu: 0, addr: 0xd0000014, size: 4, value: 0, seq: 5 },
    ]);
    expect(rec.events).toEqual([{ vcpu: 0, info: { reason: 5 } }]);
    expect(hooks.scriptResults(vm, 0)).toEqual([0x34, 0x1235, VcpuVerdict.Resume, 0x1236]);
    expect(rec.stopped).toEqual([0]);
    vm.close();
  });

  it('a Stop verdict (or a handler that returns nothing) ends the vCPU', async () => {
    const vm = hooks.createVm();
    const rec = recorder({ onEvent: () => undefined as unknown as VcpuVerdict });
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 3, [['e', 8], ['w', ExitKind.PioWrite, 0x80, 1, 1]]);
    await rec.allStopped(1);
    vm.stopVcpus();
    expect(rec.io).toEqual([]);
    expect(hooks.scriptResults(vm, 3)).toEqual([VcpuVerdict.Stop]);
    expect(rec.stopped).toEqual([3]);
    vm.close();
  });

  it('keeps one order across vCPUs', async () => {
    const vm = hooks.createVm();
    const rec = recorder({});
    vm.setExitHandlers(rec.handlers);
    const steps = (port: number): Step[] =>
      Array.from({ length: 200 }, (_, i) => ['w', ExitKind.PioWrite, port, 1, i & 0xff] as Step);
    hooks.startScript(vm, 0, steps(0x10));
    hooks.startScript(vm, 1, steps(0x20));
    await rec.allStopped(2);
    vm.stopVcpus();
    expect(rec.io.map((r) => r.seq)).toEqual(Array.from({ length: 400 }, (_, i) => i + 1));
    for (const port of [0x10, 0x20]) {
      expect(rec.io.filter((r) => r.addr === port).map((r) => r.value)).toEqual(
        Array.from({ length: 200 }, (_, i) => i & 0xff),
      );
    }
    vm.close();
  });

  it('flushExits() runs queued handlers synchronously', () => {
    const vm = hooks.createVm();
    const rec = recorder({});
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [['w', ExitKind.MmioWrite, 0x1000, 4, 1], ['w', ExitKind.MmioWrite, 0x1004, 4, 2]]);
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    const deadline = Date.now() + 5000;
    // The event loop cannot run here, so only flushExits can deliver.
    while (rec.stopped.length === 0 && Date.now() < deadline) {
      vm.flushExits();
      Atomics.wait(sleeper, 0, 0, 1);
    }
    expect(rec.io.map((r) => r.value)).toEqual([1, 2]);
    expect(rec.stopped).toEqual([0]);
    vm.close();
  });

  it('a guest writing without pause neither starves the event loop nor grows the queue without bound', async () => {
    const vm = hooks.createVm();
    const rec = recorder({});
    vm.setExitHandlers(rec.handlers);
    const N = 20000;
    // Every write is handled only once a setImmediate queued at the first one has run: if one drain
    // handled the whole burst, the immediate could not run in between.
    let immediateRan = false;
    let handledBeforeImmediate = -1;
    const io = rec.handlers.io;
    rec.handlers.io = (...args) => {
      if (rec.io.length === 0) setImmediate(() => { immediateRan = true; handledBeforeImmediate = rec.io.length; });
      return io(...args);
    };
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, Array.from({ length: N }, (_, i) => ['w', ExitKind.PioWrite, 0x80, 1, i & 0xff] as Step));
    await rec.allStopped(1);
    vm.stopVcpus();
    expect(rec.io.length).toBe(N);
    expect(rec.io.map((r) => r.seq)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(immediateRan).toBe(true);
    // The queue holds at most 4096 records, and a drain handles only what was queued when it began.
    expect(handledBeforeImmediate).toBeGreaterThan(0);
    expect(handledBeforeImmediate).toBeLessThanOrEqual(4096);
    vm.close();
  });

  it('PIO read cache: answers on the vCPU, invalidated by non-transparent writes, seq-checked', async () => {
    const vm = hooks.createVm();
    const LSR = 0x3fd;
    let acceptedStale: boolean | undefined;
    let acceptedFresh: boolean | undefined;
    const rec = recorder({
      onIo: (r) => (r.kind === ExitKind.PioRead ? 0x20 : undefined),
      onEvent: () => {
        // The invalidating write to 0x3f9 was record 2: a value computed before it is refused.
        acceptedStale = vm.setPioReadCache(LSR, 0x61, 1);
        acceptedFresh = vm.setPioReadCache(LSR, 0x62, 3);
        return VcpuVerdict.Resume;
      },
    });
    vm.setExitHandlers(rec.handlers);
    vm.definePioReadCache(0x3f8, 8, 0b1); // writes to 0x3f8 (THR) keep the cache
    expect(() => vm.definePioReadCache(0x3fc, 2, 0)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(() => vm.definePioReadCache(0x100, 33, 0)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(vm.setPioReadCache(0x60, 1, 0)).toBe(false); // not in any group
    expect(vm.setPioReadCache(LSR, 0x60, 0)).toBe(true);
    hooks.startScript(vm, 0, [
      ['r', ExitKind.PioRead, LSR, 1], // cached: 0x60, no record
      ['w', ExitKind.PioWrite, 0x3f8, 1, 0x41], // transparent, seq 1
      ['r', ExitKind.PioRead, LSR, 1], // still cached
      ['w', ExitKind.PioWrite, 0x3f9, 1, 0], // invalidates, seq 2
      ['r', ExitKind.PioRead, LSR, 1], // miss: handler answers 0x20, seq 3
      ['e', 5],
      ['r', ExitKind.PioRead, LSR, 1], // cached 0x62
      ['r', ExitKind.PioRead, LSR, 2], // 2-byte read of a cached port: masked to 2 bytes
    ]);
    await rec.allStopped(1);
    vm.stopVcpus();
    expect(rec.io.map((r) => [r.kind, r.addr, r.seq])).toEqual([
      [ExitKind.PioWrite, 0x3f8, 1],
      [ExitKind.PioWrite, 0x3f9, 2],
      [ExitKind.PioRead, LSR, 3],
    ]);
    expect(acceptedStale).toBe(false);
    expect(acceptedFresh).toBe(true);
    expect(hooks.scriptResults(vm, 0)).toEqual([0x60, 0x60, 0x20, VcpuVerdict.Resume, 0x62, 0x62]);
    expect(vm.setPioReadCache(LSR, -1, 0)).toBe(true); // clearing is always accepted
    vm.close();
  });

  it('a PIO sink drops writes and answers reads with all-ones on the vCPU thread', async () => {
    const vm = hooks.createVm();
    const rec = recorder({ onIo: () => 0x12 });
    vm.setExitHandlers(rec.handlers);
    vm.definePioSink(0x80, 1);
    expect(() => vm.definePioSink(0xffff, 2)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    hooks.startScript(vm, 0, [
      ['w', ExitKind.PioWrite, 0x80, 1, 0x55], // dropped: no record
      ['r', ExitKind.PioRead, 0x80, 1], // 0xff from the vCPU thread
      ['r', ExitKind.PioRead, 0x80, 2], // 0xffff
      ['w', ExitKind.PioWrite, 0x81, 1, 0x66], // not in the sink: a record
      ['r', ExitKind.PioRead, 0x81, 1], // the handler: 0x12
    ]);
    await rec.allStopped(1);
    vm.stopVcpus();
    expect(rec.io.map((r) => [r.kind, r.addr])).toEqual([[ExitKind.PioWrite, 0x81], [ExitKind.PioRead, 0x81]]);
    expect(hooks.scriptResults(vm, 0)).toEqual([0xff, 0xffff, 0x12]);
    vm.close();
  });

  it('stopVcpus() from inside a read handler cancels the wait (all-ones) and does not deadlock', async () => {
    const vm = hooks.createVm();
    const rec = recorder({
      onIo: (r) => {
        if (r.kind === ExitKind.PioRead) {
          vm.stopVcpus();
          vm.stopVcpus(); // idempotent
          return 0x12; // too late: the vCPU was already answered with all-ones
        }
      },
    });
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [['r', ExitKind.PioRead, 0x64, 1], ['w', ExitKind.PioWrite, 0x64, 1, 0xfe]]);
    hooks.startScript(vm, 1, [['spin'], ['w', ExitKind.PioWrite, 0x70, 1, 0]]);
    await rec.allStopped(2);
    expect(hooks.scriptResults(vm, 0)).toEqual([0xff]);
    expect(rec.io.map((r) => r.addr)).toEqual([0x64]);
    expect([...rec.stopped].sort()).toEqual([0, 1]);
    vm.close();
  });

  it('stopVcpus() cancels reads nobody has handled yet; their handlers never run', async () => {
    const vm = hooks.createVm();
    const rec = recorder({ onIo: () => 0 });
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [['r', ExitKind.MmioRead, 0x1000, 4]]);
    // Stop before the event loop can deliver the read.
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    Atomics.wait(sleeper, 0, 0, 20);
    vm.stopVcpus();
    await rec.allStopped(1);
    expect(rec.io).toEqual([]);
    expect(hooks.scriptResults(vm, 0)).toEqual([0xffffffff]);
    vm.close();
  });

  it('pauseVcpus() parks running vCPUs and resumeVcpus() lets them go on', async () => {
    const vm = hooks.createVm();
    const rec = recorder({});
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [['spin'], ['w', ExitKind.PioWrite, 0x80, 1, 7], ['spin']]);
    vm.pauseVcpus(); // returns once parked: the spin ended and the write is not yet issued
    await new Promise((r) => setTimeout(r, 20));
    expect(rec.io).toEqual([]);
    vm.resumeVcpus();
    await until(() => rec.io.length === 1, 'the write after resume');
    expect(rec.io[0]).toMatchObject({ addr: 0x80, value: 7 });
    vm.stopVcpus();
    await rec.allStopped(1);
    vm.close();
  });

  it('close() stops the vCPUs and delivers what they queued, vcpuStopped included', () => {
    const vm = hooks.createVm();
    const rec = recorder({});
    vm.setExitHandlers(rec.handlers);
    hooks.startScript(vm, 0, [['spin']]);
    vm.close();
    expect(rec.stopped).toEqual([0]);
    vm.close();
    expect(() => vm.setExitHandlers(rec.handlers)).toThrow();
  });

  it('a Node program whose VM stops exits by itself; a throwing handler reaches uncaughtException', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const vm = a._testing.createVm();
      process.on('uncaughtException', (e) => console.log('uncaught', e.message));
      vm.setExitHandlers({
        io(kind) { if (kind === 1) throw new Error('boom'); },
        event() { return 0; },
        vcpuStopped(id) { console.log('stopped', id); },
      });
      a._testing.startScript(vm, 0, [['r', 1, 0x60, 1], ['w', 0, 0x61, 1, 1], ['spin']]);
      setTimeout(() => { vm.stopVcpus(); console.log('results', a._testing.scriptResults(vm, 0).join()); }, 100);
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['uncaught boom', 'results 255', 'stopped 0']);
    expect(r.status).toBe(0);
  });

  it('process.exit() with a running vCPU joins it in the env cleanup hook', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      const vm = a._testing.createVm();
      vm.setExitHandlers({ io() {}, event() { return 0; }, vcpuStopped() {} });
      a._testing.startScript(vm, 0, [['spin']]);
      a._testing.startScript(vm, 1, [['r', 3, 0x1000, 4]]);
      setTimeout(() => { console.log('exiting'); process.exit(0); }, 50);
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('exiting');
    expect(r.status).toBe(0);
  });

  it('guest memory stays valid when the VM object is collected without close()', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      let mem;
      (() => { const vm = a._testing.createVm(); mem = new Uint8Array(vm.allocateMemory(1 << 20)); })();
      for (let i = 0; i < 5; i++) global.gc();
      setTimeout(() => { global.gc(); mem[12345] = 7; console.log(mem.length, mem[12345]); }, 20);
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('1048576 7');
    expect(r.status).toBe(0);
  });

  it('start() requirements and fake-VM ioctls fail cleanly', () => {
    const vm = hooks.createVm();
    expect(() => hooks.startScript(vm, 0, [])).toThrow(/setExitHandlers/);
    expect(() => vm.irqLine(4, true)).toThrow(expect.objectContaining({ code: 'EBADF', ioctl: 'KVM_IRQ_LINE' }));
    expect(() => vm.createVcpu(0)).toThrow(expect.objectContaining({ code: 'EBADF', ioctl: 'KVM_CREATE_VCPU' }));
    expect(() => vm.setExitHandlers({} as ExitHandlers)).toThrow(expect.objectContaining({ name: 'TypeError' }));
    vm.close();
  });
});

describe('binding', () => {
  it('reports ADDON_MISSING with the build command when the addon cannot be found', () => {
    const saved = process.env.KINDLING_ADDON;
    process.env.KINDLING_ADDON = '/nonexistent/kindling.node';
    try {
      jest.isolateModules(() => {
        const fresh = require('../../lib/native/binding') as typeof import('../../lib/native/binding');
        let caught: unknown;
        try {
          fresh.loadNative();
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(fresh.NativeError);
        expect((caught as NativeError).code).toBe('ADDON_MISSING');
        expect((caught as Error).message).toMatch(/npm run build:native/);
        const avail = fresh.isKvmAvailable();
        expect(avail.ok).toBe(false);
      });
    } finally {
      if (saved === undefined) delete process.env.KINDLING_ADDON;
      else process.env.KINDLING_ADDON = saved;
    }
  });

  it('without the binding the addon still throws Errors carrying code, ioctl and errno', () => {
    const r = runNode(`
      const a = require(${JSON.stringify(ADDON_PATH)});
      try { a.openKvm('/nonexistent'); } catch (e) {
        console.log(e instanceof Error, e.code, e.ioctl, e.errno, e.message);
      }
    `);
    expect(r.stdout.trim()).toBe('true ENOENT open 2 open failed: ENOENT (No such file or directory): /nonexistent');
  });
});
