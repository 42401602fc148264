/**
 * The snapshot state file: a 64-byte binary header, then the state as UTF-8 JSON.
 *
 * ```
 * offset size  field
 *      0    8  magic "KNDLSNAP"
 *      8    4  format version (u32 LE), {@link STATE_FORMAT_VERSION}
 *     12    4  header size (u32 LE), 64
 *     16    8  body length in bytes (u64 LE)
 *     24   32  SHA-256 of the body
 *     56    8  reserved, zero
 *     64    …  body: JSON of {@link SnapshotState}
 * ```
 *
 * The header lets a reader tell a truncated file (body shorter than announced), a corrupt one
 * (checksum) and a newer format (version) apart before parsing anything. The body is then
 * validated field by field ({@link validateState}): a state file is input like any other, and a
 * bad one ends in a {@link SnapshotError} naming the field, never in a crash.
 * @module
 */
import { createHash, randomUUID } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

import type { CpuidEntry } from '../native/types';
import type { DeviceStateRecord, StateObject, StateValue } from '../devices/contract';
import { PageBitmap, SNAPSHOT_PAGE_SIZE, type PageRange } from './bitmap';
import { SnapshotError } from './errors';

/** First bytes of every state file. */
export const STATE_MAGIC = 'KNDLSNAP';
/** The state format this Kindling writes and reads. */
export const STATE_FORMAT_VERSION = 1;
/** Size of the binary header. */
export const STATE_HEADER_SIZE = 64;
/** Largest state body accepted (a state is kilobytes per vCPU; this bounds what a bad file can make us allocate). */
export const MAX_STATE_BODY = 64 * 1024 * 1024;
/** File name of the state inside a snapshot directory. */
export const STATE_FILE = 'vmstate';
/** File name of the memory inside a snapshot directory. */
export const MEMORY_FILE = 'memory';
/** Most vCPUs a state may describe. */
export const MAX_SNAPSHOT_VCPUS = 254;
/** Largest guest memory a state may describe (as lib/boot lays out). */
export const MAX_SNAPSHOT_MEMORY = 2 ** 46;

/** Byte sizes of the kernel structures a vCPU state holds (x86-64 KVM ABI). */
export const KVM_STRUCT_SIZES = {
  /** `struct kvm_regs`. */
  regs: 144,
  /** `struct kvm_sregs`. */
  sregs: 312,
  /** `struct kvm_fpu`. */
  fpu: 416,
  /** `struct kvm_xcrs`. */
  xcrs: 392,
  /** `struct kvm_debugregs`. */
  debugregs: 128,
  /** `struct kvm_lapic_state`. */
  lapic: 1024,
  /** `struct kvm_vcpu_events`. */
  events: 64,
  /** `struct kvm_irqchip`. */
  irqchip: 520,
  /** `struct kvm_pit_state2`. */
  pit2: 112,
  /** `struct kvm_clock_data`. */
  clock: 48,
  /** `struct kvm_msr_entry`. */
  msrEntry: 16,
  /** `struct kvm_cpuid_entry2`. */
  cpuidEntry: 40,
  /** The smallest XSAVE area (`struct kvm_xsave`). */
  xsaveMin: 4096,
  /** Bound on a saved XSAVE area (AMX needs ~11 KiB; this leaves room for what comes next). */
  xsaveMax: 1024 * 1024,
} as const;

/** One MSR as the state stores it: `data` is a decimal u64 string (JSON numbers lose bits above 2^53). */
export interface MsrRecord {
  /** MSR index. */
  index: number;
  /** Value, decimal. */
  data: string;
}

/** One vCPU's state. Kernel structures are base64 of their exact bytes (see `NativeVcpuState`). */
export interface VcpuStateRecord {
  /** vCPU index (= APIC ID). */
  id: number;
  /** KVM_MP_STATE_*. */
  mpState: number;
  /** `struct kvm_regs`, base64. */
  regs: string;
  /** `struct kvm_sregs`, base64. */
  sregs: string;
  /** `struct kvm_fpu`, base64. */
  fpu: string;
  /** XSAVE area, base64; null where the source host had no XSAVE. */
  xsave: string | null;
  /** `struct kvm_xcrs`, base64, or null. */
  xcrs: string | null;
  /** `struct kvm_debugregs`, base64, or null. */
  debugregs: string | null;
  /** LAPIC register page, base64. */
  lapic: string;
  /** `struct kvm_vcpu_events`, base64, or null. */
  events: string | null;
  /** MSRs in the order they were read. */
  msrs: MsrRecord[];
  /** MSRs KVM refused to read when the snapshot was taken (for diagnosis; not restored). */
  msrsUnreadable: number[];
  /** Guest TSC frequency in kHz, or null where KVM could not tell. */
  tscKhz: number | null;
  /** The CPUID table the guest was given. */
  cpuid: CpuidEntry[];
}

/** The in-kernel VM devices, base64 of their kernel structures; null for one the VM lacks. */
export interface VmStateRecord {
  /** 8259 master. */
  picMaster: string | null;
  /** 8259 slave. */
  picSlave: string | null;
  /** IOAPIC. */
  ioapic: string | null;
  /** PIT. */
  pit2: string | null;
  /** kvmclock. */
  clock: string | null;
}

/** One guest RAM region and where its bytes are in the memory file. */
export interface MemoryRegionRecord {
  /** Guest physical address. */
  guestAddr: number;
  /** Bytes. */
  size: number;
  /** Offset of the region's first byte in the memory file (and in the memory buffer). */
  fileOffset: number;
  /** KVM memory slot. */
  slot: number;
}

/** The memory file's layout. */
export interface MemoryLayoutRecord {
  /** Bytes of the memory file (= the guest memory buffer). */
  size: number;
  /** Page size of the file and of `dirtyPages` ({@link SNAPSHOT_PAGE_SIZE}). */
  pageSize: number;
  /** Guest RAM regions, in file order. */
  regions: MemoryRegionRecord[];
  /** Name of the memory file in the snapshot directory. */
  file: string;
  /** SHA-256 (hex) of the layout (`size`, `pageSize`, `regions`): diffs name their base's. */
  layoutChecksum: string;
  /** Diff snapshots only: the pages the memory file holds; every other page comes from the base. */
  dirtyPages?: PageRange[];
}

/** Properties of the host the snapshot was taken on that restoring depends on. */
export interface SourceHostRecord {
  /** TSC frequency of vCPU 0 in kHz, or null. */
  tscKhz: number | null;
  /** Bytes of the XSAVE area (0 without XSAVE). */
  xsaveSize: number;
}

/** Names a snapshot a diff applies to. */
export interface SnapshotRef {
  /** The snapshot's {@link SnapshotState.snapshotId}. */
  snapshotId: string;
  /** Its memory layout checksum (a diff and its base must lay memory out the same way). */
  layoutChecksum: string;
}

/** Everything a snapshot's state file holds. */
export interface SnapshotState {
  /** {@link STATE_FORMAT_VERSION} when written. */
  formatVersion: number;
  /** Version of the Kindling that wrote it. */
  kindlingVersion: string;
  /** Unique id of this snapshot (diffs name their base by it). */
  snapshotId: string;
  /** When it was taken (ISO 8601). */
  createdAt: string;
  /** `'full'`: the memory file holds all of memory; `'diff'`: only `memory.dirtyPages`. */
  type: 'full' | 'diff';
  /** Diff snapshots: the snapshot the diff applies to. */
  base?: SnapshotRef;
  /** vCPUs. */
  vcpuCount: number;
  /** Memory layout. */
  memory: MemoryLayoutRecord;
  /** Source host properties. */
  host: SourceHostRecord;
  /** One per vCPU, in id order. */
  vcpus: VcpuStateRecord[];
  /** In-kernel devices. */
  vm: VmStateRecord;
  /** Device states (Device.saveState), ids unique. */
  devices: DeviceStateRecord[];
  /** What the machine needs to rebuild itself (configuration), opaque to this module. */
  machine: StateObject;
}

// ---- checksums -------------------------------------------------------------------------------

/** SHA-256 (hex) of the layout fields that define where every guest byte is in the file. */
export function layoutChecksum(layout: Pick<MemoryLayoutRecord, 'size' | 'pageSize' | 'regions'>): string {
  const canonical = JSON.stringify({
    size: layout.size,
    pageSize: layout.pageSize,
    regions: layout.regions.map((r) => [r.guestAddr, r.size, r.fileOffset, r.slot]),
  });
  return createHash('sha256').update(canonical).digest('hex');
}

/** A fresh snapshot id. */
export function newSnapshotId(): string {
  return randomUUID();
}

let cachedVersion: string | undefined;

/** This Kindling's version (package.json), found upwards from this file in sources and in dist. */
export function kindlingVersion(): string {
  if (cachedVersion) return cachedVersion;
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'kindling' && typeof pkg.version === 'string') {
        cachedVersion = pkg.version;
        return cachedVersion;
      }
    } catch { /* not here: go up */ }
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  cachedVersion = 'unknown';
  return cachedVersion;
}

// ---- encoding --------------------------------------------------------------------------------

/** The state file's bytes: header + JSON body. */
export function encodeState(state: SnapshotState): Buffer {
  const body = Buffer.from(JSON.stringify(state), 'utf8');
  const header = Buffer.alloc(STATE_HEADER_SIZE);
  header.write(STATE_MAGIC, 0, 'latin1');
  header.writeUInt32LE(STATE_FORMAT_VERSION, 8);
  header.writeUInt32LE(STATE_HEADER_SIZE, 12);
  header.writeBigUInt64LE(BigInt(body.length), 16);
  createHash('sha256').update(body).digest().copy(header, 24);
  return Buffer.concat([header, body]);
}

/**
 * Parses and validates a state file's bytes.
 * @throws SnapshotError TRUNCATED, BAD_MAGIC, UNSUPPORTED_VERSION, CHECKSUM_MISMATCH, BAD_STATE,
 *   VCPU_COUNT_MISMATCH or LAYOUT_MISMATCH; nothing else
 */
export function decodeState(bytes: Uint8Array): SnapshotState {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 8) {
    throw new SnapshotError('TRUNCATED', `the state file is ${buf.length} bytes, shorter than its ${STATE_HEADER_SIZE}-byte header`, {
      field: 'header', expected: `${STATE_HEADER_SIZE} bytes`, actual: `${buf.length} bytes`,
    });
  }
  const magic = buf.toString('latin1', 0, 8);
  if (magic !== STATE_MAGIC) {
    throw new SnapshotError('BAD_MAGIC', 'not a Kindling snapshot state file', { field: 'magic', expected: STATE_MAGIC, actual: JSON.stringify(magic) });
  }
  if (buf.length < STATE_HEADER_SIZE) {
    throw new SnapshotError('TRUNCATED', `the state file is ${buf.length} bytes, shorter than its ${STATE_HEADER_SIZE}-byte header`, {
      field: 'header', expected: `${STATE_HEADER_SIZE} bytes`, actual: `${buf.length} bytes`,
    });
  }
  const version = buf.readUInt32LE(8);
  if (version !== STATE_FORMAT_VERSION) {
    throw new SnapshotError('UNSUPPORTED_VERSION', `state format version ${version}; this Kindling (${kindlingVersion()}) reads version ${STATE_FORMAT_VERSION}`, {
      field: 'formatVersion', expected: String(STATE_FORMAT_VERSION), actual: String(version),
    });
  }
  const headerSize = buf.readUInt32LE(12);
  const reserved = buf.readBigUInt64LE(56);
  if (headerSize !== STATE_HEADER_SIZE || reserved !== 0n) {
    throw new SnapshotError('CHECKSUM_MISMATCH', 'the state file header is corrupt', {
      field: 'header', expected: `header size ${STATE_HEADER_SIZE}, reserved 0`, actual: `header size ${headerSize}, reserved ${reserved}`,
    });
  }
  const bodyLength = buf.readBigUInt64LE(16);
  const have = BigInt(buf.length - STATE_HEADER_SIZE);
  if (bodyLength > BigInt(MAX_STATE_BODY)) {
    throw new SnapshotError('CHECKSUM_MISMATCH', `the header announces a ${bodyLength}-byte state, more than any state can be`, {
      field: 'header.bodyLength', expected: `at most ${MAX_STATE_BODY}`, actual: String(bodyLength),
    });
  }
  if (have < bodyLength) {
    throw new SnapshotError('TRUNCATED', `the state file is truncated: ${have} of ${bodyLength} body bytes`, {
      field: 'body', expected: `${bodyLength} bytes`, actual: `${have} bytes`,
    });
  }
  if (have > bodyLength) {
    throw new SnapshotError('CHECKSUM_MISMATCH', `the state file has ${have - bodyLength} bytes after its body`, {
      field: 'body', expected: `${bodyLength} bytes`, actual: `${have} bytes`,
    });
  }
  const body = buf.subarray(STATE_HEADER_SIZE);
  const digest = createHash('sha256').update(body).digest();
  if (!digest.equals(buf.subarray(24, 56))) {
    throw new SnapshotError('CHECKSUM_MISMATCH', 'the state does not match its SHA-256: the file is corrupt', {
      field: 'body', expected: buf.subarray(24, 56).toString('hex'), actual: digest.toString('hex'),
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new SnapshotError('BAD_STATE', `the state is not JSON: ${(e as Error).message}`, { field: 'body', cause: e });
  }
  return validateState(parsed);
}

/**
 * Writes `state` to `file` atomically (a temporary file renamed over it).
 * @throws SnapshotError IO_ERROR
 */
export async function writeStateFile(file: string, state: SnapshotState, sync = false): Promise<number> {
  const bytes = encodeState(state);
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    const fh = await fs.promises.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(bytes);
      if (sync) await fh.datasync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
    throw new SnapshotError('IO_ERROR', `writing ${file} failed: ${(e as Error).message}`, { field: file, cause: e });
  }
  return bytes.length;
}

/**
 * Reads and validates a state file. The read is synchronous: a state file is tens of kilobytes,
 * which one read(2) gets faster than a round trip through the thread pool, and restore latency
 * is what snapshots are for.
 * @throws SnapshotError NOT_FOUND, IO_ERROR, or any code of {@link decodeState}
 */
export async function readStateFile(file: string): Promise<SnapshotState> {
  let bytes: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new SnapshotError('NOT_FOUND', `${file} is not a file`, { field: file });
    if (st.size > STATE_HEADER_SIZE + MAX_STATE_BODY) {
      throw new SnapshotError('CHECKSUM_MISMATCH', `${file} is ${st.size} bytes, larger than any state file`, { field: file });
    }
    bytes = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SnapshotError('NOT_FOUND', `no snapshot state at ${file}`, { field: file, cause: e });
    throw new SnapshotError('IO_ERROR', `reading ${file} failed: ${(e as Error).message}`, { field: file, cause: e });
  }
  return decodeState(bytes);
}

// ---- validation ------------------------------------------------------------------------------

function bad(field: string, what: string, actual?: unknown): never {
  const shown = actual === undefined ? 'nothing' : JSON.stringify(actual)?.slice(0, 80) ?? String(actual);
  throw new SnapshotError('BAD_STATE', `state field ${field} ${what}, got ${shown}`, { field, expected: what, actual: shown });
}

function obj(v: unknown, field: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) bad(field, 'must be an object', v);
  return v as Record<string, unknown>;
}

function int(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) bad(field, `must be an integer in [${min}, ${max}]`, v);
  return v;
}

function str(v: unknown, field: string, maxLen: number, pattern?: RegExp): string {
  if (typeof v !== 'string' || v.length > maxLen || (pattern && !pattern.test(v))) {
    bad(field, `must be a string${pattern ? ` matching ${pattern}` : ''} of at most ${maxLen} characters`, v);
  }
  return v;
}

function arr(v: unknown, field: string, maxLen: number): unknown[] {
  if (!Array.isArray(v) || v.length > maxLen) bad(field, `must be an array of at most ${maxLen} entries`, Array.isArray(v) ? `${v.length} entries` : v);
  return v;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A base64 field holding exactly `size` bytes (or between min and max), or null when allowed. */
function b64(v: unknown, field: string, size: number | [number, number], nullable: boolean): string | null {
  if (v === null && nullable) return null;
  if (typeof v !== 'string' || !BASE64.test(v)) bad(field, nullable ? 'must be base64 or null' : 'must be base64', v);
  const bytes = (v.length / 4) * 3 - (v.endsWith('==') ? 2 : v.endsWith('=') ? 1 : 0);
  const [min, max] = typeof size === 'number' ? [size, size] : size;
  if (bytes < min || bytes > max) {
    throw new SnapshotError('BAD_STATE', `state field ${field} holds ${bytes} bytes, expected ${min === max ? min : `${min}..${max}`}`, {
      field, expected: `${min === max ? min : `${min}..${max}`} bytes`, actual: `${bytes} bytes`,
    });
  }
  return v;
}

const U64_DECIMAL = /^(?:0|[1-9][0-9]{0,19})$/;
const U64_MAX = (1n << 64n) - 1n;

function validateMsrs(v: unknown, field: string): MsrRecord[] {
  return arr(v, field, 4096).map((e, i) => {
    const o = obj(e, `${field}[${i}]`);
    const index = int(o.index, `${field}[${i}].index`, 0, 0xffffffff);
    const data = str(o.data, `${field}[${i}].data`, 20, U64_DECIMAL);
    if (BigInt(data) > U64_MAX) bad(`${field}[${i}].data`, 'must fit in 64 bits', data);
    return { index, data };
  });
}

function validateCpuid(v: unknown, field: string): CpuidEntry[] {
  return arr(v, field, 4096).map((e, i) => {
    const o = obj(e, `${field}[${i}]`);
    const f = (k: string) => int(o[k], `${field}[${i}].${k}`, 0, 0xffffffff);
    return { function: f('function'), index: f('index'), flags: f('flags'), eax: f('eax'), ebx: f('ebx'), ecx: f('ecx'), edx: f('edx') };
  });
}

function validateVcpu(v: unknown, i: number): VcpuStateRecord {
  const field = `vcpus[${i}]`;
  const o = obj(v, field);
  const id = int(o.id, `${field}.id`, 0, MAX_SNAPSHOT_VCPUS - 1);
  if (id !== i) bad(`${field}.id`, `must be ${i} (vCPU states are stored in id order)`, id);
  const S = KVM_STRUCT_SIZES;
  return {
    id,
    mpState: int(o.mpState, `${field}.mpState`, 0, 0xffffffff),
    regs: b64(o.regs, `${field}.regs`, S.regs, false)!,
    sregs: b64(o.sregs, `${field}.sregs`, S.sregs, false)!,
    fpu: b64(o.fpu, `${field}.fpu`, S.fpu, false)!,
    xsave: b64(o.xsave, `${field}.xsave`, [S.xsaveMin, S.xsaveMax], true),
    xcrs: b64(o.xcrs, `${field}.xcrs`, S.xcrs, true),
    debugregs: b64(o.debugregs, `${field}.debugregs`, S.debugregs, true),
    lapic: b64(o.lapic, `${field}.lapic`, S.lapic, false)!,
    events: b64(o.events, `${field}.events`, S.events, true),
    msrs: validateMsrs(o.msrs, `${field}.msrs`),
    msrsUnreadable: arr(o.msrsUnreadable, `${field}.msrsUnreadable`, 4096).map((x, j) => int(x, `${field}.msrsUnreadable[${j}]`, 0, 0xffffffff)),
    tscKhz: o.tscKhz === null ? null : int(o.tscKhz, `${field}.tscKhz`, 1, 0xffffffff),
    cpuid: validateCpuid(o.cpuid, `${field}.cpuid`),
  };
}

function validateVm(v: unknown): VmStateRecord {
  const o = obj(v, 'vm');
  const S = KVM_STRUCT_SIZES;
  return {
    picMaster: b64(o.picMaster, 'vm.picMaster', S.irqchip, true),
    picSlave: b64(o.picSlave, 'vm.picSlave', S.irqchip, true),
    ioapic: b64(o.ioapic, 'vm.ioapic', S.irqchip, true),
    pit2: b64(o.pit2, 'vm.pit2', S.pit2, true),
    clock: b64(o.clock, 'vm.clock', S.clock, true),
  };
}

function validateMemory(v: unknown, type: 'full' | 'diff'): MemoryLayoutRecord {
  const o = obj(v, 'memory');
  const size = int(o.size, 'memory.size', SNAPSHOT_PAGE_SIZE, MAX_SNAPSHOT_MEMORY);
  const pageSize = int(o.pageSize, 'memory.pageSize', SNAPSHOT_PAGE_SIZE, SNAPSHOT_PAGE_SIZE);
  if (size % pageSize !== 0) bad('memory.size', `must be a multiple of ${pageSize}`, size);
  const regions = arr(o.regions, 'memory.regions', 64).map((r, i) => {
    const f = `memory.regions[${i}]`;
    const ro = obj(r, f);
    const region: MemoryRegionRecord = {
      guestAddr: int(ro.guestAddr, `${f}.guestAddr`, 0, MAX_SNAPSHOT_MEMORY * 2),
      size: int(ro.size, `${f}.size`, pageSize, size),
      fileOffset: int(ro.fileOffset, `${f}.fileOffset`, 0, size - pageSize),
      slot: int(ro.slot, `${f}.slot`, 0, 0xffff),
    };
    if (region.guestAddr % pageSize || region.size % pageSize || region.fileOffset % pageSize) bad(f, 'must be page-aligned', r);
    return region;
  });
  if (regions.length === 0) bad('memory.regions', 'must not be empty', []);
  const layoutError = (what: string) => {
    throw new SnapshotError('LAYOUT_MISMATCH', `memory layout: ${what}`, { field: 'memory.regions' });
  };
  const byFile = [...regions].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 0; i < byFile.length; i++) {
    const r = byFile[i];
    if (r.fileOffset + r.size > size) layoutError(`region at file offset ${r.fileOffset} runs past the ${size}-byte file`);
    if (i > 0 && byFile[i - 1].fileOffset + byFile[i - 1].size > r.fileOffset) layoutError('regions overlap in the file');
  }
  const byGuest = [...regions].sort((a, b) => a.guestAddr - b.guestAddr);
  for (let i = 1; i < byGuest.length; i++) {
    if (byGuest[i - 1].guestAddr + byGuest[i - 1].size > byGuest[i].guestAddr) layoutError('regions overlap in guest physical memory');
  }
  if (new Set(regions.map((r) => r.slot)).size !== regions.length) layoutError('two regions share a KVM slot');
  const file = str(o.file, 'memory.file', 255, /^[A-Za-z0-9._-]+$/);
  if (file === '.' || file === '..') bad('memory.file', 'must be a plain file name', file);
  const checksum = str(o.layoutChecksum, 'memory.layoutChecksum', 64, /^[0-9a-f]{64}$/);
  const expected = layoutChecksum({ size, pageSize, regions });
  if (checksum !== expected) {
    throw new SnapshotError('LAYOUT_MISMATCH', 'the memory layout does not match its checksum', {
      field: 'memory.layoutChecksum', expected, actual: checksum,
    });
  }
  const out: MemoryLayoutRecord = { size, pageSize, regions, file, layoutChecksum: checksum };
  if (type === 'diff') {
    if (o.dirtyPages === undefined) bad('memory.dirtyPages', 'must be present in a diff snapshot', undefined);
    const ranges = arr(o.dirtyPages, 'memory.dirtyPages', size / pageSize) as PageRange[];
    PageBitmap.fromRanges(size / pageSize, ranges);  // validates
    out.dirtyPages = ranges.map((r) => [r[0], r[1]]);
  } else if (o.dirtyPages !== undefined) {
    bad('memory.dirtyPages', 'must be absent in a full snapshot', '[...]');
  }
  return out;
}

function isStateValue(v: unknown, depth: number): v is StateValue {
  if (depth > 64) return false;
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return true;
  if (typeof v === 'number') return Number.isFinite(v);
  if (Array.isArray(v)) return v.every((x) => isStateValue(x, depth + 1));
  if (typeof v === 'object') return Object.values(v as object).every((x) => isStateValue(x, depth + 1));
  return false;
}

function validateDevices(v: unknown): DeviceStateRecord[] {
  const seen = new Set<string>();
  return arr(v, 'devices', 1024).map((d, i) => {
    const f = `devices[${i}]`;
    const o = obj(d, f);
    const rec: DeviceStateRecord = {
      kind: str(o.kind, `${f}.kind`, 64),
      id: str(o.id, `${f}.id`, 256),
      version: int(o.version, `${f}.version`, 0, 0xffffffff),
      state: obj(o.state, `${f}.state`) as StateObject,
    };
    if (!isStateValue(rec.state, 0)) bad(`${f}.state`, 'must be JSON data', '...');
    if (seen.has(rec.id)) bad(`${f}.id`, 'must be unique', rec.id);
    seen.add(rec.id);
    return rec;
  });
}

/**
 * Checks that `v` is a complete {@link SnapshotState} of this format version and returns it
 * (typed; fields copied, nothing extra kept).
 * @throws SnapshotError BAD_STATE naming the first bad field, VCPU_COUNT_MISMATCH, LAYOUT_MISMATCH
 */
export function validateState(v: unknown): SnapshotState {
  const o = obj(v, '(root)');
  const formatVersion = int(o.formatVersion, 'formatVersion', 0, 0xffffffff);
  if (formatVersion !== STATE_FORMAT_VERSION) {
    throw new SnapshotError('UNSUPPORTED_VERSION', `state format version ${formatVersion}, this Kindling reads ${STATE_FORMAT_VERSION}`, {
      field: 'formatVersion', expected: String(STATE_FORMAT_VERSION), actual: String(formatVersion),
    });
  }
  const type = o.type;
  if (type !== 'full' && type !== 'diff') bad('type', "must be 'full' or 'diff'", type);
  const vcpuCount = int(o.vcpuCount, 'vcpuCount', 1, MAX_SNAPSHOT_VCPUS);
  const vcpuList = arr(o.vcpus, 'vcpus', MAX_SNAPSHOT_VCPUS);
  if (vcpuList.length !== vcpuCount) {
    throw new SnapshotError('VCPU_COUNT_MISMATCH', `the state says ${vcpuCount} vCPUs but holds ${vcpuList.length} vCPU states`, {
      field: 'vcpus', expected: String(vcpuCount), actual: String(vcpuList.length),
    });
  }
  const hostO = obj(o.host, 'host');
  const state: SnapshotState = {
    formatVersion,
    kindlingVersion: str(o.kindlingVersion, 'kindlingVersion', 64),
    snapshotId: str(o.snapshotId, 'snapshotId', 128, /^[A-Za-z0-9-]+$/),
    createdAt: str(o.createdAt, 'createdAt', 64),
    type,
    vcpuCount,
    memory: validateMemory(o.memory, type),
    host: {
      tscKhz: hostO.tscKhz === null ? null : int(hostO.tscKhz, 'host.tscKhz', 1, 0xffffffff),
      xsaveSize: int(hostO.xsaveSize, 'host.xsaveSize', 0, KVM_STRUCT_SIZES.xsaveMax),
    },
    vcpus: vcpuList.map(validateVcpu),
    vm: validateVm(o.vm),
    devices: validateDevices(o.devices),
    machine: obj(o.machine, 'machine') as StateObject,
  };
  if (!isStateValue(state.machine, 0)) bad('machine', 'must be JSON data', '...');
  if (type === 'diff') {
    const b = obj(o.base, 'base');
    state.base = {
      snapshotId: str(b.snapshotId, 'base.snapshotId', 128, /^[A-Za-z0-9-]+$/),
      layoutChecksum: str(b.layoutChecksum, 'base.layoutChecksum', 64, /^[0-9a-f]{64}$/),
    };
  } else if (o.base !== undefined) {
    bad('base', 'must be absent in a full snapshot', o.base);
  }
  return state;
}
