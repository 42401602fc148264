import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const made: string[] = [];

/**
 * A folder where Unix sockets can be created: `dir` unless its file system refuses them (a host
 * folder shared into scripts/kvm-in-qemu.sh's machine over 9p does, e.g. /tmp for a checkout
 * under /tmp), else a fresh folder in /dev/shm, removed by {@link removeSocketDirs}.
 */
export function socketDir(dir: string): string {
  const probe = path.join(dir, `probe-${process.pid}.sock`);
  const r = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(probe)}, function () { this.close(); })`], { timeout: 10_000 });
  fs.rmSync(probe, { force: true });
  if (r.status === 0) return dir;
  const shm = fs.mkdtempSync('/dev/shm/kindling-');
  made.push(shm);
  return shm;
}

/** Removes the folders {@link socketDir} made. */
export function removeSocketDirs(): void {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}
