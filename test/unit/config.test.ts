import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { ConfigError } from '../../lib/vm/errors';
import { composeCmdline, DEFAULT_CMDLINE } from '../../lib/vm/config';
import { checkDriveOptions as checkDrive } from '../../lib/devices/block/config';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-config-'));
const kernel = path.join(tmp, 'vmlinux');
const disk = path.join(tmp, 'disk.img');
fs.writeFileSync(kernel, Buffer.alloc(64));
fs.writeFileSync(disk, Buffer.alloc(4096));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).code;
  }
  return undefined;
}

describe('MicroVM builder validation', () => {
  it.each([0, 33, 1.5, -1, NaN, '2' as unknown as number])('rejects vcpus(%p)', (n) => {
    expect(codeOf(() => new MicroVM().vcpus(n))).toBe('INVALID_VCPUS');
  });

  it('accepts 1 and 32 vCPUs', () => {
    expect(() => new MicroVM().vcpus(1).vcpus(32)).not.toThrow();
  });

  it.each([0, 3, 128.5, 2 * 1024 * 1024, -128])('rejects memory(%p)', (m) => {
    expect(codeOf(() => new MicroVM().memory(m))).toBe('INVALID_MEMORY');
  });

  it('names the missing kernel path in the error', () => {
    const missing = path.join(tmp, 'no-such-kernel');
    const vm = new MicroVM();
    expect(() => vm.kernel(missing)).toThrow(missing);
    expect(codeOf(() => vm.kernel(missing))).toBe('KERNEL_NOT_FOUND');
    expect(codeOf(() => vm.kernel(tmp))).toBe('KERNEL_NOT_FOUND'); // a directory
  });

  it('rejects a missing initrd and a command line over 2048 bytes', () => {
    expect(codeOf(() => new MicroVM().kernel(kernel, { initrd: path.join(tmp, 'nope') }))).toBe('INITRD_NOT_FOUND');
    expect(codeOf(() => new MicroVM().kernel(kernel, { cmdline: 'x'.repeat(2048) }))).toBe('INVALID_CMDLINE');
    expect(() => new MicroVM({ hostQuirks: 'none' }).kernel(kernel, { cmdline: 'x'.repeat(2047) })).not.toThrow();
    // The builder counts what the machine will add: the emulated-KVM workarounds, device announcements.
    expect(codeOf(() => new MicroVM({ hostQuirks: 'emulated-kvm' }).kernel(kernel, { cmdline: 'x'.repeat(2000) }))).toBe('INVALID_CMDLINE');
    const full = new MicroVM({ hostQuirks: 'none' }).kernel(kernel, { cmdline: 'x'.repeat(2013) }); // + ' virtio_mmio.device=4K@0xd0000000:5' = 2048 > 2047
    expect(codeOf(() => full.drive('d0', { path: disk }))).toBe('INVALID_CMDLINE');
    expect(codeOf(() => new MicroVM().kernel(kernel, { cmdline: 'console=ttyS0\n' }))).toBe('INVALID_CMDLINE');
  });

  it('validates drives', () => {
    const vm = new MicroVM();
    expect(codeOf(() => vm.drive('bad id', { path: disk }))).toBe('INVALID_DRIVE');
    expect(codeOf(() => vm.drive('x'.repeat(21), { path: disk }))).toBe('INVALID_DRIVE');
    expect(codeOf(() => vm.drive('d0', { path: path.join(tmp, 'missing.img') }))).toBe('DRIVE_NOT_FOUND');
    vm.drive('root', { path: disk, root: true });
    expect(codeOf(() => vm.drive('root', { path: disk }))).toBe('DUPLICATE_DRIVE');
    expect(codeOf(() => vm.drive('r2', { path: disk, root: true }))).toBe('MULTIPLE_ROOT_DRIVES');
    expect(codeOf(() => vm.drive('d1', { path: disk, cacheType: 'fast' as 'unsafe' }))).toBe('INVALID_DRIVE');
    expect(codeOf(() => vm.drive('d2', { path: disk, partuuid: 'abc' }))).toBe('INVALID_DRIVE');
    expect(codeOf(() => vm.drive('d3', { path: disk, rateLimiter: { bandwidth: { size: -1, refillTime: 10 } } }))).toBe('INVALID_RATE_LIMITER');
    expect(codeOf(() => vm.drive('d4', { path: disk, rateLimiter: { ops: { size: 10, refillTime: Infinity } } }))).toBe('INVALID_RATE_LIMITER');
    expect(() => vm.drive('d5', { path: disk, readOnly: true, rateLimiter: { ops: { size: 100, refillTime: 1000, oneTimeBurst: 10 } } })).not.toThrow();
  });

  it('refuses start without a kernel', async () => {
    await expect(new MicroVM().start()).rejects.toMatchObject({ code: 'NO_KERNEL' });
  });

  it('refuses bad constructor options', () => {
    expect(codeOf(() => new MicroVM({ id: 'has space' }))).toBe('INVALID_ID');
    expect(codeOf(() => new MicroVM({ hostQuirks: 'maybe' as 'auto' }))).toBe('INVALID_OPTION');
  });

  it('refuses configuration after stop, and stop is idempotent', async () => {
    const vm = new MicroVM();
    expect(await vm.stop()).toEqual({ reason: 'stopped' });
    expect(await vm.stop()).toEqual({ reason: 'stopped' });
    expect(codeOf(() => vm.vcpus(2))).toBe('ALREADY_STARTED');
    await expect(vm.start()).rejects.toMatchObject({ code: 'ALREADY_STARTED' });
    expect(await vm.wait()).toEqual({ reason: 'stopped' });
  });

  it('reports metrics before start', async () => {
    const m = await new MicroVM({ id: 'm1' }).metrics();
    expect(m.id).toBe('m1');
    expect(m.state).toBe('configuring');
  });
});

describe('command line composition', () => {
  const root = checkDrive('rootfs', { path: disk, root: true }, []);
  it('announces devices in order and names the root drive', () => {
    const c = composeCmdline(DEFAULT_CMDLINE, { root, announcements: ['virtio_mmio.device=4K@0xd0000000:5', 'virtio_mmio.device=4K@0xd0001000:6'], extra: ['nopvspin'] });
    expect(c).toBe(`${DEFAULT_CMDLINE} root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 nopvspin`);
  });
  it('uses PARTUUID and ro when asked', () => {
    const r = checkDrive('rootfs', { path: disk, root: true, readOnly: true, partuuid: '1234abcd-01' }, []);
    expect(composeCmdline('console=ttyS0', { root: r, announcements: [], extra: [] })).toBe('console=ttyS0 root=PARTUUID=1234abcd-01 ro');
  });
  it('fails when the additions push it past the limit', () => {
    expect(() => composeCmdline('x'.repeat(2040), { announcements: ['virtio_mmio.device=4K@0xd0000000:5'], extra: [] })).toThrow(ConfigError);
  });
});
