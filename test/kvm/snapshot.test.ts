/**
 * Snapshots on real KVM, driven through the native layer by a test-only harness: a guest that
 * counts, prints and writes a memory pattern is paused, its vCPU and VM state and memory are
 * saved, and a NEW VM built from the files goes on counting where it stopped.
 */
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';

import {
  decodeRegs,
  encodeState,
  loadSnapshot,
  mergeSnapshots,
  readStateFile,
  SnapshotError,
  STATE_FILE,
  writeStateFile,
} from '../../lib/snapshot';
import { describeKvm, guest, parseKt } from './harness';
import { NativeGuest } from './snapshot-harness';

const C = 0x9e3779b97f4a7c15n;
const MASK = (1n << 64n) - 1n;

/** The sums counter.elf prints: sum over steps 0..i of pattern(step, 0) = (step+1) * C (mod 2^64). */
function expectedSums(n: number): string[] {
  const out: string[] = [];
  let sum = 0n;
  for (let i = 0; i < n; i++) {
    sum = (sum + (BigInt(i + 1) * C)) & MASK;
    out.push(sum.toString(16));
  }
  return out;
}

/** Checks that `output` is one complete counter run of `steps` steps. */
function expectCompleteRun(output: string, steps: number, pages: number): void {
  const { kv, lines } = parseKt(output);
  const counts = lines.filter((l) => l.startsWith('count='));
  const want = expectedSums(steps).map((s, i) => `count=${i} sum=${s}`);
  expect(counts).toEqual(want);
  expect(kv.get('verify')).toBe(`ok pages=${Math.min(steps, pages)}`);
  expect(kv.get('ticks')).toBe(String(steps));
  expect(lines[lines.length - 1]).toBe('DONE');
}

function countsIn(output: string): number {
  return parseKt(output).lines.filter((l) => l.startsWith('count=')).length;
}

describeKvm('snapshot and restore (native layer)', () => {
  const STEPS = 24;
  const PAGES = 8;
  const CMDLINE = `count=${STEPS} pages=${PAGES}`;
  let tmp: string;
  const open: NativeGuest[] = [];

  beforeAll(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'kindling-snap-'));
  });
  afterEach(() => {
    for (const g of open.splice(0)) g.close();
  });
  afterAll(async () => {
    await fsp.rm(tmp, { recursive: true, force: true });
  });

  async function bootCounter(opts: { dirtyLogging?: boolean; vcpus?: number; memoryMib?: number } = {}): Promise<NativeGuest> {
    const g = await NativeGuest.boot({ kernel: guest('counter'), memoryMib: opts.memoryMib ?? 64, cmdline: CMDLINE, ...opts });
    open.push(g);
    g.start();
    return g;
  }

  it('a paused guest restored into a new VM (memory mapped from the file) goes on where it stopped', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 5);
    g.pause();
    const before = g.output;
    const paused = countsIn(before);
    expect(paused).toBeGreaterThanOrEqual(5);
    expect(paused).toBeLessThan(STEPS);

    const dir = path.join(tmp, 'full');
    const info = await g.snapshot(dir, { type: 'full' });
    expect(info.type).toBe('full');
    // The guest touched a few hundred KiB of its 64 MiB: the file is sparse.
    expect(info.memory.pagesWritten).toBeGreaterThan(0);
    expect(info.memory.pagesWritten).toBeLessThan((64 * 256) / 4);
    const st = await fsp.stat(path.join(dir, 'memory'));
    expect(st.size).toBe(64 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(st.size / 4);

    const state = await readStateFile(path.join(dir, STATE_FILE));
    expect(state.vcpuCount).toBe(1);
    expect(state.vcpus[0].msrs.some((m) => m.index === 0x10)).toBe(true); // IA32_TSC
    expect(state.vcpus[0].cpuid.length).toBeGreaterThan(0);
    // The guest's code is linked at 2 MiB: RIP is inside it, not at the entry.
    const rip = decodeRegs(state.vcpus[0].regs).rip;
    expect(rip).toBeGreaterThan(0x200000n);

    const r = await NativeGuest.restore(dir, { memory: 'map' });
    open.push(r);
    r.start();
    expect(await r.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(before + r.output, STEPS, PAGES);
    // Nothing the original printed before the pause is printed again.
    expect(parseKt(r.output).lines.filter((l) => l.startsWith('count='))[0]).toMatch(new RegExp(`^count=${paused} `));

    // The original, resumed, finishes on its own too: the restore took nothing from it.
    g.resume();
    expect(await g.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(g.output, STEPS, PAGES);
    expect(g.output.slice(before.length)).toBe(r.output);
  });

  it('copy restore and map restore of one snapshot print the same continuation', async () => {
    const g = await bootCounter({ vcpus: 2 });
    await g.waitFor((o) => countsIn(o) >= 3);
    g.pause();
    const before = g.output;
    const dir = path.join(tmp, 'two');
    await g.snapshot(dir, { type: 'full' });
    const state = await readStateFile(path.join(dir, STATE_FILE));
    expect(state.vcpuCount).toBe(2);
    // The application processor never got its SIPI: it waits in INIT_RECEIVED / UNINITIALIZED.
    expect(state.vcpus[1].mpState).not.toBe(0);

    const outputs: string[] = [];
    for (const memory of ['map', 'copy'] as const) {
      const r = await NativeGuest.restore(dir, { memory });
      open.push(r);
      r.start();
      expect(await r.wait()).toEqual({ reason: 'reset' });
      expectCompleteRun(before + r.output, STEPS, PAGES);
      outputs.push(r.output);
    }
    expect(outputs[0]).toBe(outputs[1]);
  });

  it('a diff snapshot holds only the pages written since its parent, and merged onto it restores', async () => {
    const g = await bootCounter({ dirtyLogging: true });
    await g.waitFor((o) => countsIn(o) >= 3);
    g.pause();
    const atBase = g.output;
    const baseDir = path.join(tmp, 'base');
    const base = await g.snapshot(baseDir, { type: 'full' });
    g.resume();
    await g.waitFor((o) => countsIn(o) >= 10);
    g.pause();
    const before = g.output;
    const diffDir = path.join(tmp, 'diff');
    const diff = await g.snapshot(diffDir, { type: 'diff', parent: base });
    expect(diff.type).toBe('diff');
    // The pattern pages of 7+ steps, the stack, .data/.bss: a handful of pages out of 16384.
    expect(diff.memory.pagesWritten).toBeGreaterThan(PAGES - 1);
    expect(diff.memory.pagesWritten).toBeLessThan(200);
    const diffState = (await loadSnapshot(diffDir)).state;
    expect(diffState.base?.snapshotId).toBe(base.snapshotId);
    // Every pattern page (16 MiB / 4 KiB = page 4096 onwards) written since the base is in the
    // diff: the steps printed after the base, but the first (it may have written before the base).
    const dirty = new Set<number>();
    for (const [first, n] of diffState.memory.dirtyPages!) for (let p = first; p < first + n; p++) dirty.add(p);
    const firstNew = countsIn(atBase);
    const lastNew = countsIn(before) - 1;
    expect(lastNew - firstNew).toBeGreaterThanOrEqual(5);
    for (let i = firstNew + 1; i <= lastNew; i++) expect(dirty.has(4096 + (i % PAGES))).toBe(true);

    // A diff alone is not restorable.
    await expect(NativeGuest.restore(diffDir, { memory: 'map' })).rejects.toMatchObject({ name: 'SnapshotError', code: 'BASE_MISMATCH' });

    const mergedDir = path.join(tmp, 'merged');
    const merged = await mergeSnapshots(baseDir, diffDir, mergedDir);
    expect(merged.snapshotId).toBe(diff.snapshotId);
    const r = await NativeGuest.restore(mergedDir, { memory: 'map' });
    open.push(r);
    r.start();
    expect(await r.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(before + r.output, STEPS, PAGES);

    // The base restores to its own moment still (the merge went to another directory).
    const b = await NativeGuest.restore(baseDir, { memory: 'copy' });
    open.push(b);
    b.start();
    expect(await b.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(atBase + b.output, STEPS, PAGES);
  });

  it('a VM restored with its memory mapped can be snapshotted again into the directory it maps', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 2);
    g.pause();
    const first = g.output;
    const dir = path.join(tmp, 'again');
    await g.snapshot(dir, { type: 'full' });
    g.close();

    const r1 = await NativeGuest.restore(dir, { memory: 'map' });
    open.push(r1);
    r1.start();
    await r1.waitFor((o) => countsIn(o) >= 4);
    r1.pause();
    const second = r1.output;
    // Replaces the files r1 maps: r1 must keep the old memory file's pages it has not written.
    await r1.snapshot(dir, { type: 'full' });
    r1.resume();
    expect(await r1.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(first + r1.output, STEPS, PAGES);

    const r2 = await NativeGuest.restore(dir, { memory: 'map' });
    open.push(r2);
    r2.start();
    expect(await r2.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(first + second + r2.output, STEPS, PAGES);
  });

  it('a restored VM takes diffs against the snapshot it was restored from', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 2);
    g.pause();
    const first = g.output;
    const baseDir = path.join(tmp, 'rbase');
    await g.snapshot(baseDir, { type: 'full' });
    g.close();
    const base = (await loadSnapshot(baseDir)).state;

    const r = await NativeGuest.restore(baseDir, { memory: 'copy', dirtyLogging: true });
    open.push(r);
    r.start();
    await r.waitFor((o) => countsIn(o) >= 5);
    r.pause();
    const second = r.output;
    const diffDir = path.join(tmp, 'rdiff');
    const diff = await r.snapshot(diffDir, { type: 'diff', parent: { snapshotId: base.snapshotId, layoutChecksum: base.memory.layoutChecksum } });
    expect(diff.memory.pagesWritten).toBeLessThan(200);
    const mergedDir = path.join(tmp, 'rmerged');
    await mergeSnapshots(baseDir, diffDir, mergedDir);
    const m = await NativeGuest.restore(mergedDir, { memory: 'map' });
    open.push(m);
    m.start();
    expect(await m.wait()).toEqual({ reason: 'reset' });
    expectCompleteRun(first + second + m.output, STEPS, PAGES);
  });

  it('refuses a snapshot whose guest was given CPU features this host lacks, naming them', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 1);
    g.pause();
    const dir = path.join(tmp, 'cpuid');
    await g.snapshot(dir, { type: 'full' });
    const file = path.join(dir, STATE_FILE);
    const state = await readStateFile(file);
    // Claim every leaf-7 EBX feature: no host has them all (bit 1, IA32_TSC_ADJUST's neighbour, is reserved).
    for (const v of state.vcpus) {
      const e = v.cpuid.find((x) => x.function === 7 && x.index === 0);
      if (e) e.ebx = 0xffffffff;
      else v.cpuid.push({ function: 7, index: 0, flags: 1, eax: 0, ebx: 0xffffffff, ecx: 0, edx: 0 });
    }
    await writeStateFile(file, state);
    let err: unknown;
    try {
      open.push(await NativeGuest.restore(dir, { memory: 'map' }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SnapshotError);
    expect(err).toMatchObject({ code: 'CPUID_MISMATCH', field: 'cpuid 0x7.0 ebx' });
    expect((err as Error).message).toMatch(/vCPU 0 was given CPU features this host lacks: cpuid 0x7\.0 ebx: /);
  });

  it('refuses corrupt and mismatched files with typed errors before creating anything', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 1);
    g.pause();
    const dir = path.join(tmp, 'bad');
    await g.snapshot(dir, { type: 'full' });
    const file = path.join(dir, STATE_FILE);
    const good = await fsp.readFile(file);

    const flipped = Buffer.from(good);
    flipped[flipped.length - 10] ^= 0x01;
    await fsp.writeFile(file, flipped);
    await expect(NativeGuest.restore(dir, { memory: 'map' })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });

    await fsp.writeFile(file, good.subarray(0, good.length - 100));
    await expect(NativeGuest.restore(dir, { memory: 'map' })).rejects.toMatchObject({ code: 'TRUNCATED' });

    await fsp.writeFile(file, good);
    await fsp.truncate(path.join(dir, 'memory'), 32 * 1024 * 1024);
    await expect(NativeGuest.restore(dir, { memory: 'map' })).rejects.toMatchObject({ code: 'MEMORY_SIZE_MISMATCH', expected: String(64 * 1024 * 1024) });

    await fsp.rm(path.join(dir, 'memory'));
    await expect(NativeGuest.restore(dir, { memory: 'copy' })).rejects.toMatchObject({ code: 'NOT_FOUND' });

    const state = await readStateFile(file).catch(() => undefined);
    expect(state).toBeDefined();
    await fsp.writeFile(file, encodeState({ ...state!, vcpuCount: 2 }));
    await expect(loadSnapshot(dir)).rejects.toMatchObject({ code: 'VCPU_COUNT_MISMATCH' });
  });

  it('refuses to snapshot a vCPU that is not paused', async () => {
    const g = await bootCounter();
    await g.waitFor((o) => countsIn(o) >= 1);
    await expect(g.snapshot(path.join(tmp, 'running'), { type: 'full' })).rejects.toMatchObject({ code: 'NOT_PAUSED' });
    g.pause();
    expect(g.vcpus[0].runState).toBe('parked');
  });
});
