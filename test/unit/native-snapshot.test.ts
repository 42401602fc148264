/**
 * The native layer's memory files where they run without KVM (on the addon's fake VM): sparse
 * full writes, page-exact diff writes, reads into fresh memory, private file mappings, and
 * memory that stays mapped while a write is in flight.
 */
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';

import { loadNative, NativeError } from '../../lib/native/binding';
import type { NativeVm } from '../../lib/native/types';

const PAGE = 4096;
const hooks = (loadNative() as unknown as { _testing: { createVm(): NativeVm } })._testing;

let tmp: string;
let vm: NativeVm;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'kindling-memfile-'));
});
beforeEach(() => {
  vm = hooks.createVm();
});
afterEach(() => vm.close());
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** Pages 1, 2 and 9 of 16 hold data; page 5 was touched but holds zeros. */
function filled(): ArrayBuffer {
  const mem = vm.allocateMemory(16 * PAGE);
  const b = new Uint8Array(mem);
  b.fill(0xa1, PAGE, 3 * PAGE);
  b[9 * PAGE + 100] = 7;
  b[5 * PAGE] = 1;
  b[5 * PAGE] = 0;
  return mem;
}

describe('writeMemoryFile', () => {
  it('writes the non-zero pages and leaves the rest as holes, never read if never touched', async () => {
    const mem = filled();
    const file = path.join(tmp, 'full');
    const r = await vm.writeMemoryFile(mem, file);
    expect(r).toEqual({ bytes: 3 * PAGE, pagesWritten: 3, pagesZero: 1, pagesAbsent: 12 });
    const st = await fsp.stat(file);
    expect(st.size).toBe(16 * PAGE);
    expect(st.blocks * 512).toBeLessThanOrEqual(4 * PAGE);
    expect((await fsp.readFile(file)).equals(Buffer.from(new Uint8Array(mem)))).toBe(true);
  });

  it('with a page bitmap writes exactly those pages, zero pages included', async () => {
    const mem = filled();
    const file = path.join(tmp, 'diff');
    const pages = new Uint8Array(2);
    pages[0] = (1 << 2) | (1 << 5); // page 2 (data) and page 5 (zeros)
    const r = await vm.writeMemoryFile(mem, file, { pages, sync: true });
    expect(r).toMatchObject({ bytes: 2 * PAGE, pagesWritten: 2 });
    const got = await fsp.readFile(file);
    expect(got.length).toBe(16 * PAGE);
    const want = Buffer.alloc(16 * PAGE);
    want.fill(0xa1, 2 * PAGE, 3 * PAGE);
    expect(got.equals(want)).toBe(true);
  });

  it('refuses a bitmap of the wrong size and memory of another VM', async () => {
    const mem = filled();
    expect(() => vm.writeMemoryFile(mem, path.join(tmp, 'x'), { pages: new Uint8Array(3) })).toThrow(expect.objectContaining({ name: 'RangeError' }));
    const other = hooks.createVm();
    try {
      expect(() => other.writeMemoryFile(mem, path.join(tmp, 'x'))).toThrow(expect.objectContaining({ name: 'RangeError' }));
    } finally {
      other.close();
    }
  });

  it('rejects with a NativeError naming the failed call', async () => {
    const mem = filled();
    await expect(vm.writeMemoryFile(mem, path.join(tmp, 'no', 'such', 'dir'))).rejects.toMatchObject({ code: 'ENOENT', ioctl: 'open' });
    const err = await vm.writeMemoryFile(mem, path.join(tmp, 'no', 'file')).catch((e) => e);
    expect(err).toBeInstanceOf(NativeError);
  });

  it('keeps the memory mapped until a write in flight ends, even when the VM closes', async () => {
    const mem = vm.allocateMemory(64 * 1024 * 1024);
    new Uint8Array(mem).fill(3, 0, 32 * 1024 * 1024);
    const file = path.join(tmp, 'inflight');
    const p = vm.writeMemoryFile(mem, file);
    vm.close();
    expect(mem.byteLength).toBe(0); // detached at once
    const r = await p;
    expect(r.pagesWritten).toBe(8192);
    const got = await fsp.readFile(file);
    expect(got[0]).toBe(3);
    expect(got[32 * 1024 * 1024 - 1]).toBe(3);
    expect(got[32 * 1024 * 1024]).toBe(0);
    vm = hooks.createVm(); // for afterEach
  });
});

describe('readMemoryFile and mapMemoryFile', () => {
  it('copies a file into fresh memory, holes included', async () => {
    const src = filled();
    const file = path.join(tmp, 'copy');
    await vm.writeMemoryFile(src, file);
    const dst = vm.allocateMemory(16 * PAGE);
    const r = await vm.readMemoryFile(dst, file);
    expect(r.bytes).toBeGreaterThanOrEqual(3 * PAGE);
    expect(Buffer.from(new Uint8Array(dst)).equals(Buffer.from(new Uint8Array(src)))).toBe(true);
    const small = vm.allocateMemory(8 * PAGE);
    await expect(vm.readMemoryFile(small, file)).rejects.toMatchObject({ code: 'EFBIG' });
  });

  it('maps a file privately: the content is there, writes stay in memory', async () => {
    const src = filled();
    const file = path.join(tmp, 'map');
    await vm.writeMemoryFile(src, file);
    const mem = vm.mapMemoryFile(file, 16 * PAGE);
    const view = new Uint8Array(mem);
    expect(Buffer.from(view).equals(Buffer.from(new Uint8Array(src)))).toBe(true);
    view[PAGE] = 0x55;
    view[12 * PAGE] = 0x66;
    expect((await fsp.readFile(file))[PAGE]).toBe(0xa1);
    // A file-backed mapping can be written to a new memory file: unwritten pages come from the file.
    const again = path.join(tmp, 'map-again');
    await vm.writeMemoryFile(mem, again);
    const got = await fsp.readFile(again);
    expect(got[PAGE]).toBe(0x55);
    expect(got[PAGE + 1]).toBe(0xa1);
    expect(got[12 * PAGE]).toBe(0x66);
    expect(got[9 * PAGE + 100]).toBe(7);
  });

  it('refuses to map past the end of the file, or a size that is not whole pages', async () => {
    const file = path.join(tmp, 'short');
    await fsp.writeFile(file, Buffer.alloc(PAGE));
    expect(() => vm.mapMemoryFile(file, 2 * PAGE)).toThrow(expect.objectContaining({ code: 'EINVAL', ioctl: 'mmap' }));
    expect(() => vm.mapMemoryFile(file, 100)).toThrow(expect.objectContaining({ name: 'RangeError' }));
    expect(() => vm.mapMemoryFile(path.join(tmp, 'missing'), PAGE)).toThrow(expect.objectContaining({ code: 'ENOENT', ioctl: 'open' }));
  });
});
