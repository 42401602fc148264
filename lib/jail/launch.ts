/**
 * Starting and ending a jailed child: the jail directory and cgroup, the launcher
 * (`kindling-jailer`, built next to the addon) with the socket pairs the child talks over, the
 * launcher's status reports, and the removal of everything on every way out.
 *
 * Order at start: `<chrootBase>/<id>` (exclusive: an existing one is refused), its empty `root`,
 * the cgroup, the socket pairs, the launcher. If any step fails, what the earlier ones made is
 * removed before the error is thrown. At the end the launcher, which stays in the host's mount
 * namespace and outlives this process if need be, removes the cgroup and the jail directory
 * before it reports the child's end; this process then checks (removing what is left) and closes
 * the sockets. A process that exits with jails alive kills their VMs on its way out, and their
 * launchers clean up after them.
 * @module
 */
import { spawn, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type { Readable } from 'stream';
import type { NativeAddon } from '../native/types';
import { cgroupProcs, createCgroups, oomKills, removeCgroups, type CgroupSet } from './cgroup';
import type { JailConfig } from './config';
import { jailContents, type JailContents } from './contents';
import { JailError } from './errors';

/** The launcher's file name, next to the addon. */
export const LAUNCHER_FILE = 'kindling-jailer';
/** Descriptor numbers in the child: the control socket, the descriptor socket, the launcher's status pipe. */
export const CONTROL_FD = 3;
/** See {@link CONTROL_FD}. */
export const FD_CHANNEL_FD = 4;
const STATUS_FD = 5;
/** The writable directory in the jail (`/snapshot`) where the child writes snapshots. */
export const SCRATCH_DIR = 'snapshot';
/** How much of the child's stderr is kept for the exit report. */
const STDERR_TAIL = 8192;
/** Status lines are short; more than this from the launcher is a broken launcher. */
const MAX_STATUS_BYTES = 4096;

/** How the child ended, as the launcher saw it. */
export interface ChildEnd {
  /** Its exit code, when it exited. */
  code: number | null;
  /** The signal that killed it (`'SIGKILL'`…), when one did. */
  signal: string | null;
  /** A step of the jail set-up that failed (`"pivot_root: EPERM"`), when one did. */
  setupError?: string;
}

/** What {@link launchJail} needs. */
export interface LaunchOptions {
  /** The VM's id: the jail's directory and cgroup names, and the child's host name. */
  id: string;
  /** The validated jail. */
  jail: JailConfig;
  /** The loaded addon (socket pairs, descriptors). */
  addon: NativeAddon;
  /** The addon's file: the child loads the same one, and the launcher is next to it. */
  addonPath: string;
  /** Whether the child installs its whole-process seccomp filter (the VM's `seccomp` option). */
  seccomp: boolean;
}

const live = new Set<JailProcess>();
let exitHookInstalled = false;

/**
 * A launched jail: the launcher and its child, the sockets to the child, and the host resources
 * made for it. Create with {@link launchJail}.
 */
export class JailProcess {
  /** The child's pid in this process's PID namespace (0 until the launcher reports it). */
  pid = 0;
  /** Resolves once the launcher has ended, with how the child ended. */
  readonly ended: Promise<ChildEnd>;
  private end: ChildEnd | undefined;
  private setupError: string | undefined;
  private childSignal: string | null = null;
  private childCode: number | null = null;
  private stderr = '';
  private cleaned: Promise<string[]> | undefined;
  private fdSocketOpen = true;
  /** Whether the launcher reported the child's end (else it was killed with the launcher). */
  private reported = false;
  private killTimer: NodeJS.Timeout | undefined;
  /** OOM kills the launcher counted before it removed the cgroup. */
  private oomReported = 0;
  private pidKnown!: (ok: boolean) => void;
  /** Resolves true once the child's pid is known, false if the launcher ended first. */
  readonly started: Promise<boolean>;

  /** @internal */
  constructor(
    /** The VM's id. */
    readonly id: string,
    /** `<chrootBase>/<id>`. */
    readonly dir: string,
    /** `<chrootBase>/<id>/root`: the child's `/`. */
    readonly root: string,
    /** The child's cgroups. */
    readonly cgroups: CgroupSet,
    /** The control socket (this end). */
    readonly control: net.Socket,
    /** This end of the descriptor socket. */
    readonly fdSocket: number,
    private readonly launcher: ChildProcess,
    private readonly addon: NativeAddon,
  ) {
    this.started = new Promise((resolve) => { this.pidKnown = resolve; });
    this.ended = new Promise((resolve) => {
      launcher.once('close', (code, signal) => {
        if (this.setupError === undefined && this.childCode === null && this.childSignal === null && this.pid === 0) {
          this.setupError = `the launcher ended (${signal ?? `exit ${code}`}) without starting the child`;
        }
        this.end = {
          code: this.childCode,
          signal: this.childSignal ?? (this.childCode === null && this.pid !== 0 && !this.reported ? 'SIGKILL' : null),
          ...(this.setupError !== undefined ? { setupError: this.setupError } : {}),
        };
        this.pidKnown(false);
        if (this.killTimer) clearTimeout(this.killTimer);
        resolve(this.end);
      });
    });
  }

  /** @internal Takes the launcher's status lines. */
  status(line: string): void {
    const err = /^error (.{1,64}) (\d{1,5})$/.exec(line);
    if (err) {
      if (this.setupError === undefined) this.setupError = `${err[1]}: ${errnoName(Number(err[2]))}`;
      return;
    }
    const m = /^(pid|exit|signal|oom) (\d{1,10})$/.exec(line);
    if (!m) return;
    const n = Number(m[2]);
    if (m[1] === 'pid') {
      if (n > 0 && this.pid === 0) {
        this.pid = n;
        this.pidKnown(true);
      }
    } else if (m[1] === 'exit') {
      this.childCode = n;
      this.reported = true;
    } else if (m[1] === 'signal') {
      this.childSignal = signalName(n);
      this.reported = true;
    } else if (n > 0) {
      this.oomReported = n;
    }
  }

  /** @internal Keeps the end of the child's stderr. */
  stderrData(chunk: Buffer): void {
    this.stderr = (this.stderr + chunk.toString('utf8')).slice(-STDERR_TAIL);
    if (process.env.KINDLING_JAIL_DEBUG === '1') process.stderr.write(`[jail ${this.id}] ${chunk.toString('utf8')}`);
  }

  /** The last lines the child wrote to stderr (at most 8 KiB): the seccomp report of a killed child, say. */
  get stderrTail(): string {
    return this.stderr;
  }

  /**
   * Whether the launcher, the child and its sockets keep this process's event loop alive (they do
   * from launch on; a child prepared ahead of time is let go until its VM starts).
   */
  hold(on: boolean): void {
    const streams = [this.control, this.launcher.stdout, this.launcher.stderr, (this.launcher.stdio as unknown as (net.Socket | null)[])[5]];
    if (on) {
      this.launcher.ref();
      for (const s of streams) (s as net.Socket | null)?.ref?.();
    } else {
      this.launcher.unref();
      for (const s of streams) (s as net.Socket | null)?.unref?.();
    }
  }

  /**
   * How often the cgroup's memory limit made the kernel kill a process of the jail (as the launcher
   * counted it before removing the cgroup, or as the cgroup says while it is there).
   */
  oomKills(): number {
    return Math.max(this.oomReported, oomKills(this.cgroups));
  }

  /** The child's end, once known. */
  get result(): ChildEnd | undefined {
    return this.end;
  }

  /**
   * Kills the child now (SIGKILL through its cgroup, whatever else is in it too) and has the
   * launcher end (SIGTERM: it kills the child by its pid as well, removes the cgroup and the jail
   * directory, reports, exits). A launcher that has not ended 10 s later is killed outright.
   * Idempotent.
   */
  kill(): void {
    if (this.end) return;
    if (this.pid !== 0) {
      // Only through the cgroup: a bare pid may already belong to somebody else.
      for (const dir of this.cgroups.dirs) {
        try {
          fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
        } catch {
          for (const pid of cgroupProcs(dir)) {
            try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
          }
        }
      }
    }
    this.launcher.kill('SIGTERM');
    this.killTimer ??= setTimeout(() => this.launcher.kill('SIGKILL'), 10_000);
    this.killTimer.unref();
  }

  /**
   * After {@link ended}: removes the cgroup and the jail directory and closes the sockets.
   * Idempotent; resolves with what could not be removed (empty when everything went).
   */
  cleanup(): Promise<string[]> {
    this.cleaned ??= (async () => {
      await this.ended;
      live.delete(this);
      this.control.destroy();
      if (this.fdSocketOpen) {
        this.fdSocketOpen = false;
        try { this.addon.closeFd(this.fdSocket); } catch { /* already closed */ }
      }
      const left = await removeCgroups(this.cgroups);
      const dirLeft = removeJailDir(this.dir);
      if (dirLeft) left.push(dirLeft);
      return left;
    })();
    return this.cleaned;
  }

  /**
   * @internal At process exit: the VM dies at once (SIGKILL through its cgroup) and the launcher,
   * which outlives this process, removes the cgroup and the jail directory (it also gets SIGTERM
   * from the kernel when this process is gone: PR_SET_PDEATHSIG).
   */
  killAtExit(): void {
    for (const dir of this.cgroups.dirs) {
      try { fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1'); } catch { /* v1 */ }
      for (const pid of cgroupProcs(dir)) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
    try { this.launcher.kill('SIGTERM'); } catch { /* gone */ }
  }
}

/**
 * Removes a jail directory. Its mounts existed only in the child's mount namespace, which is gone
 * with the child; what is left on disk is the empty mount points and the scratch directory.
 * Refuses (and reports) a directory under which this process still sees a mount, rather than
 * deleting through it. Returns the path when it could not be removed.
 */
export function removeJailDir(dir: string): string | undefined {
  try {
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter(Boolean);
    if (mounts.some((m) => m === dir || m.startsWith(`${dir}/`))) return `${dir} (a mount is still there)`;
  } catch { /* no /proc: go on */ }
  try {
    fs.rmSync(dir, { recursive: true, force: true });
    return undefined;
  } catch (e) {
    return `${dir} (${(e as Error).message})`;
  }
}

/**
 * Builds the jail of VM `id` and starts the launcher; resolves once the child's pid is known
 * (the child is then starting Node inside the jail).
 * @throws JailError JAIL_EXISTS, LAUNCH_FAILED (everything made so far removed)
 */
export async function launchJail(opts: LaunchOptions): Promise<JailProcess> {
  const { id, jail, addon } = opts;
  const contents = jailContents(opts.addonPath);
  const launcherPath = path.join(path.dirname(fs.realpathSync(opts.addonPath)), LAUNCHER_FILE);
  if (!fs.existsSync(launcherPath)) throw new JailError('LAUNCH_FAILED', `the jail launcher ${launcherPath} is missing: rebuild the addon (npm run build:native)`);
  const dir = path.join(jail.chrootBase, id);
  try {
    fs.mkdirSync(dir, { mode: 0o755 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new JailError('JAIL_EXISTS', `${dir} exists: a jailed VM with id ${id} runs, or one was not cleaned up`);
    throw new JailError('LAUNCH_FAILED', `cannot create ${dir}: ${(e as Error).message}`, { cause: e });
  }
  const root = path.join(dir, 'root');
  let cgroups: CgroupSet | undefined;
  const fds: number[] = [];
  try {
    fs.mkdirSync(root, { mode: 0o755 });
    cgroups = createCgroups(id, jail.cgroupPlan, jail.cgroup);
    const [controlParent, controlChild] = addon.socketPair('stream');
    fds.push(controlParent, controlChild);
    const [fdParent, fdChild] = addon.socketPair('seqpacket');
    fds.push(fdParent, fdChild);
    const launcher = spawn(launcherPath, launcherArgs(opts, contents, root, cgroups), {
      stdio: ['ignore', 'pipe', 'pipe', controlChild, fdChild, 'pipe'],
      env: {},
    });
    // The child has its own copies now (or the spawn failed): this process keeps only its ends.
    addon.closeFd(controlChild);
    addon.closeFd(fdChild);
    fds.length = 0;
    const control = new net.Socket({ fd: controlParent, readable: true, writable: true });
    const jp = new JailProcess(id, dir, root, cgroups, control, fdParent, launcher, addon);
    live.add(jp);
    installExitHook();
    launcher.on('error', (e) => jp.status(`error spawn ${Math.abs((e as NodeJS.ErrnoException).errno ?? 0)}`));
    readStatus((launcher.stdio as unknown as Readable[])[5], jp);
    launcher.stdout!.resume();
    launcher.stderr!.on('data', (c: Buffer) => jp.stderrData(c));
    if (!(await jp.started)) {
      const end = await jp.ended;
      await jp.cleanup();
      throw new JailError('LAUNCH_FAILED', `building the jail of ${id} failed: ${end.setupError ?? describeEnd(end)}${jp.stderrTail ? `; stderr: ${jp.stderrTail.trim()}` : ''}`);
    }
    return jp;
  } catch (e) {
    for (const fd of fds) {
      try { addon.closeFd(fd); } catch { /* closed */ }
    }
    if (e instanceof JailError && e.code === 'LAUNCH_FAILED' && !fs.existsSync(dir)) throw e;
    if (cgroups) await removeCgroups(cgroups);
    removeJailDir(dir);
    if (e instanceof JailError) throw e;
    throw new JailError('LAUNCH_FAILED', `building the jail of ${id} failed: ${(e as Error).message}`, { cause: e });
  }
}

function launcherArgs(opts: LaunchOptions, contents: JailContents, root: string, cgroups: CgroupSet): string[] {
  const { id, jail } = opts;
  const args = [
    '--root', root, '--uid', String(jail.uid), '--gid', String(jail.gid), '--hostname', id,
    '--status-fd', String(STATUS_FD), '--keep-fds', String(STATUS_FD), '--scratch', SCRATCH_DIR,
  ];
  if (jail.newPidNs) args.push('--new-pid-ns');
  if (jail.netns) args.push('--netns', jail.netns);
  for (const d of cgroups.dirs) args.push('--cgroup', d);
  for (const b of contents.binds) args.push('--bind', `${b.source}:${b.target}`);
  const env = [
    `KINDLING_ADDON=${contents.addon}`,
    `LD_LIBRARY_PATH=${contents.libraryDirs.join(':')}`,
    // libuv's io_uring would let file operations past the seccomp filter's argument checks.
    'UV_USE_IO_URING=0',
    `KINDLING_JAIL_SECCOMP=${opts.seccomp ? '1' : '0'}`,
  ];
  for (const e of env) args.push('--env', e);
  args.push('--', contents.node, '--disallow-code-generation-from-strings', contents.childScript);
  return args;
}

function readStatus(stream: Readable, jp: JailProcess): void {
  let buf = '';
  let total = 0;
  stream.on('data', (c: Buffer) => {
    total += c.length;
    if (total > MAX_STATUS_BYTES) return;
    buf += c.toString('latin1');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      jp.status(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const jp of live) jp.killAtExit();
  });
}

/** "SIGKILL" for 9 (the numbers of x86-64 Linux). */
export function signalName(n: number): string {
  const names = os.constants.signals as Record<string, number>;
  for (const [name, num] of Object.entries(names)) if (num === n) return name;
  return `signal ${n}`;
}

function errnoName(n: number): string {
  const names = os.constants.errno as Record<string, number>;
  for (const [name, num] of Object.entries(names)) if (num === n) return name;
  return `errno ${n}`;
}

/** "killed by SIGSYS", "exit code 3". */
export function describeEnd(end: ChildEnd): string {
  if (end.setupError) return `the jail could not be built (${end.setupError})`;
  if (end.signal) return `killed by ${end.signal}`;
  return `exit code ${end.code}`;
}
