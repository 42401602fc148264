/**
 * Strict ELF64 (x86_64) executable loader for the 64-bit boot path.
 *
 * The image is untrusted input: every header field is range-checked before use, and segments may
 * only land in guest RAM at or above 1 MiB, where they cannot clobber the boot structures.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { BootError, hex } from './errors';
import { HIMEM_START, MMIO_GAP_END } from './layout';

/** `\x7fELF`. */
export const ELF_MAGIC = 0x464c457f;
/** e_ident[EI_CLASS] for 64-bit objects. */
export const ELFCLASS64 = 2;
/** e_ident[EI_DATA] for little-endian objects. */
export const ELFDATA2LSB = 1;
/** e_ident[EI_VERSION] / e_version value. */
export const EV_CURRENT = 1;
/** e_type of an executable (not relocatable, not shared). */
export const ET_EXEC = 2;
/** e_machine of x86_64. */
export const EM_X86_64 = 62;
/** p_type of a loadable segment. */
export const PT_LOAD = 1;
/** Size of the ELF64 file header. */
export const ELF64_EHDR_SIZE = 64;
/** Size of one ELF64 program header. */
export const ELF64_PHDR_SIZE = 56;
/** e_phnum value meaning "the real count is elsewhere": never produced by kernels, refused. */
export const PN_XNUM = 0xffff;

// ELF64 header field offsets (System V gABI, "ELF Header").
const EI_CLASS = 4;
const EI_DATA = 5;
const EI_VERSION = 6;
const E_TYPE = 16;
const E_MACHINE = 18;
const E_VERSION = 20;
const E_ENTRY = 24;
const E_PHOFF = 32;
const E_EHSIZE = 52;
const E_PHENTSIZE = 54;
const E_PHNUM = 56;
// ELF64 program header field offsets.
const P_TYPE = 0;
const P_OFFSET = 8;
const P_VADDR = 16;
const P_PADDR = 24;
const P_FILESZ = 32;
const P_MEMSZ = 40;

/** Above this a u64 field cannot be an address or size we can represent exactly. */
const MAX_U64_NUMBER = 2 ** 52;

/** One PT_LOAD segment. */
export interface ElfSegment {
  /** File offset of the initialized bytes. */
  offset: number;
  /** Link-time virtual address (a full u64: kernels link at 0xffffffff8…). */
  vaddr: bigint;
  /** Guest physical load address. */
  paddr: number;
  /** Bytes taken from the file. */
  filesz: number;
  /** Bytes in memory; the part beyond `filesz` is zeroed (bss). */
  memsz: number;
}

/** A validated ELF64 executable. */
export interface ElfImage {
  /** Guest physical entry point (e_entry, translated to physical if it was virtual). */
  entry: number;
  /** PT_LOAD segments in file order. */
  segments: ElfSegment[];
  /** End of the highest segment (guest physical). */
  kernelEnd: number;
}

/** Whether `image` starts with the ELF magic (says nothing about validity). */
export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && new DataView(image.buffer, image.byteOffset, image.byteLength).getUint32(0, true) === ELF_MAGIC;
}

function bad(message: string): BootError {
  return new BootError('BAD_IMAGE', `ELF: ${message}`);
}

function u64(view: DataView, off: number, what: string): number {
  const v = view.getBigUint64(off, true);
  if (v >= BigInt(MAX_U64_NUMBER)) throw bad(`${what} ${hex(v)} is out of range`);
  return Number(v);
}

/**
 * Where the program headers of the ELF image that starts with `head` end (e_phoff + e_phnum *
 * e_phentsize): how much of the file {@link parseElf} needs. Undefined when `head` is too short
 * to tell.
 */
export function elfHeadersEnd(head: Uint8Array): number | undefined {
  if (head.length < ELF64_EHDR_SIZE) return undefined;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const phoff = v.getBigUint64(E_PHOFF, true);
  if (phoff >= BigInt(MAX_U64_NUMBER)) return undefined;
  return Number(phoff) + v.getUint16(E_PHNUM, true) * v.getUint16(E_PHENTSIZE, true);
}

/**
 * Validates an ELF64 x86_64 executable without touching guest memory. `image` may be the start
 * of the file only (the headers, see {@link elfHeadersEnd}) when `fileSize` gives the whole
 * file's size: segments are checked against that.
 * @throws BootError BAD_IMAGE with the reason
 */
export function parseElf(image: Uint8Array, fileSize: number = image.length): ElfImage {
  if (image.length < ELF64_EHDR_SIZE) throw bad(`file is ${image.length} bytes, shorter than the ELF64 header`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (v.getUint32(0, true) !== ELF_MAGIC) throw bad('missing \\x7fELF magic');
  if (image[EI_CLASS] !== ELFCLASS64) throw bad(`class ${image[EI_CLASS]} is not ELFCLASS64`);
  if (image[EI_DATA] !== ELFDATA2LSB) throw bad(`data encoding ${image[EI_DATA]} is not little-endian`);
  if (image[EI_VERSION] !== EV_CURRENT || v.getUint32(E_VERSION, true) !== EV_CURRENT) throw bad('unknown ELF version');
  const type = v.getUint16(E_TYPE, true);
  if (type !== ET_EXEC) throw bad(`e_type ${type} is not ET_EXEC (${ET_EXEC})`);
  const machine = v.getUint16(E_MACHINE, true);
  if (machine !== EM_X86_64) throw bad(`e_machine ${machine} is not x86_64 (${EM_X86_64})`);
  if (v.getUint16(E_EHSIZE, true) < ELF64_EHDR_SIZE) throw bad('e_ehsize is smaller than the ELF64 header');
  const phentsize = v.getUint16(E_PHENTSIZE, true);
  if (phentsize !== ELF64_PHDR_SIZE) throw bad(`e_phentsize ${phentsize} is not ${ELF64_PHDR_SIZE}`);
  const phnum = v.getUint16(E_PHNUM, true);
  if (phnum === 0 || phnum === PN_XNUM) throw bad(`e_phnum ${phnum} is not supported`);
  const phoff = u64(v, E_PHOFF, 'e_phoff');
  if (phoff + phnum * ELF64_PHDR_SIZE > fileSize) throw bad('program headers extend past the end of the file');
  if (phoff + phnum * ELF64_PHDR_SIZE > image.length) throw bad('program headers extend past the bytes read');
  const rawEntry = v.getBigUint64(E_ENTRY, true);

  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * ELF64_PHDR_SIZE;
    if (v.getUint32(ph + P_TYPE, true) !== PT_LOAD) continue;
    const seg: ElfSegment = {
      offset: u64(v, ph + P_OFFSET, `segment ${i} p_offset`),
      vaddr: v.getBigUint64(ph + P_VADDR, true),
      paddr: u64(v, ph + P_PADDR, `segment ${i} p_paddr`),
      filesz: u64(v, ph + P_FILESZ, `segment ${i} p_filesz`),
      memsz: u64(v, ph + P_MEMSZ, `segment ${i} p_memsz`),
    };
    if (seg.filesz > seg.memsz) throw bad(`segment ${i} has p_filesz ${hex(seg.filesz)} > p_memsz ${hex(seg.memsz)}`);
    if (seg.offset + seg.filesz > fileSize) throw bad(`segment ${i} file bytes extend past the end of the file`);
    if (seg.memsz === 0) continue;
    if (seg.paddr < HIMEM_START) {
      throw bad(`segment ${i} at ${hex(seg.paddr)} overlaps the boot structures below ${hex(HIMEM_START)}`);
    }
    for (const o of segments) {
      if (seg.paddr < o.paddr + o.memsz && o.paddr < seg.paddr + seg.memsz) {
        throw bad(`segment ${i} at ${hex(seg.paddr)} overlaps the segment at ${hex(o.paddr)}`);
      }
    }
    segments.push(seg);
  }
  if (segments.length === 0) throw bad('no PT_LOAD segment');

  const entry = resolveEntry(rawEntry, segments);
  if (entry >= MMIO_GAP_END) throw bad(`entry ${hex(entry)} is above the 4 GiB identity map`);
  const kernelEnd = Math.max(...segments.map((s) => s.paddr + s.memsz));
  return { entry, segments, kernelEnd };
}

/**
 * The physical entry point. Linux's vmlinux has a physical e_entry (0x1000000); other executables
 * may give a virtual one, which we translate through the segment that contains it, because the
 * vCPU starts on an identity map.
 */
function resolveEntry(rawEntry: bigint, segments: ElfSegment[]): number {
  for (const s of segments) {
    if (rawEntry >= BigInt(s.paddr) && rawEntry < BigInt(s.paddr + s.memsz)) return Number(rawEntry);
  }
  for (const s of segments) {
    if (rawEntry >= s.vaddr && rawEntry - s.vaddr < BigInt(s.memsz)) return s.paddr + Number(rawEntry - s.vaddr);
  }
  throw bad(`entry point ${hex(rawEntry)} is not inside any PT_LOAD segment`);
}

/**
 * Validates `image` and copies its PT_LOAD segments into guest memory at their physical
 * addresses, zeroing each segment's bss tail.
 * @throws BootError BAD_IMAGE (also when a segment is not inside guest RAM)
 */
export function loadElf(mem: GuestMemory, image: Uint8Array): ElfImage {
  const elf = parseElf(image);
  // Check every segment before writing any, so a refused image leaves memory untouched.
  for (const s of elf.segments) {
    if (!mem.checkRange(s.paddr, s.memsz)) {
      throw bad(`segment at ${hex(s.paddr)}+${hex(s.memsz)} is not inside guest memory`);
    }
  }
  for (const s of elf.segments) {
    const dst = mem.slice(s.paddr, s.memsz);
    dst.set(image.subarray(s.offset, s.offset + s.filesz));
    dst.fill(0, s.filesz);
  }
  return elf;
}
