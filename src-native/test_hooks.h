// Test hooks, compiled only into the test build (cmake -DKINDLING_TEST_HOOKS=ON, `npm run
// build:native:test`, build-test/): scripted vCPU threads that drive the exit queue without KVM, so
// that the ordering, the read/verdict handshakes, stop, pause and the PIO read cache can be tested
// on machines without /dev/kvm; refused calls made from filtered threads; seccomp programs run in
// forked children. Exported as `_testing`; not part of the NativeAddon contract.
#pragma once

#include <napi.h>

namespace kindling {

/**
 * `{ createVm(): NativeVm, startScript(vm, id, ops, filter?), scriptResults(vm, id): number[],
 * attemptOnStart(vcpu, what), seccompEvaluate(filter, calls): number[], seccompRun(filter, call),
 * jailAttempt(what): number }`.
 */
Napi::Object CreateTestHooks(Napi::Env env);

}  // namespace kindling
