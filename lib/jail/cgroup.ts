/**
 * The jailed child's own cgroup: where it is created, its limits, and its removal.
 *
 * cgroup v2 is the primary mechanism: where the unified hierarchy has a controller (its root's
 * `cgroup.controllers` lists it), the limit goes there (`memory.max`, `cpu.max`, `pids.max`).
 * Hosts that still run the v1 controllers beside an empty unified hierarchy (the hybrid layout of
 * systemd before v2 became the default) get the limit through the controller's v1 hierarchy
 * instead (`memory.limit_in_bytes`, `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `pids.max`). The
 * child joins every group it is given, always including a v2 group when v2 is mounted (it holds
 * the child even without controllers, and `cgroup.kill` empties it).
 *
 * Groups live at `<hierarchy>/<parent>/<vm id>`; `parent` (default `kindling`) is created once and
 * left in place for the next VM. Everything here is plain file I/O on cgroupfs, so it is tested
 * against a directory tree standing in for it.
 * @module
 */
import * as fs from 'fs';
import * as path from 'path';
import { ConfigError } from '../config';
import { JailError } from './errors';

/** The controllers a jail sets limits with. */
export type CgroupController = 'memory' | 'cpu' | 'pids';

/** The limits of a jail's cgroup, validated. */
export interface CgroupLimits {
  /** `cpu.max`: quota and period in µs (`quota` null: no quota). */
  cpuMax?: { quota: number | null; period: number };
  /** `memory.max` in bytes (null: no limit). */
  memoryMax?: number | null;
  /** `pids.max` (null: no limit). */
  pidsMax?: number | null;
  /** The groups' parent, relative to each hierarchy's root. */
  parent: string;
}

/** Where the cgroup hierarchies of this host are mounted. */
export interface CgroupHierarchies {
  /** The unified (v2) hierarchy and the controllers its root offers, if mounted. */
  v2?: { mount: string; controllers: ReadonlySet<string> };
  /** v1 hierarchies by controller (several controllers may share one mount). */
  v1: ReadonlyMap<string, string>;
}

/** One group to create: a hierarchy, and what it limits there. */
export interface CgroupGroupPlan {
  /** `'v2'` or `'v1'`. */
  version: 'v2' | 'v1';
  /** The hierarchy's mount point. */
  mount: string;
  /** The controllers whose limits are written in this group. */
  controllers: CgroupController[];
}

/** Which groups a jail gets on this host. */
export interface CgroupPlan {
  /** In creation order; the child joins all of them. */
  groups: CgroupGroupPlan[];
}

/** The groups created for one VM. */
export interface CgroupSet {
  /** The groups' directories (what the child joins), in plan order. */
  readonly dirs: readonly string[];
  /** Which hierarchy each directory is in. */
  readonly versions: readonly ('v2' | 'v1')[];
}

/**
 * Reads the cgroup mounts out of `/proc/self/mountinfo` text: `cgroup2` mounts, and `cgroup`
 * mounts with the controllers in their super options. `readControllers` reads a v2 root's
 * `cgroup.controllers` (injected for tests).
 */
export function parseCgroupMounts(mountinfo: string, readControllers: (mount: string) => string): CgroupHierarchies {
  let v2: CgroupHierarchies['v2'];
  const v1 = new Map<string, string>();
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (left.length < 5 || right.length < 3) continue;
    const mount = unescapeMountPath(left[4]);
    const fstype = right[0];
    if (fstype === 'cgroup2' && !v2) {
      let controllers: string[] = [];
      try {
        controllers = readControllers(mount).trim().split(/\s+/).filter((c) => c.length > 0);
      } catch { /* unreadable: no controllers */ }
      v2 = { mount, controllers: new Set(controllers) };
    } else if (fstype === 'cgroup') {
      for (const opt of right[2].split(',')) {
        if ((opt === 'memory' || opt === 'cpu' || opt === 'pids') && !v1.has(opt)) v1.set(opt, mount);
      }
    }
  }
  return { v2, v1 };
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** This host's hierarchies (read once per call: mounts can change). */
export function hostCgroups(): CgroupHierarchies {
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch { /* no /proc: no cgroups known */ }
  return parseCgroupMounts(text, (mount) => fs.readFileSync(path.join(mount, 'cgroup.controllers'), 'utf8'));
}

/** The controllers `limits` needs. */
export function neededControllers(limits: CgroupLimits): CgroupController[] {
  const out: CgroupController[] = [];
  if (limits.memoryMax !== undefined) out.push('memory');
  if (limits.cpuMax !== undefined) out.push('cpu');
  if (limits.pidsMax !== undefined) out.push('pids');
  return out;
}

/**
 * Chooses the groups for `limits` on a host with `h`: each controller in v2 where v2 offers it,
 * else in its v1 hierarchy; a v2 group whenever v2 is mounted; without v2 and without limits, a
 * v1 pids group to hold the child.
 * @throws ConfigError CGROUP_UNAVAILABLE naming the controller that has nowhere to go
 */
export function planCgroups(limits: CgroupLimits, h: CgroupHierarchies): CgroupPlan {
  const v2Controllers: CgroupController[] = [];
  const v1Groups = new Map<string, CgroupController[]>();
  for (const c of neededControllers(limits)) {
    if (h.v2?.controllers.has(c)) {
      v2Controllers.push(c);
      continue;
    }
    const mount = h.v1.get(c);
    if (!mount) {
      throw new ConfigError('CGROUP_UNAVAILABLE', `jail cgroup: the ${c} controller is neither enabled in cgroup v2${h.v2 ? ` (${h.v2.mount} offers: ${[...h.v2.controllers].join(' ') || 'none'})` : ' (not mounted)'} nor mounted as a cgroup v1 hierarchy`);
    }
    v1Groups.set(mount, [...(v1Groups.get(mount) ?? []), c]);
  }
  const groups: CgroupGroupPlan[] = [];
  if (h.v2) groups.push({ version: 'v2', mount: h.v2.mount, controllers: v2Controllers });
  for (const [mount, controllers] of v1Groups) groups.push({ version: 'v1', mount, controllers });
  if (groups.length === 0) {
    const pids = h.v1.get('pids');
    if (!pids) throw new ConfigError('CGROUP_UNAVAILABLE', 'jail cgroup: neither cgroup v2 nor a cgroup v1 pids hierarchy is mounted; the jailed child needs a cgroup of its own');
    groups.push({ version: 'v1', mount: pids, controllers: [] });
  }
  return { groups };
}

/** The files and values a group's limits are written as. */
export function limitWrites(version: 'v2' | 'v1', controllers: readonly CgroupController[], limits: CgroupLimits): [string, string][] {
  const out: [string, string][] = [];
  for (const c of controllers) {
    if (c === 'memory') {
      const v = limits.memoryMax ?? null;
      out.push(version === 'v2' ? ['memory.max', v === null ? 'max' : String(v)] : ['memory.limit_in_bytes', v === null ? '-1' : String(v)]);
    } else if (c === 'cpu') {
      const { quota, period } = limits.cpuMax!;
      if (version === 'v2') {
        out.push(['cpu.max', `${quota === null ? 'max' : quota} ${period}`]);
      } else {
        // The period first: a quota is checked against the period in force.
        out.push(['cpu.cfs_period_us', String(period)], ['cpu.cfs_quota_us', quota === null ? '-1' : String(quota)]);
      }
    } else {
      const v = limits.pidsMax ?? null;
      out.push(['pids.max', v === null ? 'max' : String(v)]);
    }
  }
  return out;
}

/**
 * Creates the groups of `plan` for VM `id` and writes their limits. On failure removes what it
 * created and throws.
 * @throws JailError LAUNCH_FAILED naming the file; JAIL_EXISTS when a group of that name exists
 */
export function createCgroups(id: string, plan: CgroupPlan, limits: CgroupLimits): CgroupSet {
  const dirs: string[] = [];
  const versions: ('v2' | 'v1')[] = [];
  try {
    for (const g of plan.groups) {
      const parent = path.join(g.mount, limits.parent);
      fs.mkdirSync(parent, { recursive: true });
      if (g.version === 'v2' && g.controllers.length > 0) enableV2Controllers(g.mount, limits.parent, g.controllers);
      const dir = path.join(parent, id);
      try {
        fs.mkdirSync(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new JailError('JAIL_EXISTS', `the cgroup ${dir} exists: a VM with id ${id} runs, or one was not cleaned up`);
        throw e;
      }
      dirs.push(dir);
      versions.push(g.version);
      for (const [file, value] of limitWrites(g.version, g.controllers, limits)) {
        try {
          fs.writeFileSync(path.join(dir, file), value);
        } catch (e) {
          throw new JailError('LAUNCH_FAILED', `writing ${value} to ${path.join(dir, file)} failed: ${(e as Error).message}`, { cause: e });
        }
      }
    }
  } catch (e) {
    for (const d of dirs.reverse()) {
      try { fs.rmdirSync(d); } catch { /* best effort: the error below is what matters */ }
    }
    if (e instanceof JailError) throw e;
    throw new JailError('LAUNCH_FAILED', `creating the jail's cgroup failed: ${(e as Error).message}`, { cause: e });
  }
  return { dirs, versions };
}

/** `+controller` in `cgroup.subtree_control` from the root down to `parent`, where not already there. */
function enableV2Controllers(mount: string, parent: string, controllers: readonly string[]): void {
  let dir = mount;
  for (const part of ['', ...parent.split('/').filter((p) => p.length > 0)]) {
    dir = part ? path.join(dir, part) : dir;
    const file = path.join(dir, 'cgroup.subtree_control');
    const enabled = new Set(fs.readFileSync(file, 'utf8').trim().split(/\s+/));
    const missing = controllers.filter((c) => !enabled.has(c));
    if (missing.length > 0) fs.writeFileSync(file, missing.map((c) => `+${c}`).join(' '));
  }
}

/**
 * How many times the kernel's OOM killer killed a process of the groups for their memory limit
 * (v2 `memory.events`, v1 `memory.oom_control`: `oom_kill <n>`); 0 where neither is there.
 */
export function oomKills(set: CgroupSet): number {
  let kills = 0;
  for (const dir of set.dirs) {
    for (const file of ['memory.events', 'memory.oom_control']) {
      try {
        const m = /^oom_kill (\d+)$/m.exec(fs.readFileSync(path.join(dir, file), 'utf8'));
        if (m) kills += Number(m[1]);
      } catch { /* not this hierarchy's file */ }
    }
  }
  return kills;
}

/** The processes in a group (pids as this process sees them). */
export function cgroupProcs(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter((l) => l.trim().length > 0).map(Number).filter((n) => Number.isInteger(n) && n > 0);
  } catch {
    return [];
  }
}

/**
 * Kills whatever is left in the groups (v2 `cgroup.kill` where there is one, else SIGKILL to each
 * listed process) and removes them, retrying while the kernel still reports them busy (a killed
 * process leaves its group a moment later). Resolves with the directories that could not be
 * removed (empty when all went).
 */
export async function removeCgroups(set: CgroupSet, timeoutMs = 5000): Promise<string[]> {
  const left: string[] = [];
  for (const dir of set.dirs) {
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        fs.rmdirSync(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY' || Date.now() > deadline) {
          left.push(dir);
          break;
        }
      }
      killGroup(dir);
      await new Promise((resolve) => setTimeout(resolve, Math.min(50, 2 + attempt * 5)));
    }
  }
  return left;
}

function killGroup(dir: string): void {
  try {
    fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
    return;
  } catch { /* v1, or a kernel before 5.14 */ }
  for (const pid of cgroupProcs(dir)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone already */ }
  }
}
