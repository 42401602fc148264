/**
 * The x86_64 boot path: kernel loading (ELF64 / bzImage), command line, initrd, zero page, E820,
 * page tables, GDT, MP table and the initial vCPU state for the Linux 64-bit boot protocol.
 *
 * Each piece is usable on its own; {@link setupBoot} runs them in order for the common case.
 * @module
 */

import { GuestMemory } from '../memory/guest-memory';
import type { FpuState, MsrEntry, Regs, Sregs } from '../native/types';
import { Cmdline, writeCmdline } from './cmdline';
import { buildE820, memoryRegions, type E820Entry } from './e820';
import { BootError, hex } from './errors';
import { writeGdtAndIdt } from './gdt';
import { loadInitrd, type InitrdPlacement } from './initrd';
import { loadKernel, type LoadedKernel } from './kernel';
import { CMDLINE_START, EBDA_END, HIMEM_START, PAGE_SIZE } from './layout';
import { writeMpTable } from './mptable';
import { writePageTables } from './page-tables';
import { bootFpu, bootMsrs, bootRegs, bootSregs } from './regs';
import { writeBootParams } from './zero-page';

export * from './errors';
export * from './layout';
export * from './e820';
export * from './elf';
export * from './bzimage';
export * from './setup-header';
export * from './kernel';
export * from './cmdline';
export * from './initrd';
export * from './zero-page';
export * from './page-tables';
export * from './gdt';
export * from './mptable';
export * from './regs';

/** Inputs of {@link setupBootMemory}: a kernel already in memory and what goes with it. */
export interface BootMemoryOptions {
  /** The kernel, from {@link loadKernel}. */
  kernel: LoadedKernel;
  /** Kernel command line. */
  cmdline?: Cmdline | string;
  /** Initial ramdisk. */
  initrd?: Uint8Array;
  /**
   * An initrd already in guest memory (copied there by other means, e.g. read straight from its
   * file); used when `initrd` is not given. Place it with {@link placeInitrd}.
   */
  initrdPlacement?: InitrdPlacement;
  /** Number of vCPUs described in the MP table (1..32). */
  vcpuCount: number;
  /** Guest RAM size; defaults to the memory's total size. Must match the memory's regions. */
  memSize?: number;
}

/** What {@link setupBootMemory} wrote. */
export interface BootMemorySetup {
  /** Where the initrd went, if there is one. */
  initrd?: InitrdPlacement;
  /** The command line as written at {@link CMDLINE_START}. */
  cmdline: string;
  /** The memory map given to the kernel. */
  e820: E820Entry[];
}

/**
 * Writes everything but the kernel: command line, initrd, zero page, page tables, GDT/IDT and
 * MP table. `mem`'s regions must be those of {@link memoryRegions} for `memSize`.
 * @throws BootError for any refused input; nothing is guaranteed about `mem` afterwards
 */
export function setupBootMemory(mem: GuestMemory, opts: BootMemoryOptions): BootMemorySetup {
  const memSize = opts.memSize ?? mem.totalSize;
  for (const r of memoryRegions(memSize)) {
    if (!mem.covers(r.guestAddr, r.size)) {
      throw new BootError('BAD_MEMORY_LAYOUT', `guest memory lacks the RAM region ${hex(r.guestAddr)}+${hex(r.size)} its size implies`);
    }
  }
  return writeBootStructures(mem, memSize, opts);
}

function writeBootStructures(mem: GuestMemory, memSize: number, opts: BootMemoryOptions): BootMemorySetup {
  const { kernel } = opts;
  const given = opts.cmdline ?? '';
  const cmdline = (typeof given === 'string' ? new Cmdline(undefined, given) : given).withMaxSize(kernel.cmdlineMaxSize);
  writeCmdline(mem, CMDLINE_START, cmdline);
  const initrd = opts.initrd ? loadInitrd(mem, kernel, opts.initrd) : opts.initrdPlacement;
  const e820 = buildE820(memSize);
  writeBootParams(mem, {
    setupHeader: kernel.setupHeader,
    cmdlineAddr: CMDLINE_START,
    cmdlineLength: cmdline.length,
    initrd,
    e820,
  });
  writePageTables(mem);
  writeGdtAndIdt(mem);
  writeMpTable(mem, opts.vcpuCount);
  return { initrd, cmdline: cmdline.toString(), e820 };
}

/** Bytes for one range of guest memory. */
export interface GuestBytes {
  /** Guest physical address of the first byte. */
  guestAddr: number;
  /** The bytes. */
  bytes: Uint8Array;
}

/**
 * What {@link setupBootMemory} writes, as byte ranges, for a caller that copies them into guest
 * memory itself (the addon, off the JavaScript thread): the pages it wrote, whole. Everything it
 * writes lies below the EBDA's end ({@link EBDA_END}, under 1 MiB: {@link HIMEM_START}), so
 * the pages are exact for guest memory that is still zero there (fresh memory: kernels and
 * initrds load above 1 MiB).
 * `opts.initrd` (bytes) is refused: give `opts.initrdPlacement` for an initrd loaded by other means.
 * @throws BootError as {@link setupBootMemory}; BAD_MEMORY_LAYOUT for `opts.initrd`
 */
export function bootMemoryImage(opts: BootMemoryOptions & { memSize: number }): { setup: BootMemorySetup; writes: GuestBytes[] } {
  if (opts.initrd) throw new BootError('BAD_MEMORY_LAYOUT', 'bootMemoryImage takes an initrd placement, not its bytes');
  memoryRegions(opts.memSize); // validates the size
  const mem = new PageRecordingMemory(bootScratch);
  try {
    const setup = writeBootStructures(mem, opts.memSize, opts);
    // Runs of written pages, copied out (the scratch is reused by the next call).
    const writes: GuestBytes[] = [];
    let runStart = -1;
    for (let page = 0; page <= mem.touched.length; page++) {
      const touched = page < mem.touched.length && mem.touched[page] !== 0;
      if (touched && runStart < 0) runStart = page;
      if (!touched && runStart >= 0) {
        writes.push({ guestAddr: runStart * PAGE_SIZE, bytes: bootScratch.slice(runStart * PAGE_SIZE, page * PAGE_SIZE) });
        runStart = -1;
      }
    }
    return { setup, writes };
  } finally {
    for (let page = 0; page < mem.touched.length; page++) {
      if (mem.touched[page]) bootScratch.fill(0, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    }
  }
}

/**
 * Where {@link bootMemoryImage} builds the boot structures: everything below the EBDA's end
 * ({@link EBDA_END}), allocated once and zeroed again after each use (a fresh 640 KiB buffer per
 * VM start cost more than all the writes together).
 */
const bootScratch = new Uint8Array(EBDA_END);

/** A GuestMemory over the boot scratch that notes which pages were written. */
class PageRecordingMemory extends GuestMemory {
  /** One flag per page of the scratch. */
  readonly touched: Uint8Array;

  constructor(bytes: Uint8Array) {
    super([{ guestAddr: 0, bytes }]);
    this.touched = new Uint8Array(Math.ceil(bytes.length / PAGE_SIZE));
  }

  private note(addr: number, len: number): void {
    for (let p = Math.floor(addr / PAGE_SIZE); p * PAGE_SIZE < addr + len && p < this.touched.length; p++) this.touched[p] = 1;
  }

  override slice(addr: number, len: number): Uint8Array {
    const view = super.slice(addr, len);
    this.note(addr, len);
    return view;
  }

  override writeU8(addr: number, value: number): void {
    super.writeU8(addr, value);
    this.note(addr, 1);
  }

  override writeU16(addr: number, value: number): void {
    super.writeU16(addr, value);
    this.note(addr, 2);
  }

  override writeU32(addr: number, value: number): void {
    super.writeU32(addr, value);
    this.note(addr, 4);
  }

  override writeU64(addr: number, value: bigint | number): void {
    super.writeU64(addr, value);
    this.note(addr, 8);
  }
}

/** Inputs of {@link setupBoot}. */
export interface BootOptions {
  /** ELF64 vmlinux (or any ELF64 following the boot protocol) or 64-bit bzImage. */
  kernel: Uint8Array;
  /** Kernel command line. */
  cmdline?: Cmdline | string;
  /** Initial ramdisk. */
  initrd?: Uint8Array;
  /** Number of vCPUs described in the MP table (1..32). */
  vcpuCount: number;
}

/** What {@link setupBoot} wrote and what the vCPUs need. */
export interface BootSetup extends BootMemorySetup {
  /** The loaded kernel. */
  kernel: LoadedKernel;
  /** Bootstrap processor registers. */
  regs: Regs;
  /** BSP special registers, given the vCPU's current (KVM_GET_SREGS) state. */
  sregs(current: Sregs): Sregs;
  /** FPU control state for the BSP. */
  fpu: FpuState;
  /** MSRs for every vCPU. */
  msrs: MsrEntry[];
}

/**
 * Loads the kernel, then {@link setupBootMemory}; returns the vCPU state to apply as well.
 * @throws BootError for any refused input; nothing is guaranteed about `mem` afterwards
 */
export function setupBoot(mem: GuestMemory, opts: BootOptions): BootSetup {
  const kernel = loadKernel(mem, opts.kernel);
  const written = setupBootMemory(mem, { kernel, cmdline: opts.cmdline, initrd: opts.initrd, vcpuCount: opts.vcpuCount });
  return {
    ...written,
    kernel,
    regs: bootRegs(kernel.entry),
    sregs: bootSregs,
    fpu: bootFpu(),
    msrs: bootMsrs(),
  };
}
