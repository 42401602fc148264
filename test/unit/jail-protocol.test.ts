/**
 * The jailed mode's control protocol: framing (any split of the stream), the checks on everything
 * the child sends (random input never throws past them), errors and exit infos across the wire;
 * then the parent's handle against a scripted stand-in child over a real socket pair: events,
 * calls, a protocol violation, a silent child, a child that dies.
 */
import * as net from 'net';
import fc from 'fast-check';
import { loadNative } from '../../lib/native/binding';
import { ConfigError } from '../../lib/config';
import { SnapshotError } from '../../lib/snapshot/errors';
import { NativeError } from '../../lib/native/errors';
import { JailError } from '../../lib/jail/errors';
import {
  FrameReader, MAX_CHILD_FRAME, ProtocolViolation, boundedJson, checkChildMessage, checkExitInfo, encodeFrame, toWireError, wireExitInfo,
} from '../../lib/jail/protocol';
import { RemoteMachineHandle, fromWireError, type JailChild } from '../../lib/jail/remote-machine';
import type { ChildEnd } from '../../lib/jail/launch';
import { initialConfig } from '../../lib/vm/config';
import type { ExitInfo } from '../../lib/vm/exit-dispatch';
import type { MachineEvents } from '../../lib/vm/machine';
import { ChildVsockHost, MAX_BRIDGED_CONNECTIONS, RemoteVsock } from '../../lib/jail/vsock-bridge';

describe('framing', () => {
  it('round-trips messages with and without bytes, however the stream is cut', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.jsonValue(), fc.uint8Array({ maxLength: 300 })), { minLength: 1, maxLength: 8 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 20 }),
      (messages, cuts) => {
        const stream = Buffer.concat(messages.map(([json, bytes]) => encodeFrame({ v: json }, bytes)));
        const got: [unknown, Buffer][] = [];
        const r = new FrameReader(MAX_CHILD_FRAME, (j, b) => got.push([j, Buffer.from(b)]), (why) => { throw new Error(why); });
        let at = 0;
        for (let i = 0; at < stream.length; i++) {
          const n = cuts[i % cuts.length];
          r.push(stream.subarray(at, at + n));
          at += n;
        }
        expect(got.length).toBe(messages.length);
        got.forEach(([j, b], i) => {
          expect(j).toEqual({ v: JSON.parse(JSON.stringify(messages[i][0])) });
          expect(b.equals(Buffer.from(messages[i][1]))).toBe(true);
        });
      },
    ));
  });

  it('refuses an oversized frame once and then ignores the stream', () => {
    const errors: string[] = [];
    const frames: unknown[] = [];
    const r = new FrameReader(1024, (j) => frames.push(j), (why) => errors.push(why));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(2000, 0);
    r.push(head);
    r.push(encodeFrame({ t: 'ready' }));
    expect(errors).toEqual(['frame of 2000 bytes (limit 1024)']);
    expect(frames).toEqual([]);
  });

  it('refuses a JSON part longer than its frame, and JSON that does not parse', () => {
    const bad = Buffer.alloc(12);
    bad.writeUInt32LE(8, 0);
    bad.writeUInt32LE(100, 4);
    const e1: string[] = [];
    new FrameReader(1024, () => undefined, (w) => e1.push(w)).push(bad);
    expect(e1[0]).toMatch(/JSON part of 100 bytes/);
    const notJson = Buffer.concat([Buffer.from([7, 0, 0, 0, 3, 0, 0, 0]), Buffer.from('{{{')]);
    const e2: string[] = [];
    new FrameReader(1024, () => undefined, (w) => e2.push(w)).push(notJson);
    expect(e2[0]).toMatch(/does not parse/);
  });

  it('never throws on random bytes: every frame is either checked or refused', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
      const r = new FrameReader(4096, (json, b) => {
        try {
          checkChildMessage(json, b);
        } catch (e) {
          if (!(e instanceof ProtocolViolation)) throw e;
        }
      }, () => undefined);
      r.push(Buffer.from(bytes));
    }));
  });
});

describe('checks on what the child sends', () => {
  it.each([
    ['an unknown type', { t: 'hello' }],
    ['no type', {}],
    ['a reply without an id', { t: 'reply', value: 1 }],
    ['a reply id of 0', { t: 'reply', id: 0 }],
    ['an error without a message', { t: 'failed', error: { name: 'ConfigError' } }],
    ['an overlong error name', { t: 'failed', error: { name: 'x'.repeat(65), message: '' } }],
    ['an errno out of range', { t: 'failed', error: { name: 'NativeError', message: '', errno: 70000 } }],
    ['a bad exit reason', { t: 'exited', info: { reason: 'crashed' } }],
    ['a rip that is not a u64', { t: 'exited', info: { reason: 'error', rip: '18446744073709551616' } }],
    ['a rip in hex', { t: 'exited', info: { reason: 'error', rip: '0x10' } }],
    ['instruction bytes that are not hex', { t: 'exited', info: { reason: 'error', instructionBytes: '<script>' } }],
    ['too many close errors', { t: 'exited', info: { reason: 'stopped', closeErrors: Array.from({ length: 65 }, () => ({ id: 'a', error: 'b' })) } }],
    ['a cmdline of 5000 characters', { t: 'started', cmdline: 'x'.repeat(5000) }],
    ['a bootDone count of 0', { t: 'bootDone', info: { elapsedUs: 1, count: 0 } }],
    ['an array', []],
    ['a reply value nested too deeply', { t: 'reply', id: 1, value: JSON.parse('['.repeat(20) + ']'.repeat(20)) }],
    ['a reply value with an overlong string', { t: 'reply', id: 1, value: { a: 'x'.repeat(10000) } }],
    ['a vsock port beyond u32', { t: 'vsockIncoming', conn: 1, port: 2 ** 32 }],
    ['a vsock connection without a number', { t: 'vsockIncoming', port: 80 }],
    ['a vsock forward to a port beyond u32', { t: 'vsockUdsConnect', id: 1, port: -1 }],
    ['a vsock forward without an id', { t: 'vsockUdsConnect', port: 80 }],
  ])('refuses %s', (_what, msg) => {
    expect(() => checkChildMessage(msg, Buffer.alloc(0))).toThrow(ProtocolViolation);
  });

  it('refuses serial output without bytes and takes it with them', () => {
    expect(() => checkChildMessage({ t: 'serial' }, Buffer.alloc(0))).toThrow(ProtocolViolation);
    expect(checkChildMessage({ t: 'serial' }, Buffer.from('hi'))).toEqual({ t: 'serial', bytes: Buffer.from('hi') });
  });

  it('bounds reply values by total size too', () => {
    const wide = Object.fromEntries(Array.from({ length: 25000 }, (_v, i) => [`k${i}`, i]));
    expect(() => boundedJson(wide, 'v')).toThrow(/too large/);
    expect(boundedJson({ a: [1, 'b', null, true] }, 'v')).toEqual({ a: [1, 'b', null, true] });
  });

  it('carries an exit info across, rip as a bigint, and drops what the child may not say (signal)', () => {
    const info: ExitInfo = { reason: 'error', vcpu: 1, message: 'm', rip: 0xffffffff81000000n, instructionBytes: '0f 0b', kvmExitReason: 17, closeErrors: [{ id: 'd', error: 'e' }] };
    const wire = JSON.parse(JSON.stringify(wireExitInfo(info)));
    expect(checkExitInfo(wire)).toEqual(info);
    expect(checkExitInfo({ reason: 'stopped', signal: 'SIGKILL' })).toEqual({ reason: 'stopped' });
  });

  it('turns errors back into the same classes with their codes and details', () => {
    const roundTrip = (e: Error) => fromWireError(JSON.parse(JSON.stringify(toWireError(e))));
    const c = roundTrip(new ConfigError('DRIVE_NOT_FOUND', 'gone'));
    expect(c).toBeInstanceOf(ConfigError);
    expect(c).toMatchObject({ code: 'DRIVE_NOT_FOUND', message: 'gone' });
    const s = roundTrip(new SnapshotError('NOT_PAUSED', 'pause first', { field: 'state', expected: 'paused', actual: 'running' }));
    expect(s).toBeInstanceOf(SnapshotError);
    expect(s).toMatchObject({ code: 'NOT_PAUSED', field: 'state', expected: 'paused', actual: 'running' });
    const n = roundTrip(new NativeError('EINVAL', 'bad', 'KVM_SET_REGS', 22));
    expect(n).toMatchObject({ name: 'NativeError', code: 'EINVAL', ioctl: 'KVM_SET_REGS', errno: 22 });
    const other = roundTrip(new TypeError('x is not a function'));
    expect(other).toBeInstanceOf(JailError);
    expect(other).toMatchObject({ code: 'CHILD_ERROR', message: 'TypeError: x is not a function' });
  });
});

/** A scripted child on the other end of a real stream socket pair. */
class FakeChild {
  readonly parentEnd: net.Socket;
  readonly childEnd: net.Socket;
  readonly received: Record<string, unknown>[] = [];
  killed = 0;
  /** The descriptor socket's two ends (SOCK_SEQPACKET): the parent sends on [0]. */
  readonly fds: [number, number] = loadNative().socketPair('seqpacket');
  private endResolve!: (end: ChildEnd) => void;
  readonly ended = new Promise<ChildEnd>((resolve) => { this.endResolve = resolve; });
  onMessage: (m: Record<string, unknown>, bytes: Buffer) => void = () => undefined;

  constructor() {
    const addon = loadNative();
    const [a, b] = addon.socketPair('stream');
    this.parentEnd = new net.Socket({ fd: a, readable: true, writable: true });
    this.childEnd = new net.Socket({ fd: b, readable: true, writable: true });
    const r = new FrameReader(1 << 24, (json, bytes) => {
      this.received.push(json as Record<string, unknown>);
      this.onMessage(json as Record<string, unknown>, bytes);
    }, () => undefined);
    this.childEnd.on('data', (c: Buffer) => r.push(c));
    this.childEnd.on('error', () => undefined);
  }

  send(m: object, bytes?: Uint8Array): void {
    this.childEnd.write(encodeFrame(m, bytes));
  }

  raw(b: Buffer): void {
    this.childEnd.write(b);
  }

  /** Ends like a process: the socket closes, the launcher reports. */
  die(end: ChildEnd): void {
    this.childEnd.end(() => this.endResolve(end));
  }

  get jail(): JailChild {
    return {
      control: this.parentEnd,
      ended: this.ended,
      pid: 4242,
      root: '/nonexistent-jail/root',
      cgroups: { dirs: [], versions: [] },
      fdSocket: this.fds[0],
      stderrTail: 'the stderr tail',
      kill: () => {
        this.killed++;
        this.die({ code: null, signal: 'SIGKILL' });
      },
      cleanup: async () => [],
      oomKills: () => 0,
      hold: () => undefined,
    };
  }
}

describe('RemoteMachineHandle against a stand-in child', () => {
  const config = initialConfig({ id: 'fake' });
  config.kernel = { path: '/k', cmdline: '' };

  function handle(child: FakeChild, events: Partial<MachineEvents> = {}, timeouts = { call: 2000, ready: 2000 }) {
    const exits: ExitInfo[] = [];
    const serial: string[] = [];
    const ev: MachineEvents = {
      serialOutput: (b) => serial.push(Buffer.from(b).toString()),
      serialInputSpace: () => undefined,
      exited: (i) => exits.push(i),
      ...events,
    };
    const h = new RemoteMachineHandle(child.jail, config, { addon: loadNative(), addonPath: '', jail: {} as never, timeouts }, ev);
    return { h, exits, serial };
  }

  async function started(child: FakeChild, h: RemoteMachineHandle): Promise<void> {
    child.send({ t: 'ready' });
    await h.ready();
    const begun = h.begin({ t: 'start' });
    child.send({ t: 'started', cmdline: 'console=ttyS0' });
    await begun;
  }

  it('forwards events and answers calls; the exit report ends it, with the final counters', async () => {
    const child = new FakeChild();
    const { h, exits, serial } = handle(child);
    await started(child, h);
    expect(h.cmdline).toBe('console=ttyS0');
    child.onMessage = (m, bytes) => {
      if (m.op === 'serialInput') child.send({ t: 'reply', id: m.id, value: bytes.length - 1 });
      if (m.op === 'pause') child.send({ t: 'reply', id: m.id });
    };
    child.send({ t: 'serial' }, Buffer.from('hello'));
    expect(await h.serialInput(Buffer.from('abc'))).toBe(2);
    await h.pause();
    expect(serial.join('')).toBe('hello');
    const metrics = { exits: {}, serial: {}, i8042: {}, drives: {}, devices: {}, closeErrors: 0 };
    child.send({ t: 'exited', info: { reason: 'reset' }, metrics });
    child.die({ code: 0, signal: null });
    expect(await h.stop()).toEqual({ reason: 'reset' });
    expect(exits).toEqual([{ reason: 'reset' }]);
    expect(await h.metrics()).toEqual(metrics);
    await expect(h.pause()).resolves.toBeUndefined();
  });

  it('a protocol violation kills the child and ends the VM with reason error; waiting calls fail', async () => {
    const child = new FakeChild();
    const { h, exits } = handle(child);
    await started(child, h);
    const pending = h.metrics();
    child.raw(Buffer.from([0xff, 0xff, 0xff, 0x7f]));
    await expect(pending).rejects.toMatchObject({ name: 'JailError', code: 'CHILD_EXITED' });
    const info = await h.exited;
    expect(child.killed).toBe(1);
    expect(info).toMatchObject({ reason: 'error', signal: 'SIGKILL' });
    expect(info.message).toMatch(/broke the control protocol \(frame of \d+ bytes/);
    expect(exits).toHaveLength(1);
  });

  it('vsock: a guest connection to a listened port gets a socket pair; any other is refused without a descriptor', async () => {
    const child = new FakeChild();
    const { h } = handle(child);
    await started(child, h);
    const addon = loadNative();
    // No vsock at all: refused.
    const until = async (ok: () => boolean) => {
      for (let waited = 0; !ok(); waited += 5) {
        if (waited > 5000) throw new Error('the handle did not answer the child');
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const attachCount = () => child.received.filter((m) => m.t === 'vsockAttach').length;
    child.send({ t: 'vsockIncoming', conn: 1, port: 7000 });
    await until(() => attachCount() === 1);
    const vsock = new RemoteVsock();
    const accepted: net.Socket[] = [];
    vsock.listen(7000, (s) => accepted.push(s as net.Socket));
    child.onMessage = (m) => { if (m.op === 'vsockListen') child.send({ t: 'reply', id: m.id }); };
    h.attachVsock(vsock);
    child.send({ t: 'vsockIncoming', conn: 2, port: 7001 });
    child.send({ t: 'vsockIncoming', conn: 3, port: 7000 });
    await until(() => attachCount() === 3);
    const attaches = child.received.filter((m) => m.t === 'vsockAttach');
    expect(attaches.slice(0, 2)).toEqual([{ t: 'vsockAttach', conn: 1 }, { t: 'vsockAttach', conn: 2 }]);
    expect(attaches[2]).toMatchObject({ conn: 3, files: expect.any(Number) });
    // The child's end arrives on the descriptor socket; bytes written there reach the listener's socket.
    const batch = addon.receiveFds(child.fds[1], 1 << 16, 4)!;
    expect(JSON.parse(batch.data.toString()).items).toEqual([expect.objectContaining({ kind: 'vsock', path: 'in:3' })]);
    expect(batch.fds).toHaveLength(1);
    const childEnd = new net.Socket({ fd: batch.fds[0], readable: true, writable: true, allowHalfOpen: true });
    expect(accepted).toHaveLength(1);
    const got = new Promise<string>((resolve) => {
      let acc = '';
      accepted[0].on('data', (d: Buffer) => { acc += d.toString(); });
      accepted[0].on('end', () => resolve(acc));
    });
    childEnd.end('from the guest');
    expect(await got).toBe('from the guest');
    accepted[0].destroy();
    childEnd.destroy();
    expect(() => vsock.listen(7000, () => undefined)).toThrow(expect.objectContaining({ code: 'PORT_IN_USE' }));
    expect(() => vsock.listen(-1, () => undefined)).toThrow(expect.objectContaining({ code: 'BAD_PORT' }));
    await expect(new RemoteVsock().connect(5)).rejects.toMatchObject({ code: 'CLOSED' });
    child.send({ t: 'exited', info: { reason: 'stopped' } });
    child.die({ code: 0, signal: null });
    await h.exited;
    addon.closeFd(child.fds[0]);
    addon.closeFd(child.fds[1]);
  });

  it(`vsock: at most ${MAX_BRIDGED_CONNECTIONS} bridged connections are held open; more are refused`, () => {
    const vsock = new RemoteVsock();
    const sockets: net.Socket[] = [];
    vsock.listen(1, (sock) => sockets.push(sock as net.Socket));
    const addon = loadNative();
    const ends: number[] = [];
    for (let i = 0; i < MAX_BRIDGED_CONNECTIONS; i++) {
      const take = vsock.acceptor(1);
      expect(take).not.toBeNull();
      const [a, b] = addon.socketPair('stream');
      ends.push(b);
      take!(a);
    }
    expect(vsock.acceptor(1)).toBeNull();
    expect(vsock.acceptor(2)).toBeNull();
    for (const b of ends) addon.closeFd(b);
    for (const sock of sockets) sock.destroy();
  });

  it('vsock udsPath: the child asks by port only; the parent refuses without a udsPath and connects <udsPath>_<port> with one', async () => {
    const requests: string[] = [];
    const host = {
      timers: { setTimeout: () => 0, clearTimeout: () => undefined },
      listenUnix: async () => ({ close: async () => undefined }),
      connectUnix: async (p: string) => {
        requests.push(p);
        if (!p.endsWith('_80')) throw new Error('ECONNREFUSED');
        const [a, b] = loadNative().socketPair('stream');
        loadNative().closeFd(b);
        return new net.Socket({ fd: a, readable: true, writable: true });
      },
    };
    expect(await new RemoteVsock(undefined, host).udsConnect(80)).toBeNull();
    const remote = new RemoteVsock('/run/fn/v.sock', host);
    expect(await remote.udsConnect(81)).toBeNull();
    const client = await remote.udsConnect(80);
    expect(client).not.toBeNull();
    client!.destroy();
    expect(await remote.udsConnect(2 ** 32)).toBeNull();
    expect(requests).toEqual(['/run/fn/v.sock_81', '/run/fn/v.sock_80']);

    const asked: [number, number][] = [];
    const closed: number[] = [];
    const child = new ChildVsockHost('/run/fn/v.sock', (id, port) => asked.push([id, port]), (fd) => closed.push(fd));
    await expect(child.connectUnix('/etc/passwd')).rejects.toMatchObject({ code: 'UDS_FAILED' });
    await expect(child.connectUnix('/run/fn/v.sock_x')).rejects.toMatchObject({ code: 'UDS_FAILED' });
    const refused = child.connectUnix('/run/fn/v.sock_52');
    expect(asked).toEqual([[0, 52]]);
    child.connected(0, null);
    await expect(refused).rejects.toMatchObject({ code: 'UDS_FAILED' });
    // An answer nobody waits for: its descriptor is closed.
    child.connected(7, 123456);
    expect(closed).toEqual([123456]);
  });

  it('output read together with started reaches the caller after start() resolved, not before', async () => {
    const child = new FakeChild();
    const serial: string[] = [];
    let live = false;
    const { h } = handle(child, { serialOutput: (b) => { if (live) serial.push(Buffer.from(b).toString()); } });
    child.send({ t: 'ready' });
    await h.ready();
    const begun = h.begin({ t: 'start' });
    // One write: the parent reads both frames in one chunk.
    child.raw(Buffer.concat([encodeFrame({ t: 'started', cmdline: '' }), encodeFrame({ t: 'serial' }, Buffer.from('first bytes'))]));
    await begun;
    live = true; // what a caller does once start() has resolved: attach its listener
    await new Promise((r) => setImmediate(r));
    expect(serial.join('')).toBe('first bytes');
    child.send({ t: 'exited', info: { reason: 'stopped' } });
    child.die({ code: 0, signal: null });
    await h.exited;
  });

  it('a reply to a call nobody made is a violation too', async () => {
    const child = new FakeChild();
    const { h } = handle(child);
    await started(child, h);
    child.send({ t: 'reply', id: 99, value: 1 });
    expect((await h.exited).message).toMatch(/reply to call 99, which is not waiting/);
  });

  it('a child that does not answer in time is killed: UNRESPONSIVE', async () => {
    const child = new FakeChild();
    const { h } = handle(child, {}, { call: 200, ready: 2000 });
    await started(child, h);
    await expect(h.resume()).rejects.toMatchObject({ code: 'UNRESPONSIVE' });
    const info = await h.exited;
    expect(info).toMatchObject({ reason: 'error', signal: 'SIGKILL' });
    expect(info.message).toMatch(/did not answer resume within 200 ms/);
  });

  it('a child that dies is reported with its signal and the end of its stderr', async () => {
    const child = new FakeChild();
    const { h, exits } = handle(child);
    await started(child, h);
    child.die({ code: null, signal: 'SIGSYS' });
    const info = await h.exited;
    expect(info).toMatchObject({ reason: 'error', signal: 'SIGSYS' });
    expect(info.message).toMatch(/killed by SIGSYS; its stderr ends: the stderr tail/);
    expect(exits).toEqual([info]);
    await expect(h.metrics()).rejects.toBeInstanceOf(ConfigError);
  });

  it('a child that ends while starting fails the start with LAUNCH_FAILED', async () => {
    const child = new FakeChild();
    const { h, exits } = handle(child);
    const ready = h.ready();
    child.die({ code: 1, signal: null, setupError: 'pivot_root: EINVAL' });
    await expect(ready).rejects.toMatchObject({ code: 'LAUNCH_FAILED', message: expect.stringMatching(/pivot_root: EINVAL/) });
    expect(exits).toEqual([]);
  });

  it('a failed start carries the child\'s error class', async () => {
    const child = new FakeChild();
    const { h } = handle(child);
    child.send({ t: 'ready' });
    await h.ready();
    const begun = h.begin({ t: 'start' });
    child.send({ t: 'failed', error: { name: 'BootError', code: 'BAD_IMAGE', message: 'not an ELF' } });
    await expect(begun).rejects.toMatchObject({ name: 'BootError', code: 'BAD_IMAGE' });
    child.die({ code: 0, signal: null });
  });

  it('random frames from the child never throw out of the handle', async () => {
    await fc.assert(fc.asyncProperty(fc.array(fc.jsonValue(), { maxLength: 6 }), async (msgs) => {
      const child = new FakeChild();
      const { h } = handle(child);
      await started(child, h);
      for (const m of msgs) child.send(m as object);
      child.die({ code: 0, signal: null });
      const info = await h.exited;
      expect(['error', 'reset', 'shutdown', 'stopped']).toContain(info.reason);
    }), { numRuns: 25 });
  });
});
