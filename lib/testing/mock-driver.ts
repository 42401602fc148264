/**
 * A mock virtio driver for unit tests and benchmarks (exported as `kindling/testing`): lays out split virtqueues in a GuestMemory,
 * publishes descriptor chains (direct or through an indirect table), reads the used ring back and
 * drives a virtio-mmio transport through its registers the way Linux's virtio_mmio driver does.
 *
 * It trusts nothing about the device but is itself well-behaved; tests that want hostile rings
 * write raw descriptors with {@link MockVirtqueue.writeDesc} / {@link MockVirtqueue.pushAvail}.
 */
import { GuestMemory } from '../memory/guest-memory';
import type { BusDevice, IrqLine } from '../bus';
import { ChainReader, ChainWriter } from '../virtio/chain';
import type { VirtioDevice, VirtioDeviceContext } from '../virtio/device';
import { stateField, encodeBytes, type StateObject } from '../devices/contract';
import type { Queue, QueueState } from '../virtio/queue';
import {
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_DEVICE_FEATURES,
  VIRTIO_MMIO_DEVICE_FEATURES_SEL,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_NUM_MAX,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_STATUS,
  VIRTIO_STATUS_ACKNOWLEDGE,
  VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_DRIVER_OK,
  VIRTIO_STATUS_FEATURES_OK,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  availRingBytes,
  descTableBytes,
  featureBit,
  usedRingBytes,
} from '../virtio/constants';

/** Where one queue's three parts live. */
export interface QueueLayout {
  /** Queue size (entries). */
  size: number;
  /** Descriptor table address. */
  descTable: number;
  /** Available ring address. */
  availRing: number;
  /** Used ring address. */
  usedRing: number;
}

/** One buffer of a chain as the driver describes it. */
export interface MockBuffer {
  /** Guest address. */
  addr: number;
  /** Length in bytes. */
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write?: boolean;
}

/** One used ring element. */
export interface UsedElem {
  /** Head index of the completed chain. */
  id: number;
  /** Bytes the device wrote. */
  len: number;
}

/** Bump allocator over guest memory, for rings, tables and data buffers. */
export class BumpAllocator {
  private next: number;
  /**
   * @param mem the memory to allocate in
   * @param start first address handed out
   * @param end end of the allocatable range
   */
  constructor(
    /** The memory allocated from. */
    readonly mem: GuestMemory,
    start = 0x1000,
    private readonly end = mem.totalSize,
  ) {
    this.next = start;
  }
  /** `len` bytes aligned to `align`; throws when memory is exhausted (a test bug). */
  alloc(len: number, align = 16): number {
    const a = Math.ceil(this.next / align) * align;
    if (a + len > this.end) throw new Error(`mock allocator exhausted (${len} bytes)`);
    this.next = a + len;
    return a;
  }
  /** Allocates and fills a buffer; returns its guest address. */
  allocData(data: Uint8Array, align = 16): number {
    const a = this.alloc(data.length, align);
    this.mem.write(a, data);
    return a;
  }
}

/** Lays out a queue of `size` entries at the allocator's next free aligned addresses. */
export function allocQueueLayout(alloc: BumpAllocator, size: number): QueueLayout {
  return {
    size,
    descTable: alloc.alloc(descTableBytes(size), 16),
    availRing: alloc.alloc(availRingBytes(size), 2),
    usedRing: alloc.alloc(usedRingBytes(size), 4),
  };
}

/** The driver side of one split virtqueue. */
export class MockVirtqueue {
  /** Guest memory holding the rings. */
  readonly mem: GuestMemory;
  /** Where the rings are. */
  readonly layout: QueueLayout;
  /** Driver's shadow of avail idx (free-running u16). */
  availIdx = 0;
  /** Last used idx the driver has consumed. */
  lastUsedIdx = 0;
  private free: number[] = [];
  /** Descriptors (in the main table) owned by each in-flight head, for recycling. */
  private owned = new Map<number, number[]>();

  constructor(mem: GuestMemory, layout: QueueLayout) {
    this.mem = mem;
    this.layout = layout;
    this.clearRings();
  }

  /** Zeroes the rings and frees every descriptor. */
  clearRings(): void {
    const { size, descTable, availRing, usedRing } = this.layout;
    this.mem.slice(descTable, descTableBytes(size)).fill(0);
    this.mem.slice(availRing, availRingBytes(size)).fill(0);
    this.mem.slice(usedRing, usedRingBytes(size)).fill(0);
    this.availIdx = 0;
    this.lastUsedIdx = 0;
    this.free = Array.from({ length: size }, (_, i) => i);
    this.owned.clear();
  }

  /** Free descriptors in the main table. */
  get freeCount(): number {
    return this.free.length;
  }

  /** Writes descriptor `index` of the table at `table` (default: the main table). */
  writeDesc(index: number, addr: number, len: number, flags: number, next: number, table = this.layout.descTable): void {
    const d = table + 16 * index;
    this.mem.writeU64(d, BigInt(addr));
    this.mem.writeU32(d + 8, len);
    this.mem.writeU16(d + 12, flags);
    this.mem.writeU16(d + 14, next);
  }

  /** Puts `head` in the next avail slot without publishing it. */
  pushAvail(head: number, publish = true): void {
    const slot = this.availIdx & (this.layout.size - 1);
    this.mem.writeU16(this.layout.availRing + 4 + 2 * slot, head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.publish();
  }

  /** Writes avail idx (default: the shadow) — the driver's "make available" step. */
  publish(idx = this.availIdx): void {
    this.mem.writeU16(this.layout.availRing + 2, idx);
  }

  private take(n: number): number[] {
    if (n > this.free.length) throw new Error(`mock queue: need ${n} descriptors, ${this.free.length} free`);
    return this.free.splice(0, n);
  }

  /**
   * Adds a chain of direct descriptors, publishes it and returns its head index.
   * Readable buffers should come first, as the spec demands (the mock does not reorder).
   */
  addChain(buffers: MockBuffer[], publish = true): number {
    if (buffers.length === 0) throw new Error('mock queue: empty chain');
    const ids = this.take(buffers.length);
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      const flags = (last ? 0 : VIRTQ_DESC_F_NEXT) | (b.write ? VIRTQ_DESC_F_WRITE : 0);
      this.writeDesc(ids[i], b.addr, b.len, flags, last ? 0 : ids[i + 1]);
    });
    this.owned.set(ids[0], ids);
    this.pushAvail(ids[0], publish);
    return ids[0];
  }

  /**
   * Adds a chain whose buffers live in an indirect table at `tableAddr` (16-byte entries, one per
   * buffer), referenced by one main-table descriptor. Returns the head index.
   */
  addIndirectChain(buffers: MockBuffer[], tableAddr: number, publish = true): number {
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      const flags = (last ? 0 : VIRTQ_DESC_F_NEXT) | (b.write ? VIRTQ_DESC_F_WRITE : 0);
      this.writeDesc(i, b.addr, b.len, flags, last ? 0 : i + 1, tableAddr);
    });
    const [head] = this.take(1);
    this.writeDesc(head, tableAddr, 16 * buffers.length, VIRTQ_DESC_F_INDIRECT, 0);
    this.owned.set(head, [head]);
    this.pushAvail(head, publish);
    return head;
  }

  /** The used idx the device published. */
  usedIdx(): number {
    return this.mem.readU16(this.layout.usedRing + 2);
  }

  /** Used ring flags (VIRTQ_USED_F_NO_NOTIFY). */
  usedFlags(): number {
    return this.mem.readU16(this.layout.usedRing);
  }

  /** avail_event (written by the device under EVENT_IDX). */
  availEvent(): number {
    return this.mem.readU16(this.layout.usedRing + 4 + 8 * this.layout.size);
  }

  /** Sets used_event (the driver's EVENT_IDX interrupt threshold). */
  setUsedEvent(v: number): void {
    this.mem.writeU16(this.layout.availRing + 4 + 2 * this.layout.size, v & 0xffff);
  }

  /** Sets avail ring flags (VIRTQ_AVAIL_F_NO_INTERRUPT). */
  setAvailFlags(v: number): void {
    this.mem.writeU16(this.layout.availRing, v);
  }

  /** Used element at ring slot `slot`. */
  usedElemAt(slot: number): UsedElem {
    const e = this.layout.usedRing + 4 + 8 * (slot & (this.layout.size - 1));
    return { id: this.mem.readU32(e), len: this.mem.readU32(e + 4) };
  }

  /** Consumes every new used element, recycling the descriptors of known heads. */
  readUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    const idx = this.usedIdx();
    while (this.lastUsedIdx !== idx) {
      const e = this.usedElemAt(this.lastUsedIdx);
      out.push(e);
      const ids = this.owned.get(e.id);
      if (ids) {
        this.owned.delete(e.id);
        this.free.push(...ids);
      }
      this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
    }
    return out;
  }
}

/** Drives a virtio-mmio transport (any {@link BusDevice}) through its registers, 32 bits at a time. */
export class MockMmioDriver {
  /**
   * @param bus the transport's register window (an `MmioTransport`)
   * @param mem guest memory the queues live in
   */
  constructor(
    /** The register window driven. */
    readonly bus: BusDevice,
    /** Guest memory the queues live in. */
    readonly mem: GuestMemory,
  ) {}

  /** A 32-bit register read. */
  read32(offset: number): number {
    return this.bus.read(offset, 4) >>> 0;
  }
  /** A 32-bit register write. */
  write32(offset: number, value: number): void {
    this.bus.write(offset, 4, value >>> 0);
  }

  /** The 64-bit device feature word. */
  deviceFeatures(): bigint {
    this.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    const lo = BigInt(this.read32(VIRTIO_MMIO_DEVICE_FEATURES));
    this.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    const hi = BigInt(this.read32(VIRTIO_MMIO_DEVICE_FEATURES));
    return (hi << 32n) | lo;
  }

  /** Writes the 64-bit driver feature word. */
  writeDriverFeatures(features: bigint): void {
    this.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    this.write32(VIRTIO_MMIO_DRIVER_FEATURES, Number(features & 0xffffffffn));
    this.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    this.write32(VIRTIO_MMIO_DRIVER_FEATURES, Number((features >> 32n) & 0xffffffffn));
  }

  /** The device status register. */
  status(): number {
    return this.read32(VIRTIO_MMIO_STATUS);
  }
  /** Writes the device status register. */
  setStatus(v: number): void {
    this.write32(VIRTIO_MMIO_STATUS, v);
  }
  /** Adds `bit` to the status as Linux's virtio_add_status does (read, OR, write). */
  addStatus(bit: number): void {
    this.setStatus(this.status() | bit);
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, features (default: VERSION_1 plus `features` intersected with the
   * offer), FEATURES_OK. Returns whether FEATURES_OK stuck.
   */
  negotiate(features?: bigint): boolean {
    this.setStatus(0);
    this.addStatus(VIRTIO_STATUS_ACKNOWLEDGE);
    this.addStatus(VIRTIO_STATUS_DRIVER);
    const want = features ?? this.deviceFeatures();
    this.writeDriverFeatures(want | featureBit(VIRTIO_F_VERSION_1));
    this.addStatus(VIRTIO_STATUS_FEATURES_OK);
    return (this.status() & VIRTIO_STATUS_FEATURES_OK) !== 0;
  }

  /** Programs queue `index` with `layout` and sets it ready. */
  setupQueue(index: number, layout: QueueLayout): void {
    this.write32(VIRTIO_MMIO_QUEUE_SEL, index);
    this.write32(VIRTIO_MMIO_QUEUE_NUM, layout.size);
    const split = (a: number): [number, number] => [a % 0x100000000, Math.floor(a / 0x100000000)];
    const [dl, dh] = split(layout.descTable);
    const [al, ah] = split(layout.availRing);
    const [ul, uh] = split(layout.usedRing);
    this.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, dl);
    this.write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, dh);
    this.write32(VIRTIO_MMIO_QUEUE_DRIVER_LOW, al);
    this.write32(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, ah);
    this.write32(VIRTIO_MMIO_QUEUE_DEVICE_LOW, ul);
    this.write32(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, uh);
    this.write32(VIRTIO_MMIO_QUEUE_READY, 1);
  }

  /** QueueNumMax of queue `index`. */
  queueNumMax(index: number): number {
    this.write32(VIRTIO_MMIO_QUEUE_SEL, index);
    return this.read32(VIRTIO_MMIO_QUEUE_NUM_MAX);
  }

  /** Adds DRIVER_OK to the status. */
  driverOk(): void {
    this.addStatus(VIRTIO_STATUS_DRIVER_OK);
  }

  /**
   * Full bring-up: negotiate, lay out and program `sizes.length` queues (size ≤ QueueNumMax), DRIVER_OK.
   * Returns one MockVirtqueue per queue.
   */
  bringUp(alloc: BumpAllocator, sizes: number[], features?: bigint): MockVirtqueue[] {
    if (!this.negotiate(features)) throw new Error('mock driver: FEATURES_OK refused');
    const qs = sizes.map((size, i) => {
      const layout = allocQueueLayout(alloc, size);
      const q = new MockVirtqueue(this.mem, layout);
      this.setupQueue(i, layout);
      return q;
    });
    this.driverOk();
    return qs;
  }

  /** QueueNotify write. */
  notify(index: number): void {
    this.write32(VIRTIO_MMIO_QUEUE_NOTIFY, index);
  }

  /** Reads InterruptStatus and acknowledges it, as an interrupt handler would; returns what was pending. */
  handleInterrupt(): number {
    const s = this.read32(VIRTIO_MMIO_INTERRUPT_STATUS);
    if (s) this.write32(VIRTIO_MMIO_INTERRUPT_ACK, s);
    return s;
  }
}

/** An IrqLine that records what the transport did to it. */
export class MockIrq implements IrqLine {
  /** Edge triggers seen. */
  triggers = 0;
  /** Current level. */
  level = false;
  /** Level changes seen. */
  levelChanges = 0;
  /** Records a level change. */
  setLevel(level: boolean): void {
    this.level = level;
    this.levelChanges++;
  }
  /** Records an edge. */
  trigger(): void {
    this.triggers++;
  }
}

/** Counters of {@link EchoDevice}. */
export interface EchoMetrics {
  /** Chains seen. */
  requests: number;
  /** Malformed chains seen. */
  malformed: number;
}

/**
 * Test device: for each chain, copies the readable bytes into the writable buffers (as many as
 * fit) and completes it with the number of bytes written; malformed chains complete with 0.
 */
export class EchoDevice implements VirtioDevice<EchoMetrics> {
  /** A device type no real driver binds to. */
  readonly deviceType = 0x7e;
  /** Device id. */
  readonly id: string;
  /** Device kind. */
  readonly kind = 'echo';
  /** State format version. */
  readonly stateVersion = 1;
  readonly deviceFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  /** The context while activated. */
  ctx: VirtioDeviceContext | null = null;
  /** 16 bytes of config space, readable and writable. */
  config = new Uint8Array(16);
  /** Chains seen. */
  requests = 0;
  /** Malformed chains seen. */
  malformed = 0;
  /** Driver resets seen. */
  resets = 0;
  /** When set, processQueue rethrows pop errors instead of swallowing them. */
  propagatePopErrors = false;
  /** Called after each completion (e.g. to play a driver that refills the ring concurrently). */
  onComplete?: () => void;

  constructor(queueMaxSizes: readonly number[] = [256], deviceFeatures = 0n, id = 'echo') {
    this.id = id;
    this.queueMaxSizes = queueMaxSizes;
    this.deviceFeatures = deviceFeatures;
  }

  /** Reads config space bytes. */
  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = 0; i < size; i++) v |= (offset + i < this.config.length ? this.config[offset + i] : 0) << (8 * i);
    return v >>> 0;
  }
  /** Writes config space bytes. */
  writeConfig(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) if (offset + i < this.config.length) this.config[offset + i] = (value >>> (8 * i)) & 0xff;
  }
  /** Keeps the context. */
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
  }
  /** Drops the context. */
  reset(): void {
    this.ctx = null;
    this.resets++;
  }
  /** Echoes every available chain. */
  processQueue(queueIndex: number): void {
    const ctx = this.ctx;
    if (!ctx) return;
    const q = ctx.queues[queueIndex];
    const { mem } = ctx;
    let used = false;
    try {
      do {
        q.disableNotification(mem);
        for (let chain = q.pop(mem); chain; chain = q.pop(mem)) {
          this.requests++;
          if (chain.error) {
            this.malformed++;
            q.addUsed(mem, chain.headIndex, 0);
          } else {
            const r = new ChainReader(mem, chain);
            const w = new ChainWriter(mem, chain);
            const n = Math.min(r.remaining, w.remaining);
            w.write(r.read(n));
            q.addUsed(mem, chain.headIndex, w.written);
          }
          used = true;
          this.onComplete?.();
        }
      } while (q.enableNotification(mem));
    } catch (e) {
      if (this.propagatePopErrors) throw e;
    }
    if (used && q.needsNotification(mem)) ctx.interrupt.signalUsedQueue(queueIndex);
  }
  /** Chains seen and malformed ones. */
  metrics(): EchoMetrics {
    return { requests: this.requests, malformed: this.malformed };
  }
  /** The config bytes (the device has no per-request state: it completes every chain at once). */
  saveState(): StateObject {
    return { config: encodeBytes(this.config) };
  }
  /** Restores the config bytes. */
  restoreState(state: StateObject): void {
    const config = stateField.bytes(state, 'config', this.config.length);
    this.config.fill(0);
    this.config.set(config);
  }
  /** Nothing to release. */
  async close(): Promise<void> {}
}

/**
 * Sets a {@link Queue}'s driver-side configuration and ring positions directly, as if a driver
 * had programmed it and the device had already used `nextUsed` entries: for tests that lay out
 * rings by hand instead of going through a transport.
 */
export function configureQueue(q: Queue, settings: Partial<Omit<QueueState, 'maxSize'>>): void {
  q.restoreState({ ...q.saveState(), ...settings });
}
