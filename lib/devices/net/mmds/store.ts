/**
 * The metadata store behind the MMDS: one JSON document per VM, replaced with `set`, changed with
 * an RFC 7396 merge patch, never larger than its size limit (measured as serialized JSON in
 * UTF-8 bytes, as Firecracker does), and the v2 session tokens. It is a {@link Device} in the
 * contract's sense (id `mmds`) so that its state joins snapshots like any device's.
 * @module
 */
import { randomBytes } from 'crypto';
import { KindlingError } from '../../../errors';
import { DeviceError, stateField, type Device, type StateObject, type StateValue } from '../../contract';
import type { MmdsConfig } from '../config';

/** Why a metadata change was refused. */
export type MmdsErrorCode =
  /** The serialized result would exceed the size limit; the old data is kept. */
  | 'TOO_LARGE'
  /** The value is not a JSON object (or cannot be serialized as JSON); the old data is kept. */
  | 'INVALID_DATA';

/** A refused `setMetadata` / `updateMetadata`. */
export class MmdsError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: MmdsErrorCode;
  /**
   * @param code why
   * @param message details for humans
   */
  constructor(code: MmdsErrorCode, message: string) {
    super(message);
    this.name = 'MmdsError';
    this.code = code;
  }
}

/** A JSON value as the store holds it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Smallest token lifetime a PUT /latest/api/token may ask for, in seconds (Firecracker's). */
export const MIN_TOKEN_TTL_SECONDS = 1;
/** Largest token lifetime, in seconds (6 hours, Firecracker's and EC2's). */
export const MAX_TOKEN_TTL_SECONDS = 21600;
/** Tokens longer than this are refused without a lookup (Firecracker's limit). */
export const MAX_TOKEN_LENGTH = 70;
/** Live tokens kept at most; issuing beyond evicts the one closest to expiry. */
export const DEFAULT_MAX_TOKENS = 1024;
/** Version of {@link MmdsStore.saveState}'s format. */
export const MMDS_STATE_VERSION = 1;

/** Construction options besides the configuration. */
export interface MmdsStoreOptions {
  /** Monotonic clock in milliseconds (default `performance.now`); token expiry follows it. */
  clock?: () => number;
  /** Random bytes for tokens (default `crypto.randomBytes`). */
  random?: (n: number) => Uint8Array;
  /** Bound on live tokens (default {@link DEFAULT_MAX_TOKENS}). */
  maxTokens?: number;
}

/** Counters of the store (in `vm.metrics().mmds`). */
export interface MmdsStoreMetrics {
  /** Serialized size of the current data in bytes. */
  readonly dataBytes: number;
  /** `set` calls that replaced the data. */
  readonly sets: number;
  /** `patch` calls that changed the data. */
  readonly patches: number;
  /** `set` / `patch` calls refused (too large, not an object). */
  readonly rejectedUpdates: number;
  /** Tokens issued. */
  readonly tokensIssued: number;
  /** Tokens alive now. */
  readonly tokensLive: number;
  /** Tokens evicted before their expiry because the bound was reached. */
  readonly tokensEvicted: number;
}

/** Result of a path lookup: the value, or nothing. */
export type MmdsLookup = { found: true; value: JsonValue } | { found: false };

/** RFC 7396 JSON Merge Patch of `target` by `patch`; `target` is not modified. */
export function mergePatch(target: JsonValue | undefined, patch: JsonValue): JsonValue {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: { [key: string]: JsonValue } =
    target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...target } : {};
  for (const key of Object.keys(patch)) {
    const v = patch[key];
    if (v === null) delete out[key];
    else {
      // defineProperty, not assignment: a key named "__proto__" must stay an ordinary key.
      const merged = mergePatch(Object.prototype.hasOwnProperty.call(out, key) ? out[key] : undefined, v);
      Object.defineProperty(out, key, { value: merged, enumerable: true, writable: true, configurable: true });
    }
  }
  return out;
}

function isPlainObject(v: unknown): v is { [key: string]: JsonValue } {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * A clean JSON copy of `value` and its serialized size, or an error: what JSON.stringify keeps
 * is what the guest can see, so the copy is exactly that (functions and undefined dropped,
 * toJSON applied); bigints and cycles are refused.
 */
function toJson(value: unknown, what: string): { json: JsonValue; text: string } {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new MmdsError('INVALID_DATA', `${what} cannot be serialized as JSON: ${(e as Error).message}`);
  }
  if (text === undefined) throw new MmdsError('INVALID_DATA', `${what} is not a JSON value`);
  return { json: JSON.parse(text) as JsonValue, text };
}

/** Reads an RFC 6901 JSON pointer (already split into raw reference tokens) in `doc`. */
function pointer(doc: JsonValue, tokens: readonly string[]): MmdsLookup {
  let cur: JsonValue = doc;
  for (const raw of tokens) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      if (!/^(0|[1-9][0-9]*)$/.test(key) || Number(key) >= cur.length) return { found: false };
      cur = cur[Number(key)];
    } else if (isPlainObject(cur)) {
      if (!Object.prototype.hasOwnProperty.call(cur, key)) return { found: false };
      cur = cur[key];
    } else {
      return { found: false };
    }
  }
  return { found: true, value: cur };
}

/** The MMDS data store and token authority; see the module comment. */
export class MmdsStore implements Device<MmdsStoreMetrics> {
  /** Always `mmds`: one store per VM. */
  readonly id = 'mmds';
  /** Device kind in snapshots. */
  readonly kind = 'mmds';
  /** See {@link MMDS_STATE_VERSION}. */
  readonly stateVersion = MMDS_STATE_VERSION;
  /** The validated configuration. */
  readonly config: MmdsConfig;

  private data: JsonValue = {};
  private dataText = '{}';
  private readonly clock: () => number;
  private readonly random: (n: number) => Uint8Array;
  private readonly maxTokens: number;
  /** Token → expiry time on {@link clock}. */
  private readonly tokens = new Map<string, number>();
  private readonly counters = { sets: 0, patches: 0, rejectedUpdates: 0, tokensIssued: 0, tokensEvicted: 0 };

  /**
   * @param config what `checkMmdsOptions` returned
   * @param options clock, randomness and the token bound (for tests)
   */
  constructor(config: MmdsConfig, options: MmdsStoreOptions = {}) {
    this.config = config;
    this.clock = options.clock ?? (() => performance.now());
    this.random = options.random ?? ((n) => randomBytes(n));
    this.maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  }

  /** `'v1'` or `'v2'`. */
  get version(): 'v1' | 'v2' {
    return this.config.version;
  }

  /** Serialized size of the data in UTF-8 bytes. */
  get size(): number {
    return Buffer.byteLength(this.dataText);
  }

  /**
   * Replaces the data with (a JSON copy of) `value`, which must be a JSON object.
   * @throws MmdsError TOO_LARGE or INVALID_DATA; the old data is kept.
   */
  set(value: unknown): void {
    const { json, text } = this.checked(value, 'metadata');
    this.data = json;
    this.dataText = text;
    this.counters.sets++;
  }

  /**
   * Applies an RFC 7396 merge patch to the data. The result must still be an object within the
   * size limit.
   * @throws MmdsError TOO_LARGE or INVALID_DATA; the old data is kept.
   */
  patch(patch: unknown): void {
    let p: JsonValue;
    try {
      p = toJson(patch, 'metadata patch').json;
    } catch (e) {
      this.counters.rejectedUpdates++;
      throw e;
    }
    const { json, text } = this.checked(mergePatch(this.data, p), 'patched metadata');
    this.data = json;
    this.dataText = text;
    this.counters.patches++;
  }

  private checked(value: unknown, what: string): { json: JsonValue; text: string } {
    try {
      const r = toJson(value, what);
      if (!isPlainObject(r.json)) throw new MmdsError('INVALID_DATA', `${what} must be a JSON object`);
      const size = Buffer.byteLength(r.text);
      if (size > this.config.sizeLimit) {
        throw new MmdsError('TOO_LARGE', `${what} is ${size} bytes as JSON, more than the limit of ${this.config.sizeLimit}`);
      }
      return r;
    } catch (e) {
      this.counters.rejectedUpdates++;
      throw e;
    }
  }

  /** A copy of the data. */
  get(): JsonValue {
    return JSON.parse(this.dataText) as JsonValue;
  }

  /**
   * The value at an HTTP path as Firecracker resolves it: repeated slashes collapse, a trailing
   * slash is ignored, and the rest is a JSON pointer (`/latest/meta-data` → `latest`, `meta-data`).
   * The returned value is the store's own: callers must not modify it.
   */
  lookup(path: string): MmdsLookup {
    const tokens = path.split('/').filter((t) => t.length > 0);
    return pointer(this.data, tokens);
  }

  /**
   * Issues a session token valid for `ttlSeconds` (1..21600); null for any other lifetime.
   * Expired tokens are purged first; at the bound, the token closest to expiry is evicted.
   */
  issueToken(ttlSeconds: number): string | null {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < MIN_TOKEN_TTL_SECONDS || ttlSeconds > MAX_TOKEN_TTL_SECONDS) return null;
    const now = this.clock();
    this.purge(now);
    while (this.tokens.size >= this.maxTokens) {
      let victim: string | undefined;
      let soonest = Infinity;
      for (const [t, exp] of this.tokens) {
        if (exp < soonest) {
          soonest = exp;
          victim = t;
        }
      }
      if (victim === undefined) break;
      this.tokens.delete(victim);
      this.counters.tokensEvicted++;
    }
    const token = Buffer.from(this.random(32)).toString('base64url');
    this.tokens.set(token, now + ttlSeconds * 1000);
    this.counters.tokensIssued++;
    return token;
  }

  /** Whether `token` was issued by this store and has not expired. */
  isValidToken(token: string): boolean {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return false;
    const exp = this.tokens.get(token);
    if (exp === undefined) return false;
    if (exp <= this.clock()) {
      this.tokens.delete(token);
      return false;
    }
    return true;
  }

  private purge(now: number): void {
    for (const [t, exp] of this.tokens) if (exp <= now) this.tokens.delete(t);
  }

  /** Counters and sizes. */
  metrics(): MmdsStoreMetrics {
    this.purge(this.clock());
    return { ...this.counters, dataBytes: this.size, tokensLive: this.tokens.size };
  }

  /**
   * The data and the live tokens with their remaining lifetimes (the clock does not carry over
   * between processes, so expiry is saved relative to now).
   */
  saveState(): StateObject {
    const now = this.clock();
    this.purge(now);
    return {
      data: this.data as StateValue,
      tokens: [...this.tokens].map(([t, exp]) => [t, Math.ceil(exp - now)]),
    };
  }

  /** See {@link saveState}; checks the data against this store's size limit. */
  restoreState(state: StateObject): void {
    const data = stateField.obj(state, 'data');
    const text = JSON.stringify(data);
    if (Buffer.byteLength(text) > this.config.sizeLimit) {
      throw new DeviceError('BAD_STATE', `mmds: saved data is larger than the limit of ${this.config.sizeLimit} bytes`);
    }
    const tokens = stateField.arr(state, 'tokens', this.maxTokens);
    const now = this.clock();
    const restored = new Map<string, number>();
    for (const entry of tokens) {
      if (
        !Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== 'string' || entry[0].length === 0 ||
        entry[0].length > MAX_TOKEN_LENGTH || typeof entry[1] !== 'number' || !Number.isInteger(entry[1]) ||
        entry[1] < 0 || entry[1] > MAX_TOKEN_TTL_SECONDS * 1000
      ) {
        throw new DeviceError('BAD_STATE', 'mmds: tokens must be [token, remaining ms] pairs');
      }
      restored.set(entry[0], now + entry[1]);
    }
    this.data = JSON.parse(text) as JsonValue;
    this.dataText = text;
    this.tokens.clear();
    for (const [t, exp] of restored) this.tokens.set(t, exp);
  }

  /** Nothing to release (the store holds no timers). */
  async close(): Promise<void> {}
}
