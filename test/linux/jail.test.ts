/**
 * Slow tier, jailed: the boot-to-init test of linux.test.ts once more with the VM in a jailed
 * child (root only; minutes on emulated KVM, like the others). The kernel, initramfs and KVM
 * device reach the child as descriptors; the guest's whole boot runs under the child's seccomp
 * filter and cgroup limits.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm } from '../kvm/harness';
import { JAIL_GID, JAIL_UID, chrootBase, ensureJailCode } from '../kvm/jail-harness';
import { CMDLINE, expectBootToInit, writeInitramfs } from './common';

/** KINDLING_TEST_KERNEL, else the kernel scripts/build-kernel.sh built, else the workplace's shared one (as linux.test.ts). */
const KERNEL = process.env.KINDLING_TEST_KERNEL
  ?? [path.join(__dirname, '../../kernel/out/vmlinux'), path.join(__dirname, '../../../shared/guest/vmlinux')].find((p) => fs.existsSync(p))
  ?? path.join(__dirname, '../../../shared/guest/vmlinux');
const isRoot = typeof process.geteuid === 'function' && process.geteuid() === 0;
const describeLinuxJail = fs.existsSync(KERNEL) && isRoot ? describeKvm : describe.skip;

describeLinuxJail(`Linux guest in a jailed child (${KERNEL})`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-linux-jail-'));
  let base = '';
  beforeAll(() => {
    ensureJailCode();
    base = chrootBase();
  }, 300_000);
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(base, { recursive: true, force: true });
  });

  it('boots with 2 vCPUs to /init inside the jail, and ends by guest reboot', async () => {
    const initrd = writeInitramfs(tmp);
    const vm = new MicroVM({
      id: 'linux-jailed',
      jail: { uid: JAIL_UID, gid: JAIL_GID, chrootBase: base, cgroup: { memoryMax: '1G', pidsMax: 64 } },
    }).vcpus(2).memory(256).kernel(KERNEL, { cmdline: CMDLINE, initrd });
    let checked = false;
    vm.once('serial', () => {
      // Booting, in the jail: the child is the jail's user, filtered, without capabilities.
      const status = fs.readFileSync(`/proc/${vm.jail!.pid}/status`, 'utf8');
      expect(status).toMatch(new RegExp(`^Uid:\\s+${JAIL_UID}\\s`, 'm'));
      expect(status).toMatch(/^Seccomp:\s+2$/m);
      expect(status).toMatch(/^CapEff:\s+0+$/m);
      checked = true;
    });
    await expectBootToInit(vm, 'jailed Linux SMP boot', 2);
    expect(checked).toBe(true);
    expect(fs.readdirSync(base)).toEqual([]);
  });
});
