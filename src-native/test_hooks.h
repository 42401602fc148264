// Test hooks: scripted vCPU threads that drive the exit queue without KVM, so that the ordering,
// the read/verdict handshakes, stop, pause and the PIO read cache can be tested on machines
// without /dev/kvm. Exported as `_testing`; not part of the NativeAddon contract.
#pragma once

#include <napi.h>

namespace kindling {

/** `{ createVm(): NativeVm, startScript(vm, id, ops), scriptResults(vm, id): number[] }`. */
Napi::Object CreateTestHooks(Napi::Env env);

}  // namespace kindling
