/**
 * The control protocol between a MicroVM and its jailed child, over a stream socket pair.
 *
 * A frame is `u32 length | u32 jsonLength | JSON | bytes` (little endian; `length` counts what
 * follows it). The JSON is one message (its `t` names the type); the bytes, when there are any,
 * are the message's binary payload (serial data). Descriptors travel on a second socket pair
 * (SOCK_SEQPACKET, SCM_RIGHTS) as numbered batches that control messages refer to by number; a
 * batch is always sent before the message that names it.
 *
 * Parent → child: `start`, `restore`, `call` (a MachineHandle method or a vsock operation,
 * answered by a `reply` with the same id), `vsockAttach` (the parent's answer to `vsockIncoming`),
 * `vsockUdsAccept` (a client of the udsPath) and `vsockUdsConnected` (the answer to `vsockUdsConnect`).
 * Child → parent: `ready` (the child has loaded everything and installed its seccomp filter),
 * `started`/`failed`, `reply`, the machine's events `serial`, `space`, `bootDone`, `exited`, and
 * `vsockIncoming`, `vsockUdsConnect`. vsock connections do not cross this socket: each is a socket pair of its own
 * whose child end travels as a descriptor (see vsock-bridge.ts).
 *
 * Everything the child sends is untrusted: frames are bounded ({@link MAX_CHILD_FRAME}), every
 * message is checked against its type here before the parent acts on it, and a violation ends
 * the child (the parent never throws because of what the child sent).
 * @module
 */
import type { ExitInfo } from '../vm/exit-dispatch';

/** Largest frame the parent accepts from the child (serial chunks, metrics, errors). */
export const MAX_CHILD_FRAME = 4 * 1024 * 1024;
/** Largest frame the child accepts from the parent (a restore carries the snapshot's state). */
export const MAX_PARENT_FRAME = 256 * 1024 * 1024;
/** Longest string field the parent keeps from the child (messages, names). */
export const MAX_CHILD_STRING = 8192;
/** Deepest JSON the parent accepts from the child (metrics nest three levels). */
export const MAX_CHILD_DEPTH = 8;
/** Most keys and array items, in total, of one message from the child. */
export const MAX_CHILD_NODES = 20000;

const HEADER = 8;

/** The MachineHandle methods a `call` can name. */
export type CallOp = 'serialInput' | 'sendCtrlAltDel' | 'updateDevice' | 'deviceStats' | 'metrics' | 'pause' | 'resume' | 'snapshot' | 'stop' | 'testAttempt'
  | 'vsockConnect' | 'vsockListen' | 'vsockUnlisten' | 'mmdsSet' | 'mmdsGet';

/** What an error looks like on the wire. */
export interface WireError {
  /** The error class's name (`ConfigError`, `SnapshotError`…). */
  name: string;
  /** Its code, when it has one. */
  code?: string;
  /** Its message. */
  message: string;
  /** SnapshotError's details. */
  field?: string;
  /** SnapshotError's details. */
  expected?: string;
  /** SnapshotError's details. */
  actual?: string;
  /** NativeError's failing call. */
  ioctl?: string;
  /** NativeError's errno. */
  errno?: number;
}

/** An ExitInfo on the wire: `rip` as a decimal string. */
export type WireExitInfo = Omit<ExitInfo, 'rip'> & { rip?: string };

/** A message from the child, checked. */
export type ChildMessage =
  | { t: 'ready' }
  | { t: 'started'; cmdline: string }
  | { t: 'failed'; error: WireError }
  | { t: 'reply'; id: number; value?: unknown; error?: WireError }
  | { t: 'serial'; bytes: Buffer }
  | { t: 'space' }
  | { t: 'bootDone'; info: { elapsedUs: number; count: number } }
  | { t: 'exited'; info: ExitInfo; metrics?: unknown }
  /** A guest connected to a host port the parent listens on; `conn` names it in `vsockAttach`. */
  | { t: 'vsockIncoming'; conn: number; port: number }
  /** The device forwards a guest connection to `<udsPath>_<port>`; answered by `vsockUdsConnected`. */
  | { t: 'vsockUdsConnect'; id: number; port: number };

/** Encodes one frame. */
export function encodeFrame(message: object, bytes?: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(message), 'utf8');
  const extra = bytes ? bytes.byteLength : 0;
  const out = Buffer.allocUnsafe(HEADER + json.length + extra);
  out.writeUInt32LE(4 + json.length + extra, 0);
  out.writeUInt32LE(json.length, 4);
  json.copy(out, HEADER);
  if (bytes && extra > 0) Buffer.from(bytes.buffer, bytes.byteOffset, extra).copy(out, HEADER + json.length);
  return out;
}

/**
 * Splits a byte stream into frames: `onFrame(json, bytes)` per frame, in order. A frame longer than
 * `maxFrame` or malformed calls `onError` once and stops the reader (the stream cannot be
 * resynchronized). JSON that does not parse is an error too.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  /**
   * @param maxFrame largest accepted `length`
   * @param onFrame called per frame with the parsed JSON and the binary part (possibly empty)
   * @param onError called once, for the first violation
   */
  constructor(
    private readonly maxFrame: number,
    private readonly onFrame: (json: unknown, bytes: Buffer) => void,
    private readonly onError: (reason: string) => void,
  ) {}

  /** Feeds received bytes. */
  push(chunk: Buffer): void {
    if (this.failed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.failed && this.buffered >= 4) {
      const head = this.peek(4);
      const length = head.readUInt32LE(0);
      if (length < 4 || length > this.maxFrame) return this.fail(`frame of ${length} bytes (limit ${this.maxFrame})`);
      if (this.buffered < 4 + length) return;
      const frame = this.take(4 + length);
      const jsonLength = frame.readUInt32LE(4);
      if (jsonLength > length - 4) return this.fail(`JSON part of ${jsonLength} bytes in a frame of ${length}`);
      let json: unknown;
      try {
        json = JSON.parse(frame.toString('utf8', HEADER, HEADER + jsonLength));
      } catch {
        return this.fail('a frame whose JSON does not parse');
      }
      this.onFrame(json, frame.subarray(HEADER + jsonLength));
    }
  }

  private fail(reason: string): void {
    this.failed = true;
    this.chunks = [];
    this.buffered = 0;
    this.onError(reason);
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0];
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0];
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const frame = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return frame;
  }
}

/** Thrown by the checks below: what was wrong with a message from the child. */
export class ProtocolViolation extends Error {}

function violation(what: string): never {
  throw new ProtocolViolation(what);
}

function str(v: unknown, what: string, max = MAX_CHILD_STRING): string {
  if (typeof v !== 'string' || v.length > max) violation(`${what} must be a string of at most ${max} characters`);
  return v;
}

function optStr(v: unknown, what: string): string | undefined {
  return v === undefined ? undefined : str(v, what);
}

function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) violation(`${what} must be an integer in [${min}, ${max}]`);
  return v;
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) violation(`${what} must be an object`);
  return v as Record<string, unknown>;
}

/**
 * Checks that `v` is plain JSON within the child limits (depth, total size, string lengths) and
 * returns it; used for values whose shape the caller checks further (metrics, snapshot info).
 */
export function boundedJson(v: unknown, what: string): unknown {
  let nodes = 0;
  const walk = (x: unknown, depth: number): void => {
    if (++nodes > MAX_CHILD_NODES) violation(`${what} is too large`);
    if (depth > MAX_CHILD_DEPTH) violation(`${what} nests too deeply`);
    if (x === null || typeof x === 'boolean') return;
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) violation(`${what} holds a non-finite number`);
      return;
    }
    if (typeof x === 'string') {
      if (x.length > MAX_CHILD_STRING) violation(`${what} holds an overlong string`);
      return;
    }
    if (Array.isArray(x)) {
      for (const e of x) walk(e, depth + 1);
      return;
    }
    if (typeof x === 'object') {
      for (const [k, e] of Object.entries(x as object)) {
        if (k.length > 256 || k === '__proto__') violation(`${what} has a bad key`);
        walk(e, depth + 1);
      }
      return;
    }
    violation(`${what} holds a ${typeof x}`);
  };
  walk(v, 0);
  return v;
}

/** Checks a WireError. */
export function checkWireError(v: unknown): WireError {
  const o = obj(v, 'error');
  const out: WireError = { name: str(o.name, 'error.name', 64), message: str(o.message, 'error.message') };
  if (o.code !== undefined) out.code = str(o.code, 'error.code', 64);
  for (const k of ['field', 'expected', 'actual', 'ioctl'] as const) {
    const s = optStr(o[k], `error.${k}`);
    if (s !== undefined) out[k] = s;
  }
  if (o.errno !== undefined) out.errno = int(o.errno, 'error.errno', 0, 4095);
  return out;
}

const EXIT_REASONS = ['reset', 'shutdown', 'error', 'stopped'] as const;

/** Checks an exit info from the child and turns `rip` back into a bigint. */
export function checkExitInfo(v: unknown): ExitInfo {
  const o = obj(v, 'exit info');
  if (!(EXIT_REASONS as readonly unknown[]).includes(o.reason)) violation('exit info reason is not one of reset, shutdown, error, stopped');
  const info: ExitInfo = { reason: o.reason as ExitInfo['reason'] };
  if (o.vcpu !== undefined) info.vcpu = int(o.vcpu, 'exit info vcpu', 0, 1024);
  if (o.message !== undefined) info.message = str(o.message, 'exit info message');
  if (o.rip !== undefined) {
    const rip = str(o.rip, 'exit info rip', 20);
    if (!/^\d{1,20}$/.test(rip) || BigInt(rip) > 0xffffffffffffffffn) violation('exit info rip must be a u64 in decimal');
    info.rip = BigInt(rip);
  }
  if (o.instructionBytes !== undefined) {
    const b = str(o.instructionBytes, 'exit info instructionBytes', 64);
    if (!/^[0-9a-f ]*$/i.test(b)) violation('exit info instructionBytes must be hex');
    info.instructionBytes = b;
  }
  if (o.kvmExitReason !== undefined) info.kvmExitReason = int(o.kvmExitReason, 'exit info kvmExitReason', 0, 0xffffffff);
  if (o.closeErrors !== undefined) {
    if (!Array.isArray(o.closeErrors) || o.closeErrors.length > 64) violation('exit info closeErrors must be an array of at most 64');
    info.closeErrors = o.closeErrors.map((e, i) => {
      const c = obj(e, `closeErrors[${i}]`);
      return { id: str(c.id, 'closeErrors id', 64), error: str(c.error, 'closeErrors error') };
    });
  }
  return info;
}

/** Puts an ExitInfo on the wire (`rip` as a string). */
export function wireExitInfo(info: ExitInfo): WireExitInfo {
  const { rip, ...rest } = info;
  return rip === undefined ? rest : { ...rest, rip: rip.toString() };
}

/**
 * Checks a parsed frame from the child: its type and every field the parent will use.
 * @throws ProtocolViolation saying what is wrong
 */
export function checkChildMessage(json: unknown, bytes: Buffer): ChildMessage {
  const o = obj(json, 'message');
  switch (o.t) {
    case 'ready':
    case 'space':
      return { t: o.t };
    case 'started':
      return { t: 'started', cmdline: str(o.cmdline, 'cmdline', 4096) };
    case 'failed':
      return { t: 'failed', error: checkWireError(o.error) };
    case 'reply': {
      const id = int(o.id, 'reply id', 1, Number.MAX_SAFE_INTEGER);
      if (o.error !== undefined) return { t: 'reply', id, error: checkWireError(o.error) };
      return { t: 'reply', id, value: o.value === undefined ? undefined : boundedJson(o.value, 'reply value') };
    }
    case 'serial':
      if (bytes.length === 0) violation('serial message without bytes');
      return { t: 'serial', bytes };
    case 'bootDone': {
      const info = obj(o.info, 'bootDone info');
      return { t: 'bootDone', info: { elapsedUs: int(info.elapsedUs, 'bootDone elapsedUs', 0, Number.MAX_SAFE_INTEGER), count: int(info.count, 'bootDone count', 1, 0xffffffff) } };
    }
    case 'exited':
      return { t: 'exited', info: checkExitInfo(o.info), ...(o.metrics !== undefined ? { metrics: boundedJson(o.metrics, 'final metrics') } : {}) };
    case 'vsockUdsConnect':
      return { t: 'vsockUdsConnect', id: int(o.id, 'vsockUdsConnect id', 0, Number.MAX_SAFE_INTEGER), port: int(o.port, 'vsockUdsConnect port', 0, 0xffffffff) };
    case 'vsockIncoming':
      return { t: 'vsockIncoming', conn: int(o.conn, 'vsockIncoming conn', 0, Number.MAX_SAFE_INTEGER), port: int(o.port, 'vsockIncoming port', 0, 0xffffffff) };
    default:
      return violation(`unknown message type ${typeof o.t === 'string' ? JSON.stringify(o.t.slice(0, 32)) : typeof o.t}`);
  }
}

/** Describes an error for the wire (anything thrown: never throws itself). */
export function toWireError(e: unknown): WireError {
  if (!(e instanceof Error)) return { name: 'Error', message: String(e).slice(0, MAX_CHILD_STRING) };
  const x = e as Error & { code?: unknown; field?: unknown; expected?: unknown; actual?: unknown; ioctl?: unknown; errno?: unknown };
  const out: WireError = { name: x.name.slice(0, 64), message: x.message.slice(0, MAX_CHILD_STRING) };
  if (typeof x.code === 'string') out.code = x.code.slice(0, 64);
  for (const k of ['field', 'expected', 'actual', 'ioctl'] as const) {
    if (typeof x[k] === 'string') out[k] = (x[k] as string).slice(0, MAX_CHILD_STRING);
  }
  if (typeof x.errno === 'number' && Number.isInteger(x.errno) && x.errno >= 0 && x.errno <= 4095) out.errno = x.errno;
  return out;
}
