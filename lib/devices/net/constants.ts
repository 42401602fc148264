/**
 * virtio-net constants (virtio 1.2 §5.1), the Ethernet sizes the device checks frames against,
 * and the TUN/TAP offload flags (`linux/if_tun.h`) the device maps acked features to.
 * @module
 */

// --- Queues (§5.1.2): one receive/transmit pair, no control queue ------------------------------

/** receiveq1: buffers the driver posts for the device to fill. */
export const NET_RX_QUEUE = 0;
/** transmitq1: frames the driver sends. */
export const NET_TX_QUEUE = 1;
/** Default (and maximum offered) size of each queue, as in Firecracker. */
export const NET_QUEUE_SIZE = 256;

// --- Feature bits (§5.1.3) -------------------------------------------------------------------

/** Device handles packets with partial checksum (guest → device checksum offload). */
export const VIRTIO_NET_F_CSUM = 0;
/** Driver handles packets with partial checksum (device → guest). */
export const VIRTIO_NET_F_GUEST_CSUM = 1;
/** Control channel offloads reconfiguration (needs the control queue; not offered). */
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
/** Device maximum MTU is in config `mtu`. */
export const VIRTIO_NET_F_MTU = 3;
/** Device has a given MAC address in config `mac`. */
export const VIRTIO_NET_F_MAC = 5;
/** Driver can receive TSOv4. */
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
/** Driver can receive TSOv6. */
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
/** Driver can receive TSO with ECN. */
export const VIRTIO_NET_F_GUEST_ECN = 9;
/** Driver can receive UFO. */
export const VIRTIO_NET_F_GUEST_UFO = 10;
/** Device can receive TSOv4. */
export const VIRTIO_NET_F_HOST_TSO4 = 11;
/** Device can receive TSOv6. */
export const VIRTIO_NET_F_HOST_TSO6 = 12;
/** Device can receive TSO with ECN. */
export const VIRTIO_NET_F_HOST_ECN = 13;
/** Device can receive UFO. */
export const VIRTIO_NET_F_HOST_UFO = 14;
/** Driver can merge receive buffers (a frame may span several chains). */
export const VIRTIO_NET_F_MRG_RXBUF = 15;
/** Configuration `status` field is available. */
export const VIRTIO_NET_F_STATUS = 16;
/** Control channel is available (not offered). */
export const VIRTIO_NET_F_CTRL_VQ = 17;

// --- Configuration layout (struct virtio_net_config, §5.1.4), little-endian ------------------

/** u8 mac[6]. */
export const NET_CONFIG_MAC = 0;
/** le16 status (VIRTIO_NET_S_*). */
export const NET_CONFIG_STATUS = 6;
/** le16 max_virtqueue_pairs (meaningful with MQ only; reads 1). */
export const NET_CONFIG_MAX_VQ_PAIRS = 8;
/** le16 mtu. */
export const NET_CONFIG_MTU = 10;
/** Bytes of config space the device exposes: through `mtu`. */
export const NET_CONFIG_SIZE = 12;

/** `status`: the link is up. */
export const VIRTIO_NET_S_LINK_UP = 1;
/** `status`: the driver should send a gratuitous announcement (needs GUEST_ANNOUNCE; never set). */
export const VIRTIO_NET_S_ANNOUNCE = 2;

// --- Packet header (struct virtio_net_hdr, §5.1.6) -------------------------------------------

/**
 * Size of the header in front of every frame. With VIRTIO_F_VERSION_1 (which the transport
 * requires) `num_buffers` is always present, so the header is 12 bytes (§5.1.6).
 */
export const VNET_HDR_SIZE = 12;
/** u8 flags. */
export const VNET_HDR_FLAGS = 0;
/** u8 gso_type. */
export const VNET_HDR_GSO_TYPE = 1;
/** le16 hdr_len. */
export const VNET_HDR_HDR_LEN = 2;
/** le16 gso_size. */
export const VNET_HDR_GSO_SIZE = 4;
/** le16 csum_start. */
export const VNET_HDR_CSUM_START = 6;
/** le16 csum_offset. */
export const VNET_HDR_CSUM_OFFSET = 8;
/** le16 num_buffers (receive with MRG_RXBUF: chains the frame spans; 1 otherwise). */
export const VNET_HDR_NUM_BUFFERS = 10;

/** flags: checksum from csum_start to the end is to be computed and stored at csum_offset. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** flags: the checksum has been validated (receive only). */
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
/** flags: receive segment coalescing info (RSC_EXT; not offered). */
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;

/** gso_type: not a GSO frame. */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
/** gso_type: TCPv4 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
/** gso_type: UDP fragmentation (UFO). */
export const VIRTIO_NET_HDR_GSO_UDP = 3;
/** gso_type: TCPv6 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
/** gso_type: UDP segmentation (USO; not offered). */
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
/** gso_type bit: the TCP segments carry ECN (CWR). */
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// --- Ethernet ---------------------------------------------------------------------------------

/** Ethernet header: destination, source, ethertype. */
export const ETH_HLEN = 14;
/** One 802.1Q tag. */
export const VLAN_HLEN = 4;
/** Length of a MAC address. */
export const ETH_ALEN = 6;
/** Offset of the destination MAC in a frame. */
export const ETH_DST = 0;
/** Offset of the source MAC in a frame. */
export const ETH_SRC = 6;
/** Offset of the ethertype in an untagged frame. */
export const ETH_TYPE = 12;
/** Smallest MTU we accept (IPv4's minimum datagram size, RFC 791). */
export const MIN_MTU = 68;
/** Largest MTU we accept: the TAP's maximum and the u16 config field's. */
export const MAX_MTU = 65535;
/** The MTU when none is configured. */
export const DEFAULT_MTU = 1500;
/**
 * Largest frame a GSO-capable path can carry: a 64 KiB IP datagram plus link headers
 * (the size Linux's virtio-net driver posts for "big packets").
 */
export const MAX_GSO_FRAME = 65535 + ETH_HLEN + VLAN_HLEN;

/** Largest frame (without the virtio header) for an MTU: payload, Ethernet header, one VLAN tag. */
export function maxFrameForMtu(mtu: number): number {
  return mtu + ETH_HLEN + VLAN_HLEN;
}

// --- TUN/TAP (linux/if_tun.h) ----------------------------------------------------------------

/** TUNSETOFFLOAD: the reader can take packets with partial checksums. */
export const TUN_F_CSUM = 0x01;
/** TUNSETOFFLOAD: the reader can take TSOv4 packets. */
export const TUN_F_TSO4 = 0x02;
/** TUNSETOFFLOAD: the reader can take TSOv6 packets. */
export const TUN_F_TSO6 = 0x04;
/** TUNSETOFFLOAD: the reader can take TSO with ECN. */
export const TUN_F_TSO_ECN = 0x08;
/** TUNSETOFFLOAD: the reader can take UFO packets. */
export const TUN_F_UFO = 0x10;
/** Every TUN_F_* flag the device knows how to map from guest features. */
export const TUN_F_ALL = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO;
