import fc from 'fast-check';
import { Duplex } from 'stream';
import {
  FRAME_HEADER_SIZE,
  FRAME_KIND,
  FrameDecoder,
  InvokeClient,
  InvokeError,
  Invoker,
  encodeFrame,
  encodeFrameHeader,
  type Frame,
} from '../../lib/invoke';
import { checkVsockOptions, createVsockDevice, type VsockDevice } from '../../lib/devices/vsock';
import { MockVsockGuest } from '../../lib/testing/mock-vsock';
import { MockGuestAgent, echoHandler, type AgentReply } from '../../lib/testing/mock-agent';
import { FakeTime } from './helpers/fake-time';

/** Two connected in-memory streams (half-open, like sockets). */
function duplexPair(): [Duplex, Duplex] {
  const make = (peer: () => Duplex) =>
    new Duplex({
      allowHalfOpen: true,
      read() {},
      write(chunk, _enc, cb) {
        peer().push(chunk);
        cb();
      },
      final(cb) {
        peer().push(null);
        cb();
      },
      destroy(err, cb) {
        if (!peer().destroyed) peer().destroy();
        cb(err);
      },
    });
  const a: Duplex = make(() => b);
  const b: Duplex = make(() => a);
  return [a, b];
}

/** A host-side fake agent on the other end of a duplex pair. */
function fakeAgent(stream: Duplex, handler: (f: Frame) => AgentReply | 'close' = echoHandler): void {
  const dec = new FrameDecoder();
  stream.on('data', (c: Buffer) => {
    for (const f of dec.push(c)) {
      const r = handler(f);
      if (r === 'silent') continue;
      if (r === 'crash' || r === 'close') {
        if (r === 'crash') stream.destroy();
        else stream.end();
        return;
      }
      stream.write(r === 'garbage' ? Buffer.from('nonsense bytes') : encodeFrame(r.kind, f.id, r.payload));
    }
  });
  stream.on('error', () => {});
}

function clientWith(handler?: (f: Frame) => AgentReply | 'close', opts: { maxPayload?: number; poolSize?: number; timers?: FakeTime } = {}) {
  let opened = 0;
  const client = new InvokeClient({
    connect: async () => {
      opened++;
      const [mine, theirs] = duplexPair();
      fakeAgent(theirs, handler);
      return mine;
    },
    ...opts,
  });
  return { client, opened: () => opened };
}

describe('invoke framing', () => {
  test('header layout', () => {
    const h = encodeFrameHeader(FRAME_KIND.REQUEST_JSON, 0x01020304, 0x0a0b0c0d);
    expect([...h]).toEqual([0x4b, 0x49, 1, 1, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a]);
  });

  test('frames survive any chunking (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ kind: fc.constantFrom(...Object.values(FRAME_KIND)), id: fc.integer({ min: 0, max: 0xffffffff }), payload: fc.uint8Array({ maxLength: 300 }) }), { maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          const wire = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.id, f.payload)));
          const dec = new FrameDecoder(1000);
          const got: Frame[] = [];
          let at = 0;
          for (let i = 0; at < wire.length; i++) {
            const n = cuts[i % cuts.length];
            got.push(...dec.push(wire.subarray(at, at + n)));
            at += n;
          }
          if (got.length !== frames.length || !dec.idle) throw new Error('frame count');
          got.forEach((g, i) => {
            if (g.kind !== frames[i].kind || g.id !== frames[i].id || !Buffer.from(frames[i].payload).equals(g.payload)) throw new Error(`frame ${i} differs`);
          });
        },
      ),
      { numRuns: 5000 },
    );
  });

  test('malformed headers are refused at once, oversize lengths before any payload is read (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: FRAME_HEADER_SIZE, maxLength: 40 }), (bytes) => {
        const dec = new FrameDecoder(64);
        const h = Buffer.from(bytes);
        const okMagic = h[0] === 0x4b && h[1] === 0x49 && h[2] === 1 && Object.values(FRAME_KIND).includes(h[3] as never);
        const len = h.readUInt32LE(8);
        let err: unknown = null;
        try {
          dec.push(h);
        } catch (e) {
          err = e;
        }
        if (!okMagic) {
          if (!(err instanceof InvokeError) || err.code !== 'PROTOCOL') throw new Error('expected PROTOCOL');
        } else if (len > 64) {
          if (!(err instanceof InvokeError) || err.code !== 'OVERSIZE') throw new Error('expected OVERSIZE');
        } else if (err !== null) throw err;
        // A failed decoder stays failed.
        if (err !== null) expect(() => dec.push(Buffer.alloc(1))).toThrow(InvokeError);
        // Held bytes never exceed one header and one payload.
        if (dec.buffered > FRAME_HEADER_SIZE + 64) throw new Error('unbounded buffering');
      }),
      { numRuns: 20000 },
    );
  });

  test('a truncated frame is held, not returned', () => {
    const wire = encodeFrame(FRAME_KIND.REQUEST_BYTES, 7, Buffer.from('abcdef'));
    const dec = new FrameDecoder();
    expect(dec.push(wire.subarray(0, wire.length - 1))).toEqual([]);
    expect(dec.idle).toBe(false);
    expect(dec.push(wire.subarray(wire.length - 1))).toHaveLength(1);
  });
});

describe('invoke client', () => {
  test('JSON, bytes and strings; the connection is reused', async () => {
    const { client, opened } = clientWith();
    await expect(client.invoke({ hello: 'world', n: [1, 2] })).resolves.toEqual({ hello: 'world', n: [1, 2] });
    const bytes = await client.invoke(Buffer.from([0, 1, 2, 255]));
    expect(Buffer.isBuffer(bytes)).toBe(true);
    expect([...(bytes as Buffer)]).toEqual([0, 1, 2, 255]);
    await expect(client.invoke('text')).resolves.toEqual(Buffer.from('text'));
    await expect(client.invoke(null)).resolves.toBeNull();
    await expect(client.invoke(Buffer.alloc(0))).resolves.toEqual(Buffer.alloc(0));
    expect(opened()).toBe(1);
    expect(client.metrics()).toMatchObject({ invocations: 5, responses: 5, reused: 4, openConnections: 1 });
    client.close();
  });

  test('concurrent invocations use up to poolSize connections, the rest wait', async () => {
    const { client, opened } = clientWith(echoHandler, { poolSize: 2 });
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => client.invoke({ i })));
    expect(results).toEqual(Array.from({ length: 10 }, (_, i) => ({ i })));
    expect(opened()).toBe(2);
    client.close();
  });

  test('agent error frame: AGENT_ERROR; the connection is retired (the agent may close it), the next call opens another', async () => {
    const { client, opened } = clientWith((f) => (f.payload.toString() === 'fail' ? { kind: FRAME_KIND.ERROR, payload: Buffer.from('handler exited with 3') } : echoHandler(f)));
    await expect(client.invoke('fail')).rejects.toMatchObject({ code: 'AGENT_ERROR', message: expect.stringContaining('exited with 3') });
    await expect(client.invoke({ ok: 1 })).resolves.toEqual({ ok: 1 });
    expect(opened()).toBe(2);
    client.close();
  });

  test('agent crash: AGENT_CLOSED; the next invocation opens a new connection', async () => {
    let crash = true;
    const { client, opened } = clientWith((f) => (crash ? ((crash = false), 'crash') : echoHandler(f)));
    await expect(client.invoke({ a: 1 })).rejects.toMatchObject({ name: 'InvokeError', code: 'AGENT_CLOSED' });
    await expect(client.invoke({ a: 2 })).resolves.toEqual({ a: 2 });
    expect(opened()).toBe(2);
    client.close();
  });

  test('agent closes its end cleanly before answering: AGENT_CLOSED', async () => {
    const { client } = clientWith(() => 'close');
    await expect(client.invoke({ a: 1 })).rejects.toMatchObject({ code: 'AGENT_CLOSED' });
    client.close();
  });

  test('timeout: TIMEOUT, the connection is dropped (a late answer is never taken for the next request)', async () => {
    const time = new FakeTime();
    const held: { send: (() => void) | null } = { send: null };
    let opened = 0;
    const client = new InvokeClient({
      timers: time,
      connect: async () => {
        opened++;
        const [mine, theirs] = duplexPair();
        const dec = new FrameDecoder();
        theirs.on('data', (c: Buffer) => {
          for (const f of dec.push(c)) {
            if (opened === 1) held.send = () => theirs.write(encodeFrame(FRAME_KIND.RESPONSE_JSON, f.id, Buffer.from('"late"')));
            else theirs.write(encodeFrame(FRAME_KIND.RESPONSE_JSON, f.id, f.payload));
          }
        });
        theirs.on('error', () => {});
        return mine;
      },
    });
    const p = client.invoke({ n: 1 }, { timeoutMs: 100 });
    await new Promise((r) => setImmediate(r));
    time.advance(100);
    await expect(p).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(held.send).not.toBeNull();
    held.send!();
    await expect(client.invoke({ n: 2 })).resolves.toEqual({ n: 2 });
    expect(opened).toBe(2);
    expect(client.metrics().timeouts).toBe(1);
    client.close();
  });

  test('oversize: a large request is refused before sending; an oversize response header fails the call', async () => {
    const { client, opened } = clientWith((f) => ({ kind: FRAME_KIND.RESPONSE_BYTES, payload: Buffer.alloc(f.payload.length * 2) }), { maxPayload: 100 });
    await expect(client.invoke(Buffer.alloc(101))).rejects.toMatchObject({ code: 'OVERSIZE' });
    expect(opened()).toBe(0);
    await expect(client.invoke(Buffer.alloc(60))).rejects.toMatchObject({ code: 'OVERSIZE' });
    await expect(client.invoke(Buffer.alloc(10))).resolves.toHaveLength(20);
    client.close();
  });

  test('protocol errors: garbage, wrong id, unparsable JSON', async () => {
    const garbage = clientWith(() => 'garbage').client;
    await expect(garbage.invoke({})).rejects.toMatchObject({ code: 'PROTOCOL' });
    garbage.close();
    const wrongId = new InvokeClient({
      connect: async () => {
        const [mine, theirs] = duplexPair();
        const dec = new FrameDecoder();
        theirs.on('data', (c: Buffer) => dec.push(c).forEach((f) => theirs.write(encodeFrame(FRAME_KIND.RESPONSE_JSON, f.id + 1, f.payload))));
        theirs.on('error', () => {});
        return mine;
      },
    });
    await expect(wrongId.invoke({})).rejects.toMatchObject({ code: 'PROTOCOL' });
    wrongId.close();
    const badJson = clientWith((f) => ({ kind: FRAME_KIND.RESPONSE_JSON, payload: Buffer.from('{nope') })).client;
    await expect(badJson.invoke({})).rejects.toMatchObject({ code: 'BAD_RESPONSE' });
    badJson.close();
    const requestKind = clientWith((f) => ({ kind: FRAME_KIND.REQUEST_JSON, payload: f.payload })).client;
    await expect(requestKind.invoke({})).rejects.toMatchObject({ code: 'PROTOCOL' });
    requestKind.close();
  });

  test('unencodable payloads and failed connects are typed', async () => {
    const { client } = clientWith();
    await expect(client.invoke({ n: 1n } as unknown as object)).rejects.toMatchObject({ code: 'BAD_PAYLOAD' });
    await expect(client.invoke(undefined as unknown as object)).rejects.toMatchObject({ code: 'BAD_PAYLOAD' });
    client.close();
    await expect(client.invoke({})).rejects.toMatchObject({ code: 'CLOSED' });
    const refused = new InvokeClient({ connect: () => Promise.reject(new Error('refused')) });
    await expect(refused.invoke({})).rejects.toMatchObject({ code: 'CONNECT_FAILED' });
  });
});

describe('invoke through the vsock device (mock driver, mock guest agent)', () => {
  function vsockRig(handler?: (f: Frame) => AgentReply) {
    const device: VsockDevice = createVsockDevice(checkVsockOptions({ guestCid: 3 }), {
      timers: { setTimeout: (cb, ms) => setTimeout(cb, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
      listenUnix: () => Promise.reject(new Error('x')),
      connectUnix: () => Promise.reject(new Error('x')),
    });
    const guest = new MockVsockGuest(device);
    const agent = new MockGuestAgent(guest, 1024, handler).attach();
    const invoker = new Invoker((port) => device.connect(port, { timeoutMs: 1000 }));
    return { device, guest, agent, invoker };
  }

  test('round trips reuse one vsock connection', async () => {
    const { device, agent, invoker } = vsockRig();
    for (let i = 0; i < 20; i++) await expect(invoker.invoke({ i, text: 'x'.repeat(i * 500) })).resolves.toEqual({ i, text: 'x'.repeat(i * 500) });
    const big = Buffer.alloc(300_000, 7);
    await expect(invoker.invoke(big)).resolves.toEqual(big);
    expect(agent.answered).toBe(21);
    expect(device.metrics().hostConnections).toBe(1);
    expect(invoker.metrics()[1024]).toMatchObject({ connectionsOpened: 1, responses: 21 });
    invoker.close();
    await device.close();
  });

  test('no agent on the port: CONNECT_FAILED; agent crash: AGENT_CLOSED', async () => {
    let crash = false;
    const { device, invoker } = vsockRig((f) => (crash ? 'crash' : echoHandler(f)));
    await expect(invoker.invoke({}, { port: 4242 })).rejects.toMatchObject({ code: 'CONNECT_FAILED', cause: expect.objectContaining({ code: 'CONNECTION_REFUSED' }) });
    await expect(invoker.invoke({ a: 1 })).resolves.toEqual({ a: 1 });
    crash = true;
    await expect(invoker.invoke({ a: 2 })).rejects.toMatchObject({ code: 'AGENT_CLOSED' });
    crash = false;
    await expect(invoker.invoke({ a: 3 })).resolves.toEqual({ a: 3 });
    invoker.close();
    await device.close();
  });
});
