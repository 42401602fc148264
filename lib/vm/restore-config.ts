/**
 * The configuration a restored VM runs with: the one its snapshot saved, validated again (a state
 * file is input like any other), with the restoring caller's host resources.
 * @module
 */
import { ConfigError, checkOptionsObject, describe } from '../config';
import { checkDriveOptions, type DriveConfig } from '../devices/block/config';
import type { VirtioDevice } from '../virtio/device';
import { checkMemory, checkVcpus, type VmConfig, type DeviceSpec } from './config';
import type { Duplex } from 'stream';
import { checkNicOptions, type FrameSwitch } from '../devices/net/config';
import { netDeviceKind, nicSpecOf, type NicSpec } from '../devices/net/kind';
import { vsockDeviceKind } from '../devices/vsock/kind';

/**
 * Builds the restored VM's configuration from the snapshot's `saved` one: a new `id`, drive files
 * replaced where `drives` says, instances of the user's own devices taken from `devices` (and put
 * into `customDevices`). Every saved field is checked.
 * @throws ConfigError naming the saved field or option that does not fit
 */
export function restoredConfig(
  saved: VmConfig, id: string, overrides: { drives?: unknown; devices?: unknown; nics?: unknown; vsock?: unknown },
  customDevices: Map<string, VirtioDevice>, links: Map<string, FrameSwitch | Duplex>,
): Partial<VmConfig> {
  const { drives, devices } = overrides;
  const driveOverrides = drives === undefined ? {} : checkOptionsObject(drives, saved.drives.map((d) => d.id), 'restore drives', 'INVALID_OPTION');
  const deviceInstances = devices === undefined ? {} : checkOptionsObject(devices, saved.devices.map((d) => d.id), 'restore devices', 'INVALID_OPTION');
  if (!Array.isArray(saved.drives) || !Array.isArray(saved.devices)) {
    throw new ConfigError('INVALID_OPTION', 'the snapshot\'s configuration has no device lists');
  }
  const checkedDrives: DriveConfig[] = [];
  for (const d of saved.drives) {
    const override = driveOverrides[d.id] as { path?: unknown } | undefined;
    if (override !== undefined) checkOptionsObject(override, ['path'], `restore drives.${d.id}`, 'INVALID_OPTION');
    const { id: driveId, ...options } = d;
    checkedDrives.push(checkDriveOptions(driveId, { ...options, path: override?.path ?? d.path }, checkedDrives));
  }
  for (const spec of saved.devices) {
    if (spec.kind !== 'custom') continue;
    const instance = deviceInstances[spec.id] as VirtioDevice | undefined;
    if (instance === undefined) {
      throw new ConfigError('INVALID_DEVICE', `the snapshot has a device of your own, ${spec.id}: pass a fresh instance in restore options devices.${spec.id}`);
    }
    if (instance === null || typeof instance !== 'object' || instance.id !== spec.id) {
      throw new ConfigError('INVALID_DEVICE', `restore devices.${spec.id} must be a device with id ${spec.id}, not ${describe(instance)}`);
    }
    customDevices.set(spec.id, instance);
  }
  const nicIds = saved.devices.filter((d) => d.kind === netDeviceKind.kind).map((d) => d.id);
  const nicOverrides = overrides.nics === undefined ? {} : checkOptionsObject(overrides.nics, nicIds, 'restore nics', 'INVALID_OPTION');
  const vsockOverride = overrides.vsock === undefined ? {} : checkOptionsObject(overrides.vsock, ['udsPath'], 'restore vsock', 'INVALID_OPTION');
  const specs = saved.devices.map((d): DeviceSpec => {
    if (d.kind === netDeviceKind.kind) {
      const saved = d.config as NicSpec;
      const o = nicOverrides[d.id] === undefined ? {} : checkOptionsObject(nicOverrides[d.id], ['tap', 'link'], `restore nics.${d.id}`, 'INVALID_OPTION');
      // The saved NIC, checked by the builder's rules, on the backend given (or saved).
      const backend = o.link !== undefined ? { link: o.link } : o.tap !== undefined ? { tap: o.tap } : saved.tap !== undefined ? { tap: saved.tap } : {};
      const checked = checkNicOptions(d.id, {
        ...backend, mtu: saved.mtu, ...(saved.mac ? { mac: saved.mac } : {}),
        ...(saved.rxRateLimiter ? { rxRateLimiter: saved.rxRateLimiter } : {}), ...(saved.txRateLimiter ? { txRateLimiter: saved.txRateLimiter } : {}),
      });
      if (checked.backend.kind === 'switch') links.set(d.id, checked.backend.sw);
      if (checked.backend.kind === 'duplex') links.set(d.id, checked.backend.stream);
      return { kind: d.kind, id: d.id, config: nicSpecOf(checked) };
    }
    if (d.kind === vsockDeviceKind.kind && vsockOverride.udsPath !== undefined) {
      return { kind: d.kind, id: d.id, config: { ...d.config, udsPath: vsockOverride.udsPath } as typeof d.config };
    }
    return { kind: String(d.kind), id: String(d.id), config: d.config };
  });
  return {
    id,
    vcpus: checkVcpus(saved.vcpus),
    memoryMib: checkMemory(saved.memoryMib),
    kernel: saved.kernel,
    drives: checkedDrives,
    devices: specs,
    ...(saved.mmds ? { mmds: saved.mmds } : {}),
    trackDirtyPages: saved.trackDirtyPages === true,
    bootTimer: saved.bootTimer === true,
  };
}
