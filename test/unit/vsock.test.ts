import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type { Duplex } from 'stream';
import {
  VIRTIO_VSOCK_F_STREAM,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE,
  VIRTIO_VSOCK_SHUTDOWN_F_SEND,
  VSOCK_HOST_CID,
  VSOCK_LOCAL_PORT_FIRST,
  VsockDevice,
  VsockError,
  VsockSocket,
  checkVsockOptions,
  createVsockDevice,
  decodeHeader,
  encodeHeader,
  parseConnectLine,
  type VsockHost,
} from '../../lib/devices/vsock';
import { ConfigError } from '../../lib/config';
import { featureBit, VIRTIO_MMIO_CONFIG } from '../../lib/virtio/constants';
import { MockVsockGuest, type ReceivedPacket } from '../../lib/testing/mock-vsock';
import { BumpAllocator, MockIrq, MockMmioDriver, MockVirtqueue, allocQueueLayout } from '../../lib/testing/mock-driver';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import { createVsockHost } from '../../lib/vm/vsock-host';
import { FakeTime } from './helpers/fake-time';

const tick = () => new Promise<void>((r) => setImmediate(r));

function fakeHost(time = new FakeTime()): VsockHost & { time: FakeTime } {
  return {
    time,
    timers: time,
    listenUnix: () => Promise.reject(new Error('no unix sockets in this test')),
    connectUnix: () => Promise.reject(new Error('no unix sockets in this test')),
  };
}

function rig(opts: { bufferSize?: number; maxConnections?: number; rxBuffers?: number; rxPayload?: number; noRepost?: boolean; host?: VsockHost; udsPath?: string } = {}) {
  const host = opts.host ?? fakeHost();
  const device = createVsockDevice(
    { ...checkVsockOptions({ guestCid: 3, bufferSize: opts.bufferSize, maxConnections: opts.maxConnections, udsPath: opts.udsPath }) },
    host,
  );
  const guest = new MockVsockGuest(device, { rxBuffers: opts.rxBuffers, rxPayload: opts.rxPayload, noRepost: opts.noRepost });
  return { device, guest, host };
}

/** Collects what a socket reads. */
function collect(sock: Duplex): { data: () => Buffer; ended: () => boolean; errors: Error[] } {
  const chunks: Buffer[] = [];
  let ended = false;
  const errors: Error[] = [];
  sock.on('data', (c: Buffer) => chunks.push(c));
  sock.on('end', () => (ended = true));
  sock.on('error', (e) => errors.push(e));
  return { data: () => Buffer.concat(chunks), ended: () => ended, errors };
}

const ops = (pkts: ReceivedPacket[]) => pkts.map((p) => p.hdr.op);

describe('vsock options', () => {
  test('guestCid is required and checked; unknown keys refused', () => {
    expect(() => checkVsockOptions({})).toThrow(ConfigError);
    expect(() => checkVsockOptions({ guestCid: 2 })).toThrow(/guestCid/);
    expect(() => checkVsockOptions({ guestCid: 2 ** 32 - 1 })).toThrow(/guestCid/);
    expect(() => checkVsockOptions({ guestCid: 3, udsPth: '/x' })).toThrow(expect.objectContaining({ code: 'UNKNOWN_OPTION' }));
    expect(() => checkVsockOptions({ guestCid: 3, udsPath: '' })).toThrow(expect.objectContaining({ code: 'INVALID_VSOCK' }));
    expect(() => checkVsockOptions({ guestCid: 3, udsPath: '/' + 'a'.repeat(200) })).toThrow(/bytes/);
    expect(() => checkVsockOptions({ guestCid: 3, bufferSize: 100 })).toThrow(/bufferSize/);
    expect(checkVsockOptions({ guestCid: 42, udsPath: '/run/fn-1.vsock' })).toEqual({
      guestCid: 42, udsPath: '/run/fn-1.vsock', bufferSize: 256 * 1024, maxConnections: 1024,
    });
  });
  test('CONNECT line parsing', () => {
    expect(parseConnectLine('CONNECT 52')).toBe(52);
    expect(parseConnectLine('CONNECT 4294967295\r')).toBe(4294967295);
    expect(parseConnectLine('CONNECT 4294967296')).toBeNull();
    expect(parseConnectLine('connect 52')).toBeNull();
    expect(parseConnectLine('CONNECT  52')).toBeNull();
    expect(parseConnectLine('CONNECT -1')).toBeNull();
  });
});

describe('vsock device', () => {
  test('config space holds the guest CID; only STREAM is offered', () => {
    const { device, guest } = rig();
    expect(guest.transport.read(VIRTIO_MMIO_CONFIG, 4)).toBe(3);
    expect(guest.transport.read(VIRTIO_MMIO_CONFIG + 4, 4)).toBe(0);
    expect(device.deviceFeatures).toBe(featureBit(VIRTIO_VSOCK_F_STREAM));
    guest.transport.write(VIRTIO_MMIO_CONFIG, 4, 9);
    expect(guest.transport.read(VIRTIO_MMIO_CONFIG, 4)).toBe(3);
    expect(device.metrics().configWritesIgnored).toBe(1);
  });

  test('guest connects to a listener: RESPONSE, data both ways, host half-close, guest answer, clean close', async () => {
    const { device, guest } = rig();
    const accepted: VsockSocket[] = [];
    device.listen(7000, (s) => accepted.push(s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1234, dstPort: 7000, bufAlloc: 65536 });
    let pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RESPONSE]);
    expect(pkts[0].hdr).toMatchObject({ srcCid: VSOCK_HOST_CID, dstCid: 3, srcPort: 7000, dstPort: 1234, bufAlloc: 256 * 1024, fwdCnt: 0 });
    expect(accepted).toHaveLength(1);
    const sock = accepted[0];
    expect(sock.localPort).toBe(7000);
    expect(sock.remotePort).toBe(1234);
    const got = collect(sock);

    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1234, dstPort: 7000, bufAlloc: 65536 }, Buffer.from('hello host'));
    await tick();
    expect(got.data().toString()).toBe('hello host');

    sock.end('hello guest');
    await tick();
    pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN]);
    expect(pkts[0].payload.toString()).toBe('hello guest');
    // A half-close: only the SEND flag, so the guest's answer can still come.
    expect(pkts[1].hdr.flags).toBe(VIRTIO_VSOCK_SHUTDOWN_F_SEND);

    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1234, dstPort: 7000, bufAlloc: 65536, fwdCnt: 11 }, Buffer.from('the answer'));
    guest.send({ op: VIRTIO_VSOCK_OP_SHUTDOWN, srcPort: 1234, dstPort: 7000, flags: 3, bufAlloc: 65536, fwdCnt: 11 });
    await tick();
    expect(got.data().toString()).toBe('hello hostthe answer');
    expect(got.ended()).toBe(true);
    // Both halves shut: the device answers with RST and the connection is gone.
    pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RST]);
    expect(device.metrics().connections).toBe(0);
    await tick();
    expect(sock.destroyed).toBe(true);
    expect(got.errors).toEqual([]);
  });

  test('a REQUEST to a port without a listener gets RST; closed listeners free their port', () => {
    const { device, guest } = rig();
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 5, dstPort: 9999 });
    let pkts = guest.receive();
    expect(pkts.map((p) => [p.hdr.op, p.hdr.srcPort, p.hdr.dstPort])).toEqual([[VIRTIO_VSOCK_OP_RST, 9999, 5]]);
    expect(device.metrics().refusedRequests).toBe(1);
    const l = device.listen(9999, () => {});
    expect(() => device.listen(9999, () => {})).toThrow(expect.objectContaining({ code: 'PORT_IN_USE' }));
    l.close();
    const l2 = device.listen(9999, () => {});
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 6, dstPort: 9999 });
    pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RESPONSE]);
    l2.close();
  });

  test('host connect: REQUEST from a local port, RESPONSE resolves, RST rejects with a typed error', async () => {
    const { device, guest } = rig();
    const p = device.connect(5000);
    let pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_REQUEST]);
    const local = pkts[0].hdr.srcPort;
    expect(local).toBeGreaterThanOrEqual(VSOCK_LOCAL_PORT_FIRST);
    expect(pkts[0].hdr.dstPort).toBe(5000);
    guest.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: 5000, dstPort: local, bufAlloc: 4096 });
    const sock = await p;
    expect(sock.localPort).toBe(local);
    expect(sock.remotePort).toBe(5000);

    const q = device.connect(5001);
    pkts = guest.receive();
    guest.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 5001, dstPort: pkts[0].hdr.srcPort });
    await expect(q).rejects.toMatchObject({ name: 'VsockError', code: 'CONNECTION_REFUSED' });
    expect(device.metrics().connectRefused).toBe(1);
    await expect(device.connect(-1)).rejects.toMatchObject({ code: 'BAD_PORT' });
    sock.destroy();
    pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RST]);
    expect(device.metrics().connections).toBe(0);
  });

  test('host connect times out when the guest does not answer; a late RESPONSE gets RST', async () => {
    const host = fakeHost();
    const { device, guest } = rig({ host });
    const p = device.connect(5000, { timeoutMs: 100 });
    const pkts = guest.receive();
    host.time.advance(100);
    await expect(p).rejects.toMatchObject({ code: 'CONNECT_TIMEOUT' });
    guest.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: 5000, dstPort: pkts[0].hdr.srcPort });
    expect(ops(guest.receive())).toEqual([VIRTIO_VSOCK_OP_RST]);
    expect(device.metrics()).toMatchObject({ connectTimeouts: 1, connections: 0 });
  });

  test('a connect made before the driver is up waits for it, also across the probe reset', async () => {
    const host = fakeHost();
    const device = createVsockDevice(checkVsockOptions({ guestCid: 3 }), host);
    const p = device.connect(5000);
    const guest = new MockVsockGuest(device);
    const pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_REQUEST]);
    guest.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: 5000, dstPort: pkts[0].hdr.srcPort, bufAlloc: 4096 });
    await expect(p).resolves.toBeInstanceOf(VsockSocket);
  });

  test('a REQUEST the driver queued and kicked before DRIVER_OK is served after activation', async () => {
    const device = createVsockDevice(checkVsockOptions({ guestCid: 3 }), fakeHost());
    const accepted: VsockSocket[] = [];
    device.listen(7, (s) => accepted.push(s));
    const mem = GuestMemory.anonymous(1 << 20);
    const alloc = new BumpAllocator(mem);
    const transport = new MmioTransport(device, { mem, irq: new MockIrq() });
    const driver = new MockMmioDriver(transport, mem);
    expect(driver.negotiate()).toBe(true);
    const qs = [0, 1, 2].map((i) => {
      const layout = allocQueueLayout(alloc, 16);
      driver.setupQueue(i, layout);
      return new MockVirtqueue(mem, layout);
    });
    const rx = alloc.alloc(4096 + 44);
    qs[0].addChain([{ addr: rx, len: 4096 + 44, write: true }]);
    const hdr = new Uint8Array(44);
    encodeHeader({ srcCid: 3, dstCid: 2, srcPort: 1, dstPort: 7, len: 0, type: 1, op: VIRTIO_VSOCK_OP_REQUEST, flags: 0, bufAlloc: 4096, fwdCnt: 0 }, hdr);
    qs[1].addChain([{ addr: alloc.allocData(hdr), len: 44 }]);
    driver.notify(1); // dropped: before DRIVER_OK
    driver.driverOk();
    await tick();
    expect(accepted).toHaveLength(1);
    expect(qs[0].readUsed()).toHaveLength(1);
    expect(decodeHeader(mem.read(rx, 44)).op).toBe(VIRTIO_VSOCK_OP_RESPONSE);
  });

  test('a host reader that does not read stops the guest: credit runs out, then comes back as it reads', async () => {
    const { device, guest } = rig({ bufferSize: 16384 });
    let sock!: VsockSocket;
    device.listen(7, (s) => (sock = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 65536 });
    guest.receive();
    // The guest may send 16 KiB; it does, in 4 KiB packets, and nobody reads.
    for (let i = 0; i < 4; i++) guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.alloc(4096, i));
    await tick();
    expect(device.metrics().protocolViolations).toBe(0);
    // One byte more breaks the credit: the connection is reset.
    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.alloc(1));
    expect(ops(guest.receive())).toEqual([VIRTIO_VSOCK_OP_RST]);
    expect(device.metrics().protocolViolations).toBe(1);
    expect((sock as VsockSocket).abortError).toMatchObject({ code: 'CONNECTION_RESET' });
  });

  test('reading frees credit and the device tells the guest (CREDIT_UPDATE)', async () => {
    const { device, guest } = rig({ bufferSize: 16384 });
    let sock!: VsockSocket;
    device.listen(7, (s) => {
      sock = s;
      s.pause();
    });
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 65536 });
    guest.receive();
    for (let i = 0; i < 4; i++) guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.alloc(4096, i));
    await tick();
    expect(guest.receive()).toEqual([]);
    const read: Buffer[] = [];
    sock.on('data', (c: Buffer) => read.push(c));
    sock.resume();
    await tick();
    expect(Buffer.concat(read).length).toBe(16384);
    const pkts = guest.receive();
    expect(ops(pkts)).toContain(VIRTIO_VSOCK_OP_CREDIT_UPDATE);
    expect(pkts[pkts.length - 1].hdr.fwdCnt).toBe(16384);
    // The guest answers a CREDIT_REQUEST too.
    guest.send({ op: VIRTIO_VSOCK_OP_CREDIT_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 65536 });
    expect(guest.receive().map((p) => [p.hdr.op, p.hdr.bufAlloc, p.hdr.fwdCnt])).toEqual([[VIRTIO_VSOCK_OP_CREDIT_UPDATE, 16384, 16384]]);
  });

  test('a guest that does not read stops the host writer: write() returns false, data waits for credit', async () => {
    const { device, guest } = rig();
    let sock!: VsockSocket;
    device.listen(7, (s) => (sock = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 8192 });
    guest.receive();
    const chunk = Buffer.alloc(16384, 7);
    let writes = 0;
    while (sock.write(chunk)) writes++;
    expect(writes).toBeLessThan(10);
    await tick();
    let pkts = guest.receive();
    const rw = pkts.filter((p) => p.hdr.op === VIRTIO_VSOCK_OP_RW);
    expect(rw.reduce((n, p) => n + p.payload.length, 0)).toBe(8192);
    // Out of credit, the device asks once for more.
    expect(ops(pkts).filter((o) => o === VIRTIO_VSOCK_OP_CREDIT_REQUEST)).toHaveLength(1);
    expect(guest.receive()).toEqual([]);
    // The guest consumed it: more flows.
    guest.send({ op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, srcPort: 1, dstPort: 7, bufAlloc: 8192, fwdCnt: 8192 });
    pkts = guest.receive();
    expect(pkts.filter((p) => p.hdr.op === VIRTIO_VSOCK_OP_RW).reduce((n, p) => n + p.payload.length, 0)).toBe(8192);
  });

  test('guest SHUTDOWN(RECEIVE) fails the host writer; RST aborts the reader with CONNECTION_RESET', async () => {
    const { device, guest } = rig();
    let sock!: VsockSocket;
    device.listen(7, (s) => (sock = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 0 });
    guest.receive();
    const errors: Error[] = [];
    sock.on('error', (e) => errors.push(e));
    sock.write('x');
    guest.send({ op: VIRTIO_VSOCK_OP_SHUTDOWN, srcPort: 1, dstPort: 7, flags: VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE });
    await tick();
    expect(errors[0]).toMatchObject({ code: 'PEER_CLOSED' });

    let sock2!: VsockSocket;
    device.listen(8, (s) => (sock2 = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 2, dstPort: 8, bufAlloc: 4096 });
    guest.receive();
    const got = collect(sock2);
    guest.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 2, dstPort: 8 });
    await tick();
    expect(got.errors[0]).toBeInstanceOf(VsockError);
    expect(got.errors[0]).toMatchObject({ code: 'CONNECTION_RESET' });
  });

  test('hostile headers: spoofed CID dropped, wrong type / CID / op answered with RST, bad lengths dropped', () => {
    const { device, guest } = rig();
    device.listen(7, () => {});
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcCid: 4, srcPort: 1, dstPort: 7 });
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, dstCid: 5, srcPort: 1, dstPort: 7 });
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, type: 2, srcPort: 1, dstPort: 7 });
    guest.send({ op: 99, srcPort: 1, dstPort: 7 });
    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, len: 100 }, Buffer.alloc(10));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, len: 4 }, Buffer.alloc(4));
    guest.sendRaw(Buffer.alloc(20));
    const pkts = guest.receive();
    expect(ops(pkts)).toEqual([VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RST]);
    expect(pkts[0].hdr.srcCid).toBe(5);
    expect(device.metrics()).toMatchObject({ badSourceCid: 1, rejectedPackets: 3, badLength: 2, malformedChains: 1, connections: 0 });
  });

  test('many connections at once; local ports are not reused at once and are freed on close', async () => {
    const { device, guest } = rig({ rxBuffers: 128 });
    const socks: Promise<VsockSocket>[] = [];
    for (let i = 0; i < 50; i++) socks.push(device.connect(6000 + i));
    const reqs = guest.receive();
    expect(reqs).toHaveLength(50);
    const locals = new Set(reqs.map((p) => p.hdr.srcPort));
    expect(locals.size).toBe(50);
    for (const r of reqs) guest.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: r.hdr.dstPort, dstPort: r.hdr.srcPort, bufAlloc: 4096 });
    const open = await Promise.all(socks);
    expect(device.metrics().connections).toBe(50);
    for (const s of open) s.destroy();
    expect(ops(guest.receive()).filter((o) => o === VIRTIO_VSOCK_OP_RST)).toHaveLength(50);
    expect(device.metrics().connections).toBe(0);
    const again = device.connect(6000);
    const p = guest.receive();
    expect(locals.has(p[0].hdr.srcPort)).toBe(false);
    guest.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 6000, dstPort: p[0].hdr.srcPort });
    await expect(again).rejects.toMatchObject({ code: 'CONNECTION_REFUSED' });
    // A guest port may connect again once its previous connection is gone.
    device.listen(7, () => {});
    for (let round = 0; round < 3; round++) {
      guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7 });
      expect(ops(guest.receive())).toEqual([VIRTIO_VSOCK_OP_RESPONSE]);
      guest.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 1, dstPort: 7 });
    }
    expect(device.metrics().connections).toBe(0);
  });

  test('connection limit: further REQUESTs get RST, host connects reject', async () => {
    const { device, guest } = rig({ maxConnections: 2 });
    device.listen(7, () => {});
    for (let p = 1; p <= 3; p++) guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: p, dstPort: 7 });
    expect(ops(guest.receive())).toEqual([VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST]);
    await expect(device.connect(1)).rejects.toMatchObject({ code: 'TOO_MANY_CONNECTIONS' });
  });

  test('transport reset: connections dropped, event delivered; driver reset drops connections too', async () => {
    const { device, guest } = rig();
    let sock!: VsockSocket;
    device.listen(7, (s) => (sock = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7 });
    guest.receive();
    const pending = device.connect(99);
    device.resetTransport();
    await expect(pending).rejects.toMatchObject({ code: 'TRANSPORT_RESET' });
    expect(sock.destroyed).toBe(true);
    expect(sock.abortError).toMatchObject({ code: 'TRANSPORT_RESET' });
    guest.receive();
    expect(guest.events).toBe(1);
    expect(device.metrics()).toMatchObject({ connections: 0, events: 1, transportResets: 1 });

    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 2, dstPort: 7 });
    guest.receive();
    const s2 = sock;
    guest.driver.setStatus(0);
    expect(s2.destroyed).toBe(true);
    expect(device.metrics().connections).toBe(0);
  });

  test('save and restore: connection, credit counters and unread data carry over', async () => {
    const { device, guest } = rig();
    let sock!: VsockSocket;
    device.listen(7, (s) => {
      sock = s;
      s.pause();
    });
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 65536 });
    guest.receive();
    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.from('unread'));
    await tick();
    const saved = guest.transport.saveState();
    const json = JSON.parse(JSON.stringify(saved));

    // A new device in a new machine, with its listener registered before the restore.
    const host2 = fakeHost();
    const device2 = createVsockDevice(checkVsockOptions({ guestCid: 3 }), host2);
    const restored: VsockSocket[] = [];
    device2.listen(7, (s) => restored.push(s));
    const guest2 = new MockVsockGuest(device2);
    // The restoring transport takes the first guest's memory layout: reuse its memory.
    guest2.mem.write(0, guest.mem.read(0, Math.min(guest.mem.totalSize, guest2.mem.totalSize)));
    guest2.transport.restoreState(json);
    expect(restored).toHaveLength(1);
    expect(restored[0].restored).toBe(true);
    const got = collect(restored[0]);
    await tick();
    expect(got.data().toString()).toBe('unread');
    expect(device2.metrics()).toMatchObject({ connections: 1, restoredConnections: 1 });
    expect(device2.saveState()).toMatchObject({ connections: [expect.objectContaining({ rxCnt: 6, fwdCnt: 6, guestPort: 1, hostPort: 7 })] });
    sock.destroy();
  });

  test('restoreState refuses bad states and changes nothing', () => {
    const { device } = rig();
    const good = device.saveState();
    expect(() => device.restoreState({ ...good, guestCid: 9 })).toThrow(/CID/);
    expect(() => device.restoreState({ ...good, connections: [{ hostPort: 1 }] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    const conn = {
      hostPort: 7, guestPort: 1, origin: 'guest', state: 'established', bufAlloc: 4096, rxCnt: 10, fwdCnt: 0, lastAdvertisedFwdCnt: 0,
      peerBufAlloc: 0, peerFwdCnt: 0, txCnt: 0, peerShutdown: 0, localShutdown: 0, shutdownSent: 0, sendRst: false, sendResponse: false,
      sendCreditUpdate: false, creditRequested: false, eofDelivered: false, rxData: '', txData: '',
    };
    expect(() => device.restoreState({ ...good, connections: [conn] })).toThrow(/unread/);
    expect(() => device.restoreState({ ...good, connections: [{ ...conn, rxCnt: 0 }, { ...conn, rxCnt: 0 }] })).toThrow(/twice/);
    expect(() => device.restoreState({ ...good, connections: [{ ...conn, rxCnt: 0, origin: 'host' }] })).toThrow(/local port/);
    expect(device.saveState()).toEqual(good);
  });

  test('close drops everything and refuses new work', async () => {
    const { device, guest } = rig();
    device.listen(7, () => {});
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7 });
    guest.receive();
    await device.close();
    expect(device.metrics().connections).toBe(0);
    await expect(device.connect(1)).rejects.toMatchObject({ code: 'CLOSED' });
    expect(() => device.listen(8, () => {})).toThrow(expect.objectContaining({ code: 'CLOSED' }));
  });
});

describe('vsock Firecracker-compatible Unix socket', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsock-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Plays the guest side: answers REQUESTs to `port` with RESPONSE, echoes data upper-cased, follows shutdowns. */
  function playGuest(guest: MockVsockGuest, stop: () => boolean): Promise<void> {
    return (async () => {
      while (!stop()) {
        for (const p of guest.receive()) {
          const reply = { srcPort: p.hdr.dstPort, dstPort: p.hdr.srcPort, bufAlloc: 65536, fwdCnt: 0 };
          if (p.hdr.op === VIRTIO_VSOCK_OP_REQUEST) guest.send({ op: VIRTIO_VSOCK_OP_RESPONSE, ...reply });
          if (p.hdr.op === VIRTIO_VSOCK_OP_RW) guest.send({ op: VIRTIO_VSOCK_OP_RW, ...reply }, Buffer.from(p.payload.toString().toUpperCase()));
          if (p.hdr.op === VIRTIO_VSOCK_OP_SHUTDOWN) guest.send({ op: VIRTIO_VSOCK_OP_SHUTDOWN, ...reply, flags: 3 });
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
  }

  test('host program: CONNECT <port> / OK <hostport>, then the stream; half-close passes through', async () => {
    const udsPath = path.join(dir, 'v.sock');
    const { device, guest } = rig({ host: createVsockHost(), udsPath });
    await device.startHostServices();
    let done = false;
    const guestLoop = playGuest(guest, () => done);
    const client = net.createConnection({ path: udsPath, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    client.on('data', (c) => chunks.push(c));
    const ended = new Promise<void>((r) => client.on('end', () => r()));
    client.write('CONNECT 5000\nhello');
    await new Promise((r) => setTimeout(r, 50));
    client.end(' world');
    await ended;
    done = true;
    await guestLoop;
    const text = Buffer.concat(chunks).toString();
    expect(text).toMatch(/^OK (\d+)\n/);
    expect(Number(/^OK (\d+)/.exec(text)![1])).toBeGreaterThanOrEqual(VSOCK_LOCAL_PORT_FIRST);
    expect(text.replace(/^OK \d+\n/, '')).toBe('HELLO WORLD');
    client.destroy();
    await device.close();
    expect(fs.existsSync(udsPath)).toBe(false);
  });

  test('malformed CONNECT line closes the client', async () => {
    const udsPath = path.join(dir, 'v.sock');
    const { device } = rig({ host: createVsockHost(), udsPath });
    await device.startHostServices();
    const client = net.createConnection({ path: udsPath });
    client.write('HELLO\n');
    await new Promise<void>((r) => client.on('close', () => r()));
    expect(device.metrics().udsBadRequests).toBe(1);
    await device.close();
  });

  test('guest connect to host port P goes to <udsPath>_P; RST when nobody listens there', async () => {
    const udsPath = path.join(dir, 'v.sock');
    const { device, guest } = rig({ host: createVsockHost(), udsPath });
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', (d) => s.write(`echo:${d}`));
      s.on('end', () => s.end());
    });
    await new Promise<void>((r) => server.listen(`${udsPath}_52`, () => r()));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 9, dstPort: 52, bufAlloc: 65536 });
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 10, dstPort: 53, bufAlloc: 65536 });
    const all: ReceivedPacket[] = [];
    const until = async (pred: () => boolean) => {
      for (let i = 0; i < 200 && !pred(); i++) {
        await new Promise((r) => setTimeout(r, 5));
        all.push(...guest.receive());
      }
    };
    await until(() => all.some((p) => p.hdr.op === VIRTIO_VSOCK_OP_RESPONSE) && all.some((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST));
    expect(all.find((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST)!.hdr.dstPort).toBe(10);
    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 9, dstPort: 52, bufAlloc: 65536 }, Buffer.from('ping'));
    await until(() => all.some((p) => p.hdr.op === VIRTIO_VSOCK_OP_RW));
    expect(all.find((p) => p.hdr.op === VIRTIO_VSOCK_OP_RW)!.payload.toString()).toBe('echo:ping');
    expect(device.metrics()).toMatchObject({ udsForwarded: 1, udsForwardFailures: 1 });
    await device.close();
    await new Promise<void>((r) => server.close(() => r()));
  });
});

describe('vsock device and host code', () => {
  test("a throwing 'data' handler surfaces on the next tick (as an uncaught exception would), and the device goes on", async () => {
    const { device, guest } = rig();
    let sock!: VsockSocket;
    device.listen(7, (s) => (sock = s));
    guest.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1, dstPort: 7, bufAlloc: 65536 });
    guest.receive();
    await tick();
    let calls = 0;
    sock.on('data', () => {
      calls++;
      if (calls === 1) throw new Error('user bug');
    });
    await tick();
    // Jest owns uncaught exceptions, so the ticks of this synchronous step are caught and run here.
    const ticks: (() => void)[] = [];
    const realNextTick = process.nextTick;
    process.nextTick = ((fn: (...a: unknown[]) => void, ...args: unknown[]) => void ticks.push(() => fn(...args))) as typeof process.nextTick;
    try {
      guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.from('a'));
    } finally {
      process.nextTick = realNextTick;
    }
    const thrown: string[] = [];
    for (const t of ticks) {
      try {
        t();
      } catch (e) {
        thrown.push((e as Error).message);
      }
    }
    expect(thrown).toEqual(['user bug']);
    guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1, dstPort: 7, bufAlloc: 65536 }, Buffer.from('b'));
    await tick();
    expect(calls).toBe(2);
    expect(device.metrics().queueErrors).toBe(0);
    expect(guest.transport.status & 0x40).toBe(0);
  });
});
