/**
 * The MicroVM's configuration and the validation that builder methods run before accepting it.
 * Everything here is synchronous and side-effect free apart from `fs.statSync` existence checks,
 * so a wrong call fails at the line that made it.
 * @module
 */
import * as fs from 'fs';
import { ConfigError, checkBoolean, checkOneOf, checkOptionsObject, describe } from '../config';
import type { DriveConfig } from '../devices/block/config';
import type { MmdsOptions } from '../devices/net/config';
import type { JailOptions } from '../jail/config';

export type { DriveOptions, DriveConfig, DriveUpdate } from '../devices/block/config';

/** Smallest and largest vCPU counts (the MP table and our APIC ID scheme cover 32). */
export const MIN_VCPUS = 1;
/** See {@link MIN_VCPUS}. */
export const MAX_VCPUS = 32;
/**
 * Smallest guest memory in MiB: the boot structures live below 1 MiB and an ELF image is loaded
 * above it, so anything smaller cannot hold even a test guest.
 */
export const MIN_MEMORY_MIB = 4;
/** Largest guest memory in MiB (1 TiB); the mapping is MAP_NORESERVE, so only touched pages cost. */
export const MAX_MEMORY_MIB = 1024 * 1024;
/** Linux's COMMAND_LINE_SIZE on x86 (including the terminating NUL). */
export const MAX_CMDLINE_BYTES = 2048;
/** virtio-blk GET_ID returns at most 20 bytes (virtio 1.2 §5.2.6). */
export const MAX_DRIVE_ID_BYTES = 20;
/** The command line used when `kernel()` is given none. */
export const DEFAULT_CMDLINE = 'console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd';

/** Options of `MicroVM.kernel()`. */
export interface KernelOptions {
  /** Kernel command line. Kindling appends its device announcements (`virtio_mmio.device=`, `root=`). */
  cmdline?: string;
  /** Path of an initial ramdisk, loaded at the top of low memory. */
  initrd?: string;
}

/** How host quirks are chosen: detected, forced on (emulated KVM), or forced off. */
export type HostQuirksMode = 'auto' | 'emulated-kvm' | 'none';

/** The keys {@link MicroVMOptions} may have. */
const MICROVM_OPTION_KEYS = ['id', 'kvmPath', 'hostQuirks', 'seccomp', 'jail'] as const;

/** Options of the MicroVM constructor. */
export interface MicroVMOptions {
  /** A name for logs and metrics. Letters, digits, `-`, `_`, `.`; at most 64 characters. */
  id?: string;
  /** Path of the KVM device (default `/dev/kvm`). */
  kvmPath?: string;
  /**
   * Workarounds for hosts whose KVM emulates guests instruction by instruction (see the README).
   * `'auto'` (default) detects such a host; on an ordinary KVM host nothing changes.
   */
  hostQuirks?: HostQuirksMode;
  /**
   * Each vCPU thread runs under a seccomp filter that allows only the system calls its run loop
   * needs (default `true`); anything else kills the process with a report on stderr. `false`
   * turns it off, for debugging.
   */
  seccomp?: boolean;
  /**
   * Run the VM in a jailed child process (Firecracker's jailer): its own mount, PID, IPC and UTS
   * namespaces (and `netns`), a root holding only what it needs, its own cgroup, the given uid and
   * gid, no capabilities, and a seccomp filter for the whole process. Needs root. The MicroVM's
   * methods, events and streams are the same; devices of your own cannot be used.
   */
  jail?: JailOptions;
}

/** A virtio device to build at `start()`: its kind, id and validated configuration. */
export interface DeviceSpec {
  /** A registered {@link DeviceKind}'s kind. */
  kind: string;
  /** The device's id. */
  id: string;
  /** The configuration the kind's validator returned (plain data). */
  config: { id: string };
}

/** The complete, validated configuration a VM starts from. Plain data. */
export interface VmConfig {
  id: string;
  kvmPath: string;
  hostQuirks: HostQuirksMode;
  vcpus: number;
  memoryMib: number;
  kernel?: { path: string; cmdline: string; initrd?: string };
  /** Drives, in the order given (the root drive is attached first at start). */
  drives: DriveConfig[];
  /** Other virtio devices, in builder order, attached after the drives. */
  devices: DeviceSpec[];
  /** KVM and host-side dirty-page tracking for diff snapshots. */
  trackDirtyPages: boolean;
  /** Firecracker's boot-timer device in the first virtio-mmio window. */
  bootTimer: boolean;
  /** The metadata service's configuration (`vm.mmds()`), as given, validated. */
  mmds?: MmdsOptions;
  /** `false` starts the vCPU threads without their seccomp filter (debugging); absent or `true`: filtered. */
  seccomp?: boolean;
}

const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** Checks the constructor options and returns the initial configuration. */
export function initialConfig(options: unknown = {}): VmConfig {
  const opts = checkOptionsObject(options, MICROVM_OPTION_KEYS, 'MicroVM options', 'INVALID_OPTION') as MicroVMOptions;
  const id = opts.id ?? `vm-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new ConfigError('INVALID_ID', `id ${JSON.stringify(id)} must be 1-64 characters of [A-Za-z0-9._-]`);
  }
  const hostQuirks = checkOneOf(opts.hostQuirks, 'hostQuirks', 'INVALID_OPTION', ['auto', 'emulated-kvm', 'none'] as const, 'auto');
  const kvmPath = opts.kvmPath ?? '/dev/kvm';
  if (typeof kvmPath !== 'string' || kvmPath.length === 0) {
    throw new ConfigError('INVALID_OPTION', 'kvmPath must be a non-empty string');
  }
  const seccomp = checkBoolean(opts.seccomp, 'seccomp', 'INVALID_OPTION', true);
  // `jail` is checked by the MicroVM (lib/jail/config.ts) and kept out of the saved configuration.
  return { id, kvmPath, hostQuirks, seccomp, vcpus: 1, memoryMib: 128, drives: [], devices: [], trackDirtyPages: false, bootTimer: false };
}

/** Validates a vCPU count. */
export function checkVcpus(n: unknown): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < MIN_VCPUS || n > MAX_VCPUS) {
    throw new ConfigError('INVALID_VCPUS', `vcpus must be an integer from ${MIN_VCPUS} to ${MAX_VCPUS}, got ${String(n)}`);
  }
  return n;
}

/** Validates a memory size in MiB. */
export function checkMemory(mib: unknown): number {
  if (typeof mib !== 'number' || !Number.isInteger(mib) || mib < MIN_MEMORY_MIB || mib > MAX_MEMORY_MIB) {
    throw new ConfigError('INVALID_MEMORY', `memory must be an integer number of MiB from ${MIN_MEMORY_MIB} to ${MAX_MEMORY_MIB}, got ${String(mib)}`);
  }
  return mib;
}

/** Whether `path` names an existing regular file. */
function isFile(path: string): boolean {
  try {
    return fs.statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Validates a command line's characters and length (the kernel's limit includes the NUL). */
export function checkCmdline(cmdline: unknown): string {
  if (typeof cmdline !== 'string') {
    throw new ConfigError('INVALID_CMDLINE', 'cmdline must be a string');
  }
  // The kernel parses the command line as a NUL-terminated C string of printable text.
  if (/[^\x20-\x7e]/.test(cmdline)) {
    throw new ConfigError('INVALID_CMDLINE', 'cmdline may contain only printable ASCII characters');
  }
  if (cmdline.length + 1 > MAX_CMDLINE_BYTES) {
    throw new ConfigError('INVALID_CMDLINE', `cmdline is ${cmdline.length} bytes; the limit is ${MAX_CMDLINE_BYTES - 1} plus the terminating NUL`);
  }
  return cmdline;
}

/** Validates `kernel()`'s arguments. */
export function checkKernel(path: unknown, opts: KernelOptions = {}): { path: string; cmdline: string; initrd?: string } {
  if (typeof path !== 'string' || path.length === 0) {
    throw new ConfigError('KERNEL_NOT_FOUND', 'kernel path must be a non-empty string');
  }
  if (!isFile(path)) {
    throw new ConfigError('KERNEL_NOT_FOUND', `kernel image not found or not a regular file: ${path}`);
  }
  checkOptionsObject(opts, ['cmdline', 'initrd'], 'kernel options', 'INVALID_OPTION');
  const cmdline = checkCmdline(opts.cmdline ?? DEFAULT_CMDLINE);
  if (opts.initrd !== undefined) {
    if (typeof opts.initrd !== 'string' || !isFile(opts.initrd)) {
      throw new ConfigError('INITRD_NOT_FOUND', `initrd not found or not a regular file: ${describe(opts.initrd)}`);
    }
  }
  return { path, cmdline, initrd: opts.initrd };
}

/**
 * The command line the guest gets: the user's, then `root=` for a root drive (attached first, so
 * `/dev/vda`), then the devices' `virtio_mmio.device=` announcements (Linux's
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES syntax), then host-quirk additions. Checked against the
 * kernel's limit.
 * @throws ConfigError INVALID_CMDLINE
 */
export function composeCmdline(base: string, parts: { root?: DriveConfig; announcements: readonly string[]; extra: readonly string[] }): string {
  const tokens = [base.trim()];
  if (parts.root) {
    const dev = parts.root.partuuid ? `PARTUUID=${parts.root.partuuid}` : '/dev/vda';
    tokens.push(`root=${dev}`, parts.root.readOnly ? 'ro' : 'rw');
  }
  tokens.push(...parts.announcements, ...parts.extra);
  return checkCmdline(tokens.filter((t) => t.length > 0).join(' '));
}

/** Drives in attach order: the root drive first, the others as given. */
export function orderedDrives(drives: readonly DriveConfig[]): DriveConfig[] {
  return [...drives].sort((a, b) => Number(b.root) - Number(a.root));
}
