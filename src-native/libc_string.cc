// Finds a constant string inside libc's read-only segments, for a seccomp rule that must recognise
// one particular path pointer glibc passes to openat (see lib/seccomp/vcpu.ts,
// overcommitPathAddress). Pointers, not paths, are all a seccomp filter can compare.
#include <elf.h>
#include <link.h>
#include <string.h>

#include <cstdint>
#include <string>

#include "convert.h"
#include "errors.h"

namespace kindling {

namespace {

struct Search {
  std::string needle;
  uint64_t found = 0;
};

int VisitObject(struct dl_phdr_info* info, size_t /*size*/, void* data) {
  auto* s = static_cast<Search*>(data);
  if (info->dlpi_name == nullptr || strstr(info->dlpi_name, "/libc.so") == nullptr) return 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    // Only loaded, read-only segments: the string must be a constant that cannot change.
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) || !(ph.p_flags & PF_R)) continue;
    const char* start = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
    // The terminating NUL is part of the match: a longer string with this prefix does not count.
    const void* hit = memmem(start, ph.p_filesz, s->needle.c_str(), s->needle.size() + 1);
    if (hit != nullptr) {
      s->found = reinterpret_cast<uint64_t>(hit);
      return 1;
    }
  }
  return 0;
}

}  // namespace

Napi::Value LibcStringAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) ThrowType(env, "libcStringAddress: expected a string");
  Search s;
  s.needle = info[0].As<Napi::String>().Utf8Value();
  if (s.needle.empty()) ThrowRange(env, "libcStringAddress: empty string");
  dl_iterate_phdr(VisitObject, &s);
  if (s.found == 0) return env.Undefined();
  return Napi::BigInt::New(env, s.found);
}

}  // namespace kindling
