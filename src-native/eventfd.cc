#include "eventfd.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "convert.h"
#include "errors.h"

namespace kindling {

int64_t ReadEventFdCounter(int fd, uint64_t* count) {
  *count = 0;
  for (;;) {
    const ssize_t n = read(fd, count, sizeof *count);
    if (n == sizeof *count) return 0;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      *count = 0;
      return 0;
    }
    if (n < 0) return -errno;
    return -EIO;  // a short read cannot happen on an eventfd
  }
}

Napi::Value EventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t initval = info.Length() > 0 && !info[0].IsUndefined() ? ArgU32(info, 0, "initval") : 0;
  const int fd = eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value EventFdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  uint64_t value = 1;
  if (info.Length() > 1 && !info[1].IsUndefined()) value = ValueToU64(env, info[1], "value");
  for (;;) {
    const ssize_t n = write(fd, &value, sizeof value);
    if (n == sizeof value) break;
    if (n < 0 && errno == EINTR) continue;
    ThrowErrno(env, "write", n < 0 ? errno : EIO, "eventfd");
  }
  return env.Undefined();
}

Napi::Value EventFdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  uint64_t count = 0;
  const int64_t r = ReadEventFdCounter(fd, &count);
  if (r < 0) ThrowErrno(env, "read", static_cast<int>(-r), "eventfd");
  return Napi::Number::New(env, static_cast<double>(count));
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  // Linux releases the fd even when close() reports EINTR, so it must not be retried.
  if (close(fd) < 0 && errno != EINTR) ThrowErrno(env, "close", errno);
  return env.Undefined();
}

Napi::Value ResidentPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FILE* f = fopen("/proc/self/statm", "re");
  if (f == nullptr) ThrowErrno(env, "open", errno, "/proc/self/statm");
  unsigned long size = 0;
  unsigned long resident = 0;
  const int n = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  if (n != 2) ThrowErrno(env, "read", EIO, "/proc/self/statm");
  return Napi::Number::New(env, static_cast<double>(resident));
}

}  // namespace kindling
