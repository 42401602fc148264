/**
 * Jailed mode end to end (root and KVM): the freestanding guests behave exactly as in-process;
 * the child's credentials, seccomp state and root; forbidden calls kill it; its cgroup's memory
 * limit stops a guest that touches too much; snapshots cross the jail both ways; failures at
 * start leave nothing behind; 100 start/stop cycles leak no cgroup, mount, directory or fd.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { VirtualSwitch } from '../../lib/net/switch';
import type { ExitInfo } from '../../lib/vm/exit-dispatch';
import type { RemoteMachineHandle } from '../../lib/jail/remote-machine';
import { jailContents } from '../../lib/jail/contents';
import { hostCgroups } from '../../lib/jail/cgroup';
import { loadedAddonPath } from '../../lib/native/binding';
import { answerVsockGuest, collectSerial, connectThroughUds, guest, invokeByHand, parseKt, runVm, startVsockGuestAndInvoke, type GuestRun } from './harness';
import { JAIL_GID, JAIL_UID, chrootBase, describeJail, ensureJailCode } from './jail-harness';
import { NetnsTap } from '../unit/helpers/netns';
import { removeSocketDirs, socketDir } from '../unit/helpers/socket-dir';

describeJail('jailed VMs', () => {
  let base = '';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-jailkvm-'));
  beforeAll(() => {
    ensureJailCode();
    base = chrootBase();
  }, 300_000);
  afterAll(() => {
    removeSocketDirs();
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(base, { recursive: true, force: true });
  });

  const jail = (extra: Record<string, unknown> = {}) => ({ uid: JAIL_UID, gid: JAIL_GID, chrootBase: base, ...extra });
  let seq = 0;
  const id = (what: string) => `${what}-${process.pid}-${seq++}`;

  /** Every cgroup group dir under `kindling` in every hierarchy this host has. */
  function cgroupLeftovers(): string[] {
    const h = hostCgroups();
    const mounts = [...(h.v2 ? [h.v2.mount] : []), ...new Set(h.v1.values())];
    return mounts.flatMap((m) => {
      const p = path.join(m, 'kindling');
      return fs.existsSync(p) ? fs.readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(p, e.name)) : [];
    });
  }

  function expectCleanedUp(vmId: string): void {
    expect(fs.existsSync(path.join(base, vmId))).toBe(false);
    expect(cgroupLeftovers().filter((d) => d.endsWith(`/${vmId}`))).toEqual([]);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(base);
  }

  /** The guest run in-process and jailed, with the same configuration. */
  async function both(configure: (vm: MicroVM) => MicroVM, input?: string[]): Promise<[GuestRun, GuestRun]> {
    const plain = await runVm(configure(new MicroVM({ id: 'same-id' })), { input });
    const jailedId = 'same-id';
    const jailed = await runVm(configure(new MicroVM({ id: jailedId, jail: jail() })), { input });
    expectCleanedUp(jailedId);
    return [plain, jailed];
  }

  it('runs hello (command line, E820, initrd) exactly as in-process', async () => {
    const initrd = path.join(tmp, 'initrd.bin');
    fs.writeFileSync(initrd, Buffer.from(Array.from({ length: 5000 }, (_v, i) => (i * 13 + 5) & 0xff)));
    const [plain, jailed] = await both((vm) => vm.memory(64).vcpus(2).kernel(guest('hello'), { cmdline: 'console=ttyS0 kt.marker=42', initrd }));
    expect(jailed.info).toEqual({ reason: 'reset' });
    expect(jailed.lines).toEqual(plain.lines);
    expect(jailed.output).toBe(plain.output);
    expect(jailed.vm.cmdline).toBe(plain.vm.cmdline);
    expect(jailed.kv.get('cpus')).toBe('2');
  });

  it('runs echo (serial input and output through the control socket) exactly as in-process', async () => {
    const [plain, jailed] = await both((vm) => vm.memory(16).kernel(guest('echo')), ['hello kindling\n', 'second line\n', 'quit\n']);
    expect(jailed.info).toEqual({ reason: 'reset' });
    expect(jailed.lines).toEqual(plain.lines);
    expect(jailed.lines.filter((l) => l.startsWith('echo='))).toEqual(['echo=hello kindling', 'echo=second line', 'echo=quit']);
    const m = await jailed.vm.metrics();
    expect(m.serial.inputBytes).toBe((await plain.vm.metrics()).serial.inputBytes);
  });

  it('runs blk (drives opened by the parent, passed as descriptors) exactly as in-process, files alike', async () => {
    const make = (name: string, sectors: number) => {
      const data = Buffer.alloc(sectors * 512);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
      const p = path.join(tmp, name);
      fs.writeFileSync(p, data);
      return p;
    };
    const files = { plain: [make('p-rw.img', 64), make('p-ro.img', 16)], jailed: [make('j-rw.img', 64), make('j-ro.img', 16)] };
    let which: 'plain' | 'jailed' = 'plain';
    const [plain, jailed] = await both((vm) => {
      const [rw, ro] = files[which];
      which = 'jailed';
      return vm.memory(32).kernel(guest('blk')).drive('data0', { path: rw, cacheType: 'writeback' }).drive('ro1', { path: ro, readOnly: true });
    });
    expect(jailed.info).toEqual({ reason: 'reset' });
    expect(jailed.lines).toEqual(plain.lines);
    expect(jailed.lines).toContain('PASS blk0 write-readback');
    expect(fs.readFileSync(files.jailed[0]).equals(fs.readFileSync(files.plain[0]))).toBe(true);
    expect(fs.readFileSync(files.jailed[1]).equals(fs.readFileSync(files.plain[1]))).toBe(true);
    const [pm, jm] = [await plain.vm.metrics(), await jailed.vm.metrics()];
    expect(jm.drives).toEqual(pm.drives);
  });

  it('runs rng and balloon jailed: host CSPRNG, page release and live balloon updates through the child', async () => {
    const rng = await runVm(new MicroVM({ id: id('rng'), jail: jail() }).memory(32).kernel(guest('rng')).entropy());
    expect(rng.info).toEqual({ reason: 'reset' });
    expect(rng.lines).toContain('PASS rng random');
    expect(rng.kv.get('rng big_len')).toBe('65536');
    const vm = new MicroVM({ id: id('balloon'), jail: jail() }).memory(64).kernel(guest('balloon'), { cmdline: 'console=ttyS0 balloon.wait_target=1' })
      .balloon({ amountMib: 4, deflateOnOom: true, statsPollingIntervalS: 1 });
    const out = collectSerial(vm);
    await vm.start();
    await out.waitFor('KT: balloon waiting_for_target');
    expect(await vm.balloonStats()).toMatchObject({ targetPages: 1024, actualPages: 1024 });
    await vm.updateBalloon({ amountMib: 6 });
    expect((await vm.wait()).reason).toBe('reset');
    const { kv } = parseKt(out.text());
    expect(kv.get('balloon zeroed')).toBe('1024');
    expect(kv.get('balloon new_target')).toBe('1536');
    expect(vm.jail).toBeUndefined();
  });

  it('vsock jailed: a guest connection to a host listener half-closed both ways, invoke(), vsockConnect errors, as in-process', async () => {
    const vm = new MicroVM({ id: id('vsock'), jail: jail() }).memory(32).kernel(guest('vsock')).vsock({ guestCid: 3 });
    const { out, srv } = await startVsockGuestAndInvoke(vm);
    expect(() => vm.vsockListen(7000, () => undefined)).toThrow(expect.objectContaining({ code: 'PORT_IN_USE' }));
    // As large as the test agent takes (its limit is below 5000 bytes).
    const big = Buffer.from(Array.from({ length: 3000 }, (_v, i) => (i * 7) & 0xff));
    expect((await vm.invoke(big) as Buffer).equals(big)).toBe(true);
    await expect(vm.vsockConnect(4444)).rejects.toMatchObject({ name: 'VsockError', code: 'CONNECTION_REFUSED' });
    // A connection still open when the VM ends is closed with it (not left half-open).
    const held = await vm.vsockConnect(1024);
    const heldClosed = new Promise<void>((resolve) => held.once('close', () => resolve()));
    await vm.invoke('quit');
    expect((await vm.wait()).reason).toBe('reset');
    await heldClosed;
    srv.close();
    const { kv } = parseKt(out.text());
    expect(kv.get('vsock connect')).toBe('ok');
    expect(kv.get('vsock host_said')).toBe('hello from the host (you said hello from the guest)');
    expect(Number(kv.get('vsock invokes'))).toBeGreaterThanOrEqual(12);
    const m = (await vm.metrics()).devices.vsock;
    expect(m.kind).toBe('virtio-vsock');
    await expect(vm.vsockConnect(1024)).rejects.toThrow();
  });

  it('vsock jailed with udsPath: the parent serves the Unix socket (CONNECT <port>) and forwards guest connections to <udsPath>_<port>', async () => {
    const uds = path.join(socketDir(tmp), `j${seq}.sock`);
    // No listener for host port 7000: the device forwards the guest's connection to uds_7000.
    const forward = net.createServer({ allowHalfOpen: true }, answerVsockGuest);
    await new Promise<void>((r) => forward.listen(`${uds}_7000`, () => r()));
    const vm = new MicroVM({ id: id('uds'), jail: jail() }).memory(32).kernel(guest('vsock')).vsock({ guestCid: 3, udsPath: uds });
    const out = collectSerial(vm);
    await vm.start();
    await out.waitFor('KT: vsock listening=1024');
    expect(fs.statSync(uds).isSocket()).toBe(true);
    const { sock, answer } = await connectThroughUds(uds, 1024);
    expect(answer).toMatch(/^OK \d+\n$/);
    expect(await invokeByHand(sock, 9, { via: 'jailed uds' })).toEqual({ id: 9, value: { via: 'jailed uds' } });
    sock.destroy();
    await vm.invoke('quit');
    expect((await vm.wait()).reason).toBe('reset');
    forward.close();
    const { kv } = parseKt(out.text());
    expect(kv.get('vsock connect')).toBe('ok');
    expect(kv.get('vsock host_said')).toBe('hello from the host (you said hello from the guest)');
    // The socket file is the parent's and is gone with the VM.
    expect(fs.existsSync(uds)).toBe(false);
    const m = (await vm.metrics()).devices.vsock.metrics as { udsAccepted: number; udsForwarded: number };
    expect(m.udsAccepted).toBe(1);
    expect(m.udsForwarded).toBe(1);
  });

  it('in-process links jailed: a jailed guest and an in-process one ping each other on one VirtualSwitch', async () => {
    const sw = new VirtualSwitch();
    const port = sw.attach();
    let seen = 0;
    port.on('data', () => { seen++; });
    const cmd = (ip: string, peer: string) => ({ cmdline: `console=ttyS0 net.ip=${ip} net.peer=${peer} net.mmds=none net.linger=60000` });
    const a = new MicroVM({ id: id('link'), jail: jail() }).memory(32).kernel(guest('net'), cmd('10.78.0.2', '10.78.0.3'))
      .nic('eth0', { link: sw, mac: '06:00:0a:4e:00:02' });
    const b = new MicroVM().memory(32).kernel(guest('net'), cmd('10.78.0.3', '10.78.0.2')).nic('eth0', { link: sw, mac: '06:00:0a:4e:00:03' });
    const [ra, rb] = await Promise.all([runVm(a), runVm(b)]);
    for (const r of [ra, rb]) {
      expect(r.info).toEqual({ reason: 'reset' });
      expect(r.lines).toContain('PASS net0 ping');
    }
    expect(Number(ra.kv.get('net0 rx_frames')?.split(' ')[0])).toBeGreaterThan(0);
    const m = (await a.metrics()).nics.eth0;
    expect(m.txFrames).toBeGreaterThan(0);
    expect(m.rxFrames).toBeGreaterThan(0);
    expect(seen).toBeGreaterThan(0);
    // The jailed VM's port left the switch with it; the switch and the host's port still work.
    expect(sw.metrics().ports).toBe(1);
    port.destroy();
  });

  const noTap = NetnsTap.unavailable();
  (noTap ? it.skip : it)(`a NIC on a TAP in the jail's network namespace (opened by the parent there) answers ping${noTap ? ` (skipped: ${noTap})` : ''}`, async () => {
    const ns = new NetnsTap('j');
    try {
      ns.moveIn('10.216.0.1/24');
      const vm = new MicroVM({ id: id('net'), jail: jail({ netns: `/var/run/netns/${ns.ns}` }) }).memory(32)
        .kernel(guest('net'), { cmdline: 'console=ttyS0 net.ip=10.216.0.2 net.peer=10.216.0.1 net.mmds=none' })
        .nic('eth0', { tap: ns.tap, mac: '06:00:0a:d8:00:02' });
      const run = await runVm(vm);
      expect(run.info).toEqual({ reason: 'reset' });
      expect(run.lines).toContain('PASS net0 ping');
      expect(ns.stat('rx_packets')).toBeGreaterThan(0);
      const missing = new MicroVM({ id: id('nonet'), jail: jail({ netns: `/var/run/netns/${ns.ns}` }) }).memory(32).kernel(guest('net'))
        .nic('eth0', { tap: 'kt-missing0' });
      await expect(missing.start()).rejects.toMatchObject({ code: 'TAP_NOT_FOUND' });
    } finally {
      ns.cleanup();
    }
  });

  (noTap ? it.skip : it)(`the metadata service jailed: the guest reads the data set before start; later changes reach the child${noTap ? ` (skipped: ${noTap})` : ''}`, async () => {
    const ns = new NetnsTap('m');
    try {
      ns.moveIn('10.217.0.1/24');
      const vm = new MicroVM({ id: id('mmds'), jail: jail({ netns: `/var/run/netns/${ns.ns}` }) }).memory(32)
        .kernel(guest('net'), { cmdline: 'console=ttyS0 net.peer=none net.linger=100000000' })
        .nic('eth0', { tap: ns.tap, mac: '06:00:0a:d9:00:02' })
        .mmds({ version: 'v2', nics: ['eth0'] });
      vm.setMetadata({ latest: { 'meta-data': { 'instance-id': 'i-jailed' } } });
      const out = collectSerial(vm);
      await vm.start();
      await out.waitFor('PASS net0 mmds');
      const { lines, kv } = parseKt(out.text());
      expect(lines).toContain('PASS net0 mmds');
      expect(kv.get('net0 mmds get_status')).toBe('200 body=i-jailed');
      vm.updateMetadata({ latest: { 'meta-data': { zone: 'z2' } } });
      const child = (vm as unknown as { handle: RemoteMachineHandle }).handle;
      expect(await child.getMetadata()).toEqual({ latest: { 'meta-data': { 'instance-id': 'i-jailed', zone: 'z2' } } });
      expect(vm.getMetadata()).toEqual(await child.getMetadata());
      expect((await vm.metrics()).nics.eth0.mmdsRequests).toBe(2);
      await vm.stop();
    } finally {
      ns.cleanup();
    }
  });

  /** Starts the echo guest jailed and waits until it reads its input. */
  async function idleVm(extra: Record<string, unknown> = {}): Promise<{ vm: MicroVM; out: () => string }> {
    const vm = new MicroVM({ id: id('idle'), jail: jail(extra) }).memory(16).kernel(guest('echo'));
    let out = '';
    let ready!: () => void;
    const isReady = new Promise<void>((resolve) => { ready = resolve; });
    vm.on('serial', (c) => {
      out += c.toString('latin1');
      if (out.includes('KT: READY')) ready();
    });
    await vm.start();
    await isReady;
    return { vm, out: () => out };
  }

  it('the child runs as the jail\'s user with no_new_privs, seccomp mode 2 and no capabilities', async () => {
    const { vm } = await idleVm();
    const pid = vm.jail!.pid;
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status)?.[1].trim().replace(/\s+/g, ' ');
    expect(field('Uid')).toBe(`${JAIL_UID} ${JAIL_UID} ${JAIL_UID} ${JAIL_UID}`);
    expect(field('Gid')).toBe(`${JAIL_GID} ${JAIL_GID} ${JAIL_GID} ${JAIL_GID}`);
    expect(field('Groups')).toBe('');
    expect(field('NoNewPrivs')).toBe('1');
    expect(field('Seccomp')).toBe('2');
    for (const c of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect(field(c)).toBe('0000000000000000');
    // PID 1 of its own PID namespace, its own host name.
    expect(field('NSpid')).toBe(`${pid} 1`);
    expect(fs.readlinkSync(`/proc/${pid}/ns/mnt`)).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    expect(fs.readlinkSync(`/proc/${pid}/ns/ipc`)).not.toBe(fs.readlinkSync('/proc/self/ns/ipc'));
    expect(fs.readlinkSync(`/proc/${pid}/ns/uts`)).not.toBe(fs.readlinkSync('/proc/self/ns/uts'));
    expect(fs.readlinkSync(`/proc/${pid}/ns/net`)).toBe(fs.readlinkSync('/proc/self/ns/net'));
    // Every thread is filtered, the vCPU thread twice (the process filter and its own). (KVM's
    // own worker, kvm-nx-lpage-recovery, is listed too: it took the vCPU thread's filters.)
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      const s = fs.readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      const comm = fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
      expect(s).toMatch(/^Seccomp:\s+2$/m);
      if (comm.startsWith('kindling-cpu')) expect(s).toMatch(/^Seccomp_filters:\s+2$/m);
      else if (comm === 'node') expect(s).toMatch(/^Seccomp_filters:\s+1$/m);
    }
    // Its cgroups are the ones made for it.
    const cgroupLines = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    expect(vm.jail!.cgroups.length).toBeGreaterThan(0);
    expect(cgroupLines.split('\n').filter((l) => l.endsWith(`/kindling/${vm.id}`))).toHaveLength(vm.jail!.cgroups.length);
    await vm.stop();
    expectCleanedUp(vm.id);
  });

  it('the child\'s root holds exactly what it needs, read-only but for /snapshot, and the host sees none of its mounts', async () => {
    const { vm } = await idleVm();
    const pid = vm.jail!.pid;
    const root = `/proc/${pid}/root`;
    const seen: string[] = [];
    const walk = (rel: string) => {
      for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
        const p = `${rel}/${e.name}`;
        seen.push(p);
        // A bound directory (the compiled code) is listed, not walked: it is one entry.
        if (e.isDirectory() && !isBoundDir(p)) walk(p);
      }
    };
    const contents = jailContents(loadedAddonPath());
    const boundDirs = new Set(contents.binds.filter((b) => fs.statSync(b.source).isDirectory()).map((b) => b.target));
    const isBoundDir = (p: string) => boundDirs.has(p);
    walk('');
    const expected = new Set<string>(['/snapshot']);
    for (const b of contents.binds) {
      for (let p = b.target; p !== '/'; p = path.dirname(p)) expected.add(p);
    }
    expect(seen.sort()).toEqual([...expected].sort());
    // eslint-disable-next-line no-console
    console.log(`jail root of ${vm.id}:\n  ${seen.sort().join('\n  ')}`);
    // Bound files are the host's files.
    for (const b of contents.binds) {
      if (!boundDirs.has(b.target)) expect(fs.statSync(path.join(root, b.target)).ino).toBe(fs.statSync(b.source).ino);
    }
    const mounts = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8').trim().split('\n').map((l) => {
      const f = l.split(' ');
      return { point: f[4], opts: f[5].split(',') };
    });
    expect(mounts.map((m) => m.point).sort()).toEqual(['/', '/snapshot', ...contents.binds.map((b) => b.target)].sort());
    for (const m of mounts) {
      if (m.point === '/snapshot') expect(m.opts).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'noexec']));
      else expect(m.opts).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    }
    expect(fs.statSync(path.join(root, 'snapshot')).uid).toBe(JAIL_UID);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(base);
    await vm.stop();
    expectCleanedUp(vm.id);
  });

  it('writes the cgroup limits where this host has the controllers', async () => {
    const { vm } = await idleVm({ cgroup: { cpuMax: '50000 100000', memoryMax: '512M', pidsMax: 64 } });
    const dirs = vm.jail!.cgroups;
    const read = (file: string) => dirs.map((d) => path.join(d, file)).filter((f) => fs.existsSync(f)).map((f) => fs.readFileSync(f, 'utf8').trim());
    const h = hostCgroups();
    const report: string[] = [];
    if (h.v2?.controllers.has('memory')) {
      expect(read('memory.max')).toEqual([String(512 * 1024 ** 2)]);
      report.push('memory: v2');
    } else {
      expect(read('memory.limit_in_bytes')).toEqual([String(512 * 1024 ** 2)]);
      report.push('memory: v1');
    }
    if (h.v2?.controllers.has('cpu')) {
      expect(read('cpu.max')).toEqual(['50000 100000']);
      report.push('cpu: v2');
    } else {
      expect(read('cpu.cfs_quota_us')).toEqual(['50000']);
      expect(read('cpu.cfs_period_us')).toEqual(['100000']);
      report.push('cpu: v1');
    }
    expect(read('pids.max')).toEqual(['64']);
    report.push(h.v2?.controllers.has('pids') ? 'pids: v2' : 'pids: v1');
    // eslint-disable-next-line no-console
    console.log(`cgroups of ${vm.id}: ${dirs.join(', ')} (${report.join(', ')})`);
    await vm.stop();
    expectCleanedUp(vm.id);
  });

  it.each(['execve', 'open', 'socket', 'ioctl'] as const)('a child that attempts %s is killed with SIGSYS and the call is reported', async (what) => {
    const { vm } = await idleVm();
    const handle = (vm as unknown as { handle: RemoteMachineHandle }).handle;
    await expect(handle.testAttempt(what)).rejects.toMatchObject({ name: 'JailError', code: 'CHILD_EXITED' });
    const info = await vm.wait();
    expect(info).toMatchObject({ reason: 'error', signal: 'SIGSYS' });
    const nr = { execve: 59, open: 257, socket: 41, ioctl: 16 }[what];
    expect(info.message).toMatch(new RegExp(`killed by SIGSYS.*kindling: seccomp: a thread made system call ${nr} \\(arch 0xc000003e`, 's'));
    expect(info.message).not.toMatch(/kindling-test/);
    expect(vm.state).toBe('exited');
    expectCleanedUp(vm.id);
  });

  it('memory.max stops a guest that touches more memory than allowed, and the parent sees the exit', async () => {
    const hog = (max: string | undefined, vmId: string) => new MicroVM({ id: vmId, jail: jail(max ? { cgroup: { memoryMax: max } } : {}) }).memory(256).kernel(guest('memhog'));
    const limited = await runVm(hog('128M', id('hog')));
    expect(limited.info).toMatchObject({ reason: 'error', signal: 'SIGKILL' });
    expect(limited.info.message).toMatch(/memory limit/);
    expect(limited.lines).not.toContain('DONE');
    const touched = Math.max(...limited.lines.filter((l) => l.startsWith('touched=')).map((l) => Number(l.slice(8))));
    expect(touched).toBeLessThan(128);
    expectCleanedUp(limited.vm.id);
    const free = await runVm(hog(undefined, id('hog')));
    expect(free.info).toEqual({ reason: 'reset' });
    expect(free.lines).toContain('touched=248');
  });

  it('takes a snapshot inside the jail into the caller\'s directory, and restores it jailed and in-process', async () => {
    const vm = new MicroVM({ id: id('snap'), jail: jail() }).memory(32).trackDirtyPages().kernel(guest('counter'), { cmdline: 'console=ttyS0 count=100000' });
    let out = '';
    vm.on('serial', (c) => { out += c.toString('latin1'); });
    await vm.start();
    while (!/count=3 /.test(out)) await new Promise((r) => setTimeout(r, 20));
    const dir = path.join(tmp, 'snap');
    // The child's own errors come back as the same classes.
    await expect(vm.snapshot(dir)).rejects.toMatchObject({ name: 'SnapshotError', code: 'NOT_PAUSED' });
    await vm.pause();
    const info = await vm.snapshot(dir);
    expect(info.dir).toBe(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(['memory', 'vmstate']);
    for (const f of ['memory', 'vmstate']) {
      const st = fs.statSync(path.join(dir, f));
      expect(st.uid).toBe(0);
      expect(st.mode & 0o777).toBe(0o600);
    }
    // What the guest had printed when it was snapshotted (possibly ending mid-line).
    const atSnapshot = out;
    // A diff on top, from the same jail.
    await vm.resume();
    await new Promise((r) => setTimeout(r, 100));
    await vm.pause();
    const diff = await vm.snapshot(path.join(tmp, 'snap-diff'), { type: 'diff' });
    expect(diff.type).toBe('diff');
    expect(diff.memory.pagesWritten).toBeGreaterThan(0);
    // Only what the guest wrote since: a small part of its 32 MiB.
    expect(diff.memory.bytes).toBeLessThan(4 * 1024 * 1024);
    expect(fs.readdirSync(path.join(tmp, 'snap-diff')).sort()).toEqual(['memory', 'vmstate']);
    await vm.stop();
    expectCleanedUp(vm.id);
    for (const jailed of [true, false]) {
      const r = await MicroVM.restore(dir, { id: id('restored'), ...(jailed ? { jail: jail() } : {}) });
      let o2 = '';
      r.on('serial', (c) => { o2 += c.toString('latin1'); });
      // The restored guest goes on where the snapshot stopped, mid-line or not: the counts are consecutive.
      while (!/count=\d+ .*\n/.test(o2)) await new Promise((res) => setTimeout(res, 20));
      const counts = parseKt(atSnapshot + o2.slice(0, o2.lastIndexOf('\n') + 1)).lines.filter((l) => l.startsWith('count=')).map((l) => Number(/count=(\d+)/.exec(l)![1]));
      expect(counts.length).toBeGreaterThan(3);
      if (counts.some((c, i) => c !== counts[0] + i)) {
        throw new Error(`restored ${jailed ? 'jailed' : 'in-process'}: counts ${counts.join(',')}; before ${JSON.stringify(atSnapshot.slice(-120))}; after ${JSON.stringify(o2.slice(0, 160))}; now ${JSON.stringify(out.slice(atSnapshot.length, atSnapshot.length + 200))}`);
      }
      await r.stop();
      if (jailed) expectCleanedUp(r.id);
    }
  });

  it('a jailed snapshot keeps vsock, a NIC on a link and the metadata; restored jailed, all three work again', async () => {
    const vm = new MicroVM({ id: id('snapdev'), jail: jail() }).memory(32).kernel(guest('counter'), { cmdline: 'console=ttyS0 count=100000' })
      .vsock({ guestCid: 3 }).nic('eth0', { link: new VirtualSwitch() }).mmds({ nics: ['eth0'] });
    vm.setMetadata({ fn: { id: 'snap' } });
    const out = collectSerial(vm);
    await vm.start();
    await out.waitFor('count=2 ');
    await vm.pause();
    const dir = path.join(tmp, 'snap-devices');
    await vm.snapshot(dir);
    await vm.stop();
    const sw = new VirtualSwitch();
    const r = await MicroVM.restore(dir, { id: id('restoreddev'), nics: { eth0: { link: sw } }, jail: jail() });
    const o2 = collectSerial(r);
    expect(r.getMetadata()).toEqual({ fn: { id: 'snap' } });
    r.vsockListen(5000, () => undefined).close();
    await o2.waitFor('count=');
    expect(sw.metrics().ports).toBe(1);
    const devices = (await r.metrics()).devices;
    expect(devices.vsock.kind).toBe('virtio-vsock');
    await r.stop();
    expectCleanedUp(r.id);
  });

  it('replaces a drive\'s backing file while running (the parent opens the new file)', async () => {
    const a = path.join(tmp, 'swap-a.img');
    const b = path.join(tmp, 'swap-b.img');
    fs.writeFileSync(a, Buffer.alloc(8192));
    fs.writeFileSync(b, Buffer.alloc(16384));
    const vm = new MicroVM({ id: id('swap'), jail: jail() }).memory(16).kernel(guest('echo')).drive('d', { path: a });
    await vm.start();
    await vm.updateDrive('d', { path: b });
    expect((await vm.metrics()).drives.d.backendSwaps).toBe(1);
    expect(() => vm.updateDrive('d', { path: path.join(tmp, 'missing.img') })).toThrow(expect.objectContaining({ code: 'DRIVE_NOT_FOUND' }));
    // The rate limits go across too.
    await vm.updateDrive('d', { rateLimiter: { ops: { size: 100, refillTime: 100 } } });
    await vm.stop();
    expectCleanedUp(vm.id);
  });

  it('a child killed from outside ends the VM with reason error and the signal', async () => {
    const { vm } = await idleVm();
    process.kill(vm.jail!.pid, 'SIGKILL');
    const info: ExitInfo = await vm.wait();
    expect(info).toMatchObject({ reason: 'error', signal: 'SIGKILL' });
    expectCleanedUp(vm.id);
  });

  it('a parent killed with SIGKILL takes its jailed VM along, and the launcher removes the jail', async () => {
    const vmId = id('orphan');
    const script = `
      require(${JSON.stringify(require.resolve('../../bench/register-ts'))});
      const { MicroVM } = require(${JSON.stringify(require.resolve('../../lib/vm/microvm'))});
      const vm = new MicroVM({ id: ${JSON.stringify(vmId)}, jail: ${JSON.stringify(jail())} }).memory(16).kernel(${JSON.stringify(guest('echo'))});
      vm.start().then(() => console.log('pid ' + vm.jail.pid), (e) => { console.error(e); process.exit(1); });
    `;
    const { spawn } = await import('child_process');
    const parent = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
    const pid = await new Promise<number>((resolve, reject) => {
      let out = '';
      parent.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /pid (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      parent.once('exit', () => reject(new Error(`the parent ended before the VM ran: ${out}`)));
    });
    expect(fs.existsSync(path.join(base, vmId))).toBe(true);
    parent.kill('SIGKILL');
    const deadline = Date.now() + 15_000;
    const gone = () => !fs.existsSync(`/proc/${pid}`) && !fs.existsSync(path.join(base, vmId)) && cgroupLeftovers().every((d) => !d.endsWith(`/${vmId}`));
    while (!gone() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    expectCleanedUp(vmId);
  });

  it('refuses what a jail cannot carry, and leaves nothing behind when a start fails', async () => {
    expect(() => new MicroVM({ id: 'x', jail: jail() }).device({} as never)).toThrow(expect.objectContaining({ code: 'INVALID_JAIL' }));
    expect(() => new MicroVM({ jail: { gid: 1, chrootBase: base } as never })).toThrow(expect.objectContaining({ code: 'UID_MISSING' }));
    // The jail directory exists: JAIL_EXISTS, and it is not touched.
    const busy = id('busy');
    fs.mkdirSync(path.join(base, busy));
    fs.writeFileSync(path.join(base, busy, 'keep'), 'x');
    const vm1 = new MicroVM({ id: busy, jail: jail() }).memory(16).kernel(guest('hello'));
    await expect(vm1.start()).rejects.toMatchObject({ name: 'JailError', code: 'JAIL_EXISTS' });
    expect(fs.readFileSync(path.join(base, busy, 'keep'), 'utf8')).toBe('x');
    expect(cgroupLeftovers().filter((d) => d.endsWith(`/${busy}`))).toEqual([]);
    fs.rmSync(path.join(base, busy), { recursive: true });
    // A "network namespace" that is not one: setns fails in the launcher; all of it is removed.
    const notNs = path.join(tmp, 'not-a-netns');
    fs.writeFileSync(notNs, '');
    const vm2 = new MicroVM({ id: id('badns'), jail: jail({ netns: notNs }) }).memory(16).kernel(guest('hello'));
    await expect(vm2.start()).rejects.toMatchObject({ name: 'JailError', code: 'LAUNCH_FAILED', message: expect.stringMatching(/setns: EINVAL/) });
    expect((await vm2.wait()).reason).toBe('error');
    expectCleanedUp(vm2.id);
    // The kernel vanished after the builder saw it: refused before any jail is made.
    const kernel = path.join(tmp, 'vanishing.elf');
    fs.copyFileSync(guest('hello'), kernel);
    const vm3 = new MicroVM({ id: id('nokernel'), jail: jail() }).memory(16).kernel(kernel);
    fs.rmSync(kernel);
    await expect(vm3.start()).rejects.toMatchObject({ name: 'ConfigError', code: 'KERNEL_NOT_FOUND' });
    expect(fs.existsSync(path.join(base, vm3.id))).toBe(false);
  });

  it('100 jailed start/stop cycles leave no cgroup, mount, directory or descriptor behind', async () => {
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    // Other suites mount things meanwhile (network namespaces): only the jails' own count.
    const mounts = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(base) || l.includes('kindling-jail'));
    const before = { fds: fds(), mounts: mounts(), cgroups: cgroupLeftovers(), entries: fs.readdirSync(base) };
    const t0 = Date.now();
    for (let i = 0; i < 100; i++) {
      const vm = new MicroVM({ id: `cycle-${i}`, jail: jail({ cgroup: { memoryMax: '256M', pidsMax: 64 } }) }).memory(16).kernel(guest('echo'));
      await vm.start();
      expect(vm.state).toBe('running');
      const info = await vm.stop();
      expect(info.reason).toBe('stopped');
      expect(info.closeErrors).toBeUndefined();
    }
    // eslint-disable-next-line no-console
    console.log(`100 jailed start/stop cycles: ${((Date.now() - t0) / 100).toFixed(0)} ms each`);
    expect(fds()).toBe(before.fds);
    expect(mounts()).toEqual(before.mounts);
    expect(before.mounts).toEqual([]);
    expect(cgroupLeftovers()).toEqual(before.cgroups);
    expect(fs.readdirSync(base)).toEqual(before.entries);
  }, 600_000);
});
