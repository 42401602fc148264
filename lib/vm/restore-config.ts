/**
 * The configuration a restored VM runs with: the one its snapshot saved, validated again (a state
 * file is input like any other), with the restoring caller's host resources.
 * @module
 */
import { ConfigError, checkOptionsObject, describe } from '../config';
import { checkDriveOptions, type DriveConfig } from '../devices/block/config';
import type { VirtioDevice } from '../virtio/device';
import { checkMemory, checkVcpus, type VmConfig } from './config';

/**
 * Builds the restored VM's configuration from the snapshot's `saved` one: a new `id`, drive files
 * replaced where `drives` says, instances of the user's own devices taken from `devices` (and put
 * into `customDevices`). Every saved field is checked.
 * @throws ConfigError naming the saved field or option that does not fit
 */
export function restoredConfig(
  saved: VmConfig, id: string, drives: unknown, devices: unknown, customDevices: Map<string, VirtioDevice>,
): Partial<VmConfig> {
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
  return {
    id,
    vcpus: checkVcpus(saved.vcpus),
    memoryMib: checkMemory(saved.memoryMib),
    kernel: saved.kernel,
    drives: checkedDrives,
    devices: saved.devices.map((d) => ({ kind: String(d.kind), id: String(d.id), config: d.config })),
    trackDirtyPages: saved.trackDirtyPages === true,
    bootTimer: saved.bootTimer === true,
  };
}
