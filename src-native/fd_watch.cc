#include "fd_watch.h"

#include <errno.h>

#include "addon_data.h"
#include "convert.h"
#include "errors.h"
#include "eventfd.h"

namespace kindling {

namespace {

struct WatchInit {
  int fd;
  Napi::Function callback;
};

}  // namespace

Napi::Function FdWatch::Init(Napi::Env env) {
  return DefineClass(env, "FdWatch", {InstanceMethod<&FdWatch::Close>("close")});
}

FdWatch::FdWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatch>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) ThrowType(env, "FdWatch is created by watchEventfd()");
  WatchInit* init = info[0].As<Napi::External<WatchInit>>().Data();
  env_ = env;
  fd_ = init->fd;
  callback_ = Napi::Persistent(init->callback);
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "kindling:eventfd");

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "napi_get_uv_event_loop failed");
  }
  auto* poll = new uv_poll_t;
  int r = uv_poll_init(loop, poll, fd_);
  if (r < 0) {
    delete poll;  // never registered with the loop
    ThrowErrno(env, "uv_poll_init", -r);
  }
  poll->data = this;
  r = uv_poll_start(poll, UV_READABLE, PollCb);
  poll_ = poll;
  if (r < 0) {
    Stop();
    ThrowErrno(env, "uv_poll_start", -r);
  }
  Ref();  // an open watch must not be collected: it would stop without anyone calling close()
  if (napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok) hookRegistered_ = true;
}

FdWatch::~FdWatch() { Stop(); }

void FdWatch::CleanupHook(void* arg) {
  FdWatch* w = static_cast<FdWatch*>(arg);
  w->hookRegistered_ = false;
  w->Stop();
}

void FdWatch::Stop() {
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  callback_.Reset();
  if (hookRegistered_) {
    napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    hookRegistered_ = false;
  }
}

Napi::Value FdWatch::Close(const Napi::CallbackInfo& info) {
  if (poll_ != nullptr) {
    Stop();
    Unref();
  }
  return info.Env().Undefined();
}

void FdWatch::PollCb(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<FdWatch*>(handle->data);
  if (self != nullptr) self->OnReadable(status);
}

void FdWatch::OnReadable(int status) {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  uint64_t count = 0;
  if (status < 0) return;  // EBADF and the like: nothing to read; close() is the owner's job
  if (ReadEventFdCounter(fd_, &count) < 0 || count == 0) return;
  if (callback_.IsEmpty()) return;
  napi_value pendingError = nullptr;
  try {
    // MakeCallback runs nextTicks and microtasks afterwards, like any other I/O callback.
    callback_.MakeCallback(Value(), {Napi::Number::New(env, static_cast<double>(count))}, *asyncContext_);
  } catch (const Napi::Error& e) {
    pendingError = e.Value();
  }
  if (pendingError != nullptr) napi_fatal_exception(env_, pendingError);
}

Napi::Value WatchEventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsFunction()) ThrowType(env, "watchEventfd: onSignal must be a function");
  WatchInit init{fd, info[1].As<Napi::Function>()};
  return GetAddonData(env)->watchCtor.New({Napi::External<WatchInit>::New(env, &init)});
}

}  // namespace kindling
