/** What the Linux-tier tests share. */
import { detectHostQuirks } from '../../lib/cpu';

/** How long one Linux VM may run before the test stops it (KINDLING_LINUX_TIMEOUT_MS). */
export const VM_TIMEOUT_MS = Number(process.env.KINDLING_LINUX_TIMEOUT_MS ?? 25 * 60_000);
/** Serial console, reboot through the i8042 (an exit), and a keyboard that needs no probing. */
export const CMDLINE = 'console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd';
/** On a host whose KVM emulates guests, user space cannot run (README): init's output is not required there. */
export const emulated = detectHostQuirks().emulatedKvm;
