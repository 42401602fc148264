// NativeVm: a KVM VM fd, its guest memory mappings, its vCPUs and the JavaScript end of the exit
// queue (the thread-safe function, the handlers, the drain).
#pragma once

#include <napi.h>

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
  /** The thread-safe function's callback. */
  void DrainFromLoop(Napi::Env env);

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
  Napi::Value StopVcpus(const Napi::CallbackInfo& info);
  Napi::Value PauseVcpus(const Napi::CallbackInfo& info);
  Napi::Value ResumeVcpus(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
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
  /** Registers a mapping and returns the ArrayBuffer that aliases it. */
  Napi::Value AdoptMapping(Napi::Env env, const std::shared_ptr<Mapping>& mapping);
  /** Handles the records queued when it starts (see VmCore::FinishDrain for the rest). */
  void Drain(Napi::Env env);
  /** Runs DrainFromLoop again from setImmediate. */
  void ScheduleDrain(Napi::Env env);
  void Dispatch(Napi::Env env, ExitRecord& r);
  void VcpuEnded(Napi::Env env);
  /** explicit: close() (may run handlers, detaches buffers); otherwise finalizer or env cleanup. */
  void Teardown(Napi::Env env, bool explicitClose);
  static void CleanupHook(void* arg);

  struct MemoryEntry {
    std::shared_ptr<Mapping> mapping;
    napi_ref buffer = nullptr;  // weak: the ArrayBuffer may be collected before close()
  };

  std::shared_ptr<VmCore> core_;
  std::vector<MemoryEntry> memory_;
  std::map<uint32_t, SlotInfo> slots_;
  Napi::ObjectReference handlers_;
  Napi::FunctionReference onIo_;
  Napi::FunctionReference onEvent_;
  Napi::FunctionReference onStopped_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  napi_env env_ = nullptr;
  int running_ = 0;
  bool hookRegistered_ = false;
  bool torndown_ = false;
};

}  // namespace kindling
