/**
 * The jailed child's whole-process seccomp policy (lib/seccomp/process.ts): what it allows,
 * fails and refuses, as the model says and as the kernel runs it (the test build's
 * seccompEvaluate hook), and installed for real in a Node process (TSYNC: every thread).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import fc from 'fast-check';
import { loadNative } from '../../lib/native/binding';
import {
  PROCESS_IOCTLS, SYSCALLS, compileFilter, evaluatePolicy, processSeccompPolicy, seccompRetErrno, type SeccompVerdict,
} from '../../lib/seccomp';
import { ADDON_PATH, runNode, testHooks, type RawCall } from './helpers/native-hooks';

const hooks = testHooks(loadNative());
const PID = 4321;
const policy = processSeccompPolicy({ pid: PID });

const ERRNO_MATCH = 1001;
const ERRNO_MISMATCH = 1002;
const ERRNO_FOREIGN = 1003;
const EACCES = 13;
const ENOSYS = 38;

/** The kernel's verdict per call, read back from the errno each action answers with. */
function kernel(calls: RawCall[]): (SeccompVerdict | string)[] {
  const filter = compileFilter(policy, { onMatch: seccompRetErrno(ERRNO_MATCH), onMismatch: seccompRetErrno(ERRNO_MISMATCH), onForeignAbi: seccompRetErrno(ERRNO_FOREIGN) });
  return hooks.seccompEvaluate(filter, calls).map((r) => {
    if (r === -ERRNO_MATCH) return 'match';
    if (r === -ERRNO_MISMATCH) return 'mismatch';
    if (r === -ERRNO_FOREIGN) return 'foreign-abi';
    if (r === -EACCES || r === -ENOSYS) return 'errno';
    return `unexpected ${r}`;
  });
}

function model(calls: RawCall[]): SeccompVerdict[] {
  return calls.map(([nr, ...args]) => evaluatePolicy(policy, { nr: Number(nr), args: args.map((a) => BigInt.asUintN(64, BigInt(a))) }));
}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;
const O_PATH = 0o10000000;
const O_TMPFILE = 0o20200000;
const AT_FDCWD = -100;
const AF_UNIX = 1;
const AF_INET = 2;
const AF_NETLINK = 16;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SOCK_NONBLOCK = 0o4000;
const PTHREAD_FLAGS = 0x3d0f00;
const SIGCHLD = 17;
const TIOCSTI = 0x5412;
const TUNSETIFF = 0x400454ca;

const cases: [string, RawCall, SeccompVerdict][] = [
  ['KVM_RUN', [SYSCALLS.ioctl, 7, PROCESS_IOCTLS.KVM_RUN, 0], 'match'],
  ['KVM_CREATE_VM', [SYSCALLS.ioctl, 7, PROCESS_IOCTLS.KVM_CREATE_VM, 0], 'match'],
  ['TUNSETOFFLOAD', [SYSCALLS.ioctl, 7, PROCESS_IOCTLS.TUNSETOFFLOAD, 0], 'match'],
  ['TIOCSTI', [SYSCALLS.ioctl, 0, TIOCSTI, 0], 'mismatch'],
  ['TUNSETIFF', [SYSCALLS.ioctl, 7, TUNSETIFF, 0], 'mismatch'],
  ['a request with KVM_RUN in the low half only', [SYSCALLS.ioctl, 7, 0x1_0000_ae80n, 0], 'match'],
  ['openat for a new snapshot file', [SYSCALLS.openat, AT_FDCWD, 0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600], 'match'],
  ['openat read-only', [SYSCALLS.openat, AT_FDCWD, 0, O_RDONLY | O_CLOEXEC], 'errno'],
  ['openat of a directory', [SYSCALLS.openat, AT_FDCWD, 0, O_RDONLY | O_DIRECTORY | O_CLOEXEC], 'errno'],
  ['openat O_PATH', [SYSCALLS.openat, AT_FDCWD, 0, O_PATH | O_CLOEXEC], 'errno'],
  ['openat read-write', [SYSCALLS.openat, AT_FDCWD, 0, O_RDWR | O_CLOEXEC], 'mismatch'],
  ['openat for appending', [SYSCALLS.openat, AT_FDCWD, 0, O_WRONLY | O_APPEND | O_CLOEXEC], 'mismatch'],
  ['openat O_TMPFILE', [SYSCALLS.openat, AT_FDCWD, 0, O_TMPFILE | O_RDWR], 'mismatch'],
  ['openat writing without O_TRUNC', [SYSCALLS.openat, AT_FDCWD, 0, O_WRONLY | O_CREAT | O_CLOEXEC], 'mismatch'],
  ['open', [SYSCALLS.open, 0, O_RDONLY], 'mismatch'],
  ['creat', [SYSCALLS.creat, 0, 0o600], 'mismatch'],
  ['openat2', [SYSCALLS.openat2, AT_FDCWD, 0, 0, 24], 'errno'],
  ['a Unix stream socket', [SYSCALLS.socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0], 'match'],
  ['a Unix datagram socket', [SYSCALLS.socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0], 'mismatch'],
  ['an IPv4 socket', [SYSCALLS.socket, AF_INET, SOCK_STREAM, 0], 'mismatch'],
  ['a netlink socket', [SYSCALLS.socket, AF_NETLINK, SOCK_DGRAM, 0], 'mismatch'],
  ['clone of a thread', [SYSCALLS.clone, PTHREAD_FLAGS, 0, 0, 0, 0], 'match'],
  ['clone of a process (fork)', [SYSCALLS.clone, SIGCHLD, 0, 0, 0, 0], 'mismatch'],
  ['clone3', [SYSCALLS.clone3, 0, 88], 'errno'],
  ['fork', [SYSCALLS.fork], 'mismatch'],
  ['execve', [SYSCALLS.execve, 0, 0, 0], 'mismatch'],
  ['execveat', [SYSCALLS.execveat, 0, 0, 0, 0, 0], 'mismatch'],
  ['tgkill of an own thread', [SYSCALLS.tgkill, PID, 9, 34], 'match'],
  ['tgkill of another process', [SYSCALLS.tgkill, PID + 1, PID + 1, 9], 'mismatch'],
  ['kill', [SYSCALLS.kill, 1, 9], 'mismatch'],
  ['ptrace', [SYSCALLS.ptrace, 16, 1, 0, 0], 'mismatch'],
  ['process_vm_writev', [SYSCALLS.process_vm_writev, 1, 0, 0, 0, 0, 0], 'mismatch'],
  ['prctl(PR_SET_NAME)', [SYSCALLS.prctl, 15, 0], 'match'],
  ['prctl(PR_SET_DUMPABLE)', [SYSCALLS.prctl, 4, 1], 'mismatch'],
  ['seccomp(SET_MODE_FILTER, 0)', [SYSCALLS.seccomp, 1, 0, 0], 'match'],
  ['seccomp with TSYNC', [SYSCALLS.seccomp, 1, 1, 0], 'mismatch'],
  ['fcntl(F_GETFL)', [SYSCALLS.fcntl, 3, 3], 'match'],
  ['fcntl(F_SETOWN)', [SYSCALLS.fcntl, 3, 8, 1], 'mismatch'],
  ['io_uring_setup', [SYSCALLS.io_uring_setup, 8, 0], 'errno'],
  ['memfd_create', [SYSCALLS.memfd_create, 0, 0], 'mismatch'],
  ['mount (165)', [165, 0, 0, 0, 0, 0], 'mismatch'],
  ['unshare (272)', [272, 0x20000], 'mismatch'],
  ['setns (308)', [308, 3, 0], 'mismatch'],
];

describe('the jailed child\'s seccomp policy', () => {
  it.each(cases)('%s', (_what, call, verdict) => {
    expect(model([call])).toEqual([verdict]);
  });

  it('means the same to the kernel as to the model', () => {
    const calls = cases.map(([, c]) => c);
    expect(kernel(calls)).toEqual(cases.map(([, , v]) => v));
  });

  it('agrees with the kernel on random calls and arguments', () => {
    const numbers = [...new Set([...Object.values(SYSCALLS), 165, 272, 308])];
    const arg = fc.oneof(fc.constantFrom(0, 1, 2, PID, PTHREAD_FLAGS, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, ...Object.values(PROCESS_IOCTLS)), fc.integer({ min: 0, max: 0xffffffff }));
    fc.assert(fc.property(fc.array(fc.tuple(fc.constantFrom(...numbers), arg, arg, arg), { minLength: 1, maxLength: 40 }), (raw) => {
      const calls: RawCall[] = raw.map(([nr, a, b, c]) => [nr, a, b, c]);
      // The hook runs the calls for real in a child, under a guard that fails everything first:
      // nothing here reaches the kernel's implementation of a call.
      expect(kernel(calls)).toEqual(model(calls));
    }), { numRuns: 20 });
  });

  it('installed for real (TSYNC): threads and timers go on, reads fail with EACCES, a new file can be written, fork kills the process', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-procsec-'));
    try {
      const r = runNode(`
        require(${JSON.stringify(require.resolve('../../bench/register-ts'))});
        const fs = require('fs');
        const { processSeccompFilter } = require(${JSON.stringify(require.resolve('../../lib/seccomp'))});
        const a = require(${JSON.stringify(ADDON_PATH)});
        a.installProcessSeccomp(processSeccompFilter());
        try { fs.openSync('/etc/hostname', 'r'); console.log('read-open: allowed'); } catch (e) { console.log('read-open: ' + e.code); }
        fs.writeFileSync(${JSON.stringify(path.join(dir, 'written'))}, 'ok');
        console.log('write-new: ok');
        // libuv's thread pool starts its threads only now, under the filter.
        fs.fdatasync(1, () => {
          setTimeout(() => {
            console.log('pool and timers: ok');
            require('child_process').spawnSync('/bin/true');
            console.log('fork: allowed');
          }, 10);
        });
      `);
      expect(r.stdout.split('\n').filter(Boolean)).toEqual(['read-open: EACCES', 'write-new: ok', 'pool and timers: ok']);
      expect(fs.readFileSync(path.join(dir, 'written'), 'utf8')).toBe('ok');
      expect(r.signal).toBe('SIGSYS');
      expect(r.stderr).toMatch(/kindling: seccomp: a thread made system call \d+ \(arch 0xc000003e/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
