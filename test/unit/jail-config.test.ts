/**
 * The jail option's validation (a probe stands in for the host: root or not, which cgroup
 * hierarchies), the choice between cgroup v2 and v1 per controller, and creating and removing
 * groups in a directory tree standing in for cgroupfs.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ConfigError } from '../../lib/config';
import { checkJailOptions, parseCpuMax, parseMemoryMax, type JailHostProbe } from '../../lib/jail/config';
import {
  createCgroups, limitWrites, oomKills, parseCgroupMounts, planCgroups, removeCgroups, type CgroupHierarchies, type CgroupLimits,
} from '../../lib/jail/cgroup';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-jailcfg-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const HYBRID: CgroupHierarchies = {
  v2: { mount: '/sys/fs/cgroup/unified', controllers: new Set(['hugetlb']) },
  v1: new Map([['memory', '/sys/fs/cgroup/memory'], ['cpu', '/sys/fs/cgroup/cpu'], ['pids', '/sys/fs/cgroup/pids']]),
};
const UNIFIED: CgroupHierarchies = { v2: { mount: '/sys/fs/cgroup', controllers: new Set(['cpu', 'memory', 'pids', 'io']) }, v1: new Map() };
const NONE: CgroupHierarchies = { v1: new Map() };

const probe = (over: Partial<JailHostProbe> = {}): JailHostProbe => ({ euid: () => 0, cgroups: () => UNIFIED, ...over });
const base = { uid: 1234, gid: 1234, chrootBase: tmp };

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e.code;
    throw e;
  }
  return undefined;
}

describe('checkJailOptions', () => {
  it('accepts the issue\'s example and defaults to a new PID namespace', () => {
    const ns = path.join(tmp, 'netns-fn-1');
    fs.writeFileSync(ns, '');
    const j = checkJailOptions({ ...base, cgroup: { cpuMax: '50000 100000', memoryMax: '512M', pidsMax: 16 }, netns: ns, newPidNs: true }, probe());
    expect(j).toMatchObject({ uid: 1234, gid: 1234, chrootBase: tmp, netns: ns, newPidNs: true });
    expect(j.cgroup).toEqual({ parent: 'kindling', cpuMax: { quota: 50000, period: 100000 }, memoryMax: 512 * 1024 ** 2, pidsMax: 16 });
    expect(j.cgroupPlan.groups).toEqual([{ version: 'v2', mount: '/sys/fs/cgroup', controllers: ['memory', 'cpu', 'pids'] }]);
    expect(checkJailOptions(base, probe()).newPidNs).toBe(true);
  });

  it('needs uid and gid: UID_MISSING', () => {
    expect(code(() => checkJailOptions({ gid: 1, chrootBase: tmp }, probe()))).toBe('UID_MISSING');
    expect(code(() => checkJailOptions({ uid: 1, chrootBase: tmp }, probe()))).toBe('UID_MISSING');
  });

  it.each([
    ['uid 0', { uid: 0 }],
    ['a negative gid', { gid: -1 }],
    ['(uid_t)-1', { uid: 0xffffffff }],
    ['a fractional uid', { uid: 1.5 }],
    ['a string uid', { uid: '1234' }],
    ['a relative chrootBase', { chrootBase: 'srv/jail' }],
    ['a missing chrootBase', { chrootBase: path.join(tmp, 'nope') }],
    ['chrootBase /', { chrootBase: '/' }],
    ['a relative netns', { netns: 'run/netns/x' }],
    ['a missing netns', { netns: path.join(tmp, 'no-such-netns') }],
    ['a non-boolean newPidNs', { newPidNs: 'yes' }],
    ['a bad cpuMax', { cgroup: { cpuMax: '50%' } }],
    ['a cpuMax period over 1 s', { cgroup: { cpuMax: '50000 2000000' } }],
    ['a cpuMax quota under 1 ms', { cgroup: { cpuMax: '999 100000' } }],
    ['a memoryMax under 1 MiB', { cgroup: { memoryMax: 4096 } }],
    ['a memoryMax with a bad suffix', { cgroup: { memoryMax: '5X' } }],
    ['pidsMax 0', { cgroup: { pidsMax: 0 } }],
    ['a cgroup parent with ..', { cgroup: { parent: 'a/../b' } }],
    ['an absolute cgroup parent', { cgroup: { parent: '/kindling' } }],
    ['not an object', null],
  ])('refuses %s: INVALID_JAIL', (_what, over) => {
    expect(code(() => checkJailOptions(over === null ? null : { ...base, ...over }, probe()))).toBe('INVALID_JAIL');
  });

  it('refuses an unknown (misspelled) option by name', () => {
    expect(() => checkJailOptions({ ...base, chrootbase: tmp }, probe())).toThrow(/unknown option "chrootbase" \(did you mean "chrootBase"\?\)/);
    expect(code(() => checkJailOptions({ ...base, cgroup: { memMax: '1G' } }, probe()))).toBe('UNKNOWN_OPTION');
  });

  it('needs root: JAIL_REQUIRES_ROOT, after the shape is right', () => {
    expect(code(() => checkJailOptions(base, probe({ euid: () => 1000 })))).toBe('JAIL_REQUIRES_ROOT');
    expect(code(() => checkJailOptions({ ...base, uid: 0 }, probe({ euid: () => 1000 })))).toBe('INVALID_JAIL');
  });

  it('needs a cgroup hierarchy for every limit: CGROUP_UNAVAILABLE', () => {
    expect(code(() => checkJailOptions(base, probe({ cgroups: () => NONE })))).toBe('CGROUP_UNAVAILABLE');
    const onlyPids: CgroupHierarchies = { v1: new Map([['pids', '/p']]) };
    expect(code(() => checkJailOptions(base, probe({ cgroups: () => onlyPids })))).toBeUndefined();
    expect(() => checkJailOptions({ ...base, cgroup: { memoryMax: '1G' } }, probe({ cgroups: () => onlyPids }))).toThrow(/memory controller/);
  });
});

describe('cgroup plan', () => {
  const limits: CgroupLimits = { parent: 'kindling', memoryMax: 1 << 30, cpuMax: { quota: 50000, period: 100000 }, pidsMax: 16 };

  it('puts every limit in v2 where v2 has the controller', () => {
    expect(planCgroups(limits, UNIFIED).groups).toEqual([{ version: 'v2', mount: '/sys/fs/cgroup', controllers: ['memory', 'cpu', 'pids'] }]);
  });

  it('on a hybrid host: a v2 group to hold the child, each limit in its v1 hierarchy', () => {
    expect(planCgroups(limits, HYBRID).groups).toEqual([
      { version: 'v2', mount: '/sys/fs/cgroup/unified', controllers: [] },
      { version: 'v1', mount: '/sys/fs/cgroup/memory', controllers: ['memory'] },
      { version: 'v1', mount: '/sys/fs/cgroup/cpu', controllers: ['cpu'] },
      { version: 'v1', mount: '/sys/fs/cgroup/pids', controllers: ['pids'] },
    ]);
    expect(planCgroups({ parent: 'k' }, HYBRID).groups).toEqual([{ version: 'v2', mount: '/sys/fs/cgroup/unified', controllers: [] }]);
  });

  it('groups controllers that share a v1 mount (cpu,cpuacct style) into one group', () => {
    const shared: CgroupHierarchies = { v1: new Map([['cpu', '/c'], ['memory', '/c'], ['pids', '/p']]) };
    expect(planCgroups(limits, shared).groups).toEqual([
      { version: 'v1', mount: '/c', controllers: ['memory', 'cpu'] },
      { version: 'v1', mount: '/p', controllers: ['pids'] },
    ]);
  });

  it('writes limits in each version\'s syntax', () => {
    expect(limitWrites('v2', ['memory', 'cpu', 'pids'], limits)).toEqual([
      ['memory.max', String(1 << 30)], ['cpu.max', '50000 100000'], ['pids.max', '16'],
    ]);
    expect(limitWrites('v1', ['memory', 'cpu', 'pids'], limits)).toEqual([
      ['memory.limit_in_bytes', String(1 << 30)], ['cpu.cfs_period_us', '100000'], ['cpu.cfs_quota_us', '50000'], ['pids.max', '16'],
    ]);
    const unlimited: CgroupLimits = { parent: 'k', memoryMax: null, cpuMax: { quota: null, period: 100000 }, pidsMax: null };
    expect(limitWrites('v2', ['memory', 'cpu', 'pids'], unlimited)).toEqual([['memory.max', 'max'], ['cpu.max', 'max 100000'], ['pids.max', 'max']]);
    expect(limitWrites('v1', ['memory', 'cpu'], unlimited)).toEqual([['memory.limit_in_bytes', '-1'], ['cpu.cfs_period_us', '100000'], ['cpu.cfs_quota_us', '-1']]);
  });

  it('parses mountinfo: cgroup2 with its controllers, v1 controllers from super options, escaped paths', () => {
    const mountinfo = [
      '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
      '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
      '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
      '39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids',
      '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd',
      '41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw',
      'garbage',
    ].join('\n');
    const h = parseCgroupMounts(mountinfo, (m) => (m === '/sys/fs/cgroup/uni fied' ? 'hugetlb\n' : ''));
    expect(h.v2).toEqual({ mount: '/sys/fs/cgroup/uni fied', controllers: new Set(['hugetlb']) });
    expect([...h.v1]).toEqual([['cpu', '/sys/fs/cgroup/cpu,cpuacct'], ['memory', '/sys/fs/cgroup/memory'], ['pids', '/sys/fs/cgroup/pids']]);
  });

  it('parseCpuMax and parseMemoryMax', () => {
    expect(parseCpuMax('max')).toEqual({ quota: null, period: 100000 });
    expect(parseCpuMax('20000')).toEqual({ quota: 20000, period: 100000 });
    expect(parseMemoryMax('max')).toBeNull();
    expect(parseMemoryMax('2G')).toBe(2 * 1024 ** 3);
    expect(parseMemoryMax(8 * 1024 * 1024)).toBe(8 * 1024 * 1024);
  });
});

describe('cgroup groups in a stand-in cgroupfs', () => {
  /** A hierarchy root as cgroupfs shows it (regular files here). */
  function fakeHierarchy(name: string, v2Controllers?: string): string {
    const root = fs.mkdtempSync(path.join(tmp, `${name}-`));
    if (v2Controllers !== undefined) {
      fs.writeFileSync(path.join(root, 'cgroup.controllers'), v2Controllers);
      fs.writeFileSync(path.join(root, 'cgroup.subtree_control'), '');
    }
    return root;
  }

  it('creates the groups, enables v2 controllers down to the parent, writes the limits; removes them again', async () => {
    const v2 = fakeHierarchy('v2', 'cpu memory pids');
    const mem = fakeHierarchy('mem');
    // cgroupfs creates the parent's subtree_control itself; here the test does.
    fs.mkdirSync(path.join(v2, 'kindling'));
    fs.writeFileSync(path.join(v2, 'kindling', 'cgroup.subtree_control'), 'memory');
    const limits: CgroupLimits = { parent: 'kindling', memoryMax: 64 << 20, pidsMax: 32, cpuMax: { quota: 10000, period: 100000 } };
    const h: CgroupHierarchies = { v2: { mount: v2, controllers: new Set(['cpu', 'pids']) }, v1: new Map([['memory', mem]]) };
    const set = createCgroups('vm-1', planCgroups(limits, h), limits);
    expect(set.dirs).toEqual([path.join(v2, 'kindling', 'vm-1'), path.join(mem, 'kindling', 'vm-1')]);
    expect(set.versions).toEqual(['v2', 'v1']);
    expect(fs.readFileSync(path.join(v2, 'cgroup.subtree_control'), 'utf8')).toBe('+cpu +pids');
    expect(fs.readFileSync(path.join(v2, 'kindling', 'cgroup.subtree_control'), 'utf8')).toBe('+cpu +pids');
    expect(fs.readFileSync(path.join(set.dirs[0], 'cpu.max'), 'utf8')).toBe('10000 100000');
    expect(fs.readFileSync(path.join(set.dirs[0], 'pids.max'), 'utf8')).toBe('32');
    expect(fs.readFileSync(path.join(set.dirs[1], 'memory.limit_in_bytes'), 'utf8')).toBe(String(64 << 20));
    fs.writeFileSync(path.join(set.dirs[1], 'memory.oom_control'), 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n');
    expect(oomKills(set)).toBe(2);
    // cgroupfs removes a group's files with it; a plain directory needs them gone first.
    for (const d of set.dirs) for (const f of fs.readdirSync(d)) fs.rmSync(path.join(d, f));
    expect(await removeCgroups(set)).toEqual([]);
    expect(set.dirs.some((d) => fs.existsSync(d))).toBe(false);
    expect(fs.existsSync(path.join(v2, 'kindling'))).toBe(true);
  });

  it('refuses a group that exists (JAIL_EXISTS) and rolls back what it made on any failure', () => {
    const v2 = fakeHierarchy('v2b', '');
    const pids = fakeHierarchy('pids');
    const limits: CgroupLimits = { parent: 'kindling', pidsMax: 8 };
    const plan = planCgroups(limits, { v2: { mount: v2, controllers: new Set() }, v1: new Map([['pids', pids]]) });
    fs.mkdirSync(path.join(pids, 'kindling', 'vm-2'), { recursive: true });
    expect(() => createCgroups('vm-2', plan, limits)).toThrow(expect.objectContaining({ name: 'JailError', code: 'JAIL_EXISTS' }));
    expect(fs.existsSync(path.join(v2, 'kindling', 'vm-2'))).toBe(false);
    // A later group that cannot be made (its parent is a file): the earlier one is removed again.
    const v2c = fakeHierarchy('v2c', '');
    const broken = fakeHierarchy('broken');
    fs.writeFileSync(path.join(broken, 'kindling'), '');
    const plan2 = planCgroups(limits, { v2: { mount: v2c, controllers: new Set() }, v1: new Map([['pids', broken]]) });
    expect(() => createCgroups('vm-3', plan2, limits)).toThrow(expect.objectContaining({ name: 'JailError', code: 'LAUNCH_FAILED' }));
    expect(fs.existsSync(path.join(v2c, 'kindling', 'vm-3'))).toBe(false);
  });
});
