/**
 * Merging a diff snapshot onto its base, as a library function and as a command: the result holds
 * the diff's pages (zero pages included) over the base's, and mismatched pairs are refused.
 */
import { spawnSync } from 'child_process';
import fc from 'fast-check';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';

import {
  layoutChecksum,
  loadSnapshot,
  mergeSnapshots,
  MEMORY_FILE,
  PageBitmap,
  STATE_FILE,
  writeStateFile,
  type SnapshotState,
} from '../../lib/snapshot';
import { makeState } from './helpers/snapshot-state';

const PAGE = 4096;
const PAGES = 32;

let tmp: string;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'kindling-merge-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

let n = 0;
async function writeSnapshot(state: SnapshotState, memory: Buffer): Promise<string> {
  const dir = path.join(tmp, `s${n++}`);
  await fsp.mkdir(dir);
  await fsp.writeFile(path.join(dir, MEMORY_FILE), memory);
  await writeStateFile(path.join(dir, STATE_FILE), state);
  return dir;
}

/** A page filled with `v` (0 = zero page). */
function page(v: number): Buffer {
  return Buffer.alloc(PAGE, v);
}

/** Base: page i holds i+1 (page 0 holds zeros). Diff: the given pages, with value 200+i or zero. */
async function pair(dirty: number[], zeroed: number[] = []) {
  const base = makeState({ vcpus: 1, memBytes: PAGES * PAGE, snapshotId: 'base-0001' });
  const baseMem = Buffer.concat(Array.from({ length: PAGES }, (_, i) => page(i === 0 ? 0 : i + 1)));
  const diff = makeState({ vcpus: 1, memBytes: PAGES * PAGE, type: 'diff', snapshotId: 'diff-0002' });
  const bm = new PageBitmap(PAGES);
  for (const p of [...dirty, ...zeroed]) bm.set(p);
  diff.memory.dirtyPages = bm.toRanges();
  diff.base = { snapshotId: 'base-0001', layoutChecksum: base.memory.layoutChecksum };
  diff.vcpus[0].mpState = 3; // the diff's own vCPU state must win
  const diffMem = Buffer.alloc(PAGES * PAGE); // holes where the diff has nothing
  for (const p of dirty) page(200 + p).copy(diffMem, p * PAGE);
  const expected = Buffer.from(baseMem);
  for (const p of dirty) page(200 + p).copy(expected, p * PAGE);
  for (const p of zeroed) page(0).copy(expected, p * PAGE);
  return { baseDir: await writeSnapshot(base, baseMem), diffDir: await writeSnapshot(diff, diffMem), expected, diffState: diff };
}

describe('mergeSnapshots', () => {
  it('puts exactly the diff pages (zeroed ones too) over the base, into a new directory (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(fc.nat(PAGES - 1), { maxLength: 12 }), fc.uniqueArray(fc.nat(PAGES - 1), { maxLength: 4 }), async (dirty, zero) => {
        const zeroed = zero.filter((p) => !dirty.includes(p));
        const { baseDir, diffDir, expected, diffState } = await pair(dirty, zeroed);
        const baseBefore = await fsp.readFile(path.join(baseDir, MEMORY_FILE));
        const out = path.join(tmp, `out${n++}`);
        const r = await mergeSnapshots(baseDir, diffDir, out);
        expect(r).toEqual({ dir: out, snapshotId: 'diff-0002', pagesMerged: dirty.length + zeroed.length });
        expect((await fsp.readFile(path.join(out, MEMORY_FILE))).equals(expected)).toBe(true);
        // The base is untouched.
        expect((await fsp.readFile(path.join(baseDir, MEMORY_FILE))).equals(baseBefore)).toBe(true);
        const merged = (await loadSnapshot(out)).state;
        expect(merged.type).toBe('full');
        expect(merged.base).toBeUndefined();
        expect(merged.memory.dirtyPages).toBeUndefined();
        expect(merged.vcpus).toEqual(diffState.vcpus);
      }),
      { numRuns: 15 },
    );
  });

  it('keeps the zero pages of the base as holes in a new directory', async () => {
    const { baseDir, diffDir } = await pair([3]);
    const out = path.join(tmp, 'sparse');
    await mergeSnapshots(baseDir, diffDir, out);
    const st = await fsp.stat(path.join(out, MEMORY_FILE));
    expect(st.size).toBe(PAGES * PAGE);
    expect(st.blocks * 512).toBeLessThan(st.size); // page 0 is a hole
  });

  it('merges in place, and the next diff of a chain merges onto the result', async () => {
    const { baseDir, diffDir, expected } = await pair([1, 2, 30]);
    await mergeSnapshots(baseDir, diffDir);
    expect((await fsp.readFile(path.join(baseDir, MEMORY_FILE))).equals(expected)).toBe(true);
    const merged = (await loadSnapshot(baseDir)).state;
    expect(merged.snapshotId).toBe('diff-0002');

    const next = makeState({ vcpus: 1, memBytes: PAGES * PAGE, type: 'diff', snapshotId: 'diff-0003' });
    next.base = { snapshotId: 'diff-0002', layoutChecksum: merged.memory.layoutChecksum };
    next.memory.dirtyPages = [[5, 1]];
    const mem = Buffer.alloc(PAGES * PAGE);
    page(99).copy(mem, 5 * PAGE);
    const nextDir = await writeSnapshot(next, mem);
    expect((await mergeSnapshots(baseDir, nextDir)).snapshotId).toBe('diff-0003');
    const after = await fsp.readFile(path.join(baseDir, MEMORY_FILE));
    expect(after.subarray(5 * PAGE, 6 * PAGE).equals(page(99))).toBe(true);
    expect(after.subarray(30 * PAGE, 31 * PAGE).equals(page(230))).toBe(true);
  });

  it('refuses a diff of another base, a full snapshot as the diff, a diff as the base, another layout', async () => {
    const { baseDir, diffDir } = await pair([1]);
    const other = await writeSnapshot(makeState({ vcpus: 1, memBytes: PAGES * PAGE, snapshotId: 'other-0009' }), Buffer.alloc(PAGES * PAGE));
    await expect(mergeSnapshots(other, diffDir, path.join(tmp, 'x1'))).rejects.toMatchObject({ code: 'BASE_MISMATCH', field: 'base.snapshotId' });
    await expect(mergeSnapshots(baseDir, other, path.join(tmp, 'x2'))).rejects.toMatchObject({ code: 'BASE_MISMATCH', field: 'diff.type' });
    await expect(mergeSnapshots(diffDir, diffDir, path.join(tmp, 'x3'))).rejects.toMatchObject({ code: 'BASE_MISMATCH', field: 'base.type' });

    const moved = makeState({ vcpus: 1, memBytes: PAGES * PAGE, snapshotId: 'base-0001' });
    moved.memory.regions[1].guestAddr += PAGE;
    moved.memory.layoutChecksum = layoutChecksum(moved.memory);
    const movedDir = await writeSnapshot(moved, Buffer.alloc(PAGES * PAGE));
    await expect(mergeSnapshots(movedDir, diffDir, path.join(tmp, 'x4'))).rejects.toMatchObject({ code: 'LAYOUT_MISMATCH' });
    // Nothing was left behind that looks restorable.
    for (const d of ['x1', 'x2', 'x3', 'x4']) await expect(loadSnapshot(path.join(tmp, d))).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('refuses a diff whose memory file is shorter than its layout', async () => {
    const { baseDir, diffDir } = await pair([1]);
    await fsp.truncate(path.join(diffDir, MEMORY_FILE), PAGE);
    await expect(mergeSnapshots(baseDir, diffDir, path.join(tmp, 'short'))).rejects.toMatchObject({ code: 'MEMORY_SIZE_MISMATCH' });
  });

  it('scripts/snapshot-merge.js merges, and reports errors with their code', async () => {
    const { baseDir, diffDir, expected } = await pair([7]);
    const script = path.join(__dirname, '..', '..', 'scripts', 'snapshot-merge.js');
    const out = path.join(tmp, 'cli');
    const ok = spawnSync(process.execPath, [script, baseDir, diffDir, out], { encoding: 'utf8', timeout: 60_000 });
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/^merged 1 pages into .*cli \(snapshot diff-0002\)/);
    expect((await fsp.readFile(path.join(out, MEMORY_FILE))).equals(expected)).toBe(true);
    const bad = spawnSync(process.execPath, [script, diffDir, baseDir, path.join(tmp, 'cli2')], { encoding: 'utf8', timeout: 60_000 });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^snapshot-merge: BASE_MISMATCH: /);
    const usage = spawnSync(process.execPath, [script, baseDir], { encoding: 'utf8', timeout: 60_000 });
    expect(usage.status).toBe(2);
  });
});
