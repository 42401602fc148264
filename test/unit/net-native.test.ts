/**
 * The addon's readv/writev over ArrayBuffer spans and its fd watch, on ordinary files and pipes
 * (no root needed): spans land where they say, bad spans are refused before any I/O, EAGAIN is -1.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { loadNative } from '../../lib/native/binding';
import { NativeNetHost } from '../../lib/vm/net-host';

const addon = loadNative();

describe('native span I/O', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-spans-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes and reads scattered ranges of several buffers', () => {
    const a = new ArrayBuffer(64);
    const b = new ArrayBuffer(64);
    new Uint8Array(a).set([1, 2, 3, 4], 10);
    new Uint8Array(b).set([5, 6], 60);
    const file = path.join(dir, 'f');
    const fd = fs.openSync(file, 'w+');
    try {
      const spans = new Float64Array([0, 10, 4, 1, 60, 2, 0, 0, 0]);
      expect(addon.writevSpans(fd, [a, b], spans, 3)).toBe(6);
      expect([...fs.readFileSync(file)]).toEqual([1, 2, 3, 4, 5, 6]);
      const c = new ArrayBuffer(8);
      const rfd = fs.openSync(file, 'r');
      expect(addon.readvSpans(rfd, [c], new Float64Array([0, 6, 2, 0, 0, 4]), 2)).toBe(6);
      expect([...new Uint8Array(c)]).toEqual([3, 4, 5, 6, 0, 0, 1, 2]);
      fs.closeSync(rfd);
    } finally {
      fs.closeSync(fd);
    }
  });

  // (The addon's RangeError comes from Node's realm, not jest's sandbox: match on the name.)
  it('refuses spans outside their buffer, unknown buffers, too many spans', () => {
    const a = new ArrayBuffer(16);
    const fd = fs.openSync(path.join(dir, 'g'), 'w+');
    try {
      expect(() => addon.writevSpans(fd, [a], new Float64Array([0, 10, 7]), 1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(() => addon.writevSpans(fd, [a], new Float64Array([1, 0, 1]), 1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(() => addon.writevSpans(fd, [a], new Float64Array([0, -1, 1]), 1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(() => addon.writevSpans(fd, [a], new Float64Array([0, 0.5, 1]), 1)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(() => addon.writevSpans(fd, [a], new Float64Array(3), 2)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(() => addon.writevSpans(fd, [a], new Float64Array(3 * 1025), 1025)).toThrow(expect.objectContaining({ name: 'RangeError' }));
      expect(fs.fstatSync(fd).size).toBe(0);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('reports EAGAIN as -1 and watches readability level-triggered, with pause and resume', async () => {
    const host = new NativeNetHost(addon);
    // A FIFO opened non-blocking stands in for a TAP: reads return EAGAIN when it is empty.
    const fifo = path.join(dir, 'p');
    execFileSync('mkfifo', [fifo]);
    const rfd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const wfd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const buf = new ArrayBuffer(8);
    const list = { buffers: [buf], spans: new Float64Array([0, 0, 8]), count: 1 };
    try {
      expect(host.readv(rfd, list)).toBe(-1);
      let calls = 0;
      const poll = host.watchReadable(rfd, () => {
        calls++;
        host.readv(rfd, list);
      });
      fs.writeSync(wfd, Buffer.from('x'));
      for (let i = 0; i < 50 && calls === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(calls).toBe(1);
      poll.pause();
      fs.writeSync(wfd, Buffer.from('y'));
      await new Promise((r) => setTimeout(r, 30));
      expect(calls).toBe(1);
      poll.resume();
      for (let i = 0; i < 50 && calls === 1; i++) await new Promise((r) => setTimeout(r, 5));
      expect(calls).toBe(2);
      poll.close();
      poll.close();
    } finally {
      fs.closeSync(wfd);
      fs.closeSync(rfd);
    }
  });
});
