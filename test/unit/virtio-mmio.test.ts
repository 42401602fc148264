import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_CONFIG_GENERATION,
  VIRTIO_MMIO_DEVICE_FEATURES,
  VIRTIO_MMIO_DEVICE_FEATURES_SEL,
  VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_MAGIC_VALUE,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_RESET,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_SHM_BASE_LOW,
  VIRTIO_MMIO_SHM_LEN_HIGH,
  VIRTIO_MMIO_SHM_LEN_LOW,
  VIRTIO_MMIO_SHM_SEL,
  VIRTIO_MMIO_STATUS,
  VIRTIO_MMIO_VENDOR_ID,
  VIRTIO_MMIO_VERSION,
  VIRTIO_STATUS_ACKNOWLEDGE,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_DRIVER_OK,
  VIRTIO_STATUS_FAILED,
  VIRTIO_STATUS_FEATURES_OK,
  featureBit,
} from '../../lib/virtio/constants';
import { BumpAllocator, EchoDevice, MockIrq, MockMmioDriver, MockVirtqueue, allocQueueLayout } from '../../lib/testing/mock-driver';

const ACK = VIRTIO_STATUS_ACKNOWLEDGE;
const DRV = VIRTIO_STATUS_DRIVER;
const FOK = VIRTIO_STATUS_FEATURES_OK;
const DOK = VIRTIO_STATUS_DRIVER_OK;
const V1 = featureBit(VIRTIO_F_VERSION_1);
const DEVICE_BIT = featureBit(5);

function setup(opts: { queues?: number[]; irqMode?: 'edge' | 'level' } = {}) {
  const mem = GuestMemory.anonymous(1 << 20);
  const dev = new EchoDevice(opts.queues ?? [256, 16], DEVICE_BIT);
  const irq = new MockIrq();
  const t = new MmioTransport(dev, { mem, irq, irqMode: opts.irqMode });
  const drv = new MockMmioDriver(t, mem);
  const alloc = new BumpAllocator(mem);
  return { mem, dev, irq, t, drv, alloc };
}

describe('virtio-mmio identification registers', () => {
  it('reports magic, version 2, device and vendor IDs', () => {
    const { drv, dev } = setup();
    expect(drv.read32(VIRTIO_MMIO_MAGIC_VALUE)).toBe(0x74726976);
    expect(drv.read32(VIRTIO_MMIO_VERSION)).toBe(2);
    expect(drv.read32(VIRTIO_MMIO_DEVICE_ID)).toBe(dev.deviceType);
    expect(drv.read32(VIRTIO_MMIO_VENDOR_ID)).toBe(0x4c444e4b);
    expect(drv.read32(VIRTIO_MMIO_CONFIG_GENERATION)).toBe(0);
  });

  it('reports QueueNumMax per queue and 0 for non-existent queues', () => {
    const { drv } = setup();
    expect(drv.queueNumMax(0)).toBe(256);
    expect(drv.queueNumMax(1)).toBe(16);
    expect(drv.queueNumMax(2)).toBe(0);
    expect(drv.queueNumMax(0xffffffff)).toBe(0);
    drv.write32(VIRTIO_MMIO_QUEUE_SEL, 7);
    expect(drv.read32(VIRTIO_MMIO_QUEUE_READY)).toBe(0);
  });

  it('has no shared memory regions (length -1) and no queue reset', () => {
    const { drv } = setup();
    drv.write32(VIRTIO_MMIO_SHM_SEL, 0);
    expect(drv.read32(VIRTIO_MMIO_SHM_LEN_LOW)).toBe(0xffffffff);
    expect(drv.read32(VIRTIO_MMIO_SHM_LEN_HIGH)).toBe(0xffffffff);
    expect(drv.read32(VIRTIO_MMIO_SHM_BASE_LOW)).toBe(0xffffffff);
    expect(drv.read32(VIRTIO_MMIO_QUEUE_RESET)).toBe(0);
  });

  it('offers device features plus VERSION_1, INDIRECT_DESC and EVENT_IDX in two halves', () => {
    const { drv } = setup();
    const f = drv.deviceFeatures();
    expect(f).toBe(DEVICE_BIT | V1 | featureBit(VIRTIO_F_INDIRECT_DESC) | featureBit(VIRTIO_F_EVENT_IDX));
    drv.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    expect(drv.read32(VIRTIO_MMIO_DEVICE_FEATURES)).toBe(0);
  });

  it('ignores and counts non-32-bit and unaligned register accesses and write-only reads', () => {
    const { t } = setup();
    expect(t.read(VIRTIO_MMIO_MAGIC_VALUE, 2)).toBe(0);
    expect(t.read(VIRTIO_MMIO_MAGIC_VALUE, 1)).toBe(0);
    expect(t.read(VIRTIO_MMIO_MAGIC_VALUE + 1, 4)).toBe(0);
    expect(t.read(VIRTIO_MMIO_QUEUE_NOTIFY, 4)).toBe(0);
    expect(t.read(0x0f0, 4)).toBe(0);
    t.write(VIRTIO_MMIO_STATUS, 1, ACK);
    expect(t.status).toBe(0);
    t.write(0x0f8, 4, 1);
    expect(t.metrics().invalidAccesses).toBe(7);
  });
});

describe('virtio-mmio status state machine and feature negotiation', () => {
  it('walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK and activates the device', () => {
    const { drv, dev, alloc, t } = setup();
    expect(drv.negotiate(V1 | DEVICE_BIT | featureBit(VIRTIO_F_EVENT_IDX))).toBe(true);
    expect(drv.status()).toBe(ACK | DRV | FOK);
    drv.setupQueue(0, allocQueueLayout(alloc, 64));
    expect(dev.ctx).toBeNull();
    drv.driverOk();
    expect(drv.status()).toBe(ACK | DRV | FOK | DOK);
    expect(dev.ctx).not.toBeNull();
    expect(dev.ctx!.ackedFeatures).toBe(V1 | DEVICE_BIT | featureBit(VIRTIO_F_EVENT_IDX));
    expect(t.queues[0].eventIdx).toBe(true);
    expect(t.queues[0].indirectDesc).toBe(false);
    expect(t.queues[0].size).toBe(64);
    expect(t.metrics().activations).toBe(1);
  });

  it('refuses out-of-order steps and clearing bits', () => {
    const { drv, t } = setup();
    drv.setStatus(DRV);
    expect(drv.status()).toBe(0);
    drv.setStatus(ACK);
    drv.setStatus(ACK | FOK);
    expect(drv.status()).toBe(ACK);
    drv.setStatus(ACK | DRV | DOK);
    expect(drv.status()).toBe(ACK | DRV);
    drv.setStatus(ACK);
    expect(drv.status()).toBe(ACK | DRV);
    drv.setStatus(ACK | DRV | 0x10);
    expect(drv.status()).toBe(ACK | DRV);
    expect(t.metrics().invalidAccesses).toBe(5);
  });

  it('accepts several steps in one write, in order', () => {
    const { drv } = setup();
    drv.setStatus(ACK | DRV);
    expect(drv.status()).toBe(ACK | DRV);
  });

  it('keeps FEATURES_OK clear without VERSION_1 or with features never offered', () => {
    const { drv, t } = setup();
    drv.setStatus(0);
    drv.addStatus(ACK);
    drv.addStatus(DRV);
    drv.writeDriverFeatures(DEVICE_BIT);
    drv.addStatus(FOK);
    expect(drv.status() & FOK).toBe(0);
    drv.writeDriverFeatures(V1 | featureBit(6));
    drv.addStatus(FOK);
    expect(drv.status() & FOK).toBe(0);
    drv.writeDriverFeatures(V1 | featureBit(63));
    drv.addStatus(FOK);
    expect(drv.status() & FOK).toBe(0);
    expect(t.metrics().featureNegotiationFailures).toBe(3);
    drv.writeDriverFeatures(V1);
    drv.addStatus(FOK);
    expect(drv.status() & FOK).toBe(FOK);
  });

  it('ignores driver feature writes outside DRIVER..FEATURES_OK', () => {
    const { drv, t } = setup();
    drv.write32(VIRTIO_MMIO_DRIVER_FEATURES, 0xffffffff);
    expect(t.ackedFeatures).toBe(0n);
    expect(drv.negotiate(V1)).toBe(true);
    drv.writeDriverFeatures(V1 | DEVICE_BIT);
    expect(t.ackedFeatures).toBe(V1);
  });

  it('FAILED sticks until reset', () => {
    const { drv, dev } = setup();
    drv.addStatus(ACK);
    drv.addStatus(VIRTIO_STATUS_FAILED);
    expect(drv.status()).toBe(ACK | VIRTIO_STATUS_FAILED);
    drv.addStatus(DRV);
    expect(drv.status() & DRV).toBe(0);
    drv.setStatus(0);
    expect(drv.status()).toBe(0);
    expect(dev.resets).toBe(1);
  });

  it('reset (status 0) clears features, queues and interrupt status and resets the device', () => {
    const { drv, dev, alloc, t } = setup();
    const [q] = drv.bringUp(alloc, [8], V1 | featureBit(VIRTIO_F_EVENT_IDX));
    t.configChanged();
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(VIRTIO_MMIO_INT_CONFIG);
    q.addChain([{ addr: 0x10000, len: 1 }]);
    const before = dev.resets;
    drv.setStatus(0);
    expect(dev.resets).toBe(before + 1);
    expect(dev.ctx).toBeNull();
    expect(drv.status()).toBe(0);
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(0);
    expect(t.ackedFeatures).toBe(0n);
    expect(drv.read32(VIRTIO_MMIO_QUEUE_READY)).toBe(0);
    expect(t.queues[0].nextAvail).toBe(0);
    expect(t.queues[0].descTable).toBe(0);
    expect(t.queues[0].eventIdx).toBe(false);
    expect(drv.read32(VIRTIO_MMIO_CONFIG_GENERATION)).toBe(1); // generation is never rewound
    // Notifications after reset go nowhere.
    drv.notify(0);
    expect(dev.requests).toBe(0);
  });
});

describe('virtio-mmio queue configuration', () => {
  it('ignores queue register writes before FEATURES_OK, after DRIVER_OK and while ready', () => {
    const { drv, t, alloc } = setup();
    drv.write32(VIRTIO_MMIO_QUEUE_SEL, 0);
    drv.write32(VIRTIO_MMIO_QUEUE_NUM, 8);
    expect(t.queues[0].size).toBe(256);
    drv.negotiate(V1);
    drv.write32(VIRTIO_MMIO_QUEUE_NUM, 8);
    expect(t.queues[0].size).toBe(8);
    drv.write32(VIRTIO_MMIO_QUEUE_READY, 1);
    drv.write32(VIRTIO_MMIO_QUEUE_NUM, 4);
    drv.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
    expect(t.queues[0].size).toBe(8);
    expect(t.queues[0].descTable).toBe(0);
    drv.write32(VIRTIO_MMIO_QUEUE_READY, 0);
    drv.setupQueue(0, allocQueueLayout(alloc, 8));
    drv.driverOk();
    const desc = t.queues[0].descTable;
    drv.write32(VIRTIO_MMIO_QUEUE_READY, 0);
    drv.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
    expect(t.queues[0].ready).toBe(true);
    expect(t.queues[0].descTable).toBe(desc);
    // Non-existent queue.
    drv.write32(VIRTIO_MMIO_QUEUE_SEL, 9);
    drv.write32(VIRTIO_MMIO_QUEUE_NUM, 8);
    expect(t.metrics().invalidAccesses).toBe(6);
  });

  it('composes 64-bit ring addresses from their halves', () => {
    const { drv, t } = setup();
    drv.negotiate(V1);
    drv.write32(VIRTIO_MMIO_QUEUE_SEL, 1);
    drv.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000);
    drv.write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
    expect(t.queues[1].descTable).toBe(0x1_0000_2000);
    drv.write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0xffffffff);
    expect(t.queues[1].descTable).toBe(-1);
  });

  it.each([
    ['a size that is not a power of two', (l: { size: number }) => (l.size = 12)],
    ['a size above QueueNumMax', (l: { size: number }) => (l.size = 512)],
    ['a misaligned descriptor table', (l: { descTable: number }) => (l.descTable += 8)],
    ['a used ring outside memory', (l: { usedRing: number }) => (l.usedRing = 0xfffff000)],
    ['a used ring overlapping the available ring', (l: { usedRing: number; availRing: number }) => (l.usedRing = l.availRing)],
  ])('DRIVER_OK with %s sets DEVICE_NEEDS_RESET instead of activating', (_n, mutate) => {
    const { drv, dev, alloc, irq, t } = setup();
    drv.negotiate(V1);
    const layout = allocQueueLayout(alloc, 16);
    mutate(layout as never);
    drv.setupQueue(0, layout);
    drv.driverOk();
    expect(dev.ctx).toBeNull();
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(VIRTIO_MMIO_INT_CONFIG);
    expect(irq.triggers).toBe(1);
    expect(t.metrics().needsResetEvents).toBe(1);
    // Recovery: reset and bring up properly.
    drv.setStatus(0);
    drv.bringUp(alloc, [16], V1);
    expect(dev.ctx).not.toBeNull();
    expect(drv.status()).toBe(ACK | DRV | FOK | DOK);
  });
});

describe('virtio-mmio notifications and interrupts', () => {
  function running(irqMode?: 'edge' | 'level', features = V1) {
    const s = setup({ irqMode });
    const qs = s.drv.bringUp(s.alloc, [8, 4], features);
    const src = s.alloc.allocData(new Uint8Array([1, 2, 3, 4, 5]));
    const dst = s.alloc.alloc(16);
    return { ...s, qs, src, dst };
  }

  it('round-trips a request through QueueNotify, the used ring and InterruptStatus', () => {
    const { drv, mem, qs, src, dst, irq, t } = running();
    const head = qs[0].addChain([
      { addr: src, len: 5 },
      { addr: dst, len: 16, write: true },
    ]);
    drv.notify(0);
    expect(qs[0].readUsed()).toEqual([{ id: head, len: 5 }]);
    expect(Array.from(mem.read(dst, 5))).toEqual([1, 2, 3, 4, 5]);
    expect(irq.triggers).toBe(1);
    expect(drv.handleInterrupt()).toBe(VIRTIO_MMIO_INT_VRING);
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(0);
    expect(t.metrics()).toMatchObject({ notifications: 1, interrupts: 1, ignoredNotifications: 0 });
  });

  it('routes notifications to the named queue and ignores bad or idle ones', () => {
    const { drv, qs, src, dev, t } = running();
    qs[1].addChain([{ addr: src, len: 1 }]);
    drv.notify(0);
    expect(dev.requests).toBe(0);
    drv.notify(1);
    expect(dev.requests).toBe(1);
    drv.notify(2);
    drv.notify(0xffffffff);
    t.notify(-1);
    t.notify(0.5);
    t.notify(NaN);
    expect(t.metrics().ignoredNotifications).toBe(5);
    expect(t.metrics().notifications).toBe(7);
  });

  it('ignores notifications before DRIVER_OK', () => {
    const { drv, dev, alloc, t } = setup();
    drv.negotiate(V1);
    const layout = allocQueueLayout(alloc, 8);
    drv.setupQueue(0, layout);
    new MockVirtqueue(drv.mem, layout).addChain([{ addr: 0x10000, len: 1 }]);
    drv.notify(0);
    expect(dev.requests).toBe(0);
    expect(t.metrics().ignoredNotifications).toBe(1);
  });

  it('level mode holds the line until every cause is acknowledged', () => {
    const { drv, qs, src, irq, t } = running('level');
    qs[0].addChain([{ addr: src, len: 1 }]);
    drv.notify(0);
    t.configChanged();
    expect(irq.level).toBe(true);
    expect(irq.triggers).toBe(0);
    drv.write32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    expect(irq.level).toBe(true);
    drv.write32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    expect(irq.level).toBe(false);
  });

  it('EVENT_IDX suppresses interrupts the driver did not ask for', () => {
    const { drv, qs, src, irq } = running('edge', V1 | featureBit(VIRTIO_F_EVENT_IDX));
    qs[0].addChain([{ addr: src, len: 1 }]);
    drv.notify(0);
    expect(irq.triggers).toBe(1); // first completion always signals
    qs[0].readUsed();
    qs[0].setUsedEvent(3); // "interrupt me when used idx passes 3"
    qs[0].addChain([{ addr: src, len: 1 }]);
    drv.notify(0);
    expect(irq.triggers).toBe(1);
    qs[0].addChain([{ addr: src, len: 1 }]);
    qs[0].addChain([{ addr: src, len: 1 }]);
    drv.notify(0);
    expect(irq.triggers).toBe(2);
    // The device published avail_event so the driver knows to kick at the next chain.
    expect(qs[0].availEvent()).toBe(4);
  });

  it('config space passes through with 1/2/4-byte accesses and generation bumps on change', () => {
    const { t, dev, drv, irq } = running();
    t.write(VIRTIO_MMIO_CONFIG + 2, 2, 0xbeef);
    expect(dev.config[2]).toBe(0xef);
    expect(t.read(VIRTIO_MMIO_CONFIG, 4)).toBe(0xbeef0000);
    expect(t.read(VIRTIO_MMIO_CONFIG + 3, 1)).toBe(0xbe);
    expect(t.read(VIRTIO_MMIO_CONFIG + 0x100, 4)).toBe(0);
    expect(t.read(VIRTIO_MMIO_CONFIG, 8)).toBe(0);
    t.configChanged();
    expect(drv.read32(VIRTIO_MMIO_CONFIG_GENERATION)).toBe(1);
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(VIRTIO_MMIO_INT_CONFIG);
    expect(irq.triggers).toBe(1);
    expect(t.metrics()).toMatchObject({ configReads: 4, configWrites: 1 });
  });
});

describe('virtio-mmio error containment', () => {
  function running() {
    const s = setup();
    const qs = s.drv.bringUp(s.alloc, [8, 4], V1);
    return { ...s, qs };
  }

  it('a broken ring sets DEVICE_NEEDS_RESET, raises a config interrupt and stops that queue', () => {
    const { drv, qs, dev, t, irq } = running();
    qs[0].publish(100); // avail idx absurdly far ahead
    drv.notify(0);
    expect(t.queues[0].broken?.code).toBe('AVAIL_IDX_TOO_FAR');
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(drv.read32(VIRTIO_MMIO_INTERRUPT_STATUS)).toBe(VIRTIO_MMIO_INT_CONFIG);
    expect(irq.triggers).toBe(1);
    drv.notify(0);
    expect(t.metrics().ignoredNotifications).toBe(1);
    // The other queue still works.
    qs[1].addChain([{ addr: 0x10000, len: 1 }]);
    drv.notify(1);
    expect(dev.requests).toBe(1);
    // Linux-style read-modify-write keeps the device's bit.
    drv.addStatus(VIRTIO_STATUS_FAILED);
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(t.metrics().needsResetEvents).toBe(1);
  });

  it('contains a device whose processQueue throws', () => {
    const { drv, qs, dev, t } = running();
    dev.processQueue = () => {
      throw new Error('device bug');
    };
    qs[0].addChain([{ addr: 0x10000, len: 1 }]);
    expect(() => drv.notify(0)).not.toThrow();
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(t.metrics().deviceErrors).toBe(1);
    drv.notify(1); // halted: nothing processed
    expect(t.metrics().ignoredNotifications).toBe(1);
  });

  it('a device that propagates pop errors breaks only that queue', () => {
    const { drv, qs, dev, t } = running();
    dev.propagatePopErrors = true;
    qs[0].pushAvail(9);
    expect(() => drv.notify(0)).not.toThrow();
    expect(t.queues[0].broken?.code).toBe('HEAD_OUT_OF_RANGE');
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    qs[1].addChain([{ addr: 0x10000, len: 1 }]);
    drv.notify(1);
    expect(dev.requests).toBe(1);
  });

  it('contains a device whose activate throws', () => {
    const s = setup();
    s.dev.activate = () => {
      throw new Error('no backend');
    };
    s.drv.bringUp(s.alloc, [8], V1);
    expect(s.drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
  });

  it('drops interrupts a device raises through a context from before a reset', () => {
    const { drv, dev, irq, alloc } = running();
    const stale = dev.ctx!;
    drv.setStatus(0);
    drv.bringUp(alloc, [8], V1);
    stale.interrupt.signalUsedQueue(0);
    stale.interrupt.signalConfigChange();
    stale.needsReset?.();
    expect(irq.triggers).toBe(0);
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBe(0);
    dev.ctx!.interrupt.signalUsedQueue(0);
    expect(irq.triggers).toBe(1);
  });

  it('a malformed chain is completed with length 0 and the queue keeps going', () => {
    const { drv, qs, dev, t } = running();
    qs[0].writeDesc(7, 0x10000, 8, 1 /* NEXT */, 7); // self loop (7 is not handed out by addChain below)
    qs[0].pushAvail(7);
    const ok = qs[0].addChain([{ addr: 0x10000, len: 1 }, { addr: 0x10100, len: 1, write: true }]);
    drv.notify(0);
    expect(qs[0].readUsed()).toEqual([
      { id: 7, len: 0 },
      { id: ok, len: 1 },
    ]);
    expect(dev.malformed).toBe(1);
    expect(drv.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBe(0);
    expect(t.queues[0].malformedChains).toBe(1);
  });

  it('a ring that never drains is processed in budgeted slices, not in one endless call', () => {
    const tasks: (() => void)[] = [];
    const mem = GuestMemory.anonymous(1 << 20);
    const dev = new EchoDevice([4]);
    const t = new MmioTransport(dev, { mem, irq: new MockIrq(), defer: (fn) => tasks.push(fn) });
    const drv = new MockMmioDriver(t, mem);
    const [q] = drv.bringUp(new BumpAllocator(mem), [4], V1);
    // A driver on another vCPU that refills the ring as fast as the device drains it.
    let refills = 0;
    dev.onComplete = () => {
      q.readUsed();
      if (refills++ < 100) q.addChain([{ addr: 0x10000, len: 1 }]);
    };
    q.addChain([{ addr: 0x10000, len: 1 }]);
    drv.notify(0);
    expect(dev.requests).toBe(16); // 4 × queue size per slice
    expect(tasks).toHaveLength(1);
    let slices = 1;
    while (tasks.length) {
      tasks.shift()!();
      slices++;
    }
    expect(dev.requests).toBe(101);
    expect(slices).toBe(7); // ceil(101 / 16)
    expect(t.metrics().deferredRuns).toBe(6);
    expect(t.queues[0].popBudgetExhausted).toBe(false);
  });

  it('needsReset is idempotent and silent before DRIVER_OK', () => {
    const { t, irq, drv } = setup();
    drv.negotiate(V1);
    t.needsReset();
    t.needsReset();
    expect(t.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(irq.triggers).toBe(0);
    expect(t.metrics().needsResetEvents).toBe(1);
  });
});
