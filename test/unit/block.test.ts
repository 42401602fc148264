import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MmioTransport } from '../../lib/virtio/mmio';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_CONFIG_GENERATION,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  featureBit,
} from '../../lib/virtio/constants';
import {
  BlockBackend,
  BlockDevice,
  BlockDeviceConfig,
  BlockError,
  FileBackend,
  MemoryBackend,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../lib/devices/block';
import { RateLimiter } from '../../lib/ratelimit';
import { FakeTime } from './helpers/fake-time';
import { BumpAllocator, MockBuffer, MockIrq, MockMmioDriver, MockVirtqueue, UsedElem } from '../../lib/testing/mock-driver';

const MiB = 1 << 20;

/** Fake clock and timers for the rate limiter (the device's own setImmediate stays real). */

const tick = () => new Promise<void>((r) => setImmediate(r));

/** A backend whose operations complete only when the test releases them, in any order. */
class GatedBackend implements BlockBackend {
  readonly inner: MemoryBackend;
  pending: { kind: string; release: () => void }[] = [];
  closed = 0;
  constructor(size: number) {
    this.inner = new MemoryBackend(size);
  }
  get size(): number {
    return this.inner.size;
  }
  private gate<T>(kind: string, op: () => Promise<T>): Promise<T> {
    return new Promise<void>((resolve) => this.pending.push({ kind, release: resolve })).then(op);
  }
  read(view: Uint8Array, offset: number): Promise<number> {
    return this.gate('read', () => this.inner.read(view, offset));
  }
  write(view: Uint8Array, offset: number): Promise<number> {
    return this.gate('write', () => this.inner.write(view, offset));
  }
  flush(): Promise<void> {
    return this.gate('flush', () => this.inner.flush());
  }
  async close(): Promise<void> {
    this.closed++;
  }
}

interface Rig {
  mem: GuestMemory;
  alloc: BumpAllocator;
  irq: MockIrq;
  device: BlockDevice;
  transport: MmioTransport;
  driver: MockMmioDriver;
  vq: MockVirtqueue;
}

function rig(cfg: Partial<BlockDeviceConfig> & { backend: BlockBackend }, features?: bigint, queueSize = 256): Rig {
  const mem = GuestMemory.anonymous(16 * MiB);
  const alloc = new BumpAllocator(mem);
  const irq = new MockIrq();
  const device = new BlockDevice({ id: 'rootfs', readOnly: false, cacheType: 'writeback', ...cfg });
  const transport = new MmioTransport(device, { mem, irq });
  const driver = new MockMmioDriver(transport, mem);
  const [vq] = driver.bringUp(alloc, [queueSize], features);
  return { mem, alloc, irq, device, transport, driver, vq };
}

function header(type: number, sector: bigint | number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

interface Req {
  head: number;
  statusAddr: number;
  dataAddr: number;
}

/** Queues a well-formed request: header, data (split into `segments`), status. */
function addRequest(r: Rig, type: number, sector: bigint | number, opts: { out?: Uint8Array; inLen?: number; segments?: number } = {}): Req {
  const hdr = r.alloc.allocData(header(type, sector));
  const bufs: MockBuffer[] = [{ addr: hdr, len: 16 }];
  let dataAddr = 0;
  const data = opts.out;
  const len = data ? data.length : opts.inLen ?? 0;
  if (len > 0) {
    dataAddr = data ? r.alloc.allocData(data) : r.alloc.alloc(len);
    const segs = opts.segments ?? 1;
    const per = Math.ceil(len / segs);
    for (let off = 0; off < len; off += per) bufs.push({ addr: dataAddr + off, len: Math.min(per, len - off), write: !data });
  }
  const statusAddr = r.alloc.alloc(1, 1);
  r.mem.writeU8(statusAddr, 0xff);
  bufs.push({ addr: statusAddr, len: 1, write: true });
  const head = r.vq.addChain(bufs);
  return { head, statusAddr, dataAddr };
}

/** Waits (real event loop turns) until `n` used elements are available, and returns them. */
async function used(r: Rig, n: number, timeoutMs = 5000): Promise<UsedElem[]> {
  const out: UsedElem[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    out.push(...r.vq.readUsed());
    if (out.length >= n) break;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} used elements (got ${out.length})`);
    await new Promise((res) => setTimeout(res, 0));
  }
  // The device signals completions batched per event-loop turn, from a setImmediate queued when
  // the used element was written: one more turn lets that interrupt happen before callers check it.
  await new Promise((res) => setImmediate(res));
  return out;
}

/** Byte-array equality that stays fast for large buffers (jest's deep equality is per element). */
function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  expect(Buffer.from(actual.buffer, actual.byteOffset, actual.length).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.length))).toBe(true);
}

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

describe('BlockDevice configuration', () => {
  test('features follow readOnly and cacheType', () => {
    const base = featureBit(VIRTIO_BLK_F_BLK_SIZE) | featureBit(VIRTIO_BLK_F_SEG_MAX);
    const mk = (readOnly: boolean, cacheType: 'unsafe' | 'writeback') =>
      new BlockDevice({ id: 'd', backend: new MemoryBackend(4096), readOnly, cacheType }).deviceFeatures;
    expect(mk(false, 'unsafe')).toBe(base);
    expect(mk(true, 'unsafe')).toBe(base | featureBit(VIRTIO_BLK_F_RO));
    expect(mk(false, 'writeback')).toBe(base | featureBit(VIRTIO_BLK_F_FLUSH));
  });

  test('config space: capacity (floor of size/512), seg_max, blk_size, 0 past the end', () => {
    const size = 3 * 2 ** 32 * 512 + 1000; // > 2^32 sectors, plus a partial sector
    const backend: BlockBackend = { ...new MemoryBackend(0), size, read: async () => 0, write: async () => 0, flush: async () => {}, close: async () => {} };
    const d = new BlockDevice({ id: 'd', backend, readOnly: true, cacheType: 'unsafe' });
    const sectors = 3 * 2 ** 32 + 1;
    expect(d.capacity).toBe(sectors);
    expect(d.readConfig(0, 4)).toBe(1);
    expect(d.readConfig(4, 4)).toBe(3);
    expect(d.readConfig(0, 1)).toBe(1);
    expect(d.readConfig(12, 4)).toBe(254);
    expect(d.readConfig(20, 4)).toBe(512);
    expect(d.readConfig(20, 2)).toBe(512);
    expect(d.readConfig(24, 4)).toBe(0);
    expect(d.readConfig(22, 4)).toBe(0);
    expect(d.readConfig(1000, 1)).toBe(0);
    expect(d.readConfig(0, 8)).toBe(0);
  });

  test('config reads through the transport', () => {
    const r = rig({ backend: new MemoryBackend(10 * 512 + 7) });
    expect(r.driver.read32(VIRTIO_MMIO_CONFIG)).toBe(10);
    expect(r.driver.read32(VIRTIO_MMIO_CONFIG + 4)).toBe(0);
  });

  test('bad configurations are refused with the right code', () => {
    const backend = new MemoryBackend(4096);
    const codeOf = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(BlockError);
        return (e as BlockError).code;
      }
      return 'no error';
    };
    expect(codeOf(() => new BlockDevice({ id: 'x'.repeat(21), backend, readOnly: false, cacheType: 'unsafe' }))).toBe('ID_TOO_LONG');
    expect(codeOf(() => new BlockDevice({ id: 'é'.repeat(11), backend, readOnly: false, cacheType: 'unsafe' }))).toBe('ID_TOO_LONG');
    expect(codeOf(() => new BlockDevice({ id: 'x'.repeat(20), backend, readOnly: false, cacheType: 'unsafe' }))).toBe('no error');
    expect(codeOf(() => new BlockDevice({ id: '', backend, readOnly: false, cacheType: 'unsafe' }))).toBe('BAD_CONFIG');
    expect(codeOf(() => new BlockDevice({ id: 'a', backend, readOnly: false, cacheType: 'none' as never }))).toBe('BAD_CONFIG');
    expect(codeOf(() => new BlockDevice({ id: 'a', backend, readOnly: false, cacheType: 'unsafe', queueSize: 100 }))).toBe('BAD_CONFIG');
    expect(codeOf(() => new BlockDevice({ id: 'a', backend: new MemoryBackend(4096, true), readOnly: false, cacheType: 'unsafe' }))).toBe('BAD_CONFIG');
  });
});

describe('BlockDevice requests', () => {
  test('write then read back, multi-segment, with exact used lengths and an interrupt', async () => {
    const backend = new MemoryBackend(1 * MiB);
    const r = rig({ backend });
    const data = pattern(16 * 1024, 1);
    const w = addRequest(r, VIRTIO_BLK_T_OUT, 8, { out: data, segments: 4 });
    r.driver.notify(0);
    const [u1] = await used(r, 1);
    expect(u1).toEqual({ id: w.head, len: 1 });
    expect(r.mem.readU8(w.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expectBytes(backend.bytes.subarray(8 * 512, 8 * 512 + data.length), data);
    expect(r.irq.triggers).toBeGreaterThanOrEqual(1);

    const rd = addRequest(r, VIRTIO_BLK_T_IN, 8, { inLen: data.length, segments: 3 });
    r.driver.notify(0);
    const [u2] = await used(r, 1);
    expect(u2).toEqual({ id: rd.head, len: data.length + 1 });
    expect(r.mem.readU8(rd.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expectBytes(r.mem.read(rd.dataAddr, data.length), data);
    expect(r.device.metrics()).toMatchObject({ readRequests: 1, writeRequests: 1, readBytes: data.length, writeBytes: data.length, errors: 0, inFlight: 0 });
  });

  test('works through indirect descriptors', async () => {
    const backend = new MemoryBackend(64 * 1024);
    backend.bytes.set(pattern(4096, 9), 4096);
    const r = rig({ backend });
    const hdr = r.alloc.allocData(header(VIRTIO_BLK_T_IN, 8));
    const buf = r.alloc.alloc(4096);
    const st = r.alloc.alloc(1, 1);
    const table = r.alloc.alloc(16 * 3, 16);
    r.vq.addIndirectChain([{ addr: hdr, len: 16 }, { addr: buf, len: 4096, write: true }, { addr: st, len: 1, write: true }], table);
    r.driver.notify(0);
    const [u] = await used(r, 1);
    expect(u.len).toBe(4097);
    expect(r.mem.readU8(st)).toBe(VIRTIO_BLK_S_OK);
    expectBytes(r.mem.read(buf, 4096), pattern(4096, 9));
  });

  test('reads and writes a real file through FileBackend', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-blk-'));
    const file = path.join(dir, 'disk.img');
    const initial = pattern(256 * 1024, 3);
    fs.writeFileSync(file, initial);
    const backend = await FileBackend.open(file, false);
    expect(backend.size).toBe(initial.length);
    const r = rig({ backend });
    const data = pattern(64 * 1024, 4);
    const w = addRequest(r, VIRTIO_BLK_T_OUT, 16, { out: data, segments: 16 });
    const rd = addRequest(r, VIRTIO_BLK_T_IN, 300, { inLen: 8192, segments: 2 });
    r.driver.notify(0);
    await used(r, 2);
    expect(r.mem.readU8(w.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expect(r.mem.readU8(rd.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expectBytes(r.mem.read(rd.dataAddr, 8192), initial.subarray(300 * 512, 300 * 512 + 8192));
    const onDisk = fs.readFileSync(file);
    expectBytes(new Uint8Array(onDisk.subarray(16 * 512, 16 * 512 + data.length)), data);
    expectBytes(new Uint8Array(onDisk.subarray(0, 16 * 512)), initial.subarray(0, 16 * 512));
    await r.device.close();
    await expect(backend.read(new Uint8Array(512), 0)).rejects.toMatchObject({ code: 'CLOSED' });
    fs.rmSync(dir, { recursive: true });
  });

  test('FileBackend.open failures are OPEN_FAILED', async () => {
    await expect(FileBackend.open('/nonexistent/disk.img', true)).rejects.toMatchObject({ code: 'OPEN_FAILED' });
    await expect(FileBackend.open(os.tmpdir(), true)).rejects.toMatchObject({ code: 'OPEN_FAILED' });
  });

  test('FLUSH completes only after the backend flush, when negotiated', async () => {
    const backend = new GatedBackend(64 * 1024);
    const r = rig({ backend, cacheType: 'writeback' });
    const f = addRequest(r, VIRTIO_BLK_T_FLUSH, 0);
    r.driver.notify(0);
    for (let i = 0; i < 5; i++) await tick();
    expect(r.vq.readUsed()).toEqual([]);
    expect(backend.pending.map((p) => p.kind)).toEqual(['flush']);
    expect(r.device.metrics().inFlight).toBe(1);
    backend.pending[0].release();
    const [u] = await used(r, 1);
    expect(u).toEqual({ id: f.head, len: 1 });
    expect(r.mem.readU8(f.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expect(backend.inner.flushes).toBe(1);
  });

  test('FLUSH is UNSUPP with unsafe caching or when the driver did not accept FLUSH', async () => {
    for (const [cacheType, features] of [
      ['unsafe', undefined],
      ['writeback', featureBit(VIRTIO_F_VERSION_1)],
    ] as const) {
      const backend = new MemoryBackend(4096);
      const r = rig({ backend, cacheType }, features);
      const f = addRequest(r, VIRTIO_BLK_T_FLUSH, 0);
      r.driver.notify(0);
      expect(await used(r, 1)).toEqual([{ id: f.head, len: 1 }]);
      expect(r.mem.readU8(f.statusAddr)).toBe(VIRTIO_BLK_S_UNSUPP);
      expect(backend.flushes).toBe(0);
    }
  });

  test('GET_ID writes the NUL-padded id, truncated to the buffer', async () => {
    const r = rig({ backend: new MemoryBackend(4096), id: 'scratch-disk' });
    const full = addRequest(r, VIRTIO_BLK_T_GET_ID, 0, { inLen: 20 });
    r.mem.slice(full.dataAddr, 20).fill(0xaa);
    const short = addRequest(r, VIRTIO_BLK_T_GET_ID, 0, { inLen: 5 });
    const big = addRequest(r, VIRTIO_BLK_T_GET_ID, 0, { inLen: 64 });
    r.mem.slice(big.dataAddr, 64).fill(0xaa);
    r.driver.notify(0);
    const u = await used(r, 3);
    const expected = new Uint8Array(20);
    expected.set(new TextEncoder().encode('scratch-disk'));
    expectBytes(r.mem.read(full.dataAddr, 20), expected);
    expectBytes(r.mem.read(short.dataAddr, 5), expected.subarray(0, 5));
    expect(r.mem.read(big.dataAddr + 20, 44).every((b) => b === 0xaa)).toBe(true);
    expect(u.map((e) => e.len)).toEqual([21, 6, 21]);
    for (const q of [full, short, big]) expect(r.mem.readU8(q.statusAddr)).toBe(VIRTIO_BLK_S_OK);
  });

  test('out-of-range and unaligned requests fail with IOERR and touch nothing', async () => {
    const backend = new MemoryBackend(8 * 512 + 100); // 8 whole sectors
    const r = rig({ backend });
    const cases = [
      addRequest(r, VIRTIO_BLK_T_IN, 8, { inLen: 512 }), // starts at capacity
      addRequest(r, VIRTIO_BLK_T_IN, 7, { inLen: 1024 }), // ends past capacity
      addRequest(r, VIRTIO_BLK_T_OUT, 2n ** 63n, { out: new Uint8Array(512) }), // huge sector
      addRequest(r, VIRTIO_BLK_T_OUT, 2n ** 64n - 1n, { out: new Uint8Array(512) }), // sector + len wraps u64
      addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 100 }), // not whole sectors
      addRequest(r, VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(513).fill(1) }),
    ];
    const ok = addRequest(r, VIRTIO_BLK_T_IN, 7, { inLen: 512 }); // the last whole sector
    r.driver.notify(0);
    const u = await used(r, cases.length + 1);
    for (const c of cases) expect(r.mem.readU8(c.statusAddr)).toBe(VIRTIO_BLK_S_IOERR);
    expect(r.mem.readU8(ok.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expect(u.filter((e) => e.id !== ok.head).every((e) => e.len === 1)).toBe(true);
    expect(backend.bytes.every((b) => b === 0)).toBe(true);
    expect(r.device.metrics()).toMatchObject({ invalidRequests: 6, errors: 6 });
  });

  test('a write to a read-only drive fails with IOERR and leaves the file unchanged', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-blk-'));
    const file = path.join(dir, 'ro.img');
    const initial = pattern(8192, 5);
    fs.writeFileSync(file, initial);
    const backend = await FileBackend.open(file, true);
    const r = rig({ backend, readOnly: true });
    expect(r.device.deviceFeatures & featureBit(VIRTIO_BLK_F_RO)).not.toBe(0n);
    const w = addRequest(r, VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(4096).fill(0x55) });
    const rd = addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 4096 });
    r.driver.notify(0);
    await used(r, 2);
    expect(r.mem.readU8(w.statusAddr)).toBe(VIRTIO_BLK_S_IOERR);
    expect(r.mem.readU8(rd.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expectBytes(r.mem.read(rd.dataAddr, 4096), initial.subarray(0, 4096));
    expectBytes(new Uint8Array(fs.readFileSync(file)), initial);
    expect(r.device.metrics().readOnlyWrites).toBe(1);
    await expect(backend.write(new Uint8Array(512), 0)).rejects.toMatchObject({ code: 'READ_ONLY' });
    await r.device.close();
    fs.rmSync(dir, { recursive: true });
  });

  test('unknown request types get UNSUPP', async () => {
    const r = rig({ backend: new MemoryBackend(4096) });
    const a = addRequest(r, 11, 0); // DISCARD, not offered
    const b = addRequest(r, 0xdeadbeef, 0, { inLen: 16 });
    r.driver.notify(0);
    await used(r, 2);
    expect(r.mem.readU8(a.statusAddr)).toBe(VIRTIO_BLK_S_UNSUPP);
    expect(r.mem.readU8(b.statusAddr)).toBe(VIRTIO_BLK_S_UNSUPP);
    expect(r.device.metrics().unsupported).toBe(2);
  });

  test('malformed chains: never silently succeed', async () => {
    const backend = new MemoryBackend(64 * 1024);
    const r = rig({ backend });
    const m = r.mem;
    // 1. No writable byte at all: completed with used len 0.
    const h1 = r.vq.addChain([{ addr: r.alloc.allocData(header(VIRTIO_BLK_T_IN, 0)), len: 16 }]);
    // 2. Header too short (8 bytes) but a status byte: IOERR.
    const st2 = r.alloc.alloc(1, 1);
    const h2 = r.vq.addChain([{ addr: r.alloc.allocData(header(VIRTIO_BLK_T_IN, 0)), len: 8 }, { addr: st2, len: 1, write: true }]);
    // 3. Header in the writable part: IOERR (and the header is not overwritten with data).
    const hdr3 = r.alloc.allocData(header(VIRTIO_BLK_T_IN, 0));
    const h3 = r.vq.addChain([{ addr: hdr3, len: 16, write: true }, { addr: r.alloc.alloc(512), len: 512, write: true }, { addr: r.alloc.alloc(1), len: 1, write: true }]);
    // 4. IN whose data is device-readable: IOERR.
    const st4 = r.alloc.alloc(1, 1);
    const h4 = r.vq.addChain([{ addr: r.alloc.allocData(header(VIRTIO_BLK_T_IN, 0)), len: 16 }, { addr: r.alloc.alloc(512), len: 512 }, { addr: st4, len: 1, write: true }]);
    // 5. OUT whose data is device-writable: IOERR, nothing written to the disk.
    const st5 = r.alloc.alloc(1, 1);
    const d5 = r.alloc.allocData(new Uint8Array(512).fill(7));
    const h5 = r.vq.addChain([{ addr: r.alloc.allocData(header(VIRTIO_BLK_T_OUT, 0)), len: 16 }, { addr: d5, len: 512, write: true }, { addr: st5, len: 1, write: true }]);
    // 6. A descriptor pointing outside guest memory (the queue rejects the chain): used len 0.
    const h6 = r.vq.addChain([{ addr: r.alloc.allocData(header(VIRTIO_BLK_T_IN, 0)), len: 16 }, { addr: 64 * MiB, len: 512, write: true }, { addr: r.alloc.alloc(1), len: 1, write: true }]);
    r.driver.notify(0);
    const u = await used(r, 6);
    const byId = new Map(u.map((e) => [e.id, e.len]));
    expect(byId.get(h1)).toBe(0);
    expect(byId.get(h2)).toBe(1);
    expect(m.readU8(st2)).toBe(VIRTIO_BLK_S_IOERR);
    expect(byId.get(h3)).toBe(1);
    expect(byId.get(h4)).toBe(1);
    expect(m.readU8(st4)).toBe(VIRTIO_BLK_S_IOERR);
    expect(byId.get(h5)).toBe(1);
    expect(m.readU8(st5)).toBe(VIRTIO_BLK_S_IOERR);
    expect(byId.get(h6)).toBe(0);
    expect(backend.bytes.every((b) => b === 0)).toBe(true);
    expect(r.device.metrics()).toMatchObject({ malformedChains: 4, errors: 6 });
    // The queue keeps working afterwards.
    const ok = addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    await used(r, 1);
    expect(m.readU8(ok.statusAddr)).toBe(VIRTIO_BLK_S_OK);
  });

  test('backend failures and short reads become IOERR', async () => {
    const failing: BlockBackend = {
      size: 64 * 1024,
      read: async () => {
        throw new Error('EIO');
      },
      write: () => {
        throw new Error('sync throw');
      },
      flush: async () => {
        throw new Error('EIO');
      },
      close: async () => {},
    };
    const r = rig({ backend: failing });
    const a = addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 1024, segments: 2 });
    const b = addRequest(r, VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(512) });
    const c = addRequest(r, VIRTIO_BLK_T_FLUSH, 0);
    r.driver.notify(0);
    const u = await used(r, 3);
    for (const q of [a, b, c]) expect(r.mem.readU8(q.statusAddr)).toBe(VIRTIO_BLK_S_IOERR);
    expect(u.every((e) => e.len === 1)).toBe(true);
    expect(r.device.metrics()).toMatchObject({ ioErrors: 3, errors: 3, inFlight: 0 });

    // A file that shrank under the device: the read hits EOF.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-blk-'));
    const file = path.join(dir, 'shrink.img');
    fs.writeFileSync(file, new Uint8Array(8192));
    const fb = await FileBackend.open(file, false);
    fs.truncateSync(file, 1024);
    const r2 = rig({ backend: fb });
    const s = addRequest(r2, VIRTIO_BLK_T_IN, 0, { inLen: 4096 });
    r2.driver.notify(0);
    await used(r2, 1);
    expect(r2.mem.readU8(s.statusAddr)).toBe(VIRTIO_BLK_S_IOERR);
    await r2.device.close();
    fs.rmSync(dir, { recursive: true });
  });

  test('many requests in flight at once complete out of order', async () => {
    const backend = new GatedBackend(1 * MiB);
    for (let s = 0; s < 8; s++) backend.inner.bytes.set(pattern(4096, s), s * 4096);
    const r = rig({ backend });
    const reqs = Array.from({ length: 8 }, (_, s) => addRequest(r, VIRTIO_BLK_T_IN, s * 8, { inLen: 4096 }));
    r.driver.notify(0);
    await tick();
    // All eight were started without waiting for each other.
    expect(backend.pending.length).toBe(8);
    expect(r.device.metrics().inFlight).toBe(8);
    const order = [5, 2, 7, 0, 6, 1, 3, 4];
    for (const i of order) backend.pending[i].release();
    const u = await used(r, 8);
    expect(u.map((e) => e.id)).toEqual(order.map((i) => reqs[i].head));
    reqs.forEach((q, s) => {
      expect(r.mem.readU8(q.statusAddr)).toBe(VIRTIO_BLK_S_OK);
      expectBytes(r.mem.read(q.dataAddr, 4096), pattern(4096, s));
    });
    expect(r.device.metrics().inFlight).toBe(0);
  });

  test('interrupts: raised after completions, suppressed by VIRTQ_AVAIL_F_NO_INTERRUPT', async () => {
    const r = rig({ backend: new MemoryBackend(64 * 1024) }, featureBit(VIRTIO_F_VERSION_1));
    addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    await used(r, 1);
    await tick();
    const first = r.irq.triggers;
    expect(first).toBe(1);
    r.vq.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    addRequest(r, VIRTIO_BLK_T_GET_ID, 0, { inLen: 20 });
    r.driver.notify(0);
    await used(r, 2);
    await tick();
    expect(r.irq.triggers).toBe(first);
  });

  test('EVENT_IDX: one interrupt for a batch of completions', async () => {
    const r = rig({ backend: new MemoryBackend(1 * MiB) }, featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX));
    r.vq.setUsedEvent(0);
    for (let i = 0; i < 16; i++) addRequest(r, VIRTIO_BLK_T_IN, i, { inLen: 512 });
    r.driver.notify(0);
    await used(r, 16);
    await tick();
    expect(r.irq.triggers).toBe(1);
  });

  test('completions after a reset are dropped, even once the device is re-activated', async () => {
    const backend = new GatedBackend(64 * 1024);
    const r = rig({ backend });
    const q = addRequest(r, VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(512).fill(9) });
    const q1 = addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    await tick();
    expect(backend.pending.length).toBe(2);
    r.driver.setStatus(0); // reset
    backend.pending[0].release(); // completes while the device is reset
    for (let i = 0; i < 5; i++) await tick();
    expect(r.vq.usedIdx()).toBe(0);
    expect(r.mem.readU8(q.statusAddr)).toBe(0xff);

    // Re-activate on fresh rings; the other stale request completes only now.
    const [vq2] = r.driver.bringUp(r.alloc, [256]);
    const r2 = { ...r, vq: vq2 };
    backend.pending[1].release();
    for (let i = 0; i < 5; i++) await tick();
    expect(vq2.usedIdx()).toBe(0);
    expect(r.mem.readU8(q1.statusAddr)).toBe(0xff);
    expect(r.device.metrics()).toMatchObject({ droppedCompletions: 2, inFlight: 0 });

    const q2 = addRequest(r2, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    await tick();
    backend.pending[2].release();
    expect(await used(r2, 1)).toEqual([{ id: q2.head, len: 513 }]);
    expect(r.mem.readU8(q2.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expect(r.mem.read(q2.dataAddr, 512).every((b) => b === 9)).toBe(true);
  });

  test('a corrupt ring puts the device in DEVICE_NEEDS_RESET without throwing', async () => {
    const r = rig({ backend: new MemoryBackend(64 * 1024) });
    r.vq.publish(r.vq.availIdx + 1000); // more than queue size ahead (§2.7.13.3)
    expect(() => r.driver.notify(0)).not.toThrow();
    expect(r.driver.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBeTruthy();
    expect(r.device.metrics().queueErrors).toBe(1);
    // Direct calls on a broken queue, unknown queues and an inactive device are all harmless.
    expect(() => r.device.processQueue(0)).not.toThrow();
    expect(() => r.device.processQueue(7)).not.toThrow();
    r.device.reset();
    expect(() => r.device.processQueue(0)).not.toThrow();
    expect(r.vq.usedIdx()).toBe(0);
  });

  test('updateBackend changes the capacity and closes the old backend once drained', async () => {
    const old = new GatedBackend(16 * 512);
    const r = rig({ backend: old });
    const gen0 = r.driver.read32(VIRTIO_MMIO_CONFIG_GENERATION);
    const inflight = addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    await tick();
    const bigger = new MemoryBackend(64 * 512);
    bigger.bytes.fill(0x42, 40 * 512, 41 * 512);
    r.device.updateBackend(bigger);
    r.transport.configChanged();
    expect(r.driver.read32(VIRTIO_MMIO_CONFIG)).toBe(64);
    expect(r.driver.read32(VIRTIO_MMIO_CONFIG_GENERATION)).not.toBe(gen0);
    expect(old.closed).toBe(0); // still serving the in-flight read
    old.pending[0].release();
    await used(r, 1);
    expect(r.mem.readU8(inflight.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    await tick();
    expect(old.closed).toBe(1);
    const q = addRequest(r, VIRTIO_BLK_T_IN, 40, { inLen: 512 });
    r.driver.notify(0);
    await used(r, 1);
    expect(r.mem.readU8(q.statusAddr)).toBe(VIRTIO_BLK_S_OK);
    expect(r.mem.read(q.dataAddr, 512).every((b) => b === 0x42)).toBe(true);
    expect(() => r.device.updateBackend(new MemoryBackend(512, true))).toThrow(BlockError);
  });
});

describe('BlockDevice rate limiting', () => {
  /** Keeps `depth` reads of `len` bytes queued; advances fake time in `stepMs` steps for `totalMs`. */
  async function drive(r: Rig, t: FakeTime, len: number, depth: number, totalMs: number, stepMs: number): Promise<number> {
    let completed = 0;
    let added = 0;
    const top = () => {
      while (added - completed < depth) {
        addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: len });
        added++;
      }
    };
    r.vq.readUsed();
    top();
    r.driver.notify(0);
    for (let elapsed = 0; elapsed < totalMs; elapsed += stepMs) {
      t.advance(stepMs);
      for (let i = 0; i < 3; i++) await tick();
      completed += r.vq.readUsed().length;
      top();
      r.driver.notify(0);
    }
    return completed;
  }

  test('bandwidth throughput is size/refillTime (within 10%), without spinning', async () => {
    const t = new FakeTime(5000);
    const limiter = new RateLimiter({ bandwidth: { size: 64 * 1024, refillTime: 100 } }, { clock: t.clock, timers: t });
    const r = rig({ backend: new MemoryBackend(1 * MiB), rateLimiter: limiter });
    const completed = await drive(r, t, 4096, 32, 2000, 10);
    const bytes = r.device.metrics().readBytes;
    if (process.env.BLK_DEBUG) console.log('bandwidth', bytes, r.device.metrics(), limiter.metrics());
    expect(bytes).toBe(completed * 4096);
    const expected = 64 * 1024 * (2000 / 100); // plus the initial full bucket
    expect(Math.abs(bytes - 64 * 1024 - expected) / expected).toBeLessThan(0.1);
    const m = r.device.metrics();
    expect(m.throttles).toBeGreaterThan(0);
    // Each throttle is one pop undone; without spinning there are few per fake step.
    expect(m.throttles).toBeLessThan(2 * (2000 / 10) + 64);
    expect(t.timers.size).toBeLessThanOrEqual(1);
  });

  test('ops throughput is size/refillTime (within 10%)', async () => {
    const t = new FakeTime(5000);
    const limiter = new RateLimiter({ ops: { size: 50, refillTime: 1000 } }, { clock: t.clock, timers: t });
    const r = rig({ backend: new MemoryBackend(1 * MiB), rateLimiter: limiter });
    const completed = await drive(r, t, 512, 32, 4000, 20);
    const expected = 50 * 4;
    expect(Math.abs(completed - 50 - expected) / expected).toBeLessThan(0.1);
  });

  test('a throttled queue resumes by itself when the limiter unblocks; updateRateLimiter lifts limits', async () => {
    const t = new FakeTime(5000);
    const limiter = new RateLimiter({ ops: { size: 2, refillTime: 1000 } }, { clock: t.clock, timers: t });
    const r = rig({ backend: new MemoryBackend(64 * 1024), rateLimiter: limiter });
    for (let i = 0; i < 5; i++) addRequest(r, VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    r.driver.notify(0);
    expect((await used(r, 2)).length).toBe(2);
    for (let i = 0; i < 3; i++) await tick();
    expect(r.vq.readUsed()).toEqual([]);
    t.advance(500); // one more token
    expect((await used(r, 1)).length).toBe(1);
    r.device.updateRateLimiter({ ops: { size: 0, refillTime: 0 } });
    t.advance(0);
    expect((await used(r, 2)).length).toBe(2);
  });
});
