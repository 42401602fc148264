/**
 * Linux tier: boots a real Linux kernel (KINDLING_TEST_KERNEL, see common.ts) with the emulated-KVM
 * workarounds forced, with more than 4 GiB, to a Ctrl+Alt+Del from the host, and with ext4 root
 * drives. boot.test.ts holds the core that also runs natively where KVM emulates guests;
 * bzimage.test.ts boots a compressed kernel built by somebody else.
 *
 * What is checked is what the kernel does on its own (SMP bring-up, virtio probing, root mount,
 * starting /init), and where user space runs, what init does. On a host whose KVM emulates guests
 * (see README) the user-space checks are skipped with the reason printed.
 */
import { execFileSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { runVm } from '../kvm/harness';
import { CMDLINE, KERNEL, VM_TIMEOUT_MS, describeLinux, expectBootToInit, userSpaceCheck, writeInitramfs } from './common';

/** ext4 superblock (at byte 1024): s_mtime at 0x2C, s_mnt_count at 0x34. */
function superblock(img: string): { mtime: number; mountCount: number } {
  const fd = fs.openSync(img, 'r');
  const sb = Buffer.alloc(1024);
  fs.readSync(fd, sb, 0, 1024, 1024);
  fs.closeSync(fd);
  return { mtime: sb.readUInt32LE(0x2c), mountCount: sb.readUInt16LE(0x34) };
}

describeLinux(`Linux guest (${KERNEL})`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-linux-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const t0 = Date.now();

  it('still boots to /init with the emulated-KVM workarounds forced on', async () => {
    // The workarounds (CPUID edits, command-line additions) are meant for hosts whose KVM emulates
    // guests; forcing them here shows that they leave a kernel that boots, wherever this runs.
    const initrd = writeInitramfs(tmp);
    const vm = new MicroVM({ id: 'linux-quirks', hostQuirks: 'emulated-kvm' }).vcpus(2).memory(256)
      .kernel(KERNEL, { cmdline: CMDLINE, initrd });
    const run = await expectBootToInit(vm, 'Linux boot with forced workarounds', 2);
    expect(run.output).toMatch(/Command line: .*noxsave.*nopvspin/);
  });

  it('uses guest memory above 4 GiB (a second memory slot past the MMIO hole)', async () => {
    const initrd = writeInitramfs(tmp);
    const vm = new MicroVM({ id: 'linux-high' }).memory(4608).kernel(KERNEL, { cmdline: CMDLINE, initrd });
    const run = await expectBootToInit(vm, 'Linux 4.5 GiB boot', 1);
    // 4608 MiB = 3.25 GiB below the hole at 0xD0000000 + 1.25 GiB from 4 GiB.
    expect(run.output).toMatch(/BIOS-e820: \[mem 0x0000000100000000-0x000000014fffffff\] usable/);
    const m = /Memory: \d+K\/(\d+)K available/.exec(run.output);
    expect(m).not.toBeNull();
    expect(Number(m![1]) * 1024).toBeGreaterThan(4.4 * 1024 ** 3);
  });

  it('reboots when the host presses Ctrl+Alt+Del', async () => {
    // panic=0: a crashing init (as on emulated KVM) would hang instead of rebooting, so only the
    // key press can end this VM with a reset.
    const initrd = writeInitramfs(tmp, { name: 'initramfs-sleep.cpio.gz', init: '#!/bin/busybox sh\necho kindling-cad-ready\nexec /bin/busybox sleep 100000\n' });
    const vm = new MicroVM({ id: 'linux-cad' }).memory(128)
      .kernel(KERNEL, { cmdline: CMDLINE.replace('panic=-1', 'panic=0'), initrd });
    let out = '';
    let presses = 0;
    let repeat: NodeJS.Timeout | undefined;
    const press = () => {
      if (vm.state !== 'running') return;
      presses++;
      vm.sendCtrlAltDel();
    };
    vm.on('serial', (c) => {
      out += c.toString('latin1');
      // Keys that arrive before the VT keyboard handler is attached to the new AT keyboard are
      // dropped by the guest, and how long that takes depends on the host's speed: press from the
      // moment the keyboard is registered, and again every half second until the guest reboots.
      if (!repeat && /input: AT .*keyboard/.test(out)) {
        press();
        repeat = setInterval(press, 500);
      }
    });
    await vm.start();
    const timer = setTimeout(() => void vm.stop(), VM_TIMEOUT_MS);
    const info = await vm.wait();
    clearTimeout(timer);
    clearInterval(repeat);
    console.log(`Linux Ctrl+Alt+Del boot ended (${info.reason}) after ${((Date.now() - t0) / 1000).toFixed(1)} s, ${presses} presses`);
    expect(presses).toBeGreaterThan(0);
    expect(info.reason).toBe('reset');
    expect(out).toMatch(/reboot: Restarting system/);
    expect((await vm.metrics()).i8042.ctrlAltDels).toBeGreaterThan(0);
    expect((await vm.metrics()).i8042.ctrlAltDels).toBeLessThanOrEqual(presses);
  });

  it('mounts an ext4 root drive read-write, and a read-only one without changing it', async () => {
    const rootDir = path.join(tmp, 'rootfs');
    for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc']) fs.mkdirSync(path.join(rootDir, d), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(rootDir, 'bin/busybox'));
    fs.chmodSync(path.join(rootDir, 'bin/busybox'), 0o755);
    fs.symlinkSync('busybox', path.join(rootDir, 'bin/sh'));
    // On an ordinary KVM host this init also reads sector 0 of a third drive (printing its MD5) and
    // writes a line into sector 1, which the host then checks.
    fs.writeFileSync(path.join(rootDir, 'sbin/init'), [
      '#!/bin/sh',
      'echo kindling-rootfs-init',
      'if [ -b /dev/vdc ]; then',
      '  /bin/busybox dd if=/dev/vdc bs=512 count=1 2>/dev/null | /bin/busybox md5sum | /bin/busybox sed "s/^/kindling-vdc-md5=/"',
      '  echo kindling-wrote-this | /bin/busybox dd of=/dev/vdc bs=512 seek=1 conv=sync 2>/dev/null',
      'fi',
      '/bin/busybox sync',
      '/bin/busybox reboot -f',
      '',
    ].join('\n'), { mode: 0o755 });
    const rootImg = path.join(tmp, 'root.ext4');
    const roImg = path.join(tmp, 'ro.ext4');
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', rootDir, '-F', rootImg, '32M']);
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', rootDir, '-F', roImg, '16M']);
    const before = superblock(rootImg);
    const roBytes = fs.readFileSync(roImg);
    const scratch = path.join(tmp, 'scratch.img');
    const scratchBytes = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < scratchBytes.length; i++) scratchBytes[i] = (i * 7 + 1) & 0xff;
    fs.writeFileSync(scratch, scratchBytes);

    const vm = new MicroVM({ id: 'linux-blk' }).memory(256)
      .kernel(KERNEL, { cmdline: CMDLINE })
      .drive('rootfs', { path: rootImg, root: true })
      .drive('ro', { path: roImg, readOnly: true })
      .drive('scratch', { path: scratch });
    const run = await runVm(vm, { timeoutMs: VM_TIMEOUT_MS });
    console.log(`Linux ext4-root boot ended (${run.info.reason}) after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(run.output).toMatch(/virtio_blk virtio0: .*\[vda\]/);
    expect(run.output).toMatch(/virtio_blk virtio1: .*\[vdb\]/);
    expect(run.output).toMatch(/EXT4-fs \(vda\): mounted filesystem/);
    expect(run.output).toMatch(/VFS: Mounted root \(ext4 filesystem\) on device 254:0/);
    expect(run.info.reason).toBe('reset');
    userSpaceCheck('the root drive\'s init ran, read a data drive and wrote to it', () => {
      expect(run.output).toMatch(/kindling-rootfs-init/);
      const md5 = createHash('md5').update(scratchBytes.subarray(0, 512)).digest('hex');
      expect(run.output).toContain(`kindling-vdc-md5=${md5}`);
      const after = fs.readFileSync(scratch);
      const line = Buffer.from('kindling-wrote-this\n');
      const expected = Buffer.from(scratchBytes);
      expected.fill(0, 512, 1024);
      line.copy(expected, 512);
      expect(after.equals(expected)).toBe(true);
    });

    const after = superblock(rootImg);
    expect(after.mountCount).toBe(before.mountCount + 1);
    expect(after.mtime).toBeGreaterThanOrEqual(before.mtime);
    // e2fsck -n: 0 clean, 1 errors corrected (journal replay pending counts as clean enough here).
    let fsck = 0;
    try {
      execFileSync('e2fsck', ['-n', '-f', rootImg], { stdio: 'pipe' });
    } catch (e) {
      fsck = (e as { status: number }).status;
    }
    expect([0, 1]).toContain(fsck);
    expect(fs.readFileSync(roImg).equals(roBytes)).toBe(true);

    // The same kernel with the read-only image as its root: mounted read-only, left byte-identical.
    const vm2 = new MicroVM({ id: 'linux-ro' }).memory(256)
      .kernel(KERNEL, { cmdline: CMDLINE })
      .drive('rootro', { path: roImg, root: true, readOnly: true });
    const run2 = await runVm(vm2, { timeoutMs: VM_TIMEOUT_MS });
    console.log(`Linux read-only-root boot ended (${run2.info.reason}) after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(run2.output).toMatch(/VFS: Mounted root \(ext4 filesystem\) readonly on device 254:0/);
    expect(run2.info.reason).toBe('reset');
    expect(fs.readFileSync(roImg).equals(roBytes)).toBe(true);
  });
});
