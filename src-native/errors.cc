#include "errors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "addon_data.h"

namespace kindling {

const char* ErrnoName(int err) {
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case EPIPE: return "EPIPE";
    case EDOM: return "EDOM";
    case ERANGE: return "ERANGE";
    case EDEADLK: return "EDEADLK";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOSYS: return "ENOSYS";
    case ELOOP: return "ELOOP";
    case EOVERFLOW: return "EOVERFLOW";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EHWPOISON: return "EHWPOISON";
    default: return nullptr;
  }
}

namespace {

std::string NameOf(int err) {
  const char* name = ErrnoName(err);
  if (name != nullptr) return name;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  name = strerrorname_np(err);
  if (name != nullptr) return name;
#endif
  return "E" + std::to_string(err);
}

}  // namespace

Napi::Value MakeErrnoError(Napi::Env env, const char* op, int err, const std::string& detail) {
  const std::string code = NameOf(err);
  char buf[256];
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* text = strerror_r(err, buf, sizeof buf);
  std::string message = std::string(op) + " failed: " + code + " (" + text + ")";
  if (!detail.empty()) message += ": " + detail;

  AddonData* data = GetAddonData(env);
  if (data != nullptr && !data->errorCtor.IsEmpty()) {
    return data->errorCtor.New({Napi::String::New(env, code), Napi::String::New(env, message),
                                Napi::String::New(env, op), Napi::Number::New(env, err)});
  }
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  e.Set("ioctl", Napi::String::New(env, op));
  e.Set("errno", Napi::Number::New(env, err));
  return e.Value();
}

void ThrowErrno(Napi::Env env, const char* op, int err, const std::string& detail) {
  throw Napi::Error(env, MakeErrnoError(env, op, err, detail));
}

void ThrowType(Napi::Env env, const std::string& message) { throw Napi::TypeError::New(env, message); }

void ThrowRange(Napi::Env env, const std::string& message) { throw Napi::RangeError::New(env, message); }

void ThrowState(Napi::Env env, const std::string& message) { throw Napi::Error::New(env, message); }

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) ThrowType(env, "setErrorClass: expected a constructor");
  GetAddonData(env)->errorCtor = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

}  // namespace kindling
