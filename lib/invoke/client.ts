/**
 * `vm.invoke()`: one request and its response with a guest agent, over vsock connections that are
 * kept open and reused between invocations.
 *
 * An {@link InvokeClient} talks to one agent port. It keeps up to `poolSize` connections: an
 * invocation takes an idle one (or opens one), sends one request frame, waits for the response
 * frame with the same id, and returns the connection to the pool. Invocations beyond the pool wait
 * their turn. A connection that saw a timeout, an error frame, a protocol error or its end is
 * dropped, never reused. {@link Invoker} keeps one client per port (what the MicroVM façade delegates to).
 * @module
 */
import type { Duplex } from 'stream';
import type { TimerFunctions } from '../ratelimit';
import { InvokeError } from './errors';
import {
  DEFAULT_MAX_PAYLOAD,
  FRAME_KIND,
  FrameDecoder,
  MAX_PAYLOAD_LIMIT,
  encodeFrameHeader,
  type Frame,
} from './framing';

/** What an invocation sends: bytes (a Buffer or a string, sent as UTF-8) or a JSON value. */
export type InvokePayload = Buffer | Uint8Array | string | object | number | boolean | null;

/** What an invocation resolves to: a Buffer for a bytes response, the parsed value for JSON. */
export type InvokeResult = Buffer | unknown;

/** Per-call options of `vm.invoke()`. */
export interface InvokeOptions {
  /** The agent's vsock port (default {@link DEFAULT_INVOKE_PORT}). */
  port?: number;
  /** Time for the whole invocation, connecting included, in ms (default 30000). */
  timeoutMs?: number;
}

/** Default agent port. */
export const DEFAULT_INVOKE_PORT = 1024;
/** Default {@link InvokeOptions.timeoutMs}. */
export const DEFAULT_INVOKE_TIMEOUT_MS = 30_000;
/** Default {@link InvokeClientOptions.poolSize}. */
export const DEFAULT_INVOKE_POOL_SIZE = 4;

/** Options of an {@link InvokeClient}. */
export interface InvokeClientOptions {
  /** Opens a new connection to the agent (e.g. `() => vsock.connect(port)`). */
  connect: () => Promise<Duplex>;
  /** Largest request and response payload in bytes (default 16 MiB). */
  maxPayload?: number;
  /** Connections kept open at once (default 4). */
  poolSize?: number;
  /** Default timeout in ms (default 30000). */
  timeoutMs?: number;
  /** Timers (default the global ones). */
  timers?: TimerFunctions;
}

/** Counters of an {@link InvokeClient}. */
export interface InvokeMetrics {
  /** Invocations started. */
  readonly invocations: number;
  /** Invocations answered (JSON, bytes or an agent error frame). */
  readonly responses: number;
  /** Invocations that failed (any reason). */
  readonly failures: number;
  /** Timeouts. */
  readonly timeouts: number;
  /** Connections opened. */
  readonly connectionsOpened: number;
  /** Invocations that reused an open connection. */
  readonly reused: number;
  /** Connections open now. */
  readonly openConnections: number;
}

const defaultTimers: TimerFunctions = {
  setTimeout: (cb, ms) => setTimeout(cb, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** A request ready to send: its frame kind and payload bytes. */
export interface EncodedRequest {
  /** REQUEST_JSON or REQUEST_BYTES. */
  kind: number;
  /** The payload. */
  bytes: Buffer;
}

/** Encodes a payload as a request frame's kind and bytes. @throws InvokeError BAD_PAYLOAD */
export function encodeRequest(payload: InvokePayload): EncodedRequest {
  if (Buffer.isBuffer(payload)) return { kind: FRAME_KIND.REQUEST_BYTES, bytes: payload };
  if (payload instanceof Uint8Array) return { kind: FRAME_KIND.REQUEST_BYTES, bytes: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength) };
  if (typeof payload === 'string') return { kind: FRAME_KIND.REQUEST_BYTES, bytes: Buffer.from(payload, 'utf8') };
  let text: string | undefined;
  try {
    text = JSON.stringify(payload);
  } catch (e) {
    throw new InvokeError('BAD_PAYLOAD', `payload is not JSON-serializable: ${(e as Error).message}`, { cause: e });
  }
  if (text === undefined) throw new InvokeError('BAD_PAYLOAD', `payload of type ${typeof payload} is not JSON-serializable`);
  return { kind: FRAME_KIND.REQUEST_JSON, bytes: Buffer.from(text, 'utf8') };
}

/** Turns a response frame into the invocation's result. @throws InvokeError AGENT_ERROR, BAD_RESPONSE, PROTOCOL */
export function decodeResponse(frame: Frame): InvokeResult {
  switch (frame.kind) {
    case FRAME_KIND.RESPONSE_BYTES:
      return frame.payload;
    case FRAME_KIND.RESPONSE_JSON:
      try {
        return JSON.parse(frame.payload.toString('utf8'));
      } catch (e) {
        throw new InvokeError('BAD_RESPONSE', `the agent's JSON response does not parse: ${(e as Error).message}`, { cause: e });
      }
    case FRAME_KIND.ERROR:
      throw new InvokeError('AGENT_ERROR', `agent error: ${frame.payload.toString('utf8').slice(0, 4096)}`);
    default:
      throw new InvokeError('PROTOCOL', `the agent sent a frame of kind 0x${frame.kind.toString(16)} where a response belongs`);
  }
}

interface Call {
  id: number;
  resolve: (v: InvokeResult) => void;
  reject: (e: Error) => void;
}

/** One open connection to the agent, with its decoder and the call in flight (at most one). */
class AgentConnection {
  readonly decoder: FrameDecoder;
  call: Call | null = null;
  dead = false;
  private nextId = 1;

  constructor(
    readonly stream: Duplex,
    maxPayload: number,
    private readonly onDead: (c: AgentConnection) => void,
  ) {
    this.decoder = new FrameDecoder(maxPayload);
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.die(new InvokeError('AGENT_CLOSED', 'the agent closed the connection before answering')));
    stream.on('close', () => this.die(new InvokeError('AGENT_CLOSED', 'the connection to the agent closed before the answer')));
    stream.on('error', (e) => this.die(new InvokeError('AGENT_CLOSED', `the connection to the agent failed: ${e.message}`, { cause: e })));
  }

  send(kind: number, bytes: Buffer, call: Omit<Call, 'id'>): void {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    this.call = { id, ...call };
    this.stream.write(encodeFrameHeader(kind, id, bytes.length));
    if (bytes.length > 0) this.stream.write(bytes);
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.die(e as InvokeError);
      return;
    }
    for (const f of frames) {
      const call = this.call;
      if (call === null || f.id !== call.id) {
        this.die(new InvokeError('PROTOCOL', call === null ? `unsolicited frame (id ${f.id}) from the agent` : `response id ${f.id} does not match request ${call.id}`));
        return;
      }
      this.call = null;
      let result: InvokeResult;
      try {
        result = decodeResponse(f);
      } catch (e) {
        call.reject(e as Error);
        // After an error frame the agent may close the connection (it cannot skip an oversize
        // payload, for one): reusing it would race with that close. It is retired either way.
        this.die(e as InvokeError);
        return;
      }
      call.resolve(result);
    }
  }

  /** Drops the connection; a call in flight fails with `err`. */
  die(err: InvokeError): void {
    if (this.dead) return;
    this.dead = true;
    const call = this.call;
    this.call = null;
    this.stream.destroy();
    this.onDead(this);
    call?.reject(err);
  }
}

/** Invocations against one agent port; see the module comment. */
export class InvokeClient {
  private readonly connectFn: () => Promise<Duplex>;
  private readonly maxPayload: number;
  private readonly poolSize: number;
  private readonly timeoutMs: number;
  private readonly timers: TimerFunctions;
  private readonly idle: AgentConnection[] = [];
  private readonly all = new Set<AgentConnection>();
  private opening = 0;
  private readonly waiters: { take: (c: AgentConnection | null, err?: Error) => void }[] = [];
  private closed = false;
  private readonly c = { invocations: 0, responses: 0, failures: 0, timeouts: 0, connectionsOpened: 0, reused: 0 };

  /** @throws InvokeError BAD_PAYLOAD for invalid limits */
  constructor(options: InvokeClientOptions) {
    if (options === null || typeof options !== 'object' || typeof options.connect !== 'function') {
      throw new InvokeError('BAD_PAYLOAD', 'InvokeClient needs a connect function');
    }
    const maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    if (!Number.isInteger(maxPayload) || maxPayload < 0 || maxPayload > MAX_PAYLOAD_LIMIT) {
      throw new InvokeError('BAD_PAYLOAD', `maxPayload must be an integer in [0, ${MAX_PAYLOAD_LIMIT}]`);
    }
    const poolSize = options.poolSize ?? DEFAULT_INVOKE_POOL_SIZE;
    if (!Number.isInteger(poolSize) || poolSize < 1 || poolSize > 1024) throw new InvokeError('BAD_PAYLOAD', 'poolSize must be an integer in [1, 1024]');
    this.connectFn = options.connect;
    this.maxPayload = maxPayload;
    this.poolSize = poolSize;
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_INVOKE_TIMEOUT_MS);
    this.timers = options.timers ?? defaultTimers;
  }

  /**
   * Sends `payload` and resolves with the agent's response: a Buffer for a bytes response, the
   * parsed value for a JSON one. Rejects with {@link InvokeError}.
   */
  invoke(payload: InvokePayload, options: { timeoutMs?: number } = {}): Promise<InvokeResult> {
    this.c.invocations++;
    let timeoutMs: number;
    let req: EncodedRequest;
    try {
      if (this.closed) throw new InvokeError('CLOSED', 'the invoke client is closed');
      timeoutMs = options.timeoutMs === undefined ? this.timeoutMs : checkTimeout(options.timeoutMs);
      req = encodeRequest(payload);
      if (req.bytes.length > this.maxPayload) {
        throw new InvokeError('OVERSIZE', `request of ${req.bytes.length} bytes exceeds the limit of ${this.maxPayload}`);
      }
    } catch (e) {
      this.c.failures++;
      return Promise.reject(e);
    }
    return new Promise<InvokeResult>((resolve, reject) => {
      let settled = false;
      let conn: AgentConnection | null = null;
      const finish = (err: Error | null, value?: InvokeResult) => {
        if (settled) return;
        settled = true;
        this.timers.clearTimeout(timer);
        if (err !== null) {
          this.c.failures++;
          reject(err);
        } else {
          this.c.responses++;
          resolve(value);
        }
        if (conn !== null && !conn.dead && conn.call === null) this.release(conn);
      };
      const timer = this.timers.setTimeout(() => {
        if (settled) return;
        this.c.timeouts++;
        const err = new InvokeError('TIMEOUT', `no response from the agent within ${timeoutMs} ms`);
        // The answer may still come: this connection can no longer be trusted.
        if (conn !== null) conn.die(err);
        finish(err);
      }, timeoutMs);
      this.acquire((c, err) => {
        if (c === null) {
          finish(err ?? new InvokeError('CONNECT_FAILED', 'no connection to the agent'));
          return;
        }
        if (settled) {
          this.release(c);
          return;
        }
        conn = c;
        c.send(req.kind, req.bytes, {
          resolve: (v) => finish(null, v),
          reject: (e) => finish(e),
        });
      });
    });
  }

  /** Counters. */
  metrics(): InvokeMetrics {
    return { ...this.c, openConnections: this.all.size };
  }

  /** Closes every connection; waiting and later invocations reject with CLOSED. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new InvokeError('CLOSED', 'the invoke client was closed');
    for (const w of this.waiters.splice(0)) w.take(null, err);
    for (const c of [...this.all]) c.die(err);
    this.idle.length = 0;
  }

  private acquire(take: (c: AgentConnection | null, err?: Error) => void): void {
    while (this.idle.length > 0) {
      const c = this.idle.pop()!;
      if (c.dead) continue;
      this.c.reused++;
      take(c);
      return;
    }
    if (this.all.size + this.opening < this.poolSize) {
      this.open(take);
      return;
    }
    this.waiters.push({ take });
  }

  private open(take: (c: AgentConnection | null, err?: Error) => void): void {
    this.opening++;
    let p: Promise<Duplex>;
    try {
      p = this.connectFn();
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (stream) => {
        this.opening--;
        if (this.closed) {
          stream.destroy();
          take(null, new InvokeError('CLOSED', 'the invoke client was closed'));
          return;
        }
        this.c.connectionsOpened++;
        const conn = new AgentConnection(stream, this.maxPayload, (dead) => this.forget(dead));
        this.all.add(conn);
        take(conn);
      },
      (e: unknown) => {
        this.opening--;
        take(null, new InvokeError('CONNECT_FAILED', `cannot connect to the agent: ${(e as Error)?.message ?? String(e)}`, { cause: e }));
        // A waiter may now open its own connection (and see its own failure).
        this.serveWaiter();
      },
    );
  }

  private release(conn: AgentConnection): void {
    if (conn.dead) return;
    const w = this.waiters.shift();
    if (w !== undefined) {
      this.c.reused++;
      w.take(conn);
      return;
    }
    this.idle.push(conn);
  }

  private forget(conn: AgentConnection): void {
    this.all.delete(conn);
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    this.serveWaiter();
  }

  private serveWaiter(): void {
    if (this.closed || this.waiters.length === 0) return;
    if (this.all.size + this.opening < this.poolSize) this.open(this.waiters.shift()!.take);
  }
}

function checkTimeout(ms: unknown): number {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0 || ms > 2 ** 31 - 1) {
    throw new InvokeError('BAD_PAYLOAD', `timeoutMs must be a number of milliseconds in (0, 2^31), not ${String(ms)}`);
  }
  return ms;
}

/**
 * One {@link InvokeClient} per agent port, created on first use: the object behind `vm.invoke()`.
 * `connect(port)` opens a connection to a guest port (e.g. `(p) => vsock.connect(p)`).
 */
export class Invoker {
  private readonly clients = new Map<number, InvokeClient>();
  private readonly connect: (port: number) => Promise<Duplex>;
  private readonly defaults: Omit<InvokeClientOptions, 'connect'>;

  /**
   * @param connect opens a connection to a guest port
   * @param defaults options every per-port client gets
   */
  constructor(connect: (port: number) => Promise<Duplex>, defaults: Omit<InvokeClientOptions, 'connect'> = {}) {
    this.connect = connect;
    this.defaults = defaults;
  }

  /** Sends `payload` to the agent on `options.port` (default 1024); see {@link InvokeClient.invoke}. */
  invoke(payload: InvokePayload, options: InvokeOptions = {}): Promise<InvokeResult> {
    const port = options.port ?? DEFAULT_INVOKE_PORT;
    if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) {
      return Promise.reject(new InvokeError('BAD_PAYLOAD', `port ${String(port)} is not a u32`));
    }
    let client = this.clients.get(port);
    if (client === undefined) {
      client = new InvokeClient({ ...this.defaults, connect: () => this.connect(port) });
      this.clients.set(port, client);
    }
    return client.invoke(payload, options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs });
  }

  /** Counters per port. */
  metrics(): Record<number, InvokeMetrics> {
    const out: Record<number, InvokeMetrics> = {};
    for (const [port, c] of this.clients) out[port] = c.metrics();
    return out;
  }

  /** Closes every client. */
  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
