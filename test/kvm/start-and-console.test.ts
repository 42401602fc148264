/**
 * Correctness of the fast paths (issue #12): console output through the native transmit batches
 * stays byte-exact and in order (steady output, output interleaved with input and LSR polling, a
 * reset right after a partial line); VMs set up off the JavaScript thread, many at once, behave
 * as one set up alone; stop() during concurrent starts releases everything; a failing
 * asynchronous set-up releases what it made.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { loadNative } from '../../lib/native/binding';
import type { NativeVm, VmSetup } from '../../lib/native/types';
import { describeKvm, guest, runVm } from './harness';

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
const threads = (): number => fs.readdirSync('/proc/self/task').length;

/** The lines spew.elf prints (see test/guests/spew.c). */
function spewText(lines: number): string {
  let out = '';
  for (let n = 0; n < lines; n++) {
    out += `KT: line ${n} ${(Math.imul(n, 2654435761) >>> 0).toString(16)} abcdefghijklmnopqrstuvwxyz0123456789\n`;
  }
  return out;
}

/** The native VM behind a MicroVM, for its exit counters (not a public API). */
function nativeVm(vm: MicroVM): NativeVm {
  return (vm as unknown as { handle: { vm: NativeVm } }).handle.vm;
}

describeKvm('console output through transmit batches', () => {
  it('arrives byte-exact and in order at steady output, in fewer handler calls than bytes', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('spew'), { cmdline: 'console=ttyS0 spew=400' });
    let stats: ReturnType<NativeVm['exitStats']> | undefined;
    vm.on('exit', () => undefined);
    const done = runVm(vm);
    // Counters are read before the VM is torn down (they die with it).
    vm.once('serial', () => {
      const poll = setInterval(() => {
        try {
          stats = nativeVm(vm).exitStats();
        } catch {
          clearInterval(poll);
        }
      }, 20);
      vm.once('exit', () => clearInterval(poll));
    });
    const run = await done;
    expect(run.info.reason).toBe('reset');
    expect(run.output).toBe(`${spewText(400)}KT: DONE\n`);
    expect(stats).toBeDefined();
    // Batching happened: many bytes per transmit record.
    expect(stats!.txBatches * 4).toBeLessThan(stats!.txBytes);
  });

  it('delivers every byte printed before a reset, even without a final newline', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('spew'), { cmdline: 'console=ttyS0 spew=7 partial=1' });
    let outputAtExit = '';
    let output = '';
    vm.on('serial', (c) => { output += c.toString('latin1'); });
    vm.on('exit', () => { outputAtExit = output; });
    const run = await runVm(vm);
    expect(run.info.reason).toBe('reset');
    expect(outputAtExit).toBe(`${spewText(7)}KT: partial`);
  });

  it('keeps output interleaved with input in order (echo guest, input written in odd pieces)', async () => {
    // Under 1 KiB in all: echo.elf's receive ring holds 1024 bytes, and its interrupt handler
    // drains the UART for as long as the host keeps it filled.
    const lines = Array.from({ length: 24 }, (_, i) => `line ${i}:${'x'.repeat((i * 7) % 40)}`);
    const input = `${lines.join('\n')}\nquit\n`;
    // Split the input at awkward places: mid-line, across lines.
    const pieces: string[] = [];
    for (let at = 0, k = 0; at < input.length; k++) {
      const len = 1 + ((k * 37) % 61);
      pieces.push(input.slice(at, at + len));
      at += len;
    }
    const vm = new MicroVM().memory(16).kernel(guest('echo'));
    const run = await runVm(vm, { input: pieces });
    expect(run.info.reason).toBe('reset');
    expect(run.lines.filter((l) => l.startsWith('echo='))).toEqual([...lines, 'quit'].map((l) => `echo=${l}`));
    expect(run.lines).not.toContain(expect.stringMatching(/^dropped=/));
  });
});

describeKvm('VMs set up off the JavaScript thread', () => {
  it('many started at once each run exactly as one started alone', async () => {
    const make = (i: number) => new MicroVM({ id: `conc-${i}` }).memory(32).kernel(guest('hello'), { cmdline: 'console=ttyS0 kt.same=1' });
    const alone = await runVm(make(-1));
    expect(alone.info.reason).toBe('reset');
    const runs = await Promise.all(Array.from({ length: 24 }, (_, i) => runVm(make(i))));
    for (const run of runs) {
      expect(run.info.reason).toBe('reset');
      expect(run.output).toBe(alone.output);
    }
  });

  it('stop() during concurrent starts releases every thread, fd and mapping', async () => {
    // Warm up (the addon, the kvm module's per-process state) before counting.
    const warm = new MicroVM().memory(32).kernel(guest('echo'));
    await warm.start();
    await warm.stop();
    const fds0 = openFds();
    const threads0 = threads();
    const vms = Array.from({ length: 24 }, (_, i) => new MicroVM({ id: `stop-${i}` }).memory(32).kernel(guest(i % 2 ? 'echo' : 'hello')));
    const results = await Promise.all(vms.map(async (vm, i) => {
      const started = vm.start().then(() => 'started', (e: Error) => `failed: ${e.message}`);
      // Stop at different points of the start: at once, after a turn of the loop, a little later.
      if (i % 3 === 1) await new Promise((r) => setImmediate(r));
      if (i % 3 === 2) await new Promise((r) => setTimeout(r, 1 + (i % 7)));
      const info = await vm.stop();
      return { started: await started, info, state: vm.state };
    }));
    for (const r of results) {
      expect(r.started).toBe('started');
      expect(['stopped', 'reset']).toContain(r.info.reason);
      expect(r.state).toBe('exited');
    }
    expect(openFds()).toBe(fds0);
    // vCPU threads are joined before stop() resolves; thread-pool threads may have been added once.
    expect(threads()).toBeLessThanOrEqual(threads0 + 4);
  });
});

describeKvm('NativeKvm.createVmAsync', () => {
  const addon = loadNative();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-setup-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const base = (over: Partial<VmSetup>): VmSetup => ({
    memory: [4 << 20],
    tssAddr: 0xfffbd000,
    identityMapAddr: 0xfffbc000,
    irqchip: true,
    pit2Flags: 1,
    slots: [{ slot: 0, guestAddr: 0, buffer: 0, offset: 0, size: 4 << 20 }],
    vcpus: [{ id: 0 }],
    ...over,
  });

  it('rejects with the failing call and releases what it made', async () => {
    const kvm = addon.openKvm();
    const fds0 = openFds();
    const threads0 = threads();
    // The addon reads by descriptor only (the caller opened the file): a descriptor that is not open.
    await expect(kvm.createVmAsync(base({ loads: [{ fd: 999_999, name: 'nothing', fileOffset: 0, length: 16, guestAddr: 0x100000 }] })))
      .rejects.toMatchObject({ name: 'NativeError', code: 'EBADF', ioctl: 'pread' });
    // Two slots over the same guest addresses: KVM refuses the second.
    await expect(kvm.createVmAsync(base({ slots: [{ slot: 0, guestAddr: 0, buffer: 0, offset: 0, size: 2 << 20 }, { slot: 1, guestAddr: 0, buffer: 0, offset: 2 << 20, size: 2 << 20 }] })))
      .rejects.toMatchObject({ name: 'NativeError', code: 'EEXIST', ioctl: 'KVM_SET_USER_MEMORY_REGION' });
    const short = path.join(tmp, 'short');
    fs.writeFileSync(short, Buffer.alloc(8));
    const shortFd = fs.openSync(short, 'r');
    await expect(kvm.createVmAsync(base({ loads: [{ fd: shortFd, name: short, fileOffset: 0, length: 16, guestAddr: 0x100000 }] })))
      .rejects.toMatchObject({ name: 'NativeError', ioctl: 'pread', message: expect.stringContaining(short) });
    fs.closeSync(shortFd);
    expect(openFds()).toBe(fds0);
    expect(threads()).toBeLessThanOrEqual(threads0 + 4);
    kvm.close();
  });

  it('refuses descriptions that do not fit guest memory before doing anything', () => {
    const kvm = addon.openKvm();
    expect(() => kvm.createVmAsync(base({ slots: [{ slot: 0, guestAddr: 0, buffer: 0, offset: 0, size: 8 << 20 }] }))).toThrow(/slot lies outside/);
    expect(() => kvm.createVmAsync(base({ slots: [{ slot: 0, guestAddr: 0, buffer: 1, offset: 0, size: 4096 }] }))).toThrow(/slot lies outside/);
    expect(() => kvm.createVmAsync(base({ memory: [(4 << 20) + 1] }))).toThrow(/multiple of 4096/);
    expect(() => kvm.createVmAsync(base({ memory: [2 ** 32 + 4096] }))).toThrow(/4 GiB/);
    expect(() => kvm.createVmAsync(base({ loads: [{ fd: 0, name: '/dev/null', fileOffset: 0, length: 16, guestAddr: 4 << 20 }] }))).toThrow(/inside one memory slot/);
    expect(() => kvm.createVmAsync(base({ loads: [{ fd: 0, name: '/dev/null', fileOffset: 0, length: 16, guestAddr: (4 << 20) - 8 }] }))).toThrow(/inside one memory slot/);
    expect(() => kvm.createVmAsync(base({ writes: [{ guestAddr: (4 << 20) - 2, bytes: new Uint8Array(4) }] }))).toThrow(/inside one memory slot/);
    expect(() => kvm.createVmAsync(base({ vcpus: [{ id: 0, cpuid: new Uint32Array(6) }] }))).toThrow(/7 words per entry/);
    kvm.close();
  });

  it('loads file ranges and writes bytes into guest memory (two buffers), and sets up vCPUs that are not running yet', async () => {
    const kvm = addon.openKvm();
    const file = path.join(tmp, 'image');
    fs.writeFileSync(file, Buffer.from(Array.from({ length: 64 }, (_, i) => i + 1)));
    const imageFd = fs.openSync(file, 'r');
    const made = await kvm.createVmAsync(base({
      memory: [4 << 20, 1 << 20],
      slots: [{ slot: 0, guestAddr: 0, buffer: 0, offset: 0, size: 4 << 20 }, { slot: 1, guestAddr: 1 << 30, buffer: 1, offset: 0, size: 1 << 20 }],
      loads: [{ fd: imageFd, name: file, fileOffset: 8, length: 16, guestAddr: 0x100000, zeroFill: 8 }, { fd: imageFd, name: file, fileOffset: 0, length: 4, guestAddr: (1 << 30) + 16 }],
      writes: [{ guestAddr: 0x7000, bytes: Uint8Array.from([0xaa, 0xbb]) }, { guestAddr: (1 << 30) + 32, bytes: Uint8Array.from([7]) }],
      vcpus: [{ id: 0, regs: { rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0x7000n, rdi: 0n, rsp: 0n, rbp: 0n, r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0x100000n, rflags: 2n }, sregs: { cr3: 0x9000n }, fpu: { fcw: 0x37f, mxcsr: 0x1f80 } }, { id: 1 }],
    }));
    fs.closeSync(imageFd);
    expect(made.memory.map((m) => m.byteLength)).toEqual([4 << 20, 1 << 20]);
    const mem = new Uint8Array(made.memory[0]);
    expect([...mem.subarray(0x100000, 0x100000 + 24)]).toEqual([...Array.from({ length: 16 }, (_, i) => i + 9), 0, 0, 0, 0, 0, 0, 0, 0]);
    expect([...new Uint8Array(made.memory[1]).subarray(16, 20)]).toEqual([1, 2, 3, 4]);
    expect([...mem.subarray(0x7000, 0x7002)]).toEqual([0xaa, 0xbb]);
    expect(new Uint8Array(made.memory[1])[32]).toBe(7);
    // The slots are known to the VM as if set with setUserMemoryRegion.
    made.vm.setDirtyLogging(1, true);
    expect(made.vcpus.map((v) => v.id)).toEqual([0, 1]);
    // Register reads work: the threads wait at their gate, outside KVM_RUN.
    expect(made.vcpus[0].getRegs().rip).toBe(0x100000n);
    const sregs = made.vcpus[0].getSregs();
    expect(sregs.cr3).toBe(0x9000n);
    // Fields not given keep KVM's reset values.
    expect(sregs.cs.selector).toBe(0xf000);
    await made.vm.closeAsync();
    expect(made.memory.map((m) => m.byteLength)).toEqual([0, 0]);
    kvm.close();
  });
});
