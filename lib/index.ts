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
 * @packageDocumentation
 */
export { MicroVM } from './vm/microvm';
export type { VmState, MicroVMEvents } from './vm/microvm';
export { ConfigError, VmError } from './vm/errors';
export type { ConfigErrorCode, VmErrorCode } from './vm/errors';
export type { MicroVMOptions, KernelOptions, DriveOptions, HostQuirksMode } from './vm/config';
export { MIN_VCPUS, MAX_VCPUS, MIN_MEMORY_MIB, MAX_MEMORY_MIB, MAX_CMDLINE_BYTES, DEFAULT_CMDLINE } from './vm/config';
export type { ExitInfo } from './vm/machine';
export type { VmMetrics, DeviceMetrics, ExitCounters } from './vm/metrics';
export { MemoryError } from './memory/guest-memory';
export type { MemoryErrorCode } from './memory/guest-memory';
export { NativeError, isKvmAvailable } from './native/binding';
export type { NativeErrorCode, KvmAvailability } from './native/binding';
export { BootError } from './boot/errors';
export type { BootErrorCode } from './boot/errors';
export type { TokenBucketConfig, RateLimiterConfig } from './ratelimit';
export { RateLimitError } from './ratelimit';
export type { RateLimitErrorCode } from './ratelimit/errors';
export { VirtualSwitch, SwitchError } from './net/switch';
export type { VirtualSwitchOptions, SwitchMetrics, SwitchPortMetrics, SwitchErrorCode, MacTableEntry } from './net/switch';
export { MmdsError } from './devices/net/mmds/store';
export type { MmdsErrorCode, JsonValue } from './devices/net/mmds/store';
export type { NicOptions, NicUpdateOptions, MmdsOptions, FrameSwitch } from './devices/net/config';
export type { NetMetrics } from './devices/net/device';
export type { MmdsStoreMetrics } from './devices/net/mmds/store';
