import {
  MmdsStore,
  MmdsError,
  mergePatch,
  parseHttpRequest,
  answerMmds,
  mmdsStreamHandler,
  formatImds,
  TcpResponder,
  MmdsStack,
  MMDS_MAC,
  checkMmdsOptions,
  checkNicOptions,
  createNetDevice,
  type HttpRequest,
  type OutboundSegment,
  type InboundSegment,
  type StreamStep,
} from '../../lib/devices/net';
import { newHttpCounters } from '../../lib/devices/net/mmds/http';
import { TCP_MAX_RETRANSMITS, TCP_IDLE_TIMEOUT_MS } from '../../lib/devices/net/mmds/tcp';
import {
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  buildArpRequest,
  buildTcpFrame,
  parseArp,
  parseIpv4,
  parseTcp,
  ARP_OP_REPLY,
} from '../../lib/devices/net/mmds/packet';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver } from '../../lib/testing/mock-driver';
import { GuestTcpClient, MockNetDriver } from '../../lib/testing/mock-net';
import { FakeTime } from './helpers/fake-time';
import { FakeNetHost, ManualScheduler } from './helpers/fake-net';

const enc = (s: string) => new Uint8Array(Buffer.from(s, 'latin1'));
const MMDS_IP = 0xa9fea9fe; // 169.254.169.254
const GUEST_IP = 0xac100002; // 172.16.0.2
const GUEST_MAC = Uint8Array.from([0x06, 0, 0xac, 0x10, 0, 2]);

function store(opts: { version?: 'v1' | 'v2'; sizeLimit?: number; clock?: () => number; maxTokens?: number } = {}): MmdsStore {
  const cfg = checkMmdsOptions({ version: opts.version ?? 'v1', nics: ['eth0'], ...(opts.sizeLimit ? { sizeLimit: opts.sizeLimit } : {}) }, ['eth0']);
  let n = 0;
  return new MmdsStore(cfg, {
    ...(opts.clock ? { clock: opts.clock } : {}),
    random: (len) => Uint8Array.from({ length: len }, () => n++ & 0xff),
    ...(opts.maxTokens ? { maxTokens: opts.maxTokens } : {}),
  });
}

describe('MMDS store', () => {
  it('replaces, patches (RFC 7396) and returns copies', () => {
    const s = store();
    s.set({ a: 'b', c: { d: 'e', f: 'g' } });
    s.patch({ a: 'z', c: { f: null } });
    expect(s.get()).toEqual({ a: 'z', c: { d: 'e' } });
    const copy = s.get() as Record<string, unknown>;
    copy.a = 'mutated';
    expect((s.get() as Record<string, unknown>).a).toBe('z');
    // RFC 7396 appendix A examples.
    expect(mergePatch({ a: ['b'] }, { a: 'c' })).toEqual({ a: 'c' });
    expect(mergePatch({ a: 'foo' }, null)).toBeNull();
    expect(mergePatch({ e: null }, { a: 1 })).toEqual({ e: null, a: 1 });
    expect(mergePatch([1, 2], { a: 'b', c: null })).toEqual({ a: 'b' });
    expect(mergePatch({}, { a: { bb: { ccc: null } } })).toEqual({ a: { bb: {} } });
    const p = mergePatch({}, JSON.parse('{"__proto__": {"x": 1}}')) as Record<string, unknown>;
    expect(Object.keys(p)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('refuses data over the size limit or not an object, keeping the old data', () => {
    const s = store({ sizeLimit: 50 });
    s.set({ k: 'v' });
    expect(() => s.set({ k: 'x'.repeat(60) })).toThrow(expect.objectContaining({ code: 'TOO_LARGE' }));
    expect(() => s.patch({ more: 'y'.repeat(60) })).toThrow(MmdsError);
    expect(() => s.set([1, 2])).toThrow(expect.objectContaining({ code: 'INVALID_DATA' }));
    expect(() => s.set({ n: 1n })).toThrow(expect.objectContaining({ code: 'INVALID_DATA' }));
    expect(() => s.patch('replace everything')).toThrow(expect.objectContaining({ code: 'INVALID_DATA' }));
    const cyc: Record<string, unknown> = {};
    cyc.self = cyc;
    expect(() => s.set(cyc)).toThrow(expect.objectContaining({ code: 'INVALID_DATA' }));
    expect(s.get()).toEqual({ k: 'v' });
    expect(s.metrics().rejectedUpdates).toBe(6);
    // The limit counts UTF-8 bytes of the JSON text.
    expect(() => s.set({ k: 'é'.repeat(25) })).toThrow(expect.objectContaining({ code: 'TOO_LARGE' }));
  });

  it('resolves paths like Firecracker', () => {
    const s = store();
    s.set({ latest: { 'meta-data': { 'ami-id': 'ami-1', list: ['a', 'b'], 'x/y': 'slash' } } });
    expect(s.lookup('/latest/meta-data/ami-id')).toEqual({ found: true, value: 'ami-1' });
    expect(s.lookup('//latest//meta-data/')).toEqual({ found: true, value: expect.any(Object) });
    expect(s.lookup('/latest/meta-data/list/1')).toEqual({ found: true, value: 'b' });
    expect(s.lookup('/latest/meta-data/list/2').found).toBe(false);
    expect(s.lookup('/latest/meta-data/list/01').found).toBe(false);
    expect(s.lookup('/latest/meta-data/x~1y')).toEqual({ found: true, value: 'slash' });
    expect(s.lookup('/nope').found).toBe(false);
    expect(s.lookup('/latest/meta-data/ami-id/deeper').found).toBe(false);
    expect(s.lookup('/').found).toBe(true);
  });

  it('issues tokens that expire with the clock, bounded in number', () => {
    const time = new FakeTime();
    const clock = () => Number(time.now / 1_000_000n);
    const s = store({ version: 'v2', clock, maxTokens: 3 });
    expect(s.issueToken(0)).toBeNull();
    expect(s.issueToken(21601)).toBeNull();
    expect(s.issueToken(1.5)).toBeNull();
    const t1 = s.issueToken(1)!;
    const t2 = s.issueToken(21600)!;
    expect(s.isValidToken(t1)).toBe(true);
    time.advance(999);
    expect(s.isValidToken(t1)).toBe(true);
    time.advance(1);
    expect(s.isValidToken(t1)).toBe(false);
    expect(s.isValidToken(t2)).toBe(true);
    expect(s.isValidToken('x'.repeat(100))).toBe(false);
    // Bound: the fourth live token evicts the one closest to expiry.
    const t3 = s.issueToken(10)!;
    const t4 = s.issueToken(20)!;
    const t5 = s.issueToken(30)!;
    expect(s.isValidToken(t3)).toBe(false);
    expect([t2, t4, t5].every((t) => s.isValidToken(t))).toBe(true);
    expect(s.metrics()).toEqual(expect.objectContaining({ tokensLive: 3, tokensEvicted: 1, tokensIssued: 5 }));
  });

  it('saves data and tokens with their remaining lifetime', () => {
    let now = 1000;
    const s = store({ version: 'v2', clock: () => now });
    s.set({ a: { b: 'c' } });
    const t = s.issueToken(10)!;
    now += 4000;
    const state = JSON.parse(JSON.stringify(s.saveState()));
    let now2 = 50;
    const s2 = new MmdsStore(s.config, { clock: () => now2 });
    s2.restoreState(state);
    expect(s2.get()).toEqual({ a: { b: 'c' } });
    now2 += 5999;
    expect(s2.isValidToken(t)).toBe(true);
    now2 += 1;
    expect(s2.isValidToken(t)).toBe(false);
    const small = store({ sizeLimit: 5 });
    expect(() => small.restoreState(state)).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => s2.restoreState({ data: {}, tokens: [['t', -1]] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
  });
});

describe('HTTP parser', () => {
  it('parses requests, one at a time, with bodies and absolute targets', () => {
    const two = enc('GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAccept: application/json\r\n\r\nPUT /b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc');
    const p1 = parseHttpRequest(two);
    expect(p1.kind).toBe('request');
    if (p1.kind !== 'request') return;
    expect(p1.request.path).toBe('/a');
    expect(p1.request.headers.get('accept')).toBe('application/json');
    const p2 = parseHttpRequest(two.subarray(p1.consumed));
    expect(p2).toEqual(expect.objectContaining({ kind: 'request', consumed: two.length - p1.consumed }));
    if (p2.kind === 'request') {
      expect(p2.request.minor).toBe(0);
      expect(Buffer.from(p2.request.body).toString()).toBe('abc');
    }
    const abs = parseHttpRequest(enc('GET http://169.254.169.254/latest HTTP/1.1\n\n'));
    expect(abs.kind === 'request' && abs.request.path).toBe('/latest');
    expect(parseHttpRequest(enc('\r\n\r\nGET / HTTP/1.1\r\n\r\n')).kind).toBe('request');
  });

  it('waits for more bytes, and refuses malformed and oversize requests', () => {
    expect(parseHttpRequest(enc('GET / HTTP/1.1\r\nHost: x\r\n')).kind).toBe('incomplete');
    expect(parseHttpRequest(enc('PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc')).kind).toBe('incomplete');
    expect(parseHttpRequest(new Uint8Array(0)).kind).toBe('incomplete');
    const status = (s: string) => {
      const p = parseHttpRequest(enc(s));
      return p.kind === 'error' ? p.status : p.kind;
    };
    expect(status('GET /\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/2.0\r\n\r\n')).toBe(400);
    expect(status('G@T / HTTP/1.1\r\n\r\n')).toBe(400);
    expect(status('GET relative HTTP/1.1\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nNoColon\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nName : v\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n')).toBe(400);
    expect(status('GET / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n')).toBe(413);
    expect(status(`GET / HTTP/1.1\r\nX: ${'a'.repeat(9000)}\r\n\r\n`)).toBe(413);
    expect(status(`GET / HTTP/1.1\r\nX: ${'a'.repeat(9000)}`)).toBe(413);
    expect(status(`GET / HTTP/1.1\r\n${'A: b\r\n'.repeat(70)}\r\n`)).toBe(413);
    expect(status('\r\n'.repeat(5000))).toBe(413);
  });
});

describe('MMDS HTTP semantics', () => {
  function req(method: string, path: string, headers: Record<string, string> = {}): HttpRequest {
    return { method, target: path, path, minor: 1, headers: new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v])), body: new Uint8Array(0) };
  }
  const data = { latest: { 'meta-data': { 'ami-id': 'ami-12345678', 'instance-id': 'i-1', network: { mac: 'x' } } }, age: 43, list: [1] };

  it('v1: IMDS text by default, JSON on request, 404, 405, 501', () => {
    const s = store();
    s.set(data);
    const c = newHttpCounters();
    const get = (p: string, h?: Record<string, string>) => answerMmds(s, req('GET', p, h), c);
    expect(get('/latest/meta-data/')).toEqual(expect.objectContaining({ status: 200, body: 'ami-id\ninstance-id\nnetwork/', contentType: 'text/plain' }));
    expect(get('/latest/meta-data/ami-id').body).toBe('ami-12345678');
    expect(get('/latest/meta-data/ami-id', { Accept: 'application/json' }).body).toBe('"ami-12345678"');
    expect(JSON.parse(get('/', { Accept: 'text/plain, application/json' }).body)).toEqual(data);
    expect(get('/missing').status).toBe(404);
    expect(get('/age').status).toBe(501);
    expect(get('/list').status).toBe(501);
    expect(get('/age', { Accept: 'application/json' }).body).toBe('43');
    const post = answerMmds(s, req('POST', '/'), c);
    expect(post.status).toBe(405);
    expect(post.headers).toEqual([['Allow', 'GET, PUT']]);
    // v1 serves without a token and with a bad one.
    expect(get('/age', { Accept: 'application/json', 'X-metadata-token': 'bogus' }).status).toBe(200);
    expect(c).toEqual(expect.objectContaining({ requests: 10, gets: 6, notFound: 1, notImplemented: 2, methodNotAllowed: 1 }));
    expect(formatImds('text')).toBe('text');
    expect(formatImds(null)).toBeNull();
  });

  it('v2: token flow, 401 without or with an invalid or expired token, 400 for bad TTLs', () => {
    let now = 0;
    const s = store({ version: 'v2', clock: () => now });
    s.set(data);
    const c = newHttpCounters();
    const ask = (m: string, p: string, h?: Record<string, string>) => answerMmds(s, req(m, p, h), c);
    expect(ask('GET', '/latest').status).toBe(401);
    expect(ask('GET', '/latest', { 'X-metadata-token': 'nope' }).status).toBe(401);
    expect(ask('PUT', '/latest/api/token').status).toBe(400);
    expect(ask('PUT', '/latest/api/token', { 'X-metadata-token-ttl-seconds': '0' }).status).toBe(400);
    expect(ask('PUT', '/latest/api/token', { 'X-metadata-token-ttl-seconds': '21601' }).status).toBe(400);
    expect(ask('PUT', '/latest/api/token', { 'X-metadata-token-ttl-seconds': 'ten' }).status).toBe(400);
    expect(ask('PUT', '/latest/api/token', { 'X-metadata-token-ttl-seconds': '60', 'X-Forwarded-For': '1.2.3.4' }).status).toBe(400);
    expect(ask('PUT', '/latest/meta-data', { 'X-metadata-token-ttl-seconds': '60' }).status).toBe(404);
    const tok = ask('PUT', '//latest//api/token', { 'X-metadata-token-ttl-seconds': '60' });
    expect(tok.status).toBe(200);
    expect(tok.headers).toEqual([['X-metadata-token-ttl-seconds', '60']]);
    expect(ask('GET', '/latest/meta-data/ami-id', { 'X-metadata-token': tok.body }).body).toBe('ami-12345678');
    expect(ask('GET', '/latest/meta-data/ami-id', { 'X-aws-ec2-metadata-token': tok.body }).status).toBe(200);
    now += 60_000;
    expect(ask('GET', '/latest/meta-data/ami-id', { 'X-metadata-token': tok.body }).status).toBe(401);
    const aws = ask('PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': '5' });
    expect(aws.status).toBe(200);
    expect(c.unauthorized).toBe(3);
    expect(c.tokens).toBe(2);
  });

  it('as a stream handler: keep-alive, Connection: close, HTTP/1.0, errors close', () => {
    const s = store();
    s.set(data);
    const h = mmdsStreamHandler(s, newHttpCounters());
    const one = h(enc('GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\nGET /'));
    expect(one.close).toBe(false);
    expect(Buffer.from(one.reply!).toString()).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*Content-Length: 2\r\n\r\n43$/);
    expect(h(enc('GET /age HTTP/1.1\r\nConnection: close\r\n\r\n')).close).toBe(true);
    expect(h(enc('GET /age HTTP/1.0\r\n\r\n')).close).toBe(true);
    expect(h(enc('GET /age HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')).close).toBe(false);
    const bad = h(enc('BROKEN\r\n\r\n'));
    expect(bad.close).toBe(true);
    expect(Buffer.from(bad.reply!).toString()).toMatch(/^HTTP\/1\.1 400 Bad Request/);
    expect(h(enc('GET / HTTP/1.1\r\n')).consumed).toBe(0);
  });
});

/** A hand-driven TCP peer for the responder. */
class Peer {
  seq: number;
  ack = 0;
  constructor(
    readonly port: number,
    iss = 5000,
    readonly ip = GUEST_IP,
  ) {
    this.seq = iss;
  }
  seg(flags: number, payload = new Uint8Array(0), over: Partial<InboundSegment> = {}): InboundSegment {
    return { srcIp: this.ip, srcMac: GUEST_MAC, srcPort: this.port, dstPort: 80, seq: this.seq, ack: this.ack, flags, window: 65535, payload, ...over };
  }
}

interface TcpRig {
  tcp: TcpResponder;
  out: OutboundSegment[];
  time: FakeTime;
  now: () => number;
  handled: string[];
}

function tcpRig(handler?: (input: Uint8Array) => StreamStep, opts: { maxConnections?: number; maxRecvBuffer?: number; mss?: number } = {}): TcpRig {
  const time = new FakeTime(0);
  const now = () => Number(time.now / 1_000_000n);
  const out: OutboundSegment[] = [];
  const handled: string[] = [];
  // Default handler: a line protocol; "bye" closes, each line answered with its upper case.
  const lines = (input: Uint8Array): StreamStep => {
    const s = Buffer.from(input).toString('latin1');
    const nl = s.indexOf('\n');
    if (nl < 0) return { consumed: 0 };
    const line = s.slice(0, nl);
    handled.push(line);
    return { consumed: nl + 1, reply: enc(line.toUpperCase() + '\n'), close: line === 'bye' };
  };
  let r = 7;
  const tcp = new TcpResponder({
    localPort: 80,
    mss: opts.mss ?? 1460,
    maxConnections: opts.maxConnections ?? 30,
    maxRecvBuffer: opts.maxRecvBuffer ?? 16384,
    handler: handler ?? lines,
    emit: (s) => out.push(s),
    clock: now,
    timers: time,
    random: () => (r = (r * 1103515245 + 12345) >>> 0),
  });
  return { tcp, out, time, now, handled };
}

/** Opens a connection: SYN, SYN-ACK, ACK. Returns the server's initial sequence + 1. */
function open(r: TcpRig, p: Peer): number {
  r.tcp.input(p.seg(TCP_SYN, undefined, { mss: 1000 }));
  const sa = r.out.pop()!;
  expect(sa.flags).toBe(TCP_SYN | TCP_ACK);
  expect(sa.ack).toBe((p.seq + 1) >>> 0);
  expect(sa.mss).toBe(1460);
  p.seq = (p.seq + 1) >>> 0;
  p.ack = (sa.seq + 1) >>> 0;
  r.tcp.input(p.seg(TCP_ACK));
  return p.ack;
}

function data(r: TcpRig): string {
  return r.out.map((s) => (s.payload ? Buffer.from(s.payload).toString('latin1') : '')).join('');
}

describe('TCP responder', () => {
  it('handshakes, delivers in order and answers with ACKed data', () => {
    const r = tcpRig();
    const p = new Peer(1234);
    open(r, p);
    expect(r.out).toHaveLength(0);
    r.tcp.input(p.seg(TCP_ACK | TCP_PSH, enc('hello\n')));
    p.seq += 6;
    expect(data(r)).toBe('HELLO\n');
    const reply = r.out.at(-1)!;
    expect(reply.ack).toBe(p.seq);
    expect(reply.flags & TCP_PSH).toBeTruthy();
    expect(r.tcp.metrics().connections).toBe(1);
  });

  it('drops out-of-order segments with a duplicate ACK and accepts them once in order', () => {
    const r = tcpRig();
    const p = new Peer(1);
    open(r, p);
    const s0 = p.seq;
    r.tcp.input(p.seg(TCP_ACK, enc('lo\n'), { seq: s0 + 3 }));
    expect(r.out.at(-1)!.ack).toBe(s0);
    expect(r.handled).toEqual([]);
    r.tcp.input(p.seg(TCP_ACK, enc('hel'), { seq: s0 }));
    expect(r.out.at(-1)!.ack).toBe(s0 + 3);
    r.tcp.input(p.seg(TCP_ACK, enc('lo\n'), { seq: s0 + 3 }));
    expect(r.handled).toEqual(['hello']);
    // A duplicate of everything changes nothing, and is ACKed.
    const n = r.out.length;
    r.tcp.input(p.seg(TCP_ACK, enc('hello\n'), { seq: s0 }));
    expect(r.handled).toEqual(['hello']);
    expect(r.out.length).toBe(n + 1);
    expect(r.out.at(-1)!.ack).toBe(s0 + 6);
    // An overlapping segment contributes only its new bytes.
    r.tcp.input(p.seg(TCP_ACK, enc('lo\nab\n'), { seq: s0 + 3 }));
    expect(r.handled).toEqual(['hello']); // the HELLO reply is unacknowledged: "ab" waits
    r.tcp.input(p.seg(TCP_ACK, undefined, { seq: s0 + 9, ack: p.ack + 6 }));
    expect(r.handled).toEqual(['hello', 'ab']);
  });

  it('retransmits unacknowledged data with back-off, then resets', () => {
    const r = tcpRig();
    const p = new Peer(2);
    open(r, p);
    r.tcp.input(p.seg(TCP_ACK, enc('x\n')));
    expect(data(r)).toBe('X\n');
    r.out.length = 0;
    r.time.advance(199);
    expect(r.out).toHaveLength(0);
    r.time.advance(1);
    expect(data(r)).toBe('X\n');
    r.time.advance(400);
    expect(data(r)).toBe('X\nX\n');
    for (let i = 0; i < 10; i++) r.time.advance(10_000);
    const m = r.tcp.metrics();
    expect(m.retransmits).toBe(TCP_MAX_RETRANSMITS);
    expect(m.timeouts).toBe(1);
    expect(r.out.at(-1)!.flags).toBe(TCP_RST);
    expect(m.connections).toBe(0);
  });

  it('splits replies by MSS and respects the peer window', () => {
    const big = 'a'.repeat(5000);
    const r = tcpRig((input) => {
      const s = Buffer.from(input).toString();
      return s.includes('\n') ? { consumed: input.length, reply: enc(big) } : { consumed: 0 };
    });
    const p = new Peer(3);
    open(r, p); // our MSS option said 1000
    r.tcp.input(p.seg(TCP_ACK, enc('go\n'), { window: 2500 }));
    p.seq += 3;
    const sizes = r.out.filter((s) => s.payload).map((s) => s.payload!.length);
    expect(sizes).toEqual([1000, 1000, 500]);
    r.out.length = 0;
    r.tcp.input(p.seg(TCP_ACK, undefined, { ack: p.ack + 2500, window: 2500 }));
    expect(r.out.filter((s) => s.payload).map((s) => s.payload!.length)).toEqual([1000, 1000, 500]);
    r.out.length = 0;
    // Zero window: nothing until a probe on the retransmission timer.
    r.tcp.input(p.seg(TCP_ACK, undefined, { ack: p.ack + 5000, window: 0 }));
    expect(r.out).toHaveLength(0);
    r.tcp.input(p.seg(TCP_ACK, undefined, { ack: p.ack + 5000, window: 0 }));
    expect(r.tcp.metrics().connections).toBe(1);
  });

  it('probes a zero window', () => {
    const r = tcpRig((input) => (input.length ? { consumed: input.length, reply: enc('0123456789') } : { consumed: 0 }));
    const p = new Peer(4);
    open(r, p);
    r.tcp.input(p.seg(TCP_ACK, enc('?'), { window: 0 }));
    expect(r.out.filter((s) => s.payload)).toHaveLength(0);
    r.time.advance(200);
    const probe = r.out.filter((s) => s.payload);
    expect(probe).toHaveLength(1);
    expect(probe[0].payload!.length).toBe(1);
  });

  it('closes on FIN after answering, and on Connection-close style replies', () => {
    const r = tcpRig();
    const p = new Peer(5);
    open(r, p);
    r.tcp.input(p.seg(TCP_ACK | TCP_FIN, enc('last\n')));
    p.seq += 6; // data + FIN
    expect(data(r)).toBe('LAST\n');
    const fin = r.out.find((s) => s.flags & TCP_FIN)!;
    expect(fin.ack).toBe(p.seq);
    r.tcp.input(p.seg(TCP_ACK, undefined, { ack: fin.seq + 1 }));
    expect(r.tcp.metrics().connections).toBe(0);

    const q = new Peer(6);
    open(r, q);
    r.out.length = 0;
    r.tcp.input(q.seg(TCP_ACK, enc('bye\n')));
    q.seq += 4;
    const sfin = r.out.find((s) => s.flags & TCP_FIN)!;
    expect(sfin).toBeDefined();
    r.tcp.input(q.seg(TCP_ACK | TCP_FIN, undefined, { ack: sfin.seq + 1 }));
    expect(r.tcp.metrics().connections).toBe(0);
    expect(r.out.at(-1)!.flags).toBe(TCP_ACK);
  });

  it('handles RSTs: exact ones end the connection, others get a challenge ACK or nothing', () => {
    const r = tcpRig();
    const p = new Peer(7);
    open(r, p);
    r.tcp.input(p.seg(TCP_RST, undefined, { seq: p.seq + 100 }));
    expect(r.out.at(-1)!.flags).toBe(TCP_ACK); // challenge
    r.tcp.input(p.seg(TCP_RST, undefined, { seq: p.seq - 100000 }));
    expect(r.tcp.metrics().connections).toBe(1);
    r.tcp.input(p.seg(TCP_RST));
    expect(r.tcp.metrics()).toEqual(expect.objectContaining({ connections: 0, resetsReceived: 1 }));
    // A storm of RSTs for unknown connections: no answer, no state.
    const n = r.out.length;
    for (let i = 0; i < 10_000; i++) r.tcp.input(new Peer(10000 + (i % 5000), i).seg(TCP_RST));
    expect(r.out.length).toBe(n);
    expect(r.tcp.metrics().connections).toBe(0);
  });

  it('answers segments for no connection and for other ports with RST', () => {
    const r = tcpRig();
    const p = new Peer(8);
    r.tcp.input(p.seg(TCP_ACK, enc('x'), { ack: 777 }));
    expect(r.out.at(-1)).toEqual(expect.objectContaining({ flags: TCP_RST, seq: 777 }));
    r.tcp.input(p.seg(TCP_SYN, undefined, { dstPort: 81 }));
    expect(r.out.at(-1)).toEqual(expect.objectContaining({ flags: TCP_RST | TCP_ACK, ack: p.seq + 1, srcPort: 81 }));
    r.tcp.input(p.seg(TCP_FIN));
    expect(r.out.at(-1)!.flags).toBe(TCP_RST | TCP_ACK);
  });

  it('challenges SYNs on open connections and ACKs of unsent data', () => {
    const r = tcpRig();
    const p = new Peer(9);
    open(r, p);
    r.tcp.input(p.seg(TCP_SYN));
    expect(r.out.at(-1)!.flags).toBe(TCP_ACK);
    r.tcp.input(p.seg(TCP_ACK, enc('q\n'), { ack: p.ack + 1000 }));
    expect(r.handled).toEqual([]);
    expect(r.tcp.metrics().connections).toBe(1);
  });

  it('bounds connections: half-open ones are evicted, established ones refuse new SYNs', () => {
    const r = tcpRig(undefined, { maxConnections: 4 });
    for (let i = 0; i < 10; i++) r.tcp.input(new Peer(100 + i).seg(TCP_SYN));
    expect(r.tcp.metrics()).toEqual(expect.objectContaining({ connections: 4, connectionsEvicted: 6 }));
    const s = tcpRig(undefined, { maxConnections: 4 });
    for (let i = 0; i < 4; i++) open(s, new Peer(200 + i));
    s.tcp.input(new Peer(300).seg(TCP_SYN));
    expect(s.tcp.metrics()).toEqual(expect.objectContaining({ connections: 4, connectionsRefused: 1 }));
    expect(s.out.at(-1)!.flags & TCP_RST).toBeTruthy();
  });

  it('bounds buffered bytes per connection through the window', () => {
    const r = tcpRig(() => ({ consumed: 0 }), { maxRecvBuffer: 1000 });
    const p = new Peer(10);
    open(r, p);
    r.tcp.input(p.seg(TCP_ACK, new Uint8Array(1500)));
    expect(r.out.at(-1)).toEqual(expect.objectContaining({ ack: p.seq + 1000, window: 0 }));
    r.tcp.input(p.seg(TCP_ACK, new Uint8Array(500), { seq: p.seq + 1000 }));
    expect(r.out.at(-1)).toEqual(expect.objectContaining({ ack: p.seq + 1000, window: 0 }));
  });

  it('resets idle connections and survives a retransmitted SYN', () => {
    const r = tcpRig();
    const p = new Peer(11);
    r.tcp.input(p.seg(TCP_SYN));
    r.tcp.input(p.seg(TCP_SYN));
    expect(r.out.filter((s) => s.flags === (TCP_SYN | TCP_ACK))).toHaveLength(2);
    const q = new Peer(12);
    open(r, q);
    r.time.advance(TCP_IDLE_TIMEOUT_MS + 1);
    expect(r.tcp.metrics().connections).toBe(0);
  });

  it('saves and restores connections mid-reply', () => {
    const r = tcpRig();
    const p = new Peer(13);
    open(r, p);
    r.tcp.input(p.seg(TCP_ACK, enc('half')));
    p.seq += 4;
    const state = JSON.parse(JSON.stringify(r.tcp.saveState()));
    const r2 = tcpRig();
    r2.tcp.restoreState(state);
    r2.tcp.input(p.seg(TCP_ACK, enc('way\n')));
    expect(r2.handled).toEqual(['halfway']);
    expect(() => r2.tcp.restoreState({ connections: [{ fin: 'weird' }] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
  });
});

describe('MMDS endpoint on a NIC', () => {
  function stackRig(version: 'v1' | 'v2' = 'v1') {
    const s = store({ version });
    s.set({ latest: { 'meta-data': { 'instance-id': 'i-42' } } });
    const frames: Uint8Array[] = [];
    const time = new FakeTime(0);
    const stack = new MmdsStack({ store: s, mtu: 1500, emit: (f) => frames.push(f), clock: () => Number(time.now / 1_000_000n), timers: time });
    return { s, stack, frames, time };
  }

  it('answers ARP for its address only, from its MAC', () => {
    const { stack, frames } = stackRig();
    const req = buildArpRequest(GUEST_MAC, GUEST_IP, MMDS_IP);
    expect(stack.isForMmds(req)).toBe(true);
    expect(stack.isForMmds(buildArpRequest(GUEST_MAC, GUEST_IP, 0x0a000001))).toBe(false);
    stack.handleFrame(req, false);
    const rep = parseArp(frames[0])!;
    expect(rep.op).toBe(ARP_OP_REPLY);
    expect([...rep.sha]).toEqual([...MMDS_MAC]);
    expect(rep.spa).toBe(MMDS_IP);
    expect([...frames[0].subarray(0, 6)]).toEqual([...GUEST_MAC]);
  });

  it('verifies checksums unless the driver vouched for them, and drops fragments', () => {
    const { stack, frames } = stackRig();
    const syn = buildTcpFrame({ srcMac: GUEST_MAC, dstMac: MMDS_MAC, srcIp: GUEST_IP, dstIp: MMDS_IP, ipId: 1, srcPort: 5555, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 });
    const corrupt = syn.slice();
    corrupt[corrupt.length - 1] ^= 0xff;
    corrupt[50] ^= 1; // TCP checksum field
    stack.handleFrame(corrupt, false);
    expect(frames).toHaveLength(0);
    stack.handleFrame(corrupt, true);
    expect(frames).toHaveLength(1);
    const frag = syn.slice();
    frag[20] = 0x20; // MF
    stack.handleFrame(frag, true);
    expect(stack.metrics().framesDropped).toBe(2);
    const udp = syn.slice();
    udp[23] = 17;
    stack.handleFrame(udp, true);
    expect(stack.metrics().framesDropped).toBe(3);
    const reply = frames[0];
    const ip = parseIpv4(reply, true);
    expect(typeof ip).toBe('object');
    const seg = parseTcp(reply, ip as Exclude<typeof ip, string>, true);
    expect(typeof seg === 'object' && seg.flags).toBe(TCP_SYN | TCP_ACK);
  });

  it('serves the v2 token flow end to end through the device, never touching the TAP', () => {
    const host = new FakeNetHost();
    const tap = host.addTap('tap0');
    const s = store({ version: 'v2' });
    s.set({ latest: { 'meta-data': { 'instance-id': 'i-42' } } });
    const device = createNetDevice(checkNicOptions('eth0', { tap: 'tap0', mac: '06:00:ac:10:00:02' }), host, { mmds: s });
    const mem = GuestMemory.anonymous(8 << 20);
    const alloc = new BumpAllocator(mem);
    const sched = new ManualScheduler();
    const transport = new MmioTransport(device, { mem, irq: new MockIrq(), defer: sched.defer });
    const drv = new MockMmioDriver(transport, mem);
    const [rxq, txq] = drv.bringUp(alloc, [256, 256]);
    const nic = new MockNetDriver(drv, rxq, txq, alloc, 2048, 16);
    nic.postRx(64, 2048);
    const client = new GuestTcpClient({ mac: GUEST_MAC, ip: GUEST_IP, serverIp: MMDS_IP, serverPort: 80 });
    const exchange = (frame: Uint8Array) => {
      nic.send(frame);
      for (let i = 0; i < 10; i++) {
        sched.run();
        for (const f of nic.receive()) client.input(f.frame);
        const acks = client.takeOutbox();
        if (acks.length === 0) break;
        for (const a of acks) nic.send(a);
      }
    };
    exchange(client.arp());
    expect(client.serverMac).toEqual(MMDS_MAC);
    exchange(client.connect());
    expect(client.established).toBe(true);
    exchange(client.send(enc('PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n')));
    const tokenReply = client.text();
    expect(tokenReply).toMatch(/^HTTP\/1\.1 200 OK/);
    const token = tokenReply.split('\r\n\r\n')[1];
    client.received = [];
    exchange(client.send(enc(`GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: ${token}\r\nConnection: close\r\n\r\n`)));
    expect(client.text()).toMatch(/\r\n\r\ni-42$/);
    expect(client.serverClosed).toBe(true);
    exchange(client.fin());
    const m = device.metrics();
    expect(m).toEqual(expect.objectContaining({ mmdsRequests: 2, mmdsTokens: 1, mmdsGets: 1, mmdsArpReplies: 1, mmdsConnections: 0 }));
    expect(tap.written).toHaveLength(0);
    return device.close();
  });
});

