#!/usr/bin/env node
// Builds a gzip-compressed initramfs (cpio "newc" format, written here so no root and no cpio
// binary are needed) from Debian's busybox-static, with an /init script.
//
//   node scripts/initramfs.js OUT.cpio.gz [--init FILE] [--busybox PATH]
//
// Without --init, /init mounts /proc and /sys, prints a greeting with the CPU count, and reboots
// (with the kernel's `reboot=k`, the reboot reaches Kindling as an i8042 reset).
'use strict';
const fs = require('fs');
const zlib = require('zlib');

const DEFAULT_INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "kindling-init: hello from user space, $(/bin/busybox nproc) CPUs"
/bin/busybox reboot -f
`;

/** One newc header + name + data, each padded to 4 bytes (cpio(5), "New ASCII Format"). */
function entry(ino, name, mode, data, nlink = 1) {
  const nameBuf = Buffer.from(name + '\0');
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0];
  const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''));
  const pad = (n) => Buffer.alloc((4 - (n % 4)) % 4);
  return Buffer.concat([header, nameBuf, pad(header.length + nameBuf.length), data, pad(data.length)]);
}

/**
 * @param {{init?: string, busybox?: string, files?: Record<string, string|Buffer>}} opts
 * @returns {Buffer} the gzip-compressed archive
 */
function buildInitramfs(opts = {}) {
  const busybox = fs.readFileSync(opts.busybox || '/bin/busybox');
  const S_IFDIR = 0o040000;
  const S_IFREG = 0o100000;
  const S_IFLNK = 0o120000;
  const parts = [];
  let ino = 1;
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc']) parts.push(entry(ino++, d, S_IFDIR | 0o755, Buffer.alloc(0), 2));
  parts.push(entry(ino++, 'bin/busybox', S_IFREG | 0o755, busybox));
  for (const applet of ['sh', 'mount', 'echo', 'cat', 'ls', 'reboot', 'poweroff', 'dd', 'cmp', 'sync', 'nproc']) {
    parts.push(entry(ino++, `bin/${applet}`, S_IFLNK | 0o777, Buffer.from('busybox')));
  }
  parts.push(entry(ino++, 'init', S_IFREG | 0o755, Buffer.from(opts.init || DEFAULT_INIT)));
  for (const [name, content] of Object.entries(opts.files || {})) {
    parts.push(entry(ino++, name, S_IFREG | 0o755, Buffer.isBuffer(content) ? content : Buffer.from(content)));
  }
  parts.push(entry(0, 'TRAILER!!!', 0, Buffer.alloc(0)));
  return zlib.gzipSync(Buffer.concat(parts), { level: 6 });
}

module.exports = { buildInitramfs, DEFAULT_INIT };

if (require.main === module) {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) {
    console.error('usage: node scripts/initramfs.js OUT.cpio.gz [--init FILE] [--busybox PATH]');
    process.exit(2);
  }
  const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const init = opt('--init');
  fs.writeFileSync(out, buildInitramfs({ init: init && fs.readFileSync(init, 'utf8'), busybox: opt('--busybox') }));
}
