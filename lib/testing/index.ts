/**
 * `kindling/testing`: what a user needs to test code built on Kindling.
 *
 * - A mock virtio driver ({@link MockMmioDriver}, {@link MockVirtqueue}, {@link BumpAllocator})
 *   that lays out split virtqueues in a {@link GuestMemory} and drives a device through the real
 *   virtio-mmio transport, so a device of your own can be unit-tested without KVM.
 * - The freestanding test guests the package ships ({@link testGuest}, {@link TEST_GUESTS}), so a
 *   host application's test can boot a real microVM in milliseconds without a kernel download.
 *
 * ```ts
 * import { GuestMemory } from 'kindling';
 * import { MockMmioDriver, BumpAllocator, MockIrq } from 'kindling/testing';
 * import { MmioTransport } from 'kindling/testing';
 * const mem = GuestMemory.anonymous(1 << 20);
 * const transport = new MmioTransport(new MyDevice(), { mem, irq: new MockIrq() });
 * const [q] = new MockMmioDriver(transport, mem).bringUp(new BumpAllocator(mem), [256]);
 * ```
 * @module
 */
export * from './mock-driver';
export * from './guests';
export { MmioTransport } from '../virtio/mmio';
export type { MmioTransportEffects, MmioTransportState } from '../virtio/mmio';
export { GuestMemory } from '../memory/guest-memory';
