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
  /**
   * worker_threads.markAsUntransferable, registered by lib/native/binding.ts: applied to every
   * guest-memory ArrayBuffer, so that a postMessage/structuredClone transfer copies it instead of
   * moving its memory away from the VM that unmaps it. Empty until setUntransferableMarker.
   */
  Napi::FunctionReference markUntransferable;
};

inline AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

}  // namespace kindling
