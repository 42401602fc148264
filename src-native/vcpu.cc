#include "vcpu.h"

#include "kvm_abi.h"

#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstring>
#include <vector>

#include "addon_data.h"
#include "async_task.h"
#include "convert.h"
#include "errors.h"
#include "vm.h"

namespace kindling {

namespace {

struct VcpuInit {
  Vm* vm;
  std::shared_ptr<VcpuCore> core;
};

constexpr size_t kMaxMsrs = 1024;
constexpr size_t kMaxCpuidEntries = 1024;

}  // namespace

Napi::Function Vcpu::Init(Napi::Env env) {
  return DefineClass(env, "NativeVcpu",
                     {
                         InstanceAccessor<&Vcpu::Id>("id"),
                         InstanceAccessor<&Vcpu::FdValue>("fd"),
                         InstanceMethod<&Vcpu::GetRegs>("getRegs"),
                         InstanceMethod<&Vcpu::SetRegs>("setRegs"),
                         InstanceMethod<&Vcpu::GetSregs>("getSregs"),
                         InstanceMethod<&Vcpu::SetSregs>("setSregs"),
                         InstanceMethod<&Vcpu::SetFpu>("setFpu"),
                         InstanceMethod<&Vcpu::SetMsrs>("setMsrs"),
                         InstanceMethod<&Vcpu::GetMsrs>("getMsrs"),
                         InstanceMethod<&Vcpu::SetCpuid>("setCpuid"),
                         InstanceMethod<&Vcpu::GetLapic>("getLapic"),
                         InstanceMethod<&Vcpu::SetLapic>("setLapic"),
                         InstanceMethod<&Vcpu::GetMpState>("getMpState"),
                         InstanceMethod<&Vcpu::SetMpState>("setMpState"),
                         InstanceMethod<&Vcpu::InjectException>("injectException"),
                         InstanceMethod<&Vcpu::Start>("start"),
                         InstanceMethod<&Vcpu::PrepareStart>("prepareStart"),
                         InstanceAccessor<&Vcpu::RunState>("runState"),
                         InstanceMethod<&Vcpu::SaveState>("saveState"),
                         InstanceMethod<&Vcpu::RestoreState>("restoreState"),
                         InstanceMethod<&Vcpu::GetCpuid>("getCpuid"),
                         InstanceMethod<&Vcpu::GetTscKhz>("getTscKhz"),
                         InstanceMethod<&Vcpu::SetTscKhz>("setTscKhz"),
                     });
}

Napi::Object Vcpu::NewInstance(Napi::Env env, Napi::Object vmObject, Vm* vm, std::shared_ptr<VcpuCore> core) {
  VcpuInit init{vm, std::move(core)};
  return GetAddonData(env)->vcpuCtor.New({Napi::External<VcpuInit>::New(env, &init), vmObject});
}

Vcpu::Vcpu(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Vcpu>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsExternal() || !info[1].IsObject()) {
    ThrowType(env, "NativeVcpu is created by NativeVm.createVcpu()");
  }
  VcpuInit* init = info[0].As<Napi::External<VcpuInit>>().Data();
  vm_ = init->vm;
  vmCore_ = vm_->core();
  core_ = init->core;
  vmObject_ = Napi::Persistent(info[1].As<Napi::Object>());
}

int Vcpu::Fd(Napi::Env env, const char* op) {
  // Closed: closeAsync() may be closing the fd on a worker thread right now.
  if (vm_->Closed() || core_->fd < 0) ThrowErrno(env, op, EBADF, "the VM is closed");
  if (!vmCore_->IsQuiescent(*core_)) {
    ThrowErrno(env, op, EBUSY, "vCPU " + std::to_string(core_->id) + " is running (pause it or call from its event handler)");
  }
  return core_->fd;
}

Napi::Value Vcpu::Id(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), core_->id); }

Napi::Value Vcpu::GetRegs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm_regs regs;
  std::memset(&regs, 0, sizeof regs);
  if (ioctl(Fd(env, "KVM_GET_REGS"), KVM_GET_REGS, &regs) < 0) ThrowErrno(env, "KVM_GET_REGS", errno);
  return RegsToJs(env, regs);
}

Napi::Value Vcpu::SetRegs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm_regs regs;
  std::memset(&regs, 0, sizeof regs);
  RegsFromJs(env, info[0], &regs);
  if (ioctl(Fd(env, "KVM_SET_REGS"), KVM_SET_REGS, &regs) < 0) ThrowErrno(env, "KVM_SET_REGS", errno);
  return env.Undefined();
}

Napi::Value Vcpu::GetSregs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm_sregs sregs;
  std::memset(&sregs, 0, sizeof sregs);
  if (ioctl(Fd(env, "KVM_GET_SREGS"), KVM_GET_SREGS, &sregs) < 0) ThrowErrno(env, "KVM_GET_SREGS", errno);
  return SregsToJs(env, sregs);
}

Napi::Value Vcpu::SetSregs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_SREGS");
  // Read-modify-write keeps the interrupt bitmap, which Sregs does not carry.
  kvm_sregs sregs;
  std::memset(&sregs, 0, sizeof sregs);
  if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0) ThrowErrno(env, "KVM_GET_SREGS", errno);
  SregsFromJs(env, info[0], &sregs);
  if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0) ThrowErrno(env, "KVM_SET_SREGS", errno);
  return env.Undefined();
}

Napi::Value Vcpu::SetFpu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_FPU");
  if (info.Length() < 1 || !info[0].IsObject()) ThrowType(env, "setFpu: expected an FpuState object");
  Napi::Object o = info[0].As<Napi::Object>();
  const uint64_t fcw = ValueToU64(env, o.Get("fcw"), "fcw");
  const uint64_t mxcsr = ValueToU64(env, o.Get("mxcsr"), "mxcsr");
  if (fcw > 0xffff || mxcsr > 0xffffffffu) ThrowRange(env, "setFpu: fcw is 16 bits, mxcsr 32 bits");
  kvm_fpu fpu;
  std::memset(&fpu, 0, sizeof fpu);
  if (ioctl(fd, KVM_GET_FPU, &fpu) < 0) ThrowErrno(env, "KVM_GET_FPU", errno);
  fpu.fcw = static_cast<uint16_t>(fcw);
  fpu.mxcsr = static_cast<uint32_t>(mxcsr);
  if (ioctl(fd, KVM_SET_FPU, &fpu) < 0) ThrowErrno(env, "KVM_SET_FPU", errno);
  return env.Undefined();
}

Napi::Value Vcpu::SetMsrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_MSRS");
  if (info.Length() < 1 || !info[0].IsArray()) ThrowType(env, "setMsrs: expected an array of MsrEntry");
  Napi::Array list = info[0].As<Napi::Array>();
  const size_t n = list.Length();
  if (n > kMaxMsrs) ThrowRange(env, "setMsrs: too many entries");
  FlexTable<KvmMsrsHeader, kvm_msr_entry> msrs(n);
  msrs.header()->nmsrs = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; i++) {
    Napi::Value item = list.Get(static_cast<uint32_t>(i));
    if (!item.IsObject()) ThrowType(env, "setMsrs: entries must be objects");
    Napi::Object e = item.As<Napi::Object>();
    const uint64_t index = ValueToU64(env, e.Get("index"), "index");
    if (index > 0xffffffffu) ThrowRange(env, "setMsrs: index is 32 bits");
    msrs.entries()[i].index = static_cast<uint32_t>(index);
    msrs.entries()[i].data = ValueToU64(env, e.Get("data"), "data");
  }
  const int r = ioctl(fd, kKvmSetMsrs, msrs.data());
  if (r < 0) ThrowErrno(env, "KVM_SET_MSRS", errno);
  return Napi::Number::New(env, r);
}

Napi::Value Vcpu::GetMsrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_GET_MSRS");
  if (info.Length() < 1 || !info[0].IsArray()) ThrowType(env, "getMsrs: expected an array of indexes");
  Napi::Array list = info[0].As<Napi::Array>();
  const size_t n = list.Length();
  if (n > kMaxMsrs) ThrowRange(env, "getMsrs: too many entries");
  FlexTable<KvmMsrsHeader, kvm_msr_entry> msrs(n);
  msrs.header()->nmsrs = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; i++) {
    const uint64_t index = ValueToU64(env, list.Get(static_cast<uint32_t>(i)), "index");
    if (index > 0xffffffffu) ThrowRange(env, "getMsrs: index is 32 bits");
    msrs.entries()[i].index = static_cast<uint32_t>(index);
  }
  const int r = ioctl(fd, kKvmGetMsrs, msrs.data());
  if (r < 0) ThrowErrno(env, "KVM_GET_MSRS", errno);
  // KVM stops at the first MSR it cannot read and returns how many it read.
  if (static_cast<size_t>(r) < n) {
    char hex[16];
    snprintf(hex, sizeof hex, "0x%x", msrs.entries()[r].index);
    ThrowErrno(env, "KVM_GET_MSRS", EINVAL, std::string("MSR ") + hex + " cannot be read");
  }
  Napi::Array out = Napi::Array::New(env, n);
  for (size_t i = 0; i < n; i++) out.Set(static_cast<uint32_t>(i), Napi::BigInt::New(env, static_cast<uint64_t>(msrs.entries()[i].data)));
  return out;
}

Napi::Value Vcpu::SetCpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_CPUID2");
  if (info.Length() < 1 || !info[0].IsArray()) ThrowType(env, "setCpuid: expected an array of CpuidEntry");
  Napi::Array list = info[0].As<Napi::Array>();
  const size_t n = list.Length();
  if (n > kMaxCpuidEntries) ThrowRange(env, "setCpuid: too many entries");
  FlexTable<KvmCpuid2Header, kvm_cpuid_entry2> cpuid(n);
  cpuid.header()->nent = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; i++) CpuidEntryFromJs(env, list.Get(static_cast<uint32_t>(i)), &cpuid.entries()[i]);
  if (ioctl(fd, kKvmSetCpuid2, cpuid.data()) < 0) ThrowErrno(env, "KVM_SET_CPUID2", errno);
  return env.Undefined();
}

Napi::Value Vcpu::GetLapic(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm_lapic_state lapic;
  std::memset(&lapic, 0, sizeof lapic);
  if (ioctl(Fd(env, "KVM_GET_LAPIC"), KVM_GET_LAPIC, &lapic) < 0) ThrowErrno(env, "KVM_GET_LAPIC", errno);
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(lapic.regs), sizeof lapic.regs);
}

Napi::Value Vcpu::SetLapic(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_LAPIC");
  if (info.Length() < 1 || !info[0].IsTypedArray()) ThrowType(env, "setLapic: expected a Buffer");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  kvm_lapic_state lapic;
  if (ta.ByteLength() != sizeof lapic.regs) ThrowRange(env, "setLapic: the register page is 1024 bytes");
  const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  std::memcpy(lapic.regs, src, sizeof lapic.regs);
  if (ioctl(fd, KVM_SET_LAPIC, &lapic) < 0) ThrowErrno(env, "KVM_SET_LAPIC", errno);
  return env.Undefined();
}

Napi::Value Vcpu::GetMpState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm_mp_state state;
  std::memset(&state, 0, sizeof state);
  if (ioctl(Fd(env, "KVM_GET_MP_STATE"), KVM_GET_MP_STATE, &state) < 0) ThrowErrno(env, "KVM_GET_MP_STATE", errno);
  return Napi::Number::New(env, state.mp_state);
}

Napi::Value Vcpu::SetMpState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_MP_STATE");
  kvm_mp_state state;
  state.mp_state = ArgU32(info, 0, "state");
  if (ioctl(fd, KVM_SET_MP_STATE, &state) < 0) ThrowErrno(env, "KVM_SET_MP_STATE", errno);
  return env.Undefined();
}

Napi::Value Vcpu::InjectException(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_VCPU_EVENTS");
  const uint32_t vector = ArgU32(info, 0, "vector");
  if (vector > 31) ThrowRange(env, "injectException: vector must be 0..31");
  const bool hasErrorCode = info.Length() > 1 && !info[1].IsUndefined();
  const uint32_t errorCode = hasErrorCode ? ArgU32(info, 1, "errorCode") : 0;
  kvm_vcpu_events events;
  std::memset(&events, 0, sizeof events);
  if (ioctl(fd, KVM_GET_VCPU_EVENTS, &events) < 0) ThrowErrno(env, "KVM_GET_VCPU_EVENTS", errno);
  // Round-trip everything else as KVM reported it (QEMU does the same).
  events.exception.injected = 1;
  events.exception.pending = 0;
  events.exception.nr = static_cast<uint8_t>(vector);
  events.exception.has_error_code = hasErrorCode ? 1 : 0;
  events.exception.error_code = errorCode;
  events.exception_has_payload = 0;
  events.exception_payload = 0;
  if (ioctl(fd, KVM_SET_VCPU_EVENTS, &events) < 0) ThrowErrno(env, "KVM_SET_VCPU_EVENTS", errno);
  return env.Undefined();
}

namespace {

// start()'s and prepareStart()'s optional seccomp program argument.
SeccompProgram FilterArgument(const Napi::CallbackInfo& info, const char* method) {
  Napi::Env env = info.Env();
  SeccompProgram filter;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(env, std::string(method) + ": the seccomp filter must be a Uint8Array");
    }
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    if (!ParseSeccompProgram(bytes.Data(), bytes.ByteLength(), &filter)) {
      ThrowRange(env, std::string(method) + ": a seccomp filter is 1 to 4096 instructions of 8 bytes");
    }
  }
  return filter;
}

}  // namespace

Napi::Value Vcpu::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (core_->started) ThrowState(env, "start: vCPU " + std::to_string(core_->id) + " was already started");
  if (vm_->Closed() || core_->fd < 0) ThrowErrno(env, "KVM_RUN", EBADF, "the VM is closed");
  if (vmCore_->stopping.load()) ThrowState(env, "start: the VM's vCPUs were stopped");
  if (!vm_->HandlersSet()) ThrowState(env, "start: call NativeVm.setExitHandlers() first");
  if (core_->preparing) ThrowState(env, "start: prepareStart() has not settled yet");
  if (core_->prepared) {
    // The thread has installed its filter already and waits only for this.
    if (info.Length() > 0 && !info[0].IsUndefined()) ThrowType(env, "start: the vCPU was prepared; its filter was given to prepareStart()");
    vmCore_->GoThread(*core_);
    vm_->VcpuStarted(env);
    return env.Undefined();
  }
  core_->seccomp = FilterArgument(info, "start");
  try {
    if (core_->prestarted) {
      vmCore_->ReleaseThread(*core_);  // made with the VM (NativeKvm.createVmAsync)
    } else {
      vmCore_->StartThread(*core_);
    }
  } catch (const ThreadStartFailure& f) {
    ThrowErrno(env, f.op, f.err);
  }
  vm_->VcpuStarted(env);
  return env.Undefined();
}

Napi::Value Vcpu::PrepareStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (core_->started || core_->prepared || core_->preparing) {
    ThrowState(env, "prepareStart: vCPU " + std::to_string(core_->id) + " was already started or prepared");
  }
  if (vm_->Closed() || core_->fd < 0) ThrowErrno(env, "KVM_RUN", EBADF, "the VM is closed");
  if (vmCore_->stopping.load()) ThrowState(env, "prepareStart: the VM's vCPUs were stopped");
  if (!core_->prestarted) ThrowState(env, "prepareStart: only for vCPUs made by NativeKvm.createVmAsync (use start())");
  core_->seccomp = FilterArgument(info, "prepareStart");
  std::shared_ptr<ThreadStart> start;
  try {
    start = vmCore_->PrepareThread(*core_);
  } catch (const ThreadStartFailure& f) {
    ThrowErrno(env, f.op, f.err);
  }
  core_->preparing = true;
  std::shared_ptr<VmCore> vmCore = vmCore_;
  std::shared_ptr<VcpuCore> core = core_;
  auto failure = std::make_shared<ThreadStartFailure>(ThreadStartFailure{nullptr, 0});
  // The vCPU (and through it the VM) stays referenced until the promise settles.
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));
  return AsyncTask::Start(
      env, "kindling:prepareVcpu",
      [start, failure, vmCore, core] {
        // The wait for the new thread's prologue happens here, not on the JavaScript thread.
        *failure = AwaitThreadStart(*start);
        if (failure->op != nullptr) vmCore->JoinEnded(*core);
      },
      [self, failure, core](Napi::Env e, Napi::Promise::Deferred& d) {
        self->Reset();
        core->preparing = false;
        if (failure->op != nullptr) {
          // The thread has ended without running the guest; start() makes a new one.
          core->prestarted = false;
          d.Reject(MakeErrnoError(e, failure->op, failure->err));
          return;
        }
        core->prepared = true;
        d.Resolve(e.Undefined());
      },
      [self] { self->SuppressDestruct(); });
}

Napi::Value Vcpu::FdValue(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), core_->fd); }

}  // namespace kindling
