/**
 * Taking a snapshot from native handles, and the pieces of restoring one into a new VM.
 *
 * These functions drive the native layer only through the interfaces of `lib/native/types` they
 * are given; the machine (lib/vm) owns the handles, the devices and the order of things:
 *
 * ```
 * pause:    vm.pauseVcpus(); then flushExits() + pauseVcpus() until every runState is 'parked'
 * snapshot: takeSnapshot(dir, { kvm, vm, vcpus, memory, devices, machine }, { type })   (vCPUs stay paused)
 * restore:  loadSnapshot(dir) → new VM (TSS, identity map, irqchip, PIT2 as at boot)
 *           → createVcpu × n → checkHostCompatibility(state, hostProfile(kvm, vm, vcpus[0]))
 *           → restoreMemory (map|copy) → restoreVcpus → restoreVmState → devices' restoreState
 *           → setExitHandlers → start
 * ```
 * @module
 */
import { promises as fsp, statSync } from 'fs';
import * as path from 'path';

import type { DeviceStateRecord, StateObject } from '../devices/contract';
import type { CpuidEntry, MemoryFileWriteResult, NativeKvm, NativeVcpu, NativeVm } from '../native/types';
import { collectDirtyLogs, PageBitmap, SNAPSHOT_PAGE_SIZE } from './bitmap';
import { vcpuRecordFromNative, vcpuRecordToNative, vmRecordFromNative, vmRecordToNative } from './codec';
import { cpuidMismatches } from './cpuid-compat';
import { SnapshotError } from './errors';
import {
  kindlingVersion,
  layoutChecksum,
  MEMORY_FILE,
  newSnapshotId,
  readStateFile,
  STATE_FILE,
  STATE_FORMAT_VERSION,
  writeStateFile,
  type MemoryRegionRecord,
  type SnapshotRef,
  type SnapshotState,
} from './format';
import { selectMsrsToSave } from './msrs';

/** KVM capability numbers used here (linux/kvm.h). */
const KVM_CAP_XSAVE = 55;
const KVM_CAP_TSC_CONTROL = 60;
const KVM_CAP_XSAVE2 = 208;

/** TSC frequencies closer than this (parts per million) need no scaling (Firecracker's and QEMU's tolerance). */
export const TSC_KHZ_TOLERANCE_PPM = 250;

/** Guest memory as the machine set it up: one buffer, carved into KVM slots. */
export interface SnapshotMemory {
  /** The buffer from `NativeVm.allocateMemory` or `NativeVm.mapMemoryFile`. */
  buffer: ArrayBuffer;
  /** The RAM regions: guest address, size, offset in `buffer` (`fileOffset`) and KVM slot. */
  regions: readonly MemoryRegionRecord[];
}

/** The native handles and device states a snapshot is taken from. */
export interface SnapshotSource {
  /** For the MSR index list and the supported CPUID. */
  kvm: NativeKvm;
  /** The VM. */
  vm: NativeVm;
  /** Every vCPU, in id order; all paused (`runState` 'parked' or 'idle'). */
  vcpus: readonly NativeVcpu[];
  /** Guest memory. */
  memory: SnapshotMemory;
  /** Device states (each device's saveState with its kind, id and version). */
  devices?: DeviceStateRecord[];
  /** What the machine needs to rebuild itself; stored as given. */
  machine?: StateObject;
}

/** Options of {@link takeSnapshot}. */
export interface TakeSnapshotOptions {
  /** `'full'` writes all of memory; `'diff'` only the pages written since `parent` was taken. */
  type: 'full' | 'diff';
  /**
   * The snapshot the VM's memory last matched (the previous snapshot it took, or the one it was
   * restored from): required for `'diff'`, whose state names it as its base.
   */
  parent?: SnapshotRef;
  /**
   * Whether KVM dirty logging is on for every slot of `memory.regions` (setDirtyLogging). Then the
   * logs are collected and cleared by every snapshot, full ones included, so that the next diff
   * starts from this snapshot. Required for `'diff'`.
   */
  dirtyLogging?: boolean;
  /** Pages the host wrote (`DirtyTrackingGuestMemory.hostDirty`); cleared once used. */
  hostDirty?: PageBitmap;
  /** MSRs to save; default {@link selectMsrsToSave} of KVM's index list and vCPU 0's supported CPUID. */
  msrIndexes?: readonly number[];
  /** fdatasync the files before resolving. */
  sync?: boolean;
}

/** What a snapshot wrote (`vm.snapshot()`, `takeSnapshot()`). */
export interface SnapshotInfo {
  /** The snapshot directory. */
  dir: string;
  /** Its id (a later diff's `parent`). */
  snapshotId: string;
  /** Its layout checksum (a later diff's `parent`). */
  layoutChecksum: string;
  /** Full or diff. */
  type: 'full' | 'diff';
  /** Bytes of the state file. */
  stateBytes: number;
  /** What the memory file write did. */
  memory: MemoryFileWriteResult;
  /** Milliseconds spent reading vCPU and VM state (the part that needs the vCPUs paused and the JS thread). */
  captureMs: number;
  /** Milliseconds spent writing the memory file (on the thread pool). */
  memoryWriteMs: number;
}

function checkPaused(vcpus: readonly NativeVcpu[]): void {
  for (const v of vcpus) {
    const st = v.runState;
    if (st !== 'parked' && st !== 'idle') {
      throw new SnapshotError('NOT_PAUSED', `vCPU ${v.id} is ${st}, not paused at an instruction boundary`, {
        field: `vcpus[${v.id}]`, expected: 'parked', actual: st,
      });
    }
  }
}

function checkRegions(memory: SnapshotMemory): void {
  const size = memory.buffer.byteLength;
  if (size === 0 || size % SNAPSHOT_PAGE_SIZE !== 0) {
    throw new SnapshotError('BAD_ARGUMENT', `guest memory of ${size} bytes is not whole pages`);
  }
  for (const r of memory.regions) {
    if (r.fileOffset % SNAPSHOT_PAGE_SIZE || r.size % SNAPSHOT_PAGE_SIZE || r.fileOffset + r.size > size) {
      throw new SnapshotError('BAD_ARGUMENT', `region at guest 0x${r.guestAddr.toString(16)} is not page-aligned inside the buffer`);
    }
  }
}

/**
 * Writes a snapshot of a paused VM to `dir` (created if needed): the memory file first, then the
 * state file, so a directory whose state file is valid is complete. An older snapshot in `dir` is
 * replaced (its state file is removed before anything else is written).
 * The vCPUs must stay paused until the promise settles: the memory is written on the thread pool
 * while the JavaScript thread goes on.
 * @throws SnapshotError NOT_PAUSED, BAD_ARGUMENT, IO_ERROR; NativeError from the state ioctls
 */
export async function takeSnapshot(dir: string, src: SnapshotSource, opts: TakeSnapshotOptions): Promise<SnapshotInfo> {
  const { kvm, vm, vcpus, memory } = src;
  if (vcpus.length === 0) throw new SnapshotError('BAD_ARGUMENT', 'a VM without vCPUs cannot be snapshotted');
  if (opts.type !== 'full' && opts.type !== 'diff') throw new SnapshotError('BAD_ARGUMENT', `snapshot type ${String(opts.type)}`);
  if (opts.type === 'diff' && !opts.parent) throw new SnapshotError('BAD_ARGUMENT', 'a diff snapshot needs the parent snapshot it applies to');
  if (opts.type === 'diff' && !opts.dirtyLogging) {
    throw new SnapshotError('BAD_ARGUMENT', 'a diff snapshot needs dirty-page logging on since the parent snapshot');
  }
  checkRegions(memory);
  checkPaused(vcpus);

  const t0 = performance.now();
  const supported = kvm.supportedCpuid();
  const msrIndexes = opts.msrIndexes ?? selectMsrsToSave(kvm.msrIndexList(), supported);
  const vcpuRecords = vcpus.map((v, i) => vcpuRecordFromNative(i, v.saveState(msrIndexes)));
  const vmRecord = vmRecordFromNative(vm.saveState());
  const xsave2 = vm.checkExtension(KVM_CAP_XSAVE2);
  const xsaveSize = xsave2 > 0 ? xsave2 : vm.checkExtension(KVM_CAP_XSAVE) > 0 ? 4096 : 0;

  // Collected for full snapshots too: the log must restart here for the next diff.
  let dirty: PageBitmap | undefined;
  if (opts.dirtyLogging) {
    dirty = collectDirtyLogs(vm, memory.regions.map((r) => ({ slot: r.slot, byteOffset: r.fileOffset, size: r.size })), memory.buffer.byteLength);
    if (opts.hostDirty) dirty.or(opts.hostDirty);
  }
  opts.hostDirty?.clear();
  const captureMs = performance.now() - t0;

  const regions = memory.regions.map((r) => ({ guestAddr: r.guestAddr, size: r.size, fileOffset: r.fileOffset, slot: r.slot }));
  const layout = { size: memory.buffer.byteLength, pageSize: SNAPSHOT_PAGE_SIZE, regions };
  const checksum = layoutChecksum(layout);
  if (opts.type === 'diff' && opts.parent!.layoutChecksum !== checksum) {
    throw new SnapshotError('LAYOUT_MISMATCH', 'the memory layout changed since the parent snapshot', {
      field: 'memory.layoutChecksum', expected: opts.parent!.layoutChecksum, actual: checksum,
    });
  }
  const state: SnapshotState = {
    formatVersion: STATE_FORMAT_VERSION,
    kindlingVersion: kindlingVersion(),
    snapshotId: newSnapshotId(),
    createdAt: new Date().toISOString(),
    type: opts.type,
    vcpuCount: vcpus.length,
    memory: { ...layout, file: MEMORY_FILE, layoutChecksum: checksum },
    host: { tscKhz: vcpuRecords[0].tscKhz, xsaveSize },
    vcpus: vcpuRecords,
    vm: vmRecord,
    devices: src.devices ?? [],
    machine: src.machine ?? {},
  };
  if (opts.type === 'diff') {
    state.base = { snapshotId: opts.parent!.snapshotId, layoutChecksum: opts.parent!.layoutChecksum };
    state.memory.dirtyPages = dirty!.toRanges();
  }

  const statePath = path.join(dir, STATE_FILE);
  try {
    await fsp.mkdir(dir, { recursive: true });
    await fsp.rm(statePath, { force: true });
  } catch (e) {
    throw new SnapshotError('IO_ERROR', `preparing ${dir} failed: ${(e as Error).message}`, { field: dir, cause: e });
  }
  const t1 = performance.now();
  let written: MemoryFileWriteResult;
  // Written under another name and renamed over the old file: VMs restored with memory 'map'
  // from an older snapshot in this directory keep their (unlinked) file; truncating it under
  // them would turn their untouched pages into zeros or SIGBUS.
  const memoryPath = path.join(dir, MEMORY_FILE);
  const memoryTmp = `${memoryPath}.tmp-${process.pid}`;
  try {
    written = await vm.writeMemoryFile(memory.buffer, memoryTmp, {
      pages: opts.type === 'diff' ? dirty!.bits : undefined,
      sync: opts.sync,
    });
    await fsp.rename(memoryTmp, memoryPath);
  } catch (e) {
    await fsp.rm(memoryTmp, { force: true }).catch(() => undefined);
    throw new SnapshotError('IO_ERROR', `writing the memory file failed: ${(e as Error).message}`, { field: MEMORY_FILE, cause: e });
  }
  const memoryWriteMs = performance.now() - t1;
  const stateBytes = await writeStateFile(statePath, state, opts.sync);
  return { dir, snapshotId: state.snapshotId, layoutChecksum: checksum, type: opts.type, stateBytes, memory: written, captureMs, memoryWriteMs };
}

/** A validated snapshot directory. */
export interface LoadedSnapshot {
  /** The directory. */
  dir: string;
  /** Its state. */
  state: SnapshotState;
  /** Path of its memory file (checked to exist with the size the layout says). */
  memoryPath: string;
  /**
   * An open descriptor of the memory file, used instead of `memoryPath` when present: a jailed
   * child (lib/jail) has no path to it, only the descriptor its parent passed in.
   */
  memoryFd?: number;
}

/**
 * Reads and validates `dir`'s state file and checks its memory file against the layout.
 * @throws SnapshotError NOT_FOUND, MEMORY_SIZE_MISMATCH, IO_ERROR, or any code of decodeState
 */
export async function loadSnapshot(dir: string): Promise<LoadedSnapshot> {
  const state = await readStateFile(path.join(dir, STATE_FILE));
  const memoryPath = path.join(dir, state.memory.file);
  let size: number;
  try {
    const st = statSync(memoryPath);
    if (!st.isFile()) throw new SnapshotError('NOT_FOUND', `${memoryPath} is not a file`, { field: memoryPath });
    size = st.size;
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new SnapshotError('NOT_FOUND', `the snapshot's memory file ${memoryPath} is missing`, { field: memoryPath, cause: e });
    }
    throw new SnapshotError('IO_ERROR', `reading ${memoryPath} failed: ${(e as Error).message}`, { field: memoryPath, cause: e });
  }
  if (size !== state.memory.size) {
    throw new SnapshotError('MEMORY_SIZE_MISMATCH', `the memory file is ${size} bytes, the state's layout says ${state.memory.size}`, {
      field: memoryPath, expected: String(state.memory.size), actual: String(size),
    });
  }
  return { dir, state, memoryPath };
}

/** What {@link checkHostCompatibility} compares against. */
export interface HostProfile {
  /**
   * The CPU features a guest here can have: KVM_GET_SUPPORTED_CPUID, or with a probe vCPU what KVM
   * reports back (KVM_GET_CPUID2) after being given that table. The two are the same on ordinary
   * KVM; the emulated (PVM) KVM answers KVM_GET_CPUID2 with the host CPU's own features, which is
   * what its guests see and what their snapshots record.
   */
  cpuid: readonly CpuidEntry[];
  /** XSAVE area size here (KVM_CAP_XSAVE2, 4096 with plain XSAVE, 0 without). */
  xsaveSize: number;
  /** Whether KVM can run a vCPU at another TSC frequency (KVM_CAP_TSC_CONTROL). */
  tscScaling: boolean;
}

/**
 * This host's {@link HostProfile}, asked of KVM through a VM of it. `probe`, a vCPU of that VM that
 * has not run and whose state {@link restoreVcpus} will overwrite, is given the supported CPUID
 * and asked what it got.
 */
export function hostProfile(kvm: NativeKvm, vm: NativeVm, probe?: NativeVcpu): HostProfile {
  const xsave2 = vm.checkExtension(KVM_CAP_XSAVE2);
  const supported = kvm.supportedCpuid();
  let cpuid: readonly CpuidEntry[] = supported;
  if (probe) {
    probe.setCpuid(supported);
    cpuid = probe.getCpuid();
  }
  return {
    cpuid,
    xsaveSize: xsave2 > 0 ? xsave2 : vm.checkExtension(KVM_CAP_XSAVE) > 0 ? 4096 : 0,
    tscScaling: kvm.checkExtension(KVM_CAP_TSC_CONTROL) > 0,
  };
}

/**
 * Refuses a snapshot this host cannot run: CPU features (or a vendor) the guest was given that
 * KVM here does not support, a larger XSAVE area than this host's, or XSAVE state where this host
 * has none.
 * @throws SnapshotError CPUID_MISMATCH (field names the leaf and register, the message the features), HOST_INCOMPATIBLE
 */
export function checkHostCompatibility(state: SnapshotState, host: HostProfile): void {
  for (const v of state.vcpus) {
    const missing = cpuidMismatches(v.cpuid, host.cpuid);
    if (missing.length > 0) {
      const what = missing.map((m) => (m.field === 'vendor' ? `vendor ${m.features[0]} (host: ${m.features[1]})` : `${m.field}: ${m.features.join(', ')}`));
      throw new SnapshotError('CPUID_MISMATCH', `vCPU ${v.id} was given CPU features this host lacks: ${what.join('; ')}`, {
        field: missing[0].field, expected: missing[0].features.join(', '), actual: 'missing',
      });
    }
    if (v.xsave !== null) {
      const bytes = Buffer.byteLength(v.xsave, 'base64');
      if (host.xsaveSize === 0 || bytes > host.xsaveSize) {
        throw new SnapshotError('HOST_INCOMPATIBLE', `vCPU ${v.id} has ${bytes} bytes of XSAVE state; this host takes ${host.xsaveSize}`, {
          field: `vcpus[${v.id}].xsave`, expected: `at most ${host.xsaveSize} bytes`, actual: `${bytes} bytes`,
        });
      }
    }
  }
}

/**
 * Gives `vm` the snapshot's memory and registers every region as its KVM slot. `'map'` maps the
 * memory file privately (pages load on first touch, VMs from one file share what they only read);
 * `'copy'` reads the file's data into fresh anonymous memory (independent of the file afterwards).
 * @returns the memory buffer (for GuestMemory and for later snapshots)
 */
export async function restoreMemory(vm: NativeVm, snap: LoadedSnapshot, mode: 'map' | 'copy'): Promise<ArrayBuffer> {
  if (snap.state.type !== 'full') {
    throw new SnapshotError('BASE_MISMATCH', 'a diff snapshot cannot be restored on its own: merge it onto its base first (mergeSnapshots)', {
      field: 'type', expected: 'full', actual: 'diff',
    });
  }
  const { size, regions } = snap.state.memory;
  let buffer: ArrayBuffer;
  if (mode === 'map') {
    buffer = vm.mapMemoryFile(snap.memoryFd ?? snap.memoryPath, size);
  } else if (mode === 'copy') {
    buffer = vm.allocateMemory(size);
    await vm.readMemoryFile(buffer, snap.memoryFd ?? snap.memoryPath);
  } else {
    throw new SnapshotError('BAD_ARGUMENT', `memory mode ${String(mode)}: 'map' or 'copy'`);
  }
  for (const r of regions) vm.setUserMemoryRegion(r.slot, r.guestAddr, buffer, r.fileOffset, r.size);
  return buffer;
}

/**
 * Writes every vCPU's saved state into `vcpus` (new, not started, in id order). When the saved TSC
 * frequency differs from this host's by more than {@link TSC_KHZ_TOLERANCE_PPM}, the vCPUs are
 * set to the saved frequency first (HOST_INCOMPATIBLE where KVM cannot scale the TSC).
 * @throws SnapshotError VCPU_COUNT_MISMATCH, HOST_INCOMPATIBLE; NativeError from the ioctls
 */
export function restoreVcpus(vcpus: readonly NativeVcpu[], state: SnapshotState, host: Pick<HostProfile, 'tscScaling'>): void {
  if (vcpus.length !== state.vcpuCount) {
    throw new SnapshotError('VCPU_COUNT_MISMATCH', `the snapshot has ${state.vcpuCount} vCPUs, the VM ${vcpus.length}`, {
      field: 'vcpuCount', expected: String(state.vcpuCount), actual: String(vcpus.length),
    });
  }
  const saved = state.vcpus[0].tscKhz;
  if (saved !== null) {
    const here = vcpus[0].getTscKhz();
    if (Math.abs(here - saved) * 1_000_000 > saved * TSC_KHZ_TOLERANCE_PPM) {
      if (!host.tscScaling) {
        throw new SnapshotError('HOST_INCOMPATIBLE', `the guest's TSC ran at ${saved} kHz, this host's at ${here} kHz, and KVM here cannot scale it`, {
          field: 'tscKhz', expected: String(saved), actual: String(here),
        });
      }
      for (const v of vcpus) v.setTscKhz(saved);
    }
  }
  vcpus.forEach((v, i) => v.restoreState(vcpuRecordToNative(state.vcpus[i])));
}

/** Writes the saved PIC, IOAPIC, PIT and clock into `vm` (see {@link vmRecordToNative} for `clockRealtime`). */
export function restoreVmState(vm: NativeVm, state: SnapshotState, opts: { clockRealtime?: boolean } = {}): void {
  vm.restoreState(vmRecordToNative(state.vm, opts));
}
