#include "kvm_system.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "addon_data.h"
#include "convert.h"
#include "errors.h"
#include "kvm_abi.h"
#include "vm.h"
#include "vm_setup.h"

namespace kindling {

Napi::Function KvmSystem::Init(Napi::Env env) {
  return DefineClass(env, "NativeKvm",
                     {
                         InstanceMethod<&KvmSystem::ApiVersion>("apiVersion"),
                         InstanceMethod<&KvmSystem::CheckExtension>("checkExtension"),
                         InstanceMethod<&KvmSystem::SupportedCpuid>("supportedCpuid"),
                         InstanceMethod<&KvmSystem::MsrIndexList>("msrIndexList"),
                         InstanceMethod<&KvmSystem::CreateVm>("createVm"),
                         InstanceMethod<&KvmSystem::CreateVmAsync>("createVmAsync"),
                         InstanceMethod<&KvmSystem::Close>("close"),
                     });
}

KvmSystem::KvmSystem(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmSystem>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) ThrowType(env, "NativeKvm is created by openKvm()");
  fd_ = *info[0].As<Napi::External<int>>().Data();
}

KvmSystem::~KvmSystem() {
  if (fd_ >= 0) close(fd_);
}

int KvmSystem::Fd(Napi::Env env, const char* op) {
  if (fd_ < 0) ThrowErrno(env, op, EBADF, "the KVM handle is closed");
  return fd_;
}

Napi::Value KvmSystem::ApiVersion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int r = ioctl(Fd(env, "KVM_GET_API_VERSION"), KVM_GET_API_VERSION, 0);
  if (r < 0) ThrowErrno(env, "KVM_GET_API_VERSION", errno);
  return Napi::Number::New(env, r);
}

Napi::Value KvmSystem::CheckExtension(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t cap = ArgU32(info, 0, "cap");
  const int r = ioctl(Fd(env, "KVM_CHECK_EXTENSION"), KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (r < 0) ThrowErrno(env, "KVM_CHECK_EXTENSION", errno);
  return Napi::Number::New(env, r);
}

Napi::Value KvmSystem::SupportedCpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_GET_SUPPORTED_CPUID");
  // KVM answers E2BIG while the table is too small; grow it (api.rst, KVM_GET_SUPPORTED_CPUID).
  for (uint32_t nent = 256; nent <= 4096; nent *= 2) {
    FlexTable<KvmCpuid2Header, kvm_cpuid_entry2> cpuid(nent);
    cpuid.header()->nent = nent;
    if (ioctl(fd, kKvmGetSupportedCpuid, cpuid.data()) < 0) {
      if (errno == E2BIG) continue;
      ThrowErrno(env, "KVM_GET_SUPPORTED_CPUID", errno);
    }
    const uint32_t got = cpuid.header()->nent;
    Napi::Array out = Napi::Array::New(env, got);
    for (uint32_t i = 0; i < got; i++) out.Set(i, CpuidEntryToJs(env, cpuid.entries()[i]));
    return out;
  }
  ThrowErrno(env, "KVM_GET_SUPPORTED_CPUID", E2BIG);
}

Napi::Value KvmSystem::MsrIndexList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_GET_MSR_INDEX_LIST");
  // E2BIG while the list is too small; KVM then reports the size it needs in nmsrs.
  uint32_t n = 256;
  for (int attempt = 0; attempt < 8; attempt++) {
    std::vector<uint32_t> buf(1 + n, 0);
    buf[0] = n;
    if (ioctl(fd, kKvmGetMsrIndexList, buf.data()) < 0) {
      if (errno == E2BIG && buf[0] > n && buf[0] <= 65536) {
        n = buf[0];
        continue;
      }
      ThrowErrno(env, "KVM_GET_MSR_INDEX_LIST", errno);
    }
    const uint32_t got = std::min(buf[0], n);
    Napi::Array out = Napi::Array::New(env, got);
    for (uint32_t i = 0; i < got; i++) out.Set(i, Napi::Number::New(env, buf[1 + i]));
    return out;
  }
  ThrowErrno(env, "KVM_GET_MSR_INDEX_LIST", E2BIG);
}

Napi::Value KvmSystem::CreateVm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_CREATE_VM");
  const int mmapSize = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmapSize < 0) ThrowErrno(env, "KVM_GET_VCPU_MMAP_SIZE", errno);
  int vmFd;
  // KVM_CREATE_VM can fail with EINTR when a signal arrives while it sets up the MMU.
  do {
    vmFd = ioctl(fd, KVM_CREATE_VM, 0);
  } while (vmFd < 0 && errno == EINTR);
  if (vmFd < 0) ThrowErrno(env, "KVM_CREATE_VM", errno);
  return Vm::NewInstance(env, vmFd, static_cast<size_t>(mmapSize));
}

Napi::Value KvmSystem::CreateVmAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return kindling::CreateVmAsync(env, Fd(env, "KVM_CREATE_VM"), info.Length() > 0 ? info[0] : env.Undefined());
}

Napi::Value KvmSystem::Close(const Napi::CallbackInfo& info) {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  return info.Env().Undefined();
}

Napi::Value OpenKvm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = "/dev/kvm";
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsString()) ThrowType(env, "openKvm: path must be a string");
    path = info[0].As<Napi::String>().Utf8Value();
  }
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open", errno, path);
  try {
    return GetAddonData(env)->kvmCtor.New({Napi::External<int>::New(env, &fd)});
  } catch (...) {
    close(fd);
    throw;
  }
}

}  // namespace kindling
