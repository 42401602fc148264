/**
 * Just enough Ethernet, ARP (RFC 826), IPv4 (RFC 791) and TCP (RFC 9293) to parse what a guest
 * sends to the metadata service and to build the replies. Parsers take hostile bytes and return
 * null (or a reason) instead of throwing; builders produce complete frames with valid checksums.
 * IPv4 addresses are handled as unsigned 32-bit numbers.
 * @module
 */
import { ETH_ALEN, ETH_DST, ETH_HLEN, ETH_SRC, ETH_TYPE } from '../constants';

/** Ethertype of IPv4. */
export const ETHERTYPE_IPV4 = 0x0800;
/** Ethertype of ARP. */
export const ETHERTYPE_ARP = 0x0806;
/** Ethertype of an 802.1Q tag. */
export const ETHERTYPE_VLAN = 0x8100;

// ARP for IPv4 over Ethernet (RFC 826).
/** ARP hardware type: Ethernet. */
export const ARP_HTYPE_ETHERNET = 1;
/** ARP operation: request. */
export const ARP_OP_REQUEST = 1;
/** ARP operation: reply. */
export const ARP_OP_REPLY = 2;
/** Length of an ARP packet for IPv4 over Ethernet. */
export const ARP_LEN = 28;
/** Offset of the sender hardware address inside the ARP packet. */
const ARP_SHA = 8;
/** Offset of the sender protocol address. */
const ARP_SPA = 14;
/** Offset of the target hardware address. */
const ARP_THA = 18;
/** Offset of the target protocol address. */
const ARP_TPA = 24;

// IPv4 (RFC 791).
/** Length of an IPv4 header without options. */
export const IPV4_HLEN = 20;
/** IPv4 protocol number of TCP. */
export const IPPROTO_TCP = 6;
/** Flags/fragment field: don't fragment. */
const IPV4_DF = 0x4000;
/** Flags/fragment field: more fragments. */
const IPV4_MF = 0x2000;
/** Flags/fragment field: the fragment offset bits. */
const IPV4_FRAG_OFFSET = 0x1fff;
/** TTL of the packets we build. */
const IPV4_TTL = 64;

// TCP (RFC 9293).
/** Length of a TCP header without options. */
export const TCP_HLEN = 20;
/** FIN flag. */
export const TCP_FIN = 0x01;
/** SYN flag. */
export const TCP_SYN = 0x02;
/** RST flag. */
export const TCP_RST = 0x04;
/** PSH flag. */
export const TCP_PSH = 0x08;
/** ACK flag. */
export const TCP_ACK = 0x10;
/** TCP option kind: end of list. */
const TCPOPT_EOL = 0;
/** TCP option kind: no-operation. */
const TCPOPT_NOP = 1;
/** TCP option kind: maximum segment size. */
const TCPOPT_MSS = 2;

/** Offset of the IPv4 destination address in an untagged Ethernet frame (for a quick check). */
export const FRAME_IPV4_DST = ETH_HLEN + 16;
/** Offset of the ARP target protocol address in an untagged Ethernet frame. */
export const FRAME_ARP_TPA = ETH_HLEN + ARP_TPA;

const be16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
const be32 = (b: Uint8Array, o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** An IPv4 address as 4 bytes → u32. */
export function ipv4ToNumber(ip: Uint8Array): number {
  return be32(ip, 0);
}

/** Formats a u32 IPv4 address as a dotted quad. */
export function formatIpv4(ip: number): string {
  return [ip >>> 24, (ip >>> 16) & 0xff, (ip >>> 8) & 0xff, ip & 0xff].join('.');
}

/**
 * The 16-bit ones' complement sum of `b[start, end)` added to `sum` (RFC 1071), not yet folded or
 * complemented. An odd trailing byte is padded with zero.
 */
export function onesSum(b: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (i < end) sum += b[i] << 8;
  return sum;
}

/** Folds a ones' complement sum into 16 bits and complements it: the checksum field's value. */
export function foldChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** Pseudo-header sum for TCP over IPv4 (RFC 9293 §3.1). */
function pseudoSum(src: number, dst: number, proto: number, len: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
}

// --- Parsing ------------------------------------------------------------------------------

/** An ARP request or reply for IPv4 over Ethernet. */
export interface ArpPacket {
  /** ARP_OP_REQUEST or ARP_OP_REPLY (other values are returned as they are). */
  op: number;
  /** Sender hardware address. */
  sha: Uint8Array;
  /** Sender protocol address. */
  spa: number;
  /** Target hardware address. */
  tha: Uint8Array;
  /** Target protocol address. */
  tpa: number;
}

/** Ethertype of an untagged frame, or -1 if it is too short. */
export function ethertype(frame: Uint8Array): number {
  return frame.length < ETH_HLEN ? -1 : be16(frame, ETH_TYPE);
}

/** Parses the ARP packet of an untagged frame; null if it is not IPv4-over-Ethernet ARP. */
export function parseArp(frame: Uint8Array): ArpPacket | null {
  if (frame.length < ETH_HLEN + ARP_LEN || ethertype(frame) !== ETHERTYPE_ARP) return null;
  const a = ETH_HLEN;
  if (be16(frame, a) !== ARP_HTYPE_ETHERNET || be16(frame, a + 2) !== ETHERTYPE_IPV4 || frame[a + 4] !== ETH_ALEN || frame[a + 5] !== 4) {
    return null;
  }
  return {
    op: be16(frame, a + 6),
    sha: frame.slice(a + ARP_SHA, a + ARP_SHA + ETH_ALEN),
    spa: be32(frame, a + ARP_SPA),
    tha: frame.slice(a + ARP_THA, a + ARP_THA + ETH_ALEN),
    tpa: be32(frame, a + ARP_TPA),
  };
}

/** A parsed IPv4 packet (no options kept, never a fragment). */
export interface Ipv4Packet {
  /** Source address. */
  src: number;
  /** Destination address. */
  dst: number;
  /** Protocol number. */
  protocol: number;
  /** Offset of the payload in the frame. */
  payloadOffset: number;
  /** Payload length (total length minus header). */
  payloadLength: number;
}

/** Why an IPv4 packet was not accepted. */
export type Ipv4Problem = 'malformed' | 'checksum' | 'fragment';

/**
 * Parses the IPv4 packet in an untagged frame. `verifyChecksum`: check the header checksum
 * (skipped when the driver marked the frame's checksums as partial or already validated).
 */
export function parseIpv4(frame: Uint8Array, verifyChecksum: boolean): Ipv4Packet | Ipv4Problem {
  const o = ETH_HLEN;
  if (frame.length < o + IPV4_HLEN || ethertype(frame) !== ETHERTYPE_IPV4) return 'malformed';
  const vihl = frame[o];
  const ihl = (vihl & 0x0f) * 4;
  if (vihl >>> 4 !== 4 || ihl < IPV4_HLEN) return 'malformed';
  const total = be16(frame, o + 2);
  // Frames may carry Ethernet padding after the datagram, never less than it.
  if (total < ihl || o + total > frame.length) return 'malformed';
  if (verifyChecksum && foldChecksum(onesSum(frame, o, o + ihl)) !== 0) return 'checksum';
  const frag = be16(frame, o + 6);
  if (frag & (IPV4_MF | IPV4_FRAG_OFFSET)) return 'fragment';
  return { src: be32(frame, o + 12), dst: be32(frame, o + 16), protocol: frame[o + 9], payloadOffset: o + ihl, payloadLength: total - ihl };
}

/** A parsed TCP segment. */
export interface TcpSegment {
  /** Source port. */
  srcPort: number;
  /** Destination port. */
  dstPort: number;
  /** Sequence number. */
  seq: number;
  /** Acknowledgment number. */
  ack: number;
  /** TCP_* flags. */
  flags: number;
  /** Window (unscaled: we never offer window scaling). */
  window: number;
  /** MSS option value, if present. */
  mss?: number;
  /** Payload (a view into the frame). */
  payload: Uint8Array;
}

/**
 * Parses the TCP segment carried by `ip` in `frame`. `verifyChecksum` as for {@link parseIpv4}.
 * Returns a reason when the segment is unusable.
 */
export function parseTcp(frame: Uint8Array, ip: Ipv4Packet, verifyChecksum: boolean): TcpSegment | 'malformed' | 'checksum' {
  const o = ip.payloadOffset;
  const len = ip.payloadLength;
  if (len < TCP_HLEN) return 'malformed';
  const dataOff = (frame[o + 12] >>> 4) * 4;
  if (dataOff < TCP_HLEN || dataOff > len) return 'malformed';
  if (verifyChecksum) {
    const sum = onesSum(frame, o, o + len, pseudoSum(ip.src, ip.dst, IPPROTO_TCP, len));
    if (foldChecksum(sum) !== 0) return 'checksum';
  }
  let mss: number | undefined;
  // Options: only MSS matters; anything malformed ends the walk (the segment is still usable).
  for (let i = o + TCP_HLEN; i < o + dataOff; ) {
    const kind = frame[i];
    if (kind === TCPOPT_EOL) break;
    if (kind === TCPOPT_NOP) {
      i++;
      continue;
    }
    if (i + 1 >= o + dataOff) break;
    const olen = frame[i + 1];
    if (olen < 2 || i + olen > o + dataOff) break;
    if (kind === TCPOPT_MSS && olen === 4) mss = be16(frame, i + 2);
    i += olen;
  }
  return {
    srcPort: be16(frame, o),
    dstPort: be16(frame, o + 2),
    seq: be32(frame, o + 4),
    ack: be32(frame, o + 8),
    flags: frame[o + 13] & 0x3f,
    window: be16(frame, o + 14),
    ...(mss !== undefined ? { mss } : {}),
    payload: frame.subarray(o + dataOff, o + len),
  };
}

// --- Building ------------------------------------------------------------------------------

function ethernet(out: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  out.set(dst.subarray(0, ETH_ALEN), ETH_DST);
  out.set(src.subarray(0, ETH_ALEN), ETH_SRC);
  put16(out, ETH_TYPE, type);
}

/** An ARP reply from `(mac, ip)` to the requester `(tha, tpa)`. */
export function buildArpReply(mac: Uint8Array, ip: number, tha: Uint8Array, tpa: number): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + ARP_LEN);
  ethernet(f, tha, mac, ETHERTYPE_ARP);
  const a = ETH_HLEN;
  put16(f, a, ARP_HTYPE_ETHERNET);
  put16(f, a + 2, ETHERTYPE_IPV4);
  f[a + 4] = ETH_ALEN;
  f[a + 5] = 4;
  put16(f, a + 6, ARP_OP_REPLY);
  f.set(mac.subarray(0, ETH_ALEN), a + ARP_SHA);
  put32(f, a + ARP_SPA, ip);
  f.set(tha.subarray(0, ETH_ALEN), a + ARP_THA);
  put32(f, a + ARP_TPA, tpa);
  return f;
}

/** An ARP request from `(mac, ip)` for `tpa` (for tests and the test guests' peers). */
export function buildArpRequest(mac: Uint8Array, ip: number, tpa: number): Uint8Array {
  const f = buildArpReply(mac, ip, new Uint8Array(ETH_ALEN), tpa);
  f.fill(0xff, ETH_DST, ETH_DST + ETH_ALEN);
  put16(f, ETH_HLEN + 6, ARP_OP_REQUEST);
  return f;
}

/** What goes into one outgoing TCP segment. */
export interface TcpSegmentSpec {
  /** Ethernet source. */
  srcMac: Uint8Array;
  /** Ethernet destination. */
  dstMac: Uint8Array;
  /** IPv4 source. */
  srcIp: number;
  /** IPv4 destination. */
  dstIp: number;
  /** IPv4 identification. */
  ipId: number;
  /** TCP source port. */
  srcPort: number;
  /** TCP destination port. */
  dstPort: number;
  /** Sequence number. */
  seq: number;
  /** Acknowledgment number. */
  ack: number;
  /** TCP_* flags. */
  flags: number;
  /** Receive window. */
  window: number;
  /** MSS option to include (SYN segments). */
  mss?: number;
  /** Payload bytes. */
  payload?: Uint8Array;
}

/** Builds an Ethernet + IPv4 + TCP frame with both checksums filled in. */
export function buildTcpFrame(s: TcpSegmentSpec): Uint8Array {
  const optLen = s.mss !== undefined ? 4 : 0;
  const payload = s.payload ?? new Uint8Array(0);
  const tcpLen = TCP_HLEN + optLen + payload.length;
  const ipLen = IPV4_HLEN + tcpLen;
  const f = new Uint8Array(ETH_HLEN + ipLen);
  ethernet(f, s.dstMac, s.srcMac, ETHERTYPE_IPV4);
  const ip = ETH_HLEN;
  f[ip] = 0x45;
  put16(f, ip + 2, ipLen);
  put16(f, ip + 4, s.ipId & 0xffff);
  put16(f, ip + 6, IPV4_DF);
  f[ip + 8] = IPV4_TTL;
  f[ip + 9] = IPPROTO_TCP;
  put32(f, ip + 12, s.srcIp);
  put32(f, ip + 16, s.dstIp);
  put16(f, ip + 10, foldChecksum(onesSum(f, ip, ip + IPV4_HLEN)));
  const t = ip + IPV4_HLEN;
  put16(f, t, s.srcPort);
  put16(f, t + 2, s.dstPort);
  put32(f, t + 4, s.seq);
  put32(f, t + 8, s.ack);
  f[t + 12] = ((TCP_HLEN + optLen) / 4) << 4;
  f[t + 13] = s.flags;
  put16(f, t + 14, s.window);
  if (s.mss !== undefined) {
    f[t + 20] = TCPOPT_MSS;
    f[t + 21] = 4;
    put16(f, t + 22, s.mss);
  }
  f.set(payload, t + TCP_HLEN + optLen);
  put16(f, t + 16, foldChecksum(onesSum(f, t, t + tcpLen, pseudoSum(s.srcIp, s.dstIp, IPPROTO_TCP, tcpLen))));
  return f;
}
