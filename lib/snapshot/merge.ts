/**
 * Merging a diff snapshot onto its base, which gives a full snapshot of the moment the diff was
 * taken (also `node scripts/snapshot-merge.js BASE DIFF [OUT]`).
 *
 * A diff's state file is complete (vCPUs, devices, configuration); only its memory file is partial:
 * it holds the pages listed in `memory.dirtyPages`, and every other page is the base's. The merge
 * copies exactly those pages, by the list and not by the memory file's holes: a filesystem may
 * allocate (and report as data) more than was written, and a dirty page may be all zeros.
 * Chains work one link at a time: the merged snapshot keeps the diff's id, so the next diff
 * (whose base is that id) merges onto it.
 * @module
 */
import { promises as fsp } from 'fs';
import * as path from 'path';

import { PageBitmap } from './bitmap';
import { SnapshotError } from './errors';
import { MEMORY_FILE, STATE_FILE, writeStateFile, type SnapshotState } from './format';
import { loadSnapshot, type LoadedSnapshot } from './snapshot';

/** Bytes copied per read while copying a base memory file. */
const COPY_CHUNK = 1 << 20;

/** What {@link mergeSnapshots} did. */
export interface MergeResult {
  /** The directory holding the merged (full) snapshot. */
  dir: string;
  /** Its id: the diff's. */
  snapshotId: string;
  /** Pages taken from the diff. */
  pagesMerged: number;
}

function ioError(what: string, e: unknown): SnapshotError {
  return new SnapshotError('IO_ERROR', `${what} failed: ${(e as Error).message}`, { cause: e });
}

/** Copies `from` to a new file `to` of the same size, leaving all-zero pages as holes. */
async function copySparse(from: string, to: string, size: number): Promise<void> {
  const zero = Buffer.alloc(4096);
  const src = await fsp.open(from, 'r');
  try {
    const dst = await fsp.open(to, 'w', 0o600);
    try {
      await dst.truncate(size);
      const buf = Buffer.alloc(COPY_CHUNK);
      for (let off = 0; off < size; off += COPY_CHUNK) {
        const want = Math.min(COPY_CHUNK, size - off);
        const { bytesRead } = await src.read(buf, 0, want, off);
        if (bytesRead !== want) throw new Error(`${from} ended at ${off + bytesRead} of ${size} bytes`);
        // Writes only the non-zero pages, run by run.
        let runStart = -1;
        for (let p = 0; p <= want; p += 4096) {
          const nonZero = p < want && !buf.subarray(p, p + 4096).equals(zero);
          if (nonZero && runStart < 0) runStart = p;
          if (!nonZero && runStart >= 0) {
            await dst.write(buf, runStart, p - runStart, off + runStart);
            runStart = -1;
          }
        }
      }
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

/**
 * Applies the diff snapshot in `diffDir` to the full snapshot in `baseDir`. With `outDir` (a new
 * or empty directory), the base stays as it was; without it (or with `outDir === baseDir`) the
 * base is updated in place, its state file removed first so that an interrupted merge leaves no
 * restorable half-merged snapshot behind. Never merge in place onto a base that running VMs map
 * (restored with memory `'map'`): the pages they have not written yet would change under them.
 * @throws SnapshotError BASE_MISMATCH (the diff is not a diff, the base not full, or the ids do not
 *   match), LAYOUT_MISMATCH, any loadSnapshot code, IO_ERROR
 */
export async function mergeSnapshots(baseDir: string, diffDir: string, outDir?: string): Promise<MergeResult> {
  const base: LoadedSnapshot = await loadSnapshot(baseDir);
  const diff: LoadedSnapshot = await loadSnapshot(diffDir);
  if (base.state.type !== 'full') {
    throw new SnapshotError('BASE_MISMATCH', `${baseDir} is a diff snapshot; merge it onto its own base first`, { field: 'base.type', expected: 'full', actual: 'diff' });
  }
  if (diff.state.type !== 'diff' || !diff.state.base || !diff.state.memory.dirtyPages) {
    throw new SnapshotError('BASE_MISMATCH', `${diffDir} is a full snapshot, not a diff`, { field: 'diff.type', expected: 'diff', actual: diff.state.type });
  }
  if (diff.state.base.snapshotId !== base.state.snapshotId) {
    throw new SnapshotError('BASE_MISMATCH', `the diff applies to snapshot ${diff.state.base.snapshotId}, not to ${base.state.snapshotId}`, {
      field: 'base.snapshotId', expected: diff.state.base.snapshotId, actual: base.state.snapshotId,
    });
  }
  if (diff.state.base.layoutChecksum !== base.state.memory.layoutChecksum || diff.state.memory.layoutChecksum !== base.state.memory.layoutChecksum) {
    throw new SnapshotError('LAYOUT_MISMATCH', 'the diff and its base lay memory out differently', {
      field: 'memory.layoutChecksum', expected: base.state.memory.layoutChecksum, actual: diff.state.memory.layoutChecksum,
    });
  }
  const pageSize = diff.state.memory.pageSize;
  const size = diff.state.memory.size;
  const ranges = diff.state.memory.dirtyPages;
  const pagesMerged = PageBitmap.fromRanges(size / pageSize, ranges).count();

  const inPlace = outDir === undefined || path.resolve(outDir) === path.resolve(baseDir);
  const dir = inPlace ? baseDir : outDir!;
  const target = path.join(dir, MEMORY_FILE);
  try {
    if (inPlace) {
      await fsp.rm(path.join(baseDir, STATE_FILE), { force: true });
      if (base.memoryPath !== target) await fsp.rename(base.memoryPath, target);
    } else {
      await fsp.mkdir(dir, { recursive: true });
      await fsp.rm(path.join(dir, STATE_FILE), { force: true });
      await copySparse(base.memoryPath, target, size);
    }
  } catch (e) {
    throw ioError(`preparing ${target}`, e);
  }

  try {
    const src = await fsp.open(diff.memoryPath, 'r');
    try {
      const dst = await fsp.open(target, 'r+');
      try {
        const buf = Buffer.alloc(COPY_CHUNK);
        for (const [first, count] of ranges) {
          let off = first * pageSize;
          let left = count * pageSize;
          while (left > 0) {
            const n = Math.min(left, COPY_CHUNK);
            const { bytesRead } = await src.read(buf, 0, n, off);
            if (bytesRead !== n) throw new Error(`${diff.memoryPath} ended at ${off + bytesRead}`);
            await dst.write(buf, 0, n, off);
            off += n;
            left -= n;
          }
        }
      } finally {
        await dst.close();
      }
    } finally {
      await src.close();
    }
  } catch (e) {
    throw ioError(`merging ${diff.memoryPath} into ${target}`, e);
  }

  const merged: SnapshotState = { ...diff.state, type: 'full', memory: { ...diff.state.memory, file: MEMORY_FILE } };
  delete merged.base;
  delete merged.memory.dirtyPages;
  await writeStateFile(path.join(dir, STATE_FILE), merged);
  return { dir, snapshotId: merged.snapshotId, pagesMerged };
}
