/**
 * Seccomp policies and their compilation into a BPF program.
 *
 * A policy is an allow-list: rules naming a system call and, optionally, conditions on its
 * arguments. A call is allowed when some rule for its number has all its conditions true; every
 * other x86-64 call gets the mismatch action, and a call through another ABI (i386 `int 0x80`,
 * x32) the foreign-ABI action. The compiled program is what `seccomp(SECCOMP_SET_MODE_FILTER)`
 * takes (Documentation/userspace-api/seccomp_filter.rst); {@link evaluatePolicy} states the same
 * meaning directly, so that tests can hold the kernel's verdicts against it.
 * @module
 */
import {
  BPF_ALU_AND_K,
  BPF_JMP_JA,
  BPF_JMP_JEQ_K,
  BPF_JMP_JGE_K,
  BPF_LD_W_ABS,
  BPF_MAX_COND_JUMP,
  BPF_MAX_INSTRUCTIONS,
  BPF_RET_K,
  encodeProgram,
  jump,
  stmt,
  type BpfInstruction,
} from './bpf';
import { SeccompError } from './errors';
import { AUDIT_ARCH_X86_64, SYSCALLS, X32_SYSCALL_BIT, type SyscallName } from './x86-64';

/** `SECCOMP_RET_KILL_PROCESS`: the kernel kills the whole process with SIGSYS. */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
/** `SECCOMP_RET_TRAP`: the call is not made; the thread gets SIGSYS (si_code SYS_SECCOMP). */
export const SECCOMP_RET_TRAP = 0x00030000;
/** `SECCOMP_RET_ERRNO`: the call is not made and fails with the errno in the low 16 bits. */
export const SECCOMP_RET_ERRNO = 0x00050000;
/** `SECCOMP_RET_ALLOW`: the call is made. */
export const SECCOMP_RET_ALLOW = 0x7fff0000;
/** `SECCOMP_RET_DATA`: the part of an action passed on (errno, or si_errno for a trap). */
export const SECCOMP_RET_DATA = 0x0000ffff;

/** `SECCOMP_RET_ERRNO | errno`. */
export function seccompRetErrno(errno: number): number {
  if (!Number.isInteger(errno) || errno < 0 || errno > SECCOMP_RET_DATA) {
    throw new SeccompError('BAD_RULE', `errno ${errno} does not fit SECCOMP_RET_DATA`);
  }
  return (SECCOMP_RET_ERRNO | errno) >>> 0;
}

/** `struct seccomp_data` offsets. */
const SECCOMP_DATA_NR = 0;
const SECCOMP_DATA_ARCH = 4;
const SECCOMP_DATA_ARGS = 16;
const ARG_BYTES = 8;
/** Arguments a system call has at most. */
export const MAX_SYSCALL_ARGS = 6;

const U32 = 0xffffffffn;
const U64 = 0xffffffffffffffffn;

/** A condition on one argument: `(arg & mask) == value`. */
export interface ArgCheck {
  /** Which argument, 0..5. */
  readonly index: number;
  /**
   * `'dword'` compares the low 32 bits only: right for parameters the kernel declares `int` or
   * `unsigned int` (fd, ioctl request, futex op, signal), whose upper half it ignores, so a filter
   * that looked at it could be bypassed by setting it. `'qword'` compares all 64 bits (for
   * `unsigned long` parameters such as mmap's prot and flags).
   */
  readonly width: 'dword' | 'qword';
  /** The value the masked argument must equal. */
  readonly value: number | bigint;
  /** Which bits take part (default: all of `width`). */
  readonly mask?: number | bigint;
}

/** One allowed form of a system call. */
export interface SyscallRule {
  /** The call. */
  readonly syscall: SyscallName;
  /** Conditions that must all hold; none means any arguments. */
  readonly args?: readonly ArgCheck[];
  /** Why the thread needs this call (kept with the rule for review). */
  readonly reason: string;
  /**
   * Instead of allowing the matching call, fail it with this errno (`SECCOMP_RET_ERRNO`): for
   * calls a library tries and has a fallback for, such as clone3 (whose flags live in memory a
   * filter cannot read: glibc falls back to clone on ENOSYS, whose flags it can).
   */
  readonly errno?: number;
}

/**
 * An allow-list. Rules for the same call are alternatives. Calls are tested in the order their
 * first rule appears: put the frequent ones first (each earlier call costs one comparison).
 */
export interface SeccompPolicy {
  /** The allowed calls. */
  readonly rules: readonly SyscallRule[];
}

/** The actions a compiled program returns. */
export interface FilterActions {
  /** For a call a rule allows (default {@link SECCOMP_RET_ALLOW}). */
  readonly onMatch?: number;
  /** For any other x86-64 call (default {@link SECCOMP_RET_TRAP}). */
  readonly onMismatch?: number;
  /**
   * For a call through another ABI, i386 or x32 (default {@link SECCOMP_RET_KILL_PROCESS}: its
   * numbers mean other calls, so nothing about it can be reported reliably).
   */
  readonly onForeignAbi?: number;
}

/**
 * What a policy makes of one call: allowed by a rule (`'match'`), failed with an errno by a rule
 * that has one (`'errno'`), refused (`'mismatch'`), or another ABI's call.
 */
export type SeccompVerdict = 'match' | 'errno' | 'mismatch' | 'foreign-abi';

/** A call as seccomp sees it (`struct seccomp_data` without the instruction pointer). */
export interface SeccompCall {
  /** `seccomp_data.nr` (u32 as the filter reads it). */
  readonly nr: number;
  /** `seccomp_data.arch`; default {@link AUDIT_ARCH_X86_64}. */
  readonly arch?: number;
  /** Up to six u64 arguments; missing ones are 0. */
  readonly args?: readonly bigint[];
}

interface NormalizedCheck {
  index: number;
  width: 'dword' | 'qword';
  value: bigint;
  mask: bigint;
}

function normalizeCheck(rule: SyscallRule, c: ArgCheck): NormalizedCheck {
  const where = `rule for ${rule.syscall}`;
  if (!Number.isInteger(c.index) || c.index < 0 || c.index >= MAX_SYSCALL_ARGS) {
    throw new SeccompError('BAD_RULE', `${where}: argument index ${c.index} is not 0..5`);
  }
  if (c.width !== 'dword' && c.width !== 'qword') throw new SeccompError('BAD_RULE', `${where}: width must be 'dword' or 'qword'`);
  const full = c.width === 'dword' ? U32 : U64;
  const toBig = (v: number | bigint, what: string): bigint => {
    if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new SeccompError('BAD_RULE', `${where}: ${what} ${v} is not an integer`);
    const b = BigInt(v);
    if (b < 0n || b > full) throw new SeccompError('BAD_RULE', `${where}: ${what} ${v} does not fit a ${c.width}`);
    return b;
  };
  const value = toBig(c.value, 'value');
  const mask = c.mask === undefined ? full : toBig(c.mask, 'mask');
  if ((value & ~mask) !== 0n) {
    throw new SeccompError('BAD_RULE', `${where}: value 0x${value.toString(16)} has bits outside mask 0x${mask.toString(16)} (the rule could never match)`);
  }
  return { index: c.index, width: c.width, value, mask };
}

/** Rules grouped by call number, in order of first appearance. */
interface NormalizedAlternative {
  checks: NormalizedCheck[];
  /** The rule's errno, or undefined to allow. */
  errno?: number;
}

function groupRules(policy: SeccompPolicy): { nr: number; alternatives: NormalizedAlternative[] }[] {
  const groups = new Map<number, NormalizedAlternative[]>();
  for (const rule of policy.rules) {
    const nr = SYSCALLS[rule.syscall];
    if (nr === undefined) throw new SeccompError('BAD_RULE', `unknown system call ${String(rule.syscall)}`);
    const checks = (rule.args ?? []).map((c) => normalizeCheck(rule, c));
    if (rule.errno !== undefined) seccompRetErrno(rule.errno);
    const list = groups.get(nr) ?? [];
    list.push({ checks, errno: rule.errno });
    groups.set(nr, list);
  }
  return [...groups].map(([nr, alternatives]) => ({ nr, alternatives }));
}

/** One 32-bit comparison: load, mask, compare (the jump on inequality is filled in by compileAlternative). */
function compareWord(offset: number, value: number, mask: number): BpfInstruction[] {
  const out = [stmt(BPF_LD_W_ABS, offset)];
  if (mask !== 0xffffffff) out.push(stmt(BPF_ALU_AND_K, mask));
  out.push(jump(BPF_JMP_JEQ_K, value, 0, 0)); // jf patched by the caller
  return out;
}

/** One alternative: its comparisons, then `onMatch`; any failed comparison jumps past it. */
function compileAlternative(checks: NormalizedCheck[], onMatch: number): BpfInstruction[] {
  const code: BpfInstruction[] = [];
  const jumps: number[] = [];
  for (const c of checks) {
    const lo = SECCOMP_DATA_ARGS + c.index * ARG_BYTES; // little endian: the low half comes first
    const words: [number, bigint, bigint][] = [[lo, c.value & U32, c.mask & U32]];
    if (c.width === 'qword') words.push([lo + 4, c.value >> 32n, c.mask >> 32n]);
    for (const [offset, value, mask] of words) {
      if (mask === 0n) continue; // nothing of this half takes part
      code.push(...compareWord(offset, Number(value), Number(mask)));
      jumps.push(code.length - 1);
    }
  }
  code.push(stmt(BPF_RET_K, onMatch));
  for (const j of jumps) {
    const jf = code.length - j - 1;
    // An alternative has at most 6 checks × 2 words × 3 instructions: always in range.
    code[j] = jump(BPF_JMP_JEQ_K, code[j].k, 0, jf);
  }
  return code;
}

function checkAction(name: string, action: number): number {
  if (!Number.isInteger(action) || action < 0 || action > 0xffffffff) {
    throw new SeccompError('BAD_RULE', `${name} ${action} is not a u32 SECCOMP_RET_* value`);
  }
  return action >>> 0;
}

/**
 * Compiles `policy` for x86-64 into the bytes `seccomp(SECCOMP_SET_MODE_FILTER)` takes (an array
 * of `struct sock_filter`).
 * @throws SeccompError BAD_RULE for an unknown call or an impossible condition, TOO_LONG beyond
 * 4096 instructions
 */
export function compileFilter(policy: SeccompPolicy, actions: FilterActions = {}): Uint8Array {
  const onMatch = checkAction('onMatch', actions.onMatch ?? SECCOMP_RET_ALLOW);
  const onMismatch = checkAction('onMismatch', actions.onMismatch ?? SECCOMP_RET_TRAP);
  const onForeignAbi = checkAction('onForeignAbi', actions.onForeignAbi ?? SECCOMP_RET_KILL_PROCESS);

  const program: BpfInstruction[] = [
    stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
    jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    stmt(BPF_RET_K, onForeignAbi),
    stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
    jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
    stmt(BPF_RET_K, onForeignAbi),
  ];
  // Each group starts with A = nr: a group is entered only from the previous group's number
  // test, and every path through a group's body ends in a return.
  for (const { nr, alternatives } of groupRules(policy)) {
    const body: BpfInstruction[] = [];
    for (const alt of alternatives) body.push(...compileAlternative(alt.checks, alt.errno === undefined ? onMatch : seccompRetErrno(alt.errno)));
    body.push(stmt(BPF_RET_K, onMismatch));
    if (body.length <= BPF_MAX_COND_JUMP) {
      program.push(jump(BPF_JMP_JEQ_K, nr, 0, body.length));
    } else {
      program.push(jump(BPF_JMP_JEQ_K, nr, 1, 0), stmt(BPF_JMP_JA, body.length));
    }
    program.push(...body);
  }
  program.push(stmt(BPF_RET_K, onMismatch));
  if (program.length > BPF_MAX_INSTRUCTIONS) {
    throw new SeccompError('TOO_LONG', `the policy compiles to ${program.length} instructions; the kernel takes at most ${BPF_MAX_INSTRUCTIONS}`);
  }
  return encodeProgram(program);
}

/**
 * What `policy` makes of `call`, stated without BPF: the meaning {@link compileFilter}'s program
 * must have.
 */
export function evaluatePolicy(policy: SeccompPolicy, call: SeccompCall): SeccompVerdict {
  const nr = call.nr >>> 0;
  if ((call.arch ?? AUDIT_ARCH_X86_64) !== AUDIT_ARCH_X86_64 || nr >= X32_SYSCALL_BIT) return 'foreign-abi';
  const args = call.args ?? [];
  for (const rule of policy.rules) {
    if (SYSCALLS[rule.syscall] !== nr) continue;
    const ok = (rule.args ?? []).every((c) => {
      const n = normalizeCheck(rule, c);
      const full = n.width === 'dword' ? U32 : U64;
      return ((args[n.index] ?? 0n) & full & n.mask) === n.value;
    });
    if (ok) return rule.errno === undefined ? 'match' : 'errno';
  }
  return 'mismatch';
}
