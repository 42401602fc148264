// NativeKvm: the /dev/kvm system fd (capabilities, supported CPUID, VM creation).
#pragma once

#include <napi.h>

namespace kindling {

class KvmSystem : public Napi::ObjectWrap<KvmSystem> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit KvmSystem(const Napi::CallbackInfo& info);
  ~KvmSystem() override;

 private:
  Napi::Value ApiVersion(const Napi::CallbackInfo& info);
  Napi::Value CheckExtension(const Napi::CallbackInfo& info);
  Napi::Value SupportedCpuid(const Napi::CallbackInfo& info);
  Napi::Value MsrIndexList(const Napi::CallbackInfo& info);
  Napi::Value CreateVm(const Napi::CallbackInfo& info);
  Napi::Value CreateVmAsync(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  int Fd(Napi::Env env, const char* op);

  int fd_ = -1;
};

/** Module function `openKvm(path = '/dev/kvm')`. */
Napi::Value OpenKvm(const Napi::CallbackInfo& info);

}  // namespace kindling
