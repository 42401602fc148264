/**
 * seccomp on real vCPU threads: MicroVM filters them by default, a vCPU thread that makes a
 * refused call takes the process down with a report, and a filter the kernel refuses leaves the
 * vCPU startable.
 */
import * as fs from 'fs';
import { MicroVM } from '../../lib/vm/microvm';
import { loadNative } from '../../lib/native/binding';
import { VcpuVerdict } from '../../lib/native/types';
import { SYSCALLS, vcpuSeccompFilter } from '../../lib/seccomp';
import { ADDON_PATH, runNode, type RefusedCall } from '../unit/helpers/native-hooks';
import { describeKvm, guest } from './harness';

/** `Seccomp`, `Seccomp_filters` and `NoNewPrivs` of each thread of this process named `comm`. */
function seccompStatus(comm: string): string[] {
  const out: string[] = [];
  for (const t of fs.readdirSync('/proc/self/task')) {
    if (fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim() !== comm) continue;
    const status = fs.readFileSync(`/proc/self/task/${t}/status`, 'utf8');
    out.push(status.split('\n').filter((l) => /^(Seccomp|Seccomp_filters|NoNewPrivs):/.test(l)).map((l) => l.replace(/\s+/g, ' ')).join(' '));
  }
  return out;
}

describeKvm('seccomp on vCPU threads', () => {
  it('MicroVM filters every vCPU thread, and only those', async () => {
    const vm = new MicroVM().memory(32).vcpus(2).kernel(guest('echo'));
    let ready!: () => void;
    const isReady = new Promise<void>((resolve) => (ready = resolve));
    let output = '';
    vm.on('serial', (c) => {
      output += c.toString('latin1');
      if (output.includes('KT: READY')) ready();
    });
    await vm.start();
    await isReady;
    const filtered = 'NoNewPrivs: 1 Seccomp: 2 Seccomp_filters: 1';
    expect([...seccompStatus('kindling-cpu0'), ...seccompStatus('kindling-cpu1')]).toEqual([filtered, filtered]);
    expect(fs.readFileSync('/proc/self/status', 'utf8')).toMatch(/^Seccomp:\s+0$/m);
    await vm.stop();
    expect((await vm.wait()).reason).toBe('stopped');
  });

  const attempts: [RefusedCall, number][] = [['execve', SYSCALLS.execve], ['open', SYSCALLS.openat], ['socket', SYSCALLS.socket], ['ioctl', SYSCALLS.ioctl]];
  it.each(attempts)('a vCPU thread that attempts %s is reported and the process killed with SIGSYS', (what, nr) => {
    // The attempt comes after the filter and before the first KVM_RUN: no guest needed.
    const r = runNode(`
      require(${JSON.stringify(require.resolve('../../bench/register-ts'))});
      const { vcpuSeccompFilter } = require(${JSON.stringify(require.resolve('../../lib/seccomp'))});
      const a = require(${JSON.stringify(ADDON_PATH)});
      const vm = a.openKvm().createVm();
      const vcpu = vm.createVcpu(0);
      vm.setExitHandlers({ io() {}, event() { return 1; }, vcpuStopped() { console.log('stopped'); } });
      a._testing.attemptOnStart(vcpu, ${JSON.stringify(what)});
      console.error('fd ' + vcpu.fd);
      vcpu.start(vcpuSeccompFilter({ vcpuFd: vcpu.fd }));
      setTimeout(() => console.log('still alive'), 3000);
    `);
    expect(r.signal).toBe('SIGSYS');
    expect(r.stdout).toBe('');
    expect(r.stderr).not.toMatch(/kindling-test/);
    const report = new RegExp(`kindling: seccomp: vCPU thread kindling-cpu0 made system call ${nr} \\(arch 0xc000003e, args (0x[0-9a-f]+) (0x[0-9a-f]+)`);
    const m = report.exec(r.stderr);
    expect(m).not.toBeNull();
    if (what === 'ioctl') {
      // KVM_GET_REGS on the vCPU's own fd: the filter checks the request, not just the fd.
      const fd = /^fd (\d+)$/m.exec(r.stderr);
      expect(fd).not.toBeNull();
      expect(Number(m![1])).toBe(Number(fd![1]));
      expect(m![2]).toBe('0x8090ae81');
    }
  });

  it('a vCPU made with its thread by createVmAsync installs its filter at start(), and a refused one leaves it startable', async () => {
    const addon = loadNative();
    const kvm = addon.openKvm();
    const made = await kvm.createVmAsync({ memory: [], tssAddr: 0xfffbd000, identityMapAddr: 0xfffbc000, irqchip: false, vcpus: [{ id: 0 }, { id: 1 }] });
    const { vm, vcpus } = made;
    try {
      const stopped: number[] = [];
      vm.setExitHandlers({ io: () => 0, event: () => VcpuVerdict.Stop, vcpuStopped: (id) => stopped.push(id) });
      // The threads exist but wait at their gate: unfiltered, not in KVM_RUN.
      expect(vcpus.map((v) => v.runState)).toEqual(['idle', 'idle']);
      const badJump = Uint8Array.from([0x15, 0, 9, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
      expect(() => vcpus[0].start(badJump)).toThrow(expect.objectContaining({ code: 'EINVAL', ioctl: 'seccomp(SECCOMP_SET_MODE_FILTER)' }));
      expect(vcpus[0].getRegs().rip).toBe(0xfff0n);
      // No memory, no irqchip: the guest's first fetch fails and the vCPU stops; what matters is
      // the filter each thread had when it entered KVM_RUN.
      vcpus[0].start();
      vcpus[1].start(vcpuSeccompFilter({ vcpuFd: vcpus[1].fd }));
      // Both threads wait for the verdict on their exit (or are still in KVM_RUN) until the loop turns.
      expect(seccompStatus('kindling-cpu0')).toEqual(['NoNewPrivs: 0 Seccomp: 0 Seccomp_filters: 0']);
      expect(seccompStatus('kindling-cpu1')).toEqual(['NoNewPrivs: 1 Seccomp: 2 Seccomp_filters: 1']);
      await vm.closeAsync();
      expect(stopped.sort()).toEqual([0, 1]);
    } finally {
      vm.close();
      kvm.close();
    }
  });

  it('prepareStart() installs the filter before start(), off the JavaScript thread; a refused one rejects and leaves the vCPU startable', async () => {
    const addon = loadNative();
    const kvm = addon.openKvm();
    const { vm, vcpus } = await kvm.createVmAsync({ memory: [], tssAddr: 0xfffbd000, identityMapAddr: 0xfffbc000, irqchip: false, vcpus: [{ id: 0 }, { id: 1 }] });
    try {
      const stopped: number[] = [];
      vm.setExitHandlers({ io: () => 0, event: () => VcpuVerdict.Stop, vcpuStopped: (id) => stopped.push(id) });
      const badJump = Uint8Array.from([0x15, 0, 9, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
      await expect(vcpus[0].prepareStart(badJump)).rejects.toMatchObject({ code: 'EINVAL', ioctl: 'seccomp(SECCOMP_SET_MODE_FILTER)' });
      await vcpus[1].prepareStart(vcpuSeccompFilter({ vcpuFd: vcpus[1].fd }));
      // Prepared: filtered already, yet not started (register calls work, no KVM_RUN yet).
      expect(seccompStatus('kindling-cpu1')).toEqual(['NoNewPrivs: 1 Seccomp: 2 Seccomp_filters: 1']);
      expect(vcpus[1].runState).toBe('idle');
      expect(vcpus[1].getRegs().rip).toBe(0xfff0n);
      expect(() => vcpus[1].start(vcpuSeccompFilter({ vcpuFd: vcpus[1].fd }))).toThrow(/prepareStart/);
      expect(() => vcpus[1].prepareStart()).toThrow(/already started or prepared/);
      vcpus[1].start();
      vcpus[0].start();
      expect(seccompStatus('kindling-cpu0')).toEqual(['NoNewPrivs: 0 Seccomp: 0 Seccomp_filters: 0']);
      await vm.closeAsync();
      expect(stopped.sort()).toEqual([0, 1]);
    } finally {
      vm.close();
      kvm.close();
    }
  });

  it('a prepared vCPU that is never started ends with the VM, its thread released', async () => {
    const addon = loadNative();
    const kvm = addon.openKvm();
    const threads0 = fs.readdirSync('/proc/self/task').length;
    const { vm, vcpus } = await kvm.createVmAsync({ memory: [], tssAddr: 0xfffbd000, identityMapAddr: 0xfffbc000, irqchip: false, vcpus: [{ id: 0 }] });
    vm.setExitHandlers({ io: () => 0, event: () => VcpuVerdict.Stop, vcpuStopped: () => undefined });
    await vcpus[0].prepareStart(vcpuSeccompFilter({ vcpuFd: vcpus[0].fd }));
    await vm.closeAsync();
    kvm.close();
    expect(fs.readdirSync('/proc/self/task').length).toBeLessThanOrEqual(threads0);
  });

  it('a filter the kernel refuses fails start(), and the same vCPU then starts without one', async () => {
    const addon = loadNative();
    const kvm = addon.openKvm();
    const vm = kvm.createVm();
    try {
      const vcpu = vm.createVcpu(0);
      const stopped: number[] = [];
      vm.setExitHandlers({ io: () => 0, event: () => VcpuVerdict.Stop, vcpuStopped: (id) => stopped.push(id) });
      const badJump = Uint8Array.from([0x15, 0, 9, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
      expect(() => vcpu.start(badJump)).toThrow(expect.objectContaining({ code: 'EINVAL', ioctl: 'seccomp(SECCOMP_SET_MODE_FILTER)' }));
      expect(vcpu.getRegs().rip).toBe(0xfff0n); // not running: register calls still work
      vcpu.start();
      expect(seccompStatus('kindling-cpu0')).toEqual(['NoNewPrivs: 0 Seccomp: 0 Seccomp_filters: 0']);
      vm.stopVcpus();
      vm.flushExits();
      expect(stopped).toEqual([0]);
    } finally {
      vm.close();
      kvm.close();
    }
  });
});
