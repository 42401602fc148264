/**
 * HTTP/1.1 for the metadata service (RFC 9112, as much as Firecracker's MMDS needs): a bounded
 * parser for requests arriving over the TCP responder, and the MMDS semantics Firecracker
 * documents — GET returns the value at the path (JSON with `Accept: application/json`, otherwise
 * the IMDS text format), `PUT /latest/api/token` issues a v2 session token, v2 GETs need a valid
 * `X-metadata-token`.
 *
 * Everything is a pure function of the bytes received so far, so a connection holds no parser
 * state besides its receive buffer (which keeps snapshots simple).
 * @module
 */
import { MAX_TOKEN_LENGTH, type JsonValue, type MmdsStore } from './store';

/** Bounds on one request. */
export interface HttpLimits {
  /** Request line plus headers plus the blank line, in bytes. */
  readonly maxHeaderBytes: number;
  /** Header fields. */
  readonly maxHeaders: number;
  /** Body bytes (Content-Length). */
  readonly maxBodyBytes: number;
}

/** Default bounds: anything larger is answered 413. */
export const DEFAULT_HTTP_LIMITS: HttpLimits = Object.freeze({ maxHeaderBytes: 8192, maxHeaders: 64, maxBodyBytes: 4096 });

/** A parsed request. */
export interface HttpRequest {
  /** Method token, as sent (methods are case-sensitive). */
  method: string;
  /** The request target as sent. */
  target: string;
  /** Path of the target (absolute-form reduced to its path, query removed). */
  path: string;
  /** HTTP minor version (1.0 or 1.1). */
  minor: 0 | 1;
  /** Header fields by lower-case name (repeated fields joined with ", "). */
  headers: Map<string, string>;
  /** The body (Content-Length bytes). */
  body: Uint8Array;
}

/** Outcome of {@link parseHttpRequest}. */
export type HttpParse =
  | {
      /** More bytes are needed. */
      kind: 'incomplete';
    }
  | {
      /** A complete request. */
      kind: 'request';
      /** The request. */
      request: HttpRequest;
      /** Bytes of the input it took. */
      consumed: number;
    }
  | {
      /** The input can never become a valid request. */
      kind: 'error';
      /** 400 (malformed) or 413 (over a limit). */
      status: 400 | 413;
      /** Why, for the response body. */
      reason: string;
    };

const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const CR = 0x0d;
const LF = 0x0a;

/**
 * Finds the end of the header section: the index just past the first empty line, accepting
 * CRLF or bare LF line ends (RFC 9112 §2.2 lets a recipient accept LF). -1 if not present.
 */
function headerEnd(buf: Uint8Array, from: number, limit: number): number {
  const end = Math.min(buf.length, limit);
  for (let i = from; i < end; i++) {
    if (buf[i] !== LF) continue;
    if (i + 1 < buf.length && buf[i + 1] === LF) return i + 2;
    if (i + 2 < buf.length && buf[i + 1] === CR && buf[i + 2] === LF) return i + 3;
  }
  return -1;
}

/** Parses one request at the start of `buf`. Never throws. */
export function parseHttpRequest(buf: Uint8Array, limits: HttpLimits = DEFAULT_HTTP_LIMITS): HttpParse {
  // RFC 9112 §2.2: ignore empty lines before the request line (bounded by the header limit).
  let start = 0;
  while (start < buf.length && start < limits.maxHeaderBytes && (buf[start] === CR || buf[start] === LF)) start++;
  if (start >= limits.maxHeaderBytes) return { kind: 'error', status: 413, reason: 'request header too large' };
  if (start >= buf.length) return { kind: 'incomplete' };
  const end = headerEnd(buf, start, start + limits.maxHeaderBytes + 1);
  if (end < 0) {
    return buf.length - start > limits.maxHeaderBytes
      ? { kind: 'error', status: 413, reason: 'request header too large' }
      : { kind: 'incomplete' };
  }
  if (end - start > limits.maxHeaderBytes + 2) return { kind: 'error', status: 413, reason: 'request header too large' };
  const text = Buffer.from(buf.buffer, buf.byteOffset + start, end - start).toString('latin1');
  const lines = text.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  // The split leaves the blank line and an empty tail.
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const bad = (reason: string): HttpParse => ({ kind: 'error', status: 400, reason });
  const m = /^([^ ]+) ([^ ]+) HTTP\/1\.([01])$/.exec(lines[0] ?? '');
  if (m === null || !TOKEN_RE.test(m[1])) return bad('malformed request line');
  const [, method, target, minorText] = m;
  let path: string;
  if (target.startsWith('/')) path = target;
  else {
    const abs = /^http:\/\/[^/?#]+(\/[^#]*)?$/i.exec(target);
    if (abs === null) return bad('request target must be a path');
    path = abs[1] ?? '/';
  }
  const q = path.indexOf('?');
  if (q >= 0) path = path.slice(0, q);
  if (/[\x00-\x20\x7f]/.test(path)) return bad('request target contains control characters');

  const headers = new Map<string, string>();
  const fields = lines.length - 1;
  if (fields > limits.maxHeaders) return { kind: 'error', status: 413, reason: 'too many header fields' };
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(':');
    // Obsolete line folding and white space before the colon are refused (RFC 9112 §5.1, §5.2).
    if (colon <= 0 || !TOKEN_RE.test(line.slice(0, colon))) return bad('malformed header field');
    const value = line.slice(colon + 1).trim();
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return bad('control character in a header field');
    const name = line.slice(0, colon).toLowerCase();
    const prev = headers.get(name);
    headers.set(name, prev === undefined ? value : `${prev}, ${value}`);
  }
  if (headers.has('transfer-encoding')) return bad('transfer codings are not supported');
  let length = 0;
  const cl = headers.get('content-length');
  if (cl !== undefined) {
    // Repeated identical values are allowed (RFC 9110 §8.6); anything else is an error.
    const values = cl.split(',').map((v) => v.trim());
    if (!values.every((v) => /^[0-9]{1,10}$/.test(v) && v === values[0])) return bad('malformed Content-Length');
    length = Number(values[0]);
    if (length > limits.maxBodyBytes) return { kind: 'error', status: 413, reason: 'request body too large' };
  }
  if (buf.length < end + length) return { kind: 'incomplete' };
  return {
    kind: 'request',
    request: { method, target, path, minor: minorText === '0' ? 0 : 1, headers, body: buf.slice(end, end + length) },
    consumed: end + length,
  };
}

/** A response before serialization. */
export interface HttpResponse {
  /** Status code. */
  status: number;
  /** Body text (UTF-8). */
  body: string;
  /** Content-Type. */
  contentType: 'text/plain' | 'application/json';
  /** Extra header fields. */
  headers?: [string, string][];
}

/** Reason phrases of the statuses the service sends. */
const REASONS: Record<number, string> = {
  200: 'OK',
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  413: 'Payload Too Large',
  501: 'Not Implemented',
};

/** Serializes a response; `close` adds `Connection: close`. */
export function formatResponse(r: HttpResponse, minor: 0 | 1, close: boolean): Uint8Array {
  const body = Buffer.from(r.body, 'utf8');
  let head = `HTTP/1.${minor} ${r.status} ${REASONS[r.status] ?? 'Unknown'}\r\nServer: Kindling MMDS\r\n`;
  head += `Content-Type: ${r.contentType}\r\nContent-Length: ${body.length}\r\n`;
  for (const [k, v] of r.headers ?? []) head += `${k}: ${v}\r\n`;
  if (close) head += 'Connection: close\r\n';
  head += '\r\n';
  const h = Buffer.from(head, 'latin1');
  const out = new Uint8Array(h.length + body.length);
  out.set(h, 0);
  out.set(body, h.length);
  return out;
}

/**
 * The IMDS text rendering Firecracker uses: an object's keys one per line (sorted, as
 * Firecracker's ordered map lists them), `/` after keys whose value is an object, no trailing
 * newline; a string as itself; null for anything else (answered 501).
 */
export function formatImds(value: JsonValue): string | null {
  if (typeof value === 'string') return value;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const keys = Object.keys(value).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return keys.map((k) => {
    const v = value[k];
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? `${k}/` : k;
  }).join('\n');
}

/** Path that issues v2 session tokens. */
export const TOKEN_PATH = '/latest/api/token';
const TOKEN_HEADERS = ['x-metadata-token', 'x-aws-ec2-metadata-token'];
const TTL_HEADERS = ['x-metadata-token-ttl-seconds', 'x-aws-ec2-metadata-token-ttl-seconds'];

/** Counters the MMDS request handler updates. */
export interface MmdsHttpCounters {
  /** Requests answered (any status). */
  requests: number;
  /** 200 answers to GET. */
  gets: number;
  /** Tokens issued. */
  tokens: number;
  /** 400 answers. */
  badRequests: number;
  /** 401 answers. */
  unauthorized: number;
  /** 404 answers. */
  notFound: number;
  /** 405 answers. */
  methodNotAllowed: number;
  /** 413 answers. */
  tooLarge: number;
  /** 501 answers (a value the IMDS format cannot show). */
  notImplemented: number;
}

/** Fresh zeroed counters. */
export function newHttpCounters(): MmdsHttpCounters {
  return { requests: 0, gets: 0, tokens: 0, badRequests: 0, unauthorized: 0, notFound: 0, methodNotAllowed: 0, tooLarge: 0, notImplemented: 0 };
}

function count(c: MmdsHttpCounters, status: number): void {
  c.requests++;
  if (status === 400) c.badRequests++;
  else if (status === 401) c.unauthorized++;
  else if (status === 404) c.notFound++;
  else if (status === 405) c.methodNotAllowed++;
  else if (status === 413) c.tooLarge++;
  else if (status === 501) c.notImplemented++;
}

const text = (status: number, body: string, headers?: [string, string][]): HttpResponse => ({
  status,
  body,
  contentType: 'text/plain',
  ...(headers ? { headers } : {}),
});

function header(req: HttpRequest, names: readonly string[]): string | undefined {
  for (const n of names) {
    const v = req.headers.get(n);
    if (v !== undefined) return v;
  }
  return undefined;
}

/** Answers one request against the store (Firecracker's MMDS semantics). */
export function answerMmds(store: MmdsStore, req: HttpRequest, counters: MmdsHttpCounters): HttpResponse {
  const r = answer(store, req, counters);
  count(counters, r.status);
  return r;
}

function answer(store: MmdsStore, req: HttpRequest, counters: MmdsHttpCounters): HttpResponse {
  const path = req.path.replace(/\/{2,}/g, '/');
  if (req.method === 'PUT') {
    if (req.headers.has('x-forwarded-for')) return text(400, 'Invalid header: X-Forwarded-For is not accepted.');
    if (path !== TOKEN_PATH) return text(404, `Resource not found: ${req.path}.`);
    const ttlText = header(req, TTL_HEADERS);
    if (ttlText === undefined) {
      return text(400, 'Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token\'s lifetime.');
    }
    const ttl = /^[0-9]{1,10}$/.test(ttlText) ? Number(ttlText) : NaN;
    const token = Number.isNaN(ttl) ? null : store.issueToken(ttl);
    if (token === null) return text(400, `Invalid time to live value provided for token: ${ttlText}. Please provide a value between 1 and 21600.`);
    counters.tokens++;
    return text(200, token, [['X-metadata-token-ttl-seconds', String(ttl)]]);
  }
  if (req.method !== 'GET') return text(405, 'Not allowed HTTP method.', [['Allow', 'GET, PUT']]);
  if (store.version === 'v2') {
    const token = header(req, TOKEN_HEADERS);
    if (token === undefined) return text(401, 'No MMDS token provided. Use `X-metadata-token` header to specify the session token.');
    if (token.length > MAX_TOKEN_LENGTH || !store.isValidToken(token)) return text(401, 'MMDS token not valid.');
  }
  const found = store.lookup(path);
  if (!found.found) return text(404, `Resource not found: ${req.path}.`);
  const accept = (req.headers.get('accept') ?? '').toLowerCase();
  if (/(^|[\s,])application\/json\s*(;|,|$)/.test(accept)) {
    counters.gets++;
    return { status: 200, body: JSON.stringify(found.value), contentType: 'application/json' };
  }
  const imds = formatImds(found.value);
  if (imds === null) return text(501, 'Cannot retrieve value. The value has an unsupported type.');
  counters.gets++;
  return text(200, imds);
}

/** What a stream handler did with the bytes at the front of a connection's input. */
export interface StreamStep {
  /** Input bytes used up. */
  consumed: number;
  /** Bytes to send back. */
  reply?: Uint8Array;
  /** Close the connection once the reply is sent. */
  close?: boolean;
}

/**
 * The MMDS as a byte-stream handler for the TCP responder: answers the first complete request in
 * `input`. Malformed and oversize requests are answered 400/413 and close the connection (the
 * rest of the stream cannot be trusted); HTTP/1.0 and `Connection: close` close after the answer.
 */
export function mmdsStreamHandler(store: MmdsStore, counters: MmdsHttpCounters, limits: HttpLimits = DEFAULT_HTTP_LIMITS) {
  return (input: Uint8Array): StreamStep => {
    const p = parseHttpRequest(input, limits);
    if (p.kind === 'incomplete') return { consumed: 0 };
    if (p.kind === 'error') {
      count(counters, p.status);
      return { consumed: input.length, reply: formatResponse(text(p.status, `${p.reason}.`), 1, true), close: true };
    }
    const req = p.request;
    const res = answerMmds(store, req, counters);
    const conn = (req.headers.get('connection') ?? '').toLowerCase();
    const close = req.minor === 0 ? !/(^|,)\s*keep-alive\s*(,|$)/.test(conn) : /(^|,)\s*close\s*(,|$)/.test(conn);
    return { consumed: p.consumed, reply: formatResponse(res, req.minor, close), close };
  };
}
