// Per-environment state of the addon (one per Node environment: main thread or worker).
#pragma once

#include <napi.h>

namespace kindling {

struct AddonData {
  /** `new ctor(code, message, ioctl, errno)` builds errno errors; empty until setErrorClass. */
  Napi::FunctionReference errorCtor;
  Napi::FunctionReference kvmCtor;
  Napi::FunctionReference vmCtor;
  Napi::FunctionReference vcpuCtor;
  Napi::FunctionReference watchCtor;
  Napi::FunctionReference pollCtor;
};

inline AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

}  // namespace kindling
