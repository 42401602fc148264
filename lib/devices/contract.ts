/**
 * The contract every device of a Kindling machine implements, built in or user-written.
 *
 * A device is a state machine with injected effects: it never imports the native addon, never
 * opens a file or starts a timer on its own behalf except through what it was given, and can be
 * driven in a unit test without KVM. The machine's device manager attaches it (bus window,
 * interrupt, announcement), collects its {@link Device.metrics}, saves and restores its
 * {@link Device.saveState} in snapshots, and calls {@link Device.close} exactly once on teardown.
 *
 * Virtio devices implement the larger {@link VirtioDevice} contract (`lib/virtio/device.ts`),
 * which extends this one.
 * @module
 */
import { KindlingError } from '../errors';

/**
 * A JSON value: what device state is made of. Byte strings are stored as base64 strings, u64
 * values that may exceed 2^53 as decimal strings; `undefined`, functions, bigints, typed arrays and
 * class instances are not state.
 */
export type StateValue = null | boolean | number | string | StateValue[] | StateObject;

/** A JSON object of {@link StateValue}s. */
export interface StateObject {
  [key: string]: StateValue;
}

/**
 * Saved state of one device as the snapshot stores it: which device it belongs to, the format
 * version, and the device's own data.
 */
export interface DeviceStateRecord {
  /** {@link Device.kind} of the device that saved it. */
  kind: string;
  /** {@link Device.id} of the device that saved it. */
  id: string;
  /** {@link Device.stateVersion} when it was saved. */
  version: number;
  /** What {@link Device.saveState} returned. */
  state: StateObject;
}

/**
 * Counters of one device: a flat object of numbers. Each device documents its own interface, so
 * `vm.metrics()` is typed field by field.
 */
export type MetricsObject = { readonly [K: string]: number };

/** What every device of a machine provides. */
export interface Device<M extends object = object> {
  /** Unique among the machine's devices: names it in metrics, updates and snapshots. */
  readonly id: string;
  /** What kind of device this is (`'serial'`, `'virtio-blk'`…): the state format's family name. */
  readonly kind: string;
  /** Version of this device's {@link saveState} format; {@link restoreState} refuses any other. */
  readonly stateVersion: number;
  /** A snapshot of the device's counters. Cheap; may be called at any time, also after close. */
  metrics(): M;
  /**
   * Everything needed to continue exactly where the device is, as plain JSON data. Called while
   * the vCPUs are paused and no device callback is running. Host resources (file descriptors,
   * paths, sockets) are not state: they are re-supplied when the machine is rebuilt.
   */
  saveState(): StateObject;
  /**
   * Continues from `state` (what {@link saveState} returned, version already checked). Called on a
   * freshly constructed device before its vCPUs run. Must validate everything it reads: a state
   * file is input like any other. Throws {@link DeviceError} `BAD_STATE` and changes nothing when
   * `state` does not fit this device.
   */
  restoreState(state: StateObject): void;
  /**
   * Optional: resolves once the device has no host I/O in flight that could still write guest
   * memory or its backend (a pause before a snapshot waits for it). Devices that complete
   * everything synchronously need not have it.
   */
  drain?(): Promise<void>;
  /**
   * Releases what the device holds (timers, backends). Called once, when the machine is torn down;
   * a rejection is reported in the machine's exit info and metrics, never thrown at the host.
   */
  close(): Promise<void>;
}

/** Why a device refused an operation of the contract. */
export type DeviceErrorCode =
  /** A saved state does not fit the device (wrong shape, out-of-range values, other version). */
  | 'BAD_STATE'
  /** Two devices of one machine have the same id. */
  | 'DUPLICATE_ID'
  /** A runtime update the device does not accept. */
  | 'BAD_UPDATE'
  /** The device is closed. */
  | 'CLOSED';

/** An operation of the device contract was refused. */
export class DeviceError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: DeviceErrorCode;

  /**
   * @param code why
   * @param message details for humans (names the device)
   * @param options `cause`: the underlying error
   */
  constructor(code: DeviceErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * Helpers for reading untrusted state objects: each returns the field or throws
 * {@link DeviceError} `BAD_STATE` naming it.
 */
export const stateField = {
  /** An integer in `[min, max]`. */
  int(state: StateObject, key: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    const v = state[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new DeviceError('BAD_STATE', `state field ${key} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    }
    return v;
  },
  /** A boolean. */
  bool(state: StateObject, key: string): boolean {
    const v = state[key];
    if (typeof v !== 'boolean') throw new DeviceError('BAD_STATE', `state field ${key} must be a boolean`);
    return v;
  },
  /** A string. */
  str(state: StateObject, key: string): string {
    const v = state[key];
    if (typeof v !== 'string') throw new DeviceError('BAD_STATE', `state field ${key} must be a string`);
    return v;
  },
  /** A byte string stored as base64, at most `maxLen` bytes. */
  bytes(state: StateObject, key: string, maxLen = Number.MAX_SAFE_INTEGER): Uint8Array {
    const v = state[key];
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) {
      throw new DeviceError('BAD_STATE', `state field ${key} must be base64`);
    }
    const b = Buffer.from(v, 'base64');
    if (b.length > maxLen) throw new DeviceError('BAD_STATE', `state field ${key} holds ${b.length} bytes, more than ${maxLen}`);
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  },
  /** A nested object. */
  obj(state: StateObject, key: string): StateObject {
    const v = state[key];
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new DeviceError('BAD_STATE', `state field ${key} must be an object`);
    return v;
  },
  /** An array. */
  arr(state: StateObject, key: string, maxLen = Number.MAX_SAFE_INTEGER): StateValue[] {
    const v = state[key];
    if (!Array.isArray(v) || v.length > maxLen) throw new DeviceError('BAD_STATE', `state field ${key} must be an array of at most ${maxLen}`);
    return v;
  },
};

/** Encodes bytes for a {@link StateObject} (see {@link stateField.bytes}). */
export function encodeBytes(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/**
 * How a built-in virtio device type plugs into the machine: the builder method validates its
 * options (the device folder's `check…Options`) and records `{ kind, id, config }`; at `start()`
 * the machine looks the kind up and calls {@link DeviceKind.create}, then attaches the device
 * through its device manager (MMIO window, GSI, irqfd, ioeventfds, announcement, metrics,
 * snapshots, teardown). A device folder exports one of these; nothing else in the machine changes
 * for a new device type.
 *
 * `H` is the host capabilities the device needs (a TAP, madvise on guest memory…), an interface
 * the device folder declares and `lib/vm` implements with the native addon; devices never import
 * the addon themselves.
 */
export interface DeviceKind<C extends { id: string } = { id: string }, D extends Device = Device, H = unknown, U = never> {
  /** Equals the created devices' {@link Device.kind}. */
  readonly kind: string;
  /** Builds a device from its validated configuration. Rejections end `start()` with the reason. */
  create(config: C, host: H): Promise<D>;
  /**
   * Applies a validated runtime update (e.g. a new backing file or rate limits) to a running
   * device, and records it in `config` (which a snapshot saves). Resolves with
   * `{ configChanged: true }` when the device's config space changed: the machine then has the
   * transport raise a configuration change interrupt (or defer it to DRIVER_OK, §2.5). Absent
   * when the device takes no updates.
   */
  update?(device: D, config: C, update: U, host: H): Promise<{ configChanged?: boolean } | void>;
  /**
   * Called once the device is attached, before the vCPUs run (also for a device built before
   * `start()`): starts host-side services such as listening sockets. A rejection ends `start()`.
   */
  start?(device: D, host: H): Promise<void>;
  /** What `vm.<device>Stats()` reports for this kind, when it has something beyond metrics. */
  stats?(device: D): unknown;
}
