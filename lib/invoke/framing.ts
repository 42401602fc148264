/**
 * The invoke protocol's framing (documented for agent authors in `docs/invoke-protocol.md`).
 *
 * Every message is one frame: a 12-byte header, then `length` payload bytes. All integers are
 * little-endian.
 *
 * | offset | size | field   | value                                                        |
 * |--------|------|---------|--------------------------------------------------------------|
 * | 0      | 2    | magic   | 0x4B 0x49 (`"KI"`)                                           |
 * | 2      | 1    | version | 1                                                            |
 * | 3      | 1    | kind    | {@link FRAME_KIND} (request / response, JSON / bytes, error) |
 * | 4      | 4    | id      | request id, echoed by the response                           |
 * | 8      | 4    | length  | payload bytes that follow                                    |
 *
 * The decoder is incremental and bounded: it holds at most one header and one payload of at most
 * `maxPayload` bytes, and refuses a frame as soon as its header is wrong, before reading on.
 * @module
 */
import { InvokeError } from './errors';

/** Size of the frame header. */
export const FRAME_HEADER_SIZE = 12;
/** First magic byte ('K'). */
export const FRAME_MAGIC_0 = 0x4b;
/** Second magic byte ('I'). */
export const FRAME_MAGIC_1 = 0x49;
/** Protocol version. */
export const FRAME_VERSION = 1;
/** Default (and agent-side) limit of one payload: 16 MiB. */
export const DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024;
/** Largest limit a client may set: payload lengths are u32, and 1 GiB is plenty for one message. */
export const MAX_PAYLOAD_LIMIT = 1024 * 1024 * 1024;

/** Frame kinds. Responses are the request kind with bit 7 set. */
export const FRAME_KIND = {
  /** Request whose payload is UTF-8 JSON. */
  REQUEST_JSON: 0x01,
  /** Request whose payload is raw bytes. */
  REQUEST_BYTES: 0x02,
  /** Response whose payload is UTF-8 JSON. */
  RESPONSE_JSON: 0x81,
  /** Response whose payload is raw bytes. */
  RESPONSE_BYTES: 0x82,
  /** The agent could not answer; the payload is a UTF-8 message. */
  ERROR: 0xff,
} as const;

/** One decoded frame. */
export interface Frame {
  /** {@link FRAME_KIND} value. */
  kind: number;
  /** Request id. */
  id: number;
  /** The payload (a view: copy it if it must outlive the next push). */
  payload: Buffer;
}

const KINDS = new Set<number>(Object.values(FRAME_KIND));

/** Whether `kind` is one of {@link FRAME_KIND}. */
export function isFrameKind(kind: number): boolean {
  return KINDS.has(kind);
}

/** Builds a frame's 12-byte header. */
export function encodeFrameHeader(kind: number, id: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  h[0] = FRAME_MAGIC_0;
  h[1] = FRAME_MAGIC_1;
  h[2] = FRAME_VERSION;
  h[3] = kind;
  h.writeUInt32LE(id >>> 0, 4);
  h.writeUInt32LE(length >>> 0, 8);
  return h;
}

/** Header and payload as one buffer. */
export function encodeFrame(kind: number, id: number, payload: Uint8Array): Buffer {
  return Buffer.concat([encodeFrameHeader(kind, id, payload.length), payload]);
}

/**
 * Incremental frame decoder. {@link push} returns the frames completed by a chunk and throws
 * {@link InvokeError} `PROTOCOL` (bad magic, version or kind) or `OVERSIZE` (length over the limit)
 * as soon as a header shows it; after a throw the decoder stays failed.
 */
export class FrameDecoder {
  private readonly maxPayload: number;
  private header = Buffer.alloc(FRAME_HEADER_SIZE);
  private headerFill = 0;
  private payload: Buffer | null = null;
  private payloadFill = 0;
  private kind = 0;
  private id = 0;
  private failed: InvokeError | null = null;

  /** @param maxPayload largest payload accepted */
  constructor(maxPayload = DEFAULT_MAX_PAYLOAD) {
    this.maxPayload = maxPayload;
  }

  /** Bytes of an unfinished frame held now. */
  get buffered(): number {
    return this.headerFill + this.payloadFill;
  }

  /** Whether the decoder sits between frames (nothing of a next frame received). */
  get idle(): boolean {
    return this.headerFill === 0 && this.payload === null;
  }

  /** Consumes `chunk`; returns the frames it completed, in order. */
  push(chunk: Uint8Array): Frame[] {
    if (this.failed !== null) throw this.failed;
    const out: Frame[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.payload === null) {
        const n = Math.min(FRAME_HEADER_SIZE - this.headerFill, chunk.length - at);
        this.header.set(chunk.subarray(at, at + n), this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill < FRAME_HEADER_SIZE) break;
        this.startPayload();
        if (this.payload!.length > 0) continue;
      } else {
        const n = Math.min(this.payload.length - this.payloadFill, chunk.length - at);
        this.payload.set(chunk.subarray(at, at + n), this.payloadFill);
        this.payloadFill += n;
        at += n;
        if (this.payloadFill < this.payload.length) break;
      }
      out.push({ kind: this.kind, id: this.id, payload: this.payload! });
      this.payload = null;
      this.payloadFill = 0;
      this.headerFill = 0;
    }
    return out;
  }

  private startPayload(): void {
    const h = this.header;
    const fail = (e: InvokeError) => {
      this.failed = e;
      throw e;
    };
    if (h[0] !== FRAME_MAGIC_0 || h[1] !== FRAME_MAGIC_1) fail(new InvokeError('PROTOCOL', `bad frame magic 0x${h[0].toString(16)} 0x${h[1].toString(16)}`));
    if (h[2] !== FRAME_VERSION) fail(new InvokeError('PROTOCOL', `unsupported frame version ${h[2]}`));
    if (!KINDS.has(h[3])) fail(new InvokeError('PROTOCOL', `unknown frame kind 0x${h[3].toString(16)}`));
    const length = h.readUInt32LE(8);
    if (length > this.maxPayload) fail(new InvokeError('OVERSIZE', `frame of ${length} bytes exceeds the limit of ${this.maxPayload}`));
    this.kind = h[3];
    this.id = h.readUInt32LE(4);
    this.payload = Buffer.allocUnsafe(length);
    this.payloadFill = 0;
  }
}
