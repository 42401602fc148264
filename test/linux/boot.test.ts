/**
 * Linux tier, core: what runs natively on every KVM host, including one whose KVM emulates guests
 * ("PVM", about three minutes per boot there): Linux (KINDLING_TEST_KERNEL, see common.ts) boots
 * with two vCPUs to /init, and sees a drive's capacity change. scripts/test.sh runs this file
 * natively on such a host and again, with the rest of the tier, in QEMU's nested KVM, where user
 * space runs. linux.test.ts and bzimage.test.ts hold the rest of the tier.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { transportSnapshot } from '../kvm/transport-metrics';
import { CMDLINE, KERNEL, VM_TIMEOUT_MS, describeLinux, expectBootToInit, writeInitramfs } from './common';

/** virtio 1.2 §2.1: device status DRIVER_OK. */
const VIRTIO_STATUS_DRIVER_OK = 4;
/**
 * How long the guest may take, once the file is swapped, to print the new size. On a host whose
 * KVM emulates guests it took about 3 s (the driver sets DRIVER_OK, takes the configuration change
 * interrupt and re-reads the capacity in a work item); elsewhere well under a second.
 */
const SWAP_GRACE_MS = 120_000;

type Snapshot = Awaited<ReturnType<typeof transportSnapshot>>;

/** Names where a capacity change got lost, from the drive's transport counters. */
function diagnoseSwap(atSwap: Snapshot, atInterrupt: Snapshot | undefined, now: Snapshot): string {
  const hex = (v: number | undefined) => (v === undefined ? '?' : `0x${v.toString(16)}`);
  const counters = `transport at the swap ${JSON.stringify(atSwap)}, now ${JSON.stringify(now)}`;
  if (now.configGeneration === atSwap.configGeneration) return `the device never registered the change (ConfigGeneration unchanged); ${counters}`;
  if (((now.status ?? 0) & VIRTIO_STATUS_DRIVER_OK) === 0) return `the driver never set DRIVER_OK (status ${hex(now.status)}); ${counters}`;
  if (!now.configChangeInterrupts) {
    return `the device never raised a configuration change interrupt (status ${hex(atSwap.status)} at the swap, ${hex(now.status)} now); ${counters}`;
  }
  if (atInterrupt && now.configReads === atInterrupt.configReads) {
    return 'the interrupt was raised but the guest never read the configuration again: the interrupt was lost ' +
      `(masked, an edge on a level pin, dropped by the IOAPIC) or its handler never ran; ${counters}`;
  }
  return `the guest read the configuration again after the interrupt but printed no new size; ${counters}`;
}

describeLinux(`Linux guest, core (${KERNEL})`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-linux-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('boots with 2 vCPUs to /init, and ends by guest reboot', async () => {
    const initrd = writeInitramfs(tmp);
    await expectBootToInit(new MicroVM({ id: 'linux-smp' }).vcpus(2).memory(256).kernel(KERNEL, { cmdline: CMDLINE, initrd }), 'Linux SMP boot', 2);
  });

  it('tells the guest about a swapped backing file: Linux sees the new capacity', async () => {
    const t0 = Date.now();
    const small = path.join(tmp, 'small.img');
    const large = path.join(tmp, 'large.img');
    fs.writeFileSync(small, Buffer.alloc(8 * 1024 * 1024));
    fs.writeFileSync(large, Buffer.alloc(24 * 1024 * 1024));
    // No initramfs and a root device that never appears, with rootwait: the kernel waits for it
    // with interrupts on, so it is still handling the capacity change however slow the host is
    // (without rootwait it would panic and spin with interrupts off, and might print nothing more).
    const vm = new MicroVM({ id: 'linux-resize' }).memory(128)
      .kernel(KERNEL, { cmdline: `${CMDLINE.replace('panic=-1', 'panic=0')} root=/dev/vdb rootwait` })
      .drive('data', { path: small });
    const NEW_SIZE = /\[vda\] new size: 49152 512-byte logical blocks/;
    let out = '';
    // The swap happens as soon as the driver has printed the old size, i.e. has read the capacity:
    // on a slow host that is before it sets DRIVER_OK, elsewhere usually after.
    let swapped: Promise<void> | undefined;
    let atSwap: Snapshot | undefined;
    let swapDoneAt: number | undefined;
    let atInterrupt: Snapshot | undefined;
    let diagnosis: string | undefined;
    vm.on('serial', (c) => {
      out += c.toString('latin1');
      if (!swapped && /\[vda\] 16384 512-byte logical blocks/.test(out)) {
        swapped = transportSnapshot(vm, 'data')
          .then((s) => { atSwap = s; return vm.updateDrive('data', { path: large }); })
          .then(() => { swapDoneAt = Date.now(); });
      }
      if (NEW_SIZE.test(out)) void vm.stop();
    });
    // Rather than waiting out the VM's timeout, give up SWAP_GRACE_MS after the swap and say why.
    const watch = setInterval(async () => {
      if (swapDoneAt === undefined || !atSwap || vm.state !== 'running' || NEW_SIZE.test(out)) return;
      const now = await transportSnapshot(vm, 'data');
      if (!atInterrupt && (now.configChangeInterrupts ?? 0) > 0) atInterrupt = now;
      if (Date.now() - swapDoneAt > SWAP_GRACE_MS) {
        diagnosis = diagnoseSwap(atSwap, atInterrupt, now);
        void vm.stop();
      }
    }, 200);
    await vm.start();
    const timer = setTimeout(() => void vm.stop(), VM_TIMEOUT_MS);
    await vm.wait();
    clearTimeout(timer);
    clearInterval(watch);
    await swapped;
    const statusAtSwap = atSwap?.status === undefined ? '?' : `0x${atSwap.status.toString(16)}`;
    console.log(`Linux drive-swap boot ended after ${((Date.now() - t0) / 1000).toFixed(1)} s; device status at the swap ${statusAtSwap}, ` +
      `transport now: ${JSON.stringify(await transportSnapshot(vm, 'data'))}`);
    expect(out).toMatch(/\[vda\] 16384 512-byte logical blocks/);
    expect({ newSizeSeen: NEW_SIZE.test(out), diagnosis }).toEqual({ newSizeSeen: true, diagnosis: undefined });
    expect((await vm.metrics()).drives.data.backendSwaps).toBe(1);
  });
});
