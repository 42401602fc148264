/**
 * The network device's host operations ({@link NetHost}) implemented with the native addon: the
 * only place TAP descriptors, readv/writev over guest memory and fd watches meet `lib/native`.
 * @module
 */
import type { FdPoll, NetHost, SpanList, TapInfo } from '../devices/net/host';
import type { NativeAddon } from '../native/types';

/** A {@link NetHost} backed by the addon (errors are NativeErrors with the ioctl and errno). */
export class NativeNetHost implements NetHost {
  /**
   * @param addon the loaded addon (`loadNative()`)
   * @param taps where TAPs come from: the machine's host resources (in a jailed child, descriptors
   *   its parent opened in the jail's network namespace); by default opened here by name
   */
  constructor(private readonly addon: NativeAddon, private readonly taps: { openTap(name: string): TapInfo } = addon) {}

  /** See {@link NetHost.openTap}. */
  openTap(name: string): TapInfo {
    return this.taps.openTap(name);
  }

  /** See {@link NetHost.setTapOffload}. */
  setTapOffload(fd: number, flags: number): void {
    this.addon.tapSetOffload(fd, flags);
  }

  /** See {@link NetHost.readv}. */
  readv(fd: number, list: SpanList): number {
    return this.addon.readvSpans(fd, list.buffers, list.spans, list.count);
  }

  /** See {@link NetHost.writev}. */
  writev(fd: number, list: SpanList): number {
    return this.addon.writevSpans(fd, list.buffers, list.spans, list.count);
  }

  /** See {@link NetHost.watchReadable}. */
  watchReadable(fd: number, onReadable: () => void): FdPoll {
    return this.addon.watchFd(fd, onReadable);
  }

  /** See {@link NetHost.closeFd}. */
  closeFd(fd: number): void {
    this.addon.closeFd(fd);
  }
}
