#include "fd_poll.h"

#include "addon_data.h"
#include "convert.h"
#include "errors.h"

namespace kindling {

namespace {

struct PollInit {
  int fd;
  Napi::Function callback;
};

}  // namespace

Napi::Function FdPoll::Init(Napi::Env env) {
  return DefineClass(env, "FdPoll",
                     {InstanceMethod<&FdPoll::Pause>("pause"), InstanceMethod<&FdPoll::Resume>("resume"),
                      InstanceMethod<&FdPoll::Close>("close")});
}

FdPoll::FdPoll(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdPoll>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) ThrowType(env, "FdPoll is created by watchFd()");
  PollInit* init = info[0].As<Napi::External<PollInit>>().Data();
  env_ = env;
  callback_ = Napi::Persistent(init->callback);
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "kindling:fdpoll");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "napi_get_uv_event_loop failed");
  }
  auto* poll = new uv_poll_t;
  int r = uv_poll_init(loop, poll, init->fd);
  if (r < 0) {
    delete poll;  // never registered with the loop
    ThrowErrno(env, "uv_poll_init", -r);
  }
  poll->data = this;
  poll_ = poll;
  r = uv_poll_start(poll, UV_READABLE, PollCb);
  if (r < 0) {
    Stop();
    ThrowErrno(env, "uv_poll_start", -r);
  }
  running_ = true;
  Ref();  // an open watch must not be collected: it would stop without anyone calling close()
  if (napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok) hookRegistered_ = true;
}

FdPoll::~FdPoll() { Stop(); }

void FdPoll::CleanupHook(void* arg) {
  FdPoll* w = static_cast<FdPoll*>(arg);
  w->hookRegistered_ = false;
  w->Stop();
}

void FdPoll::Stop() {
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  running_ = false;
  callback_.Reset();
  if (hookRegistered_) {
    napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    hookRegistered_ = false;
  }
}

Napi::Value FdPoll::Pause(const Napi::CallbackInfo& info) {
  if (poll_ != nullptr && running_) {
    uv_poll_stop(poll_);
    running_ = false;
  }
  return info.Env().Undefined();
}

Napi::Value FdPoll::Resume(const Napi::CallbackInfo& info) {
  if (poll_ != nullptr && !running_) {
    const int r = uv_poll_start(poll_, UV_READABLE, PollCb);
    if (r < 0) ThrowErrno(info.Env(), "uv_poll_start", -r);
    running_ = true;
  }
  return info.Env().Undefined();
}

Napi::Value FdPoll::Close(const Napi::CallbackInfo& info) {
  if (poll_ != nullptr) {
    Stop();
    Unref();
  }
  return info.Env().Undefined();
}

void FdPoll::PollCb(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<FdPoll*>(handle->data);
  if (self != nullptr) self->OnReadable(status);
}

void FdPoll::OnReadable(int status) {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  // EBADF and the like: the owner sees the error on its next read; stop spinning on it.
  if (status < 0) {
    if (poll_ != nullptr && running_) {
      uv_poll_stop(poll_);
      running_ = false;
    }
  }
  if (callback_.IsEmpty()) return;
  napi_value pendingError = nullptr;
  try {
    callback_.MakeCallback(Value(), {}, *asyncContext_);
  } catch (const Napi::Error& e) {
    pendingError = e.Value();
  }
  if (pendingError != nullptr) napi_fatal_exception(env_, pendingError);
}

Napi::Value WatchFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsFunction()) ThrowType(env, "watchFd: onReadable must be a function");
  PollInit init{fd, info[1].As<Napi::Function>()};
  return GetAddonData(env)->pollCtor.New({Napi::External<PollInit>::New(env, &init)});
}

}  // namespace kindling
