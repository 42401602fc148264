/**
 * How devices (and the machine) open the host files their configuration names.
 *
 * A device never opens a path itself: it asks the {@link HostFiles} it was given. In-process that
 * is a plain open (`lib/vm/host-resources.ts`); in a jailed child (`lib/jail`) the process has no
 * path back to the host's filesystem, and the same call hands out a descriptor the parent opened
 * and passed in. Either way the device gets an open descriptor it owns and the file's size as the
 * host measured it.
 * @module
 */

/** An open host file handed to a device. */
export interface HostFile {
  /** The descriptor; the receiver owns it (closes it when done). */
  fd: number;
  /**
   * The file's size in bytes at open time: `st_size` for a regular file, the device size for a
   * block device (which a jailed child could not look up itself).
   */
  size: number;
  /** Whether it is a block device rather than a regular file. */
  blockDevice: boolean;
}

/** How a file is opened. */
export type HostFileAccess = 'read' | 'readWrite';

/** Opens host files named by a device's configuration. */
export interface HostFiles {
  /**
   * Opens `path` (a regular file or a block device; anything else is refused) for `access`.
   * Rejects with an Error whose message names the path when it cannot (missing, not permitted,
   * or, in a jail, not passed in).
   */
  openFile(path: string, access: HostFileAccess): Promise<HostFile>;
}
