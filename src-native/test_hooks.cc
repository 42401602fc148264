#include "test_hooks.h"

#include <chrono>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

#include "addon_data.h"
#include "convert.h"
#include "errors.h"
#include "vm.h"

namespace kindling {

namespace {

// One step of a scripted vCPU: [op, ...args] from JavaScript.
//   ['w', kind, addr, size, value]  posted write
//   ['r', kind, addr, size]         read; the answer is appended to the results
//   ['e', reason]                   event; the verdict is appended to the results
//   ['spin']                        stands in for a long KVM_RUN: returns when stopped or paused,
//                                   or at once if the thread parked since the previous spin (so a
//                                   pause that lands before the spin starts cannot hang the script)
struct Step {
  char op = 0;
  uint32_t kind = 0;
  uint64_t addr = 0;
  uint32_t size = 0;
  uint32_t value = 0;
};

void ScriptMain(VcpuCore* v, std::vector<Step> steps) {
  VmCore& vm = *v->vm;
  size_t next = 0;
  bool done = false;
  bool parked = false;
  while (!done && !vm.stopping.load()) {
    if (vm.pausing.load()) {
      vm.Park(*v);
      parked = true;
      continue;
    }
    if (next >= steps.size()) break;
    const Step& s = steps[next++];
    switch (s.op) {
      case 'w':
        vm.PostWrite(*v, static_cast<uint8_t>(s.kind), s.addr, s.size, s.value);
        break;
      case 'r': {
        uint32_t value = 0;
        const bool ok = vm.Read(*v, static_cast<uint8_t>(s.kind), s.addr, s.size, &value);
        v->scriptResults.push_back(value);
        if (!ok) done = true;
        break;
      }
      case 'e': {
        auto info = std::make_unique<EventInfo>();
        info->reason = s.value;
        const Verdict verdict = vm.SubmitEvent(*v, std::move(info));
        v->scriptResults.push_back(verdict);
        if (verdict == kStop) done = true;
        break;
      }
      case 's':
        if (parked) {
          parked = false;
          break;
        }
        while (!vm.stopping.load() && !vm.pausing.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
        break;
      default:
        break;
    }
  }
  vm.ThreadEnded(*v);
}

Vm* UnwrapVm(Napi::Env env, Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(GetAddonData(env)->vmCtor.Value())) {
    ThrowType(env, "expected a NativeVm");
  }
  return Vm::Unwrap(v.As<Napi::Object>());
}

VcpuCore* FindVcpu(Vm* vm, uint32_t id) {
  for (auto& v : vm->core()->vcpus) {
    if (v->id == id) return v.get();
  }
  return nullptr;
}

Napi::Value CreateVm(const Napi::CallbackInfo& info) { return Vm::NewInstance(info.Env(), -1, 0); }

Napi::Value StartScript(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vm* vm = UnwrapVm(env, info[0]);
  const uint32_t id = ArgU32(info, 1, "id");
  if (info.Length() < 3 || !info[2].IsArray()) ThrowType(env, "ops must be an array");
  if (!vm->HandlersSet()) ThrowState(env, "setExitHandlers first");
  if (vm->Closed() || vm->core()->stopping.load()) ThrowState(env, "the VM is stopped");
  if (FindVcpu(vm, id) != nullptr) ThrowState(env, "duplicate vCPU id");
  Napi::Array ops = info[2].As<Napi::Array>();
  std::vector<Step> steps;
  for (uint32_t i = 0; i < ops.Length(); i++) {
    Napi::Array a = ops.Get(i).As<Napi::Array>();
    Step s;
    const std::string op = a.Get(0u).As<Napi::String>().Utf8Value();
    s.op = op.empty() ? 0 : op[0];
    if (s.op == 'w' || s.op == 'r') {
      s.kind = a.Get(1u).As<Napi::Number>().Uint32Value();
      s.addr = static_cast<uint64_t>(a.Get(2u).As<Napi::Number>().Int64Value());
      s.size = a.Get(3u).As<Napi::Number>().Uint32Value();
      if (s.op == 'w') s.value = a.Get(4u).As<Napi::Number>().Uint32Value();
    } else if (s.op == 'e') {
      s.value = a.Get(1u).As<Napi::Number>().Uint32Value();
    }
    steps.push_back(s);
  }
  auto v = std::make_shared<VcpuCore>();
  v->id = id;
  v->vm = vm->core().get();
  vm->core()->vcpus.push_back(v);
  VcpuCore* raw = v.get();
  try {
    vm->core()->StartThread(*raw, [raw, steps]() { ScriptMain(raw, steps); });
  } catch (const std::system_error& e) {
    ThrowErrno(env, "pthread_create", e.code().value());
  }
  vm->VcpuStarted(env);
  return env.Undefined();
}

Napi::Value ScriptResults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vm* vm = UnwrapVm(env, info[0]);
  VcpuCore* v = FindVcpu(vm, ArgU32(info, 1, "id"));
  if (v == nullptr) ThrowState(env, "no such vCPU");
  if (v->thread.joinable()) ThrowState(env, "stopVcpus() first: results are read after the thread is joined");
  Napi::Array out = Napi::Array::New(env, v->scriptResults.size());
  for (size_t i = 0; i < v->scriptResults.size(); i++) out.Set(static_cast<uint32_t>(i), v->scriptResults[i]);
  return out;
}

}  // namespace

Napi::Object CreateTestHooks(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("createVm", Napi::Function::New<CreateVm>(env, "createVm"));
  o.Set("startScript", Napi::Function::New<StartScript>(env, "startScript"));
  o.Set("scriptResults", Napi::Function::New<ScriptResults>(env, "scriptResults"));
  return o;
}

}  // namespace kindling
