/**
 * Loads the C++ addon (`build/Release/kindling.node`, built by `npm run build:native`) and
 * makes every error it throws a {@link NativeError}. Only this module loads the addon.
 * @module
 */

import * as fs from 'fs';
import * as path from 'path';
import { markAsUntransferable } from 'worker_threads';

import { NativeError } from './errors';
import type { NativeAddon, NativeKvm } from './types';

export { NativeError } from './errors';
export type { NativeErrorCode } from './errors';

/** What the compiled module exports beyond {@link NativeAddon}. */
interface RawAddon extends NativeAddon {
  /** Registers the constructor the addon uses for errno errors: `new ctor(code, message, ioctl, errno)`. */
  setErrorClass(ctor: typeof NativeError): void;
  /** Registers the function the addon applies to every guest-memory buffer (a transfer then copies it). */
  setUntransferableMarker(mark: (buffer: ArrayBuffer) => void): void;
  /** The real-time signal number that kicks vCPU threads out of KVM_RUN. */
  kickSignal: number;
}

/** Environment variable that points at a specific `kindling.node` (for packaging and tests). */
const ADDON_PATH_ENV = 'KINDLING_ADDON';
const ADDON_FILE = 'kindling.node';
/** Directories searched upwards from this file: lib/native (sources) and dist/cjs/native (build). */
const MAX_PARENT_LEVELS = 4;

let cached: NativeAddon | undefined;
let cachedPath: string | undefined;

function candidatePaths(): string[] {
  const fromEnv = process.env[ADDON_PATH_ENV];
  if (fromEnv) return [path.resolve(fromEnv)];
  const out: string[] = [];
  let dir = __dirname;
  for (let i = 0; i <= MAX_PARENT_LEVELS; i++) {
    out.push(path.join(dir, 'build', 'Release', ADDON_FILE), path.join(dir, 'build', 'Debug', ADDON_FILE));
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return out;
}

/**
 * Loads the addon once and returns it (later calls return the same object).
 * @throws NativeError with code 'ADDON_MISSING' when no built addon is found or it cannot be loaded.
 */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const candidates = candidatePaths();
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new NativeError(
      'ADDON_MISSING',
      `the native addon is not built (looked for ${candidates[0]} and parents); run npm run build:native`,
      'dlopen',
    );
  }
  let raw: RawAddon;
  try {
    raw = require(found) as RawAddon;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new NativeError(
      'ADDON_MISSING',
      `the native addon at ${found} could not be loaded (${reason}); run npm run build:native`,
      'dlopen',
    );
  }
  raw.setErrorClass(NativeError);
  raw.setUntransferableMarker(markAsUntransferable);
  cached = raw;
  cachedPath = found;
  return raw;
}

/**
 * The file {@link loadNative} loaded the addon from (loading it first): a jailed child loads the
 * same file, and the jail launcher is built next to it.
 */
export function loadedAddonPath(): string {
  loadNative();
  return path.resolve(cachedPath!);
}

/** Result of {@link isKvmAvailable}. */
export type KvmAvailability =
  | {
      /** KVM can be opened and speaks API version 12. */
      ok: true;
    }
  | {
      /** KVM cannot be used here. */
      ok: false;
      /** Why, for a person: the failing call and errno, or the missing addon. */
      reason: string;
    };

/** The KVM API version every supported kernel reports (api.rst: "KVM_GET_API_VERSION"). */
const KVM_API_VERSION = 12;

/**
 * Whether KVM can be used here: loads the addon, opens `path`, checks the API version and closes
 * the handle again. Never throws.
 * @param kvmPath the KVM device, `/dev/kvm` unless testing
 */
export function isKvmAvailable(kvmPath = '/dev/kvm'): KvmAvailability {
  let addon: NativeAddon;
  try {
    addon = loadNative();
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
  let kvm: NativeKvm;
  try {
    kvm = addon.openKvm(kvmPath);
  } catch (err) {
    return { ok: false, reason: `cannot open ${kvmPath}: ${err instanceof Error ? err.message : String(err)}` };
  }
  try {
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      return { ok: false, reason: `${kvmPath} reports KVM API version ${version}, expected ${KVM_API_VERSION}` };
    }
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `${kvmPath} is not a KVM device: ${err instanceof Error ? err.message : String(err)}` };
  } finally {
    kvm.close();
  }
}
