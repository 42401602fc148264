/**
 * Classic BPF as seccomp runs it (Documentation/userspace-api/seccomp_filter.rst,
 * include/uapi/linux/filter.h): the instruction encoding and the few opcodes a filter needs.
 * A program reads `struct seccomp_data` with absolute loads and ends in a `SECCOMP_RET_*` value.
 * @module
 */

/** One `struct sock_filter`. */
export interface BpfInstruction {
  /** Opcode (class | size | mode, or class | op | source). */
  readonly code: number;
  /** Forward offset taken when a conditional jump's test holds (0..255). */
  readonly jt: number;
  /** Forward offset taken when it does not (0..255). */
  readonly jf: number;
  /** Operand: a load offset, a compared constant, a jump distance or a return value (u32). */
  readonly k: number;
}

/** Bytes per encoded instruction (u16 code, u8 jt, u8 jf, u32 k). */
export const BPF_INSTRUCTION_BYTES = 8;
/** BPF_MAXINSNS: the kernel refuses longer programs. */
export const BPF_MAX_INSTRUCTIONS = 4096;
/** The largest forward offset a conditional jump can encode. */
export const BPF_MAX_COND_JUMP = 255;

/** Load into the accumulator: `BPF_LD | BPF_W | BPF_ABS` (32-bit word at absolute offset k). */
export const BPF_LD_W_ABS = 0x00 | 0x00 | 0x20;
/** `BPF_ALU | BPF_AND | BPF_K`: A &= k. */
export const BPF_ALU_AND_K = 0x04 | 0x50 | 0x00;
/** `BPF_JMP | BPF_JA`: unconditional jump by k. */
export const BPF_JMP_JA = 0x05 | 0x00;
/** `BPF_JMP | BPF_JEQ | BPF_K`: jt if A == k, else jf. */
export const BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00;
/** `BPF_JMP | BPF_JGE | BPF_K`: jt if A >= k (unsigned), else jf. */
export const BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00;
/** `BPF_RET | BPF_K`: end with k. */
export const BPF_RET_K = 0x06 | 0x00;

/** A statement (no jump offsets). */
export function stmt(code: number, k: number): BpfInstruction {
  return { code, jt: 0, jf: 0, k: k >>> 0 };
}

/** A conditional jump. */
export function jump(code: number, k: number, jt: number, jf: number): BpfInstruction {
  return { code, jt, jf, k: k >>> 0 };
}

/** Encodes a program as the kernel reads it: `struct sock_filter[]`, little endian (x86-64). */
export function encodeProgram(program: readonly BpfInstruction[]): Uint8Array {
  const out = new Uint8Array(program.length * BPF_INSTRUCTION_BYTES);
  const view = new DataView(out.buffer);
  program.forEach((insn, i) => {
    const at = i * BPF_INSTRUCTION_BYTES;
    view.setUint16(at, insn.code, true);
    view.setUint8(at + 2, insn.jt);
    view.setUint8(at + 3, insn.jf);
    view.setUint32(at + 4, insn.k >>> 0, true);
  });
  return out;
}
