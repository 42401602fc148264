/**
 * Host-side dirty tracking for diff snapshots.
 *
 * KVM's dirty log only sees writes the guest makes. Devices write guest memory from the host
 * (used rings, data read from disk into guest buffers) through the mapping, which KVM never sees:
 * a diff built from KVM's log alone would miss those pages. A machine that takes diff snapshots
 * gives its devices this GuestMemory, which records every page the host may have written; the
 * snapshot ORs it with KVM's log.
 * @module
 */
import { GuestMemory, MemoryError, type RegionSpec } from '../memory/guest-memory';
import { PageBitmap } from './bitmap';

/**
 * A {@link GuestMemory} that marks in {@link hostDirty} every page written through it. A
 * {@link slice} may be written by its user, so slicing marks its pages too (a device that only
 * reads through a slice costs a larger diff, never a wrong one); {@link read} does not mark.
 */
export class DirtyTrackingGuestMemory extends GuestMemory {
  /** Pages of the memory buffer written by the host since the last {@link PageBitmap.clear}. */
  readonly hostDirty: PageBitmap;
  /** Whether writes are recorded; off until a diff-capable snapshot series starts. */
  tracking = true;

  /**
   * @param regions the guest regions; all must be ranges of one ArrayBuffer (the VM's memory mapping)
   */
  constructor(regions: RegionSpec[]) {
    super(regions);
    const buffers = new Set(this.regions.map((r) => r.buffer));
    if (buffers.size !== 1) throw new MemoryError('BAD_REGION', 'dirty tracking needs every region in one buffer');
    this.hostDirty = PageBitmap.forBytes(this.regions[0].buffer.byteLength);
  }

  private mark(addr: number, len: number): void {
    if (!this.tracking) return;
    for (const r of this.regions) {
      if (addr >= r.guestAddr && addr + len <= r.guestAddr + r.size) {
        this.hostDirty.markBytes(r.byteOffset + (addr - r.guestAddr), len);
        return;
      }
    }
  }

  override slice(addr: number, len: number): Uint8Array {
    const view = super.slice(addr, len);  // throws for bad ranges before anything is marked
    this.mark(addr, len);
    return view;
  }

  override read(addr: number, len: number): Uint8Array {
    return new Uint8Array(super.slice(addr, len));
  }

  override writeU8(addr: number, value: number): void {
    super.writeU8(addr, value);
    this.mark(addr, 1);
  }

  override writeU16(addr: number, value: number): void {
    super.writeU16(addr, value);
    this.mark(addr, 2);
  }

  override writeU32(addr: number, value: number): void {
    super.writeU32(addr, value);
    this.mark(addr, 4);
  }

  override writeU64(addr: number, value: bigint | number): void {
    super.writeU64(addr, value);
    this.mark(addr, 8);
  }
}
