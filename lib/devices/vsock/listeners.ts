/**
 * The table of host-port listeners that `vm.vsockListen()` fills: the same rules for the
 * in-process device and for a jailed VM's parent side (lib/jail/vsock-bridge.ts).
 * @module
 */
import { VsockError } from './errors';

/** A registered vsock listener (`vm.vsockListen()`); `close()` stops listening. */
export interface VsockListener {
  /** The host port listened on. */
  readonly port: number;
  /** Stops accepting (open connections stay open). Idempotent. */
  close(): void;
}

/** Whether `v` is a u32 (a vsock port or CID). */
export function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/**
 * Registers `handler` for host port `port` in `listeners`; the returned listener's `close()`
 * removes it (if it is still this handler's) and then calls `onClose`.
 * @throws VsockError BAD_PORT / BAD_CONFIG / PORT_IN_USE
 */
export function addListener<H>(listeners: Map<number, H>, port: number, handler: H, onClose?: () => void): VsockListener {
  if (!isU32(port)) throw new VsockError('BAD_PORT', `port ${String(port)} is not a u32`);
  if (typeof handler !== 'function') throw new VsockError('BAD_CONFIG', 'listen needs a connection handler');
  if (listeners.has(port)) throw new VsockError('PORT_IN_USE', `host port ${port} already has a listener`);
  listeners.set(port, handler);
  let open = true;
  return {
    port,
    close: () => {
      if (!open) return;
      open = false;
      if (listeners.get(port) !== handler) return;
      listeners.delete(port);
      onClose?.();
    },
  };
}
