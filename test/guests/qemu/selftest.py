#!/usr/bin/env python3
"""Runs every guest under QEMU (TCG) through run.py and checks its KT lines.
A host-side check of the guests themselves, for machines without KVM; the
real tests run them under Kindling. Needs qemu-system-x86_64.
Prints one line per check and 'N passed, N failed'; exit 1 on failure."""
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'out')
RUN = os.path.join(HERE, 'run.py')

passed = failed = 0


def run(guest, *args, timeout=120):
    r = subprocess.run([sys.executable, RUN, os.path.join(OUT, guest + '.elf'), *args],
                       capture_output=True, text=True, timeout=timeout + 30)
    return r.stdout


def check(name, ok, detail=''):
    global passed, failed
    if ok:
        passed += 1
        print('ok   ' + name)
    else:
        failed += 1
        print('FAIL ' + name + (' -- ' + detail if detail else ''))


def lines(out):
    return [l for l in out.splitlines() if l.startswith('KT: ')]


def main():
    if not shutil.which('qemu-system-x86_64'):
        print('qemu-system-x86_64 not found: install QEMU to run the guests without KVM')
        return 2
    tmp = tempfile.mkdtemp(prefix='kt-guests-')
    rnd = random.Random(7)
    initrd = os.path.join(tmp, 'initrd')
    data = bytes(rnd.getrandbits(8) for _ in range(5000))
    open(initrd, 'wb').write(data)

    out = run('hello', '--smp', '2', '--initrd', initrd, '--append', 'kt.test=1')
    kt = lines(out)
    check('hello banner', 'Hello from a Kindling microVM' in out, out)
    check('hello cmdline', any(l.startswith('KT: cmdline=') and 'kt.test=1' in l for l in kt))
    check('hello boot_flag', 'KT: boot_flag=aa55' in kt)
    check('hello loader', 'KT: loader=ff' in kt)
    check('hello initrd_sum', 'KT: initrd_sum=%x' % (sum(data) & 0xffffffff) in kt, str(kt))
    check('hello cpus', 'KT: cpus=2' in kt)
    check('hello done', kt[-1:] == ['KT: DONE'] and 'QEMU: ended' in out)

    out = run('echo', '--input', 'hello world', '--input', 'quit')
    kt = lines(out)
    check('echo', kt[:3] == ['KT: READY', 'KT: echo=hello world', 'KT: echo=quit']
          and kt[-1] == 'KT: DONE' and any(l.startswith('KT: irqs=') for l in kt), str(kt))

    out = run('triple')
    check('triple', lines(out) == ['KT: triple_kind=gp', 'KT: TRIPLE'] and 'QEMU: ended' in out, out)

    out = run('smp', '--smp', '2')
    kt = lines(out)
    check('smp', 'KT: AP apic=1' in kt and 'KT: cpus_running=2' in kt and kt[-1] == 'KT: DONE', str(kt))

    rw = os.path.join(tmp, 'rw.img')
    ro = os.path.join(tmp, 'ro.img')
    rw_data = bytes(rnd.getrandbits(8) for _ in range(64 * 1024))
    ro_data = bytes(rnd.getrandbits(8) for _ in range(32 * 1024))
    open(rw, 'wb').write(rw_data)
    open(ro, 'wb').write(ro_data)
    out = run('blk', '--disk', rw, '--disk', ro + ':ro')
    kt = lines(out)
    # microvm fills transports from the top: the second disk is blk0
    for n, d, is_ro in ((0, ro_data, True), (1, rw_data, False)):
        exp = ['KT: blk%d capacity=%d ro=%d flush=1' % (n, len(d) // 512, is_ro),
               'KT: blk%d sum0=%x' % (n, sum(d[:512])),
               'KT: blk%d sum0_7=%x' % (n, sum(d[:4096])),
               'KT: blk%d indirect_sum0=%x' % (n, sum(d[:512])),
               'KT: blk%d oor_status=1' % n,
               'KT: blk%d flush_status=0' % n]
        exp.append('KT: blk%d ro_write_status=1' % n if is_ro else 'KT: PASS blk%d write-readback' % n)
        missing = [e for e in exp if e not in kt]
        check('blk%d' % n, not missing, 'missing %s in %s' % (missing, kt))
    written = open(rw, 'rb').read()[512:1024]
    check('blk sector 1 on disk', written == bytes((i * 7 + 3) & 255 for i in range(512)))
    check('blk done', kt[-2:] == ['KT: blk_devices=2', 'KT: DONE'], str(kt))

    out = run('badvirtio', '--disk', rw)
    kt = lines(out)
    check('badvirtio survives', 'KT: PASS hostile recover' in kt and kt[-1] == 'KT: DONE', str(kt))

    # net: QEMU's virtio-net on the user network; the gateway answers ARP and ping, and a stub
    # service behind guestfwd stands in for the MMDS (the TCP and HTTP client is what is checked).
    stub = os.path.join(HERE, 'mmds_stub.py')
    out = run('net', '--append', 'net.ip=10.0.2.15 net.peer=10.0.2.2 net.mmds=10.0.2.100',
              '--net', 'guestfwd=tcp:10.0.2.100:80-cmd:python3 %s' % stub)
    kt = lines(out)
    check('net ping', 'KT: PASS net0 ping' in kt, str(kt))
    check('net mmds', 'KT: PASS net0 mmds' in kt and 'KT: net0 mmds get_status=200 body=i-qemu-stub' in kt, str(kt))
    check('net done', kt[-1:] == ['KT: DONE'], str(kt))
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
