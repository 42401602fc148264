/**
 * The MicroVM's configuration and the validation that builder methods run before accepting it.
 * Everything here is synchronous and side-effect free apart from `fs.statSync` existence checks,
 * so a wrong call fails at the line that made it.
 * @module
 */
import * as fs from 'fs';
import { ConfigError } from './errors';
import type { RateLimiterConfig } from '../ratelimit';

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

/** Options of `MicroVM.drive()`: a virtio-blk device backed by a host file. */
export interface DriveOptions {
  /** Host path of the backing file (a raw disk image). */
  path: string;
  /** Expose the drive read-only (VIRTIO_BLK_F_RO) and open the file O_RDONLY. */
  readOnly?: boolean;
  /** Make this the root drive: `/dev/vda` and `root=/dev/vda rw|ro` (or `root=PARTUUID=`). */
  root?: boolean;
  /** With `root`, boot from this partition UUID instead of the whole disk. */
  partuuid?: string;
  /**
   * `'unsafe'` (default): no FLUSH feature, writes reach the page cache only.
   * `'writeback'`: offer FLUSH and complete it only after fdatasync.
   */
  cacheType?: 'unsafe' | 'writeback';
  /** Throttle the drive's bytes and/or operations. */
  rateLimiter?: RateLimiterConfig;
}

/** How host quirks are chosen: detected, forced on (emulated KVM), or forced off. */
export type HostQuirksMode = 'auto' | 'emulated-kvm' | 'none';

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
}

/** A validated drive. */
export interface DriveConfig extends DriveOptions {
  /** The drive's id (also its virtio-blk serial). */
  id: string;
  readOnly: boolean;
  root: boolean;
  cacheType: 'unsafe' | 'writeback';
}

/** The complete, validated configuration a VM starts from. */
export interface VmConfig {
  id: string;
  kvmPath: string;
  hostQuirks: HostQuirksMode;
  vcpus: number;
  memoryMib: number;
  kernel?: { path: string; cmdline: string; initrd?: string };
  drives: DriveConfig[];
  /** `false` starts the vCPU threads without their seccomp filter (debugging); absent or `true`: filtered. */
  seccomp?: boolean;
}

const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** Checks the constructor options and returns the initial configuration. */
export function initialConfig(opts: MicroVMOptions = {}): VmConfig {
  if (opts === null || typeof opts !== 'object') {
    throw new ConfigError('INVALID_OPTION', 'MicroVM options must be an object');
  }
  const id = opts.id ?? `vm-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new ConfigError('INVALID_ID', `id ${JSON.stringify(id)} must be 1-64 characters of [A-Za-z0-9._-]`);
  }
  const hostQuirks = opts.hostQuirks ?? 'auto';
  if (!['auto', 'emulated-kvm', 'none'].includes(hostQuirks)) {
    throw new ConfigError('INVALID_OPTION', `hostQuirks must be 'auto', 'emulated-kvm' or 'none', not ${JSON.stringify(hostQuirks)}`);
  }
  const kvmPath = opts.kvmPath ?? '/dev/kvm';
  if (typeof kvmPath !== 'string' || kvmPath.length === 0) {
    throw new ConfigError('INVALID_OPTION', 'kvmPath must be a non-empty string');
  }
  return { id, kvmPath, hostQuirks, vcpus: 1, memoryMib: 128, drives: [] };
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
  if (opts === null || typeof opts !== 'object') {
    throw new ConfigError('INVALID_OPTION', 'kernel options must be an object');
  }
  const cmdline = checkCmdline(opts.cmdline ?? DEFAULT_CMDLINE);
  if (opts.initrd !== undefined) {
    if (typeof opts.initrd !== 'string' || !isFile(opts.initrd)) {
      throw new ConfigError('INITRD_NOT_FOUND', `initrd not found or not a regular file: ${String(opts.initrd)}`);
    }
  }
  return { path, cmdline, initrd: opts.initrd };
}

/** Validates a rate limiter's shape (the limiter module checks the numbers again). */
function checkRateLimiter(where: string, rl: unknown): void {
  if (rl === undefined) return;
  if (rl === null || typeof rl !== 'object') {
    throw new ConfigError('INVALID_DRIVE', `${where}: rateLimiter must be an object`);
  }
  for (const key of ['bandwidth', 'ops'] as const) {
    const b = (rl as Record<string, unknown>)[key];
    if (b === undefined) continue;
    if (b === null || typeof b !== 'object') throw new ConfigError('INVALID_DRIVE', `${where}: rateLimiter.${key} must be an object`);
    const tb = b as Record<string, unknown>;
    for (const f of ['size', 'refillTime', 'oneTimeBurst']) {
      const v = tb[f];
      if (v === undefined && f === 'oneTimeBurst') continue;
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
        throw new ConfigError('INVALID_DRIVE', `${where}: rateLimiter.${key}.${f} must be a finite number ≥ 0`);
      }
    }
  }
}

/** Validates `drive()`'s arguments against the drives already configured. */
export function checkDrive(id: unknown, opts: DriveOptions, existing: DriveConfig[]): DriveConfig {
  if (typeof id !== 'string' || !ID_RE.test(id) || Buffer.byteLength(id) > MAX_DRIVE_ID_BYTES) {
    throw new ConfigError('INVALID_DRIVE', `drive id ${JSON.stringify(id)} must be 1-${MAX_DRIVE_ID_BYTES} characters of [A-Za-z0-9._-]`);
  }
  if (existing.some((d) => d.id === id)) {
    throw new ConfigError('DUPLICATE_DRIVE', `drive ${id} is already configured`);
  }
  if (opts === null || typeof opts !== 'object' || typeof opts.path !== 'string') {
    throw new ConfigError('INVALID_DRIVE', `drive ${id}: options with a string path are required`);
  }
  if (!isFile(opts.path)) {
    throw new ConfigError('DRIVE_NOT_FOUND', `drive ${id}: backing file not found or not a regular file: ${opts.path}`);
  }
  const cacheType = opts.cacheType ?? 'unsafe';
  if (cacheType !== 'unsafe' && cacheType !== 'writeback') {
    throw new ConfigError('INVALID_DRIVE', `drive ${id}: cacheType must be 'unsafe' or 'writeback'`);
  }
  const root = opts.root ?? false;
  if (root && existing.some((d) => d.root)) {
    throw new ConfigError('MULTIPLE_ROOT_DRIVES', `drive ${id}: only one drive can be the root drive`);
  }
  if (opts.partuuid !== undefined) {
    if (!root) throw new ConfigError('INVALID_DRIVE', `drive ${id}: partuuid only applies to the root drive`);
    if (!/^[0-9A-Fa-f-]{1,36}$/.test(opts.partuuid)) throw new ConfigError('INVALID_DRIVE', `drive ${id}: partuuid ${JSON.stringify(opts.partuuid)} is not a UUID`);
  }
  checkRateLimiter(`drive ${id}`, opts.rateLimiter);
  return { ...opts, id, readOnly: opts.readOnly ?? false, root, cacheType };
}

/**
 * The command line the guest gets: the user's, then `root=` for a root drive, then one
 * `virtio_mmio.device=` per device (Linux's CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES syntax),
 * then host-quirk additions. Checked against the kernel's limit.
 */
export function composeCmdline(base: string, parts: { root?: DriveConfig; rootIndex?: number; mmio: { base: number; irq: number }[]; extra: string[] }): string {
  const tokens = [base.trim()];
  if (parts.root) {
    const dev = parts.root.partuuid ? `PARTUUID=${parts.root.partuuid}` : `/dev/vd${String.fromCharCode(97 + (parts.rootIndex ?? 0))}`;
    tokens.push(`root=${dev}`, parts.root.readOnly ? 'ro' : 'rw');
  }
  for (const d of parts.mmio) tokens.push(`virtio_mmio.device=4K@0x${d.base.toString(16)}:${d.irq}`);
  tokens.push(...parts.extra);
  return checkCmdline(tokens.filter((t) => t.length > 0).join(' '));
}
