/**
 * The seccomp policy of a jailed child process (lib/jail): one filter for every thread of the
 * Node process that runs a VM inside a jail (Node's and V8's threads, libuv's thread pool, the
 * vCPU threads, which add their own filter on top).
 *
 * Installed after the child has loaded everything it will ever run and before it reads its
 * configuration, so what it allows is what the steady state needs. Found by tracing jailed
 * children (strace -f from the first instruction after installation) through boots of the test
 * guests with serial I/O and drives, pause, resume, drive updates, snapshots and restores in both
 * memory modes, with glibc 2.36 and Node.js 20.
 *
 * Default deny: anything not listed traps, and the addon's SIGSYS handler reports the call on
 * stderr before the kernel kills the process (the parent reports the VM's end with SIGSYS).
 * Argument checks where an argument decides what a call can reach:
 * - `ioctl`: only the request numbers the machine issues (KVM, the TAP offload setting, and the
 *   non-blocking and terminal queries of Node's stdio); `TIOCSTI`, `TUNSETIFF` and the rest trap.
 * - `openat`: writing a new file (the snapshot files, in the jail's only writable directory) is
 *   allowed; any read-only open fails with EACCES (nothing in the jail is to be read after
 *   start-up); every other open (read-write, append, O_PATH, O_TMPFILE) traps. `open`, `creat`
 *   are not allowed at all; `openat2` answers ENOSYS.
 * - `socket`: Unix stream sockets only (vsock's host side); `AF_INET` and the rest trap.
 * - `clone`: threads only (the flags pthread_create uses); `clone3` answers ENOSYS so that glibc
 *   falls back to clone, whose flags a filter can read. fork, vfork, execve, execveat trap.
 * - `tgkill`: only threads of this process; `kill` traps.
 * - `prctl`: thread names and no_new_privs (which the vCPU threads set before their own filter);
 *   `seccomp`: adding a filter to the calling thread, nothing else.
 * - `fcntl`: the descriptor-flag and status-flag commands and F_DUPFD_CLOEXEC.
 * Memory calls (mmap, mprotect…) are not argument-checked: V8's JIT needs executable mappings.
 * @module
 */
import { compileFilter, type ArgCheck, type FilterActions, type SeccompPolicy, type SyscallRule } from './policy';

/** ioctl request numbers (linux/kvm.h, linux/if_tun.h, asm-generic/ioctls.h) the machine issues. */
export const PROCESS_IOCTLS: Readonly<Record<string, number>> = {
  // The frequent ones first: each earlier entry costs a comparison.
  KVM_RUN: 0xae80,
  KVM_IRQ_LINE: 0x4008ae61,
  KVM_GET_API_VERSION: 0xae00,
  KVM_CREATE_VM: 0xae01,
  KVM_GET_MSR_INDEX_LIST: 0xc004ae02,
  KVM_CHECK_EXTENSION: 0xae03,
  KVM_GET_VCPU_MMAP_SIZE: 0xae04,
  KVM_GET_SUPPORTED_CPUID: 0xc008ae05,
  KVM_CREATE_VCPU: 0xae41,
  KVM_GET_DIRTY_LOG: 0x4010ae42,
  KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
  KVM_SET_TSS_ADDR: 0xae47,
  KVM_SET_IDENTITY_MAP_ADDR: 0x4008ae48,
  KVM_CREATE_IRQCHIP: 0xae60,
  KVM_GET_IRQCHIP: 0xc208ae62,
  KVM_SET_IRQCHIP: 0x8208ae63,
  KVM_IRQFD: 0x4020ae76,
  KVM_CREATE_PIT2: 0x4040ae77,
  KVM_IOEVENTFD: 0x4040ae79,
  KVM_SET_CLOCK: 0x4030ae7b,
  KVM_GET_CLOCK: 0x8030ae7c,
  KVM_GET_REGS: 0x8090ae81,
  KVM_SET_REGS: 0x4090ae82,
  KVM_GET_SREGS: 0x8138ae83,
  KVM_SET_SREGS: 0x4138ae84,
  KVM_GET_MSRS: 0xc008ae88,
  KVM_SET_MSRS: 0x4008ae89,
  KVM_GET_FPU: 0x81a0ae8c,
  KVM_SET_FPU: 0x41a0ae8d,
  KVM_GET_LAPIC: 0x8400ae8e,
  KVM_SET_LAPIC: 0x4400ae8f,
  KVM_SET_CPUID2: 0x4008ae90,
  KVM_GET_CPUID2: 0xc008ae91,
  KVM_GET_MP_STATE: 0x8004ae98,
  KVM_SET_MP_STATE: 0x4004ae99,
  KVM_GET_PIT2: 0x8070ae9f,
  KVM_GET_VCPU_EVENTS: 0x8040ae9f,
  KVM_SET_PIT2: 0x4070aea0,
  KVM_SET_VCPU_EVENTS: 0x4040aea0,
  KVM_GET_DEBUGREGS: 0x8080aea1,
  KVM_SET_DEBUGREGS: 0x4080aea2,
  KVM_SET_TSC_KHZ: 0xaea2,
  KVM_GET_TSC_KHZ: 0xaea3,
  KVM_GET_XSAVE: 0x9000aea4,
  KVM_SET_XSAVE: 0x5000aea5,
  KVM_GET_XCRS: 0x8188aea6,
  KVM_SET_XCRS: 0x4188aea7,
  KVM_KVMCLOCK_CTRL: 0xaead,
  KVM_GET_XSAVE2: 0x9000aecf,
  TUNSETOFFLOAD: 0x400454d0,
  FIONBIO: 0x5421,
  TCGETS: 0x5401,
};

const O_WRONLY = 0o1;
const O_ACCMODE = 0o3;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const O_CLOEXEC = 0o2000000;
/** __O_TMPFILE without the O_DIRECTORY bit it is always combined with. */
const O_TMPFILE_BIT = 0o20000000;
const EACCES = 13;
const ENOSYS = 38;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
/** The socket type without SOCK_NONBLOCK and SOCK_CLOEXEC. */
const SOCK_TYPE_MASK = 0xf;
/** What glibc's pthread_create passes to clone. */
const PTHREAD_CLONE_FLAGS = 0x3d0f00;
const PR_SET_NAME = 15;
const PR_SET_NO_NEW_PRIVS = 38;
const SECCOMP_SET_MODE_FILTER = 1;
const F_GETFD = 1;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const F_DUPFD_CLOEXEC = 1030;

const dword = (index: number, value: number, mask?: number): ArgCheck => ({ index, width: 'dword', value, ...(mask !== undefined ? { mask } : {}) });

/** How the policy is specialised to one process. */
export interface ProcessPolicyOptions {
  /** The process id as the child sees it (1 in a new PID namespace; default `process.pid`). */
  readonly pid?: number;
}

/** The jailed child's allow-list, frequent calls first. */
export function processSeccompPolicy(opts: ProcessPolicyOptions = {}): SeccompPolicy {
  const pid = opts.pid ?? process.pid;
  const allow = (syscall: SyscallRule['syscall'], reason: string, args?: ArgCheck[]): SyscallRule => ({ syscall, reason, ...(args ? { args } : {}) });
  const rules: SyscallRule[] = [
    ...Object.entries(PROCESS_IOCTLS).map(([name, request]) => allow('ioctl', name, [dword(1, request)])),
    allow('futex', 'locks and condition variables of every thread'),
    allow('epoll_pwait', "libuv's event loop"),
    allow('read', 'the control socket, eventfds, drive and kernel files'),
    allow('write', 'the control socket, eventfds (irqfd, wake-ups), snapshot files, stderr'),
    allow('pread64', 'drive reads'),
    allow('pwrite64', 'drive writes, memory files'),
    allow('preadv', 'scattered drive reads'),
    allow('pwritev', 'gathered drive writes'),
    allow('readv', 'TAP frames'),
    allow('writev', 'TAP frames, stream writes'),
    allow('epoll_ctl', "libuv's event loop"),
    allow('epoll_wait', "libuv's event loop"),
    allow('close', 'descriptors'),
    allow('mmap', 'heap, thread stacks, guest memory, vCPU run areas (not checked: V8 maps code)'),
    allow('munmap', 'the same'),
    allow('mprotect', "V8's code space and heap, thread stack guards"),
    allow('madvise', 'heap trimming, MADV_DONTFORK of guest memory, balloon'),
    allow('mremap', 'growing allocations'),
    allow('brk', 'the main heap'),
    allow('rt_sigprocmask', 'signal masks of new threads and the vCPU kick'),
    allow('rt_sigreturn', 'return from signal handlers (the vCPU kick)'),
    allow('rt_sigaction', 'the SIGSYS reporter is checked again before each vCPU thread starts'),
    allow('tgkill', 'kicking vCPU threads out of KVM_RUN; abort()', [dword(0, pid)]),
    allow('clone', 'new threads (vCPUs, the thread pool)', [{ index: 0, width: 'qword', value: PTHREAD_CLONE_FLAGS }]),
    { syscall: 'clone3', reason: 'glibc tries clone3 first and falls back to clone on ENOSYS', errno: ENOSYS },
    allow('set_robust_list', 'new threads'),
    allow('rseq', 'new threads'),
    allow('exit', 'threads ending'),
    allow('exit_group', 'the process ending'),
    allow('sched_yield', 'spin waits'),
    allow('nanosleep', 'short sleeps'),
    allow('clock_nanosleep', 'short sleeps'),
    allow('clock_gettime', 'time, when the vDSO falls back to the call'),
    allow('gettimeofday', 'the same'),
    allow('getpid', "abort() and Node's process.pid"),
    allow('gettid', 'thread ids'),
    allow('getrandom', 'snapshot ids, V8 hash seeds'),
    allow('uname', "Node's os queries"),
    allow('restart_syscall', 'calls interrupted by the vCPU kick signal'),
    allow('prctl', 'thread names', [dword(0, PR_SET_NAME)]),
    allow('prctl', 'no_new_privs, before a vCPU thread adds its own filter', [dword(0, PR_SET_NO_NEW_PRIVS)]),
    allow('seccomp', "a vCPU thread's own filter", [dword(0, SECCOMP_SET_MODE_FILTER), dword(1, 0)]),
    allow('eventfd2', 'irqfds and ioeventfds of the devices'),
    allow('fstat', 'descriptors'),
    allow('newfstatat', 'descriptors (fstat through AT_EMPTY_PATH)'),
    allow('statx', "Node's fs.stat, of descriptors and paths in the jail"),
    allow('lseek', 'memory files (SEEK_DATA/SEEK_HOLE)'),
    allow('ftruncate', 'memory files'),
    allow('fdatasync', 'drive FLUSH, snapshot files'),
    allow('fsync', 'the same'),
    ...[F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC].map((cmd) => allow('fcntl', 'descriptor and status flags', [dword(1, cmd)])),
    allow('openat', 'snapshot files in the jail\'s writable directory', [dword(2, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC)]),
    {
      syscall: 'openat',
      args: [dword(2, 0, O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE_BIT)],
      reason: 'read-only opens fail: the jail holds nothing to read after start-up, but libraries probe (/proc/self/pagemap)',
      errno: EACCES,
    },
    { syscall: 'openat2', reason: 'not used; glibc and libuv fall back', errno: ENOSYS },
    allow('mkdir', 'the snapshot directory (exists already)'),
    allow('rename', 'snapshot files into place'),
    allow('unlink', 'a snapshot file being replaced'),
    allow('recvmsg', 'descriptors from the parent'),
    allow('sendmsg', 'Unix stream sockets'),
    allow('getsockname', 'Node wraps the control socket'),
    allow('getsockopt', 'the same'),
    allow('getpeername', 'Unix stream sockets'),
    allow('shutdown', 'half-closing the control socket and vsock streams'),
    allow('socket', 'Unix stream sockets (vsock\'s host side)', [dword(0, AF_UNIX), dword(1, SOCK_STREAM, SOCK_TYPE_MASK)]),
    allow('connect', 'Unix stream sockets'),
    allow('accept4', 'Unix stream sockets'),
    allow('bind', 'Unix stream sockets'),
    allow('listen', 'Unix stream sockets'),
    allow('sched_getaffinity', "libuv's thread-pool size"),
    { syscall: 'io_uring_setup', reason: "libuv's io_uring (its operations would bypass these checks): it falls back", errno: ENOSYS },
  ];
  return { rules };
}

/** {@link processSeccompPolicy} compiled (default actions: trap, and kill for other ABIs). */
export function processSeccompFilter(opts: ProcessPolicyOptions = {}, actions?: FilterActions): Uint8Array {
  return compileFilter(processSeccompPolicy(opts), actions);
}
