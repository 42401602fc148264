/**
 * The seccomp policy of a vCPU thread: exactly what the KVM_RUN loop in src-native/vcpu_thread.cc
 * and the exit queue in src-native/exit_queue.cc make the thread call, found by reading them and by
 * tracing the threads (strace -f over the KVM test suite and a fresh process) with glibc 2.36.
 *
 * Register ioctls are not here: the JavaScript thread issues them while the vCPU is quiescent, so
 * this thread only ever enters KVM_RUN (Firecracker's vCPU threads, which save and restore state
 * themselves, need a dozen more). Anything else means the thread does something it was never
 * written to do: the guest has found a way to run code there. The default action traps; the
 * addon's SIGSYS handler reports the call and the kernel kills the process (src-native/seccomp.cc).
 * @module
 */
import { compileFilter, type ArgCheck, type FilterActions, type SeccompPolicy, type SyscallRule } from './policy';

/** errno EACCES. */
const EACCES = 13;

/** `KVM_RUN`: `_IO(KVMIO, 0x80)`. */
export const KVM_RUN = 0xae80;

const FUTEX_WAIT = 0;
const FUTEX_WAKE = 1;
const FUTEX_WAIT_BITSET = 9;
const FUTEX_PRIVATE_FLAG = 128;
const FUTEX_CLOCK_REALTIME = 256;

const PROT_NONE = 0;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_NORESERVE = 0x4000;
const MADV_DONTNEED = 4;
const SIGABRT = 6;

/** How the policy is specialised to one vCPU thread. */
export interface VcpuPolicyOptions {
  /** The vCPU's fd (`NativeVcpu.fd`): KVM_RUN is allowed on it alone. */
  readonly vcpuFd: number;
  /** The process id abort() may signal (default `process.pid`). */
  readonly pid?: number;
  /**
   * Where libc keeps the string "/proc/sys/vm/overcommit_memory" (`NativeAddon.libcStringAddress`):
   * glibc opens that file, once per process, the first time a thread arena shrinks, which can
   * happen on a vCPU thread. That one open is refused with EACCES (glibc then assumes the default
   * overcommit policy, as when the file is unreadable); every other open stays a refused call.
   */
  readonly overcommitPathAddress?: bigint;
}

const dword = (index: number, value: number): ArgCheck => ({ index, width: 'dword', value });
const qword = (index: number, value: number): ArgCheck => ({ index, width: 'qword', value });

/** The vCPU thread's allow-list, frequent calls first. */
export function vcpuSeccompPolicy(opts: VcpuPolicyOptions): SeccompPolicy {
  const pid = opts.pid ?? process.pid;
  const rules: SyscallRule[] = [
    {
      syscall: 'ioctl',
      args: [dword(0, opts.vcpuFd), dword(1, KVM_RUN)],
      reason: 'the run loop; also how a paused vCPU completes a pending I/O (immediate_exit)',
    },
    {
      syscall: 'futex',
      args: [dword(1, FUTEX_WAKE | FUTEX_PRIVATE_FLAG)],
      reason: 'unlocking the exit queue and waking the JavaScript thread waiting for a pause',
    },
    {
      syscall: 'futex',
      args: [dword(1, FUTEX_WAIT | FUTEX_PRIVATE_FLAG)],
      reason: 'a contended mutex (exit queue, Node.js thread-safe function queue, malloc arena)',
    },
    {
      syscall: 'futex',
      args: [dword(1, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)],
      reason: 'condition-variable waits for an answer from JavaScript, for resume, for queue space',
    },
    {
      syscall: 'write',
      reason: "libuv's wake-up of the event loop (an 8-byte eventfd write, napi_call_threadsafe_function), " +
        'and the SIGSYS report on stderr; the eventfd is private to libuv, so the fd is not checked',
    },
    { syscall: 'rt_sigreturn', reason: 'return from the kick signal handler that interrupts KVM_RUN' },
    {
      syscall: 'mmap',
      args: [qword(2, PROT_NONE), qword(3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)],
      reason: "glibc malloc reserving a thread arena (the thread's first allocation)",
    },
    {
      syscall: 'mmap',
      args: [qword(2, PROT_READ | PROT_WRITE), qword(3, MAP_PRIVATE | MAP_ANONYMOUS)],
      reason: 'glibc malloc: an allocation served by its own mapping',
    },
    {
      syscall: 'mmap',
      args: [qword(2, PROT_NONE), qword(3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)],
      reason: 'glibc malloc giving back the end of an arena when overcommit is strict (shrink_heap)',
    },
    {
      syscall: 'mprotect',
      args: [qword(2, PROT_READ | PROT_WRITE)],
      reason: 'glibc malloc growing a thread arena into its reservation (never executable)',
    },
    { syscall: 'munmap', reason: 'glibc malloc trimming an arena reservation or freeing a mapped chunk' },
    {
      syscall: 'sched_getaffinity',
      reason: "glibc malloc, once per process, when a thread's first allocation would make more than 8 " +
        'arenas: it sizes the arena limit by the CPUs the process may run on (arena_get2, ' +
        '__get_nprocs_sched); that thread can be a vCPU thread in a process with many threads',
    },
    {
      syscall: 'brk',
      reason: 'glibc malloc growing or trimming the main arena, which a thread gets once the process has ' +
        'as many arenas as glibc allows (8 per core)',
    },
    {
      syscall: 'madvise',
      args: [dword(2, MADV_DONTNEED)],
      reason: "glibc: shrinking an arena, and the thread's stack when it exits",
    },
    { syscall: 'rt_sigprocmask', reason: 'glibc blocks signals when the thread exits; abort() unblocks SIGABRT' },
    { syscall: 'exit', reason: 'the thread ends' },
    ...(opts.overcommitPathAddress !== undefined ? [{
      syscall: 'openat' as const,
      args: [{ index: 1, width: 'qword' as const, value: opts.overcommitPathAddress }],
      errno: EACCES,
      reason: "glibc's check_may_shrink_heap reading /proc/sys/vm/overcommit_memory when a thread arena first shrinks: " +
        'refused with EACCES, which glibc treats as the default policy (the path is libc\'s own constant string)',
    }] : []),
    // A C++ failure on this thread (std::terminate) ends in abort(): let it say so with SIGABRT
    // rather than be reported as a refused call. These can only signal this process.
    { syscall: 'getpid', reason: 'abort() raising SIGABRT' },
    { syscall: 'gettid', reason: 'abort() raising SIGABRT (glibc before 2.34 asks the kernel)' },
    { syscall: 'tgkill', args: [dword(0, pid), dword(2, SIGABRT)], reason: 'abort() raising SIGABRT in this process' },
    { syscall: 'rt_sigaction', args: [dword(0, SIGABRT)], reason: 'abort() resetting SIGABRT to its default action' },
  ];
  return { rules };
}

/**
 * The compiled filter for one vCPU thread, for `NativeVcpu.start()`.
 * @param actions defaults: allow, trap (reported, then SIGSYS), kill for other ABIs
 */
export function vcpuSeccompFilter(opts: VcpuPolicyOptions, actions?: FilterActions): Uint8Array {
  return compileFilter(vcpuSeccompPolicy(opts), actions);
}
