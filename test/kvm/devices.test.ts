/**
 * The device model end to end: a device written outside Kindling attached with `vm.device()` and
 * driven by a guest's own virtio-blk driver; teardown when a device's close fails.
 */
import { MicroVM, type VirtioDevice } from 'kindling';
import { describeKvm, guest, parseKt } from './harness';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { RamDisk } = require('../../examples/ramdisk/ramdisk-device');

const SECTOR = 512;
const sum = (b: Buffer) => b.reduce((a, x) => (a + x) >>> 0, 0);

async function run(vm: MicroVM): Promise<{ output: string; info: Awaited<ReturnType<MicroVM['wait']>> }> {
  let output = '';
  vm.on('serial', (c) => { output += c.toString('latin1'); });
  await vm.start();
  const timer = setTimeout(() => void vm.stop(), 60_000);
  const info = await vm.wait();
  clearTimeout(timer);
  return { output, info };
}

describeKvm('devices on KVM', () => {
  it('a user-written device (examples/ramdisk) serves a guest\'s virtio-blk driver', async () => {
    const data = Buffer.alloc(64 * SECTOR);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + 1) & 0xff;
    const disk = new RamDisk('ram0', Buffer.from(data));
    const vm = new MicroVM().memory(32).kernel(guest('blk')).device(disk);
    const { output, info } = await run(vm);
    const { kv, lines } = parseKt(output);
    expect(info.reason).toBe('reset');
    expect(kv.get('blk0 capacity')).toBe('64 ro=0 flush=0');
    expect(kv.get('blk0 id')).toBe('ram0');
    expect(parseInt(kv.get('blk0 sum0')!, 16)).toBe(sum(data.subarray(0, SECTOR)));
    expect(parseInt(kv.get('blk0 sum0_7')!, 16)).toBe(sum(data.subarray(0, 8 * SECTOR)));
    expect(lines).toContain('PASS blk0 write-readback');
    expect(kv.get('blk0 oor_status')).toBe('1');
    expect(vm.cmdline).toContain('virtio_mmio.device=4K@0xd0000000:5');
    const m = await vm.metrics();
    expect(m.devices.ram0.kind).toBe('example-ramdisk');
    expect(m.devices.ram0.metrics).toEqual({ reads: 4, writes: 1, errors: 1 });
    expect(m.devices.ram0.transport?.activations).toBe(1);
  });

  it('a device whose close() rejects: stop() and wait() resolve, the failure is in the exit info and metrics', async () => {
    const failing = new RamDisk('bad0', Buffer.alloc(8 * SECTOR)) as VirtioDevice & { close(): Promise<void> };
    failing.close = () => Promise.reject(new Error('backend refused to close'));
    const throwing = new RamDisk('bad1', Buffer.alloc(8 * SECTOR)) as VirtioDevice & { close(): Promise<void> };
    throwing.close = () => { throw new Error('close threw synchronously'); };
    const vm = new MicroVM().memory(32).kernel(guest('echo')).device(failing).device(throwing);
    await vm.start();
    const stopped = await vm.stop();
    expect(stopped.reason).toBe('stopped');
    expect(stopped.closeErrors).toEqual([
      { id: 'bad0', error: 'backend refused to close' },
      { id: 'bad1', error: 'close threw synchronously' },
    ]);
    expect(await vm.wait()).toBe(stopped);
    expect((await vm.metrics()).closeErrors).toBe(2);
    // The machine is gone: a second stop answers at once with the same info.
    expect(await vm.stop()).toBe(stopped);
  });

  it('a device whose close() rejects when the guest ends the VM itself', async () => {
    const failing = new RamDisk('bad0', Buffer.alloc(8 * SECTOR)) as VirtioDevice & { close(): Promise<void> };
    failing.close = () => Promise.reject(new Error('no'));
    const vm = new MicroVM().memory(32).kernel(guest('hello')).device(failing);
    const { info } = await run(vm);
    expect(info.reason).toBe('reset');
    expect(info.closeErrors).toEqual([{ id: 'bad0', error: 'no' }]);
  });
});

describeKvm('boot timer on KVM', () => {
  it("reports the guest's boot-complete signal at Firecracker's address, with virtio devices one page up", async () => {
    const vm = new MicroVM().memory(32).kernel(guest('hello'), { cmdline: 'console=ttyS0 boot_timer=1' })
      .bootTimer().device(new RamDisk('ram0', Buffer.alloc(8 * SECTOR)));
    const done: number[] = [];
    vm.on('bootDone', (ms) => done.push(ms));
    const { output, info } = await run(vm);
    expect(info.reason).toBe('reset');
    expect(parseKt(output).lines).toContain('boot_timer=signalled');
    expect(done).toHaveLength(1);
    expect(done[0]).toBeGreaterThan(0);
    expect(vm.cmdline).toContain('virtio_mmio.device=4K@0xd0001000:5');
    expect(((await vm.metrics()).devices['boot-timer'].metrics as { signals: number }).signals).toBe(1);
  });
});
