/**
 * Slow tier: a compressed bzImage built by somebody else (KINDLING_TEST_BZIMAGE;
 * `scripts/test.sh --linux` passes Debian's generic kernel, which has KASLR, ACPI, PCI and modules)
 * boots through the 64-bit boot protocol's own entry, decompresses and relocates itself.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm, runVm } from '../kvm/harness';
import { CMDLINE, VM_TIMEOUT_MS, emulated } from './common';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { buildInitramfs } = require('../../scripts/initramfs');

const BZIMAGE = process.env.KINDLING_TEST_BZIMAGE;
const describeBzImage = BZIMAGE && fs.existsSync(BZIMAGE) ? describeKvm : describe.skip;
describeBzImage(`Linux bzImage (${BZIMAGE})`, () => {
  // One vCPU: SMP bring-up is linux.test.ts's business. Under QEMU's nested KVM this distribution
  // kernel with 2 vCPUs often livelocked the whole QEMU machine (README, kvm-in-qemu.sh).
  it('decompresses itself, boots to /init and ends by guest reboot', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-bz-'));
    try {
      const initrd = path.join(tmp, 'initramfs.cpio.gz');
      fs.writeFileSync(initrd, buildInitramfs());
      const t0 = Date.now();
      const vm = new MicroVM({ id: 'linux-bzimage' }).vcpus(1).memory(256)
        .kernel(BZIMAGE as string, { cmdline: CMDLINE, initrd });
      const run = await runVm(vm, { timeoutMs: VM_TIMEOUT_MS });
      console.log(`bzImage boot ended (${run.info.reason}) after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      expect(run.output).toMatch(/Linux version /);
      expect(run.output).toMatch(/smp: Brought up 1 node, 1 CPU/);
      expect(run.output).toMatch(/Run \/init as init process/);
      expect(run.info.reason).toBe('reset');
      if (!emulated) expect(run.output).toMatch(/kindling-init: hello from user space, 1 CPUs/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
