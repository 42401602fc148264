/**
 * The device manager: the one path by which a device joins a machine.
 *
 * For a virtio device it allocates the next virtio-mmio window and GSI, wraps the device in an
 * {@link MmioTransport}, connects an irqfd for its interrupt and one ioeventfd per queue for its
 * notifications, maps the window on the MMIO bus and records the `virtio_mmio.device=`
 * announcement. For a legacy port device it maps the port window. Either way it keeps the device
 * by id for updates, collects its metrics, saves and restores its state, and closes it exactly
 * once at teardown (after which every fd and watch it made is released).
 *
 * Layout: virtio device `i` (in attach order) lives at {@link VIRTIO_MMIO_BASE} + i × 4 KiB and
 * raises GSI {@link VIRTIO_FIRST_IRQ} + i; Linux probes command-line devices in the order they are
 * announced, so the first drive attached is `/dev/vda` and the first NIC `eth0`.
 * @module
 */
import type { IoBus, BusDevice, IrqLine } from '../bus';
import type { GuestMemory } from '../memory/guest-memory';
import type { NativeAddon, NativeVm, FdWatch } from '../native/types';
import type { Device, DeviceStateRecord, StateObject } from '../devices/contract';
import { DeviceError } from '../devices/contract';
import type { VirtioDevice } from '../virtio/device';
import { MmioTransport, type MmioTransportState, type TransportMetrics } from '../virtio/mmio';
import { VIRTIO_MMIO_QUEUE_NOTIFY } from '../virtio/constants';

/** First virtio-mmio window; device i lives at base + i * 4 KiB with GSI {@link VIRTIO_FIRST_IRQ} + i. */
export const VIRTIO_MMIO_BASE = 0xd0000000;
/** Size of one virtio-mmio window. */
export const VIRTIO_MMIO_WINDOW = 0x1000;
/** GSI of the first virtio-mmio device (0-4 are taken by the PIT, keyboard, cascade and COM1). */
export const VIRTIO_FIRST_IRQ = 5;
/** The IOAPIC has 24 pins: GSIs 5..23 are free for virtio devices, so at most 19 of them. */
export const MAX_VIRTIO_DEVICES = 24 - VIRTIO_FIRST_IRQ;

/**
 * Where the `index`-th virtio device (in attach order) is placed. With the boot timer in the first
 * window (Firecracker's layout), the virtio windows start one window later; GSIs do not move.
 */
export function virtioPlacement(index: number, bootTimer = false): VirtioPlacement {
  return { base: VIRTIO_MMIO_BASE + (index + (bootTimer ? 1 : 0)) * VIRTIO_MMIO_WINDOW, irq: VIRTIO_FIRST_IRQ + index };
}

/** The `virtio_mmio.device=` command-line argument announcing a device at `p`. */
export function announcement(p: VirtioPlacement): string {
  return `virtio_mmio.device=4K@0x${p.base.toString(16)}:${p.irq}`;
}

/** An irqfd-backed edge interrupt for a virtio device. */
class IrqFdLine implements IrqLine {
  constructor(private readonly addon: NativeAddon, private readonly fd: number) {}
  setLevel(level: boolean): void {
    // virtio-mmio interrupts are delivered as edges (as Firecracker does); a deassert needs no action.
    if (level) this.trigger();
  }
  trigger(): void {
    this.addon.eventfdWrite(this.fd, 1);
  }
}

/** Where a virtio device was placed. */
export interface VirtioPlacement {
  /** Guest physical base of its register window. */
  base: number;
  /** Its GSI. */
  irq: number;
}

interface Slot {
  device: Device;
  transport?: MmioTransport;
  placement?: VirtioPlacement;
}

/** One device's entry in `vm.metrics().devices`. */
export interface DeviceMetricsEntry {
  /** {@link Device.kind}. */
  kind: string;
  /** The device's own counters. */
  metrics: object;
  /** The virtio-mmio transport's counters, for virtio devices. */
  transport?: TransportMetrics;
}

/** Effects the manager needs from the machine. */
export interface DeviceManagerEnv {
  addon: NativeAddon;
  vm: NativeVm;
  memory: GuestMemory;
  pio: IoBus;
  mmio: IoBus;
  /**
   * Runs before a queue notification reaches its device: handles the vCPU exits queued before
   * the kick (QueueReady, DRIVER_OK are posted writes) so the device sees the queue as the guest
   * set it up.
   */
  beforeNotify(): void;
  /** The boot timer occupies the first virtio-mmio window (see {@link virtioPlacement}). */
  bootTimer?: boolean;
}

/** See the module comment. */
export class DeviceManager {
  private readonly slots = new Map<string, Slot>();
  private readonly fds: number[] = [];
  private readonly watches: FdWatch[] = [];
  private virtioCount = 0;
  private closing: Promise<{ id: string; error: string }[]> | undefined;

  constructor(private readonly env: DeviceManagerEnv) {}

  /**
   * Maps a legacy device on the port bus at `[base, base+len)`.
   * @throws DeviceError DUPLICATE_ID
   */
  attachPio(device: Device & BusDevice, base: number, len: number): void {
    this.claimId(device);
    this.env.pio.insert(base, len, device);
    this.slots.set(device.id, { device });
  }

  /**
   * Adds a device that is on no bus (a service other devices use, such as the metadata store):
   * it gets an id, metrics, state and teardown like every other device.
   * @throws DeviceError DUPLICATE_ID
   */
  attach(device: Device): void {
    this.claimId(device);
    this.slots.set(device.id, { device });
  }

  /**
   * Maps a non-virtio device on the MMIO bus at `[base, base+len)` (the boot timer).
   * @throws DeviceError DUPLICATE_ID
   */
  attachMmio(device: Device & BusDevice, base: number, len: number): void {
    this.claimId(device);
    this.env.mmio.insert(base, len, device);
    this.slots.set(device.id, { device });
  }

  /**
   * Attaches a virtio device: window, GSI, transport, irqfd, ioeventfds, bus mapping.
   * @throws DeviceError DUPLICATE_ID; a NativeError when KVM refuses the irqfd or an ioeventfd
   */
  attachVirtio(device: VirtioDevice): VirtioPlacement {
    this.claimId(device);
    if (this.virtioCount >= MAX_VIRTIO_DEVICES) {
      throw new DeviceError('BAD_UPDATE', `at most ${MAX_VIRTIO_DEVICES} virtio devices fit the interrupt controller`);
    }
    const { addon, vm, memory } = this.env;
    const index = this.virtioCount++;
    const placement = virtioPlacement(index, this.env.bootTimer);
    const irqFd = this.eventfd();
    vm.irqfd(irqFd, placement.irq);
    const transport = new MmioTransport(device, { mem: memory, irq: new IrqFdLine(addon, irqFd) });
    // QueueNotify goes to an ioeventfd per queue: the guest's kick never exits to JavaScript.
    for (let q = 0; q < device.queueMaxSizes.length; q++) {
      const fd = this.eventfd();
      vm.ioeventfd({ addr: placement.base + VIRTIO_MMIO_QUEUE_NOTIFY, len: 4, datamatch: q, fd });
      this.watches.push(addon.watchEventfd(fd, () => {
        this.env.beforeNotify();
        transport.notify(q);
      }));
    }
    this.env.mmio.insert(placement.base, VIRTIO_MMIO_WINDOW, transport);
    this.slots.set(device.id, { device, transport, placement });
    return placement;
  }

  /** `virtio_mmio.device=` arguments for the kernel command line, in attach order. */
  announcements(): string[] {
    const out: string[] = [];
    for (const s of this.slots.values()) {
      if (s.placement) out.push(announcement(s.placement));
    }
    return out;
  }

  /** The device with `id`, or undefined. */
  get(id: string): Device | undefined {
    return this.slots.get(id)?.device;
  }

  /**
   * Waits until no device has host I/O in flight (devices with an optional `drain()`, such as
   * virtio-blk), so that guest memory and drive contents agree before a snapshot.
   */
  async drain(): Promise<void> {
    await Promise.all([...this.slots.values()].map((s) => (s.device as { drain?: () => Promise<void> }).drain?.()));
  }

  /**
   * Tells the driver of virtio device `id` that its config space changed (a configuration change
   * interrupt, deferred to DRIVER_OK while the driver initializes).
   */
  configChanged(id: string): void {
    this.slots.get(id)?.transport?.configChanged();
  }

  /** Every device's counters (and its transport's), by id. */
  metrics(): Record<string, DeviceMetricsEntry> {
    const out: Record<string, DeviceMetricsEntry> = {};
    for (const [id, s] of this.slots) {
      out[id] = { kind: s.device.kind, metrics: s.device.metrics(), ...(s.transport ? { transport: s.transport.metrics() } : {}) };
    }
    return out;
  }

  /**
   * Every device's state, in attach order. Virtio devices are saved through their transport
   * (registers, queues, then the device's own state). Call with the vCPUs paused.
   */
  saveState(): DeviceStateRecord[] {
    return [...this.slots.values()].map(({ device, transport }) => ({
      kind: device.kind,
      id: device.id,
      version: device.stateVersion,
      state: transport ? transport.saveState() : device.saveState(),
    }));
  }

  /**
   * Restores what {@link saveState} produced onto freshly attached devices (same ids, kinds and
   * order). Every record is checked before any is applied where the check needs no device.
   * @throws DeviceError BAD_STATE naming the device that does not match
   */
  restoreState(records: readonly DeviceStateRecord[]): void {
    if (!Array.isArray(records) || records.length !== this.slots.size) {
      throw new DeviceError('BAD_STATE', `the snapshot has ${Array.isArray(records) ? records.length : 'no'} device states; this machine has ${this.slots.size} devices`);
    }
    const slots = [...this.slots.values()];
    records.forEach((r, i) => {
      const { device } = slots[i];
      if (r === null || typeof r !== 'object' || r.id !== device.id || r.kind !== device.kind) {
        throw new DeviceError('BAD_STATE', `device state ${i} is for ${String(r?.kind)} ${String(r?.id)}, but device ${i} is ${device.kind} ${device.id}`);
      }
      if (r.version !== device.stateVersion) {
        throw new DeviceError('BAD_STATE', `${device.kind} ${device.id}: state version ${String(r.version)}, this Kindling reads version ${device.stateVersion}`);
      }
    });
    records.forEach((r, i) => {
      const { device, transport } = slots[i];
      try {
        if (transport) transport.restoreState(r.state as MmioTransportState);
        else device.restoreState(r.state as StateObject);
      } catch (e) {
        if (e instanceof DeviceError) throw e;
        throw new DeviceError('BAD_STATE', `${device.kind} ${device.id}: ${(e as Error).message}`, { cause: e });
      }
    });
  }

  /**
   * Stops every notification watch and closes every device (all of them, even when some fail),
   * then releases the eventfds. Resolves with the devices whose close failed; never rejects.
   * Idempotent: later calls return the first call's result.
   */
  closeAll(): Promise<{ id: string; error: string }[]> {
    this.closing ??= (async () => {
      for (const w of this.watches.splice(0)) w.close();
      const slots = [...this.slots.values()];
      const results = await Promise.allSettled(slots.map((s) => Promise.resolve().then(() => s.device.close())));
      for (const fd of this.fds.splice(0)) {
        try { this.env.addon.closeFd(fd); } catch { /* already closed */ }
      }
      const failed: { id: string; error: string }[] = [];
      results.forEach((r, i) => {
        if (r.status === 'rejected') failed.push({ id: slots[i].device.id, error: r.reason instanceof Error ? r.reason.message : String(r.reason) });
      });
      return failed;
    })();
    return this.closing;
  }

  private claimId(device: Device): void {
    if (this.slots.has(device.id)) throw new DeviceError('DUPLICATE_ID', `a device with id ${device.id} is already attached`);
  }

  private eventfd(): number {
    const fd = this.env.addon.eventfd(0);
    this.fds.push(fd);
    return fd;
  }
}
