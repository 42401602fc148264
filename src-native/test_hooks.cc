#include "test_hooks.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "addon_data.h"
#include "convert.h"
#include "errors.h"
#include "seccomp.h"
#include "vcpu.h"
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
//                                   (sleeps: not for threads with a vCPU seccomp filter)
//   ['x', what]                     attempts refused call `what` (AttemptRefusedCall)
struct Step {
  char op = 0;
  uint32_t kind = 0;
  uint64_t addr = 0;
  uint32_t size = 0;
  uint32_t value = 0;
};

enum RefusedCall { kExecve = 1, kOpen = 2, kSocket = 3, kIoctl = 4 };

int RefusedCallOf(Napi::Env env, Napi::Value v) {
  const std::string what = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (what == "execve") return kExecve;
  if (what == "open") return kOpen;
  if (what == "socket") return kSocket;
  if (what == "ioctl") return kIoctl;
  ThrowType(env, "refused call must be 'execve', 'open', 'socket' or 'ioctl'");
}

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
      case 'x':
        AttemptRefusedCall(*v, static_cast<int>(s.value));
        break;
      default:
        break;
    }
  }
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

SeccompProgram FilterArg(Napi::Env env, Napi::Value v) {
  SeccompProgram prog;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) ThrowType(env, "filter must be a Uint8Array");
  Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
  if (!ParseSeccompProgram(bytes.Data(), bytes.ByteLength(), &prog)) ThrowRange(env, "filter must be 1..4096 instructions of 8 bytes");
  return prog;
}

Napi::Value CreateVm(const Napi::CallbackInfo& info) { return Vm::NewInstance(info.Env(), -1, 0); }

// externalMemory(): V8's external-memory count (what napi_adjust_external_memory adjusts).
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  int64_t amount = 0;
  napi_adjust_external_memory(info.Env(), 0, &amount);
  return Napi::Number::New(info.Env(), static_cast<double>(amount));
}

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
    } else if (s.op == 'x') {
      s.value = static_cast<uint32_t>(RefusedCallOf(env, a.Get(1u)));
    }
    steps.push_back(s);
  }
  SeccompProgram filter;
  if (info.Length() > 3 && !info[3].IsUndefined()) filter = FilterArg(env, info[3]);
  auto v = std::make_shared<VcpuCore>();
  v->id = id;
  v->vm = vm->core().get();
  v->seccomp = std::move(filter);
  vm->core()->vcpus.push_back(v);
  VcpuCore* raw = v.get();
  try {
    vm->core()->StartThread(*raw, [raw, steps]() { ScriptMain(raw, steps); });
  } catch (const ThreadStartFailure& f) {
    ThrowErrno(env, f.op, f.err);
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

Napi::Value AttemptOnStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(GetAddonData(env)->vcpuCtor.Value())) {
    ThrowType(env, "expected a NativeVcpu");
  }
  Vcpu* vcpu = Vcpu::Unwrap(info[0].As<Napi::Object>());
  if (vcpu->core()->started) ThrowState(env, "attemptOnStart: the vCPU was already started");
  vcpu->core()->testAttempt = RefusedCallOf(env, info[1]);
  return env.Undefined();
}

// ---- Running a seccomp program in a forked child ----
//
// The child of a multi-threaded process may only use async-signal-safe calls until it exits:
// sigaction, setrlimit, prctl, syscall, _exit and nothing that allocates.

/** A call as [nr, arg0..arg5]. */
using RawCall = std::array<uint64_t, 7>;

std::vector<RawCall> CallsArg(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) ThrowType(env, "calls must be an array of [nr, ...args]");
  Napi::Array list = v.As<Napi::Array>();
  std::vector<RawCall> out;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsArray()) ThrowType(env, "a call is [nr, ...args] (at most 6 arguments)");
    Napi::Array a = item.As<Napi::Array>();
    if (a.Length() < 1 || a.Length() > 7) ThrowType(env, "a call is [nr, ...args] (at most 6 arguments)");
    RawCall c{};
    for (uint32_t j = 0; j < a.Length(); j++) c[j] = ValueToU64(env, a.Get(j), "call");
    out.push_back(c);
  }
  return out;
}

long DoCall(const RawCall& c) {
  const long r = syscall(static_cast<long>(c[0]), c[1], c[2], c[3], c[4], c[5], c[6]);
  return r == -1 ? -errno : r;
}

bool InstallRaw(sock_filter* insns, size_t n) {
  sock_fprog prog;
  prog.len = static_cast<unsigned short>(n);
  prog.filter = insns;
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0;
}

/** Child set-up: no core file, default SIGSYS/SIGILL, nothing blocked, no_new_privs. */
void PrepareChild() {
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGSYS, &dfl, nullptr);
  sigaction(SIGILL, &dfl, nullptr);
  sigset_t none_blocked;
  sigemptyset(&none_blocked);
  sigprocmask(SIG_SETMASK, &none_blocked, nullptr);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(100);
}

/** Shared with the child: [0] progress, [1] errno of a failed install, [2..] one result per call. */
struct SharedResults {
  explicit SharedResults(size_t n) : bytes((n + 2) * sizeof(int64_t)) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    words = p == MAP_FAILED ? nullptr : static_cast<volatile int64_t*>(p);
  }
  ~SharedResults() {
    if (words != nullptr) munmap(const_cast<int64_t*>(words), bytes);
  }
  size_t bytes;
  volatile int64_t* words;
};

constexpr int64_t kInstalled = 1;
constexpr int64_t kInstallFailed = 2;
constexpr int64_t kAllDone = 3;
constexpr int64_t kReturned = 4;
/** What the guard filter answers: ERRNO(4095), which no tested program uses. */
constexpr uint32_t kGuardErrno = 4095;

int WaitChild(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

Napi::Object StatusToJs(Napi::Env env, int status) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("signal", WIFSIGNALED(status) ? Napi::Value(Napi::Number::New(env, WTERMSIG(status))) : env.Null());
  o.Set("exitCode", WIFEXITED(status) ? Napi::Value(Napi::Number::New(env, WEXITSTATUS(status))) : env.Null());
  return o;
}

// seccompEvaluate(filter, calls): the kernel's verdict on each call, executing none of them. The
// child first installs a guard filter that answers ERRNO(4095) to everything but seccomp(), then
// `filter`. Stacked filters: the most restrictive action wins, and between two ERRNO actions the
// later filter's errno; so a call `filter` answers with ERRNO(e) returns -e, one it allows returns
// -4095 (the guard's: nothing runs), one it traps or kills ends the child (reported as an error).
// The child ends with an invalid instruction: exit_group may itself be refused.
Napi::Value SeccompEvaluate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SeccompProgram prog = FilterArg(env, info[0]);
  const std::vector<RawCall> calls = CallsArg(env, info[1]);
  SharedResults shared(calls.size());
  if (shared.words == nullptr) ThrowErrno(env, "mmap", errno);
  sock_filter guard[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_seccomp, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | kGuardErrno),
  };
  const pid_t pid = fork();
  if (pid < 0) ThrowErrno(env, "fork", errno);
  if (pid == 0) {
    PrepareChild();
    if (!InstallRaw(guard, 4)) _exit(101);
    if (!InstallRaw(prog.data(), prog.size())) {
      shared.words[1] = errno;
      shared.words[0] = kInstallFailed;
      __builtin_trap();
    }
    shared.words[0] = kInstalled;
    for (size_t i = 0; i < calls.size(); i++) shared.words[2 + i] = DoCall(calls[i]);
    shared.words[0] = kAllDone;
    __builtin_trap();
  }
  const int status = WaitChild(pid);
  if (shared.words[0] == kInstallFailed) ThrowErrno(env, "seccomp(SECCOMP_SET_MODE_FILTER)", static_cast<int>(shared.words[1]));
  if (shared.words[0] != kAllDone || !WIFSIGNALED(status) || WTERMSIG(status) != SIGILL) {
    ThrowState(env, "seccompEvaluate: the child ended early (status " + std::to_string(status) +
                        "): the filter trapped or killed a call instead of answering ERRNO");
  }
  Napi::Array out = Napi::Array::New(env, calls.size());
  for (size_t i = 0; i < calls.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(shared.words[2 + i])));
  return out;
}

// seccompRun(filter, call): installs `filter` in a forked child and makes `call` for real.
// Returns { returned, value, signal, exitCode }: `returned` with the return value (-errno) when
// the call came back, and how the child ended (it exits with exit(2) afterwards).
Napi::Value SeccompRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SeccompProgram prog = FilterArg(env, info[0]);
  Napi::Array wrapped = Napi::Array::New(env, 1);
  wrapped.Set(0u, info[1]);
  const RawCall call = CallsArg(env, wrapped)[0];
  SharedResults shared(1);
  if (shared.words == nullptr) ThrowErrno(env, "mmap", errno);
  const pid_t pid = fork();
  if (pid < 0) ThrowErrno(env, "fork", errno);
  if (pid == 0) {
    PrepareChild();
    if (!InstallRaw(prog.data(), prog.size())) {
      shared.words[1] = errno;
      shared.words[0] = kInstallFailed;
      _exit(102);
    }
    shared.words[0] = kInstalled;
    shared.words[2] = DoCall(call);
    shared.words[0] = kReturned;
    syscall(SYS_exit, 0);
    __builtin_trap();
  }
  const int status = WaitChild(pid);
  if (shared.words[0] == kInstallFailed) ThrowErrno(env, "seccomp(SECCOMP_SET_MODE_FILTER)", static_cast<int>(shared.words[1]));
  if (shared.words[0] == 0) ThrowState(env, "seccompRun: the child failed before installing the filter");
  Napi::Object o = StatusToJs(env, status);
  const bool returned = shared.words[0] == kReturned;
  o.Set("returned", Napi::Boolean::New(env, returned));
  o.Set("value", returned ? Napi::Value(Napi::Number::New(env, static_cast<double>(shared.words[2]))) : env.Null());
  return o;
}

// jailAttempt(what): the jailed child's test of its whole-process filter (lib/jail/child.ts calls
// it on the parent's request): makes a call that filter must refuse, on the calling (JavaScript)
// thread. Each is what an escaping child would try: run a program, open a host file for writing,
// reach the network, push input into a terminal. Returns the call's result only when the filter
// let it through (the test then fails on the process surviving).
Napi::Value JailAttempt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const char* const kArgv[] = {"/bin/sh", "-c", "echo kindling-test: execve ran", nullptr};
  static const char* const kEnvp[] = {nullptr};
  long r = 0;
  switch (RefusedCallOf(env, info[0])) {
    case kExecve:
      r = syscall(SYS_execve, kArgv[0], kArgv, kEnvp);
      break;
    case kOpen:
      r = syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDWR | O_CLOEXEC);
      break;
    case kSocket:
      r = syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      break;
    case kIoctl: {
      char c = 'x';
      r = syscall(SYS_ioctl, STDIN_FILENO, TIOCSTI, &c);
      break;
    }
    default:
      break;
  }
  return Napi::Number::New(env, static_cast<double>(r == -1 ? -errno : r));
}

}  // namespace

void AttemptRefusedCall(VcpuCore& v, int what) {
  static const char* const kArgv[] = {"/bin/sh", "-c", "echo kindling-test: execve ran", nullptr};
  static const char* const kEnvp[] = {nullptr};
  const char* name = "?";
  long r = 0;
  switch (what) {
    case kExecve:
      name = "execve";
      r = syscall(SYS_execve, kArgv[0], kArgv, kEnvp);
      break;
    case kOpen:
      // Read-write: a read-only open fails with EACCES under the vCPU policy (glibc's free() may
      // make one), every other open traps.
      name = "open";
      r = syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDWR | O_CLOEXEC);
      break;
    case kSocket:
      name = "socket";
      r = syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      break;
    case kIoctl: {
      name = "ioctl";
      kvm_regs regs;
      r = syscall(SYS_ioctl, v.fd, KVM_GET_REGS, &regs);
      break;
    }
    default:
      return;
  }
  // Only reached when the filter let the call through.
  char line[96];
  const int n = snprintf(line, sizeof line, "kindling-test: refused call %s returned %ld\n", name, r);
  if (n > 0 && write(STDERR_FILENO, line, static_cast<size_t>(n)) < 0) return;
}

Napi::Object CreateTestHooks(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("createVm", Napi::Function::New<CreateVm>(env, "createVm"));
  o.Set("externalMemory", Napi::Function::New<ExternalMemory>(env, "externalMemory"));
  o.Set("startScript", Napi::Function::New<StartScript>(env, "startScript"));
  o.Set("scriptResults", Napi::Function::New<ScriptResults>(env, "scriptResults"));
  o.Set("attemptOnStart", Napi::Function::New<AttemptOnStart>(env, "attemptOnStart"));
  o.Set("seccompEvaluate", Napi::Function::New<SeccompEvaluate>(env, "seccompEvaluate"));
  o.Set("seccompRun", Napi::Function::New<SeccompRun>(env, "seccompRun"));
  o.Set("jailAttempt", Napi::Function::New<JailAttempt>(env, "jailAttempt"));
  return o;
}

}  // namespace kindling
