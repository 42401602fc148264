/**
 * Linux tier: a compressed bzImage built by somebody else (KINDLING_TEST_BZIMAGE;
 * `scripts/test.sh --linux` passes Debian's generic kernel, which has KASLR, ACPI, PCI and modules)
 * boots through the 64-bit boot protocol's own entry, decompresses and relocates itself.
 *
 * Not run where KVM emulates guests: decompressing that kernel alone took over 14 minutes there.
 * scripts/test.sh runs it in QEMU's nested KVM on such a host.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm } from '../kvm/harness';
import { CMDLINE, emulated, expectBootToInit, writeInitramfs } from './common';

const BZIMAGE = process.env.KINDLING_TEST_BZIMAGE;
const describeBzImage: jest.Describe = (() => {
  if (!BZIMAGE || !fs.existsSync(BZIMAGE)) return describe.skip;
  if (emulated) {
    // eslint-disable-next-line no-console
    console.warn('SKIPPING the bzImage test here: this host\'s KVM emulates guests ("PVM") and decompressing a distribution kernel takes over 14 minutes; scripts/test.sh --linux runs it in QEMU\'s nested KVM');
    return describe.skip;
  }
  return describeKvm;
})();
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
