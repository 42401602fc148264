/**
 * The contract between the TypeScript layers and the C++ addon in `src-native/`.
 *
 * The addon is deliberately policy-free: it issues KVM ioctls, runs one native thread per vCPU,
 * maps guest memory and plumbs file descriptors onto the Node event loop. Everything that decides
 * *what* to do (register values, device behaviour, workarounds) lives in TypeScript.
 *
 * Only `lib/native/` may load the addon; every other module receives these interfaces.
 * @module
 */

/** One CPUID leaf as `struct kvm_cpuid_entry2` carries it (all fields are u32). */
export interface CpuidEntry {
  /** EAX input (the leaf). */
  function: number;
  /** ECX input (the sub-leaf) when `flags` has KVM_CPUID_FLAG_SIGNIFCANT_INDEX. */
  index: number;
  /** KVM_CPUID_FLAG_* bits. */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** General purpose registers (`struct kvm_regs`). */
export interface Regs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** A segment register (`struct kvm_segment`). Flag fields are 0 or 1 except `type` and `dpl`. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** A descriptor-table register (`struct kvm_dtable`). */
export interface DTable {
  base: bigint;
  limit: number;
}

/** Special registers (`struct kvm_sregs`), without the interrupt bitmap. */
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment;
  tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint;
  apicBase: bigint;
}

/** The part of `struct kvm_fpu` a boot loader sets. */
export interface FpuState {
  /** x87 control word. */
  fcw: number;
  /** SSE control/status register. */
  mxcsr: number;
}

/** One model-specific register value. */
export interface MsrEntry {
  index: number;
  data: bigint;
}

/** Kinds of records the vCPU threads send to JavaScript, in the order they happened. */
export enum ExitKind {
  /** Port write (`KVM_EXIT_IO`, direction out). Posted: the vCPU did not wait. */
  PioWrite = 0,
  /** Port read. The vCPU waits for the handler's return value. */
  PioRead = 1,
  /** MMIO write (`KVM_EXIT_MMIO`, is_write). Posted. */
  MmioWrite = 2,
  /** MMIO read. The vCPU waits for the handler's return value. */
  MmioRead = 3,
}

/**
 * A vCPU exit that is not device I/O: the vCPU thread waits for the handler's verdict.
 * `reason` is the KVM_EXIT_* number; the other fields are filled where that exit carries them.
 */
export interface VcpuEventInfo {
  /**
   * KVM_EXIT_* value (e.g. 8 = SHUTDOWN, 17 = INTERNAL_ERROR, 9 = FAIL_ENTRY, 5 = HLT, 24 = SYSTEM_EVENT),
   * or -1 when KVM_RUN itself failed (then `errno` is set).
   */
  reason: number;
  /** `internal.suberror` for KVM_EXIT_INTERNAL_ERROR (1 = emulation failure). */
  suberror?: number;
  /**
   * `internal.data[0..ndata)` for KVM_EXIT_INTERNAL_ERROR, `system_event.data[0..ndata)` for
   * KVM_EXIT_SYSTEM_EVENT, `[hw.hardware_exit_reason]` for KVM_EXIT_UNKNOWN; as u64.
   */
  data?: bigint[];
  /** For emulation failures that report them: the instruction bytes (`emulation_failure.insn_bytes`). */
  insnBytes?: Buffer;
  /** `fail_entry.hardware_entry_failure_reason` for KVM_EXIT_FAIL_ENTRY. */
  hardwareEntryFailureReason?: bigint;
  /** errno when KVM_RUN itself failed with an unexpected error (the thread then stops). */
  errno?: number;
  /** `system_event.type` for KVM_EXIT_SYSTEM_EVENT (KVM_SYSTEM_EVENT_SHUTDOWN = 1, RESET = 2, CRASH = 3…). */
  systemEventType?: number;
}

/** What the vCPU thread does after a {@link VcpuEventInfo}. */
export enum VcpuVerdict {
  /** Re-enter KVM_RUN (the handler may have changed registers or injected an event meanwhile). */
  Resume = 0,
  /** Leave the run loop; the thread ends. */
  Stop = 1,
}

/** The largest buffer `NativeVm.allocateMemory` returns: 4 GiB. */
export const MAX_MEMORY_BUFFER = 2 ** 32;

/** Handlers the vCPU threads call on the JavaScript thread. Registered once per VM. */
export interface ExitHandlers {
  /**
   * Device I/O. `value` holds the written bytes (little endian, `size` ≤ 4) for writes and 0 for
   * reads; for reads the return value (masked to `size` bytes) is what the guest reads.
   * `seq` increases by one for every record of the VM; it orders posted writes and reads.
   * 8-byte accesses arrive as two 4-byte records (low half at `addr`, then high half at `addr + 4`).
   */
  io(kind: ExitKind, vcpu: number, addr: number, size: number, value: number, seq: number): number | void;
  /**
   * Non-I/O exits; the returned verdict decides whether the vCPU resumes. Only `Resume` (0)
   * resumes: any other return value, or a throw, stops the vCPU (it must not spin on an exit).
   */
  event(vcpu: number, info: VcpuEventInfo): VcpuVerdict;
  /** A vCPU thread has ended (after a Stop verdict, `stopVcpus()`, or a fatal KVM_RUN error). */
  vcpuStopped(vcpu: number): void;
  /**
   * Consecutive one-byte writes to the transmit-buffer port ({@link NativeVm.defineTransmitBuffer}),
   * in order: byte `i` was written with seq `firstSeq + i`. Without this handler the same writes
   * arrive through {@link ExitHandlers.io}, one call each. `bytes` is the handler's to keep.
   */
  pioWriteBatch?(vcpu: number, port: number, bytes: Uint8Array, firstSeq: number): void;
}

/** Counters of a VM's exit path ({@link NativeVm.exitStats}); all count from the VM's creation. */
export interface ExitStats {
  /** Records the vCPU threads queued (a transmit batch counts once). */
  records: number;
  /** Transmit batches among them. */
  txBatches: number;
  /** Bytes the transmit batches carried. */
  txBytes: number;
  /** Times a vCPU thread woke the event loop. */
  signals: number;
  /** Of which wakes that let a lone transmit batch wait for the transmit delay. */
  deferredWakes: number;
  /** Drains run from the event loop. */
  drains: number;
  /** JavaScript handler calls made (io, event, vcpuStopped, pioWriteBatch). */
  jsCalls: number;
}

/** Arguments of `KVM_IOEVENTFD`. */
export interface IoEventFdArgs {
  /** Guest physical address (MMIO) or port (PIO). */
  addr: number;
  /** Access length in bytes (1, 2, 4 or 8); 0 matches any length (MMIO only). */
  len: number;
  /** The eventfd to signal. */
  fd: number;
  /** Only writes of this value signal (KVM_IOEVENTFD_FLAG_DATAMATCH). */
  datamatch?: number;
  /** Port I/O instead of MMIO (KVM_IOEVENTFD_FLAG_PIO). */
  pio?: boolean;
  /** Remove a previous registration with the same arguments. */
  deassign?: boolean;
}

/** A registration of a fd with the event loop; `close()` unregisters it (idempotent). */
export interface FdWatch {
  close(): void;
}

/**
 * The whole architectural state of one vCPU, as {@link NativeVcpu.saveState} reads it. Every
 * Buffer holds the kernel's structure byte for byte (`struct kvm_regs`, `kvm_sregs`…), so the
 * state can be stored and given back to KVM unchanged; `null` where this host's KVM lacks the
 * capability (then the fallback in brackets carries that state).
 */
export interface NativeVcpuState {
  /** KVM_GET_MP_STATE (`KVM_MP_STATE_RUNNABLE` = 0, `UNINITIALIZED` = 1, `INIT_RECEIVED` = 2, `HALTED` = 3…). */
  mpState: number;
  /** `struct kvm_regs` (144 bytes). */
  regs: Buffer;
  /** `struct kvm_sregs` (312 bytes), the pending-interrupt bitmap included. */
  sregs: Buffer;
  /** `struct kvm_fpu` (416 bytes): x87/SSE state, used on restore only when `xsave` is null. */
  fpu: Buffer;
  /** The XSAVE area (KVM_GET_XSAVE2, else KVM_GET_XSAVE; 4096 bytes or more); null without KVM_CAP_XSAVE [fpu]. */
  xsave: Buffer | null;
  /** `struct kvm_xcrs` (392 bytes); null without KVM_CAP_XCRS. */
  xcrs: Buffer | null;
  /** `struct kvm_debugregs` (128 bytes); null without KVM_CAP_DEBUGREGS. */
  debugregs: Buffer | null;
  /** The LAPIC register page (`struct kvm_lapic_state`, 1024 bytes). */
  lapic: Buffer;
  /** `struct kvm_vcpu_events` (64 bytes): pending exception, interrupt, NMI, SIPI vector; null without KVM_CAP_VCPU_EVENTS. */
  events: Buffer | null;
  /** The MSRs read, as `struct kvm_msr_entry` records (16 bytes each: u32 index, u32 reserved, u64 data), in the order asked. */
  msrs: Buffer;
  /** MSRs that were asked for but KVM refused to read (saveState only; not restored). */
  msrsUnreadable?: number[];
  /** KVM_GET_TSC_KHZ: the guest TSC frequency; null without KVM_CAP_GET_TSC_KHZ (saveState only). */
  tscKhz?: number | null;
  /** The CPUID table the vCPU was given (KVM_GET_CPUID2), as `struct kvm_cpuid_entry2` records (40 bytes each). */
  cpuid: Buffer | null;
}

/**
 * The VM-wide in-kernel device state (`struct kvm_irqchip` for each chip, `kvm_pit_state2`,
 * `kvm_clock_data`), byte for byte; null for a device the VM does not have.
 */
export interface NativeVmState {
  /** 8259 master (`kvm_irqchip`, chip_id 0, 520 bytes). */
  picMaster: Buffer | null;
  /** 8259 slave (chip_id 1). */
  picSlave: Buffer | null;
  /** IOAPIC (chip_id 2). */
  ioapic: Buffer | null;
  /** i8254 PIT (`kvm_pit_state2`, 112 bytes). */
  pit2: Buffer | null;
  /** kvmclock (`kvm_clock_data`, 48 bytes). KVM_SET_CLOCK uses its `flags` (offset 8) as given. */
  clock: Buffer | null;
}

/** Options of {@link NativeVm.writeMemoryFile}. */
export interface WriteMemoryFileOptions {
  /**
   * Write exactly these pages (bit i, LSB first in byte i/8, is page i of the memory; one bit per
   * 4 KiB page), zero pages included. Without it every page holding a non-zero byte is written.
   */
  pages?: Uint8Array;
  /** fdatasync(2) the file before resolving. */
  sync?: boolean;
}

/** What writing a memory file did (`NativeVm.writeMemoryFile`). */
export interface MemoryFileWriteResult {
  /** Bytes written. */
  bytes: number;
  /** Pages written. */
  pagesWritten: number;
  /** Pages left as holes because they held only zeros (full writes). */
  pagesZero: number;
  /** Pages left as holes without being read because the guest never touched them (full writes of anonymous memory). */
  pagesAbsent: number;
}

/** What {@link NativeVm.readMemoryFile} read. */
export interface MemoryFileReadResult {
  /** Bytes copied from the file's data extents. */
  bytes: number;
}

/**
 * A level-triggered readability watch (see {@link NativeAddon.watchFd}). `pause()` stops the
 * callbacks (and no longer keeps the event loop alive), `resume()` restarts them, `close()` ends
 * the watch (idempotent; close it before closing the fd).
 */
export interface NativeFdPoll {
  pause(): void;
  resume(): void;
  close(): void;
}

/** What {@link NativeAddon.openTap} returns. */
export interface NativeTap {
  /** The TAP's descriptor: non-blocking, close-on-exec, vnet header of 12 bytes, offloads cleared. */
  fd: number;
  /** The interface name as the kernel reports it. */
  name: string;
  /** TUN_F_* flags TUNSETOFFLOAD accepted when probed (most capable set first). */
  offloads: number;
}

/**
 * A KVM memory slot of {@link VmSetup}: bytes `[offset, offset+size)` of memory buffer `buffer`
 * at guest physical address `guestAddr`.
 */
export interface MemorySlotSetup {
  /** KVM memory slot number. */
  slot: number;
  /** Guest physical address of the slot. */
  guestAddr: number;
  /** Index of the buffer in {@link VmSetup.memory}. */
  buffer: number;
  /** Where the slot starts in that buffer. */
  offset: number;
  /** Length in bytes. */
  size: number;
}

/** A file range {@link VmSetup} reads into guest memory (a kernel segment, an initrd). */
export interface GuestLoad {
  /** An open descriptor of the file (the caller keeps it open until the set-up has finished). */
  fd: number;
  /** The file's name, for error messages. */
  name: string;
  /** First byte of the range in the file. */
  fileOffset: number;
  /** Bytes read; the file must have them all. */
  length: number;
  /** Guest physical address of the first byte; the range (and `zeroFill`) must lie in one slot. */
  guestAddr: number;
  /** Bytes zeroed after the range (an ELF segment's bss). */
  zeroFill?: number;
}

/** A change to one 32-bit register of the LAPIC register page: `reg = (reg & ~mask) | (bits & mask)`. */
export interface LapicEdit {
  /** Byte offset in the 1024-byte page (4-byte aligned). */
  offset: number;
  /** The bits that change. */
  mask: number;
  /** Their new values. */
  bits: number;
}

/** What {@link VmSetup} does to one vCPU after KVM_CREATE_VCPU, in this order. Omitted parts are left as KVM made them. */
export interface VcpuSetup {
  /** vCPU id (KVM_CREATE_VCPU). */
  id: number;
  /**
   * KVM_SET_CPUID2: the entries, or the same packed as 7 words per entry (function, index, flags,
   * eax, ebx, ecx, edx), which the addon converts much faster.
   */
  cpuid?: CpuidEntry[] | Uint32Array;
  /** KVM_SET_MSRS (every entry must be accepted). */
  msrs?: MsrEntry[];
  /** KVM_GET_LAPIC, these edits, KVM_SET_LAPIC. */
  lapic?: LapicEdit[];
  /** KVM_SET_REGS. */
  regs?: Regs;
  /** KVM_GET_SREGS, the fields given here replace KVM's, KVM_SET_SREGS. */
  sregs?: Partial<Sregs>;
  /** KVM_GET_FPU, fcw and mxcsr replaced, KVM_SET_FPU. */
  fpu?: FpuState;
}

/**
 * A whole VM set-up for {@link NativeKvm.createVmAsync}, performed off the JavaScript thread in
 * this order: KVM_CREATE_VM, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP (if
 * `irqchip`), KVM_CREATE_PIT2 (if `pit2Flags` is given), one anonymous mapping per entry of
 * `memory`, KVM_SET_USER_MEMORY_REGION for each slot, the `loads` read into guest memory, the
 * `writes` copied there, then each vCPU as {@link VcpuSetup} says, and its thread, created and held until
 * {@link NativeVcpu.start} (which installs the seccomp filter on it before its first KVM_RUN).
 */
export interface VmSetup {
  /**
   * Sizes of the guest memory buffers: each one private, anonymous, MAP_NORESERVE mapping between
   * guard pages, as {@link NativeVm.allocateMemory} makes (a multiple of 4096, at most
   * {@link MAX_MEMORY_BUFFER}). May be empty (memory added later, e.g. from a snapshot).
   */
  memory: number[];
  /** KVM_SET_TSS_ADDR. */
  tssAddr: number;
  /** KVM_SET_IDENTITY_MAP_ADDR. */
  identityMapAddr: number;
  /** KVM_CREATE_IRQCHIP. */
  irqchip: boolean;
  /** KVM_CREATE_PIT2 with these flags. */
  pit2Flags?: number;
  /** Memory slots over the buffers (recorded as `setUserMemoryRegion` would, for `setDirtyLogging`). */
  slots?: MemorySlotSetup[];
  /** File ranges to read into guest memory. */
  loads?: GuestLoad[];
  /** Bytes to copy into guest memory after the loads, each range inside one slot. */
  writes?: { guestAddr: number; bytes: Uint8Array }[];
  /** vCPUs to create. */
  vcpus: VcpuSetup[];
}

/** What {@link NativeKvm.createVmAsync} made. */
export interface VmSetupResult {
  /** The VM; its `close()` releases everything below. */
  vm: NativeVm;
  /** Guest RAM, one buffer per {@link VmSetup.memory} entry, as {@link NativeVm.allocateMemory} would have returned them. */
  memory: ArrayBuffer[];
  /** The vCPUs, in the order of {@link VmSetup.vcpus}, not started. */
  vcpus: NativeVcpu[];
}

/** `/dev/kvm`. */
export interface NativeKvm {
  /** KVM_GET_API_VERSION (12 on every supported kernel). */
  apiVersion(): number;
  /** KVM_CHECK_EXTENSION on the system fd. */
  checkExtension(cap: number): number;
  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): CpuidEntry[];
  /** KVM_GET_MSR_INDEX_LIST: the MSRs this KVM saves and emulates (the candidates for snapshots). */
  msrIndexList(): number[];
  /** KVM_CREATE_VM (type 0). */
  createVm(): NativeVm;
  /**
   * The whole set-up of {@link VmSetup} on a thread-pool thread: the JavaScript thread only
   * checks the description and wraps the result. Rejects with the NativeError of the first call
   * that failed, after releasing everything made until then.
   */
  createVmAsync(setup: VmSetup): Promise<VmSetupResult>;
  /** Closes the system fd (idempotent). */
  close(): void;
}

/** A VM fd and everything owned by it: memory mappings, vCPUs, their threads. */
export interface NativeVm {
  /** KVM_CHECK_EXTENSION on the VM fd. */
  checkExtension(cap: number): number;
  /**
   * Maps `size` bytes of anonymous, private, MAP_NORESERVE memory and returns it as an external
   * ArrayBuffer that aliases the mapping (no copy). The mapping lives until `close()`, which
   * detaches the buffer. `size` is at most {@link MAX_MEMORY_BUFFER} (RangeError above): Node-API's
   * external buffers stop there on Node.js 20, so a larger guest takes one buffer per region of
   * guest RAM (`splitRegions` in lib/memory).
   */
  allocateMemory(size: number): ArrayBuffer;
  /**
   * Maps `size` bytes of the file at `path` (a snapshot's memory file; or a number: an open
   * descriptor of it, which stays open and the caller's) privately (MAP_PRIVATE |
   * MAP_NORESERVE) and returns it as an ArrayBuffer like {@link allocateMemory}'s: pages load on
   * first access, guest writes go to private copies, and VMs mapping the same file share the pages
   * they only read. Throws NativeError `EINVAL` (ioctl 'mmap') when the file is shorter than `size`.
   * The file must not change while it is mapped: pages the guest has not written yet show the
   * file's current bytes, and a truncated file makes them fault (replace files by renaming).
   */
  mapMemoryFile(path: string | number, size: number): ArrayBuffer;
  /**
   * Writes a memory buffer of this VM to a new file at `path` (created or truncated, as large as
   * the memory) on the thread pool; the JavaScript thread goes on meanwhile. Without
   * `options.pages` only non-zero pages are written and the rest are holes (pages an anonymous
   * mapping never touched are skipped without being read). Pause the vCPUs first: pages the guest
   * changes during the write are caught half-way. The memory stays mapped until the write ends,
   * even if the VM is closed meanwhile. Rejects with a NativeError naming the failed call.
   */
  writeMemoryFile(memory: ArrayBuffer, path: string, options?: WriteMemoryFileOptions): Promise<MemoryFileWriteResult>;
  /**
   * Copies the data extents of the file at `path` (or of the open descriptor `path`, which stays
   * the caller's) into a memory buffer of this VM on the thread
   * pool (holes are skipped: they read as the zeros a fresh mapping already holds). The file must
   * not be larger than the memory (`EFBIG`).
   */
  readMemoryFile(memory: ArrayBuffer, path: string | number): Promise<MemoryFileReadResult>;
  /**
   * Turns KVM's dirty-page log for a slot on or off (re-issues KVM_SET_USER_MEMORY_REGION with
   * KVM_MEM_LOG_DIRTY_PAGES). Logging starts clean. RangeError for a slot that was not set up.
   */
  setDirtyLogging(slot: number, enabled: boolean): void;
  /**
   * KVM_GET_DIRTY_LOG: the pages of `slot` the guest wrote since logging started or since the last
   * call (which this call clears), one bit per 4 KiB page of the slot, LSB first. Writes made by
   * the host through the memory buffer are not in it. NativeError `ENOENT` when logging is off.
   */
  getDirtyLog(slot: number): Buffer;
  /**
   * Reads the in-kernel PIC, IOAPIC, PIT and kvmclock state. Every started vCPU must be paused
   * (NativeError `EBUSY` otherwise).
   */
  saveState(): NativeVmState;
  /** Writes the state back, in KVM's order: PIT, clock, PIC master, PIC slave, IOAPIC. Null fields are skipped. */
  restoreState(state: NativeVmState): void;
  /** KVM_SET_USER_MEMORY_REGION for `[offset, offset+size)` of a buffer from `allocateMemory` or `mapMemoryFile`. */
  setUserMemoryRegion(slot: number, guestPhysAddr: number, memory: ArrayBuffer, offset: number, size: number): void;
  /** KVM_SET_TSS_ADDR. */
  setTssAddr(addr: number): void;
  /** KVM_SET_IDENTITY_MAP_ADDR. */
  setIdentityMapAddr(addr: number): void;
  /** KVM_CREATE_IRQCHIP (PIC + IOAPIC in kernel, LAPIC per vCPU). */
  createIrqchip(): void;
  /** KVM_CREATE_PIT2 with the given flags (KVM_PIT_SPEAKER_DUMMY = 1). */
  createPit2(flags: number): void;
  /** KVM_IRQ_LINE. */
  irqLine(irq: number, level: boolean): void;
  /** KVM_IOEVENTFD. */
  ioeventfd(args: IoEventFdArgs): void;
  /** KVM_IRQFD: `fd` raises `gsi` when written. `deassign` removes it. */
  irqfd(fd: number, gsi: number, deassign?: boolean): void;
  /** KVM_CREATE_VCPU; also maps its `kvm_run` area. */
  createVcpu(id: number): NativeVcpu;
  /** Registers the exit handlers (before any vCPU starts). */
  setExitHandlers(handlers: ExitHandlers): void;
  /**
   * Runs, now and on this thread, the handlers of every record the vCPU threads have queued.
   * Lets an ioeventfd handler see the posted register writes that came before the notification.
   */
  flushExits(): void;
  /**
   * Declares ports `[base, base+len)` as a read-cache group: a read of a port in the group that has
   * a valid cached value is answered by the vCPU thread itself, without a JavaScript round trip
   * (reads of any size at that port get the value masked to their size). `len` is 1..32 (one mask
   * bit per port); groups must not overlap (RangeError).
   * A guest write to an offset whose bit is set in `transparentWriteMask` leaves the group's cache
   * valid; any other write to the group invalidates all of the group's cached values at once.
   */
  definePioReadCache(base: number, len: number, transparentWriteMask: number): void;
  /**
   * Ports `[base, base+len)` that no device decodes and that guests hit constantly (the POST and
   * delay port 0x80): the vCPU thread drops writes to them and answers reads with all-ones itself,
   * so they cost no JavaScript. Call before the vCPUs start.
   */
  definePioSink(base: number, len: number): void;
  /**
   * Caches `value` for reads of `port`, valid only if no invalidating write to its group was
   * queued after record `seq` (the last record the caller has processed). `value < 0` clears it.
   * Returns whether the value was accepted.
   */
  setPioReadCache(port: number, value: number, seq: number): boolean;
  /**
   * Declares `port` the transmit-buffer port (a UART's THR): one-byte guest writes to it are
   * appended to one record, delivered to {@link ExitHandlers.pioWriteBatch} in order with every
   * other record, instead of one record each. A batch ends when another record is queued, when it
   * holds `capacity` bytes (1..65536) or when JavaScript takes it. A batch alone in the queue wakes
   * JavaScript only after `maxDelayMs` (0..1000), so steady output costs one handler call per
   * `maxDelayMs` instead of one per byte; any other record wakes it at once. Call before any vCPU
   * starts.
   */
  defineTransmitBuffer(port: number, capacity: number, maxDelayMs: number): void;
  /**
   * Whether a transmit batch alone may wait for `maxDelayMs` ({@link NativeVm.defineTransmitBuffer})
   * before JavaScript takes it (the default); `false`: the first byte of a batch wakes JavaScript
   * at once, as any other record does (bytes written before the wake is handled still share
   * one record). For a driver that waits for the UART's transmit interrupt after a few bytes.
   */
  setTransmitDeferral(defer: boolean): void;
  /** Counters of the exit path. */
  exitStats(): ExitStats;
  /**
   * Kicks every running vCPU out of KVM_RUN (immediate_exit + signal), cancels waits for
   * JavaScript answers and joins the threads. Idempotent; safe inside a handler. A cancelled read
   * gets all-ones and its handler is not called. `vcpuStopped` arrives later on the event loop
   * (or in `flushExits()` / `close()`). Threads cannot be started again afterwards.
   */
  stopVcpus(): void;
  /**
   * {@link NativeVm.stopVcpus} with the waiting for the threads done on a thread-pool thread:
   * the threads are told to stop at once, the promise resolves once they have ended.
   */
  stopVcpusAsync(): Promise<void>;
  /** Parks every vCPU outside KVM_RUN; returns once all are parked. */
  pauseVcpus(): void;
  /** Releases parked vCPUs. */
  resumeVcpus(): void;
  /**
   * Stops vCPUs, runs the handlers of every record still queued (`vcpuStopped` included), closes
   * the vCPU fds, unmaps and detaches memory, closes the VM fd. Idempotent.
   */
  close(): void;
  /**
   * {@link NativeVm.close} with the slow parts on a thread-pool thread (waiting for the vCPU
   * threads; unmapping guest memory and closing the VM fd, which waits for KVM to destroy the VM).
   * The handlers of the records still queued run on the JavaScript thread in between; the buffers
   * are detached and the VM counts as closed from then on. Resolves once everything is released
   * (rejects with a handler's error, after releasing everything). A call while one is under way
   * returns the same promise.
   */
  closeAsync(): Promise<void>;
}

/**
 * A vCPU fd and its run thread. Register calls are valid before `start()`, while the vCPU waits
 * for a handler's answer, while it is paused and after its thread ended; otherwise they throw a
 * NativeError with code 'EBUSY' (the ioctl would block until the guest exits). After the VM is
 * closed they throw 'EBADF'.
 */
export interface NativeVcpu {
  readonly id: number;
  /** The vCPU fd (-1 once the VM is closed): what a seccomp policy names for KVM_RUN. */
  readonly fd: number;
  getRegs(): Regs;
  setRegs(regs: Regs): void;
  getSregs(): Sregs;
  setSregs(sregs: Sregs): void;
  /** Reads the FPU state, replaces fcw and mxcsr, writes it back. */
  setFpu(fpu: FpuState): void;
  /** KVM_SET_MSRS; returns how many were set. */
  setMsrs(msrs: MsrEntry[]): number;
  /** KVM_GET_MSRS. */
  getMsrs(indexes: number[]): bigint[];
  /** KVM_SET_CPUID2. */
  setCpuid(entries: CpuidEntry[]): void;
  /** KVM_GET_LAPIC: the 1024-byte register page. */
  getLapic(): Buffer;
  /** KVM_SET_LAPIC. */
  setLapic(regs: Buffer): void;
  /** KVM_GET_MP_STATE. */
  getMpState(): number;
  /** KVM_SET_MP_STATE. */
  setMpState(state: number): void;
  /** Injects an exception through KVM_SET_VCPU_EVENTS (`exception.injected = 1`). */
  injectException(vector: number, errorCode?: number): void;
  /**
   * Starts the run thread (once). With `seccompFilter` (a BPF program, 8 bytes per instruction:
   * lib/seccomp builds them), the thread installs it on itself alone (no_new_privs, then
   * seccomp(SECCOMP_SET_MODE_FILTER) without TSYNC) before its first KVM_RUN, and start() returns
   * only once it is in place. A call the program traps is reported on stderr (thread, call number,
   * arguments) and the kernel kills the process with SIGSYS.
   * @throws NativeError from 'prctl(PR_SET_NO_NEW_PRIVS)' or 'seccomp(SECCOMP_SET_MODE_FILTER)'
   * (e.g. EINVAL for a program the kernel refuses); the vCPU is then not started
   */
  start(seccompFilter?: Uint8Array): void;
  /**
   * For a vCPU made by {@link NativeKvm.createVmAsync} (its thread exists, held before its first
   * KVM_RUN): has the thread install `seccompFilter` as {@link NativeVcpu.start} would, and
   * resolves once it is in place, the waiting done on a thread-pool thread instead of the
   * JavaScript thread. `start()` (without a filter) then only lets the thread run. Until then the
   * vCPU counts as not started (`runState` `'idle'`, register calls allowed).
   * @throws Error for a vCPU not made by createVmAsync, or already started or prepared
   * @returns rejects with the NativeError of a refused filter; the vCPU is then not started, and
   *   `start()` makes it a new thread
   */
  prepareStart(seccompFilter?: Uint8Array): Promise<void>;
  /**
   * Where the run thread is: `'idle'` (not started), `'running'`, `'waiting'` (for a handler's
   * answer, i.e. in the middle of an I/O instruction), `'parked'` (paused between instructions)
   * or `'exited'`.
   */
  readonly runState: 'idle' | 'running' | 'waiting' | 'parked' | 'exited';
  /**
   * Reads the whole vCPU state for a snapshot, in KVM's order (MP state first, pending events
   * last), with the MSRs `msrIndexes` (an MSR KVM refuses to read is listed in `msrsUnreadable`).
   * Only valid while `runState` is `'idle'` or `'parked'`: a vCPU waiting for an I/O answer has
   * not finished its instruction (NativeError `EBUSY`).
   */
  saveState(msrIndexes: readonly number[]): NativeVcpuState;
  /**
   * Writes a saved state back, in KVM's order: CPUID, MP state, regs, sregs, XSAVE (or FPU),
   * XCRs, debug registers, LAPIC, MSRs (in the order given), events; then KVM_KVMCLOCK_CTRL.
   * Every field is checked before the first ioctl (RangeError/TypeError: nothing changed). Same
   * `runState` rule as {@link saveState}.
   */
  restoreState(state: NativeVcpuState): void;
  /**
   * KVM_GET_CPUID2: the CPUID table KVM holds for this vCPU. On ordinary KVM that is what
   * setCpuid gave it; KVM on the emulated (PVM) hosts answers with the host CPU's own features
   * (what the guest really sees there).
   */
  getCpuid(): CpuidEntry[];
  /** KVM_GET_TSC_KHZ. */
  getTscKhz(): number;
  /** KVM_SET_TSC_KHZ (needs KVM_CAP_TSC_CONTROL); before restoreState, while idle or parked. */
  setTscKhz(khz: number): void;
}

/** The addon's module object. */
export interface NativeAddon {
  /** Opens `/dev/kvm` (or `path`). Throws a native error with `code` 'ENOENT', 'EACCES', 'ENODEV'… */
  openKvm(path?: string): NativeKvm;
  /** eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK; returns the fd. */
  eventfd(initval?: number): number;
  /** Adds `value` to an eventfd's counter. */
  eventfdWrite(fd: number, value?: number): void;
  /** Reads and resets an eventfd's counter; 0 if it was zero (EAGAIN). */
  eventfdRead(fd: number): number;
  /**
   * Calls `onSignal(count)` on the event loop each time the eventfd becomes readable (it reads the
   * counter first). An open watch keeps the event loop alive, like a socket; `close()` it when the
   * VM stops. Close the watch before closing the fd.
   */
  watchEventfd(fd: number, onSignal: (count: number) => void): FdWatch;
  /** close(2). */
  closeFd(fd: number): void;
  /**
   * Calls `onReadable()` on the event loop while `fd` is readable (level-triggered; nothing is
   * read). An open, running watch keeps the event loop alive.
   */
  watchFd(fd: number, onReadable: () => void): NativeFdPoll;
  /**
   * Opens the existing TAP `name`: checks it exists (`if_nametoindex`, ENODEV otherwise), opens
   * `/dev/net/tun`, TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (EBUSY when attached
   * elsewhere, EINVAL when it is not such a TAP), TUNSETVNETHDRSZ 12, probes TUNSETOFFLOAD and
   * clears it. Errors name the failing ioctl. With `netns` (the path of a network namespace, e.g.
   * `/var/run/netns/fn-1`) all of that happens in that namespace, on a short-lived thread (this
   * one never leaves its own): how a jailed VM's parent opens the TAPs that live in the jail's
   * namespace.
   */
  openTap(name: string, netns?: string): NativeTap;
  /** TUNSETOFFLOAD on a TAP descriptor. */
  tapSetOffload(fd: number, flags: number): void;
  /**
   * One readv(2) into `count` spans, span i being `[spans[3i+1], +spans[3i+2])` of
   * `buffers[spans[3i]]` (at most 1024 spans, 64 buffers; a span outside its buffer is a
   * RangeError). Returns the byte count (a TAP reports a truncated frame's full length), or -1 on
   * EAGAIN; other errors throw (EINTR is retried).
   */
  readvSpans(fd: number, buffers: readonly ArrayBuffer[], spans: Float64Array, count: number): number;
  /** One writev(2) from spans laid out as for {@link readvSpans}; bytes written or -1 on EAGAIN. */
  writevSpans(fd: number, buffers: readonly ArrayBuffer[], spans: Float64Array, count: number): number;
  /**
   * Where a constant string lives inside libc's read-only segments (it must match up to its NUL),
   * or undefined: for seccomp rules that recognise one pointer glibc passes (lib/seccomp/vcpu.ts).
   */
  libcStringAddress(text: string): bigint | undefined;
  /** Pages of this process currently resident (from /proc/self/statm), for tests and benchmarks. */
  residentPages?(): number;
  /**
   * madvise(MADV_DONTNEED) on `[offset, offset+length)` of an ArrayBuffer's memory (guest RAM from
   * `allocateMemory`, or `mapAnonymous`): the host frees those pages at once and they read back as
   * zeros. `offset` must be host-page aligned (NativeError EINVAL, ioctl 'madvise' otherwise); a
   * range outside the buffer (or a detached buffer) is a RangeError.
   */
  discardMemory(buffer: ArrayBuffer, offset: number, length: number): void;
  /**
   * A fresh private anonymous MAP_NORESERVE mapping of `size` bytes as an ArrayBuffer, unmapped
   * when the buffer is collected: real, RSS-accounted memory for tests and benchmarks without a VM.
   */
  mapAnonymous(size: number): ArrayBuffer;
  /** The host page size (sysconf(_SC_PAGESIZE)). */
  pageSize(): number;
  /**
   * socketpair(AF_UNIX, SOCK_STREAM or SOCK_SEQPACKET, SOCK_CLOEXEC): the two connected ends.
   * The jailed mode's control channel and descriptor channel (lib/jail).
   */
  socketPair(kind: 'stream' | 'seqpacket'): [number, number];
  /**
   * One sendmsg(2) of `data` (1 byte to 1 MiB) with `fds` (at most 253) attached as SCM_RIGHTS,
   * non-blocking (NativeError EAGAIN when the socket is full). The descriptors stay open here.
   */
  sendFds(socket: number, data: Uint8Array, fds: readonly number[]): void;
  /**
   * One recvmsg(2), non-blocking, received descriptors close-on-exec: the bytes and descriptors
   * of the next message, `null` when there is none yet; empty `data` and no descriptors at end of
   * stream. A message longer than `maxBytes` or with more than `maxFds` descriptors is refused
   * whole (its descriptors closed; NativeError EMSGSIZE).
   */
  receiveFds(socket: number, maxBytes: number, maxFds: number): { data: Buffer; fds: number[] } | null;
  /** A {@link NativeKvm} that owns `fd`, an open KVM device passed into this process. */
  adoptKvm(fd: number): NativeKvm;
  /**
   * Installs a seccomp-BPF program (lib/seccomp) on every thread of the process at once
   * (SECCOMP_FILTER_FLAG_TSYNC), after setting no_new_privs; threads started later inherit it.
   * A call the program traps is reported on stderr and the process is killed with SIGSYS (the
   * same report as the vCPU threads' filter). Irreversible.
   * @throws NativeError from 'prctl(PR_SET_NO_NEW_PRIVS)' or 'seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)'
   */
  installProcessSeccomp(filter: Uint8Array): void;
}

/** Properties the addon sets on every Error it throws. */
export interface NativeErrorProps {
  /** The ioctl or syscall that failed, e.g. 'KVM_CREATE_VM' or 'mmap'. */
  ioctl: string;
  /** errno. */
  errno: number;
  /** errno's symbolic name, e.g. 'EINVAL'. */
  code: string;
}
