/**
 * Pause and resume: a guest paused many times while it drives virtio-blk ends with exactly the
 * requests it made (none lost, none duplicated) and its output intact; no output while paused.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from 'kindling';
import { describeKvm, guest, parseKt } from './harness';

const SECTOR = 512;

describeKvm('pause and resume', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-pause-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('pauses a guest doing block I/O again and again without losing or repeating a request', async () => {
    const img = path.join(tmp, 'rw.img');
    const data = Buffer.alloc(64 * SECTOR);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    fs.writeFileSync(img, data);
    const vm = new MicroVM().memory(32).kernel(guest('blk')).drive('data0', { path: img, cacheType: 'writeback' });
    let output = '';
    const events: string[] = [];
    vm.on('pause', () => events.push('pause'));
    vm.on('resume', () => events.push('resume'));
    vm.on('serial', (c) => { output += c.toString('latin1'); });
    await vm.start();
    // A function, so TypeScript does not narrow the state across the awaits that change it.
    const state = (): string => vm.state;
    let cycles = 0;
    while (state() === 'running' && cycles < 200) {
      await vm.pause();
      await vm.pause(); // idempotent
      expect(state()).toBe('paused');
      // Let everything queued before the pause drain, then check the guest is still.
      await new Promise((r) => setTimeout(r, 2));
      const before = output.length;
      await new Promise((r) => setTimeout(r, 3));
      expect(output.length).toBe(before);
      if (state() !== 'paused') break;
      await vm.resume();
      cycles++;
      await new Promise((r) => setImmediate(r));
    }
    const info = await vm.wait();
    expect(info.reason).toBe('reset');
    expect(cycles).toBeGreaterThan(0);
    // One event per state change, alternating.
    expect(events.filter((e) => e === 'resume')).toHaveLength(cycles);
    expect(events.every((e, i) => e === (i % 2 === 0 ? 'pause' : 'resume'))).toBe(true);
    const { kv, lines } = parseKt(output);
    expect(lines).toContain('PASS blk0 write-readback');
    expect(kv.get('blk0 oor_status')).toBe('1');
    const m = (await vm.metrics()).drives.data0;
    expect(m).toMatchObject({ getIdRequests: 1, readRequests: 5, writeRequests: 1, flushRequests: 1, completed: 8, inFlight: 0 });
  });

  it('refuses pause before start and after the end, and stops a paused VM', async () => {
    const vm = new MicroVM().memory(32).kernel(guest('echo'));
    await expect(vm.pause()).rejects.toMatchObject({ code: 'NOT_RUNNING' });
    await vm.start();
    await vm.pause();
    expect((await vm.stop()).reason).toBe('stopped');
    await expect(vm.resume()).rejects.toMatchObject({ code: 'NOT_RUNNING' });
  });
});
