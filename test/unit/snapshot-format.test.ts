/**
 * The snapshot state file: round trips, and every kind of bad file (corrupt, truncated, wrong
 * version, bit-flipped, malformed, inconsistent) ends in a typed SnapshotError, never a crash.
 */
import fc from 'fast-check';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';

import {
  decodeState,
  encodeState,
  layoutChecksum,
  readStateFile,
  SnapshotError,
  STATE_FORMAT_VERSION,
  STATE_HEADER_SIZE,
  validateState,
  writeStateFile,
  type SnapshotErrorCode,
  type SnapshotState,
} from '../../lib/snapshot';
import { KindlingError } from '../../lib/errors';
import { makeState } from './helpers/snapshot-state';

function codeOf(f: () => unknown): SnapshotErrorCode | 'none' {
  try {
    f();
    return 'none';
  } catch (e) {
    if (!(e instanceof SnapshotError)) throw new Error(`not a SnapshotError: ${String(e)}`);
    expect(e).toBeInstanceOf(KindlingError);
    return e.code;
  }
}

/** A state with a change applied to a deep copy, re-encoded with a valid header. */
function mutated(mutate: (s: Record<string, any>) => void, base: SnapshotState = makeState()): Buffer {
  const copy = JSON.parse(JSON.stringify(base));
  mutate(copy);
  return encodeState(copy);
}

describe('state file round trip', () => {
  it('decodes what it encodes, full and diff', () => {
    for (const s of [makeState(), makeState({ type: 'diff', vcpus: 1 })]) {
      const bytes = encodeState(s);
      expect(bytes.toString('latin1', 0, 8)).toBe('KNDLSNAP');
      expect(bytes.readUInt32LE(8)).toBe(STATE_FORMAT_VERSION);
      expect(decodeState(bytes)).toEqual(s);
    }
  });

  it('keeps 64-bit MSR values exact', () => {
    const s = decodeState(encodeState(makeState()));
    expect(s.vcpus[0].msrs[2].data).toBe('18446744073709551615');
  });

  it('round-trips random memory layouts, vCPU counts and device states (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 2, max: 4096 }),
        fc.array(fc.record({ kind: fc.string({ maxLength: 10 }), state: fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 3 })) }), { maxLength: 4 }),
        (vcpus, pages, devs) => {
          const s = makeState({ vcpus, memBytes: pages * 4096 });
          // JSON.stringify drops -0's sign; a state holds JSON data, so compare through JSON.
          s.devices = devs.map((d, i) => ({ kind: d.kind, id: `dev${i}`, version: i, state: JSON.parse(JSON.stringify(d.state)) }));
          expect(decodeState(encodeState(s))).toEqual(s);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('writes atomically and reads back; a missing file is NOT_FOUND', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'kindling-state-'));
    try {
      const file = path.join(dir, 'vmstate');
      await expect(readStateFile(file)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      const n = await writeStateFile(file, makeState());
      expect((await fsp.stat(file)).size).toBe(n);
      expect(await readStateFile(file)).toEqual(makeState());
      expect(await fsp.readdir(dir)).toEqual(['vmstate']);
      await expect(readStateFile(dir)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('bad files', () => {
  const good = encodeState(makeState());

  it('every truncation is TRUNCATED (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: good.length - 1 }), (len) => {
        expect(codeOf(() => decodeState(good.subarray(0, len)))).toBe('TRUNCATED');
      }),
      { numRuns: 500 },
    );
  });

  it('every single bit flip is detected, with the code its place implies (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: good.length * 8 - 1 }), (bit) => {
        const b = Buffer.from(good);
        b[bit >> 3] ^= 1 << (bit & 7);
        const code = codeOf(() => decodeState(b));
        const at = bit >> 3;
        if (at < 8) expect(code).toBe('BAD_MAGIC');
        else if (at < 12) expect(code).toBe('UNSUPPORTED_VERSION');
        else if (at >= 16 && at < 24) expect(['TRUNCATED', 'CHECKSUM_MISMATCH']).toContain(code);
        else expect(code).toBe('CHECKSUM_MISMATCH');
      }),
      { numRuns: 1000 },
    );
  });

  it('random bytes, with or without a valid-looking header, are refused (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, withMagic) => {
        const b = Buffer.from(bytes);
        if (withMagic && b.length >= 8) b.write('KNDLSNAP', 0, 'latin1');
        expect(codeOf(() => decodeState(b))).not.toBe('none');
      }),
      { numRuns: 500 },
    );
  });

  it('any JSON body behind a valid header is refused unless it is a state (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (v) => {
        const bytes = encodeState(v as unknown as SnapshotState);
        expect(codeOf(() => decodeState(bytes))).not.toBe('none');
      }),
      { numRuns: 300 },
    );
  });

  it('a body that is not JSON is BAD_STATE', () => {
    const body = Buffer.from('{"formatVersion": 1,');
    const bytes = encodeState(makeState());
    const header = Buffer.from(bytes.subarray(0, STATE_HEADER_SIZE));
    header.writeBigUInt64LE(BigInt(body.length), 16);
    require('crypto').createHash('sha256').update(body).digest().copy(header, 24);
    expect(codeOf(() => decodeState(Buffer.concat([header, body])))).toBe('BAD_STATE');
  });

  it('another format version is UNSUPPORTED_VERSION, naming both', () => {
    const b = Buffer.from(good);
    b.writeUInt32LE(2, 8);
    let err: SnapshotError | undefined;
    try {
      decodeState(b);
    } catch (e) {
      err = e as SnapshotError;
    }
    expect(err).toMatchObject({ code: 'UNSUPPORTED_VERSION', field: 'formatVersion', expected: '1', actual: '2' });
    expect(codeOf(() => decodeState(mutated((s) => { s.formatVersion = 7; })))).toBe('UNSUPPORTED_VERSION');
  });

  it('trailing bytes are refused', () => {
    expect(codeOf(() => decodeState(Buffer.concat([good, Buffer.from([0])])))).toBe('CHECKSUM_MISMATCH');
  });
});

describe('state validation', () => {
  const cases: [string, (s: Record<string, any>) => void, SnapshotErrorCode, string?][] = [
    ['missing vcpus', (s) => { delete s.vcpus; }, 'BAD_STATE', 'vcpus'],
    ['vcpuCount disagrees', (s) => { s.vcpuCount = 3; }, 'VCPU_COUNT_MISMATCH', 'vcpus'],
    ['vcpu ids out of order', (s) => { s.vcpus[1].id = 0; }, 'BAD_STATE', 'vcpus[1].id'],
    ['short regs', (s) => { s.vcpus[0].regs = Buffer.alloc(100).toString('base64'); }, 'BAD_STATE', 'vcpus[0].regs'],
    ['regs not base64', (s) => { s.vcpus[0].regs = '!!!!'; }, 'BAD_STATE', 'vcpus[0].regs'],
    ['xsave too small', (s) => { s.vcpus[1].xsave = Buffer.alloc(512).toString('base64'); }, 'BAD_STATE', 'vcpus[1].xsave'],
    ['lapic null', (s) => { s.vcpus[0].lapic = null; }, 'BAD_STATE', 'vcpus[0].lapic'],
    ['msr value too large', (s) => { s.vcpus[0].msrs[0].data = '18446744073709551616'; }, 'BAD_STATE', 'vcpus[0].msrs[0].data'],
    ['msr value a number', (s) => { s.vcpus[0].msrs[0].data = 5; }, 'BAD_STATE', 'vcpus[0].msrs[0].data'],
    ['cpuid field negative', (s) => { s.vcpus[0].cpuid[0].eax = -1; }, 'BAD_STATE', 'vcpus[0].cpuid[0].eax'],
    ['irqchip wrong size', (s) => { s.vm.ioapic = Buffer.alloc(10).toString('base64'); }, 'BAD_STATE', 'vm.ioapic'],
    ['memory size not whole pages', (s) => { s.memory.size += 1; }, 'BAD_STATE', 'memory.size'],
    ['layout changed under its checksum', (s) => { s.memory.regions[1].guestAddr += 4096; }, 'LAYOUT_MISMATCH', 'memory.layoutChecksum'],
    ['region past the file', (s) => { s.memory.regions[1].size += 4096; }, 'LAYOUT_MISMATCH', 'memory.regions'],
    ['no regions', (s) => { s.memory.regions = []; }, 'BAD_STATE', 'memory.regions'],
    ['memory file name escapes', (s) => { s.memory.file = '../x'; }, 'BAD_STATE', 'memory.file'],
    ['dirty pages in a full snapshot', (s) => { s.memory.dirtyPages = [[0, 1]]; }, 'BAD_STATE', 'memory.dirtyPages'],
    ['diff without dirty pages', (s) => { s.type = 'diff'; s.base = { snapshotId: 'x', layoutChecksum: s.memory.layoutChecksum }; }, 'BAD_STATE', 'memory.dirtyPages'],
    ['unknown type', (s) => { s.type = 'partial'; }, 'BAD_STATE', 'type'],
    ['duplicate device ids', (s) => { s.devices.push({ ...s.devices[0] }); }, 'BAD_STATE', 'devices[1].id'],
    ['device state not an object', (s) => { s.devices[0].state = [1]; }, 'BAD_STATE', 'devices[0].state'],
    ['machine missing', (s) => { delete s.machine; }, 'BAD_STATE', 'machine'],
    ['tscKhz zero', (s) => { s.vcpus[0].tscKhz = 0; }, 'BAD_STATE', 'vcpus[0].tscKhz'],
  ];
  it.each(cases)('%s', (_name, mutate, code, field) => {
    let err: SnapshotError | undefined;
    try {
      decodeState(mutated(mutate));
    } catch (e) {
      err = e as SnapshotError;
    }
    expect(err).toBeInstanceOf(SnapshotError);
    expect(err!.code).toBe(code);
    if (field) expect(err!.field).toBe(field);
  });

  it('diff states: overlapping, unsorted or out-of-range dirty pages are BAD_STATE', () => {
    const diff = makeState({ type: 'diff' });
    for (const ranges of [[[2, 2], [3, 1]], [[5, 1], [1, 1]], [[0, 0]], [[60, 10]], [[-1, 2]], [[1]]]) {
      expect(codeOf(() => decodeState(mutated((s) => { s.memory.dirtyPages = ranges; }, diff)))).toBe('BAD_STATE');
    }
    expect(codeOf(() => decodeState(mutated((s) => { delete s.base; }, diff)))).toBe('BAD_STATE');
  });

  it('removing or retyping any single field of a valid state is refused (property)', () => {
    const paths: string[][] = [];
    const walk = (v: unknown, p: string[]) => {
      if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          // Device states and the machine record are opaque JSON: anything goes inside them.
          if (p[0] === 'machine' || (p[0] === 'devices' && p.length >= 2 && (k === 'state' || p[2] === 'state'))) {
            if (k === 'state') paths.push([...p, k]);
            continue;
          }
          paths.push([...p, k]);
          walk(x, [...p, k]);
        }
      }
    };
    const base = makeState({ type: 'diff' });
    walk(JSON.parse(JSON.stringify(base)), []);
    fc.assert(
      fc.property(fc.constantFrom(...paths), fc.constantFrom('delete', 'string', 'object', 'negative', 'null'), (p, how) => {
        const bytes = mutated((s) => {
          let o: any = s;
          for (const k of p.slice(0, -1)) o = o[k];
          const k = p[p.length - 1];
          if (how === 'delete') delete o[k];
          else if (how === 'string') o[k] = typeof o[k] === 'string' ? 'Zm9v!' : 'x';
          else if (how === 'object') o[k] = { nested: true };
          else if (how === 'negative') o[k] = -1;
          else o[k] = null;
        }, base);
        const code = codeOf(() => decodeState(bytes));
        // A few fields accept null or any string by design; everything else must be refused.
        const last = p[p.length - 1];
        const lenient = (how === 'null' && /^(xsave|xcrs|debugregs|events|picMaster|picSlave|ioapic|pit2|clock|tscKhz)$/.test(last)) ||
          (how === 'string' && /^(kindlingVersion|createdAt|kind|id)$/.test(last) && p[0] !== 'vcpus') ||
          (how === 'object' && (last === 'state' || last === 'machine'));
        if (!lenient) expect(code).not.toBe('none');
      }),
      { numRuns: 1500 },
    );
  });

  it('validateState copies only known fields', () => {
    const s = JSON.parse(JSON.stringify(makeState()));
    s.extra = 'ignored';
    s.vcpus[0].surprise = 1;
    const v = validateState(s);
    expect((v as unknown as Record<string, unknown>).extra).toBeUndefined();
    expect((v.vcpus[0] as unknown as Record<string, unknown>).surprise).toBeUndefined();
  });

  it('layoutChecksum depends on every region field', () => {
    const s = makeState();
    const base = layoutChecksum(s.memory);
    for (const k of ['guestAddr', 'size', 'fileOffset', 'slot'] as const) {
      const r = s.memory.regions.map((x) => ({ ...x }));
      r[0][k] += 4096;
      expect(layoutChecksum({ ...s.memory, regions: r })).not.toBe(base);
    }
  });
});
