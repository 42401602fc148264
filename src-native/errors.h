// Errors thrown by the addon. Every failing syscall or ioctl becomes a JavaScript error that names
// the operation, carries errno and errno's symbolic name, so callers can discriminate on `code`.
#pragma once

#include <napi.h>

#include <string>

namespace kindling {

/** errno's symbolic name ("EINVAL"); "E<number>" for values this table does not know. */
const char* ErrnoName(int err);

/**
 * Builds the error value for a failed `op` with errno `err`: an instance of the class registered
 * with `setErrorClass` (lib/native/binding.ts registers NativeError), or a plain Error with the
 * same properties when none is registered. Message: "<op> failed: <ENAME> (<strerror>)".
 */
Napi::Value MakeErrnoError(Napi::Env env, const char* op, int err, const std::string& detail = "");

/** Throws MakeErrnoError(env, op, err) as a C++ Napi::Error (C++ exceptions are enabled). */
[[noreturn]] void ThrowErrno(Napi::Env env, const char* op, int err, const std::string& detail = "");

/** Throws a TypeError for a bad argument. */
[[noreturn]] void ThrowType(Napi::Env env, const std::string& message);

/** Throws a RangeError for an argument outside its domain. */
[[noreturn]] void ThrowRange(Napi::Env env, const std::string& message);

/** Throws a plain Error for misuse of the API (wrong state). */
[[noreturn]] void ThrowState(Napi::Env env, const std::string& message);

/** Module function `setErrorClass(ctor)`: the constructor used for errno errors. */
Napi::Value SetErrorClass(const Napi::CallbackInfo& info);

}  // namespace kindling
