// NativeVcpu: a vCPU fd, its kvm_run area and its run thread; register access from JavaScript.
#pragma once

#include <napi.h>

#include <memory>

#include "vm_core.h"

namespace kindling {

class Vm;

class Vcpu : public Napi::ObjectWrap<Vcpu> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, Napi::Object vmObject, Vm* vm, std::shared_ptr<VcpuCore> core);

  explicit Vcpu(const Napi::CallbackInfo& info);

  const std::shared_ptr<VcpuCore>& core() const { return core_; }

 private:
  Napi::Value Id(const Napi::CallbackInfo& info);
  Napi::Value FdValue(const Napi::CallbackInfo& info);
  Napi::Value GetRegs(const Napi::CallbackInfo& info);
  Napi::Value SetRegs(const Napi::CallbackInfo& info);
  Napi::Value GetSregs(const Napi::CallbackInfo& info);
  Napi::Value SetSregs(const Napi::CallbackInfo& info);
  Napi::Value SetFpu(const Napi::CallbackInfo& info);
  Napi::Value SetMsrs(const Napi::CallbackInfo& info);
  Napi::Value GetMsrs(const Napi::CallbackInfo& info);
  Napi::Value SetCpuid(const Napi::CallbackInfo& info);
  Napi::Value GetLapic(const Napi::CallbackInfo& info);
  Napi::Value SetLapic(const Napi::CallbackInfo& info);
  Napi::Value GetMpState(const Napi::CallbackInfo& info);
  Napi::Value SetMpState(const Napi::CallbackInfo& info);
  Napi::Value InjectException(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value PrepareStart(const Napi::CallbackInfo& info);
  // Snapshots (vcpu_snapshot.cc).
  Napi::Value RunState(const Napi::CallbackInfo& info);
  Napi::Value SaveState(const Napi::CallbackInfo& info);
  Napi::Value RestoreState(const Napi::CallbackInfo& info);
  Napi::Value GetCpuid(const Napi::CallbackInfo& info);
  Napi::Value GetTscKhz(const Napi::CallbackInfo& info);
  Napi::Value SetTscKhz(const Napi::CallbackInfo& info);

  /**
   * The fd for a register ioctl `op`. Throws EBADF once the VM is closed and EBUSY while the run
   * thread may be inside KVM_RUN (the ioctl would block until the guest exits).
   */
  int Fd(Napi::Env env, const char* op);
  /**
   * The fd for saving or restoring the whole state: only before start() or while paused (parked).
   * A vCPU waiting for a handler's answer is in the middle of an I/O instruction that completes
   * only on the next KVM_RUN, so its registers do not describe a point the guest can resume from.
   */
  int SnapshotFd(Napi::Env env, const char* op);

  Napi::ObjectReference vmObject_;  // keeps the VM alive as long as one of its vCPUs is reachable
  Vm* vm_ = nullptr;
  std::shared_ptr<VmCore> vmCore_;
  std::shared_ptr<VcpuCore> core_;
};

}  // namespace kindling
