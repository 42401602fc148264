/**
 * The smaller pieces of lib/snapshot: page bitmaps, MSR selection and restore order, the CPUID
 * compatibility check, the kernel-structure codecs and host-side dirty tracking.
 */
import fc from 'fast-check';

import type { CpuidEntry, NativeVm } from '../../lib/native/types';
import {
  collectDirtyLogs,
  cpuidMismatches,
  decodeCpuidEntries,
  decodeMsrEntries,
  DirtyTrackingGuestMemory,
  encodeCpuidEntries,
  encodeMsrEntries,
  KVM_CLOCK_REALTIME,
  msrRestoreOrder,
  msrShouldSave,
  PageBitmap,
  selectMsrsToSave,
  SnapshotError,
  vcpuRecordFromNative,
  vcpuRecordToNative,
  vmRecordToNative,
} from '../../lib/snapshot';
import { vcpuRecord } from './helpers/snapshot-state';

describe('PageBitmap', () => {
  it('ranges round-trip (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 300 }), fc.array(fc.nat(299), { maxLength: 100 }), (pages, set) => {
        const bm = new PageBitmap(pages);
        for (const p of set) bm.set(p);
        const expected = new Set(set.filter((p) => p < pages));
        expect(bm.count()).toBe(expected.size);
        const ranges = bm.toRanges();
        // Sorted, non-adjacent, covering exactly the set pages.
        for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).toBeGreaterThan(ranges[i - 1][0] + ranges[i - 1][1]);
        const back = PageBitmap.fromRanges(pages, ranges);
        expect(Buffer.from(back.bits)).toEqual(Buffer.from(bm.bits));
        for (let p = 0; p < pages; p++) expect(back.has(p)).toBe(expected.has(p));
      }),
      { numRuns: 300 },
    );
  });

  it('markBytes marks every page a byte range touches, clipped to the buffer', () => {
    const bm = new PageBitmap(10);
    bm.markBytes(4095, 2);
    expect(bm.toRanges()).toEqual([[0, 2]]);
    bm.markBytes(9 * 4096, 100_000);
    bm.markBytes(5 * 4096, 0);
    expect(bm.toRanges()).toEqual([[0, 2], [9, 1]]);
  });

  it('orAt places a slot log at its page, aligned or not (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 1, max: 50 }), fc.array(fc.nat(49)), (first, logPages, set) => {
        const bm = new PageBitmap(100);
        const log = new Uint8Array(Math.ceil(logPages / 8));
        for (const p of set) if (p < logPages) log[p >> 3] |= 1 << (p & 7);
        bm.orAt(first, log, logPages);
        for (let p = 0; p < 100; p++) {
          const inLog = p >= first && p < first + logPages && set.includes(p - first);
          expect(bm.has(p)).toBe(inLog);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('collectDirtyLogs ORs every slot at its place in the buffer', () => {
    const logs: Record<number, Buffer> = { 0: Buffer.from([0b101]), 1: Buffer.from([0b1, 0]) };
    const vm = { getDirtyLog: (slot: number) => logs[slot] } as unknown as NativeVm;
    const bm = collectDirtyLogs(vm, [{ slot: 0, byteOffset: 0, size: 3 * 4096 }, { slot: 1, byteOffset: 3 * 4096, size: 9 * 4096 }], 12 * 4096);
    expect(bm.toRanges()).toEqual([[0, 1], [2, 2]]);
    expect(() => collectDirtyLogs(vm, [{ slot: 0, byteOffset: 100, size: 4096 }], 8192)).toThrow(SnapshotError);
  });

  it('refuses bits of the wrong size and bad ranges', () => {
    expect(() => new PageBitmap(9, new Uint8Array(1))).toThrow(SnapshotError);
    expect(() => PageBitmap.fromRanges(10, [[8, 3]])).toThrow(expect.objectContaining({ code: 'BAD_STATE', field: 'memory.dirtyPages[0]' }));
  });
});

describe('MSR selection', () => {
  it('keeps architectural state and kvmclock, drops counters and MCG_CTL', () => {
    for (const m of [0x10, 0x1b, 0x3b, 0x174, 0x277, 0x2ff, 0x6e0, 0xc0000080, 0xc0000102, 0xc0000103, 0x4b564d00, 0x4b564d01, 0x4b564d07]) {
      expect(msrShouldSave(m)).toBe(true);
    }
    // IA32_MCG_CTL, PMU counters and event selects, VMX capabilities, PERF_CAPABILITIES, ARCH_CAPABILITIES, legacy kvmclock.
    for (const m of [0x17b, 0xc1, 0x186, 0x309, 0x38f, 0x480, 0x345, 0x10a, 0x11, 0x12]) expect(msrShouldSave(m)).toBe(false);
  });

  it("adds the MSRs the guest's CPUID brings and sorts without duplicates", () => {
    const cpuid: CpuidEntry[] = [
      { function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: (1 << 12) | (1 << 7) },
      { function: 7, index: 0, flags: 1, eax: 0, ebx: 1 << 14, ecx: 0, edx: 0 },
    ];
    const list = selectMsrsToSave([0x10, 0x10, 0x17b, 0x4b564d01, 0xc1], cpuid);
    expect(list).toContain(0x10);
    expect(list).toContain(0x200); // MTRR PHYSBASE0
    expect(list).toContain(0x277); // PAT
    expect(list).toContain(0x400); // MC0_CTL
    expect(list).toContain(0x47f);
    expect(list).toContain(0xd90); // BNDCFGS
    expect(list).not.toContain(0x17b);
    expect(list).not.toContain(0xc1);
    expect([...list].sort((a, b) => a - b)).toEqual(list);
    expect(new Set(list).size).toBe(list.length);
    expect(selectMsrsToSave([0x10], [])).toEqual([0x10]);
  });

  it('restores TSC_DEADLINE after TSC, a zero deadline as the TSC', () => {
    const order = msrRestoreOrder([
      { index: 0x6e0, data: '0' },
      { index: 0x1b, data: '1' },
      { index: 0x10, data: '999' },
    ]);
    expect(order).toEqual([
      { index: 0x1b, data: '1' },
      { index: 0x10, data: '999' },
      { index: 0x6e0, data: '999' },
    ]);
    expect(msrRestoreOrder([{ index: 0x6e0, data: '5' }])).toEqual([{ index: 0x6e0, data: '5' }]);
  });
});

describe('CPUID compatibility', () => {
  const entry = (fn: number, index: number, regs: Partial<CpuidEntry>): CpuidEntry => ({ function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs });
  const intel = entry(0, 0, { eax: 0xd, ebx: 0x756e6547, edx: 0x49656e69, ecx: 0x6c65746e });
  const amd = entry(0, 0, { eax: 0xd, ebx: 0x68747541, edx: 0x69746e65, ecx: 0x444d4163 });

  it('accepts a guest whose features the host has, whatever the host adds', () => {
    const host = [intel, entry(1, 0, { ecx: 0xffffffff, edx: 0xffffffff }), entry(7, 0, { ebx: 0xffff })];
    const saved = [intel, entry(1, 0, { ecx: 1 << 28, edx: 1 << 26 }), entry(7, 0, { ebx: 1 << 5 })];
    expect(cpuidMismatches(saved, host)).toEqual([]);
  });

  it('names the missing features by leaf, register and name', () => {
    const host = [intel, entry(7, 0, { ebx: 0 })];
    const saved = [intel, entry(7, 0, { ebx: (1 << 5) | (1 << 16) | (1 << 17) })];
    expect(cpuidMismatches(saved, host)).toEqual([
      { field: 'cpuid 0x7.0 ebx', missingBits: (1 << 5) | (1 << 16) | (1 << 17), features: ['avx2', 'avx512f', 'bit 17'] },
    ]);
  });

  it('ignores the bits a VMM sets itself (hypervisor, HTT, OSXSAVE, OSPKE)', () => {
    const host = [intel, entry(1, 0, {}), entry(7, 0, {})];
    const saved = [intel, entry(1, 0, { ecx: (1 << 31) | (1 << 27), edx: 1 << 28 }), entry(7, 0, { ecx: 1 << 4 })];
    expect(cpuidMismatches(saved, host)).toEqual([]);
  });

  it('a leaf the host lacks entirely counts as all-zero; sub-leaves are told apart', () => {
    const saved = [entry(0xd, 1, { eax: 0b1000 }), entry(0xd, 0, { eax: 0b11 })];
    const host = [entry(0xd, 0, { eax: 0b11 })];
    expect(cpuidMismatches(saved, host)).toEqual([{ field: 'cpuid 0xd.1 eax', missingBits: 8, features: ['xsaves'] }]);
  });

  it('refuses another vendor', () => {
    expect(cpuidMismatches([intel], [amd])).toEqual([{ field: 'vendor', missingBits: 0, features: ['GenuineIntel', 'AuthenticAMD'] }]);
  });
});

describe('codecs', () => {
  it('MSR and CPUID records round-trip through kernel structures (property)', () => {
    const u32 = fc.integer({ min: 0, max: 0xffffffff });
    fc.assert(
      fc.property(
        fc.array(fc.record({ index: u32, data: fc.tuple(u32, u32).map(([hi, lo]) => ((BigInt(hi) << 32n) | BigInt(lo)).toString()) }), { maxLength: 20 }),
        fc.array(fc.record({ function: u32, index: u32, flags: u32, eax: u32, ebx: u32, ecx: u32, edx: u32 }), { maxLength: 20 }),
        (msrs, cpuid) => {
          expect(decodeMsrEntries(encodeMsrEntries(msrs))).toEqual(msrs);
          expect(decodeCpuidEntries(encodeCpuidEntries(cpuid))).toEqual(cpuid);
        },
      ),
    );
    expect(() => decodeMsrEntries(new Uint8Array(15))).toThrow(SnapshotError);
    expect(() => decodeCpuidEntries(new Uint8Array(41))).toThrow(SnapshotError);
  });

  it('a vCPU record round-trips to the native shape, MSRs in restore order', () => {
    const rec = vcpuRecord(0);
    const native = vcpuRecordToNative(rec);
    expect(native.regs.length).toBe(144);
    expect(decodeMsrEntries(native.msrs).map((m) => m.index)).toEqual([0x10, 0x4b564d01, 0x6e0]);
    const back = vcpuRecordFromNative(0, { ...native, msrs: encodeMsrEntries(rec.msrs), msrsUnreadable: [], tscKhz: rec.tscKhz });
    expect(back).toEqual(rec);
  });

  it("clears the clock's flags, or keeps only KVM_CLOCK_REALTIME when asked and recorded", () => {
    const clock = Buffer.alloc(48);
    clock.writeUInt32LE(KVM_CLOCK_REALTIME | 2, 8);
    const rec = { picMaster: null, picSlave: null, ioapic: null, pit2: null, clock: clock.toString('base64') };
    expect(vmRecordToNative(rec).clock!.readUInt32LE(8)).toBe(0);
    expect(vmRecordToNative(rec, { clockRealtime: true }).clock!.readUInt32LE(8)).toBe(KVM_CLOCK_REALTIME);
    const noRealtime = { ...rec, clock: Buffer.alloc(48).toString('base64') };
    expect(() => vmRecordToNative(noRealtime, { clockRealtime: true })).toThrow(expect.objectContaining({ code: 'HOST_INCOMPATIBLE' }));
  });
});

describe('DirtyTrackingGuestMemory', () => {
  function make() {
    const buffer = new ArrayBuffer(16 * 4096);
    // Two regions of one buffer, the second at guest 1 MiB but at buffer page 8.
    return new DirtyTrackingGuestMemory([
      { guestAddr: 0, buffer, byteOffset: 0, size: 8 * 4096 },
      { guestAddr: 0x100000, buffer, byteOffset: 8 * 4096, size: 8 * 4096 },
    ]);
  }

  it('marks the buffer pages host writes touch, not reads', () => {
    const m = make();
    m.writeU8(5, 1);
    m.writeU32(0x100000 + 4094, 0xffffffff);
    m.writeU64(3 * 4096, 7n);
    m.write(0x100000 + 5 * 4096, new Uint8Array(10));
    expect(m.hostDirty.toRanges()).toEqual([[0, 1], [3, 1], [8, 2], [13, 1]]);
    m.hostDirty.clear();
    m.read(0, 8 * 4096);
    m.readU32(4);
    expect(m.hostDirty.count()).toBe(0);
    m.slice(0x100000, 1);
    expect(m.hostDirty.toRanges()).toEqual([[8, 1]]);
  });

  it('marks nothing for refused accesses or while tracking is off', () => {
    const m = make();
    expect(() => m.writeU32(8 * 4096 - 2, 1)).toThrow();
    m.tracking = false;
    m.writeU8(0, 1);
    expect(m.hostDirty.count()).toBe(0);
  });

  it('needs one buffer', () => {
    expect(() => new DirtyTrackingGuestMemory([
      { guestAddr: 0, bytes: new Uint8Array(4096) },
      { guestAddr: 8192, bytes: new Uint8Array(4096) },
    ])).toThrow(expect.objectContaining({ code: 'BAD_REGION' }));
  });
});
