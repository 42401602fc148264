/**
 * The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 §5.10.6): decoding from
 * and encoding into byte arrays, and the checks every guest header goes through before the device
 * acts on it. Pure functions: the device and the property tests share them.
 * @module
 */
import {
  HDR_BUF_ALLOC,
  HDR_DST_CID,
  HDR_DST_PORT,
  HDR_FLAGS,
  HDR_FWD_CNT,
  HDR_LEN,
  HDR_OP,
  HDR_SRC_CID,
  HDR_SRC_PORT,
  HDR_TYPE,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_HDR_SIZE,
  VSOCK_HOST_CID,
  VSOCK_MAX_PAYLOAD,
} from './constants';

/**
 * A decoded header. CIDs are numbers; a CID whose upper 32 bits are not zero (reserved, §5.10.4)
 * decodes as -1, which matches no context.
 */
export interface VsockHeader {
  /** Source context id. */
  srcCid: number;
  /** Destination context id. */
  dstCid: number;
  /** Source port (u32). */
  srcPort: number;
  /** Destination port (u32). */
  dstPort: number;
  /** Payload bytes following the header (u32). */
  len: number;
  /** Socket type (u16). */
  type: number;
  /** Operation (u16). */
  op: number;
  /** Operation flags (u32; SHUTDOWN's RECEIVE/SEND bits). */
  flags: number;
  /** The sender's receive buffer size (u32). */
  bufAlloc: number;
  /** Bytes the sender has consumed from its receive buffer, free-running (u32). */
  fwdCnt: number;
}

function readCid(v: DataView, off: number): number {
  const lo = v.getUint32(off, true);
  const hi = v.getUint32(off + 4, true);
  return hi === 0 ? lo : -1;
}

/**
 * Decodes the 44 header bytes at the start of `bytes`.
 * @throws RangeError when fewer than 44 bytes are given (a caller bug: guest chains are checked first).
 */
export function decodeHeader(bytes: Uint8Array): VsockHeader {
  if (bytes.length < VSOCK_HDR_SIZE) throw new RangeError(`vsock header needs ${VSOCK_HDR_SIZE} bytes, got ${bytes.length}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, VSOCK_HDR_SIZE);
  return {
    srcCid: readCid(v, HDR_SRC_CID),
    dstCid: readCid(v, HDR_DST_CID),
    srcPort: v.getUint32(HDR_SRC_PORT, true),
    dstPort: v.getUint32(HDR_DST_PORT, true),
    len: v.getUint32(HDR_LEN, true),
    type: v.getUint16(HDR_TYPE, true),
    op: v.getUint16(HDR_OP, true),
    flags: v.getUint32(HDR_FLAGS, true),
    bufAlloc: v.getUint32(HDR_BUF_ALLOC, true),
    fwdCnt: v.getUint32(HDR_FWD_CNT, true),
  };
}

/** Encodes `h` into the first 44 bytes of `out` (CIDs must be u32). */
export function encodeHeader(h: VsockHeader, out: Uint8Array): void {
  if (out.length < VSOCK_HDR_SIZE) throw new RangeError(`vsock header needs ${VSOCK_HDR_SIZE} bytes, got ${out.length}`);
  const v = new DataView(out.buffer, out.byteOffset, VSOCK_HDR_SIZE);
  v.setUint32(HDR_SRC_CID, h.srcCid >>> 0, true);
  v.setUint32(HDR_SRC_CID + 4, 0, true);
  v.setUint32(HDR_DST_CID, h.dstCid >>> 0, true);
  v.setUint32(HDR_DST_CID + 4, 0, true);
  v.setUint32(HDR_SRC_PORT, h.srcPort >>> 0, true);
  v.setUint32(HDR_DST_PORT, h.dstPort >>> 0, true);
  v.setUint32(HDR_LEN, h.len >>> 0, true);
  v.setUint16(HDR_TYPE, h.type & 0xffff, true);
  v.setUint16(HDR_OP, h.op & 0xffff, true);
  v.setUint32(HDR_FLAGS, h.flags >>> 0, true);
  v.setUint32(HDR_BUF_ALLOC, h.bufAlloc >>> 0, true);
  v.setUint32(HDR_FWD_CNT, h.fwdCnt >>> 0, true);
}

/**
 * What the device does with a guest packet before looking at connections:
 * - `ok`: act on it.
 * - `drop`: ignore it (counted): a spoofed source CID, or a malformed length. Answering would only
 *   help a driver that is already lying about who it is.
 * - `rst`: answer with RST: a well-formed packet the device will not serve (another destination
 *   CID, another socket type, an unknown operation).
 */
export type HeaderVerdict =
  | {
      /** Act on it. */
      kind: 'ok';
    }
  | {
      /** Ignore it. */
      kind: 'drop';
      /** Why. */
      reason: 'bad-src-cid' | 'bad-len';
    }
  | {
      /** Answer with RST. */
      kind: 'rst';
      /** Why. */
      reason: 'bad-dst-cid' | 'bad-type' | 'bad-op';
    };

/**
 * Judges a guest header. `available` is how many payload bytes the chain really holds after the
 * header: `len` must fit in it and in {@link VSOCK_MAX_PAYLOAD}, and only RW carries a payload.
 */
export function checkGuestHeader(h: VsockHeader, guestCid: number, available: number): HeaderVerdict {
  if (h.srcCid !== guestCid) return { kind: 'drop', reason: 'bad-src-cid' };
  if (h.len > VSOCK_MAX_PAYLOAD || h.len > available) return { kind: 'drop', reason: 'bad-len' };
  if (h.op !== VIRTIO_VSOCK_OP_RW && h.len !== 0) return { kind: 'drop', reason: 'bad-len' };
  if (h.dstCid !== VSOCK_HOST_CID) return { kind: 'rst', reason: 'bad-dst-cid' };
  if (h.type !== VIRTIO_VSOCK_TYPE_STREAM) return { kind: 'rst', reason: 'bad-type' };
  if (h.op < VIRTIO_VSOCK_OP_REQUEST || h.op > VIRTIO_VSOCK_OP_CREDIT_REQUEST) return { kind: 'rst', reason: 'bad-op' };
  return { kind: 'ok' };
}
