import fc from 'fast-check';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver, MockVirtqueue, allocQueueLayout } from '../../lib/testing/mock-driver';
import {
  BALLOON_PAGE_SIZE,
  BALLOON_STAT_TAGS,
  PageSet,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ,
  checkBalloonOptions,
  checkBalloonUpdate,
  createBalloonDevice,
  type BalloonDevice,
  type BalloonHost,
} from '../../lib/devices/balloon';
import { featureBit, VIRTIO_F_VERSION_1, VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INTERRUPT_STATUS } from '../../lib/virtio/constants';
import { loadNative } from '../../lib/native/binding';
import { createBalloonHost } from '../../lib/vm/balloon-host';
import { FakeTime } from './helpers/fake-time';

const MiB = 1024 * 1024;

function recordingHost(time = new FakeTime()): BalloonHost & { discards: [number, number][]; time: FakeTime } {
  const h = { discards: [] as [number, number][], time, timers: time, discard: (a: number, l: number) => void h.discards.push([a, l]) };
  return h;
}

interface Rig {
  mem: GuestMemory;
  device: BalloonDevice;
  transport: MmioTransport;
  driver: MockMmioDriver;
  queues: MockVirtqueue[];
  alloc: BumpAllocator;
  host: ReturnType<typeof recordingHost>;
  irq: MockIrq;
  sendPfns: (queue: number, pfns: number[]) => void;
}

function rig(opts: Partial<Parameters<typeof checkBalloonOptions>[0] & object> = {}, features?: bigint, memBytes = 64 * MiB): Rig {
  const mem = GuestMemory.anonymous(memBytes);
  const alloc = new BumpAllocator(mem, 0x1000, 1 * MiB);
  const host = recordingHost();
  const device = createBalloonDevice(checkBalloonOptions({ amountMib: 0, deflateOnOom: true, ...opts }), host);
  const irq = new MockIrq();
  const transport = new MmioTransport(device, { mem, irq });
  const driver = new MockMmioDriver(transport, mem);
  const want = features ?? driver.deviceFeatures();
  const n = 2 + (want & featureBit(VIRTIO_BALLOON_F_STATS_VQ) ? 1 : 0) + (want & featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING) ? 1 : 0);
  const queues = driver.bringUp(alloc, Array(n).fill(16), want | featureBit(VIRTIO_F_VERSION_1));
  const sendPfns = (queue: number, pfns: number[]) => {
    const buf = alloc.alloc(Math.max(4, pfns.length * 4), 4);
    pfns.forEach((p, i) => mem.writeU32(buf + 4 * i, p));
    queues[queue].addChain([{ addr: buf, len: pfns.length * 4 }]);
    driver.notify(queue);
  };
  return { mem, device, transport, driver, queues, alloc, host, irq, sendPfns };
}

describe('balloon options', () => {
  test('Firecracker shape; unknown keys refused', () => {
    expect(checkBalloonOptions({ amountMib: 0, deflateOnOom: true })).toEqual({ amountMib: 0, deflateOnOom: true, statsPollingIntervalS: 0, freePageReporting: false });
    expect(checkBalloonOptions({ amountMib: 64, deflateOnOom: false, statsPollingIntervalS: 1, freePageReporting: true })).toMatchObject({ statsPollingIntervalS: 1, freePageReporting: true });
    expect(() => checkBalloonOptions({ deflateOnOom: true })).toThrow(/amountMib/);
    expect(() => checkBalloonOptions({ amountMib: 0 })).toThrow(/deflateOnOom/);
    expect(() => checkBalloonOptions({ amountMib: -1, deflateOnOom: true })).toThrow(expect.objectContaining({ code: 'INVALID_BALLOON' }));
    expect(() => checkBalloonOptions({ amountMib: 0, deflateOnOom: true, amount_mib: 3 })).toThrow(expect.objectContaining({ code: 'UNKNOWN_OPTION' }));
    expect(checkBalloonUpdate({ amountMib: 64 })).toEqual({ amountMib: 64 });
    expect(() => checkBalloonUpdate({})).toThrow(expect.objectContaining({ code: 'INVALID_BALLOON' }));
  });
});

describe('balloon device', () => {
  test('features and queues follow the options; config space holds num_pages and actual', () => {
    const { device, transport } = rig({ amountMib: 8, statsPollingIntervalS: 1, freePageReporting: true });
    expect(device.deviceFeatures).toBe(featureBit(VIRTIO_BALLOON_F_STATS_VQ) | featureBit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM) | featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING));
    expect(device.queueMaxSizes).toHaveLength(4);
    expect(transport.read(VIRTIO_MMIO_CONFIG, 4)).toBe(8 * 256);
    transport.write(VIRTIO_MMIO_CONFIG + 4, 4, 1234);
    expect(transport.read(VIRTIO_MMIO_CONFIG + 4, 4)).toBe(1234);
    transport.write(VIRTIO_MMIO_CONFIG + 5, 1, 0x10);
    expect(transport.read(VIRTIO_MMIO_CONFIG + 4, 4)).toBe(0x10d2);
    transport.write(VIRTIO_MMIO_CONFIG, 4, 1);
    expect(transport.read(VIRTIO_MMIO_CONFIG, 4)).toBe(8 * 256);
    expect(device.metrics().configWritesIgnored).toBe(1);
    expect(device.balloonStats()).toEqual({ targetPages: 2048, actualPages: 0x10d2, targetMib: 8, actualMib: 0x10d2 / 256 });
    const plain = rig({ deflateOnOom: false });
    expect(plain.device.deviceFeatures).toBe(0n);
    expect(plain.device.queueMaxSizes).toHaveLength(2);
  });

  test('inflate releases whole runs to the host; pages outside memory and repeated pages change nothing and are counted', () => {
    const { device, host, sendPfns, queues } = rig();
    const base = (8 * MiB) / BALLOON_PAGE_SIZE;
    sendPfns(0, [base, base + 1, base + 2, base + 10, base + 1, 0xffffffff, (64 * MiB) / BALLOON_PAGE_SIZE, base + 3]);
    expect(queues[0].readUsed()).toHaveLength(1);
    expect(host.discards).toEqual([
      [8 * MiB, 3 * BALLOON_PAGE_SIZE],
      [8 * MiB + 10 * BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE],
      [8 * MiB + 3 * BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE],
    ]);
    expect(device.metrics()).toMatchObject({ inflatedPages: 5, inflatePages: 5, duplicatePfns: 1, invalidPfns: 2, releasedBytes: 5 * 4096 });
    // The same pages again: nothing released.
    sendPfns(0, [base, base + 10]);
    expect(host.discards).toHaveLength(3);
    expect(device.metrics().duplicatePfns).toBe(3);
    // Deflate takes pages out; unknown ones are counted.
    sendPfns(1, [base, base + 500]);
    expect(device.metrics()).toMatchObject({ inflatedPages: 4, deflatePages: 1, deflateUnknownPfns: 1 });
    // A deflated page can be inflated again.
    sendPfns(0, [base]);
    expect(host.discards).toHaveLength(4);
  });

  test('a buffer whose length is not a multiple of 4 is read up to its last whole PFN', () => {
    const { device, mem, alloc, queues, driver, host } = rig();
    const buf = alloc.alloc(8, 4);
    mem.writeU32(buf, 0x900);
    queues[0].addChain([{ addr: buf, len: 6 }]);
    driver.notify(0);
    expect(host.discards).toEqual([[0x900 * 4096, 4096]]);
    expect(device.metrics().unalignedBuffers).toBe(1);
  });

  test('updateBalloon: new target, configuration change interrupt; targets beyond memory refused', () => {
    const { device, transport, driver } = rig();
    const gen = transport.read(VIRTIO_MMIO_CONFIG_GENERATION, 4);
    device.update({ amountMib: 32 });
    expect(transport.read(VIRTIO_MMIO_CONFIG, 4)).toBe(32 * 256);
    expect(transport.read(VIRTIO_MMIO_CONFIG_GENERATION, 4)).toBe(gen + 1);
    expect(driver.read32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG).toBeTruthy();
    expect(() => device.update({ amountMib: 65 })).toThrow(expect.objectContaining({ code: 'BAD_UPDATE' }));
    expect(device.balloonStats().targetMib).toBe(32);
    expect(() => device.update({ statsPollingIntervalS: 1 })).toThrow(/not enabled/);
    const withLimit = createBalloonDevice({ ...checkBalloonOptions({ amountMib: 0, deflateOnOom: false }), guestMemoryMib: 128 }, recordingHost());
    expect(() => withLimit.update({ amountMib: 129 })).toThrow(expect.objectContaining({ code: 'BAD_UPDATE' }));
    expect(() => createBalloonDevice({ ...checkBalloonOptions({ amountMib: 256, deflateOnOom: false }), guestMemoryMib: 128 }, recordingHost())).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
  });

  test('statistics: Firecracker names, the buffer is handed back every interval, the interval can change', () => {
    const { device, mem, alloc, queues, driver, host } = rig({ statsPollingIntervalS: 2 });
    const buf = alloc.alloc(10 * 4, 8);
    const put = (i: number, tag: number, val: bigint) => {
      mem.writeU16(buf + 10 * i, tag);
      mem.write(buf + 10 * i + 2, new Uint8Array(new BigUint64Array([val]).buffer));
    };
    put(0, BALLOON_STAT_TAGS.freeMemory, 1000n * 4096n);
    put(1, BALLOON_STAT_TAGS.totalMemory, 64n * BigInt(MiB));
    put(2, BALLOON_STAT_TAGS.majorFaults, 7n);
    put(3, 99, 1n);
    queues[2].addChain([{ addr: buf, len: 40 }]);
    driver.notify(2);
    // Held, not used, until the interval passes.
    expect(queues[2].readUsed()).toEqual([]);
    expect(device.balloonStats()).toMatchObject({ freeMemory: 4096000, totalMemory: 64 * MiB, majorFaults: 7 });
    expect(device.metrics()).toMatchObject({ statsUpdates: 1, unknownStatTags: 1 });
    host.time.advance(2000);
    expect(queues[2].readUsed()).toHaveLength(1);
    // Interval changes while running; switching off is refused.
    device.update({ statsPollingIntervalS: 5 });
    expect(() => device.update({ statsPollingIntervalS: 0 })).toThrow(expect.objectContaining({ code: 'BAD_UPDATE' }));
    queues[2].addChain([{ addr: buf, len: 40 }]);
    driver.notify(2);
    host.time.advance(4000);
    expect(queues[2].readUsed()).toEqual([]);
    host.time.advance(1000);
    expect(queues[2].readUsed()).toHaveLength(1);
    expect(device.statsPollingIntervalS).toBe(5);
  });

  test("a statistics buffer the driver made available before DRIVER_OK (as Linux's probe does) is taken after activation", async () => {
    const mem = GuestMemory.anonymous(4 * MiB);
    const alloc = new BumpAllocator(mem, 0x1000, MiB);
    const device = createBalloonDevice(checkBalloonOptions({ amountMib: 0, deflateOnOom: false, statsPollingIntervalS: 1 }), recordingHost());
    const transport = new MmioTransport(device, { mem, irq: new MockIrq() });
    const driver = new MockMmioDriver(transport, mem);
    expect(driver.negotiate(featureBit(VIRTIO_BALLOON_F_STATS_VQ))).toBe(true);
    const qs = [0, 1, 2].map((i) => {
      const layout = allocQueueLayout(alloc, 16);
      driver.setupQueue(i, layout);
      return new MockVirtqueue(mem, layout);
    });
    const buf = alloc.alloc(10, 8);
    mem.writeU16(buf, BALLOON_STAT_TAGS.totalMemory);
    mem.write(buf + 2, new Uint8Array(new BigUint64Array([4n * BigInt(MiB)]).buffer));
    qs[2].addChain([{ addr: buf, len: 10 }]);
    driver.notify(2); // dropped: before DRIVER_OK
    expect(device.metrics().statsUpdates).toBe(0);
    driver.driverOk();
    await new Promise((r) => setImmediate(r));
    expect(device.balloonStats().totalMemory).toBe(4 * MiB);
  });

  test('queue roles follow the negotiated features: reporting is queue 2 when statistics were not accepted', () => {
    const { device, host, alloc, queues, driver } = rig({ statsPollingIntervalS: 1, freePageReporting: true }, featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING));
    expect(queues).toHaveLength(3);
    void alloc;
    const a = 8 * MiB;
    queues[2].addChain([{ addr: a + 10, len: 2 * MiB + 50, write: true }]);
    driver.notify(2);
    expect(queues[2].readUsed()).toHaveLength(1);
    // Only whole pages inside the reported range.
    expect(host.discards).toEqual([[a + 4096, 2 * MiB - 4096]]);
    expect(device.metrics()).toMatchObject({ reports: 1, reportedBytes: 2 * MiB - 4096, inflatedPages: 0 });
  });

  test('driver reset empties the balloon; save and restore keep target, actual, pages, statistics and the held buffer', () => {
    const { device, sendPfns, transport, alloc, queues, driver, mem } = rig({ amountMib: 16, statsPollingIntervalS: 1 });
    sendPfns(0, [0x800, 0x801, 0x900]);
    transport.write(VIRTIO_MMIO_CONFIG + 4, 4, 3);
    const buf = alloc.alloc(10, 8);
    mem.writeU16(buf, BALLOON_STAT_TAGS.availableMemory);
    mem.write(buf + 2, new Uint8Array(new BigUint64Array([12345n]).buffer));
    queues[2].addChain([{ addr: buf, len: 10 }]);
    driver.notify(2);
    const saved = JSON.parse(JSON.stringify(transport.saveState()));
    expect(saved.device).toMatchObject({ targetPages: 4096, actualPages: 3, inflated: [[0x800, 2], [0x900, 1]], stats: { availableMemory: 12345 } });

    const host2 = recordingHost();
    const device2 = createBalloonDevice(checkBalloonOptions({ amountMib: 0, deflateOnOom: true, statsPollingIntervalS: 1 }), host2);
    const t2 = new MmioTransport(device2, { mem, irq: new MockIrq() });
    t2.restoreState(saved);
    expect(device2.metrics().inflatedPages).toBe(3);
    expect(device2.balloonStats()).toMatchObject({ targetPages: 4096, actualPages: 3, availableMemory: 12345 });
    expect(device2.saveState()).toEqual(saved.device);
    // The held statistics buffer is handed back on the restored device's first interval.
    const usedBefore = queues[2].usedIdx();
    host2.time.advance(1000);
    expect(queues[2].usedIdx()).toBe((usedBefore + 1) & 0xffff);

    expect(() => device2.restoreState({ ...saved.device, inflated: [[5, 1], [3, 1]] })).toThrow(expect.objectContaining({ code: 'BAD_STATE' }));
    expect(() => device2.restoreState({ ...saved.device, inflated: [[1 << 20, 1]] })).toThrow(/outside guest memory/);
    expect(() => device2.restoreState({ ...saved.device, statsPollingIntervalS: 0 })).toThrow(/statistics/);
    expect(device2.saveState()).toEqual({ ...saved.device, statsHead: -1 });

    driver.setStatus(0);
    expect(device.metrics().inflatedPages).toBe(0);
    expect(device.balloonStats().actualPages).toBe(0);
  });

  test('hostile PFN lists: accounting stays exact and nothing outside memory or twice is released (property)', () => {
    const memBytes = 2 * MiB;
    const pages = memBytes / 4096;
    fc.assert(
      fc.property(
        fc.array(fc.record({ deflate: fc.boolean(), pfns: fc.array(fc.oneof(fc.integer({ min: 0, max: pages + 64 }), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 300, max: 310 })), { maxLength: 40 }) }), { maxLength: 8 }),
        (batches) => {
          const { device, host, sendPfns } = rig({}, undefined, memBytes);
          const model = new Set<number>();
          let invalid = 0;
          let dup = 0;
          let unknown = 0;
          for (const b of batches) {
            sendPfns(b.deflate ? 1 : 0, b.pfns);
            for (const p of b.pfns) {
              if (b.deflate) {
                if (!model.delete(p)) unknown++;
              } else if (p >= pages) invalid++;
              else if (model.has(p)) dup++;
              else model.add(p);
            }
          }
          const m = device.metrics();
          if (m.inflatedPages !== model.size || m.invalidPfns !== invalid || m.duplicatePfns !== dup || m.deflateUnknownPfns !== unknown) throw new Error('accounting');
          for (const [a, l] of host.discards) {
            if (a % 4096 !== 0 || l % 4096 !== 0 || a + l > memBytes || l <= 0) throw new Error(`bad discard ${a}+${l}`);
          }
          // Every accepted page released exactly once.
          if (host.discards.reduce((n, [, l]) => n + l, 0) !== m.inflatePages * 4096) throw new Error('released bytes');
        },
      ),
      { numRuns: 2000 },
    );
  });

  test('PageSet runs', () => {
    const s = new PageSet();
    for (const p of [5, 6, 7, 40000, 40001, 1, 32767, 32768]) s.add(p);
    expect(s.ranges()).toEqual([[1, 1], [5, 3], [32767, 2], [40000, 2]]);
    expect(s.size).toBe(8);
    expect(s.delete(6)).toBe(true);
    expect(s.delete(6)).toBe(false);
    expect(s.ranges()).toEqual([[1, 1], [5, 1], [7, 1], [32767, 2], [40000, 2]]);
  });
});

describe('balloon host over a real anonymous mapping', () => {
  test('inflated pages leave the host RSS and read back as zeros', () => {
    const addon = loadNative();
    const size = 64 * MiB;
    const buffer = addon.mapAnonymous(size);
    const mem = new GuestMemory([{ guestAddr: 0, buffer, byteOffset: 0, size }]);
    new Uint8Array(buffer).fill(0xaa);
    const device = createBalloonDevice(checkBalloonOptions({ amountMib: 32, deflateOnOom: false }), createBalloonHost(mem, addon));
    const transport = new MmioTransport(device, { mem, irq: new MockIrq() });
    const driver = new MockMmioDriver(transport, mem);
    const alloc = new BumpAllocator(mem, 0x1000, MiB);
    const [inflate] = driver.bringUp(alloc, [16, 16]);
    const before = addon.residentPages!();
    // 32 MiB from 16 MiB up, 1024 PFNs per buffer.
    for (let chunk = 0; chunk < 8; chunk++) {
      const buf = alloc.alloc(4096, 4096);
      for (let i = 0; i < 1024; i++) mem.writeU32(buf + 4 * i, 4096 + chunk * 1024 + i);
      inflate.addChain([{ addr: buf, len: 4096 }]);
      driver.notify(0);
      inflate.readUsed();
    }
    const after = addon.residentPages!();
    expect(device.metrics()).toMatchObject({ inflatedPages: 8192, discardErrors: 0, releasedBytes: 32 * MiB });
    // 8192 pages left; allow for whatever else the process did meanwhile.
    expect(before - after).toBeGreaterThan(8192 * 0.9);
    expect(mem.readU32(16 * MiB)).toBe(0);
    expect(mem.readU32(16 * MiB - 4)).toBe(0xaaaaaaaa);
  });

  test('the host splits a range at region boundaries and reports madvise errors as NativeError', () => {
    const addon = loadNative();
    expect(addon.pageSize()).toBe(4096);
    expect(() => addon.discardMemory(addon.mapAnonymous(4096), 0, 8192)).toThrow(/range outside the buffer/);
    const a = addon.mapAnonymous(2 * MiB);
    const b = addon.mapAnonymous(2 * MiB);
    const mem = new GuestMemory([{ guestAddr: 0, buffer: a, byteOffset: 0, size: 2 * MiB }, { guestAddr: 2 * MiB, buffer: b, byteOffset: 0, size: 2 * MiB }]);
    const calls: [ArrayBuffer, number, number][] = [];
    const host = createBalloonHost(mem, { discardMemory: (buf, off, len) => void calls.push([buf, off, len]) });
    host.discard(MiB, 2 * MiB);
    expect(calls).toEqual([[a, MiB, MiB], [b, 0, MiB]]);
    const real = createBalloonHost(new GuestMemory([{ guestAddr: 0, buffer: a, byteOffset: 1, size: MiB }]), addon);
    expect(() => real.discard(0, 4096)).toThrow(expect.objectContaining({ name: 'NativeError', code: 'EINVAL', ioctl: 'madvise' }));
  });
});
