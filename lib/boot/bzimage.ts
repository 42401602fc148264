/**
 * bzImage loader for the 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
 * Protocol"): the protected-mode part of the image is loaded at 1 MiB and entered at +0x200; the
 * real-mode setup code is never run, but its setup header is kept for the zero page.
 * @module
 */

import type { GuestMemory } from '../memory/guest-memory';
import { BootError, hex } from './errors';
import { HIMEM_START } from './layout';
import {
  BOOT_FLAG_MAGIC,
  HDRS_MAGIC,
  HDR_BOOT_FLAG,
  HDR_CMDLINE_SIZE,
  HDR_HEADER,
  HDR_INITRD_ADDR_MAX,
  HDR_INIT_SIZE,
  HDR_JUMP,
  HDR_KERNEL_ALIGNMENT,
  HDR_LOADFLAGS,
  HDR_MAX_END,
  HDR_PREF_ADDRESS,
  HDR_RELOCATABLE_KERNEL,
  HDR_SETUP_SECTS,
  HDR_START_OF_HEADER,
  HDR_VERSION,
  HDR_XLOADFLAGS,
  LOADED_HIGH,
  MIN_BZIMAGE_PROTOCOL,
  STARTUP_64_OFFSET,
  XLF_KERNEL_64,
} from './setup-header';

/** Sector size the setup code is measured in. */
export const SECTOR_SIZE = 512;
/** `setup_sects` value to use when the header says 0 (boot.rst: "for backwards compatibility"). */
export const DEFAULT_SETUP_SECTS = 4;
/** Where we load the protected-mode kernel (the traditional code32_start). */
export const BZIMAGE_LOAD_ADDR = HIMEM_START;

/** A validated bzImage. */
export interface BzImage {
  /** Protocol version, e.g. 0x020f. */
  version: number;
  /** The image's setup header bytes, file offsets [0x1F1, end of header). */
  setupHeader: Uint8Array;
  /** File offset of the protected-mode kernel. */
  payloadOffset: number;
  /** Length of the protected-mode kernel. */
  payloadSize: number;
  /** Guest physical address the payload is loaded at. */
  loadAddr: number;
  /** 64-bit entry point (load address + 0x200). */
  entry: number;
  /** Where the kernel will run once it has moved itself (boot.rst, init_size). */
  runtimeStart: number;
  /** Bytes the kernel needs from {@link BzImage.runtimeStart} before it reads the E820 map. */
  initSize: number;
  /** End of everything the kernel may touch early: above it the initrd is safe. */
  kernelEnd: number;
  /** Highest address the initrd may occupy (`initrd_addr_max`). */
  initrdAddrMax: number;
  /** Longest command line, without its NUL (`cmdline_size`). */
  cmdlineSize: number;
}

/** Whether `image` carries a boot protocol header ("HdrS" at 0x202 and 0xAA55 at 0x1FE). */
export function isBzImage(image: Uint8Array): boolean {
  if (image.length < HDR_HEADER + 4) return false;
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return v.getUint16(HDR_BOOT_FLAG, true) === BOOT_FLAG_MAGIC && v.getUint32(HDR_HEADER, true) === HDRS_MAGIC;
}

function bad(message: string): BootError {
  return new BootError('BAD_IMAGE', `bzImage: ${message}`);
}

/**
 * Validates a bzImage without touching guest memory. `image` may be the start of the file only
 * (at least the setup header) when `fileSize` gives the whole file's size.
 * @throws BootError BAD_IMAGE, UNSUPPORTED_PROTOCOL
 */
export function parseBzImage(image: Uint8Array, fileSize: number = image.length): BzImage {
  if (!isBzImage(image)) throw bad('no boot protocol header (HdrS at 0x202, 0xAA55 at 0x1FE)');
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const version = v.getUint16(HDR_VERSION, true);
  if (version < MIN_BZIMAGE_PROTOCOL) {
    throw new BootError('UNSUPPORTED_PROTOCOL', `bzImage: boot protocol ${hex(version)} is older than ${hex(MIN_BZIMAGE_PROTOCOL)} (2.12), which declares the 64-bit entry`);
  }
  const headerEnd = HDR_START_OF_HEADER + image[HDR_JUMP + 1];
  if (headerEnd < HDR_INIT_SIZE + 4 || headerEnd > HDR_MAX_END || headerEnd > image.length) {
    throw bad(`setup header end ${hex(headerEnd)} is inconsistent with protocol ${hex(version)}`);
  }
  const xloadflags = v.getUint16(HDR_XLOADFLAGS, true);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new BootError('UNSUPPORTED_PROTOCOL', 'bzImage: xloadflags lacks XLF_KERNEL_64: not a 64-bit kernel');
  }
  if ((image[HDR_LOADFLAGS] & LOADED_HIGH) === 0) {
    throw new BootError('UNSUPPORTED_PROTOCOL', 'bzImage: loadflags lacks LOADED_HIGH (zImage kernels are not supported)');
  }
  const setupSects = image[HDR_SETUP_SECTS] || DEFAULT_SETUP_SECTS;
  const payloadOffset = (setupSects + 1) * SECTOR_SIZE;
  if (payloadOffset >= fileSize) throw bad(`setup code (${setupSects} sectors) reaches past the end of the file`);
  const payloadSize = fileSize - payloadOffset;
  if (payloadSize <= STARTUP_64_OFFSET) throw bad(`protected-mode kernel of ${payloadSize} bytes ends before its 64-bit entry at +0x200`);

  const alignment = v.getUint32(HDR_KERNEL_ALIGNMENT, true);
  const relocatable = image[HDR_RELOCATABLE_KERNEL] !== 0;
  const prefAddressBig = v.getBigUint64(HDR_PREF_ADDRESS, true);
  if (prefAddressBig >= 1n << 52n) throw bad(`pref_address ${hex(prefAddressBig)} is out of range`);
  const prefAddress = Number(prefAddressBig);
  const initSize = v.getUint32(HDR_INIT_SIZE, true);
  const loadAddr = BZIMAGE_LOAD_ADDR;
  // boot.rst, init_size: a relocatable kernel runs at pref_address if loaded below it, else at the
  // load address rounded up to kernel_alignment; a fixed one always runs at pref_address.
  let runtimeStart: number;
  if (relocatable) {
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) throw bad(`kernel_alignment ${hex(alignment)} is not a power of two`);
    runtimeStart = loadAddr < prefAddress ? prefAddress : Math.ceil(loadAddr / alignment) * alignment;
  } else {
    runtimeStart = prefAddress;
  }
  if (runtimeStart < HIMEM_START) throw bad(`kernel runtime address ${hex(runtimeStart)} is below 1 MiB`);
  const kernelEnd = Math.max(loadAddr + payloadSize, runtimeStart + initSize);
  return {
    version,
    setupHeader: image.slice(HDR_SETUP_SECTS, headerEnd),
    payloadOffset,
    payloadSize,
    loadAddr,
    entry: loadAddr + STARTUP_64_OFFSET,
    runtimeStart,
    initSize,
    kernelEnd,
    initrdAddrMax: v.getUint32(HDR_INITRD_ADDR_MAX, true),
    cmdlineSize: v.getUint32(HDR_CMDLINE_SIZE, true),
  };
}

/**
 * Validates `image` and copies its protected-mode kernel to {@link BZIMAGE_LOAD_ADDR}.
 * @throws BootError BAD_IMAGE, UNSUPPORTED_PROTOCOL, NO_ROOM (the image or the kernel's init_size
 * does not fit in guest RAM)
 */
export function loadBzImage(mem: GuestMemory, image: Uint8Array): BzImage {
  const bz = parseBzImage(image);
  if (!mem.checkRange(bz.loadAddr, bz.payloadSize)) {
    throw new BootError('NO_ROOM', `bzImage: ${bz.payloadSize} bytes at ${hex(bz.loadAddr)} do not fit in guest memory`);
  }
  if (!mem.checkRange(bz.runtimeStart, bz.initSize)) {
    throw new BootError('NO_ROOM', `bzImage: the kernel needs ${hex(bz.initSize)} bytes at ${hex(bz.runtimeStart)} (init_size), beyond guest memory`);
  }
  mem.write(bz.loadAddr, image.subarray(bz.payloadOffset));
  return bz;
}
