/**
 * The KVM set-up of a machine as one description ({@link VmSetup}) that the addon performs off
 * the JavaScript thread (`NativeKvm.createVmAsync`): VM, interrupt controller, PIT, guest RAM and
 * its slots, the kernel and initrd read from their files straight into guest RAM, and every
 * vCPU's CPUID, MSRs, LAPIC wiring and boot registers (vcpu-setup.ts). What goes into it is
 * decided here, with the boot and CPU modules; the addon only performs it.
 * @module
 */
import { closeSync, readSync } from 'fs';
import * as boot from '../boot';
import { splitRegions } from '../memory/guest-memory';
import { MAX_MEMORY_BUFFER, type GuestLoad, type VcpuSetup, type VmSetup } from '../native/types';
import { ConfigError } from '../config';
import type { HostResources } from './host-resources';

/** Where KVM puts the 3-page TSS and the identity-map page that VMX real mode needs (Firecracker's choice). */
export const KVM_TSS_ADDRESS = 0xfffbd000;
/** See {@link KVM_TSS_ADDRESS}. */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;
/** KVM_PIT_SPEAKER_DUMMY: the PIT's speaker port is handled in the kernel and makes no exits. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** A kernel file's start, enough to plan its loading, and its size. */
export interface KernelHead {
  /** The first {@link boot.kernelHeadLength} bytes (or the whole file if it is shorter). */
  head: Uint8Array;
  /** The file's size. */
  size: number;
}

/** Most bytes read to find a kernel's headers. */
const MAX_KERNEL_HEAD = 1 << 20;

/** A boot image (kernel or initrd) opened for the set-up: its path (for messages) and descriptor. */
export interface OpenedImage {
  /** The path the configuration names. */
  path: string;
  /** Open for reading; owned by whoever called {@link openImages}, closed by {@link closeImages}. */
  fd: number;
  /** The file's size in bytes. */
  size: number;
}

/** The kernel and initrd of a boot, opened. */
export interface OpenedImages {
  /** The kernel image. */
  kernel: OpenedImage;
  /** The initrd, when there is one. */
  initrd?: OpenedImage;
}

/**
 * Opens the kernel and initrd through the machine's host resources (by path in this process; in a
 * jailed child, descriptors its parent passed), so that the addon reads them by descriptor and
 * never needs a path.
 * @throws ConfigError KERNEL_NOT_FOUND / INITRD_NOT_FOUND
 */
export function openImages(resources: Pick<HostResources, 'openImage'>, kernel: { path: string; initrd?: string }): OpenedImages {
  const open = (path: string, code: 'KERNEL_NOT_FOUND' | 'INITRD_NOT_FOUND'): OpenedImage => {
    try {
      const f = resources.openImage(path);
      return { path, fd: f.fd, size: f.size };
    } catch (e) {
      throw new ConfigError(code, `cannot read the ${code === 'KERNEL_NOT_FOUND' ? 'kernel' : 'initrd'} ${path}: ${(e as Error).message}`);
    }
  };
  const k = open(kernel.path, 'KERNEL_NOT_FOUND');
  if (kernel.initrd === undefined) return { kernel: k };
  try {
    return { kernel: k, initrd: open(kernel.initrd, 'INITRD_NOT_FOUND') };
  } catch (e) {
    closeImages({ kernel: k });
    throw e;
  }
}

/** Closes what {@link openImages} opened (idempotent per descriptor: errors are ignored). */
export function closeImages(images: OpenedImages): void {
  for (const f of [images.kernel, images.initrd]) {
    if (f) try { closeSync(f.fd); } catch { /* already closed */ }
  }
}

/**
 * Reads the start of a kernel file (4 KiB: headers only, never the image). Synchronous on purpose:
 * one small read costs tens of microseconds, where the promise API's thread-pool round trip costs
 * half a millisecond of start latency, more when the pool is busy with other VMs' set-up.
 */
export function readKernelHead(image: OpenedImage): KernelHead {
  const { fd, size } = image;
  const read = (n: number): Uint8Array => {
    const buf = Buffer.alloc(Math.min(n, size));
    const bytesRead = readSync(fd, buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead);
  };
  let head = read(boot.KERNEL_HEAD_BYTES);
  const need = boot.kernelHeadLength(head);
  // Program headers further on (never seen in kernels; bounded, the file size caps it anyway).
  if (need > head.length && need <= size && need <= MAX_KERNEL_HEAD) head = read(need);
  return { head, size };
}

/** What {@link planImages} decided: the kernel's loading and where the initrd goes. */
export interface ImagePlan {
  /** The kernel file and its plan. */
  kernel: { image: OpenedImage; plan: boot.KernelPlan };
  /** The initrd file and where it goes. */
  initrd?: { image: OpenedImage; placement: boot.InitrdPlacement };
}

/**
 * Plans the kernel's and the initrd's loading into `memSize` bytes of guest RAM from the kernel's
 * headers and the initrd's size, so that a bad image costs no KVM set-up.
 * @throws ConfigError KERNEL_NOT_FOUND when the kernel cannot be read; BootError for an image that does not load
 */
export function planImages(images: OpenedImages, memSize: number): ImagePlan {
  let head: KernelHead;
  try {
    head = readKernelHead(images.kernel);
  } catch (e) {
    throw new ConfigError('KERNEL_NOT_FOUND', `cannot read the kernel ${images.kernel.path}: ${(e as Error).message}`);
  }
  const plan = boot.planKernel(head.head, head.size, memSize);
  if (images.initrd === undefined) return { kernel: { image: images.kernel, plan } };
  const placement = boot.placeInitrd(images.initrd.size, plan.kernel.kernelEnd, boot.lowMemoryEnd(memSize), plan.kernel.initrdAddrMax);
  return { kernel: { image: images.kernel, plan }, initrd: { image: images.initrd, placement } };
}

/** One region of guest RAM: its slot, which buffer backs it and where, and its place in a memory file. */
export interface RamPiece {
  /** Guest physical address. */
  guestAddr: number;
  /** Bytes. */
  size: number;
  /** KVM memory slot. */
  slot: number;
  /** Index of the buffer ({@link RamLayout.buffers}) that backs it. */
  buffer: number;
  /** Where it starts in that buffer. */
  byteOffset: number;
  /** Where it starts in a snapshot's memory file (the regions one after the other). */
  fileOffset: number;
}

/** Guest RAM as buffers and regions (see {@link ramLayout}). */
export interface RamLayout {
  /** Buffer sizes. */
  buffers: number[];
  /** The regions of {@link boot.memoryRegions}, split where a buffer ends. */
  regions: RamPiece[];
}

/**
 * Guest RAM for a fresh machine: one anonymous mapping (and buffer) for all of it when it fits the
 * addon's 4 GiB buffer limit, else one per piece of at most 4 GiB (`splitRegions`). The memory
 * file of a snapshot lays the regions out one after the other (`fileOffset`).
 */
export function ramLayout(memSize: number): RamLayout {
  const layout = boot.memoryRegions(memSize);
  if (memSize <= MAX_MEMORY_BUFFER) {
    let offset = 0;
    const regions = layout.map((r, slot) => {
      const piece = { guestAddr: r.guestAddr, size: r.size, slot, buffer: 0, byteOffset: offset, fileOffset: offset };
      offset += r.size;
      return piece;
    });
    return { buffers: [memSize], regions };
  }
  let fileOffset = 0;
  const regions = splitRegions(layout, MAX_MEMORY_BUFFER).map((r, slot) => {
    const piece = { guestAddr: r.guestAddr, size: r.size, slot, buffer: slot, byteOffset: 0, fileOffset };
    fileOffset += r.size;
    return piece;
  });
  return { buffers: regions.map((r) => r.size), regions };
}

/** The VM-wide part every machine has: TSS and identity map, in-kernel irqchip, PIT with a dummy speaker. */
function baseSetup(): Pick<VmSetup, 'tssAddr' | 'identityMapAddr' | 'irqchip' | 'pit2Flags'> {
  return { tssAddr: KVM_TSS_ADDRESS, identityMapAddr: KVM_IDENTITY_MAP_ADDRESS, irqchip: true, pit2Flags: KVM_PIT_SPEAKER_DUMMY };
}

/**
 * The set-up of a machine that boots a kernel: RAM laid out by {@link ramLayout} with its slots,
 * the kernel's and initrd's file ranges read into it, then `writes` (the boot structures,
 * {@link boot.bootMemoryImage}), and the vCPUs as given.
 */
export function bootVmSetup(ram: RamLayout, images: ImagePlan, writes: boot.GuestBytes[], vcpus: VcpuSetup[]): VmSetup {
  const { kernel, initrd } = images;
  const loads: GuestLoad[] = kernel.plan.loads.map((l) => ({ fd: kernel.image.fd, name: kernel.image.path, ...l }));
  if (initrd) {
    loads.push({ fd: initrd.image.fd, name: initrd.image.path, fileOffset: 0, length: initrd.placement.size, guestAddr: initrd.placement.addr });
  }
  return {
    ...baseSetup(),
    memory: ram.buffers,
    slots: ram.regions.map((r) => ({ slot: r.slot, guestAddr: r.guestAddr, buffer: r.buffer, offset: r.byteOffset, size: r.size })),
    loads,
    writes,
    vcpus,
  };
}

/**
 * The set-up of a machine restored from a snapshot: the VM and `vcpuCount` bare vCPUs; memory,
 * registers and device state come from the snapshot afterwards.
 */
export function restoreVmSetup(vcpuCount: number): VmSetup {
  return { ...baseSetup(), memory: [], vcpus: Array.from({ length: vcpuCount }, (_, id) => ({ id })) };
}
