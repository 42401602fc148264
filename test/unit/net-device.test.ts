import { Duplex } from 'stream';
import { ConfigError } from '../../lib/config';
import { MmioTransport } from '../../lib/virtio/mmio';
import { MockIrq, MockMmioDriver } from '../../lib/testing/mock-driver';
import { RateLimiter } from '../../lib/ratelimit';
import { VIRTIO_F_EVENT_IDX, VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INTERRUPT_STATUS, featureBit, hasFeature } from '../../lib/virtio/constants';
import {
  LinkBackend,
  NetDevice,
  TapBackend,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_UFO,
  TUN_F_TSO_ECN,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VNET_HDR_SIZE,
  checkMmdsOptions,
  checkNicOptions,
  checkNicUpdate,
  createNetDevice,
  encodeVnetHeader,
  formatMac,
  parseMac,
} from '../../lib/devices/net';
import { VirtualSwitch } from '../../lib/net/switch';
import { FakeTime } from './helpers/fake-time';
import {
  BROADCAST,
  FakeNetHost,
  MAC_A,
  MAC_B,
  ManualScheduler,
  ethFrame,
  netRig,
  postRx,
  receive,
  sendFrame,
  concat,
  type NetRig,
} from './helpers/fake-net';

const ETH_IP = 0x0800;

function tapRig(opts: { mac?: Uint8Array; features?: (d: NetDevice) => bigint; mtu?: number; rx?: RateLimiter; tx?: RateLimiter; queueSize?: number } = {}) {
  const host = new FakeNetHost();
  const tap = host.addTap('tap0');
  const backend = new TapBackend(host, host.openTap('tap0'));
  const cfg = { id: 'eth0', backend, mtu: opts.mtu ?? 1500, ...(opts.mac ? { mac: opts.mac } : {}), ...(opts.rx ? { rxRateLimiter: opts.rx } : {}), ...(opts.tx ? { txRateLimiter: opts.tx } : {}) };
  // Features are chosen against what a device with this config offers.
  const features = opts.features ? opts.features(new NetDevice({ ...cfg, id: 'x', backend: new TapBackend(host, { fd: -1, name: 'x', offloads: host.offloads }) })) : undefined;
  const r = netRig({ ...cfg, ...(opts.queueSize ? { queueSize: opts.queueSize } : {}) }, { features, queueSize: opts.queueSize });
  return { ...r, host, tap };
}

/** An objectMode duplex whose written frames are collected and into which the test pushes frames. */
function objectDuplex(highWaterMark = 16) {
  const sent: Buffer[] = [];
  let accept = true;
  const stream = new Duplex({
    objectMode: true,
    writableHighWaterMark: highWaterMark,
    read() {},
    write(chunk: Buffer, _enc, cb) {
      sent.push(chunk);
      if (accept) cb();
      else pendingCb.push(cb);
    },
  });
  const pendingCb: (() => void)[] = [];
  return {
    stream,
    sent,
    hold() {
      accept = false;
    },
    release() {
      accept = true;
      for (const cb of pendingCb.splice(0)) cb();
    },
  };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('NIC options', () => {
  it('accepts a TAP or a link, a MAC and an MTU', () => {
    const c = checkNicOptions('eth0', { tap: 'tap0', mac: '06:00:AC:10:00:02', mtu: 9000 });
    expect(c.backend).toEqual({ kind: 'tap', name: 'tap0' });
    expect(formatMac(c.mac!)).toBe('06:00:ac:10:00:02');
    expect(c.mtu).toBe(9000);
    const sw = new VirtualSwitch();
    expect(checkNicOptions('eth1', { link: sw }).backend.kind).toBe('switch');
    expect(checkNicOptions('eth2', { link: objectDuplex().stream }).backend.kind).toBe('duplex');
    expect(checkNicOptions('eth3', { tap: 't' }).mtu).toBe(1500);
  });

  it.each([
    [{ tap: 'tap0', mtu: 1500, speed: 10 }, 'UNKNOWN_OPTION'],
    [{ tap: 'tap0', Mac: '06:00:00:00:00:01' }, 'UNKNOWN_OPTION'],
    [{ tap: 'tap0', link: new VirtualSwitch() }, 'INVALID_NIC'],
    [{}, 'INVALID_NIC'],
    [{ tap: '' }, 'INVALID_NIC'],
    [{ tap: 'a/b' }, 'INVALID_NIC'],
    [{ tap: 'sixteen-chars-xx' }, 'INVALID_NIC'],
    [{ tap: 'tap0', mac: '06:00:ac:10:00' }, 'INVALID_MAC'],
    [{ tap: 'tap0', mac: '07:00:ac:10:00:02' }, 'INVALID_MAC'],
    [{ tap: 'tap0', mac: '00:00:00:00:00:00' }, 'INVALID_MAC'],
    [{ tap: 'tap0', mac: 42 }, 'INVALID_MAC'],
    [{ tap: 'tap0', mtu: 67 }, 'INVALID_NIC'],
    [{ tap: 'tap0', mtu: 65536 }, 'INVALID_NIC'],
    [{ tap: 'tap0', mtu: 1500.5 }, 'INVALID_NIC'],
    [{ link: new Duplex({ read() {}, write(_c, _e, cb) { cb(); } }) }, 'INVALID_NIC'],
    [{ link: {} }, 'INVALID_NIC'],
    [{ tap: 'tap0', rxRateLimiter: { bandwidth: { size: -1, refillTime: 100 } } }, 'INVALID_RATE_LIMITER'],
    [{ tap: 'tap0', txRateLimiter: { bytes: {} } }, 'UNKNOWN_OPTION'],
  ])('refuses %p with %s', (opts, code) => {
    let err: unknown;
    try {
      checkNicOptions('eth0', opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe(code);
  });

  it('refuses a duplicate id and a bad id', () => {
    expect(() => checkNicOptions('eth0', { tap: 't' }, ['eth0'])).toThrow(expect.objectContaining({ code: 'DUPLICATE_ID' }));
    expect(() => checkNicOptions('eth 0', { tap: 't' })).toThrow(expect.objectContaining({ code: 'INVALID_NIC' }));
    expect(() => checkNicUpdate('eth0', { mtu: 1 })).toThrow(expect.objectContaining({ code: 'UNKNOWN_OPTION' }));
  });

  it('parses and refuses MACs', () => {
    expect([...parseMac('02:ff:00:00:00:01')]).toEqual([2, 255, 0, 0, 0, 1]);
    expect(() => parseMac('ff:ff:ff:ff:ff:ff')).toThrow(expect.objectContaining({ code: 'INVALID_MAC' }));
  });

  it('validates MMDS options against configured NICs', () => {
    const c = checkMmdsOptions({ version: 'v2', nics: ['eth0'] }, ['eth0', 'eth1']);
    expect(c).toEqual({ version: 'v2', ipv4Address: Uint8Array.from([169, 254, 169, 254]), nics: ['eth0'], sizeLimit: 51200 });
    const bad = (o: unknown, ids = ['eth0']) => {
      try {
        checkMmdsOptions(o, ids);
      } catch (e) {
        return (e as ConfigError).code;
      }
      return 'accepted';
    };
    expect(bad({ nics: ['eth9'] })).toBe('INVALID_MMDS');
    expect(bad({ nics: [] })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0', 'eth0'] })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0'], version: 'v3' })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0'], ipv4Address: '10.0.0.1' })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0'], ipv4Address: '169.254.300.1' })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0'], sizeLimit: 0 })).toBe('INVALID_MMDS');
    expect(bad({ nics: ['eth0'], size: 10 })).toBe('UNKNOWN_OPTION');
    expect(bad({ nics: ['eth0'], ipv4Address: '169.254.1.2', sizeLimit: 100 })).toBe('accepted');
  });

  it('maps TAP open failures to their codes', () => {
    const host = new FakeNetHost();
    host.addTap('tap0');
    expect(() => createNetDevice(checkNicOptions('e', { tap: 'nope' }), host)).toThrow(expect.objectContaining({ code: 'TAP_NOT_FOUND' }));
    const dev = createNetDevice(checkNicOptions('e', { tap: 'tap0' }), host);
    expect(() => createNetDevice(checkNicOptions('f', { tap: 'tap0' }), host)).toThrow(expect.objectContaining({ code: 'TAP_BUSY' }));
    const failing = { ...host, openTap: () => { throw Object.assign(new Error('EPERM'), { code: 'EPERM' }); } } as unknown as FakeNetHost;
    expect(() => createNetDevice(checkNicOptions('g', { tap: 'x' }), failing)).toThrow(expect.objectContaining({ code: 'TAP_OPEN_FAILED' }));
    const notTap = { ...host, openTap: () => { throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' }); } } as unknown as FakeNetHost;
    expect(() => createNetDevice(checkNicOptions('h', { tap: 'eth0' }), notTap)).toThrow(expect.objectContaining({ code: 'TAP_NOT_FOUND' }));
    return dev.close();
  });
});

describe('virtio-net features and config space', () => {
  it('offers MAC, MTU, STATUS, MRG_RXBUF and the TAP offloads it accepted', () => {
    const { device } = tapRig({ mac: MAC_A });
    const f = device.deviceFeatures;
    for (const b of [VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4]) {
      expect(hasFeature(f, b)).toBe(true);
    }
    const host = new FakeNetHost();
    host.offloads = 0; // a TAP that refused every offload: no GUEST_* features
    host.addTap('t');
    const d2 = new NetDevice({ id: 'e', backend: new TapBackend(host, host.openTap('t')), mtu: 1500 });
    expect(hasFeature(d2.deviceFeatures, VIRTIO_NET_F_GUEST_CSUM)).toBe(false);
    expect(hasFeature(d2.deviceFeatures, VIRTIO_NET_F_HOST_TSO4)).toBe(true);
    expect(hasFeature(d2.deviceFeatures, VIRTIO_NET_F_MAC)).toBe(false);
    const link = new NetDevice({ id: 'l', backend: new LinkBackend(objectDuplex().stream, false), mtu: 1500 });
    expect(hasFeature(link.deviceFeatures, VIRTIO_NET_F_CSUM)).toBe(false);
    expect(hasFeature(link.deviceFeatures, VIRTIO_NET_F_GUEST_CSUM)).toBe(false);
  });

  it('exposes mac, status and mtu; writes are ignored', () => {
    const r = tapRig({ mac: MAC_A, mtu: 9000 });
    const rd = (off: number, size: number) => r.transport.read(VIRTIO_MMIO_CONFIG + off, size);
    expect([0, 1, 2, 3, 4, 5].map((i) => rd(i, 1))).toEqual([...MAC_A]);
    expect(rd(6, 2)).toBe(1);
    expect(rd(10, 2)).toBe(9000);
    expect(rd(12, 4)).toBe(0);
    r.transport.write(VIRTIO_MMIO_CONFIG, 1, 0x99);
    expect(rd(0, 1)).toBe(MAC_A[0]);
    expect(r.device.metrics().configWritesIgnored).toBe(1);
  });

  it('sets the TAP offloads to what the driver accepted', () => {
    const a = tapRig({ features: (d) => d.deviceFeatures });
    expect(a.tap.offloadCalls.at(-1)).toBe(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO);
    const b = tapRig({ features: () => featureBit(VIRTIO_NET_F_GUEST_CSUM) | featureBit(VIRTIO_NET_F_GUEST_TSO4) });
    expect(b.tap.offloadCalls.at(-1)).toBe(TUN_F_CSUM | TUN_F_TSO4);
    const c = tapRig({ features: () => featureBit(VIRTIO_NET_F_GUEST_TSO4) }); // TSO without checksum offload is unusable
    expect(c.tap.offloadCalls.at(-1)).toBe(0);
  });
});

describe('transmit', () => {
  it('passes header and frame to the TAP untouched, from one or two descriptors', () => {
    const r = tapRig({ mac: MAC_A });
    const f = ethFrame(BROADCAST, MAC_A, ETH_IP, 100);
    const hdr = encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 16 });
    sendFrame(r, f, hdr);
    sendFrame(r, f, new Uint8Array(VNET_HDR_SIZE), true);
    expect(r.tap.written).toHaveLength(2);
    expect(Buffer.from(r.tap.written[0]).equals(Buffer.from(concat(hdr, f)))).toBe(true);
    expect(Buffer.from(r.tap.written[1]).equals(Buffer.from(concat(new Uint8Array(12), f)))).toBe(true);
    expect(r.txq.readUsed().map((u) => u.len)).toEqual([0, 0]);
    const m = r.device.metrics();
    expect(m.txFrames).toBe(2);
    expect(m.txBytes).toBe(2 * f.length);
  });

  it('drops frames with another source MAC, and counts them', () => {
    const r = tapRig({ mac: MAC_A });
    sendFrame(r, ethFrame(BROADCAST, MAC_B, ETH_IP, 50));
    expect(r.tap.written).toHaveLength(0);
    expect(r.device.metrics().txDropsSpoofed).toBe(1);
    expect(r.txq.readUsed()).toHaveLength(1);
    // Without a configured MAC any source goes.
    const open = tapRig();
    sendFrame(open, ethFrame(BROADCAST, MAC_B, ETH_IP, 50));
    expect(open.tap.written).toHaveLength(1);
  });

  it('refuses offloads that were not negotiated and malformed chains', () => {
    const r = tapRig({ features: () => 0n });
    const f = ethFrame(BROADCAST, MAC_A, ETH_IP, 100);
    sendFrame(r, f, encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 16 }));
    sendFrame(r, f, encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 }));
    sendFrame(r, new Uint8Array(10));
    expect(r.tap.written).toHaveLength(0);
    expect(r.device.metrics().txDropsBadHeader).toBe(2);
    expect(r.device.metrics().txDropsMalformed).toBe(1);
    const ok = tapRig({ features: () => featureBit(VIRTIO_NET_F_CSUM) | featureBit(VIRTIO_NET_F_HOST_TSO4) });
    sendFrame(ok, f, encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 }));
    sendFrame(ok, f, encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 100, csumOffset: 16 })); // checksum past the end
    expect(ok.tap.written).toHaveLength(1);
    expect(ok.device.metrics().txDropsBadHeader).toBe(1);
  });

  it('counts TAP write failures and still completes the chain', () => {
    const r = tapRig();
    r.tap.writeError = 'EIO';
    sendFrame(r, ethFrame(BROADCAST, MAC_A, ETH_IP, 60));
    expect(r.device.metrics().txErrors).toBe(1);
    expect(r.txq.readUsed()).toHaveLength(1);
  });
});

describe('receive from a TAP', () => {
  const tapFrame = (len: number, flags = 0) => concat(encodeVnetHeader({ flags }), ethFrame(MAC_A, MAC_B, ETH_IP, len - 14));

  it('reads frames straight into mergeable buffers and sets num_buffers', () => {
    const r = tapRig({ mtu: 65535, features: (d) => d.deviceFeatures });
    postRx(r, 64, 1536);
    const small = tapFrame(60);
    const big = tapFrame(3000);
    const gso = tapFrame(65000);
    r.tap.inbound.push(small, big, gso);
    r.host.pumpTap('tap0');
    const got = receive(r);
    expect(got.map((g) => g.chains)).toEqual([1, 2, 43]);
    expect(Buffer.from(got[0].frame).equals(Buffer.from(small.subarray(12)))).toBe(true);
    expect(Buffer.from(got[1].frame).equals(Buffer.from(big.subarray(12)))).toBe(true);
    expect(Buffer.from(got[2].frame).equals(Buffer.from(gso.subarray(12)))).toBe(true);
    const m = r.device.metrics();
    expect(m.rxFrames).toBe(3);
    expect(m.rxBytes).toBe(60 + 3000 + 65000);
    // Chains popped but not filled stay held for the next frames.
    expect(m.rxChainsHeld).toBe(64 - 46);
  });

  it('without mergeable buffers, uses one chain per frame and drops what does not fit', () => {
    const r = tapRig({ features: () => featureBit(VIRTIO_NET_F_MTU) });
    postRx(r, 4, 12 + 1518, 3);
    r.tap.inbound.push(tapFrame(1000), tapFrame(2000), tapFrame(1514));
    r.host.pumpTap('tap0');
    const got = receive(r);
    expect(got.map((g) => g.frame.length)).toEqual([1000, 1514]);
    expect(got.every((g) => g.header[10] === 1 && g.header[11] === 0)).toBe(true);
    expect(r.device.metrics().rxDropsTruncated).toBe(1);
  });

  it('drops non-GSO TAP frames longer than the MTU, but passes GSO frames', () => {
    const r = tapRig({ mtu: 1500, features: (d) => d.deviceFeatures });
    postRx(r, 64, 1536);
    const gsoHeader = encodeVnetHeader({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
    r.tap.inbound.push(tapFrame(1519), concat(gsoHeader, ethFrame(MAC_A, MAC_B, ETH_IP, 9000)), tapFrame(1518));
    r.host.pumpTap('tap0');
    expect(receive(r).map((g) => g.frame.length)).toEqual([9014, 1518]);
    expect(r.device.metrics().rxDropsOversize).toBe(1);
  });

  it('clears receive flags the driver did not negotiate', () => {
    const r = tapRig({ features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) });
    postRx(r, 4, 1536);
    r.tap.inbound.push(tapFrame(100, VIRTIO_NET_HDR_F_DATA_VALID));
    r.host.pumpTap('tap0');
    expect(receive(r)[0].header[0]).toBe(0);
    const c = tapRig({ features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) | featureBit(VIRTIO_NET_F_GUEST_CSUM) });
    postRx(c, 4, 1536);
    c.tap.inbound.push(tapFrame(100, VIRTIO_NET_HDR_F_DATA_VALID));
    c.host.pumpTap('tap0');
    expect(receive(c)[0].header[0]).toBe(VIRTIO_NET_HDR_F_DATA_VALID);
  });

  it('leaves frames in the TAP while the guest has no buffers, then delivers them', () => {
    const r = tapRig({ features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) });
    r.tap.inbound.push(tapFrame(100), tapFrame(200));
    r.host.pumpTap('tap0');
    expect(r.tap.poll!.running).toBe(false);
    expect(r.tap.inbound).toHaveLength(2);
    postRx(r, 1, 1536); // one buffer: one frame, then paused again
    expect(receive(r).map((g) => g.frame.length)).toEqual([100]);
    expect(r.tap.poll!.running).toBe(false);
    postRx(r, 2, 1536);
    expect(receive(r).map((g) => g.frame.length)).toEqual([200]);
    expect(r.tap.poll!.running).toBe(true);
  });

  it('drops runts and counts read errors without throwing', () => {
    const r = tapRig({ features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) });
    postRx(r, 4, 1536);
    r.tap.inbound.push(new Uint8Array(20));
    r.host.pumpTap('tap0');
    expect(r.device.metrics().rxDropsRunt).toBe(1);
    r.tap.readError = 'EIO';
    r.tap.inbound.push(tapFrame(100));
    expect(() => r.tap.poll!.onReadable()).not.toThrow();
    expect(r.device.metrics().rxErrors).toBe(1);
  });

  it('returns malformed or tiny receive chains empty', () => {
    const r = tapRig({ features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) });
    const a = r.alloc.alloc(8);
    r.rxq.addChain([{ addr: a, len: 8, write: true }]);
    r.driver.notify(0);
    r.tap.inbound.push(tapFrame(100));
    r.host.pumpTap('tap0');
    expect(r.rxq.readUsed()).toEqual([expect.objectContaining({ len: 0 })]);
    expect(r.device.metrics().rxBadChains).toBe(1);
  });
});

describe('link backend', () => {
  function linkRig(opts: { rxQueueFrames?: number; mac?: Uint8Array; mtu?: number; hwm?: number } = {}) {
    const d = objectDuplex(opts.hwm);
    const r = netRig({ id: 'eth0', backend: new LinkBackend(d.stream, false), mtu: opts.mtu ?? 1500, ...(opts.mac ? { mac: opts.mac } : {}), ...(opts.rxQueueFrames ? { rxQueueFrames: opts.rxQueueFrames } : {}) });
    return { ...r, d };
  }
  // A Duplex starts flowing on the next tick after a 'data' listener is added.
  const flowing = tick;

  it('sends frames as Buffers without the header and receives them with one', async () => {
    const r = linkRig();
    await flowing();
    const f = ethFrame(BROADCAST, MAC_A, ETH_IP, 100);
    sendFrame(r, f);
    expect(r.d.sent).toHaveLength(1);
    expect(Buffer.isBuffer(r.d.sent[0])).toBe(true);
    expect(r.d.sent[0].equals(Buffer.from(f))).toBe(true);
    postRx(r, 4, 1536);
    const g = ethFrame(MAC_A, MAC_B, ETH_IP, 200);
    r.d.stream.push(Buffer.from(g));
    const got = receive(r);
    expect(got).toHaveLength(1);
    expect(Buffer.from(got[0].frame).equals(Buffer.from(g))).toBe(true);
    expect([...got[0].header]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  });

  it('queues frames while the guest has no buffers, bounded, and drops beyond the bound', async () => {
    const r = linkRig({ rxQueueFrames: 3 });
    await flowing();
    for (let i = 0; i < 5; i++) r.d.stream.push(Buffer.from(ethFrame(MAC_A, MAC_B, ETH_IP, 50 + i)));
    const m = r.device.metrics();
    expect(m.rxQueued).toBe(3);
    expect(m.rxDropsQueueFull).toBe(2);
    postRx(r, 8, 1536);
    expect(receive(r).map((g) => g.frame.length)).toEqual([64, 65, 66]);
    expect(r.device.metrics().rxQueued).toBe(0);
  });

  it('drops frames longer than MTU + headers instead of truncating them', async () => {
    const r = linkRig({ mtu: 1500 });
    await flowing();
    postRx(r, 4, 2048);
    r.d.stream.push(Buffer.from(ethFrame(MAC_A, MAC_B, ETH_IP, 1500 + 4)));
    r.d.stream.push(Buffer.from(ethFrame(MAC_A, MAC_B, ETH_IP, 1500 + 5)));
    r.d.stream.push(Buffer.alloc(10));
    r.d.stream.push('not a frame');
    expect(receive(r).map((g) => g.frame.length)).toEqual([1518]);
    const m = r.device.metrics();
    expect(m.rxDropsOversize).toBe(1);
    expect(m.rxDropsRunt).toBe(2);
  });

  it('drops frames that arrive before the driver is ready', async () => {
    const d = objectDuplex();
    const dev = new NetDevice({ id: 'e', backend: new LinkBackend(d.stream, false), mtu: 1500 });
    await tick();
    d.stream.push(Buffer.from(ethFrame(MAC_A, MAC_B, ETH_IP, 50)));
    expect(dev.metrics().rxDropsNotReady).toBe(1);
  });

  it('waits for drain when the link pushes back', async () => {
    const r = linkRig({ hwm: 1 });
    r.d.hold();
    for (let i = 0; i < 4; i++) sendFrame(r, ethFrame(BROADCAST, MAC_A, ETH_IP, 40 + i), undefined, false, false);
    r.driver.notify(1);
    expect(r.d.sent.length).toBe(1);
    expect(r.txq.readUsed()).toHaveLength(1);
    r.d.release();
    await tick();
    expect(r.d.sent.map((b) => b.length)).toEqual([54, 55, 56, 57]);
    expect(r.txq.readUsed()).toHaveLength(3);
  });

  it('detaches from a user stream on close, leaving it paused', async () => {
    const r = linkRig();
    await flowing();
    await r.device.close();
    expect(r.d.stream.isPaused()).toBe(true);
    expect(r.d.stream.listenerCount('data')).toBe(0);
    expect(r.d.stream.destroyed).toBe(false);
  });

  it('reports link down in the config space and drops frames sent meanwhile', () => {
    const r = linkRig();
    const before = r.transport.metrics().configChangeInterrupts;
    r.d.stream.destroy();
    return tick().then(() => {
      expect(r.transport.read(VIRTIO_MMIO_CONFIG + 6, 2)).toBe(0);
      expect(r.transport.metrics().configChangeInterrupts).toBe(before + 1);
      sendFrame(r, ethFrame(BROADCAST, MAC_A, ETH_IP, 40));
      expect(r.device.metrics().txDropsLinkDown).toBe(1);
      expect(r.device.metrics().linkUp).toBe(0);
    });
  });
});

describe('rate limiting', () => {
  it('holds transmission to the configured bandwidth (within 10%)', () => {
    const time = new FakeTime();
    // 100 kB/s: a 10 kB bucket refilled in 100 ms.
    const tx = new RateLimiter({ bandwidth: { size: 10_000, refillTime: 100 } }, { clock: time.clock, timers: time });
    const r = tapRig({ tx, queueSize: 1024 });
    const frame = ethFrame(BROADCAST, MAC_A, ETH_IP, 986); // 1000 bytes
    for (let i = 0; i < 400; i++) sendFrame(r, frame, undefined, false, false);
    r.driver.notify(1);
    const start = r.tap.written.length;
    expect(start).toBe(10); // the full bucket
    time.advance(2000);
    const sent = (r.tap.written.length - start) * 1000;
    expect(sent).toBeGreaterThanOrEqual(0.9 * 200_000);
    expect(sent).toBeLessThanOrEqual(1.1 * 200_000);
    expect(r.device.metrics().txThrottles).toBeGreaterThan(0);
  });

  it('holds reception to the configured frame rate (within 10%), keeping a read frame in guest buffers', () => {
    const time = new FakeTime();
    // 1000 frames/s.
    const rx = new RateLimiter({ ops: { size: 10, refillTime: 10 } }, { clock: time.clock, timers: time });
    const r = tapRig({ rx, features: () => featureBit(VIRTIO_NET_F_MRG_RXBUF) });
    postRx(r, 256, 1536);
    for (let i = 0; i < 2000; i++) r.tap.inbound.push(concat(new Uint8Array(12), ethFrame(MAC_A, MAC_B, ETH_IP, 60)));
    let got = 0;
    const drain = () => {
      got += receive(r).length;
      // Recycle buffers like a driver would.
      const need = 256 - r.rxq.freeCount;
      void need;
      if (r.rxq.freeCount > 128) postRx(r, r.rxq.freeCount, 1536);
    };
    r.host.pumpTap('tap0');
    drain();
    expect(got).toBe(10);
    for (let t = 0; t < 1000; t += 10) {
      time.advance(10);
      r.host.pumpTap('tap0');
      drain();
    }
    expect(got - 10).toBeGreaterThanOrEqual(900);
    expect(got - 10).toBeLessThanOrEqual(1100);
    expect(r.device.metrics().rxThrottles).toBeGreaterThan(0);
  });

  it('updates limits at run time and validates before changing anything', () => {
    const r = tapRig();
    r.device.updateRateLimiters({ txRateLimiter: { ops: { size: 1, refillTime: 1000 } } });
    expect(r.device.txRateLimiter?.enabled).toBe(true);
    expect(() => r.device.updateRateLimiters({ rxRateLimiter: { ops: { size: 1, refillTime: 1 } }, txRateLimiter: { ops: { size: -1, refillTime: 1 } } })).toThrow();
    expect(r.device.rxRateLimiter).toBeUndefined();
  });
});

describe('reset, state and close', () => {
  // A restore continues on the same guest memory contents; the old device is simply abandoned,
  // so the rigs below keep the original memory and rings and swap in a new device and transport.
  it('drops held chains and queued frames on a driver reset, and pauses the TAP', () => {
    const r = tapRig({ features: (d) => d.deviceFeatures });
    postRx(r, 64, 1536);
    r.tap.inbound.push(concat(new Uint8Array(12), ethFrame(MAC_A, MAC_B, ETH_IP, 60)));
    r.host.pumpTap('tap0');
    expect(r.device.metrics().rxChainsHeld).toBeGreaterThan(0);
    r.driver.setStatus(0);
    expect(r.device.metrics().rxChainsHeld).toBe(0);
    expect(r.tap.poll!.running).toBe(false);
  });

  it('saves and restores held chains, queued frames and the link state', async () => {
    const d = objectDuplex();
    const r = netRig({ id: 'eth0', backend: new LinkBackend(d.stream, false), mtu: 1500, mac: MAC_A }, { features: undefined });
    postRx(r, 2, 1536, 1, false);
    r.driver.notify(0);
    await tick();
    for (let i = 0; i < 5; i++) d.stream.push(Buffer.from(ethFrame(MAC_A, MAC_B, ETH_IP, 100 + i)));
    // Two delivered, three queued.
    expect(r.device.metrics().rxQueued).toBe(3);
    const state = r.transport.saveState();
    const json = JSON.parse(JSON.stringify(state));

    await r.device.close();
    const d2 = objectDuplex();
    const dev2 = new NetDevice({ id: 'eth0', backend: new LinkBackend(d2.stream, false), mtu: 1500, mac: MAC_A });
    const sched = new ManualScheduler();
    const t2 = new MmioTransport(dev2, { mem: r.mem, irq: new MockIrq(), defer: sched.defer });
    t2.restoreState(json);
    expect(dev2.metrics().rxQueued).toBe(3);
    // The guest posts more buffers: the queued frames arrive.
    const rig2: NetRig = { ...r, device: dev2, transport: t2, driver: new MockMmioDriver(t2, r.mem), sched };
    postRx(rig2, 4, 1536);
    const got = receive(rig2).map((g) => g.frame.length);
    expect(got).toEqual([114, 115, 116, 117, 118].slice(0, got.length));
    expect(got.length).toBe(5); // the two delivered before the snapshot are in the used ring too
    // A NIC configured with another MAC refuses the state.
    const dev3 = new NetDevice({ id: 'eth0', backend: new LinkBackend(objectDuplex().stream, false), mtu: 1500, mac: MAC_B });
    expect(() => dev3.restoreState(json.device)).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
  });

  it('restores TAP chains held across a snapshot and continues reading into them', () => {
    const r = tapRig({ features: (d) => d.deviceFeatures });
    postRx(r, 50, 1536);
    r.tap.inbound.push(concat(new Uint8Array(12), ethFrame(MAC_A, MAC_B, ETH_IP, 60)));
    r.host.pumpTap('tap0');
    receive(r);
    // 43 chains of 1536 bytes hold the largest (GSO) frame; one was used, one more popped for the next read.
    const held = r.device.metrics().rxChainsHeld;
    expect(held).toBe(43);
    const json = JSON.parse(JSON.stringify(r.transport.saveState()));
    const host2 = new FakeNetHost();
    const tap2 = host2.addTap('tap0');
    const dev2 = new NetDevice({ id: 'eth0', backend: new TapBackend(host2, host2.openTap('tap0')), mtu: 1500 });
    const t2 = new MmioTransport(dev2, { mem: r.mem, irq: new MockIrq(), defer: () => {} });
    t2.restoreState(json);
    expect(dev2.metrics().rxChainsHeld).toBe(43);
    tap2.inbound.push(concat(new Uint8Array(12), ethFrame(MAC_A, MAC_B, ETH_IP, 1400)));
    host2.pumpTap('tap0');
    expect(dev2.metrics().rxFrames).toBe(1);
  });

  it('refuses a state with heads out of range, or buffers held by an inactive device', () => {
    const d = new NetDevice({ id: 'e', backend: new LinkBackend(objectDuplex().stream, false), mtu: 1500 });
    const base = { mac: null, linkUp: true, held: [], deferred: null, pending: [], notifyPending: [false, false], mmds: null };
    expect(() => d.restoreState({ ...base, held: [300] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => d.restoreState({ ...base, held: [1] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => d.restoreState({ ...base, pending: ['!!'] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => d.restoreState({ ...base, notifyPending: [1, 2] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => d.restoreState(base)).not.toThrow();
  });

  it('close() closes the TAP and its watch', async () => {
    const r = tapRig();
    await r.device.close();
    expect(r.tap.closed).toBe(true);
    expect(r.tap.poll!.closed).toBe(true);
    expect(() => r.device.updateRateLimiters({})).toThrow(expect.objectContaining({ code: 'CLOSED' }));
  });
});

describe('interrupts', () => {
  it('raises one used-buffer interrupt per batch', () => {
    const features = (d: NetDevice) => d.deviceFeatures & ~featureBit(VIRTIO_F_EVENT_IDX);
    const r = tapRig({ features });
    postRx(r, 64, 1536); // with GSO negotiated the device waits for 64 KiB of buffers
    for (let i = 0; i < 10; i++) r.tap.inbound.push(concat(new Uint8Array(12), ethFrame(MAC_A, MAC_B, ETH_IP, 60)));
    const before = r.irq.triggers;
    r.host.pumpTap('tap0');
    expect(receive(r)).toHaveLength(10);
    expect(r.irq.triggers - before).toBe(1);
    expect(r.transport.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4) & 1).toBe(1);
  });
});
