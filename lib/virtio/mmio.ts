/**
 * The virtio-mmio transport, version 2 (virtio 1.2 §4.2): the register window a guest driver uses
 * to negotiate features, configure queues and drive the device status state machine.
 *
 * Interrupts are edge-style by default: every new interrupt cause is one `irq.trigger()` (an irqfd
 * write under KVM, as Firecracker does for virtio-mmio), and InterruptACK only clears the
 * InterruptStatus bits. With `irqMode: 'level'` the line is instead held with `setLevel(true)`
 * while any InterruptStatus bit is set and dropped when the driver has acknowledged them all.
 *
 * Nothing the guest writes can make this class throw: bad accesses are counted and ignored, device
 * and queue failures become DEVICE_NEEDS_RESET (§2.1.2).
 * @module
 */
import type { BusDevice, IrqLine } from '../bus';
import type { GuestMemory } from '../memory/guest-memory';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG,
  VIRTIO_MMIO_CONFIG_GENERATION,
  VIRTIO_MMIO_DEVICE_FEATURES,
  VIRTIO_MMIO_DEVICE_FEATURES_SEL,
  VIRTIO_MMIO_DEVICE_ID,
  VIRTIO_MMIO_DRIVER_FEATURES,
  VIRTIO_MMIO_DRIVER_FEATURES_SEL,
  VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS,
  VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_MMIO_MAGIC_VALUE,
  VIRTIO_MMIO_QUEUE_DESC_HIGH,
  VIRTIO_MMIO_QUEUE_DESC_LOW,
  VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
  VIRTIO_MMIO_QUEUE_DEVICE_LOW,
  VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
  VIRTIO_MMIO_QUEUE_DRIVER_LOW,
  VIRTIO_MMIO_QUEUE_NOTIFY,
  VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_NUM_MAX,
  VIRTIO_MMIO_QUEUE_READY,
  VIRTIO_MMIO_QUEUE_RESET,
  VIRTIO_MMIO_QUEUE_SEL,
  VIRTIO_MMIO_SHM_BASE_HIGH,
  VIRTIO_MMIO_SHM_BASE_LOW,
  VIRTIO_MMIO_SHM_LEN_HIGH,
  VIRTIO_MMIO_SHM_LEN_LOW,
  VIRTIO_MMIO_SHM_SEL,
  VIRTIO_MMIO_STATUS,
  VIRTIO_MMIO_VENDOR_ID,
  VIRTIO_MMIO_VENDOR_KINDLING,
  VIRTIO_MMIO_VERSION,
  VIRTIO_MMIO_VERSION_2,
  VIRTIO_STATUS_ACKNOWLEDGE,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_DRIVER_OK,
  VIRTIO_STATUS_FAILED,
  VIRTIO_STATUS_FEATURES_OK,
  featureBit,
  hasFeature,
} from './constants';
import type { VirtioDevice, VirtioDeviceContext, VirtioInterrupt } from './device';
import { Queue, type QueueState } from './queue';
import { VirtioError } from './errors';
import type { StateObject } from '../devices/contract';

/** Counters of one virtio-mmio transport (in `vm.metrics()` under each virtio device's `transport`). */
export interface TransportMetrics {
  /** Queue notifications received (ioeventfd or QueueNotify writes). */
  readonly notifications: number;
  /** Notifications for a queue that could not be processed (not ready, broken, before DRIVER_OK). */
  readonly ignoredNotifications: number;
  /** Queue runs continued on a later event-loop turn because the pop budget ran out. */
  readonly deferredRuns: number;
  /** Interrupts raised (used-buffer and configuration change). */
  readonly interrupts: number;
  /** Configuration change interrupts raised (config updates and DEVICE_NEEDS_RESET). */
  readonly configChangeInterrupts: number;
  /** Device config space reads. */
  readonly configReads: number;
  /** Device config space writes. */
  readonly configWrites: number;
  /** Register accesses of a wrong size, alignment, offset or at a wrong time. */
  readonly invalidAccesses: number;
  /** Times the device entered DEVICE_NEEDS_RESET. */
  readonly needsResetEvents: number;
  /** Driver resets (status 0). */
  readonly resets: number;
  /** DRIVER_OK activations. */
  readonly activations: number;
  /** FEATURES_OK refused because the driver accepted features that were not offered. */
  readonly featureNegotiationFailures: number;
  /** Exceptions from the device model (caught). */
  readonly deviceErrors: number;
  /** Failures raising the interrupt line. */
  readonly irqErrors: number;
  /** The device status register. */
  readonly status: number;
  /** ConfigGeneration. */
  readonly configGeneration: number;
}

/** Saved state of a {@link MmioTransport} (see {@link MmioTransport.saveState}). */
export interface MmioTransportState extends StateObject {
  /** Status register (§2.1). */
  deviceStatus: number;
  /** InterruptStatus. */
  interruptStatus: number;
  /** ConfigGeneration. */
  configGeneration: number;
  /** DeviceFeaturesSel. */
  deviceFeaturesSel: number;
  /** DriverFeaturesSel. */
  driverFeaturesSel: number;
  /** Driver features, a u64 as a decimal string. */
  driverFeatures: string;
  /** QueueSel. */
  queueSel: number;
  /** SHMSel. */
  shmSel: number;
  /** The device was activated (DRIVER_OK with valid queues). */
  activated: boolean;
  /** The device failed and waits for a reset. */
  halted: boolean;
  /** A config change waits for DRIVER_OK to be announced. */
  configChangePending: boolean;
  /** Per queue: descLo, descHi, driverLo, driverHi, deviceLo, deviceHi as the driver wrote them. */
  queueAddressRegs: number[][];
  /** Per queue: {@link QueueState}. */
  queues: StateObject[];
  /** The device's own saved state (its `saveState()`). */
  device: StateObject;
}

/** Side effects the transport is wired to. */
export interface MmioTransportEffects {
  /** Guest memory holding the queues. */
  mem: GuestMemory;
  /** The device's interrupt line. */
  irq: IrqLine;
  /** `'edge'` (default): one trigger() per interrupt; `'level'`: setLevel while InterruptStatus ≠ 0. */
  irqMode?: 'edge' | 'level';
  /**
   * Runs `fn` later on the event loop (default `setImmediate`): used to continue a queue whose
   * pop budget ran out, so one busy queue cannot monopolise the loop.
   */
  defer?: (fn: () => void) => void;
}

/** Chains processed per notification before the rest is deferred, as a multiple of the queue size. */
export const POP_BUDGET_PER_QUEUE_SIZE = 4;

/** Features the transport and {@link Queue} implement for every device. */
const TRANSPORT_FEATURES =
  featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) | featureBit(VIRTIO_F_EVENT_IDX);

/** Status bits a driver may set, in the order §3.1.1 sets them. */
const STATUS_SEQUENCE = [
  VIRTIO_STATUS_ACKNOWLEDGE,
  VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_FEATURES_OK,
  VIRTIO_STATUS_DRIVER_OK,
] as const;
const DRIVER_STATUS_BITS =
  VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_FAILED;

const U32_MASK = 0xffffffff;
const TWO_32 = 0x100000000;

/** A guest u64 address from two register halves; -1 (always invalid) when it exceeds 2^53. */
function composeAddress(lo: number, hi: number): number {
  return hi >= 0x200000 ? -1 : hi * TWO_32 + lo;
}

/** Register halves of one queue's three ring addresses, kept so each half can be written alone. */
interface QueueAddressRegs {
  descLo: number;
  descHi: number;
  driverLo: number;
  driverHi: number;
  deviceLo: number;
  deviceHi: number;
}

function zeroRegs(): QueueAddressRegs {
  return { descLo: 0, descHi: 0, driverLo: 0, driverHi: 0, deviceLo: 0, deviceHi: 0 };
}

/** A virtio device behind a virtio-mmio v2 register window. */
export class MmioTransport implements BusDevice {
  /** The device model. */
  readonly device: VirtioDevice;
  /** The device's queues, indexed like `device.queueMaxSizes`. */
  readonly queues: Queue[];
  /** Everything offered: device features plus VERSION_1, INDIRECT_DESC and EVENT_IDX. */
  readonly offeredFeatures: bigint;

  private readonly mem: GuestMemory;
  private readonly irq: IrqLine;
  private readonly levelIrq: boolean;
  private readonly addrRegs: QueueAddressRegs[];
  private readonly defer: (fn: () => void) => void;
  /** Queues with a deferred continuation scheduled. */
  private readonly deferred: boolean[];

  private deviceStatus = 0;
  private interruptStatus = 0;
  private configGeneration = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  private shmSel = 0;
  private activated = false;
  /**
   * The configuration changed while a driver was initializing (status ≠ 0, DRIVER_OK not yet
   * set): it may already have read the old values, so the change is announced at DRIVER_OK.
   */
  private configChangePending = false;
  /** Device-level failure: no queue is processed until reset. */
  private halted = false;
  /** Bumped on every reset so callbacks from a previous activation are recognised and dropped. */
  private epoch = 0;

  private readonly counters = {
    notifications: 0,
    ignoredNotifications: 0,
    deferredRuns: 0,
    interrupts: 0,
    configReads: 0,
    configWrites: 0,
    invalidAccesses: 0,
    needsResetEvents: 0,
    resets: 0,
    activations: 0,
    configChangeInterrupts: 0,
    featureNegotiationFailures: 0,
    deviceErrors: 0,
    irqErrors: 0,
  };

  /**
   * @param device the device model; its `queueMaxSizes` define the queues.
   * @param effects guest memory and the interrupt line.
   */
  constructor(device: VirtioDevice, effects: MmioTransportEffects) {
    this.device = device;
    this.mem = effects.mem;
    this.irq = effects.irq;
    this.levelIrq = effects.irqMode === 'level';
    this.queues = device.queueMaxSizes.map((n) => new Queue(n));
    this.addrRegs = this.queues.map(() => zeroRegs());
    this.deferred = this.queues.map(() => false);
    this.defer = effects.defer ?? ((fn) => void setImmediate(fn));
    this.offeredFeatures = device.deviceFeatures | TRANSPORT_FEATURES;
  }

  /** The device status register (§2.1). */
  get status(): number {
    return this.deviceStatus;
  }

  /** Features both offered and accepted by the driver. */
  get ackedFeatures(): bigint {
    return this.driverFeatures & this.offeredFeatures;
  }

  /** Counters: notifications, interrupts, config accesses, invalid accesses, needs-reset events... */
  metrics(): TransportMetrics {
    return { ...this.counters, status: this.deviceStatus, configGeneration: this.configGeneration };
  }

  // ---------------------------------------------------------------------------------------------
  // BusDevice

  /** A guest read in the window; registers below 0x100 answer only aligned 32-bit reads. */
  read(offset: number, size: number): number {
    if (offset >= VIRTIO_MMIO_CONFIG) return this.readConfig(offset - VIRTIO_MMIO_CONFIG, size);
    if (size !== 4 || (offset & 3) !== 0) {
      this.counters.invalidAccesses++;
      return 0;
    }
    const q = this.queues[this.queueSel];
    switch (offset) {
      case VIRTIO_MMIO_MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case VIRTIO_MMIO_VERSION:
        return VIRTIO_MMIO_VERSION_2;
      case VIRTIO_MMIO_DEVICE_ID:
        return this.device.deviceType;
      case VIRTIO_MMIO_VENDOR_ID:
        return VIRTIO_MMIO_VENDOR_KINDLING;
      case VIRTIO_MMIO_DEVICE_FEATURES:
        if (this.deviceFeaturesSel > 1) return 0;
        return Number((this.offeredFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn);
      case VIRTIO_MMIO_QUEUE_NUM_MAX:
        return q ? q.maxSize : 0;
      case VIRTIO_MMIO_QUEUE_READY:
        return q && q.ready ? 1 : 0;
      case VIRTIO_MMIO_INTERRUPT_STATUS:
        return this.interruptStatus;
      case VIRTIO_MMIO_STATUS:
        return this.deviceStatus;
      case VIRTIO_MMIO_SHM_LEN_LOW:
      case VIRTIO_MMIO_SHM_LEN_HIGH:
        // No shared memory regions: every SHMSel names a non-existent one, whose length is -1.
        return U32_MASK;
      case VIRTIO_MMIO_SHM_BASE_LOW:
      case VIRTIO_MMIO_SHM_BASE_HIGH:
        return U32_MASK;
      case VIRTIO_MMIO_QUEUE_RESET:
        // VIRTIO_F_RING_RESET is not offered.
        return 0;
      case VIRTIO_MMIO_CONFIG_GENERATION:
        return this.configGeneration;
      default:
        this.counters.invalidAccesses++;
        return 0;
    }
  }

  /** A guest write in the window; registers below 0x100 accept only aligned 32-bit writes. */
  write(offset: number, size: number, value: number): void {
    if (offset >= VIRTIO_MMIO_CONFIG) {
      this.writeConfig(offset - VIRTIO_MMIO_CONFIG, size, value);
      return;
    }
    if (size !== 4 || (offset & 3) !== 0) {
      this.counters.invalidAccesses++;
      return;
    }
    value = value >>> 0;
    switch (offset) {
      case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
        this.deviceFeaturesSel = value;
        return;
      case VIRTIO_MMIO_DRIVER_FEATURES:
        this.writeDriverFeatures(value);
        return;
      case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
        this.driverFeaturesSel = value;
        return;
      case VIRTIO_MMIO_QUEUE_SEL:
        this.queueSel = value;
        return;
      case VIRTIO_MMIO_QUEUE_NUM:
      case VIRTIO_MMIO_QUEUE_READY:
      case VIRTIO_MMIO_QUEUE_DESC_LOW:
      case VIRTIO_MMIO_QUEUE_DESC_HIGH:
      case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
      case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
      case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
      case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
        this.writeQueueRegister(offset, value);
        return;
      case VIRTIO_MMIO_QUEUE_NOTIFY:
        // Without VIRTIO_F_NOTIFICATION_DATA the value is just the queue index (§4.2.2).
        this.notify(value);
        return;
      case VIRTIO_MMIO_INTERRUPT_ACK:
        this.ackInterrupt(value);
        return;
      case VIRTIO_MMIO_STATUS:
        this.writeStatus(value & 0xff);
        return;
      case VIRTIO_MMIO_SHM_SEL:
        this.shmSel = value;
        return;
      default:
        this.counters.invalidAccesses++;
        return;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Device-facing API

  /**
   * A notification for queue `queueIndex` (from an ioeventfd watcher or a QueueNotify write).
   * Ignored (and counted) for a non-existent, not-ready or broken queue and before DRIVER_OK.
   * Never throws.
   */
  notify(queueIndex: number): void {
    this.counters.notifications++;
    if (!this.runQueue(queueIndex)) this.counters.ignoredNotifications++;
  }

  /** Runs processQueue under a pop budget; false if the queue cannot be processed now. */
  private runQueue(queueIndex: number): boolean {
    const q = Number.isInteger(queueIndex) ? this.queues[queueIndex] : undefined;
    if (!q || !this.activated || this.halted || !q.ready || q.broken) return false;
    q.setPopBudget(POP_BUDGET_PER_QUEUE_SIZE * q.size);
    let exhausted = false;
    try {
      this.device.processQueue(queueIndex);
    } catch {
      this.counters.deviceErrors++;
      // A queue-level failure (the device let pop's error through) stops that queue only.
      if (!q.broken) this.halted = true;
      this.needsReset();
      return true;
    } finally {
      exhausted = q.popBudgetExhausted;
      q.setPopBudget(Infinity);
    }
    for (const other of this.queues) {
      if (other.broken) {
        this.needsReset();
        break;
      }
    }
    if (exhausted && !q.broken && !this.halted && !this.deferred[queueIndex]) {
      this.deferred[queueIndex] = true;
      const epoch = this.epoch;
      this.defer(() => {
        if (epoch !== this.epoch) return;
        this.deferred[queueIndex] = false;
        this.counters.deferredRuns++;
        this.runQueue(queueIndex);
      });
    }
    return true;
  }

  /**
   * The device configuration changed: bump ConfigGeneration and raise a configuration change
   * interrupt (§2.5, §4.2.2). A driver that is still initializing may already have read the old
   * values (Linux's virtio-blk reads the capacity, then sets DRIVER_OK), and a notification before
   * DRIVER_OK would be premature, so such a change is announced when the driver sets DRIVER_OK.
   */
  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if (this.deviceStatus & VIRTIO_STATUS_DRIVER_OK) this.raiseConfigChange();
    else if (this.deviceStatus !== 0) this.configChangePending = true;
  }

  private raiseConfigChange(): void {
    this.counters.configChangeInterrupts++;
    this.raise(VIRTIO_MMIO_INT_CONFIG);
  }

  /**
   * Enter DEVICE_NEEDS_RESET (§2.1.2); if the driver is running, tell it with a configuration
   * change interrupt. Idempotent until the next reset.
   */
  needsReset(): void {
    if (this.deviceStatus & VIRTIO_STATUS_DEVICE_NEEDS_RESET) return;
    this.deviceStatus |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    this.counters.needsResetEvents++;
    if (this.deviceStatus & VIRTIO_STATUS_DRIVER_OK) this.raiseConfigChange();
  }

  // ---------------------------------------------------------------------------------------------
  // Internals

  private readConfig(offset: number, size: number): number {
    this.counters.configReads++;
    if (size !== 1 && size !== 2 && size !== 4) {
      this.counters.invalidAccesses++;
      return 0;
    }
    try {
      const v = this.device.readConfig(offset, size);
      return size === 4 ? v >>> 0 : v & ((1 << (size * 8)) - 1);
    } catch {
      this.counters.deviceErrors++;
      return 0;
    }
  }

  private writeConfig(offset: number, size: number, value: number): void {
    this.counters.configWrites++;
    if (size !== 1 && size !== 2 && size !== 4) {
      this.counters.invalidAccesses++;
      return;
    }
    try {
      this.device.writeConfig(offset, size, value);
    } catch {
      this.counters.deviceErrors++;
    }
  }

  /** Features may be written after DRIVER and before FEATURES_OK (§3.1.1 steps 3-5). */
  private writeDriverFeatures(value: number): void {
    const s = this.deviceStatus;
    const open = (s & VIRTIO_STATUS_DRIVER) !== 0 && (s & (VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_FAILED)) === 0;
    if (!open || this.driverFeaturesSel > 1) {
      this.counters.invalidAccesses++;
      return;
    }
    const shift = BigInt(32 * this.driverFeaturesSel);
    this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value) << shift);
  }

  /**
   * Queue registers are writable after FEATURES_OK and before DRIVER_OK, and (except QueueReady)
   * only while the selected queue is not ready (§4.2.3.2).
   */
  private writeQueueRegister(offset: number, value: number): void {
    const q = this.queues[this.queueSel];
    const s = this.deviceStatus;
    const open =
      (s & VIRTIO_STATUS_FEATURES_OK) !== 0 && (s & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_FAILED)) === 0;
    if (!q || !open || (q.ready && offset !== VIRTIO_MMIO_QUEUE_READY)) {
      this.counters.invalidAccesses++;
      return;
    }
    const r = this.addrRegs[this.queueSel];
    switch (offset) {
      case VIRTIO_MMIO_QUEUE_NUM:
        q.setSize(value); // validated at DRIVER_OK
        return;
      case VIRTIO_MMIO_QUEUE_READY:
        q.setReady(value === 1);
        return;
      case VIRTIO_MMIO_QUEUE_DESC_LOW:
        r.descLo = value;
        break;
      case VIRTIO_MMIO_QUEUE_DESC_HIGH:
        r.descHi = value;
        break;
      case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
        r.driverLo = value;
        break;
      case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
        r.driverHi = value;
        break;
      case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
        r.deviceLo = value;
        break;
      case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
        r.deviceHi = value;
        break;
    }
    q.setAddresses(composeAddress(r.descLo, r.descHi), composeAddress(r.driverLo, r.driverHi), composeAddress(r.deviceLo, r.deviceHi));
  }

  private ackInterrupt(value: number): void {
    this.interruptStatus &= ~value;
    if (this.levelIrq && this.interruptStatus === 0) this.setIrqLevel(false);
  }

  /**
   * The status state machine (§2.1, §3.1.1): 0 resets; otherwise the driver may only add bits, in
   * order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, and may set FAILED at any time. Anything else
   * is counted and ignored. DEVICE_NEEDS_RESET belongs to the device and is preserved.
   */
  private writeStatus(value: number): void {
    if (value === 0) {
      this.reset();
      return;
    }
    const keep = this.deviceStatus & VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    const old = this.deviceStatus & DRIVER_STATUS_BITS;
    const wanted = value & ~VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    if ((wanted & ~DRIVER_STATUS_BITS) !== 0 || (wanted & old) !== old) {
      this.counters.invalidAccesses++;
      return;
    }
    if (wanted & VIRTIO_STATUS_FAILED) {
      this.deviceStatus |= VIRTIO_STATUS_FAILED;
      return;
    }
    let cur = old;
    const added = wanted & ~old;
    for (const bit of STATUS_SEQUENCE) {
      if (!(added & bit)) continue;
      // Each step needs all earlier steps done.
      const prereq = STATUS_SEQUENCE.slice(0, STATUS_SEQUENCE.indexOf(bit)).reduce((a, b) => a | b, 0);
      if ((cur & prereq) !== prereq) {
        this.counters.invalidAccesses++;
        break;
      }
      if (bit === VIRTIO_STATUS_FEATURES_OK && !this.featuresAcceptable()) {
        // §2.2.2 / §3.1.1: leaving FEATURES_OK clear tells the driver the subset is unusable.
        this.counters.featureNegotiationFailures++;
        break;
      }
      if (bit === VIRTIO_STATUS_DRIVER_OK) {
        this.deviceStatus = cur | keep;
        this.activate();
        return;
      }
      cur |= bit;
    }
    this.deviceStatus = cur | keep;
  }

  /** The driver accepted only offered features, and VERSION_1 among them. */
  private featuresAcceptable(): boolean {
    return (this.driverFeatures & ~this.offeredFeatures) === 0n && hasFeature(this.driverFeatures, VIRTIO_F_VERSION_1);
  }

  /** DRIVER_OK: validate the ready queues, then hand them to the device. */
  private activate(): void {
    this.deviceStatus |= VIRTIO_STATUS_DRIVER_OK;
    if (!this.validateQueues()) return;
    const acked = this.ackedFeatures;
    for (const q of this.queues) {
      if (q.ready) q.setFeatures(hasFeature(acked, VIRTIO_F_EVENT_IDX), hasFeature(acked, VIRTIO_F_INDIRECT_DESC));
    }
    this.counters.activations++;
    this.activateDevice();
    if (this.configChangePending) {
      this.configChangePending = false;
      this.raiseConfigChange();
    }
  }

  /** Checks every ready queue against guest memory; halts the device (NEEDS_RESET) if one is unusable. */
  private validateQueues(): boolean {
    for (const q of this.queues) {
      if (q.ready && !q.isValid(this.mem)) {
        this.halted = true;
        this.needsReset();
        return false;
      }
    }
    return true;
  }

  /** Hands the device a context bound to the current epoch (DRIVER_OK, or a restore). */
  private activateDevice(): void {
    const epoch = this.epoch;
    const live = () => epoch === this.epoch && this.activated;
    const interrupt: VirtioInterrupt = {
      signalUsedQueue: (queueIndex: number) => {
        if (live() && this.queues[queueIndex]) this.raise(VIRTIO_MMIO_INT_VRING);
      },
      signalConfigChange: () => {
        if (epoch === this.epoch) this.configChanged();
      },
    };
    const ctx: VirtioDeviceContext = {
      mem: this.mem,
      queues: this.queues,
      interrupt,
      ackedFeatures: this.ackedFeatures,
      needsReset: () => {
        if (epoch !== this.epoch) return;
        this.halted = true;
        this.needsReset();
      },
      schedule: (fn) => this.defer(() => {
        if (live()) fn();
      }),
    };
    this.activated = true;
    try {
      this.device.activate(ctx);
    } catch {
      this.counters.deviceErrors++;
      this.halted = true;
      this.needsReset();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // State

  /**
   * The transport's registers, every queue's state and the device's own state, as plain data.
   * Call with the vCPUs paused.
   */
  saveState(): MmioTransportState {
    return {
      deviceStatus: this.deviceStatus,
      interruptStatus: this.interruptStatus,
      configGeneration: this.configGeneration,
      deviceFeaturesSel: this.deviceFeaturesSel,
      driverFeaturesSel: this.driverFeaturesSel,
      driverFeatures: this.driverFeatures.toString(),
      queueSel: this.queueSel,
      shmSel: this.shmSel,
      activated: this.activated,
      halted: this.halted,
      configChangePending: this.configChangePending,
      queueAddressRegs: this.addrRegs.map((r) => [r.descLo, r.descHi, r.driverLo, r.driverHi, r.deviceLo, r.deviceHi]),
      queues: this.queues.map((q) => q.saveState() as unknown as StateObject),
      device: this.device.saveState(),
    };
  }

  /**
   * Continues from {@link saveState}'s result on a transport that has not been used yet: registers
   * and queues first, then (if the driver had set DRIVER_OK) the device is activated over the
   * restored queues, then the device restores its own state. A pending interrupt is raised again
   * so that the guest, which may not have seen it before the snapshot, does not wait forever.
   * @throws VirtioError BAD_QUEUE_STATE, DeviceError BAD_STATE for a state that does not fit.
   */
  restoreState(state: MmioTransportState): void {
    const bad = (what: string) => new VirtioError('BAD_QUEUE_STATE', `transport state: ${what}`);
    if (state === null || typeof state !== 'object') throw bad('not an object');
    const u32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= U32_MASK;
    for (const k of ['deviceStatus', 'interruptStatus', 'configGeneration', 'deviceFeaturesSel', 'driverFeaturesSel', 'queueSel', 'shmSel'] as const) {
      if (!u32(state[k])) throw bad(k);
    }
    if (state.deviceStatus > 0xff) throw bad('deviceStatus');
    if (typeof state.driverFeatures !== 'string' || !/^[0-9]{1,20}$/.test(state.driverFeatures) || BigInt(state.driverFeatures) >= 1n << 64n) throw bad('driverFeatures');
    for (const k of ['activated', 'halted', 'configChangePending'] as const) {
      if (typeof state[k] !== 'boolean') throw bad(k);
    }
    if (!Array.isArray(state.queues) || state.queues.length !== this.queues.length) throw bad(`expected ${this.queues.length} queues`);
    if (!Array.isArray(state.queueAddressRegs) || state.queueAddressRegs.length !== this.queues.length ||
        state.queueAddressRegs.some((r) => !Array.isArray(r) || r.length !== 6 || !r.every(u32))) {
      throw bad('queueAddressRegs');
    }
    if (state.device === null || typeof state.device !== 'object' || Array.isArray(state.device)) throw bad('device');
    // Queues first (each checks its own state) on copies, so a bad one changes nothing.
    const restored = this.queues.map((q) => new Queue(q.maxSize));
    restored.forEach((q, i) => q.restoreState(state.queues[i] as unknown as QueueState));
    if (state.activated && restored.some((q) => q.ready && !q.isValid(this.mem))) throw bad('a ready queue lies outside guest memory');

    restored.forEach((q, i) => this.queues[i].restoreState(q.saveState()));
    state.queueAddressRegs.forEach((r, i) => {
      this.addrRegs[i] = { descLo: r[0], descHi: r[1], driverLo: r[2], driverHi: r[3], deviceLo: r[4], deviceHi: r[5] };
    });
    this.deviceStatus = state.deviceStatus;
    this.interruptStatus = state.interruptStatus;
    this.configGeneration = state.configGeneration;
    this.deviceFeaturesSel = state.deviceFeaturesSel;
    this.driverFeaturesSel = state.driverFeaturesSel;
    this.driverFeatures = BigInt(state.driverFeatures);
    this.queueSel = state.queueSel;
    this.shmSel = state.shmSel;
    this.halted = state.halted;
    this.configChangePending = state.configChangePending;
    this.activated = false;
    try {
      if (state.activated) this.activateDevice();
      this.device.restoreState(state.device as StateObject);
    } catch (e) {
      // The device refused its part: leave transport and device as they were before, at reset.
      this.reset();
      throw e;
    }
    if (this.interruptStatus !== 0) {
      if (this.levelIrq) this.setIrqLevel(true);
      else this.safeTrigger();
    }
  }

  /** Writing 0 to Status (§2.4): back to the initial state, device told to drop everything. */
  private reset(): void {
    this.epoch++;
    this.counters.resets++;
    try {
      this.device.reset();
    } catch {
      this.counters.deviceErrors++;
    }
    for (const q of this.queues) q.reset();
    this.deferred.fill(false);
    for (let i = 0; i < this.addrRegs.length; i++) this.addrRegs[i] = zeroRegs();
    this.deviceStatus = 0;
    this.driverFeatures = 0n;
    this.deviceFeaturesSel = 0;
    this.driverFeaturesSel = 0;
    this.queueSel = 0;
    this.shmSel = 0;
    this.activated = false;
    this.halted = false;
    this.configChangePending = false;
    if (this.interruptStatus !== 0 && this.levelIrq) this.setIrqLevel(false);
    this.interruptStatus = 0;
  }

  private raise(cause: number): void {
    this.interruptStatus |= cause;
    this.counters.interrupts++;
    if (this.levelIrq) this.setIrqLevel(true);
    else this.safeTrigger();
  }

  private safeTrigger(): void {
    try {
      this.irq.trigger();
    } catch {
      this.counters.irqErrors++;
    }
  }

  private setIrqLevel(level: boolean): void {
    try {
      this.irq.setLevel(level);
    } catch {
      this.counters.irqErrors++;
    }
  }

  /** Which shared memory region is selected (none exist). */
  get selectedShmRegion(): number {
    return this.shmSel;
  }
}
