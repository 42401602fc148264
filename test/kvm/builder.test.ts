/**
 * The other half of test/unit/builder-property.test.ts: a configuration the builder accepted
 * starts. Random accepted configurations (vCPUs, memory, command lines, drives with every option,
 * rate limiters) boot the hello guest to its reset; none fails start() on validation.
 */
import * as fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from 'kindling';
import { describeKvm, guest } from './harness';

describeKvm('accepted configurations start', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-bkvm-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const disks = [0, 1, 2, 3].map((i) => {
    const p = path.join(tmp, `d${i}.img`);
    fs.writeFileSync(p, Buffer.alloc(4096 * (i + 1)));
    return p;
  });

  const bucket = fc.record({ size: fc.integer({ min: 0, max: 1e9 }), refillTime: fc.integer({ min: 0, max: 1e6 }), oneTimeBurst: fc.integer({ min: 0, max: 1e6 }) }, { requiredKeys: ['size', 'refillTime'] });
  const drive = fc.record({
    readOnly: fc.boolean(),
    cacheType: fc.constantFrom('unsafe' as const, 'writeback' as const),
    rateLimiter: fc.record({ bandwidth: bucket, ops: bucket }, { requiredKeys: [] }),
  }, { requiredKeys: [] });
  const config = fc.record({
    vcpus: fc.integer({ min: 1, max: 4 }),
    memory: fc.integer({ min: 4, max: 512 }),
    cmdline: fc.stringOf(fc.char().filter((c) => c >= ' ' && c <= '~'), { maxLength: 1500 }),
    drives: fc.array(drive, { maxLength: 4 }),
    root: fc.nat(4),
  });

  it('starts every configuration the builder accepted (30 random ones)', async () => {
    const samples = fc.sample(config, { numRuns: 30, seed: 20261128 });
    let started = 0;
    for (const c of samples) {
      const vm = new MicroVM().vcpus(c.vcpus).memory(c.memory);
      try {
        vm.kernel(guest('hello'), { cmdline: `console=ttyS0 ${c.cmdline}` });
        c.drives.forEach((d, i) => vm.drive(`d${i}`, { path: disks[i], ...d, root: i === c.root }));
      } catch (e) {
        // Refused at the call is fine (e.g. a command line that no longer fits); only what was
        // accepted must start.
        expect((e as { code?: string }).code).toBe('INVALID_CMDLINE');
      }
      await vm.start();
      started++;
      const timer = setTimeout(() => void vm.stop(), 30_000);
      const info = await vm.wait();
      clearTimeout(timer);
      expect(info.reason).toBe('reset');
    }
    expect(started).toBe(30);
  });
});
