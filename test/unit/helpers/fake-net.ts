import type { FdPoll, NetHost, SpanList, TapInfo } from '../../../lib/devices/net/host';
import { GuestMemory } from '../../../lib/memory/guest-memory';
import { MmioTransport } from '../../../lib/virtio/mmio';
import { BumpAllocator, MockIrq, MockMmioDriver, MockVirtqueue, allocQueueLayout, type QueueLayout, type UsedElem } from '../../../lib/testing/mock-driver';
import { NetDevice, type NetDeviceConfig } from '../../../lib/devices/net/device';
import { VNET_HDR_SIZE, TUN_F_ALL } from '../../../lib/devices/net/constants';
import { featureBit } from '../../../lib/virtio/constants';
import { VIRTIO_F_VERSION_1 } from '../../../lib/virtio/constants';

/**
 * A TAP in memory, with a kernel's read semantics: one frame per read, the full length reported
 * even when the spans were too short (the excess is lost), -1 when empty.
 */
export class FakeTap {
  /** Frames (virtio header included) the "kernel" has for the reader. */
  inbound: Uint8Array[] = [];
  /** Frames (virtio header included) written by the device. */
  written: Uint8Array[] = [];
  offloadCalls: number[] = [];
  closed = false;
  poll: FakePoll | null = null;
  /** When set, writev throws this errno-coded error. */
  writeError: string | null = null;
  readError: string | null = null;
}

export class FakePoll implements FdPoll {
  running = true;
  closed = false;
  pauses = 0;
  resumes = 0;
  constructor(readonly onReadable: () => void) {}
  pause(): void {
    if (this.running) this.pauses++;
    this.running = false;
  }
  resume(): void {
    if (!this.running) this.resumes++;
    this.running = true;
  }
  close(): void {
    this.closed = true;
    this.running = false;
  }
}

function gather(list: SpanList): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < list.count; i++) {
    const b = list.buffers[list.spans[3 * i]];
    out.push(new Uint8Array(b, list.spans[3 * i + 1], list.spans[3 * i + 2]));
  }
  return out;
}

/** A NetHost over FakeTaps; `taps` maps interface names to them. */
export class FakeNetHost implements NetHost {
  taps = new Map<string, FakeTap>();
  byFd = new Map<number, FakeTap>();
  busy = new Set<string>();
  nextFd = 100;
  offloads = TUN_F_ALL;

  addTap(name: string): FakeTap {
    const t = new FakeTap();
    this.taps.set(name, t);
    return t;
  }

  openTap(name: string): TapInfo {
    const t = this.taps.get(name);
    if (!t) throw Object.assign(new Error(`if_nametoindex failed: ENODEV`), { code: 'ENODEV' });
    if (this.busy.has(name)) throw Object.assign(new Error(`TUNSETIFF failed: EBUSY`), { code: 'EBUSY' });
    this.busy.add(name);
    const fd = this.nextFd++;
    this.byFd.set(fd, t);
    return { fd, name, offloads: this.offloads };
  }

  private tap(fd: number): FakeTap {
    const t = this.byFd.get(fd);
    if (!t || t.closed) throw Object.assign(new Error('EBADF'), { code: 'EBADF' });
    return t;
  }

  setTapOffload(fd: number, flags: number): void {
    this.tap(fd).offloadCalls.push(flags);
  }

  readv(fd: number, list: SpanList): number {
    const t = this.tap(fd);
    if (t.readError) throw Object.assign(new Error(t.readError), { code: t.readError });
    const f = t.inbound.shift();
    if (f === undefined) return -1;
    let at = 0;
    for (const v of gather(list)) {
      const n = Math.min(v.length, f.length - at);
      v.set(f.subarray(at, at + n));
      at += n;
      if (at >= f.length) break;
    }
    return f.length;
  }

  writev(fd: number, list: SpanList): number {
    const t = this.tap(fd);
    if (t.writeError) throw Object.assign(new Error(t.writeError), { code: t.writeError });
    const parts = gather(list);
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    t.written.push(out);
    return total;
  }

  watchReadable(fd: number, onReadable: () => void): FdPoll {
    const t = this.tap(fd);
    t.poll = new FakePoll(onReadable);
    return t.poll;
  }

  closeFd(fd: number): void {
    const t = this.tap(fd);
    t.closed = true;
    for (const [name, tap] of this.taps) if (tap === t) this.busy.delete(name);
  }

  /** Runs the readable callback as the event loop would while frames are queued and the watch runs. */
  pumpTap(name: string, maxCalls = 1000): number {
    const t = this.taps.get(name)!;
    let calls = 0;
    while (t.poll && t.poll.running && t.inbound.length > 0 && calls < maxCalls) {
      t.poll.onReadable();
      calls++;
    }
    return calls;
  }
}

/** A scheduler the tests run by hand (the transport's `defer`, hence the device's `schedule`). */
export class ManualScheduler {
  queue: (() => void)[] = [];
  defer = (fn: () => void): void => {
    this.queue.push(fn);
  };
  run(max = 10000): number {
    let n = 0;
    while (this.queue.length > 0 && n < max) {
      this.queue.shift()!();
      n++;
    }
    return n;
  }
}

export const MAC_A = Uint8Array.from([0x06, 0x00, 0xac, 0x10, 0x00, 0x02]);
export const MAC_B = Uint8Array.from([0x06, 0x00, 0xac, 0x10, 0x00, 0x03]);

/** A guest-side view of one NIC: driver, rings, buffers. */
export interface NetRig {
  mem: GuestMemory;
  alloc: BumpAllocator;
  irq: MockIrq;
  device: NetDevice;
  transport: MmioTransport;
  driver: MockMmioDriver;
  rxq: MockVirtqueue;
  txq: MockVirtqueue;
  sched: ManualScheduler;
  /** Receive buffers by head: address and size. */
  rxBufs: Map<number, { addr: number; len: number }>;
}

export function netRig(cfg: NetDeviceConfig, opts: { features?: bigint; queueSize?: number; memMiB?: number } = {}): NetRig {
  const mem = GuestMemory.anonymous((opts.memMiB ?? 16) << 20);
  const alloc = new BumpAllocator(mem);
  const irq = new MockIrq();
  const sched = new ManualScheduler();
  const device = new NetDevice(cfg);
  const transport = new MmioTransport(device, { mem, irq, defer: sched.defer });
  const driver = new MockMmioDriver(transport, mem);
  const qs = opts.queueSize ?? 256;
  const [rxq, txq] = driver.bringUp(alloc, [qs, qs], opts.features);
  return { mem, alloc, irq, device, transport, driver, rxq, txq, sched, rxBufs: new Map() };
}

/**
 * Guest memory and queue layouts shared by many short-lived rigs (property tests): each
 * {@link rigOn} builds a new device and transport over them and clears the rings, which is much
 * cheaper than fresh memory per run.
 */
export class RigArena {
  readonly mem: GuestMemory;
  readonly rxLayout: QueueLayout;
  readonly txLayout: QueueLayout;
  private readonly dataStart: number;
  constructor(memBytes: number, queueSize: number) {
    this.mem = GuestMemory.anonymous(memBytes);
    const a = new BumpAllocator(this.mem);
    this.rxLayout = allocQueueLayout(a, queueSize);
    this.txLayout = allocQueueLayout(a, queueSize);
    this.dataStart = a.alloc(16, 4096);
  }

  /** A fresh device on the shared memory, brought up with `features` (default: all offered). */
  rigOn(cfg: NetDeviceConfig, features?: bigint): NetRig {
    const irq = new MockIrq();
    const sched = new ManualScheduler();
    const device = new NetDevice(cfg);
    const transport = new MmioTransport(device, { mem: this.mem, irq, defer: sched.defer });
    const driver = new MockMmioDriver(transport, this.mem);
    if (!driver.negotiate(features)) throw new Error('FEATURES_OK refused');
    const rxq = new MockVirtqueue(this.mem, this.rxLayout);
    const txq = new MockVirtqueue(this.mem, this.txLayout);
    driver.setupQueue(0, this.rxLayout);
    driver.setupQueue(1, this.txLayout);
    driver.driverOk();
    const alloc = new BumpAllocator(this.mem, this.dataStart);
    return { mem: this.mem, alloc, irq, device, transport, driver, rxq, txq, sched, rxBufs: new Map() };
  }
}

/** All features the device offers (plus VERSION_1), the default a Linux-like driver accepts. */
export function allFeatures(device: NetDevice): bigint {
  return device.deviceFeatures | featureBit(VIRTIO_F_VERSION_1);
}

/** Posts `n` receive buffers of `size` bytes (optionally split in `segs` descriptors) and notifies. */
export function postRx(r: NetRig, n: number, size: number, segs = 1, notify = true): void {
  for (let i = 0; i < n; i++) {
    const addr = r.alloc.alloc(size, 16);
    const per = Math.ceil(size / segs);
    const bufs = [];
    for (let off = 0; off < size; off += per) bufs.push({ addr: addr + off, len: Math.min(per, size - off), write: true });
    const head = r.rxq.addChain(bufs);
    r.rxBufs.set(head, { addr, len: size });
  }
  if (notify) r.driver.notify(0);
}

/** Sends a frame with a (default zero) header; returns the head. */
export function sendFrame(r: NetRig, frame: Uint8Array, header: Uint8Array = new Uint8Array(VNET_HDR_SIZE), split = false, notify = true): number {
  const bufs = split
    ? [
        { addr: r.alloc.allocData(header.length > 0 ? header : new Uint8Array(1)), len: header.length },
        { addr: r.alloc.allocData(frame.length > 0 ? frame : new Uint8Array(1)), len: frame.length },
      ]
    : [{ addr: r.alloc.allocData(concat(header, frame, new Uint8Array(1))), len: header.length + frame.length }];
  const head = r.txq.addChain(bufs.filter((b) => b.len > 0));
  if (notify) r.driver.notify(1);
  return head;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Reads every received frame the device published: for each, the header and the frame joined
 * across its `num_buffers` chains.
 */
export function receive(r: NetRig): { header: Uint8Array; frame: Uint8Array; chains: number }[] {
  const used: UsedElem[] = r.rxq.readUsed();
  const out: { header: Uint8Array; frame: Uint8Array; chains: number }[] = [];
  for (let i = 0; i < used.length; ) {
    if (used[i].len < VNET_HDR_SIZE) {
      // A chain the device returned empty (malformed or too small): no frame.
      i++;
      continue;
    }
    const first = r.rxBufs.get(used[i].id)!;
    const data = r.mem.read(first.addr, used[i].len);
    const nb = data[10] | (data[11] << 8);
    const parts = [data];
    for (let k = 1; k < nb; k++) {
      const u = used[i + k];
      parts.push(r.mem.read(r.rxBufs.get(u.id)!.addr, u.len));
    }
    const all = concat(...parts);
    out.push({ header: all.subarray(0, VNET_HDR_SIZE), frame: all.subarray(VNET_HDR_SIZE), chains: Math.max(nb, 1) });
    i += Math.max(nb, 1);
  }
  return out;
}

/** An Ethernet frame: dst, src, ethertype, payload. */
export function ethFrame(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array | number): Uint8Array {
  const body = typeof payload === 'number' ? Uint8Array.from({ length: payload }, (_, i) => (i * 7 + 1) & 0xff) : payload;
  const f = new Uint8Array(14 + body.length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(body, 14);
  return f;
}

export const BROADCAST = new Uint8Array(6).fill(0xff);
