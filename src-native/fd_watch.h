// FdWatch: an eventfd registered with the Node event loop (uv_poll_t). Each time the fd becomes
// readable the counter is read (and reset) and the callback receives it.
//
// While open, a watch keeps the event loop alive, like a socket does; close() unregisters it.
// The VM code closes its watches when the VM stops. An open watch also keeps its JavaScript
// object (and callback) alive even if nothing else references it, so it never stops silently.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>

namespace kindling {

class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit FdWatch(const Napi::CallbackInfo& info);
  ~FdWatch() override;

 private:
  Napi::Value Close(const Napi::CallbackInfo& info);
  void Stop();
  void OnReadable(int status);
  static void PollCb(uv_poll_t* handle, int status, int events);
  static void CleanupHook(void* arg);

  napi_env env_ = nullptr;
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;  // freed by the uv_close callback
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  bool hookRegistered_ = false;
};

/** Module function `watchEventfd(fd, onSignal)`. */
Napi::Value WatchEventFd(const Napi::CallbackInfo& info);

}  // namespace kindling
