/**
 * What the network device needs from the host, as an interface: open a TAP, move bytes between
 * a file descriptor and ranges of ArrayBuffers (guest memory) with one readv/writev, and learn
 * when a descriptor becomes readable. `lib/vm/net-host.ts` implements it with the native addon;
 * tests implement it with in-memory fakes. Nothing here loads the addon.
 * @module
 */

/** A TAP opened for a NIC. */
export interface TapInfo {
  /** The open file descriptor (non-blocking, close-on-exec, vnet header of 12 bytes). */
  readonly fd: number;
  /** The interface name as the kernel reports it. */
  readonly name: string;
  /** TUN_F_* offload flags the TAP accepted when probed with TUNSETOFFLOAD. */
  readonly offloads: number;
}

/** A readability watch on a file descriptor (level-triggered). */
export interface FdPoll {
  /** Stops calling back until {@link resume}; a paused watch does not keep the event loop alive. */
  pause(): void;
  /** Calls back again while the descriptor is readable. */
  resume(): void;
  /** Ends the watch for good (idempotent). Close it before closing the descriptor. */
  close(): void;
}

/**
 * A scatter/gather list over ArrayBuffers: `count` spans, span `i` being bytes
 * `[spans[3i+1], spans[3i+1] + spans[3i+2])` of `buffers[spans[3i]]`. Guest memory regions are
 * ArrayBuffers aliasing the VM's mapping, so a readv through such a list lands directly in guest
 * buffers with no copy on the way.
 */
export interface SpanList {
  /** The buffers spans refer to (the guest memory regions' backing stores). */
  readonly buffers: readonly ArrayBuffer[];
  /** Triples (buffer index, byte offset, length); only the first `3 * count` entries count. */
  readonly spans: Float64Array;
  /** Number of spans in use. */
  readonly count: number;
}

/** Host operations a network device uses. Implementations must not throw for EAGAIN. */
export interface NetHost {
  /**
   * Opens the existing TAP `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, TUNSETVNETHDRSZ 12,
   * offloads probed and then cleared). Throws an error whose `code` is the errno name:
   * `ENODEV` when there is no such interface, `EBUSY` when another process has it open, `EINVAL`
   * when it is not a TAP of that kind, `EPERM`/`EACCES` without permission.
   */
  openTap(name: string): TapInfo;
  /** TUNSETOFFLOAD with TUN_F_* `flags`. Throws (errno `code`) if the TAP refuses them. */
  setTapOffload(fd: number, flags: number): void;
  /**
   * One readv(2) into the spans. Returns the byte count the kernel reported (for a TAP: the whole
   * frame's length, which exceeds the spans' total when the frame was truncated), 0 at end of file,
   * or -1 when nothing is ready (EAGAIN). Throws (errno `code`) for other failures.
   */
  readv(fd: number, list: SpanList): number;
  /** One writev(2) of the spans. Returns bytes written or -1 (EAGAIN). Throws for other failures. */
  writev(fd: number, list: SpanList): number;
  /** Calls `onReadable` on the event loop while `fd` is readable (until paused or closed). */
  watchReadable(fd: number, onReadable: () => void): FdPoll;
  /** close(2). */
  closeFd(fd: number): void;
}
