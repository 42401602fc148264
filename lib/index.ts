/**
 * Kindling: Firecracker-style KVM microVMs inside a Node.js process.
 *
 * ```ts
 * import { MicroVM } from 'kindling';
 * const vm = new MicroVM().memory(128).kernel('vmlinux', { cmdline: 'console=ttyS0' });
 * vm.on('serial', (c) => process.stdout.write(c));
 * await vm.start();
 * console.log(await vm.wait());
 * ```
 *
 * Every error Kindling throws or rejects with is a {@link KindlingError} with a discriminated
 * `code`. Devices of your own implement {@link VirtioDevice} and are attached with
 * `vm.device()`; `kindling/testing` has a mock driver to unit-test them without KVM.
 * @packageDocumentation
 */
export { MicroVM } from './vm/microvm';
export type { VmState, MicroVMEvents, SnapshotOptions, RestoreOptions, ClonesOptions } from './vm/microvm';
export type { SnapshotInfo } from './snapshot/snapshot';
export type { MemoryFileWriteResult } from './native/types';
export { KindlingError } from './errors';
export { ConfigError } from './config';
export type { ConfigErrorCode } from './config';
export { VmError } from './vm/errors';
export type { VmErrorCode } from './vm/errors';
export type { MicroVMOptions, KernelOptions, HostQuirksMode, DriveOptions, DriveUpdate } from './vm/config';
export type { JailOptions, JailCgroupOptions } from './jail/config';
export type { JailInfo } from './jail/remote-machine';
export { JailError } from './jail/errors';
export type { JailErrorCode } from './jail/errors';
export { MIN_VCPUS, MAX_VCPUS, MIN_MEMORY_MIB, MAX_MEMORY_MIB, MAX_CMDLINE_BYTES, DEFAULT_CMDLINE } from './vm/config';
export type { ExitInfo, CloseError } from './vm/exit-dispatch';
export type { VmMetrics, DriveMetrics, NicMetrics, ExitCounters } from './vm/metrics';
export type { DeviceMetricsEntry } from './vm/device-manager';
export { MAX_VIRTIO_DEVICES, VIRTIO_MMIO_BASE, VIRTIO_MMIO_WINDOW, VIRTIO_FIRST_IRQ } from './vm/device-manager';
export { MemoryError, GuestMemory } from './memory/guest-memory';
export type { MemoryErrorCode, MemoryRegion, RegionSpec } from './memory/guest-memory';
export type { BusDevice, IrqLine } from './bus';
export type { CacheType } from './devices/block/device';
export { NativeError, isKvmAvailable } from './native/binding';
export type { NativeErrorCode, KvmAvailability } from './native/binding';
export { BootError } from './boot/errors';
export type { BootErrorCode } from './boot/errors';
export type { TokenBucketConfig, RateLimiterConfig } from './ratelimit';
export { RateLimitError } from './ratelimit';
export type { RateLimitErrorCode } from './ratelimit/errors';
export { DeviceError, stateField, encodeBytes } from './devices/contract';
export type { Device, DeviceErrorCode, StateObject, StateValue, DeviceStateRecord } from './devices/contract';
export type { VirtioDevice, VirtioDeviceContext, VirtioInterrupt } from './virtio/device';
export { Queue } from './virtio/queue';
export type { QueueState } from './virtio/queue';
export { DescriptorChain, ChainReader, ChainWriter } from './virtio/chain';
export type { DescriptorSegment } from './virtio/chain';
export { VirtioError } from './virtio/errors';
export type { VirtioErrorCode } from './virtio/errors';
export type { TransportMetrics } from './virtio/mmio';
export type { SerialMetrics } from './devices/serial/serial';
export type { I8042Metrics } from './devices/i8042/i8042';
export type { BlockMetrics } from './devices/block/device';
export { SnapshotError } from './snapshot/errors';
export type { SnapshotErrorCode, SnapshotErrorDetails } from './snapshot/errors';
export { VirtualSwitch, SwitchError } from './net/switch';
export type { VirtualSwitchOptions, SwitchMetrics, SwitchPortMetrics, SwitchErrorCode, MacTableEntry } from './net/switch';
export { MmdsError } from './devices/net/mmds/store';
export type { MmdsErrorCode, JsonValue } from './devices/net/mmds/store';
export type { NicOptions, NicUpdateOptions, MmdsOptions, FrameSwitch } from './devices/net/config';
export type { NetMetrics } from './devices/net/device';
export type { MmdsStoreMetrics } from './devices/net/mmds/store';
export { VsockError } from './devices/vsock/errors';
export type { VsockErrorCode } from './devices/vsock/errors';
export type { VsockOptions } from './devices/vsock/config';
export type { VsockConnectOptions, VsockListener, VsockMetrics } from './devices/vsock/device';
export { InvokeError } from './invoke/errors';
export type { InvokeErrorCode } from './invoke/errors';
export type { InvokeOptions, InvokePayload, InvokeResult } from './invoke/client';
export { DEFAULT_INVOKE_PORT, DEFAULT_INVOKE_TIMEOUT_MS } from './invoke/client';
export { EntropyError } from './devices/rng/errors';
export type { EntropyErrorCode } from './devices/rng/errors';
export type { EntropyOptions } from './devices/rng/config';
export type { EntropyMetrics } from './devices/rng/device';
export { BalloonError } from './devices/balloon/errors';
export type { BalloonErrorCode } from './devices/balloon/errors';
export type { BalloonOptions, BalloonUpdate } from './devices/balloon/config';
export type { BalloonStats, BalloonMetrics } from './devices/balloon/device';
