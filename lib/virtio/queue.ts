/**
 * One split virtqueue (virtio 1.2 §2.7), device side.
 *
 * Everything the driver put in the rings is hostile: indices, addresses, lengths and flags are
 * checked before use, chain walks are bounded by the queue size, and no guest memory access can
 * leave {@link GuestMemory} (whose own checks throw `MemoryError`, which never escapes from here).
 *
 * Error policy:
 * - A malformed *chain* (bad descriptor, loop, bad indirect table, readable after writable, too long)
 *   consumes its head and is returned from {@link Queue.pop} with `chain.error` set and no buffers,
 *   so the device can complete it (`addUsed(headIndex, 0)` or an error status) and carry on.
 * - A malformed *ring* (avail idx more than `size` ahead, head index ≥ size, rings outside memory)
 *   cannot be answered meaningfully: `pop` throws {@link VirtioError}, the queue records it in
 *   {@link Queue.broken} and keeps throwing until {@link Queue.reset}. The transport turns that into
 *   DEVICE_NEEDS_RESET (§2.1.2).
 *
 * JS has no memory-ordering concerns of its own, but the access order still mirrors what the spec
 * demands of a device: the avail idx is read once per batch, before the ring entries it covers, and
 * a used element is written before the used idx that publishes it.
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory';
import { DescriptorChain, type DescriptorSegment } from './chain';
import {
  VIRTQ_AVAIL_ALIGN,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_ALIGN,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
  VIRTQ_MAX_SIZE_SPEC,
  VIRTQ_USED_ALIGN,
  VIRTQ_USED_ELEM_SIZE,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  descTableBytes,
  usedRingBytes,
} from './constants';
import { VirtioError, VIRTIO_ERROR_CODES, type VirtioErrorCode } from './errors';

/** Largest chain total (readable or writable) we accept: used lengths are u32 (§2.7.8). */
const MAX_CHAIN_BYTES = 0xffffffff;

// Ring field offsets (§2.7.6, §2.7.8).
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 2;
const AVAIL_RING = 4;
const USED_FLAGS = 0;
const USED_IDX = 2;
const USED_RING = 4;
// Descriptor field offsets (§2.7.5).
const DESC_ADDR = 0;
const DESC_LEN = 8;
const DESC_FLAGS = 12;
const DESC_NEXT = 14;

/**
 * The `vring_need_event` rule (§2.7.7.2 / §2.7.10): with EVENT_IDX, the other side must be notified
 * iff `eventIdx` lies in the window of entries published since the last notification,
 * `[oldIdx, newIdx)`, all in wrapping 16-bit arithmetic.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * A queue's saved state (see {@link Queue.saveState}): the driver's configuration, the device's
 * ring positions and notification bookkeeping. Plain data, so it serializes as JSON.
 */
export interface QueueState {
  /** The queue's maximum size; must match the restoring queue's. */
  maxSize: number;
  /** QueueNum as the driver wrote it. */
  size: number;
  /** QueueReady. */
  ready: boolean;
  /** Descriptor table address (-1: the driver wrote one beyond 2^53). */
  descTable: number;
  /** Available ring address. */
  availRing: number;
  /** Used ring address. */
  usedRing: number;
  /** Next avail ring position to pop (u16). */
  nextAvail: number;
  /** Next used ring position (u16). */
  nextUsed: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirectDesc: boolean;
  /** Used idx at the last used-buffer notification, or null before the first. */
  signalledUsed: number | null;
  /** Whether the device wanted avail notifications. */
  notifyEnabled: boolean;
  /** The ring-level error code that broke the queue, or null. */
  broken: VirtioErrorCode | null;
  /** Counter: chains popped. */
  poppedChains: number;
  /** Counter: malformed chains. */
  malformedChains: number;
}

/** One split virtqueue, device side. */
export class Queue {
  /** Largest size the device supports for this queue (power of two, ≤ 32768). */
  readonly maxSize: number;
  /** Chains popped (including malformed ones). */
  poppedChains = 0;
  /** Chains popped with `error` set. */
  malformedChains = 0;

  private sizeValue: number;
  private readyValue = false;
  private descTableAddr = 0;
  private availRingAddr = 0;
  private usedRingAddr = 0;
  private nextAvailIdx = 0;
  private nextUsedIdx = 0;
  private eventIdxOn = false;
  private indirectDescOn = false;

  /** Last avail idx read from guest memory; chains up to it are popped without re-reading it. */
  private cachedAvailIdx = 0;
  /** Used idx at the last used-buffer notification, or null before the first (EVENT_IDX). */
  private signalledUsed: number | null = null;
  /** Whether the device currently wants avail notifications (see {@link disableNotification}). */
  private notifyEnabled = true;
  private brokenBy: VirtioError | null = null;
  /** Chains {@link pop} may still return before pausing; see {@link setPopBudget}. */
  private popBudget = Infinity;
  private budgetHit = false;

  /**
   * @param maxSize the largest queue size the device accepts; a power of two up to 32768.
   */
  constructor(maxSize: number) {
    if (!Number.isInteger(maxSize) || !isPowerOfTwo(maxSize) || maxSize > VIRTQ_MAX_SIZE_SPEC) {
      throw new VirtioError('BAD_QUEUE_CONFIG', `queue max size ${maxSize} is not a power of two ≤ ${VIRTQ_MAX_SIZE_SPEC}`);
    }
    this.maxSize = maxSize;
    this.sizeValue = maxSize;
  }

  // ---------------------------------------------------------------------------------------------
  // What the driver configures, through the transport's queue registers (§4.2.2). Values are
  // stored as written; {@link validate} judges them at DRIVER_OK.

  /** Size the driver chose (QueueNum); defaults to {@link maxSize}. */
  get size(): number {
    return this.sizeValue;
  }
  /** Driver has enabled the queue (QueueReady). */
  get ready(): boolean {
    return this.readyValue;
  }
  /** Guest physical address of the descriptor table (-1 when the driver wrote one beyond 2^53). */
  get descTable(): number {
    return this.descTableAddr;
  }
  /** Guest physical address of the available ring ("driver area"). */
  get availRing(): number {
    return this.availRingAddr;
  }
  /** Guest physical address of the used ring ("device area"). */
  get usedRing(): number {
    return this.usedRingAddr;
  }
  /** Free-running u16: avail ring position of the next chain to pop. */
  get nextAvail(): number {
    return this.nextAvailIdx;
  }
  /** Free-running u16: used ring position of the next completion (the published used idx). */
  get nextUsed(): number {
    return this.nextUsedIdx;
  }
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  get eventIdx(): boolean {
    return this.eventIdxOn;
  }
  /** VIRTIO_F_INDIRECT_DESC was negotiated. */
  get indirectDesc(): boolean {
    return this.indirectDescOn;
  }

  /** QueueNum. Any number is stored; {@link validate} refuses what is not a power of two ≤ maxSize. */
  setSize(size: number): void {
    this.sizeValue = size;
  }
  /** QueueReady. */
  setReady(ready: boolean): void {
    this.readyValue = ready;
  }
  /** QueueDesc / QueueDriver / QueueDevice: the three ring addresses. */
  setAddresses(descTable: number, availRing: number, usedRing: number): void {
    this.descTableAddr = descTable;
    this.availRingAddr = availRing;
    this.usedRingAddr = usedRing;
  }
  /** The features negotiated for the queue, set by the transport at DRIVER_OK. */
  setFeatures(eventIdx: boolean, indirectDesc: boolean): void {
    this.eventIdxOn = eventIdx;
    this.indirectDescOn = indirectDesc;
  }

  /**
   * Everything needed to continue this queue elsewhere (a snapshot): the driver's configuration
   * and the device's positions in the rings. The rings themselves live in guest memory.
   */
  saveState(): QueueState {
    return {
      maxSize: this.maxSize,
      size: this.sizeValue,
      ready: this.readyValue,
      descTable: this.descTableAddr,
      availRing: this.availRingAddr,
      usedRing: this.usedRingAddr,
      nextAvail: this.nextAvailIdx,
      nextUsed: this.nextUsedIdx,
      eventIdx: this.eventIdxOn,
      indirectDesc: this.indirectDescOn,
      signalledUsed: this.signalledUsed,
      notifyEnabled: this.notifyEnabled,
      broken: this.brokenBy ? this.brokenBy.code : null,
      poppedChains: this.poppedChains,
      malformedChains: this.malformedChains,
    };
  }

  /**
   * Continues from a {@link saveState} result. The state is input like any other: every field is
   * checked, and a state that does not fit this queue throws {@link VirtioError} `BAD_QUEUE_STATE`
   * with nothing changed. Ring addresses are not checked against guest memory here; the transport
   * validates a ready queue of an activated device as it does at DRIVER_OK.
   */
  restoreState(state: QueueState): void {
    const bad = (what: string) => new VirtioError('BAD_QUEUE_STATE', `queue state: ${what}`);
    if (state === null || typeof state !== 'object') throw bad('not an object');
    if (state.maxSize !== this.maxSize) throw bad(`maxSize ${String(state.maxSize)} is not this queue's ${this.maxSize}`);
    const u16 = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
    const count = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    // Addresses are judged by validate() at use, as when the driver writes them.
    const addr = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v);
    if (typeof state.size !== 'number' || !Number.isSafeInteger(state.size)) throw bad('size');
    if (typeof state.ready !== 'boolean' || typeof state.eventIdx !== 'boolean' || typeof state.indirectDesc !== 'boolean' || typeof state.notifyEnabled !== 'boolean') {
      throw bad('flags');
    }
    if (!addr(state.descTable) || !addr(state.availRing) || !addr(state.usedRing)) throw bad('ring addresses');
    if (!u16(state.nextAvail) || !u16(state.nextUsed)) throw bad('ring positions');
    if (state.signalledUsed !== null && !u16(state.signalledUsed)) throw bad('signalledUsed');
    if (!count(state.poppedChains) || !count(state.malformedChains)) throw bad('counters');
    if (state.broken !== null && (typeof state.broken !== 'string' || !VIRTIO_ERROR_CODES.has(state.broken as VirtioErrorCode))) throw bad('broken');
    this.sizeValue = state.size;
    this.readyValue = state.ready;
    this.descTableAddr = state.descTable;
    this.availRingAddr = state.availRing;
    this.usedRingAddr = state.usedRing;
    this.nextAvailIdx = state.nextAvail;
    this.cachedAvailIdx = state.nextAvail;
    this.nextUsedIdx = state.nextUsed;
    this.eventIdxOn = state.eventIdx;
    this.indirectDescOn = state.indirectDesc;
    this.signalledUsed = state.signalledUsed;
    this.notifyEnabled = state.notifyEnabled;
    this.brokenBy = state.broken === null ? null : new VirtioError(state.broken as VirtioErrorCode, 'queue was broken when its state was saved');
    this.poppedChains = state.poppedChains;
    this.malformedChains = state.malformedChains;
    this.popBudget = Infinity;
    this.budgetHit = false;
  }

  /** The ring-level error that stopped this queue, or null. Cleared by {@link reset}. */
  get broken(): VirtioError | null {
    return this.brokenBy;
  }

  /** Back to the post-reset state (§2.4): not ready, no addresses, counters zero. */
  reset(): void {
    this.sizeValue = this.maxSize;
    this.readyValue = false;
    this.descTableAddr = 0;
    this.availRingAddr = 0;
    this.usedRingAddr = 0;
    this.nextAvailIdx = 0;
    this.nextUsedIdx = 0;
    this.eventIdxOn = false;
    this.indirectDescOn = false;
    this.cachedAvailIdx = 0;
    this.signalledUsed = null;
    this.notifyEnabled = true;
    this.brokenBy = null;
    this.popBudget = Infinity;
    this.budgetHit = false;
  }

  /**
   * Bounds how many chains {@link pop} returns before it starts answering null (and
   * {@link enableNotification} false). JS devices run on the event loop, and a driver that keeps
   * refilling the ring — or rings laid out to overlap so that the device's own used-idx writes look
   * like new avail entries — could otherwise keep one processQueue call spinning forever. The
   * transport sets a budget around each notification and reschedules the queue when it ran out.
   * `Infinity` (the default) means unbounded.
   */
  setPopBudget(chains: number): void {
    this.popBudget = chains;
    this.budgetHit = false;
  }

  /** Whether pop or enableNotification stopped early because the pop budget was used up. */
  get popBudgetExhausted(): boolean {
    return this.budgetHit;
  }

  /**
   * Why the current configuration cannot be used, or null if it can: size a power of two
   * ≤ maxSize, each part aligned as §2.7 requires (16/2/4), wholly inside one guest memory region,
   * and not overlapping the other parts.
   */
  validate(mem: GuestMemory): VirtioError | null {
    const size = this.size;
    if (!Number.isInteger(size) || !isPowerOfTwo(size) || size > this.maxSize) {
      return new VirtioError('BAD_QUEUE_CONFIG', `queue size ${size} is not a power of two ≤ ${this.maxSize}`);
    }
    const parts: [string, number, number, number][] = [
      ['descriptor table', this.descTable, VIRTQ_DESC_ALIGN, descTableBytes(size)],
      ['available ring', this.availRing, VIRTQ_AVAIL_ALIGN, availRingBytes(size)],
      ['used ring', this.usedRing, VIRTQ_USED_ALIGN, usedRingBytes(size)],
    ];
    for (const [name, addr, align, bytes] of parts) {
      if (!Number.isSafeInteger(addr) || addr < 0 || addr % align !== 0) {
        return new VirtioError('BAD_QUEUE_CONFIG', `${name} address 0x${addr.toString(16)} is not ${align}-byte aligned`);
      }
      if (!mem.checkRange(addr, bytes)) {
        return new VirtioError('BAD_QUEUE_CONFIG', `${name} 0x${addr.toString(16)}+${bytes} is outside guest memory`);
      }
    }
    // No driver lays the parts out overlapping (Linux's vring layout is sequential). Refusing it
    // means the device's own ring writes (used elements, used idx, avail_event) can never rewrite
    // the descriptors or avail entries it is reading.
    for (let i = 0; i < parts.length; i++) {
      for (let j = i + 1; j < parts.length; j++) {
        const [a, aAddr, , aLen] = parts[i];
        const [b, bAddr, , bLen] = parts[j];
        if (aAddr < bAddr + bLen && bAddr < aAddr + aLen) {
          return new VirtioError('BAD_QUEUE_CONFIG', `${a} and ${b} overlap`);
        }
      }
    }
    return null;
  }

  /** Whether the configuration is usable; see {@link validate}. */
  isValid(mem: GuestMemory): boolean {
    return this.validate(mem) === null;
  }

  /** Records a ring-level error; the queue stays broken until reset. */
  private fail(e: unknown): VirtioError {
    const err =
      e instanceof VirtioError
        ? e
        : new VirtioError('RING_OUT_OF_RANGE', `virtqueue ring access failed: ${e instanceof Error ? e.message : String(e)}`);
    if (!this.brokenBy) this.brokenBy = err;
    return err;
  }

  /** Re-reads avail idx; returns whether chains are pending. Throws (ring-level) if it is too far ahead. */
  private refreshAvail(mem: GuestMemory): boolean {
    const idx = mem.readU16(this.availRing + AVAIL_IDX);
    // The avail ring has `size` slots (§2.7.6): the driver cannot be further ahead than that.
    if (((idx - this.nextAvail) & 0xffff) > this.size) {
      throw new VirtioError('AVAIL_IDX_TOO_FAR', `avail idx ${idx} is more than ${this.size} ahead of ${this.nextAvail}`);
    }
    this.cachedAvailIdx = idx;
    return idx !== this.nextAvail;
  }

  /**
   * The next available chain, or null if the driver has published none.
   *
   * When the ring is empty, EVENT_IDX is on and notifications are enabled, this also publishes
   * `avail_event = nextAvail` and looks once more, so a device that simply pops until null never
   * misses a notification.
   * @throws VirtioError for ring-level errors (see the module comment); never anything else.
   */
  pop(mem: GuestMemory): DescriptorChain | null {
    if (this.brokenBy) throw this.brokenBy;
    if (!this.ready) throw new VirtioError('QUEUE_NOT_READY', 'pop on a queue that is not ready');
    if (this.popBudget <= 0) {
      this.budgetHit = true;
      return null;
    }
    try {
      if (this.nextAvail === this.cachedAvailIdx && !this.refreshAvail(mem)) {
        if (!this.eventIdx || !this.notifyEnabled) return null;
        mem.writeU16(this.usedRing + USED_RING + VIRTQ_USED_ELEM_SIZE * this.size, this.nextAvail);
        if (!this.refreshAvail(mem)) return null;
      }
      const slot = this.nextAvail & (this.size - 1);
      const head = mem.readU16(this.availRing + AVAIL_RING + 2 * slot);
      if (head >= this.size) {
        throw new VirtioError('HEAD_OUT_OF_RANGE', `avail ring entry ${slot} names descriptor ${head} ≥ queue size ${this.size}`);
      }
      this.nextAvailIdx = (this.nextAvailIdx + 1) & 0xffff;
      this.poppedChains++;
      this.popBudget--;
      const chain = this.walkChain(mem, head);
      if (chain.error) this.malformedChains++;
      return chain;
    } catch (e) {
      throw this.fail(e);
    }
  }

  /**
   * Pushes the most recently popped chain back, so the next {@link pop} returns it again
   * (for a device that must defer a request, e.g. when rate limited). Only valid directly after
   * a successful pop; undoing n pops in a row is fine.
   */
  undoPop(): void {
    this.nextAvailIdx = (this.nextAvailIdx - 1) & 0xffff;
    if (this.poppedChains > 0) this.poppedChains--;
    this.popBudget++;
  }

  /**
   * The chain at descriptor `headIndex`, read again from the descriptor table: for a device
   * continuing, after a restore, a request it had popped before the snapshot (the driver does not
   * touch a chain's descriptors until the device has used it, §2.7.13.3).
   * @throws VirtioError ring-level errors, as {@link pop}; `HEAD_OUT_OF_RANGE` for a bad head.
   */
  chainAt(mem: GuestMemory, headIndex: number): DescriptorChain {
    if (this.brokenBy) throw this.brokenBy;
    if (!this.readyValue) throw new VirtioError('QUEUE_NOT_READY', 'chainAt on a queue that is not ready');
    if (!Number.isInteger(headIndex) || headIndex < 0 || headIndex >= this.sizeValue) {
      throw new VirtioError('HEAD_OUT_OF_RANGE', `head ${headIndex} outside queue of ${this.sizeValue}`);
    }
    try {
      return this.walkChain(mem, headIndex);
    } catch (e) {
      throw this.fail(e);
    }
  }

  /**
   * Follows the chain starting at `head`. Chain-level problems come back as a malformed chain;
   * a MemoryError from the descriptor table itself (ring-level) propagates to pop.
   */
  private walkChain(mem: GuestMemory, head: number): DescriptorChain {
    const readable: DescriptorSegment[] = [];
    const writable: DescriptorSegment[] = [];
    let readableLength = 0;
    let writableLength = 0;
    let table = this.descTable;
    let tableSize = this.size;
    let indirect = false;
    let index = head;
    // Descriptors visited: in the current table (loop bound) and in total (§2.7.5.3.1: a chain,
    // indirect entries included, is no longer than the queue size; §2.7.5.2 forbids loops).
    let visitedInTable = 0;
    let total = 0;
    const bad = (code: VirtioError['code'], msg: string) =>
      DescriptorChain.malformed(head, new VirtioError(code, `chain at head ${head}: ${msg}`));

    for (;;) {
      if (index >= tableSize) {
        return bad('DESC_OUT_OF_RANGE', `next index ${index} outside a table of ${tableSize}`);
      }
      // A table of n entries can only be walked n times without revisiting an entry.
      if (++visitedInTable > tableSize) return bad('DESC_LOOP', 'descriptor loop');
      if (++total > this.size) return bad('CHAIN_TOO_LONG', `more than ${this.size} descriptors`);

      const d = table + VIRTQ_DESC_SIZE * index;
      const addr = mem.readU64Number(d + DESC_ADDR);
      const len = mem.readU32(d + DESC_LEN);
      const flags = mem.readU16(d + DESC_FLAGS);
      const next = mem.readU16(d + DESC_NEXT);

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirectDesc) return bad('BAD_INDIRECT', 'INDIRECT flag without VIRTIO_F_INDIRECT_DESC');
        if (indirect) return bad('NESTED_INDIRECT', 'indirect descriptor inside an indirect table');
        if (flags & VIRTQ_DESC_F_NEXT) return bad('BAD_INDIRECT', 'indirect descriptor with NEXT set');
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0) return bad('BAD_INDIRECT', `indirect table length ${len}`);
        const entries = len / VIRTQ_DESC_SIZE;
        if (entries > this.size) return bad('CHAIN_TOO_LONG', `indirect table of ${entries} entries`);
        if (!mem.checkRange(addr, len)) return bad('BAD_INDIRECT', 'indirect table outside guest memory');
        // The pointer itself carries no data: count the table's entries instead (§2.7.5.3.1).
        total--;
        table = addr;
        tableSize = entries;
        indirect = true;
        index = 0;
        visitedInTable = 0;
        continue;
      }

      if (len > 0) {
        if (!mem.checkRange(addr, len)) {
          return bad('DESC_OUT_OF_RANGE', `buffer 0x${Number(addr).toString(16)}+${len} outside guest memory`);
        }
        if (flags & VIRTQ_DESC_F_WRITE) {
          writableLength += len;
          if (writableLength > MAX_CHAIN_BYTES) return bad('LENGTH_OVERFLOW', 'writable length exceeds 2^32-1');
          writable.push({ addr, len });
        } else {
          if (writable.length > 0) return bad('BAD_DESC_ORDER', 'readable descriptor after a writable one');
          readableLength += len;
          if (readableLength > MAX_CHAIN_BYTES) return bad('LENGTH_OVERFLOW', 'readable length exceeds 2^32-1');
          readable.push({ addr, len });
        }
      } else if (!(flags & VIRTQ_DESC_F_WRITE) && writable.length > 0) {
        return bad('BAD_DESC_ORDER', 'readable descriptor after a writable one');
      }

      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      index = next;
    }
    return new DescriptorChain(head, readable, writable, readableLength, writableLength);
  }

  /**
   * Completes the chain `headIndex`, reporting `len` bytes written into its writable buffers: the
   * used element is written first, then the used idx that publishes it (§2.7.8).
   * @throws VirtioError `BAD_USED_INDEX` for a head outside the queue or a length that is not a u32
   *   (a device bug), `QUEUE_NOT_READY` after a reset, or a ring-level error if the used ring is unusable.
   */
  addUsed(mem: GuestMemory, headIndex: number, len: number): void {
    if (this.brokenBy) throw this.brokenBy;
    // After a reset the ring addresses are gone: a late completion must not write to guest address 0.
    if (!this.ready) throw new VirtioError('QUEUE_NOT_READY', 'addUsed on a queue that is not ready');
    if (!Number.isInteger(headIndex) || headIndex < 0 || headIndex >= this.size) {
      throw new VirtioError('BAD_USED_INDEX', `used head ${headIndex} outside queue of ${this.size}`);
    }
    if (!Number.isInteger(len) || len < 0 || len > MAX_CHAIN_BYTES) {
      throw new VirtioError('BAD_USED_INDEX', `used length ${len} is not a u32`);
    }
    try {
      const elem = this.usedRing + USED_RING + VIRTQ_USED_ELEM_SIZE * (this.nextUsed & (this.size - 1));
      mem.writeU32(elem, headIndex);
      mem.writeU32(elem + 4, len);
      this.nextUsedIdx = (this.nextUsedIdx + 1) & 0xffff;
      mem.writeU16(this.usedRing + USED_IDX, this.nextUsed);
    } catch (e) {
      throw this.fail(e);
    }
  }

  /**
   * Whether the driver wants a used-buffer notification for what was added since the last time
   * this returned true: with EVENT_IDX, `vring_need_event(used_event, nextUsed, lastSignalled)`
   * (§2.7.7.2); otherwise unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7.1).
   * Never throws; a ring-level failure breaks the queue and answers true; false when not ready.
   */
  needsNotification(mem: GuestMemory): boolean {
    if (!this.ready) return false;
    try {
      if (!this.eventIdx) {
        return (mem.readU16(this.availRing + AVAIL_FLAGS) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
      }
      const usedEvent = mem.readU16(this.availRing + AVAIL_RING + 2 * this.size);
      const old = this.signalledUsed;
      const now = this.nextUsed;
      this.signalledUsed = now;
      if (old === null) return true;
      return vringNeedEvent(usedEvent, now, old);
    } catch (e) {
      this.fail(e);
      return true;
    }
  }

  /**
   * Asks the driver for avail notifications again (§2.7.10): with EVENT_IDX publishes
   * `avail_event = nextAvail`, otherwise clears VIRTQ_USED_F_NO_NOTIFY. Returns true if chains
   * were made available meanwhile, i.e. the device must pop again before sleeping (false if the
   * pop budget is used up: the transport then reschedules the queue).
   * Never throws; a ring-level failure breaks the queue and answers false.
   */
  enableNotification(mem: GuestMemory): boolean {
    this.notifyEnabled = true;
    if (!this.ready || this.brokenBy) return false;
    try {
      if (this.eventIdx) {
        mem.writeU16(this.usedRing + USED_RING + VIRTQ_USED_ELEM_SIZE * this.size, this.nextAvail);
      } else {
        mem.writeU16(this.usedRing + USED_FLAGS, 0);
      }
      const pending = this.refreshAvail(mem);
      if (pending && this.popBudget <= 0) {
        this.budgetHit = true;
        return false;
      }
      return pending;
    } catch (e) {
      this.fail(e);
      return false;
    }
  }

  /**
   * Tells the driver avail notifications are not needed while the device is busy popping:
   * sets VIRTQ_USED_F_NO_NOTIFY. With EVENT_IDX there is nothing to write (the driver ignores the
   * flag); not advancing avail_event has the same effect. Never throws.
   */
  disableNotification(mem: GuestMemory): void {
    this.notifyEnabled = false;
    if (this.eventIdx || !this.ready || this.brokenBy) return;
    try {
      mem.writeU16(this.usedRing + USED_FLAGS, VIRTQ_USED_F_NO_NOTIFY);
    } catch (e) {
      this.fail(e);
    }
  }

  /** Counters for the device's metrics. */
  metrics(): Record<string, number> {
    return { poppedChains: this.poppedChains, malformedChains: this.malformedChains, broken: this.brokenBy ? 1 : 0 };
  }
}
