/** Synthetic but well-formed snapshot states for the unit tests of lib/snapshot. */
import { layoutChecksum, MEMORY_FILE, STATE_FORMAT_VERSION, type SnapshotState, type VcpuStateRecord } from '../../../lib/snapshot';

const zeros = (n: number) => Buffer.alloc(n).toString('base64');

/** A vCPU record with plausible sizes (contents zero but for a few registers). */
export function vcpuRecord(id: number): VcpuStateRecord {
  const regs = Buffer.alloc(144);
  regs.writeBigUInt64LE(0x200123n + BigInt(id), 16 * 8); // rip
  return {
    id,
    mpState: id === 0 ? 0 : 2,
    regs: regs.toString('base64'),
    sregs: zeros(312),
    fpu: zeros(416),
    xsave: zeros(4096),
    xcrs: zeros(392),
    debugregs: zeros(128),
    lapic: zeros(1024),
    events: zeros(64),
    msrs: [
      { index: 0x10, data: '123456789012345' },
      { index: 0x6e0, data: '0' },
      { index: 0x4b564d01, data: '18446744073709551615' },
    ],
    msrsUnreadable: [],
    tscKhz: 2_000_000,
    cpuid: [{ function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 }],
  };
}

/** A full (or diff) state of `vcpus` vCPUs and `memBytes` bytes of memory in one or two regions. */
export function makeState(opts: { vcpus?: number; memBytes?: number; type?: 'full' | 'diff'; snapshotId?: string } = {}): SnapshotState {
  const vcpus = opts.vcpus ?? 2;
  const size = opts.memBytes ?? 64 * 4096;
  const half = Math.floor(size / 2 / 4096) * 4096;
  const regions = [
    { guestAddr: 0, size: half, fileOffset: 0, slot: 0 },
    { guestAddr: 0x1_0000_0000, size: size - half, fileOffset: half, slot: 1 },
  ];
  const layout = { size, pageSize: 4096, regions };
  const state: SnapshotState = {
    formatVersion: STATE_FORMAT_VERSION,
    kindlingVersion: '0.1.0',
    snapshotId: opts.snapshotId ?? '11111111-2222-3333-4444-555555555555',
    createdAt: '2026-01-01T00:00:00.000Z',
    type: opts.type ?? 'full',
    vcpuCount: vcpus,
    memory: { ...layout, file: MEMORY_FILE, layoutChecksum: layoutChecksum(layout) },
    host: { tscKhz: 2_000_000, xsaveSize: 4096 },
    vcpus: Array.from({ length: vcpus }, (_, i) => vcpuRecord(i)),
    vm: { picMaster: zeros(520), picSlave: zeros(520), ioapic: zeros(520), pit2: zeros(112), clock: zeros(48) },
    devices: [{ kind: 'serial', id: 'com1', version: 1, state: { lcr: 3, fifo: 'AAE=', nested: { a: [1, 2, null] } } }],
    machine: { cmdline: 'console=ttyS0', drives: [] },
  };
  if (state.type === 'diff') {
    state.base = { snapshotId: 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', layoutChecksum: state.memory.layoutChecksum };
    state.memory.dirtyPages = [[1, 2], [10, 1]];
  }
  return state;
}
