// A virtio device written outside Kindling, against its public device contract: a RAM disk that
// speaks virtio-blk (virtio 1.2 §5.2), so the guest's ordinary virtio-blk driver uses it.
//
//   const { RamDisk } = require('./examples/ramdisk/ramdisk-device');
//   vm.device(new RamDisk('ram0', Buffer.alloc(1 << 20)));      // a 1 MiB disk at /dev/vdX
//
// The test next to it drives it with the mock driver from `kindling/testing` (no KVM) and boots a
// guest that reads and writes it (KVM).
'use strict';
const { ChainReader, ChainWriter, stateField, encodeBytes } = require('kindling');

const VIRTIO_ID_BLOCK = 2;
const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_T_GET_ID = 8;
const VIRTIO_BLK_S_OK = 0;
const VIRTIO_BLK_S_IOERR = 1;
const VIRTIO_BLK_S_UNSUPP = 2;
const SECTOR = 512;
const HEADER = 16; // struct virtio_blk_outhdr: type u32, reserved u32, sector u64
const ID_BYTES = 20;

/** An in-memory virtio-blk disk. Everything it does happens synchronously inside processQueue. */
class RamDisk {
  /**
   * @param {string} id device id (also the GET_ID serial, at most 20 bytes)
   * @param {Buffer} data the disk's contents; its length is rounded down to whole sectors
   */
  constructor(id, data) {
    this.id = id;
    this.kind = 'example-ramdisk';
    this.stateVersion = 1;
    this.deviceType = VIRTIO_ID_BLOCK;
    this.queueMaxSizes = [128];
    this.deviceFeatures = 0n; // no optional features: capacity is the only config field we need
    this.data = data;
    this.sectors = Math.floor(data.length / SECTOR);
    this.ctx = null;
    this.counters = { reads: 0, writes: 0, errors: 0 };
  }

  /** struct virtio_blk_config: only `capacity` (u64 at offset 0) is defined without features. */
  readConfig(offset, size) {
    const cfg = Buffer.alloc(8);
    cfg.writeBigUInt64LE(BigInt(this.sectors));
    if (offset < 0 || offset + size > cfg.length) return 0;
    return size === 1 ? cfg.readUInt8(offset) : size === 2 ? cfg.readUInt16LE(offset) : cfg.readUInt32LE(offset);
  }

  writeConfig() { /* read-only config space */ }

  activate(ctx) { this.ctx = ctx; }

  reset() { this.ctx = null; }

  processQueue(index) {
    const ctx = this.ctx;
    if (!ctx) return;
    const q = ctx.queues[index];
    let completed = false;
    try {
      do {
        q.disableNotification(ctx.mem);
        for (let chain = q.pop(ctx.mem); chain; chain = q.pop(ctx.mem)) {
          q.addUsed(ctx.mem, chain.headIndex, this.serve(ctx.mem, chain));
          completed = true;
        }
      } while (q.enableNotification(ctx.mem));
    } catch {
      ctx.needsReset(); // a broken ring: only a reset helps (virtio 1.2 §2.1.2)
      return;
    }
    if (completed && q.needsNotification(ctx.mem)) ctx.interrupt.signalUsedQueue(index);
  }

  /** One request; returns the bytes written into the chain (data + status). */
  serve(mem, chain) {
    if (chain.error || chain.writableLength < 1 || chain.readableLength < HEADER) {
      this.counters.errors++;
      return 0;
    }
    const r = new ChainReader(mem, chain);
    const w = new ChainWriter(mem, chain);
    const status = w.reserveTail(1);
    const type = r.readU32();
    r.skip(4);
    const sector = r.readU64();
    const finish = (code, written) => {
      status.writeU8(code);
      if (code !== VIRTIO_BLK_S_OK) this.counters.errors++;
      return written + 1;
    };
    const len = type === VIRTIO_BLK_T_IN ? w.remaining : r.remaining;
    const inRange = len % SECTOR === 0 && sector <= BigInt(this.sectors) && sector + BigInt(len / SECTOR) <= BigInt(this.sectors);
    const offset = Number(sector) * SECTOR;
    switch (type) {
      case VIRTIO_BLK_T_IN:
        if (!inRange) return finish(VIRTIO_BLK_S_IOERR, 0);
        w.write(this.data.subarray(offset, offset + len));
        this.counters.reads++;
        return finish(VIRTIO_BLK_S_OK, len);
      case VIRTIO_BLK_T_OUT:
        if (!inRange) return finish(VIRTIO_BLK_S_IOERR, 0);
        this.data.set(r.read(len), offset);
        this.counters.writes++;
        return finish(VIRTIO_BLK_S_OK, 0);
      case VIRTIO_BLK_T_GET_ID: {
        const id = Buffer.alloc(ID_BYTES);
        id.write(this.id.slice(0, ID_BYTES));
        const n = Math.min(ID_BYTES, w.remaining);
        w.write(id.subarray(0, n));
        return finish(VIRTIO_BLK_S_OK, n);
      }
      default:
        return finish(VIRTIO_BLK_S_UNSUPP, 0);
    }
  }

  metrics() { return { ...this.counters }; }

  /** The disk's contents are its state (requests complete synchronously, none is ever in flight). */
  saveState() { return { data: encodeBytes(this.data) }; }

  restoreState(state) {
    const data = stateField.bytes(state, 'data', this.data.length);
    this.data.fill(0);
    this.data.set(data);
  }

  async close() { this.ctx = null; }
}

module.exports = { RamDisk };
