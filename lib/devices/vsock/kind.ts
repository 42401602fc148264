/**
 * How a vsock device joins a machine. The builder creates the device at `vm.vsock()` (so that
 * listeners can be registered before `start()`); a restored machine builds it from the saved
 * configuration. Either way its host services (the Unix socket) start with the machine.
 * @module
 */
import type { DeviceKind } from '../contract';
import type { VsockConfig } from './config';
import { createVsockDevice, type VsockDevice } from './device';
import type { VsockHost } from './host';

/** A vsock device's configuration with its id. */
export interface VsockSpec extends VsockConfig {
  /** Always `'vsock'`: one per VM. */
  id: string;
}

/** The virtio-vsock device kind. */
export const vsockDeviceKind: DeviceKind<VsockSpec, VsockDevice, { vsock: VsockHost }> = {
  kind: 'virtio-vsock',
  async create(spec, host) {
    return createVsockDevice(spec, host.vsock);
  },
  async start(device) {
    await device.startHostServices();
  },
};
