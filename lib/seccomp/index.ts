/**
 * seccomp-BPF for vCPU threads: a small filter builder (policies of allowed x86-64 calls with
 * argument checks, compiled to classic BPF) and the vCPU thread's policy. The addon only installs
 * the bytes it is given (`NativeVcpu.start(filter)`); which calls are allowed is decided here.
 * @module
 */
export { SeccompError } from './errors';
export type { SeccompErrorCode } from './errors';
export {
  compileFilter,
  evaluatePolicy,
  seccompRetErrno,
  MAX_SYSCALL_ARGS,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_DATA,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_TRAP,
} from './policy';
export type { ArgCheck, FilterActions, SeccompCall, SeccompPolicy, SeccompVerdict, SyscallRule } from './policy';
export { AUDIT_ARCH_X86_64, SYSCALLS, X32_SYSCALL_BIT } from './x86-64';
export type { SyscallName } from './x86-64';
export { KVM_RUN, vcpuSeccompFilter, vcpuSeccompPolicy } from './vcpu';
export type { VcpuPolicyOptions } from './vcpu';
export { BPF_INSTRUCTION_BYTES, BPF_MAX_INSTRUCTIONS } from './bpf';
export { PROCESS_IOCTLS, processSeccompFilter, processSeccompPolicy } from './process';
export type { ProcessPolicyOptions } from './process';
