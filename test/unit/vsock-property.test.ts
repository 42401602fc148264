/**
 * Property tests of the vsock connection state machine and credit accounting (pure, no queues),
 * and of the whole device fed hostile packets through the mock driver. Together well over 100k
 * cases.
 */
import fc from 'fast-check';
import {
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_F_SEND,
  VSOCK_HDR_SIZE,
  VSOCK_MAX_ORPHAN_RSTS,
  VsockConnection,
  checkVsockOptions,
  createVsockDevice,
  decodeHeader,
  encodeHeader,
  u32Diff,
  type ConnectionOwner,
  type VsockHeader,
  type VsockSocket,
} from '../../lib/devices/vsock';
import { VIRTIO_STATUS_DEVICE_NEEDS_RESET } from '../../lib/virtio/constants';
import { MockVsockGuest } from '../../lib/testing/mock-vsock';
import { FakeTime } from './helpers/fake-time';

const u32 = fc.integer({ min: 0, max: 0xffffffff });

/** A plain assertion: jest's expect costs tens of microseconds a call, too much inside 100k cases. */
function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`invariant broken: ${what}`);
}

describe('vsock header codec', () => {
  test('decode(encode(h)) === h for every u32/u16 field', () => {
    fc.assert(
      fc.property(u32, u32, u32, u32, u32, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), u32, u32, u32, (srcCid, dstCid, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt) => {
        const h: VsockHeader = { srcCid, dstCid, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt };
        const b = new Uint8Array(VSOCK_HDR_SIZE);
        encodeHeader(h, b);
        const d = decodeHeader(b);
        for (const k of Object.keys(h) as (keyof VsockHeader)[]) check(d[k] === h[k], `field ${k}`);
      }),
      { numRuns: 10_000 },
    );
  });
  test('a CID with upper bits set decodes as -1', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 44, maxLength: 44 }), fc.integer({ min: 1, max: 0xffffffff }), (bytes, hi) => {
        new DataView(bytes.buffer).setUint32(4, hi, true);
        check(decodeHeader(bytes).srcCid === -1, 'reserved CID bits');
      }),
      { numRuns: 2_000 },
    );
  });
});

/** One step of the pure connection model. */
type ConnStep =
  | { k: 'guestData'; n: number }
  | { k: 'hostRead'; budget: number }
  | { k: 'hostWrite'; n: number }
  | { k: 'send'; room: number }
  | { k: 'peerCredit'; bufAlloc: number; consume: number; hostile: boolean }
  | { k: 'guestShutdown'; flags: number }
  | { k: 'hostEnd' };

const connStep: fc.Arbitrary<ConnStep> = fc.oneof(
  fc.record({ k: fc.constant('guestData' as const), n: fc.integer({ min: 0, max: 6000 }) }),
  fc.record({ k: fc.constant('hostRead' as const), budget: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ k: fc.constant('hostWrite' as const), n: fc.integer({ min: 1, max: 9000 }) }),
  fc.record({ k: fc.constant('send' as const), room: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5000 })) }),
  fc.record({ k: fc.constant('peerCredit' as const), bufAlloc: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 20000 }), u32), consume: fc.integer({ min: 0, max: 8000 }), hostile: fc.boolean() }),
  fc.record({ k: fc.constant('guestShutdown' as const), flags: fc.integer({ min: 0, max: 7 }) }),
  fc.constant({ k: 'hostEnd' as const }),
);

describe('vsock connection: credit accounting and shutdown halves (pure)', () => {
  test('never holds more than bufAlloc, never sends beyond the peer credit, delivers bytes in order, exactly once', () => {
    fc.assert(
      fc.property(fc.integer({ min: 4096, max: 16384 }), fc.array(connStep, { maxLength: 40 }), (bufAlloc, steps) => {
        const owner: ConnectionOwner = { wake: () => {}, release: () => {} };
        const conn = new VsockConnection(owner, 7, 1, 'guest', bufAlloc);
        conn.sendResponse = true;
        conn.nextOutgoing(0); // RESPONSE: established
        // The host end: a sink whose reader takes `budget` chunks per read.
        const delivered: Buffer[] = [];
        let budget = 0;
        let eof = false;
        conn.sink = {
          push: (c) => {
            if (c === null) {
              eof = true;
              return false;
            }
            delivered.push(c);
            budget--;
            return budget > 0;
          },
          abort: () => {},
        };
        let accepted = 0; // bytes the connection took from the guest
        let acceptedSeq = 0;
        let writtenSeq = 0; // bytes the host asked to send
        let sentSeq = 0; // bytes the connection sent
        let guestConsumed = 0; // the guest's own fwd_cnt
        let pendingWrite = false;
        let writeFailed = false;
        for (const s of steps) {
          switch (s.k) {
            case 'guestData': {
              const data = Buffer.alloc(s.n);
              for (let i = 0; i < s.n; i++) data[i] = (acceptedSeq + i) & 0xff;
              const credit = conn.localCredit();
              const v = conn.onGuestData(data);
              if (conn.state !== 'established') break;
              if (v === 'ok') {
                check(s.n <= credit, 'accepted within credit');
                accepted += s.n;
                acceptedSeq += s.n;
              } else if (v === 'credit-exceeded') {
                check(s.n > credit, 'refused only beyond credit');
              }
              break;
            }
            case 'hostRead':
              budget = s.budget;
              if (budget > 0) conn.hostRead();
              break;
            case 'hostWrite':
              if (pendingWrite || conn.state === 'closed' || (conn.localShutdown & VIRTIO_VSOCK_SHUTDOWN_F_SEND) !== 0) break;
              pendingWrite = true;
              conn.hostWrite(Buffer.alloc(s.n, writtenSeq & 0xff), (err) => {
                pendingWrite = false;
                if (err) writeFailed = true;
              });
              writtenSeq += s.n;
              break;
            case 'send': {
              const credit = conn.peerCredit();
              const before = conn.txCnt;
              const pkt = conn.nextOutgoing(s.room);
              if (pkt?.op === VIRTIO_VSOCK_OP_RW) {
                check(pkt.payload!.length > 0, 'no empty RW');
                check(pkt.payload!.length <= Math.min(credit, s.room), 'RW within credit and room');
                check(u32Diff(conn.txCnt, before) === pkt.payload!.length, 'txCnt counts the payload');
                sentSeq += pkt.payload!.length;
              }
              if (pkt !== null) check(pkt.fwdCnt === conn.fwdCnt, 'packets carry fwd_cnt');
              break;
            }
            case 'peerCredit':
              // A well-behaved guest consumes at most what it got; a hostile one claims anything.
              guestConsumed = s.hostile ? (guestConsumed + s.consume) >>> 0 : Math.min(sentSeq, guestConsumed + s.consume);
              conn.updatePeerCredit(s.bufAlloc >>> 0, guestConsumed >>> 0);
              break;
            case 'guestShutdown':
              if (conn.state === 'established') conn.onShutdown(s.flags);
              break;
            case 'hostEnd':
              conn.hostEnd();
              break;
          }
          // Invariants after every step.
          check(conn.rxQueued === u32Diff(conn.rxCnt, conn.fwdCnt), 'queued = rxCnt - fwdCnt');
          check(conn.rxQueued <= bufAlloc, 'queued <= bufAlloc');
          check(conn.rxQueue.reduce((n, b) => n + b.length, 0) === conn.rxQueued, 'queue length');
          check(sentSeq <= writtenSeq, 'sent <= written');
          check(conn.peerCredit() >= 0, 'credit >= 0');
        }
        // Everything delivered is exactly the prefix of what was accepted, in order.
        const all = Buffer.concat(delivered);
        check(all.length + conn.rxQueued === accepted, 'delivered + queued = accepted');
        for (let i = 0; i < all.length; i++) if (all[i] !== (i & 0xff)) throw new Error(`byte ${i} out of order`);
        if (eof) check(conn.rxQueued === 0, 'end of stream only after the data');
        void writeFailed;
      }),
      { numRuns: Number(process.env.VSOCK_PROP_RUNS ?? 60_000) },
    );
  });
});

/** A guest packet for the device fuzz: mostly plausible, often hostile. */
const guestPacket = fc.record({
  srcCid: fc.oneof({ weight: 8, arbitrary: fc.constant(3) }, { weight: 1, arbitrary: u32 }),
  dstCid: fc.oneof({ weight: 8, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: u32 }),
  srcPort: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 3 }) }, { weight: 1, arbitrary: u32 }),
  dstPort: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 7, max: 8 }) }, { weight: 2, arbitrary: fc.integer({ min: 2 ** 30, max: 2 ** 30 + 3 }) }, { weight: 1, arbitrary: u32 }),
  type: fc.oneof({ weight: 8, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
  op: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 7 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
  flags: fc.oneof(fc.integer({ min: 0, max: 3 }), u32),
  bufAlloc: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 70000 }), u32),
  fwdCnt: fc.oneof(fc.integer({ min: 0, max: 70000 }), u32),
  payload: fc.integer({ min: 0, max: 600 }),
  lenDelta: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -700, max: 70000 }) }),
  truncate: fc.oneof({ weight: 12, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 60 }) }),
});

type HostAction =
  | { k: 'connect'; port: number }
  | { k: 'write'; n: number; which: number }
  | { k: 'end'; which: number }
  | { k: 'destroy'; which: number }
  | { k: 'pause'; which: number; paused: boolean }
  | { k: 'receive' }
  | { k: 'reset' };

const hostAction: fc.Arbitrary<HostAction> = fc.oneof(
  fc.record({ k: fc.constant('connect' as const), port: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ k: fc.constant('write' as const), n: fc.integer({ min: 1, max: 3000 }), which: fc.nat() }),
  fc.record({ k: fc.constant('end' as const), which: fc.nat() }),
  fc.record({ k: fc.constant('destroy' as const), which: fc.nat() }),
  fc.record({ k: fc.constant('pause' as const), which: fc.nat(), paused: fc.boolean() }),
  fc.constant({ k: 'receive' as const }),
  fc.constant({ k: 'reset' as const }),
);

describe('vsock device under hostile packets (mock driver)', () => {
  test('never throws, never breaks the transport, stays within its bounds and never sends beyond credit', () => {
    // Every RW the device builds is checked against the credit it knew at that moment.
    const proto = VsockConnection.prototype;
    const original = proto.nextOutgoing;
    let creditBreaches = 0;
    proto.nextOutgoing = function (this: VsockConnection, room: number) {
      const credit = this.peerCredit();
      const pkt = original.call(this, room);
      if (pkt?.op === VIRTIO_VSOCK_OP_RW && (pkt.payload!.length > credit || pkt.payload!.length > room)) creditBreaches++;
      return pkt;
    };
    try {
      fc.assert(
        fc.property(fc.array(fc.oneof({ weight: 3, arbitrary: guestPacket.map((p) => ({ k: 'packet' as const, p })) }, { weight: 2, arbitrary: hostAction }), { maxLength: 24 }), (steps) => {
          const time = new FakeTime();
          const device = createVsockDevice(checkVsockOptions({ guestCid: 3, bufferSize: 4096, maxConnections: 4 }), {
            timers: time,
            listenUnix: () => Promise.reject(new Error('none')),
            connectUnix: () => Promise.reject(new Error('none')),
          });
          const socks: VsockSocket[] = [];
          const keep = (s: VsockSocket) => {
            s.on('error', () => {});
            socks.push(s);
          };
          device.listen(7, keep);
          const guest = new MockVsockGuest(device, { rxBuffers: 6, rxPayload: 512, txSlots: 4, txPayload: 1024, queueSize: 8, defer: (fn) => fn() });
          for (const s of steps) {
            if (s.k === 'packet') {
              const p = s.p;
              const payload = Buffer.alloc(p.payload, 0x5a);
              const hdr = new Uint8Array(VSOCK_HDR_SIZE);
              encodeHeader({ ...p, len: Math.max(0, p.payload + p.lenDelta) >>> 0 }, hdr);
              let bytes: Uint8Array = Buffer.concat([hdr, payload]);
              if (p.truncate >= 0) bytes = bytes.subarray(0, p.truncate);
              guest.sendRaw(bytes.length > 0 ? bytes : new Uint8Array(1));
              guest.reapTx();
            } else if (s.k === 'connect') {
              device.connect(s.port, { timeoutMs: 50 }).then(keep, () => {});
            } else if (s.k === 'receive') {
              guest.receive();
            } else if (s.k === 'reset') {
              time.advance(60);
            } else if (socks.length > 0) {
              const sock = socks[s.which % socks.length];
              if (s.k === 'write') {
                if (!sock.writableEnded) sock.write(Buffer.alloc(s.n, 1));
              } else if (s.k === 'end') sock.end();
              else if (s.k === 'destroy') sock.destroy();
              else if (s.paused) sock.pause();
              else sock.resume();
            }
            const m = device.metrics();
            check((guest.transport.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) === 0, 'transport healthy');
            check(m.queueErrors === 0, 'no queue errors');
            check(m.connections <= 4, 'connection limit');
            const conns = (device as unknown as { conns: Map<string, VsockConnection>; orphanRsts: unknown[] });
            check(conns.orphanRsts.length <= VSOCK_MAX_ORPHAN_RSTS, 'orphan RSTs bounded');
            for (const c of conns.conns.values()) {
              check(c.rxQueued <= c.bufAlloc, 'held data bounded by bufAlloc');
              check(c.rxQueued === u32Diff(c.rxCnt, c.fwdCnt), 'queued = rxCnt - fwdCnt');
            }
          }
          check(creditBreaches === 0, 'never beyond credit');
          void device.close();
        }),
        { numRuns: Number(process.env.VSOCK_PROP_RUNS ?? 30_000) },
      );
    } finally {
      proto.nextOutgoing = original;
    }
  });

  test('a well-behaved exchange always ends with every byte delivered once, in order, both ways', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1024, max: 8192 }),
        (guestChunks, hostChunks, guestBuf) => {
          const device = createVsockDevice(checkVsockOptions({ guestCid: 3, bufferSize: 8192 }), {
            timers: new FakeTime(), listenUnix: () => Promise.reject(new Error('x')), connectUnix: () => Promise.reject(new Error('x')),
          });
          let sock!: VsockSocket;
          const fromGuest: Buffer[] = [];
          device.listen(7, (s) => (sock = s));
          // The host reads synchronously (paused mode), so the whole exchange runs in one turn.
          const hostReads = () => {
            for (let c = sock.read() as Buffer | null; c !== null; c = sock.read() as Buffer | null) fromGuest.push(c);
          };
          const guest = new MockVsockGuest(device, { rxBuffers: 8, rxPayload: 1024, txSlots: 8, txPayload: 8192, defer: (fn) => fn() });
          guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: guestBuf });
          check(guest.receive()[0].hdr.op === VIRTIO_VSOCK_OP_RESPONSE, 'accepted');
          const hostData = Buffer.concat(hostChunks.map((n, i) => Buffer.alloc(n, i + 1)));
          const guestData = Buffer.concat(guestChunks.map((n, i) => Buffer.alloc(n, 100 + i)));
          sock.end(hostData);
          // The guest sends within the host's credit, reads everything, and returns credit as it goes.
          let hostCredit = 8192;
          let hostFwd = 0;
          let sent = 0;
          let received = 0;
          const got: Buffer[] = [];
          let shut = false;
          for (let round = 0; round < 400 && !(shut && sent === guestData.length && received === hostData.length); round++) {
            hostReads();
            for (const p of guest.receive()) {
              if (p.hdr.op === VIRTIO_VSOCK_OP_RW) {
                got.push(p.payload);
                received += p.payload.length;
              }
              if (p.hdr.op === VIRTIO_VSOCK_OP_SHUTDOWN) shut = true;
              if (p.hdr.op === VIRTIO_VSOCK_OP_RST) throw new Error('unexpected RST');
              hostCredit = p.hdr.bufAlloc;
              hostFwd = p.hdr.fwdCnt;
            }
            const room = hostCredit - (sent - hostFwd);
            const n = Math.min(room, guestData.length - sent, 4096);
            if (n > 0) {
              guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: guestBuf, fwdCnt: received }, guestData.subarray(sent, sent + n));
              sent += n;
            } else {
              guest.send({ op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, srcPort: 1, dstPort: 7, bufAlloc: guestBuf, fwdCnt: received });
            }
          }
          hostReads();
          check(Buffer.concat(got).equals(hostData), 'host data arrived whole');
          check(shut, 'host half-close arrived');
          check(Buffer.concat(fromGuest).equals(guestData), 'guest data arrived whole');
          void device.close();
        },
      ),
      { numRuns: Number(process.env.VSOCK_PROP_RUNS ?? 3_000) },
    );
  });
});
