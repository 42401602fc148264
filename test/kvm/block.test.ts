/**
 * A freestanding guest with its own virtio-blk driver, against real files: reads, writes,
 * flush, GET_ID, an out-of-range read, a read-only drive, multi-descriptor and indirect requests;
 * and a capacity change while the driver initialises.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm, guest, parseKt, runVm } from './harness';
import { transportCounter, transportSnapshot } from './transport-metrics';

const SECTOR = 512;
const sum = (b: Buffer) => b.reduce((a, x) => (a + x) >>> 0, 0);

describeKvm('virtio-blk with a freestanding driver', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-blk-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  function image(name: string, sectors: number): { path: string; data: Buffer } {
    const data = Buffer.alloc(sectors * SECTOR);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
    const p = path.join(tmp, name);
    fs.writeFileSync(p, data);
    return { path: p, data };
  }

  it('reads, writes, flushes and identifies drives as the host files say', async () => {
    const rw = image('rw.img', 64);
    const ro = image('ro.img', 16);
    const vm = new MicroVM().memory(32).kernel(guest('blk'))
      .drive('data0', { path: rw.path, cacheType: 'writeback' })
      .drive('ro1', { path: ro.path, readOnly: true });
    const run = await runVm(vm);
    expect(run.info.reason).toBe('reset');

    expect(run.kv.get('blk0 capacity')).toBe('64 ro=0 flush=1');
    expect(run.kv.get('blk0 id')).toBe('data0');
    expect(parseInt(run.kv.get('blk0 sum0')!, 16)).toBe(sum(rw.data.subarray(0, SECTOR)));
    expect(parseInt(run.kv.get('blk0 sum0_7')!, 16)).toBe(sum(rw.data.subarray(0, 8 * SECTOR)));
    expect(run.lines).toContain('PASS blk0 write-readback');
    expect(run.kv.get('blk0 flush_status')).toBe('0');
    expect(run.kv.get('blk0 oor_status')).toBe('1');
    // The device offers VIRTIO_F_INDIRECT_DESC, so the guest must have taken the indirect path.
    expect(run.kv.get('blk0 indirect')).toBeUndefined();
    expect(parseInt(run.kv.get('blk0 indirect_sum0') ?? 'missing', 16)).toBe(sum(rw.data.subarray(0, SECTOR)));
    expect(parseInt(run.kv.get('blk1 indirect_sum0') ?? 'missing', 16)).toBe(sum(ro.data.subarray(0, SECTOR)));
    // The guest's write reached the host file, and nothing else changed.
    const after = fs.readFileSync(rw.path);
    const expected = Buffer.from(rw.data);
    for (let i = 0; i < SECTOR; i++) expected[SECTOR + i] = (i * 7 + 3) & 0xff;
    expect(after.equals(expected)).toBe(true);

    expect(run.kv.get('blk1 capacity')).toBe('16 ro=1 flush=0');
    expect(run.kv.get('blk1 id')).toBe('ro1');
    expect(run.kv.get('blk1 ro_write_status')).toBe('1');
    expect(fs.readFileSync(ro.path).equals(ro.data)).toBe(true);

    // Exactly the requests blk.c makes: GET_ID; reads of sector 0 (one descriptor, eight
    // descriptors, indirect); the write and its read-back (rw only; the ro drive fails the write);
    // FLUSH (writeback only); a read past the capacity.
    const m = (await vm.metrics()).drives;
    expect(m.data0).toMatchObject({
      getIdRequests: 1, readRequests: 5, writeRequests: 1, flushRequests: 1,
      readBytes: SECTOR + 8 * SECTOR + SECTOR + SECTOR, writeBytes: SECTOR,
      errors: 1, invalidRequests: 1, readOnlyWrites: 0, ioErrors: 0, malformedChains: 0, completed: 8, inFlight: 0,
    });
    expect(m.ro1).toMatchObject({
      getIdRequests: 1, readRequests: 4, writeRequests: 1, flushRequests: 0,
      readBytes: SECTOR + 8 * SECTOR + SECTOR, writeBytes: 0,
      errors: 2, invalidRequests: 1, readOnlyWrites: 1, ioErrors: 0, malformedChains: 0, completed: 6, inFlight: 0,
    });
    expect(m.data0.transport).toMatchObject({ activations: 1, resets: 2, needsResetEvents: 0, deviceErrors: 0 });
  });

  it('survives a hostile driver: every malformed request fails or marks the device for reset', async () => {
    const img = image('hostile.img', 32);
    const vm = new MicroVM().memory(32).kernel(guest('badvirtio')).drive('victim', { path: img.path });
    const run = await runVm(vm);
    expect(run.info.reason).toBe('reset');
    const cases = ['oob_addr', 'wrap_addr', 'huge_len', 'loop', 'next_oob', 'avail_far'];
    for (const c of cases) expect(run.lines).toContain(`PASS hostile ${c}`);
    expect(run.lines).toContain('PASS hostile recover');
    expect(parseInt(run.kv.get('hostile recovered sum0')!, 16)).toBe(sum(img.data.subarray(0, SECTOR)));
    expect(run.lines.filter((l) => l.startsWith('FAIL'))).toEqual([]);
    expect(fs.readFileSync(img.path).equals(img.data)).toBe(true);
  });

  it('announces a capacity change made before DRIVER_OK with a configuration interrupt at DRIVER_OK', async () => {
    // Linux's virtio-blk reads the capacity, then sets DRIVER_OK; a file swapped in between must
    // still reach it. blkcfg.elf stops in that window (FEATURES_OK, queue ready, capacity read)
    // until the host has swapped the file and said so on the serial port, then sets DRIVER_OK and
    // waits for a configuration change interrupt through the 8259 PIC.
    const small = image('cfg-small.img', 64);
    const large = image('cfg-large.img', 192);
    const vm = new MicroVM().memory(32).kernel(guest('blkcfg')).drive('data', { path: small.path });
    let output = '';
    let atSwap: Awaited<ReturnType<typeof transportSnapshot>> | undefined;
    let swap: Promise<void> | undefined;
    vm.on('serial', (c) => {
      output += c.toString('latin1');
      if (!swap && output.includes('KT: READY')) {
        swap = transportSnapshot(vm, 'data')
          .then((s) => { atSwap = s; return vm.updateDrive('data', { path: large.path }); })
          .then(() => { vm.serial.write('swapped\n'); });
      }
    });
    await vm.start();
    // The guest needs well under a second; without the interrupt it waits until stopped here.
    const timer = setTimeout(() => void vm.stop(), 30_000);
    const info = await vm.wait();
    clearTimeout(timer);
    await swap;
    const { kv, lines } = parseKt(output);
    expect(lines.filter((l) => l.startsWith('FAIL'))).toEqual([]);
    expect(kv.get('cfg capacity')).toBe('64 generation=0');
    expect(kv.get('cfg host')).toBe('swapped');
    // One comparison, so a failure shows at once where the change got lost: never raised by the
    // transport (configChangeInterrupts 0), or raised and not taken by the guest.
    const VIRTIO_STATUS_DRIVER_OK = 4;
    expect({
      driverOkAtSwap: atSwap?.status === undefined ? undefined : (atSwap.status & VIRTIO_STATUS_DRIVER_OK) !== 0,
      signalledBeforeDriverOk: kv.get('cfg isr_before'),
      configChangeInterrupts: await transportCounter(vm, 'data', 'configChangeInterrupts'),
      guestReachedDriverOk: lines.includes('cfg driver_ok'),
      guestTookConfigInterrupt: kv.has('cfg interrupts'),
      capacityAfter: kv.get('cfg capacity_after'),
      reason: info.reason,
    }).toEqual({
      driverOkAtSwap: false,
      signalledBeforeDriverOk: '0',
      configChangeInterrupts: 1,
      guestReachedDriverOk: true,
      guestTookConfigInterrupt: true,
      capacityAfter: '192 generation=1',
      reason: 'reset',
    });
    expect(parseInt(/isr=([0-9a-f]+)/.exec(kv.get('cfg interrupts')!)![1], 16) & 2).toBe(2);
    expect((await vm.metrics()).drives.data.backendSwaps).toBe(1);
  });
});
