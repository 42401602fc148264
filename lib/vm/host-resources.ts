/**
 * The machine's one way to reach host resources its configuration names: the KVM device, the
 * kernel and initrd, the files devices open ({@link HostFiles}) and TAPs.
 *
 * {@link localResources} opens them by path, in this process. A jailed child (`lib/jail/child.ts`)
 * implements the same interface with descriptors its parent opened and passed over a socket, so
 * that the machine code is the same in both modes and the child needs no path to the host's
 * filesystem.
 * @module
 */
import * as fs from 'fs';
import type { HostFile, HostFileAccess, HostFiles } from '../devices/host-files';
import type { NativeAddon, NativeKvm } from '../native/types';
import type { TapInfo } from '../devices/net/host';

export type { HostFile, HostFileAccess, HostFiles } from '../devices/host-files';

/** Host resources of a machine. */
export interface HostResources extends HostFiles {
  /** Opens the KVM device named by the configuration (`kvmPath`). Throws a NativeError. */
  openKvm(path: string): NativeKvm;
  /**
   * Opens a boot image (kernel, initrd) for reading, synchronously: one open and one fstat cost
   * less start latency than the thread pool's round trips. The caller owns and closes the
   * descriptor; the addon reads the image from it straight into guest memory. Throws the system
   * error.
   */
  openImage(path: string): HostFile;
  /**
   * Opens the TAP `name` for a NIC (what `NetHost.openTap` returns). Throws a NativeError whose
   * code the NIC factory turns into TAP_NOT_FOUND / TAP_BUSY / TAP_OPEN_FAILED.
   */
  openTap(name: string): TapInfo;
}

/** Host resources opened by path in this process. */
export function localResources(addon: NativeAddon): HostResources {
  return {
    openKvm: (path) => addon.openKvm(path),
    openImage: (path) => openLocalFileSync(path, 'read'),
    openFile: openLocalFile,
    openTap: (name) => addon.openTap(name),
  };
}

/**
 * Opens `path` with O_RDONLY or O_RDWR (close-on-exec) and sizes it: st_size for a regular file,
 * sysfs's size for a block device (whose st_size is 0). Raw descriptors rather than FileHandles:
 * the caller owns the number and closes it.
 */
export async function openLocalFile(path: string, access: HostFileAccess): Promise<HostFile> {
  const flags = access === 'read' ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
  const fd = await new Promise<number>((resolve, reject) => fs.open(path, flags, (err, f) => (err ? reject(err) : resolve(f))));
  try {
    const st = await new Promise<fs.BigIntStats>((resolve, reject) => fs.fstat(fd, { bigint: true }, (err, s) => (err ? reject(err) : resolve(s))));
    if (st.isFile()) return { fd, size: Number(st.size), blockDevice: false };
    if (st.isBlockDevice()) return { fd, size: await blockDeviceSize(st.rdev), blockDevice: true };
    throw new Error(`${path} is neither a regular file nor a block device`);
  } catch (e) {
    await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
    throw e;
  }
}

/**
 * {@link openLocalFile} without the thread pool: for a jailed VM's parent, which opens a handful
 * of local files right before it starts the VM and should not wait for pool round trips.
 */
export function openLocalFileSync(path: string, access: HostFileAccess): HostFile {
  const fd = fs.openSync(path, access === 'read' ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.isFile()) return { fd, size: Number(st.size), blockDevice: false };
    if (st.isBlockDevice()) return { fd, size: blockDeviceSizeSync(st.rdev), blockDevice: true };
    throw new Error(`${path} is neither a regular file nor a block device`);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

function devNumbers(rdev: bigint): [bigint, bigint] {
  return [((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn), (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)];
}

function blockDeviceSizeSync(rdev: bigint): number {
  const [major, minor] = devNumbers(rdev);
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new Error(`bad sysfs size for block device ${major}:${minor}`);
  return sectors * 512;
}

/** glibc's major()/minor() split of a 64-bit dev_t, then /sys/dev/block/M:m/size (512-byte units). */
export async function blockDeviceSize(rdev: bigint): Promise<number> {
  const [major, minor] = devNumbers(rdev);
  const text = await fs.promises.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  const sectors = Number(text.trim());
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new Error(`bad sysfs size for block device ${major}:${minor}`);
  return sectors * 512;
}
