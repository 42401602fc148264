// FdPoll: a level-triggered readability watch on any descriptor (uv_poll_t), for devices that
// read the descriptor themselves (a TAP). Unlike FdWatch it reads nothing: the callback runs on
// the event loop while the descriptor is readable, until pause() or close(). A paused or closed
// watch does not keep the event loop alive; an open, running one does, like a socket.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>

namespace kindling {

class FdPoll : public Napi::ObjectWrap<FdPoll> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit FdPoll(const Napi::CallbackInfo& info);
  ~FdPoll() override;

 private:
  Napi::Value Pause(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void Stop();
  void OnReadable(int status);
  static void PollCb(uv_poll_t* handle, int status, int events);
  static void CleanupHook(void* arg);

  napi_env env_ = nullptr;
  uv_poll_t* poll_ = nullptr;  // freed by the uv_close callback
  bool running_ = false;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  bool hookRegistered_ = false;
};

/** Module function `watchFd(fd, onReadable)`. */
Napi::Value WatchFd(const Napi::CallbackInfo& info);

}  // namespace kindling
