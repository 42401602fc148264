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
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  rt_sigreturn: 15,
  ioctl: 16,
  sched_yield: 24,
  mremap: 25,
  madvise: 28,
  nanosleep: 35,
  getpid: 39,
  socket: 41,
  connect: 42,
  sendto: 44,
  clone: 56,
  fork: 57,
  execve: 59,
  exit: 60,
  kill: 62,
  ptrace: 101,
  prctl: 157,
  gettid: 186,
  futex: 202,
  clock_gettime: 228,
  clock_nanosleep: 230,
  exit_group: 231,
  tgkill: 234,
  openat: 257,
  process_vm_writev: 311,
  seccomp: 317,
  memfd_create: 319,
  execveat: 322,
  io_uring_setup: 425,
} as const;

/** A system call {@link SYSCALLS} knows. */
export type SyscallName = keyof typeof SYSCALLS;

