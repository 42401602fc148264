/**
 * The x86-64 system-call ABI as seccomp sees it: the audit architecture, the x32 marker and the
 * numbers of the calls our policies and tests name (arch/x86/entry/syscalls/syscall_64.tbl).
 * @module
 */

/** `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE): `seccomp_data.arch` of a 64-bit call. */
export const AUDIT_ARCH_X86_64 = 0xc000003e;
/**
 * `__X32_SYSCALL_BIT`: x32 calls arrive with the same audit architecture as x86-64 calls and this
 * bit set in the number, so a filter must refuse numbers at or above it to be about x86-64 only.
 */
export const X32_SYSCALL_BIT = 0x40000000;

/** x86-64 system-call numbers by name. */
export const SYSCALLS = {
  read: 0,
  write: 1,
  open: 2,
  close: 3,
  fstat: 5,
  lseek: 8,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  rt_sigreturn: 15,
  ioctl: 16,
  pread64: 17,
  pwrite64: 18,
  readv: 19,
  writev: 20,
  sched_yield: 24,
  mremap: 25,
  madvise: 28,
  nanosleep: 35,
  getpid: 39,
  socket: 41,
  connect: 42,
  sendto: 44,
  sendmsg: 46,
  recvmsg: 47,
  shutdown: 48,
  bind: 49,
  listen: 50,
  getsockname: 51,
  getpeername: 52,
  setsockopt: 54,
  getsockopt: 55,
  clone: 56,
  fork: 57,
  execve: 59,
  exit: 60,
  kill: 62,
  uname: 63,
  fcntl: 72,
  fsync: 74,
  fdatasync: 75,
  ftruncate: 77,
  rename: 82,
  mkdir: 83,
  creat: 85,
  unlink: 87,
  gettimeofday: 96,
  ptrace: 101,
  sigaltstack: 131,
  prctl: 157,
  gettid: 186,
  futex: 202,
  sched_getaffinity: 204,
  restart_syscall: 219,
  clock_gettime: 228,
  clock_getres: 229,
  clock_nanosleep: 230,
  exit_group: 231,
  epoll_wait: 232,
  epoll_ctl: 233,
  tgkill: 234,
  openat: 257,
  newfstatat: 262,
  set_robust_list: 273,
  epoll_pwait: 281,
  accept4: 288,
  eventfd2: 290,
  epoll_create1: 291,
  preadv: 295,
  pwritev: 296,
  process_vm_writev: 311,
  seccomp: 317,
  getrandom: 318,
  memfd_create: 319,
  execveat: 322,
  membarrier: 324,
  statx: 332,
  rseq: 334,
  io_uring_setup: 425,
  clone3: 435,
  openat2: 437,
} as const;

/** A system call {@link SYSCALLS} knows. */
export type SyscallName = keyof typeof SYSCALLS;

