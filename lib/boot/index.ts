/**
 * The x86_64 boot path: kernel loading (ELF64 / bzImage), command line, initrd, zero page, E820,
 * page tables, GDT, MP table and the initial vCPU state for the Linux 64-bit boot protocol.
 *
 * Each piece is usable on its own; {@link setupBoot} runs them in order for the common case.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import type { FpuState, MsrEntry, Regs, Sregs } from '../native/types';
import { Cmdline, writeCmdline } from './cmdline';
import { buildE820, memoryRegions, type E820Entry } from './e820';
import { BootError, hex } from './errors';
import { writeGdtAndIdt } from './gdt';
import { loadInitrd, type InitrdPlacement } from './initrd';
import { loadKernel, type LoadedKernel } from './kernel';
import { CMDLINE_START } from './layout';
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
