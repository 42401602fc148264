/**
 * A mock guest-side virtio-vsock driver for unit tests and benchmarks: brings a vsock device up
 * through a real virtio-mmio transport with {@link MockMmioDriver}, keeps receive and event buffers
 * posted, sends packets on the transmit queue and reads what the device put in the receive queue.
 * It is well-behaved unless a test asks otherwise ({@link MockVsockGuest.sendRaw} sends any bytes).
 */
import { GuestMemory } from '../memory/guest-memory';
import { MmioTransport } from '../virtio/mmio';
import type { VirtioDevice } from '../virtio/device';
import { BumpAllocator, MockIrq, MockMmioDriver, type MockVirtqueue } from './mock-driver';
import {
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_EVENT_QUEUE,
  VSOCK_HDR_SIZE,
  VSOCK_HOST_CID,
  VSOCK_RX_QUEUE,
  VSOCK_TX_QUEUE,
} from '../devices/vsock/constants';
import { decodeHeader, encodeHeader, type VsockHeader } from '../devices/vsock/packet';

/** A packet the device delivered to the guest. */
export interface ReceivedPacket {
  /** The decoded header. */
  hdr: VsockHeader;
  /** Its payload (a copy). */
  payload: Buffer;
}

/** Options of {@link MockVsockGuest}. */
export interface MockVsockGuestOptions {
  /** The guest's CID (default 3). */
  guestCid?: number;
  /** Receive buffers kept posted (default 64). */
  rxBuffers?: number;
  /** Payload room of each receive buffer, after the 44-byte header (default 4096). */
  rxPayload?: number;
  /** Transmit slots (default 64) and the largest payload one can carry (default 64 KiB). */
  txSlots?: number;
  /** See {@link txSlots}. */
  txPayload?: number;
  /** Queue size (default 256). */
  queueSize?: number;
  /** Guest memory (default: enough for the buffers). */
  memBytes?: number;
  /** Do not repost a receive buffer once used (a guest that stops reading). */
  noRepost?: boolean;
  /** Transport scheduler (default setImmediate). */
  defer?: (fn: () => void) => void;
}

/** See the module comment. */
export class MockVsockGuest {
  /** Guest memory. */
  readonly mem: GuestMemory;
  /** The transport the device sits behind. */
  readonly transport: MmioTransport;
  /** Register-level driver. */
  readonly driver: MockMmioDriver;
  /** The interrupt line (counts what the transport did). */
  readonly irq = new MockIrq();
  /** Called after each interrupt the device raises (e.g. to run a guest-side agent). */
  onInterrupt: (() => void) | undefined;
  /** Driver sides of rx, tx and event queues. */
  readonly rxq: MockVirtqueue;
  /** See {@link rxq}. */
  readonly txq: MockVirtqueue;
  /** See {@link rxq}. */
  readonly evq: MockVirtqueue;
  /** The guest's CID. */
  readonly guestCid: number;
  /** Whether used receive buffers are posted again. */
  repost: boolean;
  /** Transport-reset events read. */
  events = 0;

  private readonly rxAddr = new Map<number, { addr: number; len: number }>();
  private readonly freeRx: { addr: number; len: number }[] = [];
  private readonly txFree: number[] = [];
  private readonly txOfHead = new Map<number, number>();
  private readonly evAddr = new Map<number, number>();
  private readonly rxPayload: number;
  private readonly txPayload: number;
  private readonly hdr = new Uint8Array(VSOCK_HDR_SIZE);

  /**
   * @param device a vsock device (not yet behind a transport)
   * @param options sizes, see {@link MockVsockGuestOptions}
   */
  constructor(device: VirtioDevice, options: MockVsockGuestOptions = {}) {
    this.guestCid = options.guestCid ?? 3;
    const rxBuffers = options.rxBuffers ?? 64;
    this.rxPayload = options.rxPayload ?? 4096;
    const txSlots = options.txSlots ?? 64;
    this.txPayload = options.txPayload ?? 64 * 1024;
    const qsize = options.queueSize ?? 256;
    this.repost = !(options.noRepost ?? false);
    const need = rxBuffers * (this.rxPayload + VSOCK_HDR_SIZE + 64) + txSlots * (this.txPayload + VSOCK_HDR_SIZE + 64) + 3 * 8192 + 64 * 1024;
    this.mem = GuestMemory.anonymous(options.memBytes ?? Math.ceil(need / 4096) * 4096 + 4096);
    const alloc = new BumpAllocator(this.mem);
    const irq = this.irq;
    const line = {
      trigger: () => {
        irq.trigger();
        this.onInterrupt?.();
      },
      setLevel: (level: boolean) => irq.setLevel(level),
    };
    this.transport = new MmioTransport(device, { mem: this.mem, irq: line, ...(options.defer ? { defer: options.defer } : {}) });
    this.driver = new MockMmioDriver(this.transport, this.mem);
    [this.rxq, this.txq, this.evq] = this.driver.bringUp(alloc, [qsize, qsize, qsize]);
    for (let i = 0; i < rxBuffers; i++) this.freeRx.push({ addr: alloc.alloc(this.rxPayload + VSOCK_HDR_SIZE, 64), len: this.rxPayload + VSOCK_HDR_SIZE });
    for (let i = 0; i < txSlots; i++) this.txFree.push(alloc.alloc(this.txPayload + VSOCK_HDR_SIZE, 64));
    for (let i = 0; i < 4; i++) {
      const a = alloc.alloc(4, 4);
      const head = this.evq.addChain([{ addr: a, len: 4, write: true }]);
      this.evAddr.set(head, a);
    }
    this.postRx();
    this.driver.notify(VSOCK_EVENT_QUEUE);
  }

  /** Posts every free receive buffer and notifies the device. */
  postRx(): void {
    let n = 0;
    while (this.freeRx.length > 0 && this.rxq.freeCount > 0) {
      const b = this.freeRx.pop()!;
      const head = this.rxq.addChain([{ addr: b.addr, len: b.len, write: true }]);
      this.rxAddr.set(head, b);
      n++;
    }
    if (n > 0) this.driver.notify(VSOCK_RX_QUEUE);
  }

  /** Receive buffers currently posted. */
  get postedRx(): number {
    return this.rxAddr.size;
  }

  /**
   * Sends one packet from the guest: `h` fills in the guest's CID, host CID, stream type and zero
   * defaults. Returns false when no transmit slot is free (the device has not used the earlier ones).
   */
  send(h: Partial<VsockHeader> & { op: number }, payload?: Uint8Array): boolean {
    const full: VsockHeader = {
      srcCid: this.guestCid,
      dstCid: VSOCK_HOST_CID,
      srcPort: 0,
      dstPort: 0,
      len: payload?.length ?? 0,
      type: VIRTIO_VSOCK_TYPE_STREAM,
      flags: 0,
      bufAlloc: 0,
      fwdCnt: 0,
      ...h,
    };
    encodeHeader(full, this.hdr);
    if (payload === undefined || payload.length === 0) return this.sendRaw(this.hdr);
    // Header and payload written straight into the slot, as a guest driver fills its buffer.
    this.reapTx();
    if (this.txFree.length === 0 || payload.length > this.txPayload || this.txq.freeCount === 0) return false;
    const addr = this.txFree.pop()!;
    this.mem.write(addr, this.hdr);
    this.mem.write(addr + VSOCK_HDR_SIZE, payload);
    const head = this.txq.addChain([{ addr, len: VSOCK_HDR_SIZE + payload.length }]);
    this.txOfHead.set(head, addr);
    this.driver.notify(VSOCK_TX_QUEUE);
    return true;
  }

  /** Sends `bytes` as one transmit chain, whatever they hold. False when no slot is free. */
  sendRaw(bytes: Uint8Array, notify = true): boolean {
    this.reapTx();
    if (this.txFree.length === 0 || bytes.length > this.txPayload + VSOCK_HDR_SIZE || this.txq.freeCount === 0) return false;
    const addr = this.txFree.pop()!;
    this.mem.write(addr, bytes);
    const head = this.txq.addChain([{ addr, len: Math.max(bytes.length, 1) }]);
    this.txOfHead.set(head, addr);
    if (notify) this.driver.notify(VSOCK_TX_QUEUE);
    return true;
  }

  /** Frees the transmit slots the device has used. */
  reapTx(): void {
    for (const u of this.txq.readUsed()) {
      const a = this.txOfHead.get(u.id);
      if (a !== undefined) {
        this.txOfHead.delete(u.id);
        this.txFree.push(a);
      }
    }
  }

  /**
   * Reads every packet the device delivered, reposting the buffers unless {@link repost} is off.
   * Like Linux's virtqueue_enable_cb, it re-arms the interrupt threshold and then looks again, so
   * packets the device added meanwhile (in answer to the reposted buffers) are not left unseen.
   * With `copy` false the payloads are views of guest memory, valid only until the device reuses
   * the buffer (for benchmarks that only count bytes).
   */
  receive(copy = true): ReceivedPacket[] {
    this.driver.handleInterrupt();
    const out: ReceivedPacket[] = [];
    for (;;) {
      for (const u of this.rxq.readUsed()) {
        const b = this.rxAddr.get(u.id);
        if (b === undefined) continue;
        this.rxAddr.delete(u.id);
        if (u.len >= VSOCK_HDR_SIZE) {
          const hdr = decodeHeader(this.mem.read(b.addr, VSOCK_HDR_SIZE));
          const n = Math.min(hdr.len, u.len - VSOCK_HDR_SIZE);
          const view = this.mem.slice(b.addr + VSOCK_HDR_SIZE, n);
          out.push({ hdr, payload: copy ? Buffer.from(view) : Buffer.from(view.buffer, view.byteOffset, view.byteLength) });
        }
        this.freeRx.push(b);
      }
      if (this.repost) this.postRx();
      this.rxq.setUsedEvent(this.rxq.lastUsedIdx);
      if (this.rxq.usedIdx() === this.rxq.lastUsedIdx) break;
    }
    this.readEvents();
    return out;
  }

  /** Counts transport-reset events and reposts their buffers. */
  readEvents(): void {
    let n = 0;
    for (const u of this.evq.readUsed()) {
      const a = this.evAddr.get(u.id);
      if (a === undefined) continue;
      this.evAddr.delete(u.id);
      if (u.len === 4 && this.mem.readU32(a) === 0) this.events++;
      const head = this.evq.addChain([{ addr: a, len: 4, write: true }]);
      this.evAddr.set(head, a);
      n++;
    }
    if (n > 0) this.driver.notify(VSOCK_EVENT_QUEUE);
  }
}
