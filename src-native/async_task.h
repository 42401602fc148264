// A promise backed by work on the libuv thread pool: `execute` runs on a worker thread (no
// JavaScript there), then `complete` settles the promise on the JavaScript thread. If the
// environment goes away first, `abandon` runs instead of `complete` and releases natively what
// `execute` produced.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>
#include <string>

namespace kindling {

class AsyncTask {
 public:
  using Execute = std::function<void()>;
  using Complete = std::function<void(Napi::Env, Napi::Promise::Deferred&)>;
  using Abandon = std::function<void()>;

  /** Queues the work and returns its promise. Throws (and runs `abandon`) if it cannot be queued. */
  static Napi::Promise Start(Napi::Env env, const char* name, Execute execute, Complete complete, Abandon abandon) {
    auto task = std::make_unique<AsyncTask>(env);
    task->execute_ = std::move(execute);
    task->complete_ = std::move(complete);
    task->abandon_ = std::move(abandon);
    Napi::Promise promise = task->deferred_.Promise();
    napi_value resourceName = Napi::String::New(env, name);
    napi_async_work work = nullptr;
    if (napi_create_async_work(env, nullptr, resourceName, OnExecute, OnComplete, task.get(), &work) != napi_ok) {
      if (task->abandon_) task->abandon_();
      throw Napi::Error::New(env, "napi_create_async_work failed");
    }
    task->work_ = work;
    if (napi_queue_async_work(env, work) != napi_ok) {
      napi_delete_async_work(env, work);
      if (task->abandon_) task->abandon_();
      throw Napi::Error::New(env, "napi_queue_async_work failed");
    }
    task.release();  // OnComplete owns it now
    return promise;
  }

  explicit AsyncTask(Napi::Env env) : deferred_(Napi::Promise::Deferred::New(env)) {}

 private:
  static void OnExecute(napi_env /*env*/, void* data) { static_cast<AsyncTask*>(data)->execute_(); }

  static void OnComplete(napi_env env, napi_status status, void* data) {
    std::unique_ptr<AsyncTask> task(static_cast<AsyncTask*>(data));
    if (env == nullptr) {
      if (task->abandon_) task->abandon_();
      return;
    }
    napi_delete_async_work(env, task->work_);
    if (status != napi_ok) {
      if (task->abandon_) task->abandon_();
      return;
    }
    Napi::Env e(env);
    Napi::HandleScope scope(e);
    try {
      task->complete_(e, task->deferred_);
    } catch (const Napi::Error& err) {
      task->deferred_.Reject(err.Value());
    }
  }

  Napi::Promise::Deferred deferred_;
  napi_async_work work_ = nullptr;
  Execute execute_;
  Complete complete_;
  Abandon abandon_;
};

}  // namespace kindling
