// NativeVm: a KVM VM fd, its guest memory mappings, its vCPUs and the JavaScript end of the exit
// queue (the thread-safe function, the handlers, the drain).
#pragma once

#include <napi.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "vm_core.h"

namespace kindling {

/**
 * One guest memory mapping: anonymous (allocateMemory) or a private mapping of a snapshot's memory
 * file (mapMemoryFile). Shared by the VM and the finalizer of the ArrayBuffer that aliases it:
 * close() unmaps it explicitly (and detaches the buffer); otherwise it is unmapped when the last
 * of the two lets go, so a buffer never outlives its memory. A memory-file worker on the thread
 * pool pins it: an unmap requested meanwhile happens when the last pin goes.
 */
struct Mapping {
  uint8_t* addr = nullptr;
  size_t size = 0;
  /** MAP_PRIVATE of a file: untouched pages hold the file's bytes, not zeros. */
  bool fileBacked = false;
  /** Bytes of inaccessible guard mapping on either side of `addr` (MapAnonymous). */
  size_t guard = 0;
  /**
   * Maps `bytes` of private, anonymous, MAP_NORESERVE memory between two inaccessible guard
   * pages. The guards fault a host access that runs off either end of guest memory (instead of
   * reaching whatever the kernel placed next to it), and keep the mapping a VMA of its own (the
   * kernel merges adjacent anonymous mappings), so /proc/<pid>/smaps shows guest RAM apart.
   * Returns the errno of the failed call (0 on success); `*op` names it. Any thread.
   */
  int MapAnonymous(size_t bytes, const char** op);
  /** Keeps the memory mapped until Unpin(); false if it is already unmapped or going. */
  bool Pin();
  void Unpin();
  void Unmap();
  ~Mapping() { Unmap(); }

 private:
  void UnmapLocked();
  std::mutex mu_;
  int pins_ = 0;
  bool unmapRequested_ = false;
};

/**
 * What the finalizer of a guest-memory ArrayBuffer holds: its share of the mapping, and the
 * external-memory count it still owes V8 (see Vm::AdoptMapping).
 */
struct BufferShare {
  std::shared_ptr<Mapping> mapping;
  /** Bytes taken off V8's external-memory count at creation, to give back when the buffer goes. */
  int64_t owed = 0;
};

/**
 * V8's external-memory soft limit (kExternalAllocationSoftLimit, V8 11): it starts garbage
 * collection when the count it keeps of external memory exceeds its lowest value since the last
 * full collection by this much.
 */
constexpr int64_t kV8ExternalSoftLimit = int64_t(64) << 20;

/** A KVM memory slot as last set through setUserMemoryRegion (to re-issue it with other flags). */
struct SlotInfo {
  std::shared_ptr<Mapping> mapping;
  uint64_t offset = 0;
  uint64_t guestPhysAddr = 0;
  uint64_t size = 0;
  uint32_t flags = 0;
};

/** The largest buffer allocateMemory() returns (NativeVm.allocateMemory in lib/native/types.ts). */
constexpr uint64_t kMaxMemoryBuffer = uint64_t(1) << 32;

/** Module function `setUntransferableMarker(fn)`: see AddonData::markUntransferable. */
Napi::Value SetUntransferableMarker(const Napi::CallbackInfo& info);

class Vm : public Napi::ObjectWrap<Vm> {
 public:
  static Napi::Function Init(Napi::Env env);
  /** Wraps a fresh VM fd (ownership passes to the new object, even if this throws). */
  static Napi::Object NewInstance(Napi::Env env, int fd, size_t runMmapSize);

  explicit Vm(const Napi::CallbackInfo& info);
  ~Vm() override;

  const std::shared_ptr<VmCore>& core() const { return core_; }
  bool HandlersSet() const { return !onIo_.IsEmpty(); }
  bool Closed() const { return torndown_; }
  /** Called by NativeVcpu.start(): the first running vCPU keeps the event loop and this object alive. */
  void VcpuStarted(Napi::Env env);
  /** The thread-safe function's callback: `deferred` for a wake that may wait for the transmit timer. */
  void OnWake(Napi::Env env, bool deferred);
  /** Runs a drain for the event loop (TSFN, transmit timer or continuation). */
  void DrainFromLoop(Napi::Env env);
  /** The transmit timer fired (see ArmTxTimer). */
  void OnTxTimer(Napi::Env env);
  /**
   * Registers a mapping made elsewhere (the asynchronous set-up) as this VM's guest memory and
   * returns the ArrayBuffer that aliases it.
   */
  Napi::Value AdoptMapping(Napi::Env env, const std::shared_ptr<Mapping>& mapping);
  /** Records a memory slot that was registered with KVM elsewhere (the asynchronous set-up). */
  void AdoptSlot(uint32_t slot, const SlotInfo& info) { slots_[slot] = info; }
  /** Wraps a vCPU created elsewhere (the asynchronous set-up); `self` is this VM's JS object. */
  Napi::Object AdoptVcpu(Napi::Env env, Napi::Object self, std::shared_ptr<VcpuCore> vcpu);

 private:
  Napi::Value CheckExtension(const Napi::CallbackInfo& info);
  Napi::Value AllocateMemory(const Napi::CallbackInfo& info);
  Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info);
  Napi::Value SetTssAddr(const Napi::CallbackInfo& info);
  Napi::Value SetIdentityMapAddr(const Napi::CallbackInfo& info);
  Napi::Value CreateIrqchip(const Napi::CallbackInfo& info);
  Napi::Value CreatePit2(const Napi::CallbackInfo& info);
  Napi::Value IrqLine(const Napi::CallbackInfo& info);
  Napi::Value IoEventFd(const Napi::CallbackInfo& info);
  Napi::Value IrqFd(const Napi::CallbackInfo& info);
  Napi::Value CreateVcpu(const Napi::CallbackInfo& info);
  Napi::Value SetExitHandlers(const Napi::CallbackInfo& info);
  Napi::Value FlushExits(const Napi::CallbackInfo& info);
  Napi::Value DefinePioReadCache(const Napi::CallbackInfo& info);
  Napi::Value DefinePioSink(const Napi::CallbackInfo& info);
  Napi::Value SetPioReadCache(const Napi::CallbackInfo& info);
  Napi::Value DefineTransmitBuffer(const Napi::CallbackInfo& info);
  Napi::Value SetTransmitDeferral(const Napi::CallbackInfo& info);
  Napi::Value ExitStats(const Napi::CallbackInfo& info);
  Napi::Value StopVcpus(const Napi::CallbackInfo& info);
  Napi::Value PauseVcpus(const Napi::CallbackInfo& info);
  Napi::Value ResumeVcpus(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value StopVcpusAsync(const Napi::CallbackInfo& info);
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);
  /** The worker half of closeAsync(): unmaps guest memory, then closes the vCPU and VM fds. */
  static void Release(std::vector<std::shared_ptr<Mapping>>& unmap, VmCore& core);
  // Snapshots (vm_snapshot.cc).
  Napi::Value SaveState(const Napi::CallbackInfo& info);
  Napi::Value RestoreState(const Napi::CallbackInfo& info);
  Napi::Value SetDirtyLogging(const Napi::CallbackInfo& info);
  Napi::Value GetDirtyLog(const Napi::CallbackInfo& info);
  Napi::Value MapMemoryFile(const Napi::CallbackInfo& info);
  Napi::Value WriteMemoryFile(const Napi::CallbackInfo& info);
  Napi::Value ReadMemoryFile(const Napi::CallbackInfo& info);

  int Fd(Napi::Env env, const char* op);
  /** The live mapping behind a buffer from allocateMemory()/mapMemoryFile(), or null. */
  std::shared_ptr<Mapping> FindMapping(Napi::Value buffer) const;
  /** Handles the records queued when it starts (see VmCore::FinishDrain for the rest). */
  void Drain(Napi::Env env);
  /** Runs DrainFromLoop again from setImmediate. */
  void ScheduleDrain(Napi::Env env);
  void Dispatch(Napi::Env env, ExitRecord& r);
  void DispatchTxBatch(Napi::Env env, ExitRecord& r);
  /**
   * Makes sure a drain follows within the transmit delay: a one-shot, unreferenced setTimeout,
   * unless one is pending already (an earlier one drains the newer batch a little early).
   */
  void ArmTxTimer(Napi::Env env);
  void VcpuEnded(Napi::Env env);
  /**
   * explicit: close() (may run handlers, detaches buffers); otherwise finalizer or env cleanup.
   * With `unmapLater`, the mappings to unmap are added there and the fds stay open: the caller
   * releases both (closeAsync, on a worker thread).
   */
  void Teardown(Napi::Env env, bool explicitClose, std::vector<std::shared_ptr<Mapping>>* unmapLater = nullptr);
  static void CleanupHook(void* arg);

  struct MemoryEntry {
    std::shared_ptr<Mapping> mapping;
    napi_ref buffer = nullptr;  // weak: the ArrayBuffer may be collected before close()
    BufferShare* share = nullptr;  // the finalizer's; valid while `buffer` still yields the buffer
  };

  std::shared_ptr<VmCore> core_;
  std::vector<MemoryEntry> memory_;
  std::map<uint32_t, SlotInfo> slots_;
  Napi::ObjectReference handlers_;
  Napi::FunctionReference onIo_;
  Napi::FunctionReference onEvent_;
  Napi::FunctionReference onStopped_;
  Napi::FunctionReference onTxBatch_;
  /** closeAsync()'s promise once it was called (later calls return it until it settles). */
  Napi::ObjectReference closePromise_;
  /** Records taken off the queue and not handled yet (a handler may drain re-entrantly via close()). */
  std::deque<ExitRecord> pending_;
  /** The transmit timer's callback; empty until defineTransmitBuffer. */
  Napi::FunctionReference txTimerFn_;
  uint32_t txDelayMs_ = 0;
  bool txTimerArmed_ = false;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  napi_env env_ = nullptr;
  int running_ = 0;
  bool hookRegistered_ = false;
  bool torndown_ = false;
};

}  // namespace kindling
