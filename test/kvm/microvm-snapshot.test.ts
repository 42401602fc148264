/**
 * Snapshots through the MicroVM API: pause a counting guest mid-run, snapshot it, restore it into
 * new VMs (twice, and as a clone pool of 8) that each go on from where the snapshot stopped with
 * the memory pattern intact; diff snapshots; a snapshot with a drive whose I/O continues; the
 * state of the UART and i8042 carried over; typed errors for what does not fit.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM, SnapshotError } from 'kindling';
import { mergeSnapshots } from '../../lib/snapshot';
import { describeKvm, guest, parseKt } from './harness';

const C = 0x9e3779b97f4a7c15n;
const MASK = (1n << 64n) - 1n;
const STEPS = 24;
const PAGES = 8;
const SECTOR = 512;

function expectedCounts(n: number): string[] {
  const out: string[] = [];
  let sum = 0n;
  for (let i = 0; i < n; i++) {
    sum = (sum + BigInt(i + 1) * C) & MASK;
    out.push(`count=${i} sum=${sum.toString(16)}`);
  }
  return out;
}

/** Collects a VM's serial output. */
function collect(vm: MicroVM): { text: () => string } {
  let out = '';
  vm.on('serial', (c) => { out += c.toString('latin1'); });
  return { text: () => out };
}

async function waitFor(pred: () => boolean, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 1));
  }
}

async function finish(vm: MicroVM): Promise<void> {
  const timer = setTimeout(() => void vm.stop(), 60_000);
  const info = await vm.wait();
  clearTimeout(timer);
  expect(info.reason).toBe('reset');
}

describeKvm('MicroVM snapshots', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-msnap-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  /** Boots the counter and snapshots it after `at` steps; returns the output before and the directory. */
  async function snapshotCounter(dir: string, at: number, opts: { track?: boolean } = {}): Promise<{ before: string; vm: MicroVM }> {
    const vm = new MicroVM().memory(32).kernel(guest('counter'), { cmdline: `console=ttyS0 count=${STEPS} pages=${PAGES}` });
    if (opts.track) vm.trackDirtyPages(true);
    const out = collect(vm);
    await vm.start();
    await waitFor(() => (out.text().match(/KT: count=/g) ?? []).length >= at);
    await vm.pause();
    await vm.snapshot(dir);
    return { before: out.text(), vm };
  }

  it('restores a paused guest into new VMs that go on counting, twice and as 8 clones', async () => {
    const dir = path.join(tmp, 'counter');
    const { before, vm } = await snapshotCounter(dir, 6);
    // The snapshot may fall in the middle of a line: a restored VM prints the rest of it.
    const counts = (restored: string) => parseKt(before + restored).lines.filter((l) => l.startsWith('count='));
    expect(fs.statSync(path.join(dir, 'vmstate')).size).toBeGreaterThan(0);
    // The original goes on too.
    const origOut = collect(vm);
    await vm.resume();
    await finish(vm);
    expect(parseKt(before + origOut.text()).lines.filter((l) => l.startsWith('count='))).toEqual(expectedCounts(STEPS));

    for (const memory of ['map', 'copy'] as const) {
      const r = await MicroVM.restore(dir, { memory });
      const out = collect(r);
      await finish(r);
      const { kv } = parseKt(out.text());
      expect(counts(out.text())).toEqual(expectedCounts(STEPS));
      expect(kv.get('verify')).toBe(`ok pages=${PAGES}`);
      expect(kv.get('ticks')).toBe(String(STEPS));
    }

    const ids: string[] = [];
    const clones = await MicroVM.clones(dir, { count: 8, prepare: (i, o) => ({ ...o, id: `clone-${i}` }) });
    const outs = clones.map((c) => { ids.push(c.id); return collect(c); });
    await Promise.all(clones.map(finish));
    expect(ids).toEqual(Array.from({ length: 8 }, (_, i) => `clone-${i}`));
    for (const o of outs) {
      expect(counts(o.text())).toEqual(expectedCounts(STEPS));
    }
  });

  it('restores paused when asked, and a diff merged onto its base restores the later state', async () => {
    const base = path.join(tmp, 'base');
    const diff = path.join(tmp, 'diff');
    const { vm, before: base0 } = await snapshotCounter(base, 4, { track: true });
    const out = collect(vm);
    await vm.resume();
    await waitFor(() => (out.text().match(/KT: count=/g) ?? []).length >= 6);
    await vm.pause();
    const info = await vm.snapshot(diff, { type: 'diff' });
    expect(info.type).toBe('diff');
    const upToDiff = base0 + out.text();
    await vm.stop();
    // A diff alone is refused with a typed error; merged onto its base it restores.
    await expect(MicroVM.restore(diff)).rejects.toMatchObject({ code: 'BASE_MISMATCH' });
    const merged = path.join(tmp, 'merged');
    await mergeSnapshots(base, diff, merged);
    const r = await MicroVM.restore(merged, { resume: false });
    expect(r.state).toBe('paused');
    const rout = collect(r);
    await new Promise((res) => setTimeout(res, 50));
    expect(rout.text()).toBe('');
    await r.resume();
    await finish(r);
    expect(parseKt(upToDiff + rout.text()).lines.filter((l) => l.startsWith('count='))).toEqual(expectedCounts(STEPS));
  });

  it('a drive restored from a snapshot serves the guest (same file, or an override)', async () => {
    const img = path.join(tmp, 'blk.img');
    const data = Buffer.alloc(64 * SECTOR);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    fs.writeFileSync(img, data);
    const vm = new MicroVM().memory(32).kernel(guest('blk')).drive('data0', { path: img, cacheType: 'writeback' });
    const out = collect(vm);
    await vm.start();
    await waitFor(() => out.text().includes('blk0 capacity'));
    await vm.pause();
    const dir = path.join(tmp, 'blk');
    await vm.snapshot(dir);
    await vm.stop();
    const copy = path.join(tmp, 'blk-copy.img');
    fs.copyFileSync(img, copy);
    const r = await MicroVM.restore(dir, { drives: { data0: { path: copy } } });
    const rout = collect(r);
    await finish(r);
    const all = out.text() + rout.text();
    expect(parseKt(all).lines).toContain('PASS blk0 write-readback');
    expect(parseKt(all).kv.get('blk0 oor_status')).toBe('1');
    // The restored guest wrote its pattern into the copy, not the original file.
    expect(fs.readFileSync(copy).subarray(SECTOR, SECTOR + 4)).toEqual(Buffer.from([3, 10, 17, 24]));
    expect(fs.readFileSync(img).equals(data)).toBe(true);
  });

  it('refuses what does not fit with typed errors', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('echo'));
    await vm.start();
    await expect(vm.snapshot(path.join(tmp, 'x'))).rejects.toMatchObject({ code: 'NOT_PAUSED' });
    await vm.pause();
    await expect(vm.snapshot(path.join(tmp, 'x'), { type: 'diff' })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    await expect(vm.snapshot(path.join(tmp, 'x'), { kind: 'full' } as never)).rejects.toMatchObject({ code: 'UNKNOWN_OPTION' });
    await vm.snapshot(path.join(tmp, 'echo'));
    await vm.stop();
    await expect(MicroVM.restore(path.join(tmp, 'nowhere'))).rejects.toBeInstanceOf(SnapshotError);
    await expect(MicroVM.restore(path.join(tmp, 'echo'), { memroy: 'map' } as never)).rejects.toMatchObject({ code: 'UNKNOWN_OPTION' });
    fs.truncateSync(path.join(tmp, 'echo', 'memory'), 4096);
    await expect(MicroVM.restore(path.join(tmp, 'echo'))).rejects.toMatchObject({ code: 'MEMORY_SIZE_MISMATCH' });
  });
});
