#include "memory_advice.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include <v8.h>

#include "convert.h"
#include "errors.h"

namespace kindling {

namespace {

struct AnonMapping {
  void* addr;
  size_t size;
};

// V8 calls this when the ArrayBuffer's backing store goes (collected or detached), on any thread.
void ReleaseAnon(void* /*data*/, size_t /*length*/, void* hint) {
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
  if (size == 0 || size > (uint64_t(1) << 46)) ThrowRange(env, "mapAnonymous: size must be in (0, 2^46]");
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  auto* hint = new AnonMapping{addr, static_cast<size_t>(size)};
  // A V8 ArrayBuffer, not napi_create_external_arraybuffer: Node 20 refuses external buffers over
  // 4 GiB (see vm.cc). A napi_value is a v8::Local's slot pointer inside this callback scope.
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(addr, size, ReleaseAnon, hint);
  v8::Local<v8::ArrayBuffer> buffer = v8::ArrayBuffer::New(isolate, std::move(store));
  v8::Local<v8::Value> value = buffer;
  return Napi::Value(env, reinterpret_cast<napi_value>(*value));
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace kindling
