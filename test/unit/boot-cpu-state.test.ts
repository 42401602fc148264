import { existsSync, readFileSync } from 'fs';
import { GuestMemory } from '../../lib/memory/guest-memory';
import type { Segment, Sregs } from '../../lib/native/types';
import {
  BOOT_CS,
  BOOT_DS,
  BOOT_FPU,
  BOOT_GDT,
  BOOT_TSS,
  BootError,
  bootMsrs,
  bootRegs,
  bootSegments,
  bootSregs,
  configureLapicLint,
  gdtEntry,
  mpTableSize,
  segmentFromGdtEntry,
  setupBoot,
  writeGdtAndIdt,
  writeMpTable,
  writePageTables,
  EBDA_START,
  GDT_START,
  IDT_START,
  PD_START,
  PDPT_START,
  PML4_START,
  ZERO_PAGE_START,
  CMDLINE_START,
} from '../../lib/boot';
import { MSR_IA32_MISC_ENABLE, MSR_LSTAR, MSR_IA32_SYSENTER_CS } from '../../lib/cpu';

const MiB = 1024 * 1024;

describe('identity page tables', () => {
  it('map the first 4 GiB with 2 MiB pages', () => {
    const mem = GuestMemory.anonymous(4 * MiB);
    expect(writePageTables(mem)).toBe(PML4_START);
    expect(mem.readU64(PML4_START)).toBe(BigInt(PDPT_START | 3));
    expect(mem.readU64(PML4_START + 8)).toBe(0n);
    for (let g = 0; g < 4; g++) expect(mem.readU64(PDPT_START + g * 8)).toBe(BigInt((PD_START + g * 0x1000) | 3));
    expect(mem.readU64(PDPT_START + 32)).toBe(0n);
    expect(mem.readU64(PD_START)).toBe(0x83n);
    expect(mem.readU64(PD_START + 8)).toBe(0x200083n);
    expect(mem.readU64(PD_START + 0x1000)).toBe(0x4000_0083n); // 1 GiB
    expect(mem.readU64(PD_START + 0x3ff8)).toBe(0xffe0_0083n); // last 2 MiB below 4 GiB
    expect(PD_START + 0x4000).toBe(0xf000);
  });
});

describe('GDT and segments', () => {
  it('encodes the Firecracker-style flat descriptors', () => {
    expect(BOOT_GDT).toEqual([0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn]);
    expect(gdtEntry(0x808b, 0x12345678, 0x67)).toBe(0x12808b345678_0067n);
  });

  it('converts entries to kvm_segment fields', () => {
    const { code, data, tss } = bootSegments();
    const flat: Partial<Segment> = { base: 0n, limit: 0xffffffff, present: 1, dpl: 0, g: 1, avl: 0, unusable: 0 };
    expect(code).toEqual({ ...flat, selector: BOOT_CS, type: 0xb, s: 1, l: 1, db: 0 });
    expect(data).toEqual({ ...flat, selector: BOOT_DS, type: 0x3, s: 1, l: 0, db: 1 });
    expect(tss).toEqual({ ...flat, selector: BOOT_TSS, type: 0xb, s: 0, l: 0, db: 0 });
    expect(segmentFromGdtEntry(0n, 0)).toMatchObject({ present: 0, unusable: 1, selector: 0 });
    expect(segmentFromGdtEntry(gdtEntry(0x4093, 0xabcdef12, 0x1234), 5)).toMatchObject({ base: 0xabcdef12n, limit: 0x1234, g: 0, db: 1, selector: 40 });
  });

  it('writes the GDT at 0x500 and an empty IDT at 0x520', () => {
    const mem = GuestMemory.anonymous(2 * MiB);
    mem.slice(IDT_START, 8).fill(0xff);
    writeGdtAndIdt(mem);
    expect(mem.readU64(GDT_START + 8)).toBe(BOOT_GDT[1]);
    expect(mem.readU64(GDT_START + 24)).toBe(BOOT_GDT[3]);
    expect(mem.readU64(IDT_START)).toBe(0n);
  });
});

function resetSregs(): Sregs {
  const seg = (): Segment => ({ base: 0n, limit: 0xffff, selector: 0, type: 3, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0 });
  return {
    cs: seg(), ds: seg(), es: seg(), fs: seg(), gs: seg(), ss: seg(), tr: seg(), ldt: seg(),
    gdt: { base: 0n, limit: 0xffff }, idt: { base: 0n, limit: 0xffff },
    cr0: 0x60000010n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apicBase: 0xfee00900n,
  };
}

describe('initial vCPU state', () => {
  it('registers follow the 64-bit boot protocol', () => {
    const r = bootRegs(0x1000000);
    expect(r.rip).toBe(0x1000000n);
    expect(r.rsi).toBe(BigInt(ZERO_PAGE_START));
    expect(r.rsp).toBe(0x8ff0n);
    expect(r.rbp).toBe(0x8ff0n);
    expect(r.rflags).toBe(2n);
    expect(r.rax | r.rbx | r.rcx | r.rdx | r.rdi | r.r15).toBe(0n);
  });

  it('special registers enter long mode and keep the APIC base', () => {
    const cur = resetSregs();
    const s = bootSregs(cur);
    expect(s.cr0).toBe(0x80000011n);
    expect(s.cr4).toBe(0x20n);
    expect(s.cr3).toBe(0x9000n);
    expect(s.efer).toBe(0x500n);
    expect(s.apicBase).toBe(0xfee00900n);
    expect(s.gdt).toEqual({ base: 0x500n, limit: 31 });
    expect(s.idt).toEqual({ base: 0x520n, limit: 7 });
    expect(s.cs.selector).toBe(0x08);
    expect(s.cs.l).toBe(1);
    for (const k of ['ds', 'es', 'fs', 'gs', 'ss'] as const) expect(s[k].selector).toBe(0x10);
    expect(s.tr.selector).toBe(0x18);
    expect(s.ldt).toBe(cur.ldt);
    expect(cur.cr0).toBe(0x60000010n); // input untouched
    s.ds.base = 5n;
    expect(s.es.base).toBe(0n); // segments are independent copies
  });

  it('FPU and MSRs', () => {
    expect(BOOT_FPU).toEqual({ fcw: 0x37f, mxcsr: 0x1f80 });
    const msrs = bootMsrs();
    expect(msrs.find((m) => m.index === MSR_IA32_MISC_ENABLE)!.data).toBe(1n);
    expect(msrs.find((m) => m.index === MSR_LSTAR)!.data).toBe(0n);
    expect(msrs.find((m) => m.index === MSR_IA32_SYSENTER_CS)!.data).toBe(0n);
    expect(new Set(msrs.map((m) => m.index)).size).toBe(msrs.length);
  });

  it('LINT0 becomes ExtINT and LINT1 NMI, other bits untouched', () => {
    const lapic = Buffer.alloc(1024);
    lapic.writeUInt32LE(0x0001_0000 | 0x400 | 0x30, 0x350); // masked, mode SMI?, vector 0x30
    lapic.writeUInt32LE(0x0001_0700, 0x360);
    lapic.writeUInt32LE(0xdeadbeef, 0x340);
    configureLapicLint(lapic);
    expect(lapic.readUInt32LE(0x350)).toBe(0x0001_0730);
    expect(lapic.readUInt32LE(0x360)).toBe(0x0001_0400);
    expect(lapic.readUInt32LE(0x340)).toBe(0xdeadbeef);
    expect(() => configureLapicLint(Buffer.alloc(0x360))).toThrow(BootError);
  });
});

function checksum(bytes: Uint8Array): number {
  return bytes.reduce((a, b) => (a + b) & 0xff, 0);
}

function parseMpTable(mem: GuestMemory) {
  const mpf = mem.read(EBDA_START, 16);
  expect(Buffer.from(mpf.subarray(0, 4)).toString()).toBe('_MP_');
  expect(checksum(mpf)).toBe(0);
  const table = mem.readU32(EBDA_START + 4);
  const len = mem.readU16(table + 4);
  const bytes = mem.read(table, len);
  expect(Buffer.from(bytes.subarray(0, 4)).toString()).toBe('PCMP');
  expect(checksum(bytes)).toBe(0);
  const counts = [0, 0, 0, 0, 0];
  const entries: Uint8Array[] = [];
  let p = 44;
  while (p < len) {
    const type = bytes[p];
    const size = type === 0 ? 20 : 8;
    entries.push(bytes.subarray(p, p + size));
    counts[type]++;
    p += size;
  }
  expect(p).toBe(len);
  expect(mem.readU16(table + 34)).toBe(entries.length);
  expect(mem.readU32(table + 36)).toBe(0xfee00000);
  return { counts, entries };
}

describe('MP table', () => {
  it.each([1, 2])('is well formed for %i CPU(s)', (n) => {
    const mem = GuestMemory.anonymous(2 * MiB);
    writeMpTable(mem, n);
    const { counts, entries } = parseMpTable(mem);
    expect(counts).toEqual([n, 1, 1, 24, 2]);
    const cpus = entries.filter((e) => e[0] === 0);
    cpus.forEach((e, i) => {
      expect(e[1]).toBe(i);
      expect(e[3]).toBe(i === 0 ? 3 : 1);
    });
    const ioapic = entries.find((e) => e[0] === 2)!;
    expect(ioapic[1]).toBe(n);
    expect(ioapic[2]).toBe(0x11);
    expect(new DataView(ioapic.buffer, ioapic.byteOffset).getUint32(4, true)).toBe(0xfec00000);
    const ints = entries.filter((e) => e[0] === 3);
    ints.forEach((e, irq) => expect([e[1], e[4], e[5], e[6], e[7]]).toEqual([0, 0, irq, n, irq]));
    const lints = entries.filter((e) => e[0] === 4);
    expect([lints[0][1], lints[0][7]]).toEqual([3, 0]); // ExtINT -> LINT0
    expect([lints[1][1], lints[1][6], lints[1][7]]).toEqual([1, 0xff, 1]); // NMI -> LINT1
  });

  it('fits the EBDA for 32 CPUs and refuses 0 or 33', () => {
    expect(0x9fc00 + mpTableSize(32)).toBeLessThanOrEqual(0xa0000);
    const mem = GuestMemory.anonymous(2 * MiB);
    writeMpTable(mem, 32);
    expect(parseMpTable(mem).counts[0]).toBe(32);
    expect(() => writeMpTable(mem, 0)).toThrow(/outside 1\.\.32/);
    expect(() => writeMpTable(mem, 33)).toThrow(BootError);
  });

  it('refuses memory that does not hold the EBDA', () => {
    const mem = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(0x9fc00 + 100) }]);
    expect(() => writeMpTable(mem, 1)).toThrow(expect.objectContaining({ code: 'NO_ROOM' }));
  });
});

const HELLO = `${__dirname}/../guests/out/hello.elf`;
describe('setupBoot', () => {
  (existsSync(HELLO) ? it : it.skip)('prepares a freestanding guest end to end', () => {
    const mem = GuestMemory.anonymous(16 * MiB);
    const b = setupBoot(mem, { kernel: readFileSync(HELLO), cmdline: 'console=ttyS0 foo=bar', initrd: new Uint8Array([1, 2, 3]), vcpuCount: 2 });
    expect(b.regs.rip).toBe(0x200000n);
    expect(b.cmdline).toBe('console=ttyS0 foo=bar');
    expect(Buffer.from(mem.read(CMDLINE_START, 21)).toString()).toBe('console=ttyS0 foo=bar');
    expect(mem.readU32(ZERO_PAGE_START + 0x228)).toBe(CMDLINE_START);
    expect(mem.readU32(ZERO_PAGE_START + 0x218)).toBe(b.initrd!.addr);
    expect(b.initrd!.addr).toBe(16 * MiB - 0x1000);
    expect(mem.readU8(ZERO_PAGE_START + 0x1e8)).toBe(3);
    expect(parseMpTable(mem).counts[0]).toBe(2);
    expect(mem.readU64(PML4_START)).toBe(0xa003n);
    expect(b.sregs(resetSregs()).cr3).toBe(0x9000n);
  });
});

const VMLINUX = '/work/shared/guest/vmlinux';
describe('setupBoot with Linux', () => {
  (existsSync(VMLINUX) ? it : it.skip)('loads vmlinux and places the initrd above it', () => {
    const mem = GuestMemory.anonymous(128 * MiB);
    const b = setupBoot(mem, { kernel: readFileSync(VMLINUX), cmdline: 'console=ttyS0 reboot=k panic=-1', initrd: new Uint8Array(4 * MiB), vcpuCount: 1 });
    expect(b.kernel.kind).toBe('elf');
    expect(b.regs.rip).toBe(0x1000000n);
    expect(b.kernel.kernelEnd).toBeGreaterThan(0x1000000);
    expect(b.initrd!.addr).toBe(124 * MiB);
    expect(b.initrd!.addr).toBeGreaterThanOrEqual(b.kernel.kernelEnd);
    // startup_64's first bytes are where the ELF put them.
    expect(mem.readU8(0x1000000)).not.toBe(0);
  });
});
