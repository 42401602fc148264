/**
 * Property tests for the network device, the TCP responder, the HTTP parser, the virtio header
 * checks and the switch (fast-check): 20k cases for the device, 80k for the TCP responder, 19k more
 * for the parser, headers and switch. Whatever the guest or the link sends:
 * nothing throws, memory stays bounded, frames are delivered whole or dropped and counted, and
 * the TCP responder delivers exactly the peer's byte stream in order however it is cut,
 * reordered, duplicated or lost.
 */
import fc from 'fast-check';
import { Duplex } from 'stream';
import {
  LinkBackend,
  TapBackend,
  NetDevice,
  TcpResponder,
  checkTxHeader,
  decodeVnetHeader,
  encodeVnetHeader,
  parseHttpRequest,
  type InboundSegment,
  type OutboundSegment,
  type StreamStep,
} from '../../lib/devices/net';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../lib/devices/net/mmds/packet';
import { VirtualSwitch, type SwitchPort } from '../../lib/net/switch';
import { FakeTime } from './helpers/fake-time';
import { FakeNetHost, RigArena, concat, ethFrame, postRx, receive, type NetRig } from './helpers/fake-net';
import { VNET_HDR_SIZE } from '../../lib/devices/net/constants';

const MAC = Uint8Array.from([0x06, 0, 0, 0, 0, 1]);
const PEER = Uint8Array.from([0x06, 0, 0, 0, 0, 2]);

/** A cheap assertion for hot loops (jest's expect costs microseconds per call). */
function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`property violated: ${what}`);
}

describe('virtio-net device properties', () => {
  // Fresh memory per run would dominate the cost: runs share an arena and get a new device.
  const arena = new RigArena(1 << 20, 64);
  const linkArena = new RigArena(256 << 10, 16);
  function freshTapRig(mrg: boolean): NetRig & { host: FakeNetHost } {
    const host = new FakeNetHost();
    host.addTap('t');
    const backend = new TapBackend(host, host.openTap('t'));
    const probe = new NetDevice({ id: 'p', backend: new TapBackend(host, { fd: -1, name: 'p', offloads: host.offloads }), mtu: 1500, mac: MAC });
    const features = mrg ? probe.deviceFeatures : probe.deviceFeatures & ~(1n << 15n);
    const r = arena.rigOn({ id: 'e', backend, mtu: 1500, mac: MAC, queueSize: 64 }, features);
    return { ...r, host };
  }

  const txCase = fc.record({
    header: fc.uint8Array({ minLength: 12, maxLength: 12 }),
    frameLen: fc.integer({ min: 0, max: 1600 }),
    spoof: fc.boolean(),
    split: fc.boolean(),
  });

  it('transmit: every chain is completed, and exactly the valid frames reach the TAP, unchanged', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.array(txCase, { minLength: 1, maxLength: 12 }), (mrg, cases) => {
        const r = freshTapRig(mrg);
        const tap = r.host.taps.get('t')!;
        let expected = 0;
        for (const c of cases) {
          const frame = c.frameLen >= 14 ? ethFrame(PEER, c.spoof ? PEER : MAC, 0x0800, c.frameLen - 14) : new Uint8Array(c.frameLen);
          const hdr = decodeVnetHeader(c.header);
          const valid = c.frameLen >= 14 && !c.spoof && checkTxHeader(hdr, r.transport.ackedFeatures, c.frameLen) === null;
          const before = tap.written.length;
          const bytes = concat(c.header, frame);
          if (c.split && c.frameLen > 0) r.txq.addChain([{ addr: r.alloc.allocData(bytes.subarray(0, 12)), len: 12 }, { addr: r.alloc.allocData(frame), len: c.frameLen }]);
          else r.txq.addChain([{ addr: r.alloc.allocData(concat(bytes, new Uint8Array(1))), len: bytes.length }]);
          r.driver.notify(1);
          if (valid) {
            expected++;
            check(tap.written.length === before + 1, 'valid frame written');
            check(Buffer.from(tap.written[tap.written.length - 1]).equals(Buffer.from(bytes)), 'written unchanged');
          } else check(tap.written.length === before, 'invalid frame not written');
          check(r.txq.readUsed().length === 1, 'chain completed');
        }
        const m = r.device.metrics();
        check(m.txFrames === expected, 'txFrames');
        check(m.txFrames + m.txDropsBadHeader + m.txDropsMalformed + m.txDropsSpoofed === cases.length, 'every chain accounted for');
      }),
      { numRuns: 8000 },
    );
  });

  it('receive from a TAP: frames arrive whole and in order, or are dropped and counted', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.array(fc.integer({ min: 0, max: 4000 }), { minLength: 1, maxLength: 10 }),
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 20, max: 2048 }),
        (mrg, lens, segs, bufSize) => {
          const r = freshTapRig(mrg);
          const tap = r.host.taps.get('t')!;
          const inbound = lens.map((l, i) => concat(new Uint8Array(12), l >= 14 ? ethFrame(MAC, PEER, 0x0800 + i, l - 14) : new Uint8Array(l)));
          tap.inbound.push(...inbound);
          postRx(r, Math.floor(64 / segs) - 1, bufSize, segs);
          r.host.pumpTap('t');
          const got = receive(r);
          const m = r.device.metrics();
          // Everything was read (or is still waiting in the TAP for buffers); nothing is lost silently.
          check(m.rxFrames + m.rxDropsTruncated + m.rxDropsRunt + m.rxDropsOversize + tap.inbound.length === inbound.length, 'every frame accounted for');
          check(got.length === m.rxFrames, 'rxFrames');
          // Delivered frames are the inbound ones, in order, whole.
          let k = 0;
          for (const g of got) {
            while (k < inbound.length && !Buffer.from(inbound[k].subarray(12)).equals(Buffer.from(g.frame))) k++;
            check(k < inbound.length, 'delivered frame is an inbound frame, in order');
            k++;
          }
        },
      ),
      { numRuns: 6000 },
    );
  });

  it('receive from a link: bounded queue, whole frames, drops counted', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.integer({ min: 0, max: 1600 }), fc.constant(-1)), { minLength: 1, maxLength: 20 }),
        fc.integer({ min: 0, max: 8 }),
        (lens, buffers) => {
          const sent: Buffer[] = [];
          const stream = new Duplex({ objectMode: true, read() {}, write(c, _e, cb) { sent.push(c); cb(); } });
          const r = linkArena.rigOn({ id: 'l', backend: new LinkBackend(stream, false), mtu: 1500, queueSize: 16, rxQueueFrames: 4 });
          if (buffers > 0) postRx(r, buffers, 1536);
          const frames = lens.map((l, i) => (l < 0 ? 'junk' : l >= 14 ? Buffer.from(ethFrame(MAC, PEER, 0x0800 + i, l - 14)) : Buffer.alloc(l)));
          // Deliver synchronously, as a flowing stream would.
          for (const f of frames) stream.emit('data', f);
          const m = r.device.metrics();
          const got = receive(r);
          check(m.rxQueued <= 4, 'queue bounded');
          check(got.length + m.rxQueued + m.rxDropsQueueFull + m.rxDropsOversize + m.rxDropsRunt === frames.length, 'every frame accounted for');
          for (const g of got) check(frames.some((f) => Buffer.isBuffer(f) && f.equals(Buffer.from(g.frame))), 'delivered whole');
        },
      ),
      { numRuns: 6000 },
    );
  });

  it('virtio headers: decoding and checking never throw; encoding round-trips', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 12, maxLength: 12 }), fc.bigUintN(64), fc.integer({ min: 0, max: 70000 }), (b, acked, len) => {
        const h = decodeVnetHeader(b);
        check(Buffer.from(encodeVnetHeader(h)).equals(Buffer.from(b)), 'round trip');
        checkTxHeader(h, acked, len);
      }),
      { numRuns: 5000 },
    );
  });
});

describe('switch properties', () => {
  it('never throws; every valid frame is forwarded, flooded, filtered or dropped', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ port: fc.integer({ min: 0, max: 3 }), dst: fc.integer({ min: 0, max: 5 }), src: fc.integer({ min: 0, max: 5 }), len: fc.integer({ min: 0, max: 100 }) }), { maxLength: 40 }),
        (ops) => {
          const sw = new VirtualSwitch({ portQueueFrames: 8, maxMacEntries: 3 });
          const ports = [sw.attach(), sw.attach(), sw.attach(), sw.attach()] as SwitchPort[];
          const mac = (n: number) => (n === 5 ? new Uint8Array(6).fill(0xff) : Uint8Array.from([n === 4 ? 1 : 2, 0, 0, 0, 0, n]));
          let valid = 0;
          for (const o of ops) {
            const f = o.len >= 14 ? Buffer.from(ethFrame(mac(o.dst), mac(o.src), 0x0800, o.len - 14)) : Buffer.alloc(o.len);
            if (o.len >= 14 && !(f[6] & 1)) valid++;
            sw.ingress(ports[o.port], f);
          }
          const m = sw.metrics();
          check(m.forwarded + m.flooded + m.filtered === valid, 'every valid frame handled');
          check(m.macEntries <= 3, 'table bounded');
          for (const p of ports) check(p.readableLength <= 8, 'port queue bounded');
          sw.close();
        },
      ),
      { numRuns: 4000 },
    );
  });
});

describe('HTTP parser properties', () => {
  it('never throws on arbitrary bytes and never consumes more than it was given', () => {
    const tokens = fc.constantFrom('GET', 'PUT', ' ', '/', 'HTTP/1.1', 'HTTP/1.0', '\r\n', '\n', ':', 'Content-Length: ', '12', 'X: y', 'a', '\t', '\x00');
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.array(tokens, { maxLength: 40 }).map((t) => new Uint8Array(Buffer.from(t.join(''), 'latin1')))), (buf) => {
        const p = parseHttpRequest(buf, { maxHeaderBytes: 128, maxHeaders: 8, maxBodyBytes: 16 });
        if (p.kind === 'request') check(p.consumed > 0 && p.consumed <= buf.length, 'consumed within the input');
        if (p.kind === 'incomplete') check(buf.length <= 128 + 4 + 16, 'incomplete only within the limits');
      }),
      { numRuns: 10000 },
    );
  });
});

describe('TCP responder properties', () => {
  const PORT = 80;
  function responder(maxConnections: number, maxRecvBuffer: number, handler: (input: Uint8Array) => StreamStep) {
    const time = new FakeTime(0);
    const out: OutboundSegment[] = [];
    let seed = 1;
    const tcp = new TcpResponder({
      localPort: PORT,
      mss: 536,
      maxConnections,
      maxRecvBuffer,
      handler,
      emit: (s) => out.push(s),
      clock: () => Number(time.now / 1_000_000n),
      timers: time,
      random: () => (seed = (seed * 48271) % 0x7fffffff),
    });
    return { tcp, out, time };
  }

  it('hostile segments: never throws, bounded connections and buffers, never answers RST with RST', () => {
    const seg = fc.record({
      port: fc.integer({ min: 1, max: 6 }),
      flags: fc.integer({ min: 0, max: 0x3f }),
      seqOff: fc.oneof(fc.integer({ min: -3, max: 3 }), fc.integer({ min: -70000, max: 70000 }), fc.nat()),
      ackOff: fc.oneof(fc.integer({ min: -3, max: 3 }), fc.nat()),
      window: fc.integer({ min: 0, max: 0xffff }),
      len: fc.integer({ min: 0, max: 800 }),
      dstPort: fc.constantFrom(80, 80, 80, 81),
      advance: fc.integer({ min: 0, max: 3000 }),
    });
    fc.assert(
      fc.property(fc.array(seg, { maxLength: 16 }), (segs) => {
        const { tcp, out, time } = responder(3, 600, (input) => {
          const nl = input.indexOf(10);
          return nl < 0 ? { consumed: 0 } : { consumed: nl + 1, reply: new Uint8Array(700).fill(0x41), close: input[0] === 0x71 };
        });
        // Track each peer's view of the server's sequence numbers so some segments are valid.
        const serverSeq = new Map<number, number>();
        const clientSeq = new Map<number, number>();
        for (const s of segs) {
          const n = out.length;
          for (const o of out) if (o.flags & TCP_SYN) serverSeq.set(o.dstPort, (o.seq + 1) >>> 0);
          const cbase = clientSeq.get(s.port) ?? 1000;
          const payload = new Uint8Array(s.len).map((_, i) => (i % 50 === 49 ? 10 : 0x61 + (i % 26)));
          const inb: InboundSegment = {
            srcIp: 0x0a000001,
            srcMac: PEER,
            srcPort: s.port,
            dstPort: s.dstPort,
            seq: (cbase + s.seqOff) >>> 0,
            ack: ((serverSeq.get(s.port) ?? 0) + s.ackOff) >>> 0,
            flags: s.flags,
            window: s.window,
            payload,
          };
          tcp.input(inb);
          if (s.flags & TCP_SYN) clientSeq.set(s.port, (inb.seq + 1) >>> 0);
          else if (s.seqOff === 0) clientSeq.set(s.port, (cbase + s.len + (s.flags & TCP_FIN ? 1 : 0)) >>> 0);
          if (s.flags & TCP_RST) for (let i = n; i < out.length; i++) check((out[i].flags & TCP_RST) === 0, 'no RST answers a RST');
          time.advance(s.advance);
          check(tcp.connectionCount <= 3, 'connections bounded');
        }
        for (const o of out) {
          check(o.window <= 600, 'window within the receive buffer');
          check((o.payload?.length ?? 0) <= 536, 'segments within the MSS');
        }
        // Everything times out eventually.
        time.advance(200_000);
        check(tcp.connectionCount === 0, 'all connections time out');
      }),
      { numRuns: 50000 },
    );
  });

  it('delivers exactly the byte stream, in order, whatever the segmentation, reordering, duplication and loss', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 3000 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 60 }),
        fc.array(fc.boolean(), { maxLength: 60 }),
        (stream, cuts, order, drops) => {
          const received: number[] = [];
          const { tcp, out } = responder(2, 1024, (input) => {
            for (const b of input) received.push(b);
            return { consumed: input.length };
          });
          const iss = 77;
          tcp.input({ srcIp: 1, srcMac: PEER, srcPort: 9, dstPort: PORT, seq: iss, ack: 0, flags: TCP_SYN, window: 1000, payload: new Uint8Array(0) });
          const synack = out.find((o) => o.flags & TCP_SYN)!;
          const base = (iss + 1) >>> 0;
          const ack = (synack.seq + 1) >>> 0;
          // Segments cut from the stream.
          const segs: { off: number; len: number }[] = [];
          for (let off = 0, i = 0; off < stream.length; i++) {
            const len = Math.min(cuts[i % cuts.length], stream.length - off);
            segs.push({ off, len });
            off += len;
          }
          const send = (s: { off: number; len: number }) =>
            tcp.input({ srcIp: 1, srcMac: PEER, srcPort: 9, dstPort: PORT, seq: (base + s.off) >>> 0, ack, flags: TCP_ACK, window: 1000, payload: stream.subarray(s.off, s.off + s.len) });
          // A round of sends in a scrambled order, some lost, some duplicated; then the peer does
          // what TCP does: retransmits from the first unacknowledged byte, in order.
          let round = 0;
          for (const idx of order) {
            const s = segs[idx % segs.length];
            if (!drops[round++ % Math.max(drops.length, 1)]) send(s);
          }
          for (let guard = 0; received.length < stream.length && guard < 1000; guard++) {
            const acked = (out.length ? out.at(-1)!.ack : base) - base;
            const next = segs.find((s) => s.off + s.len > acked) ?? segs[0];
            send({ off: acked, len: Math.min(next.off + next.len - acked, stream.length - acked) });
          }
          check(received.length === stream.length, 'whole stream delivered');
          check(Buffer.from(received).equals(Buffer.from(stream)), 'stream delivered in order, unchanged');
        },
      ),
      { numRuns: 30000 },
    );
  });
});
