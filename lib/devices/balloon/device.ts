/**
 * The traditional memory balloon (virtio-balloon, virtio 1.2 §5.5).
 *
 * - The host sets a target (`num_pages`, 4 KiB pages) with {@link BalloonDevice.update}; the guest
 *   inflates towards it by handing page frame numbers over the inflate queue and reports its
 *   progress in `actual`. Every PFN is checked: it must name a page inside guest memory and not be
 *   in the balloon already; accepted pages are released to the host ({@link BalloonHost.discard},
 *   madvise MADV_DONTNEED, merged into runs), so the host's RSS drops. A PFN outside guest memory or
 *   a page given twice changes nothing and is counted. Deflate takes pages out of the balloon
 *   (nothing to do on the host: a released page reads back as zeros when the guest touches it).
 * - Statistics (VIRTIO_BALLOON_F_STATS_VQ, when `statsPollingIntervalS` > 0 at creation): the
 *   device holds the driver's statistics buffer and hands it back every interval, which makes the
 *   driver send fresh numbers (§5.5.6.3). The interval can change while running; statistics
 *   cannot be switched on or off after creation (as in Firecracker).
 * - Free page reporting (VIRTIO_BALLOON_F_PAGE_REPORTING): the guest reports free page ranges on
 *   the reporting queue; the device releases them to the host (page-aligned inward) without
 *   counting them as ballooned, since the guest may use them again at any time.
 *
 * Queue indices: inflate 0, deflate 1, then the statistics queue and the reporting queue in that
 * order, each only if its feature was negotiated. Linux's virtio-mmio numbers only the queues it
 * uses, so the roles are decided from the acknowledged features at activation.
 * @module
 */
import { ChainReader, type DescriptorChain, type DescriptorSegment } from '../../virtio/chain';
import { VIRTIO_ID_BALLOON, featureBit, hasFeature } from '../../virtio/constants';
import type { VirtioDevice, VirtioDeviceContext } from '../../virtio/device';
import type { Queue } from '../../virtio/queue';
import { DeviceError, stateField, type StateObject, type StateValue } from '../contract';
import type { BalloonConfig, BalloonUpdate } from './config';
import { BALLOON_MAX_AMOUNT_MIB, BALLOON_MAX_STATS_INTERVAL_S } from './config';
import {
  BALLOON_CONFIG_ACTUAL,
  BALLOON_CONFIG_NUM_PAGES,
  BALLOON_CONFIG_SIZE,
  BALLOON_DEFLATE_QUEUE,
  BALLOON_INFLATE_QUEUE,
  BALLOON_PAGES_PER_MIB,
  BALLOON_PAGE_SIZE,
  BALLOON_PFN_SHIFT,
  BALLOON_PFN_SIZE,
  BALLOON_QUEUE_SIZE,
  BALLOON_STAT_SIZE,
  BALLOON_STAT_TAGS,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ,
  type BalloonStatName,
} from './constants';
import { BalloonError } from './errors';
import type { BalloonHost } from './host';
import { PageSet } from './pages';

/** Counters of a virtio-balloon device. */
export interface BalloonMetrics {
  /** Pages in the balloon now (accepted by the device). */
  readonly inflatedPages: number;
  /** Pages accepted from the inflate queue, in all. */
  readonly inflatePages: number;
  /** Pages taken out by the deflate queue, in all. */
  readonly deflatePages: number;
  /** Bytes released to the host by inflation. */
  readonly releasedBytes: number;
  /** PFNs naming pages outside guest memory (ignored). */
  readonly invalidPfns: number;
  /** PFNs of pages already in the balloon (ignored). */
  readonly duplicatePfns: number;
  /** Deflated PFNs that were not in the balloon (ignored). */
  readonly deflateUnknownPfns: number;
  /** Inflate/deflate buffers whose length is not a multiple of 4 (the tail is ignored). */
  readonly unalignedBuffers: number;
  /** Free page reports handled. */
  readonly reports: number;
  /** Bytes released to the host by free page reporting. */
  readonly reportedBytes: number;
  /** Statistics buffers received. */
  readonly statsUpdates: number;
  /** Statistics entries with a tag the device does not know (ignored). */
  readonly unknownStatTags: number;
  /** Host release failures. */
  readonly discardErrors: number;
  /** Chains that were malformed or had no usable buffer. */
  readonly malformedChains: number;
  /** Writes to read-only config fields (num_pages) or of odd sizes. */
  readonly configWritesIgnored: number;
  /** Target updates. */
  readonly targetUpdates: number;
  /** Used-buffer interrupts raised. */
  readonly notifications: number;
  /** Ring-level failures (the device then needs a reset). */
  readonly queueErrors: number;
}

/** What `vm.balloonStats()` returns: target and actual size, and the guest's last statistics (Firecracker's names). */
export interface BalloonStats {
  /** Target in 4 KiB pages. */
  targetPages: number;
  /** Pages the guest reports in the balloon (`actual`). */
  actualPages: number;
  /** Target in MiB. */
  targetMib: number;
  /** Actual size in MiB. */
  actualMib: number;
  /** Memory swapped in, bytes. */
  swapIn?: number;
  /** Memory swapped out, bytes. */
  swapOut?: number;
  /** Major page faults. */
  majorFaults?: number;
  /** Minor page faults. */
  minorFaults?: number;
  /** Unused memory, bytes. */
  freeMemory?: number;
  /** Total memory, bytes. */
  totalMemory?: number;
  /** Available memory, bytes. */
  availableMemory?: number;
  /** Disk caches, bytes. */
  diskCaches?: number;
  /** Hugetlb page allocations. */
  hugetlbAllocations?: number;
  /** Hugetlb allocation failures. */
  hugetlbFailures?: number;
}

/** Version of {@link BalloonDevice.saveState}'s format. */
export const BALLOON_STATE_VERSION = 1;

/** Construction parameters of a {@link BalloonDevice}. */
export interface BalloonDeviceConfig extends BalloonConfig {
  /** Device id (default `'balloon'`). */
  id?: string;
  /** Guest memory in MiB, when known: targets above it are refused. */
  guestMemoryMib?: number;
}

const TAG_NAMES = new Map<number, BalloonStatName>(Object.entries(BALLOON_STAT_TAGS).map(([k, v]) => [v, k as BalloonStatName]));
const U32_MAX = 0xffffffff;
/** Queue role of each index, decided at activation. */
type Role = 'inflate' | 'deflate' | 'stats' | 'reporting';

/** virtio-balloon device model; see the module comment. */
export class BalloonDevice implements VirtioDevice<BalloonMetrics> {
  /** VIRTIO_ID_BALLOON. */
  readonly deviceType = VIRTIO_ID_BALLOON;
  /** Device kind in metrics and snapshots. */
  readonly kind = 'virtio-balloon';
  /** See {@link BALLOON_STATE_VERSION}. */
  readonly stateVersion = BALLOON_STATE_VERSION;
  /** inflate, deflate, then statistics and reporting when configured. */
  readonly queueMaxSizes: readonly number[];
  /** STATS_VQ, DEFLATE_ON_OOM and PAGE_REPORTING as configured. */
  readonly deviceFeatures: bigint;
  /** Device id. */
  readonly id: string;
  /** Whether statistics were enabled at creation. */
  readonly statsEnabled: boolean;

  private readonly host: BalloonHost;
  private readonly guestMemoryMib: number | undefined;
  private ctx: VirtioDeviceContext | null = null;
  private roles: Role[] = [];
  private closed = false;
  private targetPages: number;
  private actualPages = 0;
  private statsIntervalS: number;
  private pages = new PageSet();
  private stats: Partial<Record<BalloonStatName, number>> = {};
  /** Head of the statistics buffer the device holds, or -1. */
  private statsHead = -1;
  private statsTimer: unknown = undefined;
  private readonly c = {
    inflatePages: 0,
    deflatePages: 0,
    releasedBytes: 0,
    invalidPfns: 0,
    duplicatePfns: 0,
    deflateUnknownPfns: 0,
    unalignedBuffers: 0,
    reports: 0,
    reportedBytes: 0,
    statsUpdates: 0,
    unknownStatTags: 0,
    discardErrors: 0,
    malformedChains: 0,
    configWritesIgnored: 0,
    targetUpdates: 0,
    notifications: 0,
    queueErrors: 0,
  };

  /**
   * @param config validated options (see `checkBalloonOptions`)
   * @param host page release and timers
   * @throws BalloonError BAD_CONFIG
   */
  constructor(config: BalloonDeviceConfig, host: BalloonHost) {
    if (config === null || typeof config !== 'object') throw new BalloonError('BAD_CONFIG', 'config must be an object');
    if (host === null || typeof host !== 'object' || typeof host.discard !== 'function' || typeof host.timers?.setTimeout !== 'function') {
      throw new BalloonError('BAD_CONFIG', 'host must implement BalloonHost');
    }
    if (!Number.isInteger(config.amountMib) || config.amountMib < 0 || config.amountMib > BALLOON_MAX_AMOUNT_MIB) {
      throw new BalloonError('BAD_CONFIG', `amountMib ${String(config.amountMib)} is out of range`);
    }
    const interval = config.statsPollingIntervalS;
    if (!Number.isInteger(interval) || interval < 0 || interval > BALLOON_MAX_STATS_INTERVAL_S) {
      throw new BalloonError('BAD_CONFIG', `statsPollingIntervalS ${String(interval)} is out of range`);
    }
    if (config.guestMemoryMib !== undefined && config.amountMib > config.guestMemoryMib) {
      throw new BalloonError('BAD_CONFIG', `a balloon of ${config.amountMib} MiB does not fit ${config.guestMemoryMib} MiB of guest memory`);
    }
    this.id = config.id ?? 'balloon';
    this.host = host;
    this.guestMemoryMib = config.guestMemoryMib;
    this.targetPages = config.amountMib * BALLOON_PAGES_PER_MIB;
    this.statsIntervalS = interval;
    this.statsEnabled = interval > 0;
    const sizes = [BALLOON_QUEUE_SIZE, BALLOON_QUEUE_SIZE];
    let features = 0n;
    if (this.statsEnabled) {
      features |= featureBit(VIRTIO_BALLOON_F_STATS_VQ);
      sizes.push(BALLOON_QUEUE_SIZE);
    }
    if (config.deflateOnOom) features |= featureBit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    if (config.freePageReporting) {
      features |= featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING);
      sizes.push(BALLOON_QUEUE_SIZE);
    }
    this.deviceFeatures = features;
    this.queueMaxSizes = Object.freeze(sizes);
  }

  // ---------------------------------------------------------------------------------------------
  // Host-facing API (what vm.updateBalloon / vm.balloonStats delegate to)

  /**
   * Changes the target (the guest is told with a configuration change interrupt) and/or the
   * statistics interval.
   * @throws BalloonError BAD_UPDATE (target beyond guest memory, statistics switched on or off),
   *   CLOSED; nothing is changed then
   */
  update(update: BalloonUpdate): void {
    if (this.closed) throw new BalloonError('CLOSED', 'balloon device is closed');
    const { amountMib, statsPollingIntervalS } = update;
    if (amountMib !== undefined) {
      if (!Number.isInteger(amountMib) || amountMib < 0 || amountMib > BALLOON_MAX_AMOUNT_MIB) throw new BalloonError('BAD_UPDATE', `amountMib ${String(amountMib)} is out of range`);
      const limit = this.guestMemoryMib ?? (this.ctx !== null ? Math.floor(this.ctx.mem.totalSize / (1024 * 1024)) : undefined);
      if (limit !== undefined && amountMib > limit) throw new BalloonError('BAD_UPDATE', `a balloon of ${amountMib} MiB does not fit ${limit} MiB of guest memory`);
    }
    if (statsPollingIntervalS !== undefined) {
      if (!Number.isInteger(statsPollingIntervalS) || statsPollingIntervalS < 0 || statsPollingIntervalS > BALLOON_MAX_STATS_INTERVAL_S) {
        throw new BalloonError('BAD_UPDATE', `statsPollingIntervalS ${String(statsPollingIntervalS)} is out of range`);
      }
      if ((statsPollingIntervalS > 0) !== this.statsEnabled) {
        throw new BalloonError('BAD_UPDATE', this.statsEnabled ? 'statistics cannot be disabled after creation' : 'statistics were not enabled at creation');
      }
    }
    if (amountMib !== undefined) {
      this.targetPages = amountMib * BALLOON_PAGES_PER_MIB;
      this.c.targetUpdates++;
      this.ctx?.interrupt.signalConfigChange();
    }
    if (statsPollingIntervalS !== undefined && statsPollingIntervalS !== this.statsIntervalS) {
      this.statsIntervalS = statsPollingIntervalS;
      this.armStatsTimer();
    }
  }

  /** Target and actual size, and the guest's last statistics (only fields it has sent). */
  balloonStats(): BalloonStats {
    return {
      targetPages: this.targetPages,
      actualPages: this.actualPages,
      targetMib: this.targetPages / BALLOON_PAGES_PER_MIB,
      actualMib: this.actualPages / BALLOON_PAGES_PER_MIB,
      ...this.stats,
    };
  }

  /** Seconds between statistics requests (0: disabled). */
  get statsPollingIntervalS(): number {
    return this.statsIntervalS;
  }

  // ---------------------------------------------------------------------------------------------
  // VirtioDevice

  /** struct virtio_balloon_config: num_pages, actual (little-endian u32s). */
  readConfig(offset: number, size: number): number {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > BALLOON_CONFIG_SIZE) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.configByte(offset + i);
    return v;
  }

  private configByte(at: number): number {
    const word = at < BALLOON_CONFIG_ACTUAL ? this.targetPages : this.actualPages;
    return Math.floor(word / 2 ** (8 * (at & 3))) & 0xff;
  }

  /** The driver writes `actual` (any aligned part of it); num_pages is the device's. */
  writeConfig(offset: number, size: number, value: number): void {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < BALLOON_CONFIG_ACTUAL || offset + size > BALLOON_CONFIG_SIZE) {
      this.c.configWritesIgnored++;
      return;
    }
    let actual = this.actualPages;
    for (let i = 0; i < size; i++) {
      const shift = 8 * (offset - BALLOON_CONFIG_ACTUAL + i);
      const byte = Math.floor(value / 2 ** (8 * i)) & 0xff;
      const old = Math.floor(actual / 2 ** shift) & 0xff;
      actual += (byte - old) * 2 ** shift;
    }
    this.actualPages = Math.min(U32_MAX, Math.max(0, actual));
  }

  /** Decides the queue roles from the negotiated features and starts the statistics timer. */
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    const roles: Role[] = ['inflate', 'deflate'];
    if (hasFeature(ctx.ackedFeatures, VIRTIO_BALLOON_F_STATS_VQ)) roles.push('stats');
    if (hasFeature(ctx.ackedFeatures, VIRTIO_BALLOON_F_PAGE_REPORTING)) roles.push('reporting');
    this.roles = roles;
    this.statsHead = -1;
    this.armStatsTimer();
    // Linux primes the statistics queue with its first buffer (and kicks it) while probing, before
    // DRIVER_OK, when the transport drops notifications: look at every queue once. Scheduled, not
    // now: on a restore, restoreState (the balloon's pages) runs right after activate.
    ctx.schedule(() => {
      for (let i = 0; i < roles.length; i++) this.processQueue(i);
    });
  }

  /** Drops the queue context and the held statistics buffer; the balloon's pages stay released. */
  reset(): void {
    this.ctx = null;
    this.roles = [];
    this.statsHead = -1;
    this.cancelStatsTimer();
    // The driver starts over with an empty balloon (§5.5.6: a reset device has actual 0).
    this.pages.clear();
    this.actualPages = 0;
  }

  /** A notification for queue `queueIndex`. Never throws. */
  processQueue(queueIndex: number): void {
    const ctx = this.ctx;
    if (ctx === null || this.closed) return;
    const role = this.roles[queueIndex];
    const q = ctx.queues[queueIndex];
    if (role === undefined || q === undefined || !q.ready || q.broken !== null) return;
    let used = false;
    try {
      for (let chain = q.pop(ctx.mem); chain !== null; chain = q.pop(ctx.mem)) {
        if (role === 'stats') {
          this.onStats(ctx, q, chain);
          used = true;
          continue;
        }
        if (chain.error !== undefined) this.c.malformedChains++;
        else if (role === 'inflate') this.inflate(ctx, chain);
        else if (role === 'deflate') this.deflate(ctx, chain);
        else this.report(chain);
        q.addUsed(ctx.mem, chain.headIndex, 0);
        used = true;
      }
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
      return;
    }
    if (used) this.signal(ctx, q, queueIndex);
  }

  /** PFNs of a chain's readable part, in order (a tail shorter than 4 bytes is ignored and counted). */
  private readPfns(ctx: VirtioDeviceContext, chain: DescriptorChain): number[] {
    const r = new ChainReader(ctx.mem, chain);
    if (r.remaining % BALLOON_PFN_SIZE !== 0) this.c.unalignedBuffers++;
    const n = Math.floor(r.remaining / BALLOON_PFN_SIZE);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = r.readU32();
    return out;
  }

  private inflate(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    let runStart = -1;
    let runLen = 0;
    const flush = () => {
      if (runLen > 0) this.release(runStart * BALLOON_PAGE_SIZE, runLen * BALLOON_PAGE_SIZE, 'inflate');
      runLen = 0;
    };
    for (const pfn of this.readPfns(ctx, chain)) {
      const addr = pfn * BALLOON_PAGE_SIZE;
      if (!ctx.mem.checkRange(addr, BALLOON_PAGE_SIZE)) {
        this.c.invalidPfns++;
        continue;
      }
      if (!this.pages.add(pfn)) {
        this.c.duplicatePfns++;
        continue;
      }
      this.c.inflatePages++;
      // Linux hands pages over in runs when it can: one madvise per run, not per page. A run
      // never crosses a region boundary (both of its ends were checked to lie in one region,
      // and every page between them was too).
      if (runLen > 0 && pfn === runStart + runLen && ctx.mem.checkRange(runStart * BALLOON_PAGE_SIZE, (runLen + 1) * BALLOON_PAGE_SIZE)) {
        runLen++;
      } else {
        flush();
        runStart = pfn;
        runLen = 1;
      }
    }
    flush();
  }

  private deflate(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    for (const pfn of this.readPfns(ctx, chain)) {
      if (this.pages.delete(pfn)) this.c.deflatePages++;
      else this.c.deflateUnknownPfns++;
    }
  }

  /** A free page report: every buffer of the chain names a free range; whole pages inside it go back to the host. */
  private report(chain: DescriptorChain): void {
    this.c.reports++;
    const segs: readonly DescriptorSegment[] = chain.writable.length > 0 ? chain.writable : chain.readable;
    if (segs.length === 0) {
      this.c.malformedChains++;
      return;
    }
    for (const s of segs) {
      // The queue checked each buffer lies in guest memory; only whole pages are released.
      const start = Math.ceil(s.addr / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      const end = Math.floor((s.addr + s.len) / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      if (end > start) this.release(start, end - start, 'report');
    }
  }

  private release(addr: number, len: number, why: 'inflate' | 'report'): void {
    try {
      this.host.discard(addr, len);
    } catch {
      this.c.discardErrors++;
      return;
    }
    if (why === 'inflate') this.c.releasedBytes += len;
    else this.c.reportedBytes += len;
  }

  /** A statistics buffer: read the values, hold the buffer until the next interval. */
  private onStats(ctx: VirtioDeviceContext, q: Queue, chain: DescriptorChain): void {
    // A driver sends one buffer at a time; a second one means the first is not coming back to us.
    if (this.statsHead >= 0) q.addUsed(ctx.mem, this.statsHead, 0);
    this.statsHead = -1;
    if (chain.error !== undefined) {
      this.c.malformedChains++;
      q.addUsed(ctx.mem, chain.headIndex, 0);
      return;
    }
    const r = new ChainReader(ctx.mem, chain);
    const next = { ...this.stats };
    while (r.remaining >= BALLOON_STAT_SIZE) {
      const tag = r.readU16();
      const val = r.readU64();
      const name = TAG_NAMES.get(tag);
      if (name === undefined) {
        this.c.unknownStatTags++;
        continue;
      }
      // Values are u64; beyond 2^53 a number cannot hold them exactly, so they saturate.
      next[name] = val > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(val);
    }
    this.stats = next;
    this.c.statsUpdates++;
    this.statsHead = chain.headIndex;
  }

  private armStatsTimer(): void {
    this.cancelStatsTimer();
    if (this.ctx === null || this.statsIntervalS === 0 || !this.roles.includes('stats') || this.closed) return;
    this.statsTimer = this.host.timers.setTimeout(() => {
      this.statsTimer = undefined;
      this.requestStats();
      this.armStatsTimer();
    }, this.statsIntervalS * 1000);
  }

  private cancelStatsTimer(): void {
    if (this.statsTimer !== undefined) {
      this.host.timers.clearTimeout(this.statsTimer);
      this.statsTimer = undefined;
    }
  }

  /** Hands the held statistics buffer back, so the driver refills it (§5.5.6.3). */
  private requestStats(): void {
    const ctx = this.ctx;
    const index = this.roles.indexOf('stats');
    if (ctx === null || index < 0 || this.statsHead < 0) return;
    const q = ctx.queues[index];
    const head = this.statsHead;
    this.statsHead = -1;
    try {
      q.addUsed(ctx.mem, head, 0);
    } catch {
      this.c.queueErrors++;
      ctx.needsReset();
      return;
    }
    this.signal(ctx, q, index);
  }

  private signal(ctx: VirtioDeviceContext, q: Queue, index: number): void {
    if (q.needsNotification(ctx.mem)) {
      this.c.notifications++;
      ctx.interrupt.signalUsedQueue(index);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Contract

  /** Counters; `inflatedPages` is the balloon's size as the device counts it. */
  metrics(): BalloonMetrics {
    return { ...this.c, inflatedPages: this.pages.size };
  }

  /** Stops the statistics timer. The released pages stay released. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cancelStatsTimer();
    this.ctx = null;
  }

  /**
   * Target and actual size, the statistics interval, the pages in the balloon (as runs of PFNs),
   * the guest's last statistics and the statistics buffer the device holds (by head index).
   * Guest memory itself (where released pages are zero) is saved with the machine.
   */
  saveState(): StateObject {
    const stats: StateObject = {};
    for (const [k, v] of Object.entries(this.stats)) stats[k] = v as number;
    return {
      targetPages: this.targetPages,
      actualPages: this.actualPages,
      statsPollingIntervalS: this.statsIntervalS,
      statsEnabled: this.statsEnabled,
      inflated: this.pages.ranges() as StateValue[],
      stats,
      statsHead: this.statsHead,
    };
  }

  /** See {@link saveState}. @throws DeviceError BAD_STATE (nothing is changed) */
  restoreState(state: StateObject): void {
    const bad = (what: string) => new DeviceError('BAD_STATE', `balloon ${this.id}: ${what}`);
    const targetPages = stateField.int(state, 'targetPages', 0, U32_MAX);
    const actualPages = stateField.int(state, 'actualPages', 0, U32_MAX);
    const interval = stateField.int(state, 'statsPollingIntervalS', 0, BALLOON_MAX_STATS_INTERVAL_S);
    if (stateField.bool(state, 'statsEnabled') !== this.statsEnabled || (interval > 0) !== this.statsEnabled) {
      throw bad('statistics were configured differently when the state was saved');
    }
    const statsHead = stateField.int(state, 'statsHead', -1, BALLOON_QUEUE_SIZE - 1);
    const statsObj = stateField.obj(state, 'stats');
    const stats: Partial<Record<BalloonStatName, number>> = {};
    for (const [k, v] of Object.entries(statsObj)) {
      if (!(k in BALLOON_STAT_TAGS)) throw bad(`unknown statistic ${JSON.stringify(k)}`);
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`statistic ${k} must be a non-negative safe integer`);
      stats[k as BalloonStatName] = v;
    }
    const runs = stateField.arr(state, 'inflated');
    const maxPfn = 2 ** (52 - BALLOON_PFN_SHIFT);
    const pages = new PageSet();
    let last = -1;
    for (const run of runs) {
      if (!Array.isArray(run) || run.length !== 2) throw bad('inflated runs must be [firstPfn, count] pairs');
      const [first, count] = run as number[];
      if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > maxPfn || first <= last) {
        throw bad('inflated runs must be sorted, disjoint runs of valid page numbers');
      }
      if (this.ctx !== null && !this.ctx.mem.checkRange(first * BALLOON_PAGE_SIZE, count * BALLOON_PAGE_SIZE)) {
        // A run may span adjacent regions; check page by page only in that rare case.
        for (let p = first; p < first + count; p++) {
          if (!this.ctx.mem.checkRange(p * BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE)) throw bad(`inflated page ${p} is outside guest memory`);
        }
      }
      for (let p = first; p < first + count; p++) pages.add(p);
      last = first + count;
    }
    if (this.ctx === null && (pages.size > 0 || statsHead >= 0)) throw bad('balloon pages or a held statistics buffer on a device that is not active');
    if (statsHead >= 0 && !this.roles.includes('stats')) throw bad('a statistics buffer is held but no statistics queue was negotiated');

    this.targetPages = targetPages;
    this.actualPages = actualPages;
    this.statsIntervalS = interval;
    this.stats = stats;
    this.pages = pages;
    this.statsHead = statsHead;
    this.armStatsTimer();
  }
}

/** Creates a virtio-balloon device from validated options (`checkBalloonOptions`) and its host services. */
export function createBalloonDevice(config: BalloonDeviceConfig, host: BalloonHost): BalloonDevice {
  return new BalloonDevice(config, host);
}
