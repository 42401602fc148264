/**
 * The jailed mode's host side without a jail: descriptors across a socket pair (SCM_RIGHTS) and
 * the child's table of them, the jail's contents (what the dynamic loader says the child needs),
 * and moving a snapshot out of a jail without trusting what the child left there.
 */
import type { ChildProcess } from 'child_process';
import { EventEmitter } from 'events';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { loadNative, loadedAddonPath } from '../../lib/native/binding';
import { PassedResources } from '../../lib/jail/child';
import { elfInterpreter, jailCodeDir, jailContents, loaderList } from '../../lib/jail/contents';
import { moveSnapshotOut } from '../../lib/jail/remote-machine';
import { JailProcess } from '../../lib/jail/launch';
import { MEMORY_FILE, STATE_FILE } from '../../lib/snapshot/format';
import { NetnsTap } from './helpers/netns';
import { ensureJailCode } from '../kvm/jail-harness';

const addon = loadNative();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-jailhost-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

describe('descriptors over a socket pair', () => {
  it('passes descriptors with a message and the child hands each out once, by kind, access and path', async () => {
    const before = openFds();
    const [parent, child] = addon.socketPair('seqpacket');
    const file = path.join(tmp, 'kernel.bin');
    fs.writeFileSync(file, 'kernel bytes');
    const a = fs.openSync(file, 'r');
    const b = fs.openSync(file, 'r+');
    const meta = { batch: 7, items: [
      { kind: 'file', path: file, access: 'read', size: 12, blockDevice: false },
      { kind: 'file', path: file, access: 'readWrite', size: 12, blockDevice: false },
    ] };
    addon.sendFds(parent, Buffer.from(JSON.stringify(meta)), [a, b]);
    fs.closeSync(a);
    fs.closeSync(b);
    const res = new PassedResources(addon, child);
    res.receive(7);
    const image = res.openImage(file);
    expect(image).toMatchObject({ size: 12, blockDevice: false });
    const head = Buffer.alloc(12);
    fs.readSync(image.fd, head, 0, 12, 0);
    fs.closeSync(image.fd);
    expect(head.toString()).toBe('kernel bytes');
    expect(() => res.openImage(file)).toThrow(/was not passed into the jail/);
    const rw = await res.openFile(file, 'readWrite');
    expect(rw).toMatchObject({ size: 12, blockDevice: false });
    fs.writeSync(rw.fd, 'K', 0);
    fs.closeSync(rw.fd);
    expect(fs.readFileSync(file, 'utf8')).toBe('Kernel bytes');
    expect(() => res.receive(8)).toThrow(/has not arrived/);
    addon.closeFd(parent);
    addon.closeFd(child);
    expect(openFds()).toBe(before);
  });

  it('closes descriptors nobody asked for, and refuses a message with more descriptors than allowed whole', () => {
    const [parent, child] = addon.socketPair('seqpacket');
    const before = openFds();
    const fds = [0, 1, 2].map(() => fs.openSync(__filename, 'r'));
    addon.sendFds(parent, Buffer.from(JSON.stringify({ batch: 1, items: fds.map(() => ({ kind: 'file', path: __filename, access: 'read', size: 0, blockDevice: false })) })), fds);
    for (const fd of fds) fs.closeSync(fd);
    const res = new PassedResources(addon, child);
    res.receive(1);
    expect(openFds()).toBe(before + 3);
    res.closeUnused();
    expect(openFds()).toBe(before);
    const extra = [fs.openSync(__filename, 'r'), fs.openSync(__filename, 'r')];
    addon.sendFds(parent, Buffer.from('x'), extra);
    for (const fd of extra) fs.closeSync(fd);
    expect(() => addon.receiveFds(child, 1024, 1)).toThrow(expect.objectContaining({ code: 'EMSGSIZE' }));
    expect(openFds()).toBe(before);
    expect(addon.receiveFds(child, 1024, 1)).toBeNull();
    addon.closeFd(parent);
    expect(addon.receiveFds(child, 1024, 1)).toEqual({ data: Buffer.alloc(0), fds: [] });
    addon.closeFd(child);
  });
});

describe('the jail\'s contents', () => {
  it('are the Node binary, its loader and libraries, the addon\'s libraries, the compiled code, package.json and the addon', () => {
    ensureJailCode(); // the compiled code, current with lib/
    const interp = elfInterpreter(fs.realpathSync(process.execPath));
    expect(interp).toMatch(/^\/.*ld-linux.*\.so/);
    const libs = loaderList(interp, process.execPath);
    expect(libs).toContain(interp);
    expect(libs.some((l) => /\/libc\.so\.6$/.test(l))).toBe(true);
    const c = jailContents(loadedAddonPath());
    const targets = c.binds.map((b) => b.target);
    expect(targets[0]).toBe(process.execPath);
    for (const l of libs) expect(targets).toContain(l);
    expect(targets).toContain(fs.realpathSync(jailCodeDir()));
    expect(targets).toContain(fs.realpathSync(loadedAddonPath()));
    expect(targets).toContain(path.join(fs.realpathSync(jailCodeDir()), '..', '..', 'package.json'));
    expect(new Set(targets).size).toBe(targets.length);
    for (const b of c.binds) expect(fs.realpathSync(b.source)).toBe(b.source);
    expect(c.childScript).toBe(path.join(fs.realpathSync(jailCodeDir()), 'jail', 'child.js'));
    expect(c.libraryDirs.length).toBeGreaterThan(0);
  });
});

describe('moving a snapshot out of a jail', () => {
  function scratch(name: string): string {
    const d = path.join(tmp, name, 'snapshot');
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  it('moves the memory and state files into place, owned by this process, and empties the scratch directory', async () => {
    const s = scratch('ok');
    fs.writeFileSync(path.join(s, MEMORY_FILE), 'mem');
    fs.writeFileSync(path.join(s, STATE_FILE), 'state');
    fs.writeFileSync(path.join(s, 'junk'), 'x');
    const out = path.join(tmp, 'ok-out', 'nested');
    await moveSnapshotOut(s, out);
    expect(fs.readdirSync(out).sort()).toEqual([MEMORY_FILE, STATE_FILE].sort());
    expect(fs.readFileSync(path.join(out, STATE_FILE), 'utf8')).toBe('state');
    expect(fs.statSync(path.join(out, MEMORY_FILE)).uid).toBe(process.geteuid!());
    expect(fs.statSync(path.join(out, MEMORY_FILE)).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(s)).toEqual([]);
  });

  it('refuses a symlink or a hard link the child planted, without following it, and leaves nothing behind', async () => {
    const secret = path.join(tmp, 'secret');
    fs.writeFileSync(secret, 'host secret');
    for (const [name, plant] of [
      ['symlink', (p: string) => fs.symlinkSync(secret, p)],
      ['hardlink', (p: string) => fs.linkSync(secret, p)],
    ] as const) {
      const s = scratch(name);
      plant(path.join(s, MEMORY_FILE));
      fs.writeFileSync(path.join(s, STATE_FILE), 'state');
      const out = path.join(tmp, `${name}-out`);
      await expect(moveSnapshotOut(s, out)).rejects.toMatchObject({ name: 'JailError', code: 'SNAPSHOT_TRANSFER' });
      expect(fs.readdirSync(out)).toEqual([]);
      expect(fs.readdirSync(s)).toEqual([]);
      expect(fs.readFileSync(secret, 'utf8')).toBe('host secret');
      expect(fs.lstatSync(secret).nlink).toBe(1);
    }
  });

  it('fails when the child wrote no snapshot', async () => {
    const s = scratch('empty');
    await expect(moveSnapshotOut(s, path.join(tmp, 'empty-out'))).rejects.toMatchObject({ code: 'SNAPSHOT_TRANSFER' });
  });
});

const netUnavailable = NetnsTap.unavailable();
(netUnavailable ? describe.skip : describe)('TAPs in a jail\'s network namespace (root)', () => {
  it('are opened by the parent inside the namespace (and not found outside it), and handed out by name', () => {
    const t = new NetnsTap('jt');
    try {
      t.moveIn('10.219.0.1/24');
      const nsPath = `/run/netns/${t.ns}`;
      expect(() => addon.openTap(t.tap)).toThrow(expect.objectContaining({ code: 'ENODEV' }));
      const tap = addon.openTap(t.tap, nsPath);
      expect(tap.name).toBe(t.tap);
      expect(fs.readlinkSync(`/proc/self/fd/${tap.fd}`)).toBe('/dev/net/tun');
      // This thread is still in its own namespace.
      expect(() => addon.openTap(t.tap)).toThrow(expect.objectContaining({ code: 'ENODEV' }));
      const [parent, child] = addon.socketPair('seqpacket');
      addon.sendFds(parent, Buffer.from(JSON.stringify({ batch: 1, items: [{ kind: 'tap', path: t.tap, access: 'readWrite', size: 0, blockDevice: false, offloads: tap.offloads }] })), [tap.fd]);
      addon.closeFd(tap.fd);
      const res = new PassedResources(addon, child);
      res.receive(1);
      const got = res.openTap(t.tap);
      expect(got).toMatchObject({ name: t.tap, offloads: tap.offloads });
      expect(fs.readlinkSync(`/proc/self/fd/${got.fd}`)).toBe('/dev/net/tun');
      expect(() => res.openTap(t.tap)).toThrow(/was not passed into the jail/);
      for (const fd of [got.fd, parent, child]) addon.closeFd(fd);
      expect(() => addon.openTap(t.tap, '/run/netns/no-such-ns')).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    } finally {
      t.cleanup();
    }
  });
});

describe('the launcher\'s status lines', () => {
  /** A JailProcess around a stand-in launcher (an EventEmitter that closes when told). */
  function jailProcess(): { jp: JailProcess; close: (code: number | null, signal: string | null) => void } {
    const launcher = new EventEmitter() as unknown as ChildProcess;
    const [a, b] = addon.socketPair('stream');
    addon.closeFd(b);
    const control = new net.Socket({ fd: a, readable: true, writable: true });
    control.destroy();
    const jp = new JailProcess('x', '/nonexistent', '/nonexistent/root', { dirs: [], versions: [] }, control, -1, launcher, addon);
    return { jp, close: (code, signal) => (launcher as unknown as EventEmitter).emit('close', code, signal) };
  }

  it('reads the pid, the child\'s signal and the OOM kills', async () => {
    const { jp, close } = jailProcess();
    jp.status('pid 4242');
    expect(await jp.started).toBe(true);
    expect(jp.pid).toBe(4242);
    jp.status('oom 2');
    jp.status('signal 9');
    close(0, null);
    expect(await jp.ended).toEqual({ code: null, signal: 'SIGKILL' });
    expect(jp.oomKills()).toBe(2);
  });

  it('names a failed step (steps have spaces) with its errno', async () => {
    const { jp, close } = jailProcess();
    jp.status('error bind stat 2');
    jp.status('error later 1');
    jp.status('garbage');
    jp.status(`pid ${'9'.repeat(20)}`);
    close(1, null);
    expect(await jp.started).toBe(false);
    expect(await jp.ended).toEqual({ code: null, signal: null, setupError: 'bind stat: ENOENT' });
  });

  it('a launcher killed without a report counts as the child killed by SIGKILL', async () => {
    const { jp, close } = jailProcess();
    jp.status('pid 7');
    close(null, 'SIGKILL');
    expect(await jp.ended).toEqual({ code: null, signal: 'SIGKILL' });
  });
});
