#!/usr/bin/env python3
"""Counts guest instructions in a run.py --count-insns log: executed PCs in
the guest image (0x200000-0x2FFFFF) and the SMP trampoline page (0x8000)."""
import re
import sys

pc_re = re.compile(r'Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/')
n = 0
with open(sys.argv[1], errors='replace') as f:
    for line in f:
        m = pc_re.search(line)
        if m:
            pc = int(m.group(1), 16)
            if 0x200000 <= pc < 0x300000 or 0x8000 <= pc < 0x9000:
                n += 1
print(n)
