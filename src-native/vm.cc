#include "vm.h"

#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <system_error>

#include "addon_data.h"
#include "async_task.h"
#include "convert.h"
#include "errors.h"
#include "vcpu.h"

namespace kindling {

namespace {

struct VmInit {
  int fd;
  size_t runMmapSize;
};

// The TSFN's context: keeps the core alive for callbacks that arrive after the wrapper is gone.
using CoreHolder = std::shared_ptr<VmCore>;

void CallJs(napi_env env, napi_value /*js_callback*/, void* context, void* data) {
  if (env == nullptr) return;  // the function is being torn down
  const CoreHolder& core = *static_cast<CoreHolder*>(context);
  if (core->closed || core->owner == nullptr) return;
  core->owner->OnWake(env, data == DeferredWakeData());
}

void FinalizeTsfn(napi_env /*env*/, void* data, void* /*hint*/) { delete static_cast<CoreHolder*>(data); }

// Node.js calls this on the JavaScript thread once the ArrayBuffer is collected or detached. The
// mapping goes with the last shared_ptr, so an ArrayBuffer still referenced from JavaScript keeps
// it alive, and a closed VM has already unmapped it.
void ReleaseMapping(napi_env env, void* /*data*/, void* hint) {
  auto* share = static_cast<BufferShare*>(hint);
  int64_t ignored = 0;
  if (share->owed != 0 && env != nullptr) napi_adjust_external_memory(env, share->owed, &ignored);
  delete share;
}

// Gives V8 back the external-memory count AdoptMapping took off `share`'s buffer, right before
// V8 takes the buffer's length off itself (detach): the count then never rises above where it was.
void RepayExternalMemory(napi_env env, BufferShare* share) {
  int64_t ignored = 0;
  if (share->owed != 0) napi_adjust_external_memory(env, share->owed, &ignored);
  share->owed = 0;
}

uint32_t SizeMask(uint32_t size) { return size >= 4 ? 0xffffffffu : ((1u << (size * 8)) - 1); }

// Only a number 0 resumes: a handler that throws or forgets to return must not make a vCPU spin
// on an exit it cannot get past.
Verdict VerdictOf(Napi::Value v) {
  if (v.IsNumber() && v.As<Napi::Number>().DoubleValue() == 0) return kResume;
  return kStop;
}

Napi::Object EventToJs(Napi::Env env, const EventInfo& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("reason", Napi::Number::New(env, static_cast<double>(e.reason)));
  if (e.hasSuberror) o.Set("suberror", Napi::Number::New(env, e.suberror));
  if (e.hasData) {
    Napi::Array a = Napi::Array::New(env, e.data.size());
    for (size_t i = 0; i < e.data.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::BigInt::New(env, e.data[i]));
    o.Set("data", a);
  }
  if (e.hasInsnBytes) {
    o.Set("insnBytes", Napi::Buffer<uint8_t>::Copy(env, e.insnBytes.data(), e.insnBytes.size()));
  }
  if (e.hasFailReason) o.Set("hardwareEntryFailureReason", Napi::BigInt::New(env, e.failReason));
  if (e.hasErrno) o.Set("errno", Napi::Number::New(env, e.err));
  if (e.hasSystemEventType) o.Set("systemEventType", Napi::Number::New(env, e.systemEventType));
  return o;
}

}  // namespace

bool Mapping::Pin() {
  std::lock_guard<std::mutex> lk(mu_);
  if (addr == nullptr || unmapRequested_) return false;
  pins_++;
  return true;
}

void Mapping::Unpin() {
  std::lock_guard<std::mutex> lk(mu_);
  if (--pins_ == 0 && unmapRequested_) UnmapLocked();
}

void Mapping::Unmap() {
  std::lock_guard<std::mutex> lk(mu_);
  if (pins_ > 0) {
    unmapRequested_ = true;  // the last Unpin() unmaps
    return;
  }
  UnmapLocked();
}

void Mapping::UnmapLocked() {
  if (addr != nullptr) {
    munmap(addr - guard, size + 2 * guard);
    addr = nullptr;
  }
}

int Mapping::MapAnonymous(size_t bytes, const char** op) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* base = mmap(nullptr, bytes + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    *op = "mmap";
    return errno;
  }
  uint8_t* inner = static_cast<uint8_t*>(base) + page;
  if (mprotect(inner, bytes, PROT_READ | PROT_WRITE) < 0) {
    const int err = errno;
    munmap(base, bytes + 2 * page);
    *op = "mprotect";
    return err;
  }
  std::lock_guard<std::mutex> lk(mu_);
  addr = inner;
  size = bytes;
  guard = page;
  return 0;
}

Napi::Value SetUntransferableMarker(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) ThrowType(env, "setUntransferableMarker: expected a function");
  GetAddonData(env)->markUntransferable = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

Napi::Function Vm::Init(Napi::Env env) {
  return DefineClass(env, "NativeVm",
                     {
                         InstanceMethod<&Vm::CheckExtension>("checkExtension"),
                         InstanceMethod<&Vm::AllocateMemory>("allocateMemory"),
                         InstanceMethod<&Vm::SetUserMemoryRegion>("setUserMemoryRegion"),
                         InstanceMethod<&Vm::SetTssAddr>("setTssAddr"),
                         InstanceMethod<&Vm::SetIdentityMapAddr>("setIdentityMapAddr"),
                         InstanceMethod<&Vm::CreateIrqchip>("createIrqchip"),
                         InstanceMethod<&Vm::CreatePit2>("createPit2"),
                         InstanceMethod<&Vm::IrqLine>("irqLine"),
                         InstanceMethod<&Vm::IoEventFd>("ioeventfd"),
                         InstanceMethod<&Vm::IrqFd>("irqfd"),
                         InstanceMethod<&Vm::CreateVcpu>("createVcpu"),
                         InstanceMethod<&Vm::SetExitHandlers>("setExitHandlers"),
                         InstanceMethod<&Vm::FlushExits>("flushExits"),
                         InstanceMethod<&Vm::DefinePioReadCache>("definePioReadCache"),
                         InstanceMethod<&Vm::DefinePioSink>("definePioSink"),
                         InstanceMethod<&Vm::SetPioReadCache>("setPioReadCache"),
                         InstanceMethod<&Vm::DefineTransmitBuffer>("defineTransmitBuffer"),
                         InstanceMethod<&Vm::SetTransmitDeferral>("setTransmitDeferral"),
                         InstanceMethod<&Vm::ExitStats>("exitStats"),
                         InstanceMethod<&Vm::StopVcpus>("stopVcpus"),
                         InstanceMethod<&Vm::PauseVcpus>("pauseVcpus"),
                         InstanceMethod<&Vm::ResumeVcpus>("resumeVcpus"),
                         InstanceMethod<&Vm::Close>("close"),
                         InstanceMethod<&Vm::StopVcpusAsync>("stopVcpusAsync"),
                         InstanceMethod<&Vm::CloseAsync>("closeAsync"),
                         InstanceMethod<&Vm::SaveState>("saveState"),
                         InstanceMethod<&Vm::RestoreState>("restoreState"),
                         InstanceMethod<&Vm::SetDirtyLogging>("setDirtyLogging"),
                         InstanceMethod<&Vm::GetDirtyLog>("getDirtyLog"),
                         InstanceMethod<&Vm::MapMemoryFile>("mapMemoryFile"),
                         InstanceMethod<&Vm::WriteMemoryFile>("writeMemoryFile"),
                         InstanceMethod<&Vm::ReadMemoryFile>("readMemoryFile"),
                     });
}

Napi::Object Vm::NewInstance(Napi::Env env, int fd, size_t runMmapSize) {
  VmInit init{fd, runMmapSize};
  try {
    return GetAddonData(env)->vmCtor.New({Napi::External<VmInit>::New(env, &init)});
  } catch (...) {
    if (init.fd >= 0) close(init.fd);  // the constructor did not take it
    throw;
  }
}

Vm::Vm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Vm>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) ThrowType(env, "NativeVm is created by NativeKvm.createVm()");
  VmInit* init = info[0].As<Napi::External<VmInit>>().Data();
  core_ = std::make_shared<VmCore>(init->fd, init->runMmapSize);
  init->fd = -1;  // owned by core_ now
  env_ = env;

  auto* holder = new CoreHolder(core_);
  napi_threadsafe_function tsfn = nullptr;
  napi_status st = napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "kindling:vcpu-exits"),
                                                   0, 1, holder, FinalizeTsfn, holder, CallJs, &tsfn);
  if (st != napi_ok) {
    delete holder;
    throw Napi::Error::New(env, "napi_create_threadsafe_function failed");
  }
  // Idle until a vCPU starts: a VM whose vCPUs are stopped must not keep Node running.
  napi_unref_threadsafe_function(env, tsfn);
  core_->tsfn = tsfn;
  core_->owner = this;
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "kindling:vcpu-exits");
  if (napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok) hookRegistered_ = true;
}

Vm::~Vm() {
  Teardown(Napi::Env(env_), false);
  core_->owner = nullptr;
}

void Vm::CleanupHook(void* arg) {
  Vm* vm = static_cast<Vm*>(arg);
  vm->hookRegistered_ = false;
  vm->Teardown(Napi::Env(vm->env_), false);
}

void Vm::Teardown(Napi::Env env, bool explicitClose, std::vector<std::shared_ptr<Mapping>>* unmapLater) {
  if (torndown_) return;
  core_->StopAll();
  napi_value pendingError = nullptr;
  if (explicitClose) {
    // Deliver what the threads queued before they ended, 'stopped' records included.
    try {
      Drain(env);
    } catch (const Napi::Error& e) {
      pendingError = e.Value();
    }
  }
  torndown_ = true;
  core_->closed = true;
  pending_.clear();
  if (running_ > 0) {
    running_ = 0;
    if (explicitClose) Unref();
  }
  core_->ReleaseTsfn();
  // Guest memory goes before the VM fd, so that KVM tears down a VM with no memory behind its
  // slots. With `unmapLater` both are the caller's to do, off the JavaScript thread: closing the
  // VM fd waits for KVM to destroy the VM (its PIT thread among others), 1 to 20 ms measured on
  // the emulated-KVM host.
  for (MemoryEntry& m : memory_) {
    if (explicitClose) {
      napi_value buf = nullptr;
      if (m.buffer != nullptr && napi_get_reference_value(env, m.buffer, &buf) == napi_ok && buf != nullptr) {
        RepayExternalMemory(env, m.share);
        napi_detach_arraybuffer(env, buf);
      }
      if (unmapLater != nullptr) {
        unmapLater->push_back(m.mapping);
      } else {
        m.mapping->Unmap();
      }
    }
    if (m.buffer != nullptr) napi_delete_reference(env, m.buffer);
    m.buffer = nullptr;
  }
  memory_.clear();
  slots_.clear();
  if (unmapLater == nullptr) core_->CloseFds();
  handlers_.Reset();
  onIo_.Reset();
  onEvent_.Reset();
  onStopped_.Reset();
  onTxBatch_.Reset();
  txTimerFn_.Reset();
  if (hookRegistered_) {
    napi_remove_env_cleanup_hook(env, CleanupHook, this);
    hookRegistered_ = false;
  }
  if (pendingError != nullptr) throw Napi::Error(env, pendingError);
}

Napi::Object Vm::AdoptVcpu(Napi::Env env, Napi::Object self, std::shared_ptr<VcpuCore> vcpu) {
  vcpu->vm = core_.get();
  core_->vcpus.push_back(vcpu);  // from here on the core closes the fd and unmaps the area
  return Vcpu::NewInstance(env, self, this, std::move(vcpu));
}

int Vm::Fd(Napi::Env env, const char* op) {
  if (torndown_ || core_->fd < 0) ThrowErrno(env, op, EBADF, "the VM is closed");
  return core_->fd;
}

void Vm::VcpuStarted(Napi::Env env) {
  if (running_++ == 0) {
    if (core_->tsfn != nullptr) napi_ref_threadsafe_function(env, core_->tsfn);
    Ref();
  }
}

void Vm::VcpuEnded(Napi::Env env) {
  if (running_ > 0 && --running_ == 0) {
    if (core_->tsfn != nullptr) napi_unref_threadsafe_function(env, core_->tsfn);
    Unref();
  }
}

void Vm::OnWake(Napi::Env env, bool deferred) {
  if (deferred) {
    // Output only: let it gather until the transmit timer fires, unless the state moved on
    // (another record asked for an immediate drain, or a drain already took everything).
    if (core_->Wake() == WakeState::kDeferred) {
      Napi::HandleScope scope(env);
      ArmTxTimer(env);
    }
    return;
  }
  DrainFromLoop(env);
}

void Vm::ArmTxTimer(Napi::Env env) {
  if (txTimerFn_.IsEmpty() || torndown_ || txTimerArmed_) return;
  Napi::Value timeout = env.Global().Get("setTimeout").As<Napi::Function>().Call(
      {txTimerFn_.Value(), Napi::Number::New(env, txDelayMs_)});
  // Running vCPUs keep the loop alive (the TSFN is referenced); the timer need not.
  if (timeout.IsObject()) {
    Napi::Value unref = timeout.As<Napi::Object>().Get("unref");
    if (unref.IsFunction()) unref.As<Napi::Function>().Call(timeout, {});
  }
  txTimerArmed_ = true;
}

void Vm::OnTxTimer(Napi::Env env) {
  txTimerArmed_ = false;
  if (torndown_ || core_->Wake() != WakeState::kDeferred) return;
  DrainFromLoop(env);
}

void Vm::DrainFromLoop(Napi::Env env) {
  Napi::HandleScope scope(env);
  core_->BeginDrain();
  core_->CountDrain();
  napi_value pendingError = nullptr;
  {
    // A callback scope runs process.nextTick callbacks and microtasks when the drain ends, as
    // for any I/O callback.
    Napi::CallbackScope cbScope(env, *asyncContext_);
    try {
      Drain(env);
    } catch (const Napi::Error& e) {
      pendingError = e.Value();
    }
  }
  if (!torndown_) {
    switch (core_->FinishDrain()) {
      case DrainNext::kContinue:
        ScheduleDrain(env);
        break;
      case DrainNext::kDefer:
        ArmTxTimer(env);
        break;
      case DrainNext::kIdle:
        break;
    }
  }
  if (pendingError != nullptr) napi_fatal_exception(env, pendingError);
}

void Vm::ScheduleDrain(Napi::Env env) {
  // setImmediate: the rest is handled after this loop turn's I/O callbacks and before its timers
  // are due again, and whatever was queued with setImmediate earlier runs first.
  std::weak_ptr<VmCore> weak = core_;
  Napi::Function next = Napi::Function::New(env, [weak](const Napi::CallbackInfo& info) {
    std::shared_ptr<VmCore> core = weak.lock();
    if (core && !core->closed && core->owner != nullptr) core->owner->DrainFromLoop(info.Env());
  });
  env.Global().Get("setImmediate").As<Napi::Function>().Call({next});
}

void Vm::Drain(Napi::Env env) {
  // Only the records queued when the drain starts: vCPUs keep adding while JavaScript handles
  // them, and a guest that does I/O without pause must not keep the event loop (timers, other
  // VMs, the host's own work) waiting. DrainFromLoop schedules the rest for later.
  // Records are taken off the queue in one go (one lock instead of one per record); those not
  // handled yet wait in pending_, where a re-entrant drain (close() from a handler) finds them
  // first, so the order stays the queue's.
  size_t budget = pending_.size() + core_->Queued();
  while (budget > 0 && !torndown_) {
    if (pending_.empty() && core_->PopMany(&pending_, budget) == 0) break;
    ExitRecord r = std::move(pending_.front());
    pending_.pop_front();
    budget--;
    Dispatch(env, r);
  }
}

void Vm::DispatchTxBatch(Napi::Env env, ExitRecord& r) {
  const uint32_t vcpuId = r.vcpu->id;
  if (!onTxBatch_.IsEmpty()) {
    core_->CountJsCall();
    onTxBatch_.Call(handlers_.Value(), {
                                           Napi::Number::New(env, vcpuId),
                                           Napi::Number::New(env, static_cast<double>(r.addr)),
                                           Napi::Buffer<uint8_t>::Copy(env, r.bytes.data(), r.bytes.size()),
                                           Napi::Number::New(env, static_cast<double>(r.seq)),
                                       });
    return;
  }
  // No batch handler: the same writes, one io() call each.
  for (size_t i = 0; i < r.bytes.size() && !torndown_ && !onIo_.IsEmpty(); i++) {
    Napi::HandleScope scope(env);
    core_->CountJsCall();
    onIo_.Call(handlers_.Value(), {
                                      Napi::Number::New(env, kPioWrite),
                                      Napi::Number::New(env, vcpuId),
                                      Napi::Number::New(env, static_cast<double>(r.addr)),
                                      Napi::Number::New(env, 1),
                                      Napi::Number::New(env, r.bytes[i]),
                                      Napi::Number::New(env, static_cast<double>(r.seq + i)),
                                  });
  }
}

void Vm::Dispatch(Napi::Env env, ExitRecord& r) {
  Napi::HandleScope scope(env);
  const uint32_t vcpuId = r.vcpu->id;
  if (r.type == RecordType::kStopped) {
    VcpuEnded(env);
    if (!onStopped_.IsEmpty()) {
      core_->CountJsCall();
      onStopped_.Call(handlers_.Value(), {Napi::Number::New(env, vcpuId)});
    }
    return;
  }
  if (r.type == RecordType::kTxBatch) {
    DispatchTxBatch(env, r);
    return;
  }
  if (r.type == RecordType::kEvent) {
    // A stop cancelled the wait: the vCPU no longer listens for a verdict.
    if (!core_->StillWaiting(r)) return;
    if (onEvent_.IsEmpty()) {
      core_->Answer(r, kStop);
      return;
    }
    Napi::Value ret;
    core_->CountJsCall();
    try {
      ret = onEvent_.Call(handlers_.Value(), {Napi::Number::New(env, vcpuId), EventToJs(env, *r.event)});
    } catch (...) {
      core_->Answer(r, kStop);
      throw;
    }
    core_->Answer(r, VerdictOf(ret));
    return;
  }
  const bool isRead = r.kind == kPioRead || r.kind == kMmioRead;
  // A cancelled read was already answered with all-ones; running the handler would only repeat
  // its side effects (a FIFO pop, say) for nobody.
  if (isRead && !core_->StillWaiting(r)) return;
  if (onIo_.IsEmpty()) {
    if (isRead) core_->Answer(r, SizeMask(r.size));
    return;
  }
  Napi::Value ret;
  core_->CountJsCall();
  try {
    ret = onIo_.Call(handlers_.Value(), {
                                            Napi::Number::New(env, r.kind),
                                            Napi::Number::New(env, vcpuId),
                                            Napi::Number::New(env, static_cast<double>(r.addr)),
                                            Napi::Number::New(env, r.size),
                                            Napi::Number::New(env, r.value),
                                            Napi::Number::New(env, static_cast<double>(r.seq)),
                                        });
  } catch (...) {
    if (isRead) core_->Answer(r, SizeMask(r.size));
    throw;
  }
  if (isRead) {
    uint32_t value = 0;
    if (ret.IsNumber()) value = ret.As<Napi::Number>().Uint32Value();
    core_->Answer(r, value & SizeMask(r.size));
  }
}

Napi::Value Vm::CheckExtension(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t cap = ArgU32(info, 0, "cap");
  const int r = ioctl(Fd(env, "KVM_CHECK_EXTENSION"), KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (r < 0) ThrowErrno(env, "KVM_CHECK_EXTENSION", errno);
  return Napi::Number::New(env, r);
}

Napi::Value Vm::AllocateMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (torndown_) ThrowErrno(env, "mmap", EBADF, "the VM is closed");
  const uint64_t size = ArgSafeU64(info, 0, "size");
  // Node-API's external ArrayBuffers stop at 4 GiB on Node.js 20 (buffer.constants.MAX_LENGTH):
  // larger guests take one buffer per region (lib/memory splitRegions).
  if (size == 0 || size > kMaxMemoryBuffer) ThrowRange(env, "allocateMemory: size must be in (0, 4 GiB]");
  auto mapping = std::make_shared<Mapping>();
  const char* op = nullptr;
  if (const int err = mapping->MapAnonymous(size, &op)) ThrowErrno(env, op, err);
  return AdoptMapping(env, mapping);
}

Napi::Value Vm::AdoptMapping(Napi::Env env, const std::shared_ptr<Mapping>& mapping) {
  if (mapping->size > kMaxMemoryBuffer) ThrowRange(env, "a memory buffer holds at most 4 GiB");
  auto* share = new BufferShare{mapping, 0};
  napi_value buffer = nullptr;
  // On failure Node.js has already run (or scheduled) the finalizer, which owns `share`: never
  // delete it here. `mapping` then goes with it.
  if (napi_create_external_arraybuffer(env, mapping->addr, mapping->size, ReleaseMapping, share, &buffer) != napi_ok) {
    throw Napi::Error::New(env);  // the pending exception or the last Node-API error
  }
  // V8 counts the buffer's whole length as external memory, as if collecting the buffer could
  // free it; guest RAM is released by close(), never by a collection. A count that rises by more
  // than kV8ExternalSoftLimit above its lowest value since the last full collection starts
  // another one. Taken off again here (and given back right before V8 takes it off itself), a
  // buffer of at most half that limit never starts one; the other half is left for the process's
  // other external memory. A larger buffer starts one at creation whatever is done afterwards
  // (the rise is measured from the lowest count, which taking the count off would only lower),
  // so its count is left as V8 keeps it: giving it back later would start a second one.
  if (static_cast<int64_t>(mapping->size) <= kV8ExternalSoftLimit / 2) {
    int64_t ignored = 0;
    if (napi_adjust_external_memory(env, -static_cast<int64_t>(mapping->size), &ignored) == napi_ok) {
      share->owed = static_cast<int64_t>(mapping->size);
    }
  }
  MemoryEntry entry;
  entry.mapping = mapping;
  entry.share = share;
  napi_create_reference(env, buffer, 0, &entry.buffer);
  memory_.push_back(std::move(entry));
  // A transfer (postMessage, structuredClone) would move the memory out of this VM's reach while
  // KVM and close() still use it: marked untransferable, a transfer copies it instead.
  Napi::FunctionReference& mark = GetAddonData(env)->markUntransferable;
  if (!mark.IsEmpty()) mark.Call({Napi::Value(env, buffer)});
  return Napi::Value(env, buffer);
}

std::shared_ptr<Mapping> Vm::FindMapping(Napi::Value buffer) const {
  if (!buffer.IsArrayBuffer()) return nullptr;
  const uint8_t* data = static_cast<const uint8_t*>(buffer.As<Napi::ArrayBuffer>().Data());
  if (data == nullptr) return nullptr;  // detached
  for (const MemoryEntry& m : memory_) {
    if (m.mapping->addr != nullptr && m.mapping->addr == data) return m.mapping;
  }
  return nullptr;
}

Napi::Value Vm::SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_USER_MEMORY_REGION");
  const uint32_t slot = ArgU32(info, 0, "slot");
  const uint64_t gpa = ArgSafeU64(info, 1, "guestPhysAddr");
  if (info.Length() < 3 || !info[2].IsArrayBuffer()) ThrowType(env, "memory must be an ArrayBuffer from allocateMemory()");
  const uint64_t offset = ArgSafeU64(info, 3, "offset");
  const uint64_t size = ArgSafeU64(info, 4, "size");
  // Only memory this VM mapped may be handed to KVM: anything else could be freed under the guest.
  std::shared_ptr<Mapping> mapping = FindMapping(info[2]);
  if (mapping == nullptr) ThrowRange(env, "memory is not a live buffer from this VM's allocateMemory() or mapMemoryFile()");
  if (offset > mapping->size || size > mapping->size - offset) ThrowRange(env, "offset/size outside the buffer");
  kvm_userspace_memory_region region;
  std::memset(&region, 0, sizeof region);
  region.slot = slot;
  region.flags = 0;
  region.guest_phys_addr = gpa;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(mapping->addr + offset);
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) ThrowErrno(env, "KVM_SET_USER_MEMORY_REGION", errno);
  if (size == 0) {
    slots_.erase(slot);  // a zero-sized region deletes the slot (api.rst)
  } else {
    slots_[slot] = SlotInfo{mapping, offset, gpa, size, 0};
  }
  return env.Undefined();
}

Napi::Value Vm::SetTssAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_TSS_ADDR");
  const uint32_t addr = ArgU32(info, 0, "addr");
  if (ioctl(fd, KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0) ThrowErrno(env, "KVM_SET_TSS_ADDR", errno);
  return env.Undefined();
}

Napi::Value Vm::SetIdentityMapAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_IDENTITY_MAP_ADDR");
  uint64_t addr = ArgSafeU64(info, 0, "addr");
  if (ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0) ThrowErrno(env, "KVM_SET_IDENTITY_MAP_ADDR", errno);
  return env.Undefined();
}

Napi::Value Vm::CreateIrqchip(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ioctl(Fd(env, "KVM_CREATE_IRQCHIP"), KVM_CREATE_IRQCHIP, 0) < 0) ThrowErrno(env, "KVM_CREATE_IRQCHIP", errno);
  return env.Undefined();
}

Napi::Value Vm::CreatePit2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_CREATE_PIT2");
  kvm_pit_config config;
  std::memset(&config, 0, sizeof config);
  config.flags = ArgU32(info, 0, "flags");
  if (ioctl(fd, KVM_CREATE_PIT2, &config) < 0) ThrowErrno(env, "KVM_CREATE_PIT2", errno);
  return env.Undefined();
}

Napi::Value Vm::IrqLine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_IRQ_LINE");
  kvm_irq_level level;
  std::memset(&level, 0, sizeof level);
  level.irq = ArgU32(info, 0, "irq");
  level.level = info.Length() > 1 && info[1].ToBoolean().Value() ? 1 : 0;
  if (ioctl(fd, KVM_IRQ_LINE, &level) < 0) ThrowErrno(env, "KVM_IRQ_LINE", errno);
  return env.Undefined();
}

Napi::Value Vm::IoEventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_IOEVENTFD");
  if (info.Length() < 1 || !info[0].IsObject()) ThrowType(env, "ioeventfd: expected an IoEventFdArgs object");
  Napi::Object args = info[0].As<Napi::Object>();
  kvm_ioeventfd io;
  std::memset(&io, 0, sizeof io);
  io.addr = ValueToU64(env, args.Get("addr"), "addr");
  io.len = static_cast<uint32_t>(ValueToU64(env, args.Get("len"), "len"));
  const uint64_t efd = ValueToU64(env, args.Get("fd"), "fd");
  if (efd > 0x7fffffff) ThrowRange(env, "fd out of range");
  io.fd = static_cast<int32_t>(efd);
  Napi::Value datamatch = args.Get("datamatch");
  if (!datamatch.IsUndefined() && !datamatch.IsNull()) {
    io.datamatch = ValueToU64(env, datamatch, "datamatch");
    io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  }
  if (args.Get("pio").ToBoolean().Value()) io.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (args.Get("deassign").ToBoolean().Value()) io.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  if (ioctl(fd, KVM_IOEVENTFD, &io) < 0) ThrowErrno(env, "KVM_IOEVENTFD", errno);
  return env.Undefined();
}

Napi::Value Vm::IrqFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_IRQFD");
  kvm_irqfd irq;
  std::memset(&irq, 0, sizeof irq);
  irq.fd = static_cast<uint32_t>(ArgFd(info, 0));
  irq.gsi = ArgU32(info, 1, "gsi");
  if (info.Length() > 2 && info[2].ToBoolean().Value()) irq.flags |= KVM_IRQFD_FLAG_DEASSIGN;
  if (ioctl(fd, KVM_IRQFD, &irq) < 0) ThrowErrno(env, "KVM_IRQFD", errno);
  return env.Undefined();
}

Napi::Value Vm::CreateVcpu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_CREATE_VCPU");
  const uint32_t id = ArgU32(info, 0, "id");
  if (core_->stopping.load()) ThrowState(env, "createVcpu: the VM's vCPUs were stopped");
  const int vcpuFd = ioctl(fd, KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (vcpuFd < 0) ThrowErrno(env, "KVM_CREATE_VCPU", errno);
  void* run = mmap(nullptr, core_->runMmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd, 0);
  if (run == MAP_FAILED) {
    const int err = errno;
    close(vcpuFd);
    ThrowErrno(env, "mmap", err, "kvm_run area");
  }
  auto vcpu = std::make_shared<VcpuCore>();
  vcpu->id = id;
  vcpu->fd = vcpuFd;
  vcpu->run = static_cast<kvm_run*>(run);
  vcpu->runSize = core_->runMmapSize;
  return AdoptVcpu(env, Value(), std::move(vcpu));
}

Napi::Value Vm::SetExitHandlers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (torndown_) ThrowState(env, "setExitHandlers: the VM is closed");
  if (info.Length() < 1 || !info[0].IsObject()) ThrowType(env, "setExitHandlers: expected an ExitHandlers object");
  Napi::Object h = info[0].As<Napi::Object>();
  Napi::Value io = h.Get("io");
  Napi::Value event = h.Get("event");
  Napi::Value stopped = h.Get("vcpuStopped");
  if (!io.IsFunction() || !event.IsFunction() || !stopped.IsFunction()) {
    ThrowType(env, "setExitHandlers: io, event and vcpuStopped must be functions");
  }
  Napi::Value batch = h.Get("pioWriteBatch");
  if (!batch.IsUndefined() && !batch.IsFunction()) ThrowType(env, "setExitHandlers: pioWriteBatch must be a function when given");
  handlers_ = Napi::Persistent(h);
  if (batch.IsFunction()) onTxBatch_ = Napi::Persistent(batch.As<Napi::Function>());
  onIo_ = Napi::Persistent(io.As<Napi::Function>());
  onEvent_ = Napi::Persistent(event.As<Napi::Function>());
  onStopped_ = Napi::Persistent(stopped.As<Napi::Function>());
  return env.Undefined();
}

Napi::Value Vm::FlushExits(const Napi::CallbackInfo& info) {
  Drain(info.Env());
  return info.Env().Undefined();
}

Napi::Value Vm::DefinePioSink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t base = ArgU32(info, 0, "base");
  const uint32_t len = ArgU32(info, 1, "len");
  if (len == 0 || base > 0xffff || base + len > 0x10000) ThrowRange(env, "definePioSink: ports must lie in [0, 0x10000)");
  core_->DefinePioSink(base, len);
  return env.Undefined();
}

Napi::Value Vm::DefinePioReadCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t base = ArgU32(info, 0, "base");
  const uint32_t len = ArgU32(info, 1, "len");
  const uint32_t mask = ArgU32(info, 2, "transparentWriteMask");
  if (len == 0 || len > 32) ThrowRange(env, "definePioReadCache: len must be 1..32 (one mask bit per port)");
  if (base > 0xffff || base + len > 0x10000) ThrowRange(env, "definePioReadCache: ports must lie in [0, 0x10000)");
  if (core_->PioGroupOverlaps(base, len)) ThrowRange(env, "definePioReadCache: overlaps an existing group");
  core_->DefinePioGroup(base, len, mask);
  return env.Undefined();
}

Napi::Value Vm::SetPioReadCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t port = ArgU32(info, 0, "port");
  if (info.Length() < 2 || !info[1].IsNumber()) ThrowType(env, "value must be a number");
  const double value = info[1].As<Napi::Number>().DoubleValue();
  const uint64_t seq = ArgSafeU64(info, 2, "seq");
  const int64_t v = value < 0 ? -1 : static_cast<int64_t>(static_cast<uint32_t>(info[1].As<Napi::Number>().Uint32Value()));
  return Napi::Boolean::New(env, core_->SetPioCache(port, v, seq));
}

Napi::Value Vm::DefineTransmitBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (torndown_) ThrowState(env, "defineTransmitBuffer: the VM is closed");
  const uint32_t port = ArgU32(info, 0, "port");
  const uint32_t capacity = ArgU32(info, 1, "capacity");
  const uint32_t delayMs = ArgU32(info, 2, "maxDelayMs");
  if (port > 0xffff) ThrowRange(env, "defineTransmitBuffer: port must lie in [0, 0x10000)");
  if (capacity == 0 || capacity > 65536) ThrowRange(env, "defineTransmitBuffer: capacity must be 1..65536 bytes");
  if (delayMs > 1000) ThrowRange(env, "defineTransmitBuffer: maxDelayMs must be 0..1000");
  for (auto& v : core_->vcpus) {
    if (v->started) ThrowState(env, "defineTransmitBuffer: call it before any vCPU starts");
  }
  if (txTimerFn_.IsEmpty()) {
    std::weak_ptr<VmCore> weak = core_;
    txTimerFn_ = Napi::Persistent(Napi::Function::New(env, [weak](const Napi::CallbackInfo& ci) {
      std::shared_ptr<VmCore> core = weak.lock();
      if (core && !core->closed && core->owner != nullptr) core->owner->OnTxTimer(ci.Env());
    }));
  }
  txDelayMs_ = delayMs;
  core_->DefineTxPort(port, capacity);
  return env.Undefined();
}

Napi::Value Vm::SetTransmitDeferral(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool defer = info.Length() > 0 && info[0].ToBoolean().Value();
  // A batch already waiting for the timer is taken at the next turn of the loop.
  if (core_->SetTxDefer(defer) && !torndown_) ScheduleDrain(env);
  return env.Undefined();
}

Napi::Value Vm::ExitStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ExitCounters c = core_->Counters();
  Napi::Object o = Napi::Object::New(env);
  o.Set("records", Napi::Number::New(env, static_cast<double>(c.records)));
  o.Set("txBatches", Napi::Number::New(env, static_cast<double>(c.txBatches)));
  o.Set("txBytes", Napi::Number::New(env, static_cast<double>(c.txBytes)));
  o.Set("signals", Napi::Number::New(env, static_cast<double>(c.signals)));
  o.Set("deferredWakes", Napi::Number::New(env, static_cast<double>(c.deferredWakes)));
  o.Set("drains", Napi::Number::New(env, static_cast<double>(c.drains)));
  o.Set("jsCalls", Napi::Number::New(env, static_cast<double>(c.jsCalls)));
  return o;
}

Napi::Value Vm::StopVcpus(const Napi::CallbackInfo& info) {
  core_->StopAll();
  return info.Env().Undefined();
}

Napi::Value Vm::PauseVcpus(const Napi::CallbackInfo& info) {
  core_->PauseAll();
  return info.Env().Undefined();
}

Napi::Value Vm::ResumeVcpus(const Napi::CallbackInfo& info) {
  core_->ResumeAll();
  return info.Env().Undefined();
}

Napi::Value Vm::Close(const Napi::CallbackInfo& info) {
  Teardown(info.Env(), true);
  return info.Env().Undefined();
}

Napi::Value Vm::StopVcpusAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  core_->RequestStop();
  std::shared_ptr<VmCore> core = core_;
  // The JS object stays referenced until the promise settles, so no finalizer joins concurrently.
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));
  return AsyncTask::Start(
      env, "kindling:stopVcpus", [core] { core->StopAll(); },
      [self](Napi::Env e, Napi::Promise::Deferred& d) {
        self->Reset();
        d.Resolve(e.Undefined());
      },
      [self] { self->SuppressDestruct(); });
}

Napi::Value Vm::CloseAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // A close under way answers with its own promise: it resolves once all is released.
  if (!closePromise_.IsEmpty()) return closePromise_.Value();
  if (torndown_) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  core_->RequestStop();
  std::shared_ptr<VmCore> core = core_;
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));
  // Two trips to the thread pool: the threads are joined there, then the JavaScript-thread part
  // of the teardown runs (handlers of the records still queued, buffers detached), then the
  // mappings are unmapped and the fds closed there.
  Napi::Promise closing = AsyncTask::Start(
      env, "kindling:close", [core] { core->StopAll(); },
      [self, core](Napi::Env e, Napi::Promise::Deferred& d) {
        Vm* vm = Vm::Unwrap(self->Value());
        auto unmap = std::make_shared<std::vector<std::shared_ptr<Mapping>>>();
        // A handler that throws while the last records are delivered fails the close, once
        // everything is released.
        std::shared_ptr<Napi::ObjectReference> error;
        try {
          vm->Teardown(e, true, unmap.get());
        } catch (const Napi::Error& err) {
          error = std::make_shared<Napi::ObjectReference>(Napi::Persistent(err.Value()));
        }
        d.Resolve(AsyncTask::Start(
            e, "kindling:close", [unmap, core] { Release(*unmap, *core); },
            [self, error](Napi::Env e2, Napi::Promise::Deferred& d2) {
              // Done: later calls get a resolved promise (torndown_), not this one.
              Vm::Unwrap(self->Value())->closePromise_.Reset();
              self->Reset();
              if (error) {
                d2.Reject(error->Value());
              } else {
                d2.Resolve(e2.Undefined());
              }
            },
            [self, error] {
              self->SuppressDestruct();
              if (error) error->SuppressDestruct();
            }));
      },
      [self] { self->SuppressDestruct(); });
  closePromise_ = Napi::Persistent(static_cast<Napi::Object>(closing));
  return closing;
}

void Vm::Release(std::vector<std::shared_ptr<Mapping>>& unmap, VmCore& core) {
  for (auto& m : unmap) m->Unmap();
  core.CloseFds();
}

}  // namespace kindling
