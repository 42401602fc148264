#!/usr/bin/env python3
"""A stand-in metadata service for running net.elf under QEMU: slirp's guestfwd hands one TCP
connection to this process on stdin/stdout. Answers PUT /latest/api/token with a fixed token and
GET with the token with a fixed instance id, like MMDS v2 (401 without the token)."""
import sys

TOKEN = 'qemu-stub-token'
inp, out = sys.stdin.buffer, sys.stdout.buffer
head = b''
while b'\r\n\r\n' not in head:
    c = inp.read(1)
    if not c:
        sys.exit(0)
    head += c
lines = head.decode('latin1').split('\r\n')
method, path = lines[0].split(' ')[:2]
hdrs = {l.split(':', 1)[0].strip().lower(): l.split(':', 1)[1].strip() for l in lines[1:] if ':' in l}
if method == 'PUT' and path == '/latest/api/token' and 'x-metadata-token-ttl-seconds' in hdrs:
    status, body = '200 OK', TOKEN
elif method == 'GET' and hdrs.get('x-metadata-token') == TOKEN:
    status, body = '200 OK', 'i-qemu-stub'
else:
    status, body = '401 Unauthorized', 'MMDS token not valid.'
out.write(('HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s'
           % (status, len(body), body)).encode())
out.flush()
