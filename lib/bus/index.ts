/**
 * Address decoding for guest port I/O and MMIO, and the interrupt-line abstraction devices use.
 *
 * Devices see offsets relative to their own window; they never learn where they are mapped.
 * @module
 */
import { KindlingError } from '../errors';

/** A device that answers guest reads and writes inside its window. */
export interface BusDevice {
  /** A guest read of `size` (1, 2 or 4) bytes at `offset`; the result is masked to `size` bytes. */
  read(offset: number, size: number): number;
  /** A guest write of `size` bytes; `value` holds them little-endian. */
  write(offset: number, size: number, value: number): void;
}

/** An interrupt input of the VM's interrupt controller, as a device drives it. */
export interface IrqLine {
  /** Level-triggered use: assert (`true`) or deassert (`false`) the line. */
  setLevel(level: boolean): void;
  /** Edge use: one assert/deassert pulse (through an irqfd where there is one). */
  trigger(): void;
}

/** Why the bus refused a mapping. */
export type BusErrorCode = 'OVERLAP' | 'BAD_RANGE';

/** A refused bus mapping. */
export class BusError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: BusErrorCode;
  constructor(code: BusErrorCode, message: string) {
    super(message);
    this.name = 'BusError';
    this.code = code;
  }
}

interface Mapping {
  base: number;
  end: number;
  device: BusDevice;
}

/**
 * One address space (ports or MMIO). Reads of unmapped addresses return all ones, as on a PC bus
 * with nothing driving it; unmapped writes are dropped. Both are counted.
 */
export class IoBus {
  private mappings: Mapping[] = [];
  /** Accesses that hit no device. */
  unmappedAccesses = 0;

  /** Maps `device` at `[base, base+len)`. */
  insert(base: number, len: number, device: BusDevice): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(len) || base < 0 || len <= 0) {
      throw new BusError('BAD_RANGE', `bad bus range ${base}+${len}`);
    }
    const end = base + len;
    for (const m of this.mappings) {
      if (base < m.end && m.base < end) {
        throw new BusError('OVERLAP', `range 0x${base.toString(16)}+0x${len.toString(16)} overlaps 0x${m.base.toString(16)}`);
      }
    }
    this.mappings.push({ base, end, device });
    this.mappings.sort((a, b) => a.base - b.base);
  }

  /** The device and offset for `addr`, or undefined. */
  private lookup(addr: number, size: number): Mapping | undefined {
    for (const m of this.mappings) {
      if (addr >= m.base && addr + size <= m.end) return m;
    }
    return undefined;
  }

  /** Dispatches a read. */
  read(addr: number, size: number): number {
    const m = this.lookup(addr, size);
    if (!m) {
      this.unmappedAccesses++;
      return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    }
    return m.device.read(addr - m.base, size);
  }

  /** Dispatches a write. */
  write(addr: number, size: number, value: number): void {
    const m = this.lookup(addr, size);
    if (!m) {
      this.unmappedAccesses++;
      return;
    }
    m.device.write(addr - m.base, size, value);
  }
}
