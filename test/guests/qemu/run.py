#!/usr/bin/env python3
"""Run a test guest under QEMU (TCG) for host-side checking.

Kindling is the real runner; this exists because development machines may
have no usable /dev/kvm. A PVH shim (shim.S/shim.c) recreates Kindling's
boot state, so the guest binary is the same one Kindling boots.

  run.py GUEST.elf [--machine pc|microvm] [--smp N] [--mem MiB]
         [--append 'extra cmdline'] [--disk FILE[:ro]]... [--initrd FILE]
         [--input LINE]... [--timeout SEC] [--net USER-NETDEV-OPTIONS]

Prints the guest's serial output, then 'QEMU: exit=<code>' and, when the
VM ended by itself, 'QEMU: ended' (reset or triple fault; -no-reboot).
With --disk the machine is microvm (virtio-mmio); virtio windows are
announced like Kindling does: virtio_mmio.device=512@0x<base>:<irq>.
--net adds a virtio-net-device on QEMU's user network (slirp: the guest is
10.0.2.15, the gateway 10.0.2.2); the value is appended to `-netdev user`,
e.g. 'guestfwd=tcp:10.0.2.100:80-cmd:python3 qemu/mmds_stub.py'. It also
selects microvm.
"""
import argparse
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, '..', 'out', 'qemu', 'shim.elf')
MICROVM_MMIO_BASE = 0xFEB00000
MICROVM_MMIO_SIZE = 512
MICROVM_TRANSPORTS = 24


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('guest')
    ap.add_argument('--machine', default=None)
    ap.add_argument('--smp', type=int, default=1)
    ap.add_argument('--mem', type=int, default=64)
    ap.add_argument('--append', default='')
    ap.add_argument('--disk', action='append', default=[])
    ap.add_argument('--initrd')
    ap.add_argument('--input', action='append', default=[])
    ap.add_argument('--timeout', type=float, default=60)
    ap.add_argument('--net', default=None)
    ap.add_argument('--count-insns', metavar='LOG',
                    help='single-step TCG and log executed PCs to LOG (slow); '
                         'count guest instructions with count_insns.py')
    a = ap.parse_args()

    machine = a.machine or ('microvm' if a.disk or a.net is not None else 'pc')
    cmdline = ['console=ttyS0', 'shim.cpus=%d' % a.smp]
    args = ['qemu-system-x86_64', '-nodefaults', '-display', 'none',
            '-monitor', 'none', '-serial', 'stdio', '-no-reboot',
            '-cpu', 'qemu64', '-m', str(a.mem), '-smp', str(a.smp)]
    if machine == 'microvm':
        args += ['-M', 'microvm,rtc=off,acpi=off,auto-kernel-cmdline=off',
                 '-global', 'virtio-mmio.force-legacy=false']
        for i in range(MICROVM_TRANSPORTS):
            cmdline.append('virtio_mmio.device=%d@0x%x:%d' % (
                MICROVM_MMIO_SIZE, MICROVM_MMIO_BASE + i * MICROVM_MMIO_SIZE, 5 + i))
        for i, d in enumerate(a.disk):
            path, _, flag = d.partition(':')
            ro = ',readonly=on' if flag == 'ro' else ''
            args += ['-drive', 'id=d%d,file=%s,format=raw,if=none%s' % (i, path, ro),
                     '-device', 'virtio-blk-device,drive=d%d,serial=kt-disk%d' % (i, i)]
        if a.net is not None:
            args += ['-netdev', 'user,id=n0' + (',' + a.net if a.net else ''),
                     '-device', 'virtio-net-device,netdev=n0,mac=06:00:0a:00:02:0f']
    else:
        args += ['-M', machine]
    if a.append:
        cmdline.append(a.append)
    args += ['-kernel', SHIM, '-append', ' '.join(cmdline),
             '-device', 'loader,file=%s' % a.guest]
    if a.initrd:
        args += ['-initrd', a.initrd]
    if a.count_insns:
        args += ['-singlestep', '-d', 'exec,nochain', '-D', a.count_insns]

    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = b''
    inputs = list(a.input)
    deadline = time.time() + a.timeout
    ended = False
    while time.time() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.1)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                ended = True
                break
            out += chunk
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if inputs and b'KT: READY' in out:
            p.stdin.write((inputs.pop(0) + '\n').encode())
            p.stdin.flush()
            time.sleep(0.05)
        if b'KT: DONE\n' in out and machine == 'microvm':
            time.sleep(0.2)  # no i8042 on microvm: the reset cannot end it
            break
    if ended:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        p.kill()
    code = p.wait()
    print('QEMU: exit=%d' % code)
    if ended:
        print('QEMU: ended')
    return 0


if __name__ == '__main__':
    sys.exit(main())
