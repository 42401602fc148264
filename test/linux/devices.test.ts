/**
 * Linux tier for the devices: Linux's own drivers accept Kindling's virtio-net, vsock, rng and
 * balloon, and a booted Linux survives a snapshot and restore.
 *
 * Kernel-level checks run everywhere (on a host whose KVM emulates guests too, where user space
 * cannot run): the kernel configures eth0 itself (`ip=`) and answers ping through a TAP; the rng
 * feeds the kernel; the balloon driver gives pages back; a restored kernel reboots on
 * Ctrl+Alt+Del. Checks that need user space (busybox fetching MMDS keys, two guests pinging
 * each other, reading /dev/hwrng, MemTotal, the invoke agent, Firecracker's vsock socket
 * protocol) run where it can, and are skipped with the reason printed elsewhere.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { VirtualSwitch } from '../../lib/net/switch';
import { NetnsTap } from '../unit/helpers/netns';
import { removeSocketDirs, socketDir } from '../unit/helpers/socket-dir';
import { CMDLINE, KERNEL, VM_TIMEOUT_MS, describeLinux, emulated } from './common';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { buildInitramfs } = require('../../scripts/initramfs');

const AGENT = path.join(__dirname, '../../guest/agent/out/kindling-agent');
const userSpace = emulated ? it.skip : it;
if (emulated) {
  // eslint-disable-next-line no-console
  console.warn('SKIPPING the user-space checks of the Linux device tests: guest user space cannot run on a host whose KVM emulates guests (README); their kernel-level checks run');
}
const netns = NetnsTap.unavailable();

/** Collects a VM's console; `waitFor` resolves when a pattern shows up (or the VM ends). */
function console_(vm: MicroVM): { text: () => string; waitFor: (re: RegExp) => Promise<RegExpExecArray> } {
  let out = '';
  const waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void; reject: (e: Error) => void }[] = [];
  const check = () => {
    for (const w of waiters.splice(0)) {
      const m = w.re.exec(out);
      if (m) w.resolve(m);
      else waiters.push(w);
    }
  };
  vm.on('serial', (c) => {
    if (process.env.KINDLING_TEST_SERIAL === '1') process.stderr.write(c);
    out += c.toString('latin1');
    check();
  });
  vm.on('exit', (info) => {
    for (const w of waiters.splice(0)) w.reject(new Error(`the VM ended (${info.reason}) before ${w.re}; console:\n${out.slice(-3000)}`));
  });
  return {
    text: () => out,
    waitFor: (re) => new Promise((resolve, reject) => {
      const m = re.exec(out);
      if (m) return resolve(m);
      waiters.push({ re, resolve, reject });
    }),
  };
}

/** Ends a VM: a stop after the test's timeout, else its own end. */
async function ended(vm: MicroVM): Promise<string> {
  const timer = setTimeout(() => void vm.stop(), VM_TIMEOUT_MS);
  const info = await vm.wait();
  clearTimeout(timer);
  return info.reason;
}

/** An initramfs whose /init runs `script` (busybox sh) after mounting /proc, /sys and /dev. */
function initramfs(dir: string, name: string, script: string, files: Record<string, Buffer> = {}): string {
  const file = path.join(dir, name);
  const init = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
${script}
/bin/busybox reboot -f
`;
  fs.writeFileSync(file, buildInitramfs({ init, files }));
  return file;
}

describeLinux(`Linux drivers on Kindling's devices (${KERNEL})`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-ldev-'));
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
    removeSocketDirs();
  });

  (netns ? it.skip : it)(`virtio-net: the kernel configures eth0 (ip=) and answers ping through a TAP${netns ? ` (skipped: ${netns})` : ''}`, async () => {
    const ns = new NetnsTap('l');
    try {
      // No initramfs and a root that never appears: the kernel configures the interface, then
      // waits for its root forever, answering ping meanwhile, with or without user space.
      const vm = new MicroVM({ id: 'linux-net' }).memory(128)
        .kernel(KERNEL, { cmdline: `${CMDLINE} ip=10.216.0.2::10.216.0.1:255.255.255.0::eth0:off root=/dev/vdz rootwait` })
        .nic('eth0', { tap: ns.tap, mac: '06:00:0a:d8:00:02' });
      const con = console_(vm);
      try {
        await vm.start();
        ns.moveIn('10.216.0.1/24');
        await con.waitFor(/IP-Config: Complete/);
        await con.waitFor(/Waiting for root device/);
        // busybox's ping: the host may have no other (busybox-static is a set-up requirement).
        // Awaited, not run synchronously: the NIC answers on this event loop.
        const out = await ns.exec('busybox', ['ping', '-c', '3', '-W', '10', '10.216.0.2']);
        expect(out).toMatch(/3 (packets )?received/);
        const m = (await vm.metrics()).nics.eth0;
        expect(m.rxFrames).toBeGreaterThanOrEqual(3);
        expect(m.txFrames).toBeGreaterThanOrEqual(3);
      } finally {
        await vm.stop();
      }
      // Linux's virtio_net bound the device and took the MAC from its config space (this kernel
      // logs no "virtio_net virtio0 eth0" line: no udev renaming).
      expect(con.text()).toMatch(/device=eth0, hwaddr=06:00:0a:d8:00:02, ipaddr=10\.216\.0\.2/);
    } finally {
      ns.cleanup();
    }
  });

  (netns ? it.skip : userSpace)(`virtio-net through a TAP: init pings the namespace and fetches an MMDS key${netns ? ` (skipped: ${netns})` : ''}`, async () => {
    const ns = new NetnsTap('t');
    try {
      const script = `
/bin/busybox ip route add 169.254.169.254 dev eth0
/bin/busybox ping -c 3 -w 30 10.218.0.1 && echo "ping-ns=ok"
TOKEN=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token-ttl-seconds: 60\\r\\nConnection: close\\r\\n\\r\\n' | /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)
ID=$(printf "GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token: $TOKEN\\r\\nConnection: close\\r\\n\\r\\n" | /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)
echo "mmds-instance-id=$ID"
`;
      const vm = new MicroVM({ id: 'linux-tap' }).memory(128)
        .kernel(KERNEL, { cmdline: `${CMDLINE} ip=10.218.0.2::10.218.0.1:255.255.255.0::eth0:off`, initrd: initramfs(tmp, 'tap.cpio.gz', script) })
        .nic('eth0', { tap: ns.tap, mac: '06:00:0a:da:00:02' })
        .mmds({ version: 'v2', nics: ['eth0'] });
      vm.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-tap' } } });
      const con = console_(vm);
      await vm.start();
      ns.moveIn('10.218.0.1/24');
      expect(await ended(vm)).toBe('reset');
      expect(con.text()).toContain('ping-ns=ok');
      expect(con.text()).toContain('mmds-instance-id=i-tap');
      // The metadata service answered inside the device; the echo requests reached the namespace.
      expect(ns.stat('rx_packets')).toBeGreaterThanOrEqual(3);
    } finally {
      ns.cleanup();
    }
  });

  userSpace('virtio-net: init fetches MMDS keys with the v2 token flow; two guests on one VirtualSwitch ping each other', async () => {
    const sw = new VirtualSwitch();
    const script = (ip: string, peer: string) => `
/bin/busybox ip route add 169.254.169.254 dev eth0
TOKEN=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token-ttl-seconds: 60\\r\\nConnection: close\\r\\n\\r\\n' | /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)
echo "mmds-token-length=\${#TOKEN}"
ID=$(printf "GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token: $TOKEN\\r\\nConnection: close\\r\\n\\r\\n" | /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)
echo "mmds-instance-id=$ID"
/bin/busybox ping -c 3 -W 5 ${peer} && echo "ping-${peer}=ok"
/bin/busybox sleep 5
`;
    const mk = (n: number, ip: string, peer: string) => new MicroVM({ id: `linux-sw${n}` }).memory(128)
      .kernel(KERNEL, { cmdline: `${CMDLINE} ip=${ip}::${peer}:255.255.255.0::eth0:off`, initrd: initramfs(tmp, `sw${n}.cpio.gz`, script(ip, peer)) })
      .nic('eth0', { link: sw, mac: `06:00:0a:d9:00:0${n}` })
      .mmds({ version: 'v2', nics: ['eth0'] });
    const a = mk(2, '10.217.0.2', '10.217.0.3');
    const b = mk(3, '10.217.0.3', '10.217.0.2');
    a.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-a' } } });
    b.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-b' } } });
    const ca = console_(a);
    const cb = console_(b);
    await Promise.all([a.start(), b.start()]);
    expect(await Promise.all([ended(a), ended(b)])).toEqual(['reset', 'reset']);
    expect(ca.text()).toMatch(/mmds-token-length=[1-9]/);
    expect(ca.text()).toContain('mmds-instance-id=i-a');
    expect(cb.text()).toContain('mmds-instance-id=i-b');
    expect(ca.text()).toContain('ping-10.217.0.3=ok');
    expect(cb.text()).toContain('ping-10.217.0.2=ok');
  });

  it('virtio-rng and virtio-balloon: the kernel binds both, draws entropy and gives balloon pages back', async () => {
    const script = `
echo "hwrng=$(/bin/busybox cat /sys/class/misc/hw_random/rng_current)"
echo "hwrng-bytes=$(/bin/busybox dd if=/dev/hwrng bs=32 count=1 2>/dev/null | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \\n' | /bin/busybox wc -c)"
echo "memtotal-1=$(/bin/busybox grep MemTotal /proc/meminfo | /bin/busybox tr -s ' ' | /bin/busybox cut -d' ' -f2)"
echo ready-for-balloon
/bin/busybox sleep 20
echo "memtotal-2=$(/bin/busybox grep MemTotal /proc/meminfo | /bin/busybox tr -s ' ' | /bin/busybox cut -d' ' -f2)"
`;
    const vm = new MicroVM({ id: 'linux-rng-balloon' }).memory(256)
      .kernel(KERNEL, emulated
        ? { cmdline: `${CMDLINE} root=/dev/vdz rootwait` }
        : { cmdline: CMDLINE, initrd: initramfs(tmp, 'rngb.cpio.gz', script) })
      .entropy()
      // Without deflate-on-OOM Linux takes inflated pages out of MemTotal (adjust_managed_page_count).
      .balloon({ amountMib: 16, deflateOnOom: false, statsPollingIntervalS: 1 });
    const con = console_(vm);
    await vm.start();
    // The driver inflates to the target by itself (no user space involved).
    const t0 = Date.now();
    while ((await vm.balloonStats()).actualMib < 16) {
      if (Date.now() - t0 > VM_TIMEOUT_MS) throw new Error(`balloon never reached 16 MiB; console:\n${con.text().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    // 16 MiB of pages released to the host (madvise), the host-side RSS drop.
    const m1 = (await vm.metrics()).devices.balloon.metrics as { releasedBytes: number };
    expect(m1.releasedBytes).toBeGreaterThanOrEqual(16 * 1024 * 1024);
    if (!emulated) {
      await con.waitFor(/ready-for-balloon/);
      await vm.updateBalloon({ amountMib: 48 });
      expect(await ended(vm)).toBe('reset');
      const text = con.text();
      expect(text).toMatch(/hwrng=virtio_rng/);
      expect(text).toMatch(/hwrng-bytes=64/);
      const before = Number(/memtotal-1=(\d+)/.exec(text)?.[1]);
      const after = Number(/memtotal-2=(\d+)/.exec(text)?.[1]);
      expect(before - after).toBeGreaterThanOrEqual(30 * 1024); // 32 MiB more in the balloon, in KiB
    } else {
      await con.waitFor(/Waiting for root device/);
      await vm.stop();
    }
    const rng = (await vm.metrics()).devices.rng.metrics as { bytes: number };
    expect(rng.bytes).toBeGreaterThan(0); // the kernel's hwrng core drew from the device
  });

  userSpace('vsock: the shipped agent answers vm.invoke(), and a Firecracker-style Unix socket client reaches it', async () => {
    const uds = path.join(socketDir(tmp), 'fc.vsock');
    const vm = new MicroVM({ id: 'linux-vsock' }).memory(256)
      .kernel(KERNEL, {
        cmdline: CMDLINE,
        initrd: initramfs(tmp, 'agent.cpio.gz', 'echo agent-starting\n/bin/kindling-agent -p 1024 &\n/bin/busybox sleep 600', { 'bin/kindling-agent': fs.readFileSync(AGENT) }),
      })
      .vsock({ guestCid: 7, udsPath: uds });
    const con = console_(vm);
    await vm.start();
    try {
      await vsockChecks(vm, con, uds);
    } finally {
      await vm.stop();
    }
  });

  async function vsockChecks(vm: MicroVM, con: ReturnType<typeof console_>, uds: string): Promise<void> {
    await con.waitFor(/agent-starting/);
    // The agent needs a moment to listen: retry the first call.
    let first: unknown;
    for (let i = 0; i < 50 && first === undefined; i++) {
      first = await vm.invoke({ hello: 'linux' }, { timeoutMs: 2000 }).catch(() => undefined);
      if (first === undefined) await new Promise((r) => setTimeout(r, 200));
    }
    expect(first).toEqual({ hello: 'linux' });
    expect((await vm.invoke(Buffer.from('raw bytes'))) as Buffer).toEqual(Buffer.from('raw bytes'));
    const sock = net.connect(uds);
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write('CONNECT 1024\n');
    expect(await new Promise<string>((r) => sock.once('data', (d: Buffer) => r(d.toString())))).toMatch(/^OK \d+\n$/);
    sock.destroy();
  }

  it('snapshot of a booted kernel: the restored VM reboots on Ctrl+Alt+Del, far faster than a boot', async () => {
    const t0 = Date.now();
    const vm = new MicroVM({ id: 'linux-snap' }).memory(128).kernel(KERNEL, { cmdline: `${CMDLINE} root=/dev/vdz rootwait` });
    const con = console_(vm);
    await vm.start();
    await con.waitFor(/Waiting for root device/);
    const bootMs = Date.now() - t0;
    await vm.pause();
    const dir = path.join(tmp, 'snap');
    await vm.snapshot(dir);
    await vm.stop();
    const t1 = Date.now();
    const r = await MicroVM.restore(dir);
    const restoreMs = Date.now() - t1;
    const rcon = console_(r);
    // Keys pressed before the restored kernel runs again are not lost: the i8042's queue is state.
    const presses = setInterval(() => void r.sendCtrlAltDel().catch(() => undefined), 500);
    const reason = await ended(r);
    clearInterval(presses);
    // eslint-disable-next-line no-console
    console.log(`Linux to rootwait ${(bootMs / 1000).toFixed(1)} s; restore to running ${restoreMs} ms`);
    expect(reason).toBe('reset');
    expect(rcon.text()).toMatch(/reboot: Restarting system/);
    // Measured in the same run on the same host: a ratio, not a time.
    expect(restoreMs * 5).toBeLessThan(bootMs);
  });
});

