/**
 * The error type of the native layer: every failing ioctl or system call of the addon, and the
 * addon itself failing to load.
 * @module
 */
import { KindlingError } from '../errors';

/**
 * errno's symbolic name of the failed call ('ENOENT', 'EACCES', 'ENODEV', 'EINVAL', 'ENOTTY',
 * 'EBADF', 'EBUSY'…), or 'ADDON_MISSING' when `build/Release/kindling.node` could not be loaded.
 */
export type NativeErrorCode =
  | 'ADDON_MISSING'
  | 'ENOENT'
  | 'EACCES'
  | 'EPERM'
  | 'ENODEV'
  | 'ENXIO'
  | 'EINVAL'
  | 'ENOTTY'
  | 'EBADF'
  | 'EBUSY'
  | 'EEXIST'
  | 'ENOMEM'
  | 'EFAULT'
  | 'E2BIG'
  | 'EAGAIN'
  | 'EINTR'
  | 'EMFILE'
  | 'ENOSPC'
  | 'ENOSYS'
  // Any other errno name; the literal members above keep editor completion useful.
  | (string & {});

/**
 * A failed ioctl or system call (`code` is errno's name, `ioctl` names the call, `errno` is the
 * number), or `code === 'ADDON_MISSING'` when the native addon is not built or cannot be loaded.
 */
export class NativeError extends KindlingError {
  /** Discriminant for programmatic handling: errno's name, or 'ADDON_MISSING'. */
  readonly code: NativeErrorCode;
  /** The ioctl or system call that failed, e.g. 'KVM_CREATE_VM', 'open', 'mmap'; 'dlopen' for ADDON_MISSING. */
  readonly ioctl: string;
  /** errno of the failure (0 for ADDON_MISSING). */
  readonly errno: number;

  /**
   * @param code errno's name or 'ADDON_MISSING'
   * @param message human-readable description, e.g. "KVM_CREATE_VM failed: EINVAL (Invalid argument)"
   * @param ioctl the failed call
   * @param errno the errno value
   */
  constructor(code: NativeErrorCode, message: string, ioctl = '', errno = 0) {
    super(message);
    this.name = 'NativeError';
    this.code = code;
    this.ioctl = ioctl;
    this.errno = errno;
  }
}
