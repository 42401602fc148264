/**
 * Freestanding guests booted through the real path: ELF and bzImage loading, zero page, E820, MP table,
 * UART out and in (receive interrupts), i8042 reset, triple fault, INIT/SIPI of a second vCPU.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm, guest, runVm } from './harness';
import { e820Map } from '../../lib/boot';

describeKvm('freestanding guests on KVM', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-kvm-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('hands the guest a correct zero page, E820 map, command line and initrd, and ends on i8042 reset', async () => {
    const initrd = path.join(tmp, 'initrd.bin');
    const data = Buffer.alloc(10_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + 5) & 0xff;
    fs.writeFileSync(initrd, data);
    const sum = data.reduce((a, b) => (a + b) >>> 0, 0);
    const vm = new MicroVM().memory(64).kernel(guest('hello'), { cmdline: 'console=ttyS0 kt.marker=42', initrd });
    const run = await runVm(vm);
    expect(run.output).toContain('Hello from a Kindling microVM');
    expect(run.info.reason).toBe('reset');
    expect(run.kv.get('boot_flag')).toBe('aa55');
    expect(run.kv.get('loader')).toBe('ff');
    expect(run.kv.get('cmdline')).toContain('kt.marker=42');
    expect(run.kv.get('cmdline')).toBe(vm.cmdline);
    const e820 = e820Map(64 * 1024 * 1024);
    expect(Number(run.kv.get('e820_entries'))).toBe(e820.length);
    const ram = e820.filter((e) => e.type === 1).reduce((a, e) => a + e.size, 0);
    expect(Number(run.kv.get('e820_ram_bytes'))).toBe(ram);
    const [, size] = (run.kv.get('initrd') ?? '').split(' ');
    expect(Number(size)).toBe(data.length);
    expect(parseInt(run.kv.get('initrd_sum') ?? '', 16)).toBe(sum);
    expect(run.kv.get('cpus')).toBe('1');
    expect(run.lines).toContain('DONE');
  });

  it('describes guest memory above 4 GiB in E820, around the MMIO hole', async () => {
    const size = 5 * 1024 * 1024 * 1024;
    const vm = new MicroVM().memory(size / (1024 * 1024)).kernel(guest('hello'));
    const run = await runVm(vm);
    const expected = e820Map(size).map((e, i) => `e820 ${i} ${e.addr.toString(16)} ${e.size.toString(16)} ${e.type}`);
    expect(expected.some((l) => / 100000000 /.test(l))).toBe(true);
    expect(run.lines.filter((l) => l.startsWith('e820 '))).toEqual(expected);
    expect(run.info.reason).toBe('reset');
  });

  it('runs a 64 GiB guest: RAM above 4 GiB in 4 GiB pieces (one buffer and KVM slot each), E820 as one range', async () => {
    const size = 64 * 1024 * 1024 * 1024;
    const vm = new MicroVM().memory(size / (1024 * 1024)).kernel(guest('hello'));
    const run = await runVm(vm);
    const expected = e820Map(size).map((e, i) => `e820 ${i} ${e.addr.toString(16)} ${e.size.toString(16)} ${e.type}`);
    expect(expected[expected.length - 1]).toBe(`e820 ${expected.length - 1} 100000000 ${(size - 0xd0000000).toString(16)} 1`);
    expect(run.lines.filter((l) => l.startsWith('e820 '))).toEqual(expected);
    const ram = e820Map(size).filter((e) => e.type === 1).reduce((a, e) => a + e.size, 0);
    expect(Number(run.kv.get('e820_ram_bytes'))).toBe(ram);
    expect(run.info.reason).toBe('reset');
  });

  it('enters a bzImage at its 64-bit entry with the image\'s own setup header in the zero page', async () => {
    const file = guest('hello.bzImage');
    const image = fs.readFileSync(file);
    const initrd = path.join(tmp, 'initrd-bz.bin');
    const data = Buffer.alloc(4096, 0x5a);
    fs.writeFileSync(initrd, data);
    const vm = new MicroVM().memory(64).kernel(file, { cmdline: 'console=ttyS0 kt.bz=1', initrd });
    const run = await runVm(vm);
    expect(run.info.reason).toBe('reset');
    expect(run.lines).toContain('DONE');
    expect(run.kv.get('cmdline')).toBe(vm.cmdline);
    expect(run.kv.get('version')).toBe(image.readUInt16LE(0x206).toString(16));
    expect(run.kv.get('setup_sects')).toBe(String(image[0x1f1]));
    expect(run.kv.get('init_size')).toBe(image.readUInt32LE(0x260).toString(16));
    expect(run.kv.get('init_size')).not.toBe('0');
    // LOADED_HIGH from the image, CAN_USE_HEAP added by the loader, nothing else touched.
    expect(run.kv.get('loadflags')).toBe('81');
    expect(run.kv.get('loader')).toBe('ff');
    // initrd_addr_max (32 MiB) is below the top of this 64 MiB guest: the initrd must respect it.
    const initrdMax = image.readUInt32LE(0x22c);
    expect(run.kv.get('initrd_addr_max')).toBe(initrdMax.toString(16));
    const [addr, size] = (run.kv.get('initrd') ?? '').split(' ');
    expect(Number(size)).toBe(data.length);
    expect(parseInt(addr, 16) + data.length - 1).toBeLessThanOrEqual(initrdMax);
    expect(parseInt(run.kv.get('initrd_sum') ?? '', 16)).toBe(0x5a * data.length);
  });

  it('refuses a command line longer than a bzImage\'s cmdline_size, before the guest runs', async () => {
    const file = guest('hello.bzImage');
    const limit = fs.readFileSync(file).readUInt32LE(0x238);
    const vm = new MicroVM().memory(64).kernel(file, { cmdline: `console=ttyS0 kt.pad=${'x'.repeat(limit)}` });
    await expect(vm.start()).rejects.toMatchObject({ name: 'BootError', code: 'CMDLINE_TOO_LONG' });
    await vm.stop();
  });

  it('delivers serial input with receive interrupts and echoes it back', async () => {
    const vm = new MicroVM().memory(16).kernel(guest('echo'));
    const run = await runVm(vm, { input: ['hello kindling\n', 'second line\n', 'quit\n'] });
    expect(run.info.reason).toBe('reset');
    const echoes = run.lines.filter((l) => l.startsWith('echo='));
    expect(echoes).toEqual(['echo=hello kindling', 'echo=second line', 'echo=quit']);
    expect(Number(run.kv.get('irqs'))).toBeGreaterThan(0);
    expect((await vm.metrics()).serial.rxBytes).toBe('hello kindling\nsecond line\nquit\n'.length);
  });

  it('reports a triple fault as shutdown', async () => {
    const vm = new MicroVM().memory(16).kernel(guest('triple'));
    const run = await runVm(vm);
    expect(run.lines).toContain('TRIPLE');
    expect(run.info.reason).toBe('shutdown');
  });

  it('ends with reason error, the RIP and the instruction bytes when KVM cannot emulate an instruction', async () => {
    // emufail.elf loads an x87 value from unclaimed MMIO: KVM has to emulate the access and cannot.
    for (const hostQuirks of ['none', 'emulated-kvm'] as const) {
      const vm = new MicroVM({ hostQuirks }).memory(32).kernel(guest('emufail'));
      const run = await runVm(vm);
      expect(run.lines.filter((l) => l.startsWith('FAIL'))).toEqual([]);
      expect(run.info).toMatchObject({ reason: 'error', vcpu: 0, message: 'KVM could not emulate an instruction' });
      expect(run.info.rip).toBe(BigInt('0x' + run.kv.get('insn_rip')));
      expect(run.info.instructionBytes).toMatch(/^d900/); // flds (%rax)
    }
  });

  it('runs two vCPUs: the second one started by INIT/SIPI from the first', async () => {
    const vm = new MicroVM().vcpus(2).memory(16).kernel(guest('smp'));
    const run = await runVm(vm);
    expect(run.info.reason).toBe('reset');
    expect(run.kv.get('BSP apic')).toBe('0');
    expect(run.kv.get('AP apic')).toBe('1');
    expect(run.kv.get('cpus_running')).toBe('2');
  });

  it('stop() ends a running guest with reason stopped and is idempotent', async () => {
    const vm = new MicroVM().memory(16).kernel(guest('echo'));
    let out = '';
    vm.on('serial', (c) => { out += c.toString(); });
    await vm.start();
    while (!out.includes('KT: READY')) await new Promise((r) => setTimeout(r, 5));
    const [a, b] = await Promise.all([vm.stop(), vm.stop()]);
    expect(a.reason).toBe('stopped');
    expect(b).toEqual(a);
    expect(vm.state).toBe('exited');
  });
});
