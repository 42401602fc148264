// Module registration. The addon is policy-free: see lib/native/types.ts for the contract.
#include <napi.h>

#include <malloc.h>
#include <unistd.h>

#include "addon_data.h"
#include "errors.h"
#include "eventfd.h"
#include "fd_poll.h"
#include "fd_watch.h"
#include "jail.h"
#include "kvm_system.h"
#include "tap.h"
#include "memory_advice.h"
#ifdef KINDLING_TEST_HOOKS
#include "test_hooks.h"
#endif
#include "vcpu.h"
#include "vm.h"
#include "vm_core.h"

namespace kindling {

Napi::Value LibcStringAddress(const Napi::CallbackInfo& info);  // libc_string.cc

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallKickSignalHandler();
  // glibc computes its arena limit (8 per core) the first time a process has more than 8 arenas,
  // reading /sys/devices/system/cpu/online on whichever thread that is: possibly a vCPU thread
  // under its seccomp filter. Setting the same limit now makes that read unnecessary.
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus > 0) mallopt(M_ARENA_MAX, static_cast<int>(8 * cpus));
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  data->kvmCtor = Napi::Persistent(KvmSystem::Init(env));
  data->vmCtor = Napi::Persistent(Vm::Init(env));
  data->vcpuCtor = Napi::Persistent(Vcpu::Init(env));
  data->watchCtor = Napi::Persistent(FdWatch::Init(env));
  data->pollCtor = Napi::Persistent(FdPoll::Init(env));

  exports.Set("openKvm", Napi::Function::New<OpenKvm>(env, "openKvm"));
  exports.Set("eventfd", Napi::Function::New<EventFd>(env, "eventfd"));
  exports.Set("eventfdWrite", Napi::Function::New<EventFdWrite>(env, "eventfdWrite"));
  exports.Set("eventfdRead", Napi::Function::New<EventFdRead>(env, "eventfdRead"));
  exports.Set("watchEventfd", Napi::Function::New<WatchEventFd>(env, "watchEventfd"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("watchFd", Napi::Function::New<WatchFd>(env, "watchFd"));
  exports.Set("openTap", Napi::Function::New<OpenTap>(env, "openTap"));
  exports.Set("tapSetOffload", Napi::Function::New<TapSetOffload>(env, "tapSetOffload"));
  exports.Set("readvSpans", Napi::Function::New<ReadvSpans>(env, "readvSpans"));
  exports.Set("writevSpans", Napi::Function::New<WritevSpans>(env, "writevSpans"));
  exports.Set("residentPages", Napi::Function::New<ResidentPages>(env, "residentPages"));
  exports.Set("discardMemory", Napi::Function::New<DiscardMemory>(env, "discardMemory"));
  exports.Set("mapAnonymous", Napi::Function::New<MapAnonymous>(env, "mapAnonymous"));
  exports.Set("pageSize", Napi::Function::New<PageSize>(env, "pageSize"));
  exports.Set("socketPair", Napi::Function::New<SocketPair>(env, "socketPair"));
  exports.Set("sendFds", Napi::Function::New<SendFds>(env, "sendFds"));
  exports.Set("receiveFds", Napi::Function::New<ReceiveFds>(env, "receiveFds"));
  exports.Set("adoptKvm", Napi::Function::New<AdoptKvm>(env, "adoptKvm"));
  exports.Set("installProcessSeccomp", Napi::Function::New<InstallProcessSeccomp>(env, "installProcessSeccomp"));
  exports.Set("setErrorClass", Napi::Function::New<SetErrorClass>(env, "setErrorClass"));
  exports.Set("setUntransferableMarker", Napi::Function::New<SetUntransferableMarker>(env, "setUntransferableMarker"));
  exports.Set("kickSignal", Napi::Number::New(env, KickSignal()));
  exports.Set("libcStringAddress", Napi::Function::New<LibcStringAddress>(env, "libcStringAddress"));
#ifdef KINDLING_TEST_HOOKS
  exports.Set("_testing", CreateTestHooks(env));
#endif
  return exports;
}

}  // namespace kindling

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return kindling::Init(env, exports); }

NODE_API_MODULE(kindling, InitModule)
