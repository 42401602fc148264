/**
 * Configuration errors and the small validators every builder method uses.
 *
 * Each device folder validates its own options with these (`lib/devices/<name>/config.ts`), once,
 * at the builder call: a wrong value or an unknown (misspelled) option is refused there with a
 * {@link ConfigError} naming it, and a configuration the builder accepted never fails `start()`
 * on validation.
 * @module
 */
import { KindlingError } from '../errors';
import { RateLimiter, type RateLimiterConfig } from '../ratelimit';

/** Why a configuration call was refused. */
export type ConfigErrorCode =
  | 'INVALID_VCPUS'
  | 'INVALID_MEMORY'
  | 'KERNEL_NOT_FOUND'
  | 'INITRD_NOT_FOUND'
  | 'INVALID_CMDLINE'
  | 'INVALID_ID'
  | 'INVALID_DRIVE'
  | 'DRIVE_NOT_FOUND'
  | 'DUPLICATE_DRIVE'
  | 'DUPLICATE_ID'
  | 'DEVICE_NOT_FOUND'
  | 'TOO_MANY_DEVICES'
  | 'MULTIPLE_ROOT_DRIVES'
  | 'INVALID_RATE_LIMITER'
  | 'UNKNOWN_OPTION'
  | 'NO_KERNEL'
  | 'ALREADY_STARTED'
  | 'NOT_RUNNING'
  | 'INVALID_OPTION'
  | 'INVALID_DEVICE'
  /** A NIC's options are wrong (id, backend, MTU…). */
  | 'INVALID_NIC'
  /** A MAC address is malformed, multicast or all zeros. */
  | 'INVALID_MAC'
  /** The TAP named by a NIC does not exist (or is not a TAP). */
  | 'TAP_NOT_FOUND'
  /** The TAP named by a NIC is already attached to another process or NIC. */
  | 'TAP_BUSY'
  /** The TAP could not be opened for another reason (permissions, a refused ioctl). */
  | 'TAP_OPEN_FAILED'
  /** MMDS options are wrong, or name a NIC that is not configured. */
  | 'INVALID_MMDS'
  /** vsock options are wrong. */
  | 'INVALID_VSOCK'
  /** Entropy device options are wrong. */
  | 'INVALID_ENTROPY'
  /** Balloon options or updates are wrong. */
  | 'INVALID_BALLOON'
  /** Jail options are wrong (paths, ids, limits), or ask for what a jail cannot carry (devices of your own). */
  | 'INVALID_JAIL'
  /** A jail was asked for without the `uid` and `gid` its child is to run as. */
  | 'UID_MISSING'
  /** A jail needs root (namespaces, mounts, cgroups); this process is not running as root. */
  | 'JAIL_REQUIRES_ROOT'
  /** Neither cgroup v2 nor the cgroup v1 controllers the jail's limits need are mounted here. */
  | 'CGROUP_UNAVAILABLE';

/**
 * A builder method, update or `start()` was given a configuration that cannot work. Thrown at
 * once, before anything is created, so the caller can fix the call.
 */
export class ConfigError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: ConfigErrorCode;
  /**
   * @param code why
   * @param message names the option and what was wrong with it
   */
  constructor(code: ConfigErrorCode, message: string) {
    super(message);
    this.name = 'ConfigError';
    this.code = code;
  }
}

/**
 * Checks that `value` is a plain object whose keys are all in `allowed`; returns it typed as a
 * record. `where` names the option in messages (e.g. `drive rootfs`).
 * @throws ConfigError `code` when it is not an object, UNKNOWN_OPTION for a key not in `allowed`
 */
export function checkOptionsObject(value: unknown, allowed: readonly string[], where: string, code: ConfigErrorCode): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(code, `${where}: options must be an object`);
  }
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      const near = allowed.find((a) => a.toLowerCase() === key.toLowerCase());
      throw new ConfigError('UNKNOWN_OPTION', `${where}: unknown option ${JSON.stringify(key)}${near ? ` (did you mean ${JSON.stringify(near)}?)` : ''}; allowed: ${allowed.join(', ')}`);
    }
  }
  return value as Record<string, unknown>;
}

/** An optional boolean option. @throws ConfigError `code` */
export function checkBoolean(value: unknown, where: string, code: ConfigErrorCode, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new ConfigError(code, `${where} must be true or false, not ${describe(value)}`);
  return value;
}

/** An integer option in `[min, max]` (inclusive). @throws ConfigError `code` */
export function checkInteger(value: unknown, where: string, code: ConfigErrorCode, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(code, `${where} must be an integer from ${min} to ${max}, not ${describe(value)}`);
  }
  return value;
}

/** A string option matching `re`. @throws ConfigError `code` */
export function checkString(value: unknown, where: string, code: ConfigErrorCode, re: RegExp, what: string): string {
  if (typeof value !== 'string' || !re.test(value)) {
    throw new ConfigError(code, `${where} must be ${what}, not ${describe(value)}`);
  }
  return value;
}

/** One of a fixed set of string values. @throws ConfigError `code` */
export function checkOneOf<T extends string>(value: unknown, where: string, code: ConfigErrorCode, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(code, `${where} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, not ${describe(value)}`);
  }
  return value as T;
}

/** A short rendering of a rejected value for messages (never throws, never huge). */
export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return String(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'symbol' || typeof value === 'function') return typeof value;
  return Array.isArray(value) ? 'an array' : 'an object';
}

/**
 * Validates a rate limiter option (`{ bandwidth?: {size, refillTime, oneTimeBurst?}, ops?: … }`)
 * with exactly the rules the limiter applies when it is built, so that what the builder accepts
 * always builds. Returns a copy holding only the known fields.
 * @throws ConfigError INVALID_RATE_LIMITER, UNKNOWN_OPTION
 */
export function checkRateLimiter(value: unknown, where: string): RateLimiterConfig | undefined {
  if (value === undefined) return undefined;
  const rl = checkOptionsObject(value, ['bandwidth', 'ops'], `${where}.rateLimiter`, 'INVALID_RATE_LIMITER');
  const out: RateLimiterConfig = {};
  for (const kind of ['bandwidth', 'ops'] as const) {
    if (rl[kind] === undefined) continue;
    const b = checkOptionsObject(rl[kind], ['size', 'refillTime', 'oneTimeBurst'], `${where}.rateLimiter.${kind}`, 'INVALID_RATE_LIMITER');
    out[kind] = { size: b.size as number, refillTime: b.refillTime as number, ...(b.oneTimeBurst !== undefined ? { oneTimeBurst: b.oneTimeBurst as number } : {}) };
  }
  try {
    RateLimiter.validate(out);
  } catch (e) {
    throw new ConfigError('INVALID_RATE_LIMITER', `${where}.rateLimiter: ${(e as Error).message}`);
  }
  return out;
}
