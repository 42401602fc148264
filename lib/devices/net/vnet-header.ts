/**
 * The virtio-net packet header (struct virtio_net_hdr, virtio 1.2 §5.1.6): decoding and checking
 * what a driver put in front of a transmitted frame, encoding the header in front of a received
 * one, and the mapping between negotiated offload features and the TAP's TUN_F_* flags. The
 * header layout is the one a TAP uses with IFF_VNET_HDR and TUNSETVNETHDRSZ 12, which is why a
 * TAP-backed NIC can pass headers through untouched.
 * @module
 */
import { featureBit, hasFeature } from '../../virtio/constants';
import {
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
  TUN_F_UFO,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
  VNET_HDR_CSUM_OFFSET,
  VNET_HDR_CSUM_START,
  VNET_HDR_FLAGS,
  VNET_HDR_GSO_SIZE,
  VNET_HDR_GSO_TYPE,
  VNET_HDR_HDR_LEN,
  VNET_HDR_NUM_BUFFERS,
  VNET_HDR_SIZE,
} from './constants';

/** A decoded virtio_net_hdr. */
export interface VnetHeader {
  /** VIRTIO_NET_HDR_F_* bits. */
  flags: number;
  /** VIRTIO_NET_HDR_GSO_* type, with the ECN bit. */
  gsoType: number;
  /** Length of the headers to replicate in each segment. */
  hdrLen: number;
  /** Payload bytes per segment. */
  gsoSize: number;
  /** Where checksumming starts (with NEEDS_CSUM). */
  csumStart: number;
  /** Where, after csumStart, the checksum goes. */
  csumOffset: number;
  /** Receive: chains the frame spans (MRG_RXBUF). Transmit: reserved. */
  numBuffers: number;
}

/** Decodes the 12-byte header at the start of `bytes`. */
export function decodeVnetHeader(bytes: Uint8Array): VnetHeader {
  if (bytes.length < VNET_HDR_SIZE) throw new RangeError(`virtio-net header needs ${VNET_HDR_SIZE} bytes, got ${bytes.length}`);
  const u16 = (o: number) => bytes[o] | (bytes[o + 1] << 8);
  return {
    flags: bytes[VNET_HDR_FLAGS],
    gsoType: bytes[VNET_HDR_GSO_TYPE],
    hdrLen: u16(VNET_HDR_HDR_LEN),
    gsoSize: u16(VNET_HDR_GSO_SIZE),
    csumStart: u16(VNET_HDR_CSUM_START),
    csumOffset: u16(VNET_HDR_CSUM_OFFSET),
    numBuffers: u16(VNET_HDR_NUM_BUFFERS),
  };
}

/** Encodes `h` into the first 12 bytes of `out` (a new array when omitted). */
export function encodeVnetHeader(h: Partial<VnetHeader>, out: Uint8Array = new Uint8Array(VNET_HDR_SIZE)): Uint8Array {
  const put16 = (o: number, v: number) => {
    out[o] = v & 0xff;
    out[o + 1] = (v >>> 8) & 0xff;
  };
  out[VNET_HDR_FLAGS] = (h.flags ?? 0) & 0xff;
  out[VNET_HDR_GSO_TYPE] = (h.gsoType ?? VIRTIO_NET_HDR_GSO_NONE) & 0xff;
  put16(VNET_HDR_HDR_LEN, h.hdrLen ?? 0);
  put16(VNET_HDR_GSO_SIZE, h.gsoSize ?? 0);
  put16(VNET_HDR_CSUM_START, h.csumStart ?? 0);
  put16(VNET_HDR_CSUM_OFFSET, h.csumOffset ?? 0);
  put16(VNET_HDR_NUM_BUFFERS, h.numBuffers ?? 0);
  return out;
}

/** Why a transmit header was refused (see {@link checkTxHeader}). */
export type TxHeaderProblem = 'csumNotNegotiated' | 'badCsumRange' | 'gsoNotNegotiated' | 'badGso';

/**
 * Checks a transmitted frame's header against the features the driver accepted (§5.1.6.2: the
 * driver MUST NOT set NEEDS_CSUM without VIRTIO_NET_F_CSUM, nor a gso_type whose HOST_ feature
 * was not negotiated). Returns null when the header is acceptable. `frameLen` excludes the header.
 */
export function checkTxHeader(h: VnetHeader, acked: bigint, frameLen: number): TxHeaderProblem | null {
  if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
    if (!hasFeature(acked, VIRTIO_NET_F_CSUM)) return 'csumNotNegotiated';
    // The checksum field (2 bytes) must lie inside the frame.
    if (h.csumStart + h.csumOffset + 2 > frameLen) return 'badCsumRange';
  }
  const base = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  const ecn = (h.gsoType & VIRTIO_NET_HDR_GSO_ECN) !== 0;
  if (base === VIRTIO_NET_HDR_GSO_NONE) {
    return ecn ? 'badGso' : null;
  }
  let feature: number;
  switch (base) {
    case VIRTIO_NET_HDR_GSO_TCPV4:
      feature = VIRTIO_NET_F_HOST_TSO4;
      break;
    case VIRTIO_NET_HDR_GSO_TCPV6:
      feature = VIRTIO_NET_F_HOST_TSO6;
      break;
    case VIRTIO_NET_HDR_GSO_UDP:
      feature = VIRTIO_NET_F_HOST_UFO;
      break;
    default:
      return 'gsoNotNegotiated';
  }
  if (!hasFeature(acked, feature)) return 'gsoNotNegotiated';
  if (ecn && !hasFeature(acked, VIRTIO_NET_F_HOST_ECN)) return 'gsoNotNegotiated';
  // A GSO frame has segments to cut (§5.1.6.2.1: gso_size is the segment payload size), and its
  // checksum is always partial (NEEDS_CSUM; Linux's virtio_net_hdr_to_skb requires it as well).
  if (h.gsoSize === 0 || !(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) return 'badGso';
  return null;
}

/**
 * The TUN_F_* flags matching the receive offloads a driver accepted: what TUNSETOFFLOAD should
 * allow the kernel to hand this TAP (TSO/UFO only with checksum offload, as the kernel demands).
 * Restricted to `accepted`, the flags the TAP took when probed.
 */
export function tunOffloadsFor(acked: bigint, accepted: number): number {
  if (!hasFeature(acked, VIRTIO_NET_F_GUEST_CSUM) || !(accepted & TUN_F_CSUM)) return 0;
  let flags = TUN_F_CSUM;
  if (hasFeature(acked, VIRTIO_NET_F_GUEST_TSO4)) flags |= TUN_F_TSO4;
  if (hasFeature(acked, VIRTIO_NET_F_GUEST_TSO6)) flags |= TUN_F_TSO6;
  if (hasFeature(acked, VIRTIO_NET_F_GUEST_ECN) && flags & (TUN_F_TSO4 | TUN_F_TSO6)) flags |= TUN_F_TSO_ECN;
  if (hasFeature(acked, VIRTIO_NET_F_GUEST_UFO)) flags |= TUN_F_UFO;
  return flags & accepted;
}

/**
 * Offload features a TAP-backed NIC offers: the transmit side (CSUM, HOST_TSO4/6, HOST_ECN,
 * HOST_UFO) always, since a TAP with a vnet header takes GSO frames from user space whatever its
 * TUNSETOFFLOAD flags; the receive side (GUEST_*) only where the TAP accepted the matching flag,
 * with the dependencies of §5.1.3.1 (TSO/UFO/ECN need checksum offload, ECN needs TSO).
 */
export function tapOffloadFeatures(accepted: number): bigint {
  let f =
    featureBit(VIRTIO_NET_F_CSUM) |
    featureBit(VIRTIO_NET_F_HOST_TSO4) |
    featureBit(VIRTIO_NET_F_HOST_TSO6) |
    featureBit(VIRTIO_NET_F_HOST_ECN) |
    featureBit(VIRTIO_NET_F_HOST_UFO);
  if (accepted & TUN_F_CSUM) {
    f |= featureBit(VIRTIO_NET_F_GUEST_CSUM);
    if (accepted & TUN_F_TSO4) f |= featureBit(VIRTIO_NET_F_GUEST_TSO4);
    if (accepted & TUN_F_TSO6) f |= featureBit(VIRTIO_NET_F_GUEST_TSO6);
    if (accepted & TUN_F_TSO_ECN && accepted & (TUN_F_TSO4 | TUN_F_TSO6)) f |= featureBit(VIRTIO_NET_F_GUEST_ECN);
    if (accepted & TUN_F_UFO) f |= featureBit(VIRTIO_NET_F_GUEST_UFO);
  }
  return f;
}

/** Whether a driver that accepted `acked` may be handed GSO frames (it posts 64 KiB of buffers then). */
export function guestTakesGso(acked: bigint): boolean {
  return (
    hasFeature(acked, VIRTIO_NET_F_GUEST_TSO4) ||
    hasFeature(acked, VIRTIO_NET_F_GUEST_TSO6) ||
    hasFeature(acked, VIRTIO_NET_F_GUEST_UFO)
  );
}

/**
 * Receive-side flags a driver may see: without GUEST_CSUM the device must set flags to zero
 * (§5.1.6.4); with it, NEEDS_CSUM and DATA_VALID pass through.
 */
export function rxFlagsMask(acked: bigint): number {
  return hasFeature(acked, VIRTIO_NET_F_GUEST_CSUM) ? VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID : 0;
}
