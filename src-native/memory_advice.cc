#include "memory_advice.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include "convert.h"
#include "errors.h"

namespace kindling {

namespace {

struct AnonMapping {
  void* addr;
  size_t size;
};

// Node-API calls this when the ArrayBuffer is collected.
void ReleaseAnon(napi_env /*env*/, void* /*data*/, void* hint) {
  auto* m = static_cast<AnonMapping*>(hint);
  munmap(m->addr, m->size);
  delete m;
}

}  // namespace

Napi::Value DiscardMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) ThrowType(env, "discardMemory: buffer must be an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  const uint64_t offset = ArgSafeU64(info, 1, "offset");
  const uint64_t length = ArgSafeU64(info, 2, "length");
  const uint64_t size = ab.ByteLength();
  uint8_t* data = static_cast<uint8_t*>(ab.Data());
  // A detached buffer (a closed VM) has no memory left to advise on.
  if (data == nullptr || offset > size || length > size - offset) ThrowRange(env, "discardMemory: range outside the buffer");
  if (length == 0) return env.Undefined();
  if (madvise(data + offset, length, MADV_DONTNEED) < 0) ThrowErrno(env, "madvise", errno, "MADV_DONTNEED");
  return env.Undefined();
}

Napi::Value MapAnonymous(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t size = ArgSafeU64(info, 0, "size");
  // Node-API's external ArrayBuffers stop at 4 GiB on Node.js 20 (see vm.cc).
  if (size == 0 || size > (uint64_t(1) << 32)) ThrowRange(env, "mapAnonymous: size must be in (0, 4 GiB]");
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  auto* hint = new AnonMapping{addr, static_cast<size_t>(size)};
  napi_value buffer = nullptr;
  // On failure Node.js has already run the finalizer, which owns `hint`.
  if (napi_create_external_arraybuffer(env, addr, size, ReleaseAnon, hint, &buffer) != napi_ok) throw Napi::Error::New(env);
  return Napi::Value(env, buffer);
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace kindling
