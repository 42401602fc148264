// NativeKvm.createVmAsync: the KVM set-up of a VM on a libuv worker thread (see vm_setup.cc).
#pragma once

#include <napi.h>

namespace kindling {

/**
 * Parses `description` (lib/native/types.ts, VmSetup) on the calling (JavaScript) thread, then
 * creates and sets up the VM on the thread pool; the promise resolves with
 * `{ vm: NativeVm, memory: ArrayBuffer, vcpus: NativeVcpu[] }` or rejects with the errno error of
 * the first call that failed (everything made until then is released).
 */
Napi::Value CreateVmAsync(Napi::Env env, int kvmFd, Napi::Value description);

}  // namespace kindling
