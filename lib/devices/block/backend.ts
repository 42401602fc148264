/**
 * Storage behind a virtio-blk device: a host file (or block device) through libuv's thread pool,
 * or a byte array for tests. Reads and writes go straight between the backing store and the
 * guest-memory views they are given, without intermediate copies.
 * @module
 */

import * as fs from 'fs';
import type { HostFiles } from '../host-files';
import { BlockError } from './errors';

/** What a block device reads from and writes to. Offsets and sizes are in bytes. */
export interface BlockBackend {
  /** Size of the backing store in bytes (fixed for the backend's lifetime). */
  readonly size: number;
  /** Whether writes are refused (absent means writable). */
  readonly readOnly?: boolean;
  /**
   * Fills `view` from byte `offset`. Resolves to `view.length`, or fewer only at end of file.
   * Rejects on I/O errors.
   */
  read(view: Uint8Array, offset: number): Promise<number>;
  /** Writes all of `view` at byte `offset`; resolves to `view.length`. Rejects on I/O errors. */
  write(view: Uint8Array, offset: number): Promise<number>;
  /**
   * Optional scatter read: fills `views` in order from `offset` in one operation (preadv).
   * Same result contract as {@link read}, for the total length.
   */
  readv?(views: readonly Uint8Array[], offset: number): Promise<number>;
  /** Optional gather write (pwritev); same contract as {@link write}, for the total length. */
  writev?(views: readonly Uint8Array[], offset: number): Promise<number>;
  /** Makes completed writes durable (fdatasync). */
  flush(): Promise<void>;
  /** Releases the backing store; later operations reject with `CLOSED`. */
  close(): Promise<void>;
}

function totalLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

/** The views that remain after the first `done` bytes of `views`. */
function dropFront(views: readonly Uint8Array[], done: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const v of views) {
    if (done >= v.length) {
      done -= v.length;
      continue;
    }
    out.push(done > 0 ? v.subarray(done) : v);
    done = 0;
  }
  return out;
}

function ioError(op: string, err: unknown): BlockError {
  const msg = err instanceof Error ? err.message : String(err);
  return new BlockError('IO_ERROR', `${op} failed: ${msg}`, { cause: err });
}

const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

function checkSpan(offset: number, len: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > MAX_OFFSET) {
    throw new BlockError('IO_ERROR', `bad offset ${offset}`);
  }
}

/**
 * A host file or block device opened with O_RDWR, or O_RDONLY for a read-only drive. I/O uses
 * positioned reads and writes (pread/pwrite, preadv/pwritev) on libuv's thread pool, directly on
 * the caller's buffers; short transfers are continued until complete, end of file or an error.
 */
export class FileBackend implements BlockBackend {
  /** Path the backend was opened from. */
  readonly path: string;
  /** Size in bytes at open time. */
  readonly size: number;
  /** Whether the file was opened read-only. */
  readonly readOnly: boolean;
  private fd: number;

  private constructor(path: string, fd: number, size: number, readOnly: boolean) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.readOnly = readOnly;
  }

  /**
   * Opens `path` for a drive.
   * @throws BlockError OPEN_FAILED when the file cannot be opened or sized, or is not a regular
   *   file or block device.
   */
  static async open(path: string, readOnly: boolean): Promise<FileBackend> {
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR, (err, f) => (err ? reject(err) : resolve(f))),
      );
    } catch (e) {
      throw new BlockError('OPEN_FAILED', `cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const size = await FileBackend.sizeOf(fd, path);
      return new FileBackend(path, fd, size, readOnly);
    } catch (e) {
      await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
      if (e instanceof BlockError) throw e;
      throw new BlockError('OPEN_FAILED', `cannot size ${path}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Opens `path` through `files` (the machine's host files: in a jailed child, a descriptor the
   * parent passed in) and takes the size the host measured.
   * @throws BlockError OPEN_FAILED when it cannot be opened
   */
  static async openWith(files: HostFiles, path: string, readOnly: boolean): Promise<FileBackend> {
    try {
      const file = await files.openFile(path, readOnly ? 'read' : 'readWrite');
      return new FileBackend(path, file.fd, file.size, readOnly);
    } catch (e) {
      throw new BlockError('OPEN_FAILED', `cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Regular files: st_size. Block devices report 0 there; their size is in sysfs (512-byte units). */
  private static async sizeOf(fd: number, path: string): Promise<number> {
    const st = await new Promise<fs.BigIntStats>((resolve, reject) =>
      fs.fstat(fd, { bigint: true }, (err, s) => (err ? reject(err) : resolve(s))),
    );
    if (st.isFile()) return Number(st.size);
    if (st.isBlockDevice()) {
      // glibc's major()/minor() split of a 64-bit dev_t.
      const dev = st.rdev;
      const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
      const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
      const text = await fs.promises.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
      const sectors = Number(text.trim());
      if (!Number.isSafeInteger(sectors) || sectors < 0) throw new BlockError('OPEN_FAILED', `bad sysfs size for ${path}`);
      return sectors * 512;
    }
    throw new BlockError('OPEN_FAILED', `${path} is neither a regular file nor a block device`);
  }

  private liveFd(): number {
    if (this.fd < 0) throw new BlockError('CLOSED', `${this.path} is closed`);
    return this.fd;
  }

  /** @inheritDoc */
  read(view: Uint8Array, offset: number): Promise<number> {
    return this.readv([view], offset);
  }

  /** @inheritDoc */
  write(view: Uint8Array, offset: number): Promise<number> {
    return this.writev([view], offset);
  }

  /** @inheritDoc */
  readv(views: readonly Uint8Array[], offset: number): Promise<number> {
    return this.transfer('read', views, offset);
  }

  /** @inheritDoc */
  writev(views: readonly Uint8Array[], offset: number): Promise<number> {
    if (this.readOnly) return Promise.reject(new BlockError('READ_ONLY', `${this.path} is open read-only`));
    return this.transfer('write', views, offset);
  }

  /**
   * Moves `views` to or from the file at `offset`, straight between guest memory and the kernel
   * (pread/preadv, pwrite/pwritev on the libuv pool), looping over short transfers. A read stops
   * at end of file (the caller sees fewer bytes); a write that makes no progress is an error,
   * since retrying it would loop forever.
   */
  private async transfer(op: 'read' | 'write', views: readonly Uint8Array[], offset: number): Promise<number> {
    const total = totalLength(views);
    checkSpan(offset, total);
    let done = 0;
    let rest: readonly Uint8Array[] = views;
    while (done < total) {
      const fd = this.liveFd();
      const at = offset + done;
      let n: number;
      try {
        n = await new Promise<number>((resolve, reject) => {
          const cb = (err: NodeJS.ErrnoException | null, moved: number) => (err ? reject(err) : resolve(moved));
          if (op === 'read') {
            if (rest.length === 1) fs.read(fd, rest[0], 0, rest[0].length, at, cb);
            else fs.readv(fd, rest as Uint8Array[], at, cb);
          } else if (rest.length === 1) fs.write(fd, rest[0], 0, rest[0].length, at, cb);
          else fs.writev(fd, rest as Uint8Array[], at, cb);
        });
      } catch (e) {
        throw ioError(`${op} of ${this.path} at ${at}`, e);
      }
      if (n <= 0) {
        if (op === 'read') break; // end of file
        throw new BlockError('IO_ERROR', `write of ${this.path} at ${at} made no progress`);
      }
      done += n;
      rest = dropFront(rest, n);
    }
    return done;
  }

  /** @inheritDoc */
  async flush(): Promise<void> {
    const fd = this.liveFd();
    try {
      await new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
    } catch (e) {
      throw ioError(`fdatasync of ${this.path}`, e);
    }
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(ioError(`close of ${this.path}`, err)) : resolve())));
  }
}

/** A backend held in memory, for tests and scratch disks. Operations complete asynchronously. */
export class MemoryBackend implements BlockBackend {
  /** The backing bytes; tests may inspect or modify them directly. */
  readonly bytes: Uint8Array;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Number of completed {@link flush} calls. */
  flushes = 0;
  private closed = false;

  /**
   * @param contents a size in bytes (zero-filled) or the initial bytes (used in place, not copied).
   */
  constructor(contents: number | Uint8Array, readOnly = false) {
    if (typeof contents === 'number') {
      if (!Number.isSafeInteger(contents) || contents < 0) throw new BlockError('BAD_CONFIG', `bad memory backend size ${contents}`);
      this.bytes = new Uint8Array(contents);
    } else {
      this.bytes = contents;
    }
    this.readOnly = readOnly;
  }

  /** Size in bytes. */
  get size(): number {
    return this.bytes.length;
  }

  private check(offset: number, len: number): void {
    if (this.closed) throw new BlockError('CLOSED', 'memory backend is closed');
    checkSpan(offset, len);
  }

  /** @inheritDoc */
  async read(view: Uint8Array, offset: number): Promise<number> {
    this.check(offset, view.length);
    const n = Math.max(0, Math.min(view.length, this.bytes.length - offset));
    view.set(this.bytes.subarray(offset, offset + n));
    return n;
  }

  /** @inheritDoc */
  async write(view: Uint8Array, offset: number): Promise<number> {
    this.check(offset, view.length);
    if (this.readOnly) throw new BlockError('READ_ONLY', 'memory backend is read-only');
    if (offset + view.length > this.bytes.length) throw new BlockError('IO_ERROR', `write past the end at ${offset}+${view.length}`);
    this.bytes.set(view, offset);
    return view.length;
  }

  /** @inheritDoc */
  async flush(): Promise<void> {
    if (this.closed) throw new BlockError('CLOSED', 'memory backend is closed');
    this.flushes++;
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    this.closed = true;
  }
}
