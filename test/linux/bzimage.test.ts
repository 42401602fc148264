/**
 * Slow tier: a compressed bzImage built by somebody else (KINDLING_TEST_BZIMAGE;
 * `scripts/test.sh --linux` passes Debian's generic kernel, which has KASLR, ACPI, PCI and modules)
 * boots through the 64-bit boot protocol's own entry, decompresses and relocates itself.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm } from '../kvm/harness';
import { CMDLINE, expectBootToInit, writeInitramfs } from './common';

const BZIMAGE = process.env.KINDLING_TEST_BZIMAGE;
const describeBzImage = BZIMAGE && fs.existsSync(BZIMAGE) ? describeKvm : describe.skip;
describeBzImage(`Linux bzImage (${BZIMAGE})`, () => {
  // One vCPU: SMP bring-up is linux.test.ts's business. Under QEMU's nested KVM this kernel with
  // 2 vCPUs once stalled for good after "x86: Booting SMP configuration" (1 run in about 6), not yet
  // explained; the shared vmlinux has never stalled there.
  it('decompresses itself, boots to /init and ends by guest reboot', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-bz-'));
    try {
      const initrd = writeInitramfs(tmp);
      const vm = new MicroVM({ id: 'linux-bzimage' }).vcpus(1).memory(256).kernel(BZIMAGE as string, { cmdline: CMDLINE, initrd });
      const run = await expectBootToInit(vm, 'bzImage boot', 1);
      expect(run.output).toMatch(/Linux version /);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
