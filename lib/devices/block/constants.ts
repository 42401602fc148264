/**
 * virtio-blk constants (virtio 1.2 §5.2).
 * @module
 */

/** Sector size of the request `sector` field and of `capacity`, whatever blk_size says (§5.2.4). */
export const SECTOR_SIZE = 512;
/** log2 of {@link SECTOR_SIZE}. */
export const SECTOR_SHIFT = 9;

// Feature bits (§5.2.3).
/** Maximum segment size is in `size_max`. */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
/** Maximum segments per request is in `seg_max`. */
export const VIRTIO_BLK_F_SEG_MAX = 2;
/** Disk-style geometry is in `geometry`. */
export const VIRTIO_BLK_F_GEOMETRY = 4;
/** The device is read-only. */
export const VIRTIO_BLK_F_RO = 5;
/** Block size of the disk is in `blk_size`. */
export const VIRTIO_BLK_F_BLK_SIZE = 6;
/** Cache flush command support. */
export const VIRTIO_BLK_F_FLUSH = 9;
/** Optimal I/O alignment is in `topology`. */
export const VIRTIO_BLK_F_TOPOLOGY = 10;
/** The driver can toggle writeback/writethrough through `writeback`. */
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
/** Discard command support. */
export const VIRTIO_BLK_F_DISCARD = 13;
/** Write-zeroes command support. */
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

// Device configuration layout (struct virtio_blk_config, §5.2.4), little-endian.
/** le64 capacity in 512-byte sectors. */
export const BLK_CONFIG_CAPACITY = 0;
/** le32 size_max. */
export const BLK_CONFIG_SIZE_MAX = 8;
/** le32 seg_max. */
export const BLK_CONFIG_SEG_MAX = 12;
/** le16 geometry.cylinders, u8 heads, u8 sectors. */
export const BLK_CONFIG_GEOMETRY = 16;
/** le32 blk_size. */
export const BLK_CONFIG_BLK_SIZE = 20;
/** Bytes of config space this device exposes: through blk_size (the fields it may offer). */
export const BLK_CONFIG_SIZE = 24;

// Request layout (struct virtio_blk_req, §5.2.6).
/** le32 type. */
export const BLK_REQ_TYPE = 0;
/** le32 reserved. */
export const BLK_REQ_RESERVED = 4;
/** le64 sector. */
export const BLK_REQ_SECTOR = 8;
/** Size of the request header that precedes the data. */
export const BLK_REQ_HEADER_SIZE = 16;
/** Size of the status byte at the very end of the chain. */
export const BLK_REQ_STATUS_SIZE = 1;

// Request types (§5.2.6).
/** Read. */
export const VIRTIO_BLK_T_IN = 0;
/** Write. */
export const VIRTIO_BLK_T_OUT = 1;
/** Flush the write cache. */
export const VIRTIO_BLK_T_FLUSH = 4;
/** Read the device id string. */
export const VIRTIO_BLK_T_GET_ID = 8;
/** Discard (not offered). */
export const VIRTIO_BLK_T_DISCARD = 11;
/** Write zeroes (not offered). */
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

// Request status (§5.2.6).
/** Success. */
export const VIRTIO_BLK_S_OK = 0;
/** Device or driver error. */
export const VIRTIO_BLK_S_IOERR = 1;
/** Request unsupported by the device. */
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Length of the GET_ID device id string; shorter ids are NUL-padded, 20-byte ids have no NUL. */
export const VIRTIO_BLK_ID_BYTES = 20;
