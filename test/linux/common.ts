/** What the Linux-tier tests share. */
import * as fs from 'fs';
import * as path from 'path';
import { detectHostQuirks } from '../../lib/cpu';
import type { MicroVM } from '../../lib/vm/microvm';
import { describeKvm, runVm, type GuestRun } from '../kvm/harness';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { buildInitramfs } = require('../../scripts/initramfs');

/** How long one Linux VM may run before the test stops it (KINDLING_LINUX_TIMEOUT_MS). */
export const VM_TIMEOUT_MS = Number(process.env.KINDLING_LINUX_TIMEOUT_MS ?? 25 * 60_000);
/** Serial console, reboot through the i8042 (an exit), and a keyboard that needs no probing. */
export const CMDLINE = 'console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd';
/** On a host whose KVM emulates guests, user space cannot run (README): init's output is not required there. */
export const emulated = detectHostQuirks().emulatedKvm;

/**
 * The kernel the tier boots: KINDLING_TEST_KERNEL, else the one scripts/build-kernel.sh built
 * (kernel/out/vmlinux), else `shared/guest/vmlinux` in the nearest folder above the checkout that
 * has one (the workplace's shared kernel, for a checkout in a worktree folder too).
 */
export const KERNEL: string = process.env.KINDLING_TEST_KERNEL || findKernel();

function findKernel(): string {
  const built = path.join(__dirname, '../../kernel/out/vmlinux');
  if (fs.existsSync(built)) return built;
  let dir = path.resolve(__dirname, '../../..');
  for (;;) {
    const shared = path.join(dir, 'shared/guest/vmlinux');
    if (fs.existsSync(shared)) return shared;
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '../../../shared/guest/vmlinux');
    dir = up;
  }
}

/** `describe` where KVM works and {@link KERNEL} exists (the reason is printed when it does not). */
export const describeLinux: jest.Describe = (() => {
  if (fs.existsSync(KERNEL)) return describeKvm;
  // eslint-disable-next-line no-console
  console.warn(`SKIPPING Linux tests: no kernel at ${KERNEL} (set KINDLING_TEST_KERNEL or run scripts/build-kernel.sh)`);
  return describe.skip;
})();

/**
 * Runs `check`, a check that needs guest user space, unless this host's KVM emulates guests (where
 * user space cannot run): there it prints that `what` was skipped and why.
 */
export function userSpaceCheck(what: string, check: () => void): void {
  if (!emulated) {
    check();
    return;
  }
  // eslint-disable-next-line no-console
  console.log(`SKIPPED here: ${what} (this host's KVM is emulated, "PVM": guest user space cannot run; runs in QEMU's nested KVM)`);
}

/**
 * Writes the project's busybox initramfs into `dir`: by default its init prints
 * "kindling-init: hello from user space, N CPUs" and reboots; `init` replaces that script.
 */
export function writeInitramfs(dir: string, opts: { name?: string; init?: string } = {}): string {
  const file = path.join(dir, opts.name ?? 'initramfs.cpio.gz');
  fs.writeFileSync(file, buildInitramfs(opts.init === undefined ? undefined : { init: opts.init }));
  return file;
}

/**
 * Runs `vm` (booting with {@link writeInitramfs}'s initramfs) and checks what a boot to init shows:
 * `cpus` CPUs brought up, /init started, the VM ended by the guest's reboot, and init's own line
 * where user space can run. Returns the run for further checks.
 */
export async function expectBootToInit(vm: MicroVM, what: string, cpus: number): Promise<GuestRun> {
  const started = Date.now();
  const run = await runVm(vm, { timeoutMs: VM_TIMEOUT_MS });
  // eslint-disable-next-line no-console
  console.log(`${what} ended (${run.info.reason}) after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  expect(run.output).toMatch(new RegExp(`smp: Brought up 1 node, ${cpus} CPUs?\\b`));
  expect(run.output).toMatch(/Run \/init as init process/);
  expect(run.info.reason).toBe('reset');
  userSpaceCheck(`${what}: init's own line`, () => expect(run.output).toContain(`kindling-init: hello from user space, ${cpus} CPUs`));
  return run;
}
