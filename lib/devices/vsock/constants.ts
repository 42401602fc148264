/**
 * virtio-vsock constants (virtio 1.2 §5.10): queues, feature bits, config layout, the packet
 * header, its operations and flags, and the event queue's event ids.
 * @module
 */

/** The receive queue: the driver posts empty buffers, the device fills them with packets for the guest. */
export const VSOCK_RX_QUEUE = 0;
/** The transmit queue: packets from the guest. */
export const VSOCK_TX_QUEUE = 1;
/** The event queue: the driver posts buffers the device fills with `struct virtio_vsock_event`. */
export const VSOCK_EVENT_QUEUE = 2;

/** Feature bit: stream sockets (§5.10.3; a driver that negotiates no type feature gets stream only). */
export const VIRTIO_VSOCK_F_STREAM = 0;
/** Feature bit: seqpacket sockets. Not offered. */
export const VIRTIO_VSOCK_F_SEQPACKET = 1;

/** Offset of `le64 guest_cid` in the device configuration (§5.10.4). */
export const VSOCK_CONFIG_GUEST_CID = 0;
/** Size of `struct virtio_vsock_config`. */
export const VSOCK_CONFIG_SIZE = 8;

/** The host's context id (VMADDR_CID_HOST): the address every guest packet is sent to. */
export const VSOCK_HOST_CID = 2;
/** Smallest guest context id: 0-2 are reserved (hypervisor, local, host). */
export const VSOCK_MIN_GUEST_CID = 3;
/** Largest guest context id: 0xffffffff is VMADDR_CID_ANY, and the upper 32 bits of the field are reserved. */
export const VSOCK_MAX_GUEST_CID = 0xfffffffe;

/** Size of `struct virtio_vsock_hdr` (§5.10.6). */
export const VSOCK_HDR_SIZE = 44;
/** Header field offsets (all little-endian). */
export const HDR_SRC_CID = 0;
/** See {@link HDR_SRC_CID}. */
export const HDR_DST_CID = 8;
/** See {@link HDR_SRC_CID}. */
export const HDR_SRC_PORT = 16;
/** See {@link HDR_SRC_CID}. */
export const HDR_DST_PORT = 20;
/** See {@link HDR_SRC_CID}. */
export const HDR_LEN = 24;
/** See {@link HDR_SRC_CID}. */
export const HDR_TYPE = 28;
/** See {@link HDR_SRC_CID}. */
export const HDR_OP = 30;
/** See {@link HDR_SRC_CID}. */
export const HDR_FLAGS = 32;
/** See {@link HDR_SRC_CID}. */
export const HDR_BUF_ALLOC = 36;
/** See {@link HDR_SRC_CID}. */
export const HDR_FWD_CNT = 40;

/** Socket type: stream (the only one offered). */
export const VIRTIO_VSOCK_TYPE_STREAM = 1;
/** Socket type: seqpacket (refused with RST). */
export const VIRTIO_VSOCK_TYPE_SEQPACKET = 2;

/** Invalid operation (never valid on the wire). */
export const VIRTIO_VSOCK_OP_INVALID = 0;
/** Connect request. */
export const VIRTIO_VSOCK_OP_REQUEST = 1;
/** Connection accepted. */
export const VIRTIO_VSOCK_OP_RESPONSE = 2;
/** Connection refused or aborted. */
export const VIRTIO_VSOCK_OP_RST = 3;
/** One or both directions shut down (flags). */
export const VIRTIO_VSOCK_OP_SHUTDOWN = 4;
/** Data. */
export const VIRTIO_VSOCK_OP_RW = 5;
/** "Here is my buf_alloc and fwd_cnt". */
export const VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6;
/** "Please send a CREDIT_UPDATE". */
export const VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7;

/** SHUTDOWN flag: the sender will receive no more data. */
export const VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE = 1;
/** SHUTDOWN flag: the sender will send no more data. */
export const VIRTIO_VSOCK_SHUTDOWN_F_SEND = 2;
/** Both SHUTDOWN flags. */
export const VIRTIO_VSOCK_SHUTDOWN_MASK = 3;

/** Event id: the transport was reset; the driver drops its connections and re-reads guest_cid (§5.10.6.6). */
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;
/** Size of `struct virtio_vsock_event`. */
export const VSOCK_EVENT_SIZE = 4;

/**
 * Largest payload of one packet the device accepts or sends: Linux's
 * VIRTIO_VSOCK_MAX_PKT_BUF_SIZE. A guest packet claiming more is malformed.
 */
export const VSOCK_MAX_PAYLOAD = 64 * 1024;

/** Queue sizes, as Firecracker's. */
export const VSOCK_QUEUE_SIZE = 256;

/** First local (host-side) port for host-initiated connections; they are taken from [2^30, 2^31). */
export const VSOCK_LOCAL_PORT_FIRST = 2 ** 30;
/** End (exclusive) of the local port range. */
export const VSOCK_LOCAL_PORT_END = 2 ** 31;
