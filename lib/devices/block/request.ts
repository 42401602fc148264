/**
 * Parsing a virtio-blk request (virtio 1.2 §5.2.6) out of a descriptor chain, before any I/O and
 * without side effects: the device then decides what to do with it (throttle, count, execute).
 *
 * A request is a 16-byte device-readable header (type u32, reserved u32, sector u64), then the
 * data (device-writable for IN and GET_ID, device-readable for OUT), then the status byte, which
 * is the last byte of the last device-writable descriptor.
 * @module
 */
import { ChainReader, ChainWriter, type DescriptorChain } from '../../virtio/chain';
import type { GuestMemory } from '../../memory/guest-memory';
import {
  BLK_REQ_HEADER_SIZE,
  BLK_REQ_STATUS_SIZE,
  SECTOR_SIZE,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from './constants';

/** A well-formed request. `status` is where its status byte goes. */
export type BlockRequest =
  | {
      /** IN (read) or OUT (write). */
      readonly type: typeof VIRTIO_BLK_T_IN | typeof VIRTIO_BLK_T_OUT;
      /** Byte offset on the disk (whole sectors, inside the capacity). */
      readonly offset: number;
      /** Data length in bytes (whole sectors). */
      readonly length: number;
      /** The guest buffers holding (OUT) or receiving (IN) the data, in order. */
      readonly data: Uint8Array[];
      /** The status byte. */
      readonly status: ChainWriter;
    }
  | {
      /** FLUSH. */
      readonly type: typeof VIRTIO_BLK_T_FLUSH;
      /** The status byte. */
      readonly status: ChainWriter;
    }
  | {
      /** GET_ID. */
      readonly type: typeof VIRTIO_BLK_T_GET_ID;
      /** Where the id goes (as much of its 20 bytes as fits). */
      readonly id: ChainWriter;
      /** The status byte. */
      readonly status: ChainWriter;
    }
  | {
      /** A type this device does not implement (answered VIRTIO_BLK_S_UNSUPP). */
      readonly type: 'unsupported';
      /** The type the driver sent. */
      readonly requestType: number;
      /** The status byte. */
      readonly status: ChainWriter;
    };

/** A request that cannot be served, and how to complete it. */
export interface RequestError {
  /**
   * `'malformed'`: the chain cannot hold a request (no status byte: complete with used length 0,
   * or no full header: IOERR). `'invalid'`: a data request with a wrong data direction, not whole
   * sectors, or outside the capacity (IOERR).
   */
  readonly error: 'malformed' | 'invalid';
  /** Where the IOERR status goes, or undefined when the chain has no writable byte at all. */
  readonly status?: ChainWriter;
  /** The request type, when the header could be read. */
  readonly requestType?: number;
  /** The data length the request named, for throttling (0 when unknown). */
  readonly length: number;
}

/** Whether a parse result is an error. */
export function isRequestError(r: BlockRequest | RequestError): r is RequestError {
  return 'error' in r;
}

/**
 * Parses the request in `chain` for a disk of `capacity` sectors. Reads only the header from
 * guest memory; never throws for anything the guest wrote.
 */
export function parseRequest(mem: GuestMemory, chain: DescriptorChain, capacity: number): BlockRequest | RequestError {
  if (chain.error !== undefined || chain.writableLength < BLK_REQ_STATUS_SIZE) return { error: 'malformed', length: 0 };
  const writer = new ChainWriter(mem, chain);
  const status = writer.reserveTail(BLK_REQ_STATUS_SIZE);
  if (chain.readableLength < BLK_REQ_HEADER_SIZE) return { error: 'malformed', status, length: 0 };
  const reader = new ChainReader(mem, chain);
  const type = reader.readU32();
  reader.skip(4); // reserved
  const sector = reader.readU64();
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const isRead = type === VIRTIO_BLK_T_IN;
      const length = isRead ? writer.remaining : reader.remaining;
      // IN data is all writable (nothing readable after the header); OUT data all readable.
      const layoutOk = isRead ? reader.remaining === 0 : writer.remaining === 0;
      const offset = checkedOffset(sector, length, capacity);
      if (!layoutOk || offset < 0) return { error: 'invalid', status, requestType: type, length };
      return { type, offset, length, data: isRead ? writer.views(length) : reader.views(length), status };
    }
    case VIRTIO_BLK_T_FLUSH:
      return { type, status };
    case VIRTIO_BLK_T_GET_ID:
      return { type, id: writer, status };
    default:
      return { type: 'unsupported', requestType: type, status };
  }
}

/**
 * Byte offset of `sector`, or -1 if `length` is not whole sectors or the range does not lie
 * within `capacity` sectors.
 */
function checkedOffset(sector: bigint, length: number, capacity: number): number {
  if (length % SECTOR_SIZE !== 0) return -1;
  const cap = BigInt(capacity);
  const sectors = BigInt(length / SECTOR_SIZE);
  if (sector > cap || sector + sectors > cap) return -1;
  return Number(sector) * SECTOR_SIZE;
}
