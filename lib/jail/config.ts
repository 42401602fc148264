/**
 * The `jail` option of `new MicroVM()` and its validation, done once at the constructor: a jail
 * that cannot be built on this host (not root, no cgroup hierarchy for a limit, no uid, a missing
 * directory or network namespace) is refused there with a ConfigError, before anything is created.
 * @module
 */
import * as fs from 'fs';
import * as path from 'path';
import { ConfigError, checkBoolean, checkOptionsObject, describe } from '../config';
import { hostCgroups, planCgroups, type CgroupHierarchies, type CgroupLimits, type CgroupPlan } from './cgroup';

/** cgroup limits of a jailed VM (cgroup v2 syntax; see `lib/jail/cgroup.ts` for v1 hosts). */
export interface JailCgroupOptions {
  /** `cpu.max`: `"<quota> <period>"` in µs, `"max <period>"` or `"<quota>"` (period 100000). */
  cpuMax?: string;
  /** `memory.max`: bytes, a size with a K/M/G/T suffix (`"512M"`), or `"max"`. */
  memoryMax?: string | number;
  /**
   * `pids.max`: the most tasks (threads included) the child may have, or `"max"`. Node itself
   * runs about 11 threads; add one per vCPU and one for KVM's own worker.
   */
  pidsMax?: number | 'max';
  /** The groups' parent under each hierarchy's root (default `"kindling"`). */
  parent?: string;
}

/** Options of a jailed VM: `new MicroVM({ id, jail: { … } })`. */
export interface JailOptions {
  /** The user the child runs as (required; not 0). */
  uid: number;
  /** The group the child runs as (required; not 0); supplementary groups are dropped. */
  gid: number;
  /**
   * An existing directory; the VM's root is `<chrootBase>/<id>/root`, made at start and removed
   * (with `<chrootBase>/<id>`) when the VM ends. Put it on the filesystem your snapshots go to:
   * snapshot files are moved out of the jail by rename.
   */
  chrootBase: string;
  /** Limits of the child's own cgroup. */
  cgroup?: JailCgroupOptions;
  /** An existing network namespace to join (e.g. `/var/run/netns/fn-1`, where the VM's TAPs live). */
  netns?: string;
  /** Run the child in a new PID namespace (default `true`). */
  newPidNs?: boolean;
}

/** A validated jail. */
export interface JailConfig {
  /** See {@link JailOptions.uid}. */
  uid: number;
  /** See {@link JailOptions.gid}. */
  gid: number;
  /** Absolute path of the base directory. */
  chrootBase: string;
  /** Validated limits. */
  cgroup: CgroupLimits;
  /** The groups this host gives the jail. */
  cgroupPlan: CgroupPlan;
  /** See {@link JailOptions.netns}. */
  netns?: string;
  /** See {@link JailOptions.newPidNs}. */
  newPidNs: boolean;
}

const JAIL_KEYS = ['uid', 'gid', 'chrootBase', 'cgroup', 'netns', 'newPidNs'] as const;
const CGROUP_KEYS = ['cpuMax', 'memoryMax', 'pidsMax', 'parent'] as const;
/** uid_t/gid_t are 32 bits and (uid_t)-1 means "unchanged" to setresuid. */
const MAX_ID = 0xfffffffe;
/** The kernel's limits for cpu.max / cpu.cfs_*: quota at least 1 ms, period 1 ms to 1 s. */
const MIN_CPU_US = 1000;
const MAX_PERIOD_US = 1_000_000;
const DEFAULT_PERIOD_US = 100_000;
const SIZE_SUFFIX: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** What the checks look at on the host; injected by tests. */
export interface JailHostProbe {
  /** The effective uid (`process.geteuid()`). */
  euid(): number;
  /** The host's cgroup hierarchies. */
  cgroups(): CgroupHierarchies;
}

const realHost: JailHostProbe = {
  euid: () => (typeof process.geteuid === 'function' ? process.geteuid() : -1),
  cgroups: hostCgroups,
};

/**
 * Validates the `jail` option.
 * @throws ConfigError INVALID_JAIL / UNKNOWN_OPTION (shape, values, paths), UID_MISSING,
 *   JAIL_REQUIRES_ROOT, CGROUP_UNAVAILABLE
 */
export function checkJailOptions(value: unknown, probe: JailHostProbe = realHost): JailConfig {
  const o = checkOptionsObject(value, JAIL_KEYS, 'jail', 'INVALID_JAIL');
  if (o.uid === undefined || o.gid === undefined) {
    throw new ConfigError('UID_MISSING', `jail: uid and gid are required (the user and group the VM's process runs as); got uid ${describe(o.uid)}, gid ${describe(o.gid)}`);
  }
  const uid = checkId(o.uid, 'uid');
  const gid = checkId(o.gid, 'gid');
  const newPidNs = checkBoolean(o.newPidNs, 'jail: newPidNs', 'INVALID_JAIL', true);
  const cgroup = checkCgroup(o.cgroup);
  if (typeof o.chrootBase !== 'string' || !path.isAbsolute(o.chrootBase)) {
    throw new ConfigError('INVALID_JAIL', `jail: chrootBase must be an absolute path, not ${describe(o.chrootBase)}`);
  }
  let netns: string | undefined;
  if (o.netns !== undefined) {
    if (typeof o.netns !== 'string' || !path.isAbsolute(o.netns)) {
      throw new ConfigError('INVALID_JAIL', `jail: netns must be the absolute path of a network namespace, not ${describe(o.netns)}`);
    }
    netns = o.netns;
  }
  // Host checks, after the shape: what this host cannot do.
  if (probe.euid() !== 0) {
    throw new ConfigError('JAIL_REQUIRES_ROOT', 'jail: a jailed VM needs root (namespaces, mounts, cgroups and dropping to the jail\'s uid); this process is not root');
  }
  const cgroupPlan = planCgroups(cgroup, probe.cgroups());
  const chrootBase = path.resolve(o.chrootBase);
  if (!isDirectory(chrootBase) || chrootBase === '/') {
    throw new ConfigError('INVALID_JAIL', `jail: chrootBase ${chrootBase} is not an existing directory (other than /)`);
  }
  if (netns !== undefined && !exists(netns)) {
    throw new ConfigError('INVALID_JAIL', `jail: the network namespace ${netns} does not exist`);
  }
  return { uid, gid, chrootBase, cgroup, cgroupPlan, newPidNs, ...(netns !== undefined ? { netns } : {}) };
}

function checkId(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_ID) {
    throw new ConfigError('INVALID_JAIL', `jail: ${what} must be an integer from 1 to ${MAX_ID} (not root), not ${describe(v)}`);
  }
  return v;
}

function checkCgroup(value: unknown): CgroupLimits {
  if (value === undefined) return { parent: 'kindling' };
  const o = checkOptionsObject(value, CGROUP_KEYS, 'jail.cgroup', 'INVALID_JAIL');
  const out: CgroupLimits = { parent: 'kindling' };
  if (o.parent !== undefined) {
    if (typeof o.parent !== 'string' || !/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(o.parent) || o.parent.split('/').some((p) => p === '.' || p === '..')) {
      throw new ConfigError('INVALID_JAIL', `jail.cgroup.parent must be a relative cgroup path of [A-Za-z0-9._-] names, not ${describe(o.parent)}`);
    }
    out.parent = o.parent;
  }
  if (o.cpuMax !== undefined) out.cpuMax = parseCpuMax(o.cpuMax);
  if (o.memoryMax !== undefined) out.memoryMax = parseMemoryMax(o.memoryMax);
  if (o.pidsMax !== undefined) {
    if (o.pidsMax === 'max') out.pidsMax = null;
    else if (typeof o.pidsMax === 'number' && Number.isInteger(o.pidsMax) && o.pidsMax >= 1 && o.pidsMax <= 4194304) out.pidsMax = o.pidsMax;
    else throw new ConfigError('INVALID_JAIL', `jail.cgroup.pidsMax must be an integer from 1 to 4194304 or 'max', not ${describe(o.pidsMax)}`);
  }
  return out;
}

/** cpu.max syntax: `"<quota>|max [<period>]"`. */
export function parseCpuMax(v: unknown): { quota: number | null; period: number } {
  const m = typeof v === 'string' ? /^(max|\d{1,10})(?: (\d{1,10}))?$/.exec(v) : null;
  if (!m) throw new ConfigError('INVALID_JAIL', `jail.cgroup.cpuMax must be "<quota> <period>" in µs (or "max <period>"), not ${describe(v)}`);
  const period = m[2] === undefined ? DEFAULT_PERIOD_US : Number(m[2]);
  if (period < MIN_CPU_US || period > MAX_PERIOD_US) {
    throw new ConfigError('INVALID_JAIL', `jail.cgroup.cpuMax: the period must be from ${MIN_CPU_US} to ${MAX_PERIOD_US} µs, not ${period}`);
  }
  if (m[1] === 'max') return { quota: null, period };
  const quota = Number(m[1]);
  if (quota < MIN_CPU_US) throw new ConfigError('INVALID_JAIL', `jail.cgroup.cpuMax: the quota must be at least ${MIN_CPU_US} µs, not ${quota}`);
  return { quota, period };
}

/** memory.max syntax: bytes, `<n>[KMGT]`, or `"max"`; at least 1 MiB. */
export function parseMemoryMax(v: unknown): number | null {
  if (v === 'max') return null;
  let bytes: number | undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v)) bytes = v;
  else if (typeof v === 'string') {
    const m = /^(\d{1,15})([KMGT]?)$/.exec(v);
    if (m) bytes = Number(m[1]) * SIZE_SUFFIX[m[2]];
  }
  if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < 1024 * 1024) {
    throw new ConfigError('INVALID_JAIL', `jail.cgroup.memoryMax must be at least 1 MiB, as bytes, "<n>K|M|G|T" or "max", not ${describe(v)}`);
  }
  return bytes;
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function exists(p: string): boolean {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}
