/**
 * An in-process Ethernet switch: VMs (through `vm.nic(id, { link: sw })`) and host code (through
 * {@link VirtualSwitch.attach}) plug ports into it, and it forwards frames between them the way a
 * learning bridge does (IEEE 802.1D's forwarding process, without spanning tree):
 *
 * - the source address of every frame is learned on the port it came from (multicast sources are
 *   invalid and dropped), entries age out after `agingTimeMs` and the table is bounded;
 * - a frame to a learned unicast address goes to that port only (or nowhere, if it came from
 *   there); broadcast, multicast and unknown unicast frames are flooded to every other port;
 * - each port buffers at most `portQueueFrames` frames its reader has not taken; beyond that,
 *   frames to it are dropped and counted, so a port nobody reads never grows memory.
 *
 * Switches connect to each other with {@link VirtualSwitch.connect}, which refuses to close a loop
 * (a switch without spanning tree would flood a looped broadcast forever); trees of switches work.
 * Frames are Buffers shared between the ports they are flooded to: receivers must not modify them.
 * @module
 */
import { Duplex } from 'stream';
import { KindlingError } from '../errors';

/** Why a switch operation was refused. */
export type SwitchErrorCode =
  /** Connecting the two switches would close a loop (or they are the same switch). */
  | 'LOOP'
  /** The switch is closed. */
  | 'CLOSED'
  /** An option is out of range. */
  | 'BAD_OPTION';

/** A refused switch operation. */
export class SwitchError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: SwitchErrorCode;
  /**
   * @param code why
   * @param message details for humans
   */
  constructor(code: SwitchErrorCode, message: string) {
    super(message);
    this.name = 'SwitchError';
    this.code = code;
  }
}

/** Options of a {@link VirtualSwitch}. */
export interface VirtualSwitchOptions {
  /** How long a learned address stays valid without traffic from it (default 300000 ms, 802.1D's). */
  agingTimeMs?: number;
  /** Largest number of learned addresses (default 4096); the least recently seen is evicted. */
  maxMacEntries?: number;
  /** Frames buffered toward a port whose reader lags (default 256); more are dropped. */
  portQueueFrames?: number;
  /** Largest frame accepted, in bytes (default 65553: a 64 KiB packet with Ethernet and VLAN headers). */
  maxFrameSize?: number;
  /** Monotonic milliseconds (default `performance.now`); tests inject a fake clock for aging. */
  clock?: () => number;
}

/** Counters of one port. */
export interface SwitchPortMetrics {
  /** Frames the port sent into the switch. */
  readonly rxFrames: number;
  /** Bytes the port sent into the switch. */
  readonly rxBytes: number;
  /** Frames the switch delivered to the port. */
  readonly txFrames: number;
  /** Bytes the switch delivered to the port. */
  readonly txBytes: number;
  /** Frames for the port dropped because its reader lagged. */
  readonly txDrops: number;
  /** Frames from the port dropped as invalid (too short or long, multicast source, not bytes). */
  readonly rxInvalid: number;
}

/** Counters of the switch. */
export interface SwitchMetrics {
  /** Ports attached now. */
  readonly ports: number;
  /** Addresses in the table now (aged ones included until they are looked up or evicted). */
  readonly macEntries: number;
  /** Frames sent to exactly one learned port. */
  readonly forwarded: number;
  /** Frames flooded (broadcast, multicast, unknown or aged unicast). */
  readonly flooded: number;
  /** Frames not sent anywhere because their destination is on the port they came from. */
  readonly filtered: number;
  /** Frames dropped as invalid. */
  readonly invalid: number;
  /** Addresses learned (new entries). */
  readonly learned: number;
  /** Addresses that moved to another port. */
  readonly moved: number;
  /** Entries found aged out and removed. */
  readonly aged: number;
  /** Entries evicted because the table was full. */
  readonly evicted: number;
  /** Each attached port's counters, by port number. */
  readonly portMetrics: Readonly<Record<number, SwitchPortMetrics>>;
}

/** One entry of {@link VirtualSwitch.macTable}. */
export interface MacTableEntry {
  /** The address, `aa:bb:cc:dd:ee:ff`. */
  readonly mac: string;
  /** The port it was learned on. */
  readonly port: number;
  /** Milliseconds since a frame from it was seen. */
  readonly ageMs: number;
}

const DEFAULT_AGING_MS = 300_000;
const DEFAULT_MAX_ENTRIES = 4096;
const DEFAULT_PORT_QUEUE = 256;
const DEFAULT_MAX_FRAME = 65535 + 14 + 4;
const MIN_FRAME = 14;

/** A 48-bit MAC at `off` as a number (exact: below 2^53). */
function macKey(b: Uint8Array, off: number): number {
  return (b[off] * 0x10000000000) + (b[off + 1] * 0x100000000) + ((b[off + 2] << 24) >>> 0) + (b[off + 3] << 16) + (b[off + 4] << 8) + b[off + 5];
}

function macText(key: number): string {
  return key.toString(16).padStart(12, '0').replace(/(..)(?=.)/g, '$1:');
}

/**
 * A port of a {@link VirtualSwitch}: an objectMode Duplex, one Buffer per frame each way. Users
 * see it as a Duplex (from {@link VirtualSwitch.attach}); its number and counters are available
 * through the switch.
 */
export class SwitchPort extends Duplex {
  /** Port number, unique within its switch. */
  readonly portId: number;
  /** @internal */
  readonly counters = { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, txDrops: 0, rxInvalid: 0 };
  private readonly sw: VirtualSwitch;
  private readonly queueFrames: number;

  /** @internal Created by {@link VirtualSwitch.attach}. */
  constructor(sw: VirtualSwitch, portId: number, queueFrames: number) {
    super({ objectMode: true, readableHighWaterMark: queueFrames, writableHighWaterMark: queueFrames });
    this.sw = sw;
    this.portId = portId;
    this.queueFrames = queueFrames;
  }

  /** Counters of this port. */
  metrics(): SwitchPortMetrics {
    return { ...this.counters };
  }

  /** @internal A frame the switch sends out of this port. */
  deliver(frame: Buffer): void {
    if (this.destroyed || this.readableEnded || this.readableLength >= this.queueFrames) {
      this.counters.txDrops++;
      return;
    }
    this.counters.txFrames++;
    this.counters.txBytes += frame.length;
    this.push(frame);
  }

  /** Frames are pushed as they arrive; there is nothing to fetch. */
  override _read(): void {}

  /** A frame written to the port enters the switch. */
  override _write(chunk: unknown, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.sw.ingress(this, chunk);
    callback();
  }

  /** Leaving the switch. */
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.sw.detach(this);
    callback(error);
  }
}

/** A MAC-learning switch; see the module comment. */
export class VirtualSwitch {
  private readonly agingMs: number;
  private readonly maxEntries: number;
  private readonly portQueue: number;
  private readonly maxFrame: number;
  private readonly clock: () => number;
  private readonly ports = new Map<number, SwitchPort>();
  /** MAC → where and when; insertion order is least recently seen first (re-inserted on refresh). */
  private readonly table = new Map<number, { port: SwitchPort; seen: number }>();
  /** Switches this one is connected to with {@link connect}. */
  private readonly neighbours = new Set<VirtualSwitch>();
  private nextPort = 1;
  private closed = false;
  private readonly c = { forwarded: 0, flooded: 0, filtered: 0, invalid: 0, learned: 0, moved: 0, aged: 0, evicted: 0 };

  /** @throws SwitchError BAD_OPTION */
  constructor(options: VirtualSwitchOptions = {}) {
    const int = (v: unknown, name: string, min: number, fallback: number): number => {
      if (v === undefined) return fallback;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new SwitchError('BAD_OPTION', `${name} must be an integer ≥ ${min}`);
      return v;
    };
    this.agingMs = int(options.agingTimeMs, 'agingTimeMs', 1, DEFAULT_AGING_MS);
    this.maxEntries = int(options.maxMacEntries, 'maxMacEntries', 1, DEFAULT_MAX_ENTRIES);
    this.portQueue = int(options.portQueueFrames, 'portQueueFrames', 1, DEFAULT_PORT_QUEUE);
    this.maxFrame = int(options.maxFrameSize, 'maxFrameSize', MIN_FRAME, DEFAULT_MAX_FRAME);
    this.clock = options.clock ?? (() => performance.now());
  }

  /**
   * A new port, an objectMode Duplex: write frames (Buffers) to it to send them into the switch,
   * read it (or listen for 'data') to receive what the switch forwards to it. Destroy it to leave
   * the switch.
   * @throws SwitchError CLOSED
   */
  attach(): Duplex {
    return this.attachPort();
  }

  private attachPort(): SwitchPort {
    if (this.closed) throw new SwitchError('CLOSED', 'the switch is closed');
    const port = new SwitchPort(this, this.nextPort++, this.portQueue);
    this.ports.set(port.portId, port);
    return port;
  }

  /** The number of a port this switch attached (as in {@link macTable} and metrics), or undefined. */
  portNumber(port: Duplex): number | undefined {
    return port instanceof SwitchPort && this.ports.get(port.portId) === port ? port.portId : undefined;
  }

  /**
   * Connects this switch to `other` with a pair of ports piped into each other. Refused when the
   * two are already connected, directly or through other switches (that would close a loop).
   * Returns the two ports; destroying either disconnects the switches.
   * @throws SwitchError LOOP, CLOSED
   */
  connect(other: VirtualSwitch): [Duplex, Duplex] {
    if (this.closed || other.closed) throw new SwitchError('CLOSED', 'the switch is closed');
    if (other === this || this.reaches(other)) throw new SwitchError('LOOP', 'the switches are already connected: another link would close a loop');
    const a = this.attachPort();
    const b = other.attachPort();
    a.pipe(b);
    b.pipe(a);
    this.neighbours.add(other);
    other.neighbours.add(this);
    const unlink = () => {
      this.neighbours.delete(other);
      other.neighbours.delete(this);
      a.destroy();
      b.destroy();
    };
    a.once('close', unlink);
    b.once('close', unlink);
    return [a, b];
  }

  private reaches(target: VirtualSwitch): boolean {
    const seen = new Set<VirtualSwitch>([this]);
    const todo: VirtualSwitch[] = [this];
    while (todo.length > 0) {
      for (const n of todo.pop()!.neighbours) {
        if (n === target) return true;
        if (!seen.has(n)) {
          seen.add(n);
          todo.push(n);
        }
      }
    }
    return false;
  }

  /** @internal A frame from `port`. Never throws. */
  ingress(port: SwitchPort, chunk: unknown): void {
    if (this.closed || !this.ports.has(port.portId)) return;
    if (!(chunk instanceof Uint8Array) || chunk.length < MIN_FRAME || chunk.length > this.maxFrame || chunk[6] & 1) {
      port.counters.rxInvalid++;
      this.c.invalid++;
      return;
    }
    const frame = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    port.counters.rxFrames++;
    port.counters.rxBytes += frame.length;
    const now = this.clock();
    this.learn(macKey(frame, 6), port, now);
    if (frame[0] & 1) {
      this.flood(port, frame);
      return;
    }
    const dst = macKey(frame, 0);
    const entry = this.table.get(dst);
    if (entry !== undefined && now - entry.seen > this.agingMs) {
      this.table.delete(dst);
      this.c.aged++;
    } else if (entry !== undefined) {
      if (entry.port === port) this.c.filtered++;
      else {
        this.c.forwarded++;
        entry.port.deliver(frame);
      }
      return;
    }
    this.flood(port, frame);
  }

  private learn(src: number, port: SwitchPort, now: number): void {
    if (src === 0) return;
    const entry = this.table.get(src);
    if (entry !== undefined) {
      if (entry.port !== port) this.c.moved++;
      this.table.delete(src);
    } else {
      this.c.learned++;
      while (this.table.size >= this.maxEntries) {
        this.table.delete(this.table.keys().next().value as number);
        this.c.evicted++;
      }
    }
    this.table.set(src, { port, seen: now });
  }

  private flood(from: SwitchPort, frame: Buffer): void {
    this.c.flooded++;
    for (const p of this.ports.values()) if (p !== from) p.deliver(frame);
  }

  /** @internal A port left: forget it and what was learned on it. */
  detach(port: SwitchPort): void {
    if (!this.ports.delete(port.portId)) return;
    for (const [mac, e] of this.table) if (e.port === port) this.table.delete(mac);
  }

  /** Learned addresses that have not aged out. */
  macTable(): MacTableEntry[] {
    const now = this.clock();
    const out: MacTableEntry[] = [];
    for (const [mac, e] of this.table) {
      const age = now - e.seen;
      if (age <= this.agingMs) out.push({ mac: macText(mac), port: e.port.portId, ageMs: age });
    }
    return out;
  }

  /** Counters of the switch and of each port (by port number). */
  metrics(): SwitchMetrics {
    const portMetrics: Record<number, SwitchPortMetrics> = {};
    for (const p of this.ports.values()) portMetrics[p.portId] = p.metrics();
    return { ...this.c, ports: this.ports.size, macEntries: this.table.size, portMetrics };
  }

  /** Destroys every port; the switch forwards nothing more. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.ports.values()]) p.destroy();
    this.table.clear();
  }
}
