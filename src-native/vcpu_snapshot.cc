// NativeVcpu's whole-state save and restore for snapshots. KVM's structures travel as opaque
// Buffers (exactly the kernel's struct bytes); lib/snapshot decides what to do with them.
//
// The orderings below are KVM's, as Firecracker (src/vmm/src/arch/x86_64/vcpu.rs) and QEMU
// (target/i386/kvm/kvm.c) document them; each is explained where it is enforced.
#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "convert.h"
#include "errors.h"
#include "kvm_abi.h"
#include "vcpu.h"
#include "vm.h"

namespace kindling {

namespace {

// KVM accepts at most this many entries per KVM_GET_MSRS / KVM_SET_MSRS (MAX_IO_MSRS).
constexpr size_t kMsrChunk = 256;
constexpr size_t kMaxSavedMsrs = 4096;
constexpr uint32_t kMaxCpuidEntries = 4096;

static_assert(sizeof(kvm_fpu) == 416, "kvm_fpu layout");
static_assert(sizeof(kvm_xcrs) == 392, "kvm_xcrs layout");
static_assert(sizeof(kvm_debugregs) == 128, "kvm_debugregs layout");
static_assert(sizeof(kvm_vcpu_events) == 64, "kvm_vcpu_events layout");
static_assert(sizeof(kvm_mp_state) == 4, "kvm_mp_state layout");

int CheckCap(int vmFd, long cap) {
  const int r = ioctl(vmFd, KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

// A field that must be a Buffer of exactly `size` bytes, or (if `optional`) null/undefined.
ByteView Field(Napi::Env env, Napi::Object o, const char* key, size_t size, bool optional) {
  Napi::Value v = o.Get(key);
  if (optional && (v.IsNull() || v.IsUndefined())) return ByteView{};
  ByteView b = BytesOf(env, v, key);
  if (size != 0 && b.size != size) {
    ThrowRange(env, std::string("restoreState: ") + key + " must be " + std::to_string(size) + " bytes, got " +
                        std::to_string(b.size));
  }
  return b;
}

std::string Hex(uint32_t v) {
  char buf[16];
  snprintf(buf, sizeof buf, "0x%x", v);
  return buf;
}

// KVM_GET_CPUID2: the vCPU's CPUID table as KVM holds it (E2BIG while the buffer is too small).
std::vector<kvm_cpuid_entry2> ReadCpuid(Napi::Env env, int fd) {
  for (uint32_t nent = 128; nent <= kMaxCpuidEntries; nent *= 2) {
    FlexTable<KvmCpuid2Header, kvm_cpuid_entry2> table(nent);
    table.header()->nent = nent;
    if (ioctl(fd, kKvmGetCpuid2, table.data()) < 0) {
      if (errno == E2BIG) continue;
      ThrowErrno(env, "KVM_GET_CPUID2", errno);
    }
    const uint32_t got = std::min(table.header()->nent, nent);
    return std::vector<kvm_cpuid_entry2>(table.entries(), table.entries() + got);
  }
  ThrowErrno(env, "KVM_GET_CPUID2", E2BIG);
}

}  // namespace

Napi::Value Vcpu::GetCpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<kvm_cpuid_entry2> cpuid = ReadCpuid(env, Fd(env, "KVM_GET_CPUID2"));
  Napi::Array out = Napi::Array::New(env, cpuid.size());
  for (size_t i = 0; i < cpuid.size(); i++) out.Set(static_cast<uint32_t>(i), CpuidEntryToJs(env, cpuid[i]));
  return out;
}

int Vcpu::SnapshotFd(Napi::Env env, const char* op) {
  // Closed: closeAsync() may be closing the fd on a worker thread right now.
  if (vm_->Closed() || core_->fd < 0) ThrowErrno(env, op, EBADF, "the VM is closed");
  const VcpuState st = vmCore_->StateOf(*core_);
  if (st != VcpuState::kIdle && st != VcpuState::kParked) {
    ThrowErrno(env, op, EBUSY,
               "vCPU " + std::to_string(core_->id) +
                   " is not paused at an instruction boundary (pauseVcpus(), then flushExits() until every vCPU's runState is 'parked')");
  }
  return core_->fd;
}

Napi::Value Vcpu::RunState(const Napi::CallbackInfo& info) {
  const char* name = "idle";
  switch (vmCore_->StateOf(*core_)) {
    case VcpuState::kIdle: name = "idle"; break;
    case VcpuState::kRunning: name = "running"; break;
    case VcpuState::kWaitingJs: name = "waiting"; break;
    case VcpuState::kParked: name = "parked"; break;
    case VcpuState::kExited: name = "exited"; break;
  }
  return Napi::String::New(info.Env(), name);
}

Napi::Value Vcpu::SaveState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = SnapshotFd(env, "KVM_GET_MP_STATE");
  const int vmFd = vmCore_->fd;
  if (info.Length() < 1 || !info[0].IsArray()) ThrowType(env, "saveState: expected the MSR indexes to save");
  Napi::Array list = info[0].As<Napi::Array>();
  if (list.Length() > kMaxSavedMsrs) ThrowRange(env, "saveState: too many MSR indexes");
  std::vector<uint32_t> indexes(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    const uint64_t idx = ValueToU64(env, list.Get(i), "MSR index");
    if (idx > 0xffffffffu) ThrowRange(env, "saveState: MSR indexes are 32 bits");
    indexes[i] = static_cast<uint32_t>(idx);
  }

  Napi::Object out = Napi::Object::New(env);

  // KVM_GET_MP_STATE first: it runs kvm_apic_accept_events(), which may change the vCPU and LAPIC
  // state the other calls read.
  kvm_mp_state mp;
  std::memset(&mp, 0, sizeof mp);
  if (ioctl(fd, KVM_GET_MP_STATE, &mp) < 0) ThrowErrno(env, "KVM_GET_MP_STATE", errno);
  out.Set("mpState", Napi::Number::New(env, mp.mp_state));

  kvm_regs regs;
  std::memset(&regs, 0, sizeof regs);
  if (ioctl(fd, KVM_GET_REGS, &regs) < 0) ThrowErrno(env, "KVM_GET_REGS", errno);
  out.Set("regs", CopyToBuffer(env, &regs, sizeof regs));

  // The whole struct, interrupt_bitmap included: it holds an interrupt KVM has accepted but not
  // yet injected.
  kvm_sregs sregs;
  std::memset(&sregs, 0, sizeof sregs);
  if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0) ThrowErrno(env, "KVM_GET_SREGS", errno);
  out.Set("sregs", CopyToBuffer(env, &sregs, sizeof sregs));

  kvm_fpu fpu;
  std::memset(&fpu, 0, sizeof fpu);
  if (ioctl(fd, KVM_GET_FPU, &fpu) < 0) ThrowErrno(env, "KVM_GET_FPU", errno);
  out.Set("fpu", CopyToBuffer(env, &fpu, sizeof fpu));

  if (CheckCap(vmFd, KVM_CAP_XSAVE) > 0) {
    // KVM_CAP_XSAVE2 on the VM fd is the buffer size KVM_GET_XSAVE2 fills (at least 4096; more
    // with dynamically enabled features such as AMX).
    const int size2 = CheckCap(vmFd, KVM_CAP_XSAVE2);
    const size_t size = std::max<size_t>(kKvmXsaveSize, size2 > 0 ? static_cast<size_t>(size2) : 0);
    std::vector<uint8_t> xsave(size, 0);
    const unsigned long op = size2 > 0 ? kKvmGetXsave2 : kKvmGetXsave;
    if (ioctl(fd, op, xsave.data()) < 0) ThrowErrno(env, size2 > 0 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE", errno);
    out.Set("xsave", CopyToBuffer(env, xsave.data(), xsave.size()));
  } else {
    out.Set("xsave", env.Null());
  }

  if (CheckCap(vmFd, KVM_CAP_XCRS) > 0) {
    kvm_xcrs xcrs;
    std::memset(&xcrs, 0, sizeof xcrs);
    if (ioctl(fd, KVM_GET_XCRS, &xcrs) < 0) ThrowErrno(env, "KVM_GET_XCRS", errno);
    out.Set("xcrs", CopyToBuffer(env, &xcrs, sizeof xcrs));
  } else {
    out.Set("xcrs", env.Null());
  }

  if (CheckCap(vmFd, KVM_CAP_DEBUGREGS) > 0) {
    kvm_debugregs dbg;
    std::memset(&dbg, 0, sizeof dbg);
    if (ioctl(fd, KVM_GET_DEBUGREGS, &dbg) < 0) ThrowErrno(env, "KVM_GET_DEBUGREGS", errno);
    out.Set("debugregs", CopyToBuffer(env, &dbg, sizeof dbg));
  } else {
    out.Set("debugregs", env.Null());
  }

  kvm_lapic_state lapic;
  std::memset(&lapic, 0, sizeof lapic);
  if (ioctl(fd, KVM_GET_LAPIC, &lapic) < 0) ThrowErrno(env, "KVM_GET_LAPIC", errno);
  out.Set("lapic", CopyToBuffer(env, lapic.regs, sizeof lapic.regs));

  if (CheckCap(vmFd, KVM_CAP_GET_TSC_KHZ) > 0) {
    const int khz = ioctl(fd, KVM_GET_TSC_KHZ, 0);
    out.Set("tscKhz", khz > 0 ? Napi::Value(Napi::Number::New(env, khz)) : env.Null());
  } else {
    out.Set("tscKhz", env.Null());
  }

  // The CPUID table the guest was given (KVM_SET_CPUID2), to give it the same one on restore.
  const std::vector<kvm_cpuid_entry2> cpuid = ReadCpuid(env, fd);
  out.Set("cpuid", CopyToBuffer(env, cpuid.data(), cpuid.size() * sizeof(kvm_cpuid_entry2)));

  // MSRs in chunks. KVM stops at the first MSR it cannot read and returns how many it read: that
  // one is reported as unreadable and the rest of the chunk is read after it.
  std::vector<kvm_msr_entry> saved;
  saved.reserve(indexes.size());
  Napi::Array unreadable = Napi::Array::New(env);
  size_t next = 0;
  while (next < indexes.size()) {
    const size_t n = std::min(kMsrChunk, indexes.size() - next);
    FlexTable<KvmMsrsHeader, kvm_msr_entry> msrs(n);
    msrs.header()->nmsrs = static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; i++) msrs.entries()[i].index = indexes[next + i];
    const int r = ioctl(fd, kKvmGetMsrs, msrs.data());
    if (r < 0) ThrowErrno(env, "KVM_GET_MSRS", errno);
    const size_t got = std::min(static_cast<size_t>(r), n);
    for (size_t i = 0; i < got; i++) saved.push_back(msrs.entries()[i]);
    next += got;
    if (got < n) {
      unreadable.Set(unreadable.Length(), Napi::Number::New(env, indexes[next]));
      next++;
    }
  }
  out.Set("msrs", CopyToBuffer(env, saved.data(), saved.size() * sizeof(kvm_msr_entry)));
  out.Set("msrsUnreadable", unreadable);

  // Last: the other GET ioctls may change what is pending.
  if (CheckCap(vmFd, KVM_CAP_VCPU_EVENTS) > 0) {
    kvm_vcpu_events events;
    std::memset(&events, 0, sizeof events);
    if (ioctl(fd, KVM_GET_VCPU_EVENTS, &events) < 0) ThrowErrno(env, "KVM_GET_VCPU_EVENTS", errno);
    out.Set("events", CopyToBuffer(env, &events, sizeof events));
  } else {
    out.Set("events", env.Null());
  }
  return out;
}

Napi::Value Vcpu::RestoreState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = SnapshotFd(env, "KVM_SET_REGS");
  const int vmFd = vmCore_->fd;
  if (info.Length() < 1 || !info[0].IsObject()) ThrowType(env, "restoreState: expected a NativeVcpuState object");
  Napi::Object s = info[0].As<Napi::Object>();

  // Validate every field before the first ioctl, so that a bad state changes nothing.
  const ByteView regs = Field(env, s, "regs", sizeof(kvm_regs), false);
  const ByteView sregs = Field(env, s, "sregs", sizeof(kvm_sregs), false);
  const ByteView fpu = Field(env, s, "fpu", sizeof(kvm_fpu), false);
  const ByteView xsave = Field(env, s, "xsave", 0, true);
  const ByteView xcrs = Field(env, s, "xcrs", sizeof(kvm_xcrs), true);
  const ByteView dbg = Field(env, s, "debugregs", sizeof(kvm_debugregs), true);
  const ByteView lapic = Field(env, s, "lapic", sizeof(kvm_lapic_state), false);
  const ByteView events = Field(env, s, "events", sizeof(kvm_vcpu_events), true);
  const ByteView msrs = Field(env, s, "msrs", 0, false);
  const ByteView cpuid = Field(env, s, "cpuid", 0, true);
  const uint64_t mpState = ValueToU64(env, s.Get("mpState"), "mpState");
  if (mpState > 0xffffffffu) ThrowRange(env, "restoreState: mpState is 32 bits");
  if (msrs.size % sizeof(kvm_msr_entry) != 0 || msrs.size / sizeof(kvm_msr_entry) > kMaxSavedMsrs) {
    ThrowRange(env, "restoreState: msrs must be whole kvm_msr_entry records (16 bytes), at most 4096");
  }
  if (cpuid.data != nullptr &&
      (cpuid.size % sizeof(kvm_cpuid_entry2) != 0 || cpuid.size / sizeof(kvm_cpuid_entry2) > kMaxCpuidEntries)) {
    ThrowRange(env, "restoreState: cpuid must be whole kvm_cpuid_entry2 records (40 bytes)");
  }
  size_t xsaveSize = 0;
  if (xsave.data != nullptr) {
    if (CheckCap(vmFd, KVM_CAP_XSAVE) <= 0) ThrowErrno(env, "KVM_SET_XSAVE", ENOTSUP, "this host has no KVM_CAP_XSAVE");
    const int size2 = CheckCap(vmFd, KVM_CAP_XSAVE2);
    xsaveSize = std::max<size_t>(kKvmXsaveSize, size2 > 0 ? static_cast<size_t>(size2) : 0);
    if (xsave.size < kKvmXsaveSize || xsave.size > xsaveSize) {
      ThrowErrno(env, "KVM_SET_XSAVE", E2BIG,
                 "the saved XSAVE area is " + std::to_string(xsave.size) + " bytes, this host's is " + std::to_string(xsaveSize));
    }
  }
  if (xcrs.data != nullptr && CheckCap(vmFd, KVM_CAP_XCRS) <= 0) ThrowErrno(env, "KVM_SET_XCRS", ENOTSUP, "this host has no KVM_CAP_XCRS");
  if (dbg.data != nullptr && CheckCap(vmFd, KVM_CAP_DEBUGREGS) <= 0) {
    ThrowErrno(env, "KVM_SET_DEBUGREGS", ENOTSUP, "this host has no KVM_CAP_DEBUGREGS");
  }
  if (events.data != nullptr && CheckCap(vmFd, KVM_CAP_VCPU_EVENTS) <= 0) {
    ThrowErrno(env, "KVM_SET_VCPU_EVENTS", ENOTSUP, "this host has no KVM_CAP_VCPU_EVENTS");
  }

  // CPUID before anything else: KVM derives the valid MSRs, XSAVE components and CR4 bits from it.
  if (cpuid.data != nullptr) {
    const size_t n = cpuid.size / sizeof(kvm_cpuid_entry2);
    FlexTable<KvmCpuid2Header, kvm_cpuid_entry2> table(n);
    table.header()->nent = static_cast<uint32_t>(n);
    std::memcpy(table.entries(), cpuid.data, cpuid.size);
    if (ioctl(fd, kKvmSetCpuid2, table.data()) < 0) ThrowErrno(env, "KVM_SET_CPUID2", errno);
  }

  kvm_mp_state mp;
  mp.mp_state = static_cast<uint32_t>(mpState);
  if (ioctl(fd, KVM_SET_MP_STATE, &mp) < 0) ThrowErrno(env, "KVM_SET_MP_STATE", errno);

  // KVM_SET_REGS clears pending exceptions: it must come before KVM_SET_VCPU_EVENTS.
  kvm_regs r;
  std::memcpy(&r, regs.data, sizeof r);
  if (ioctl(fd, KVM_SET_REGS, &r) < 0) ThrowErrno(env, "KVM_SET_REGS", errno);

  // KVM_SET_SREGS restores the APIC base MSR: it must come before KVM_SET_LAPIC.
  kvm_sregs sr;
  std::memcpy(&sr, sregs.data, sizeof sr);
  if (ioctl(fd, KVM_SET_SREGS, &sr) < 0) ThrowErrno(env, "KVM_SET_SREGS", errno);

  if (xsave.data != nullptr) {
    // KVM_SET_XSAVE reads this host's full XSAVE size; a smaller saved area is zero-extended
    // (XSTATE_BV in the header says which components it holds).
    std::vector<uint8_t> area(xsaveSize, 0);
    std::memcpy(area.data(), xsave.data, xsave.size);
    if (ioctl(fd, kKvmSetXsave, area.data()) < 0) ThrowErrno(env, "KVM_SET_XSAVE", errno);
  } else {
    kvm_fpu f;
    std::memcpy(&f, fpu.data, sizeof f);
    if (ioctl(fd, KVM_SET_FPU, &f) < 0) ThrowErrno(env, "KVM_SET_FPU", errno);
  }

  if (xcrs.data != nullptr) {
    kvm_xcrs x;
    std::memcpy(&x, xcrs.data, sizeof x);
    if (ioctl(fd, KVM_SET_XCRS, &x) < 0) ThrowErrno(env, "KVM_SET_XCRS", errno);
  }

  if (dbg.data != nullptr) {
    kvm_debugregs d;
    std::memcpy(&d, dbg.data, sizeof d);
    if (ioctl(fd, KVM_SET_DEBUGREGS, &d) < 0) ThrowErrno(env, "KVM_SET_DEBUGREGS", errno);
  }

  // KVM_SET_LAPIC before the MSRs: the TSC-deadline MSR only takes effect on a configured LAPIC.
  kvm_lapic_state la;
  std::memcpy(la.regs, lapic.data, sizeof la.regs);
  if (ioctl(fd, KVM_SET_LAPIC, &la) < 0) ThrowErrno(env, "KVM_SET_LAPIC", errno);

  // In the caller's order (lib/snapshot puts IA32_TSC_DEADLINE after IA32_TSC).
  const size_t nmsrs = msrs.size / sizeof(kvm_msr_entry);
  for (size_t at = 0; at < nmsrs; at += kMsrChunk) {
    const size_t n = std::min(kMsrChunk, nmsrs - at);
    FlexTable<KvmMsrsHeader, kvm_msr_entry> table(n);
    table.header()->nmsrs = static_cast<uint32_t>(n);
    std::memcpy(table.entries(), msrs.data + at * sizeof(kvm_msr_entry), n * sizeof(kvm_msr_entry));
    const int set = ioctl(fd, kKvmSetMsrs, table.data());
    if (set < 0) ThrowErrno(env, "KVM_SET_MSRS", errno);
    if (static_cast<size_t>(set) < n) {
      ThrowErrno(env, "KVM_SET_MSRS", EINVAL, "MSR " + Hex(table.entries()[set].index) + " was refused");
    }
  }

  if (events.data != nullptr) {
    kvm_vcpu_events ev;
    std::memcpy(&ev, events.data, sizeof ev);
    // KVM_GET_VCPU_EVENTS does not set these two, but its nmi.pending and sipi_vector are only
    // applied with them (api.rst, KVM_SET_VCPU_EVENTS): a pending NMI or an AP's SIPI vector
    // would otherwise be lost.
    ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    if (ioctl(fd, KVM_SET_VCPU_EVENTS, &ev) < 0) ThrowErrno(env, "KVM_SET_VCPU_EVENTS", errno);
  }

  // Tells a kvmclock guest it was paused, so its watchdogs do not count the gap as a lockup.
  // EINVAL when the guest has not enabled kvmclock: nothing to tell then.
  if (CheckCap(vmFd, KVM_CAP_KVMCLOCK_CTRL) > 0) (void)ioctl(fd, KVM_KVMCLOCK_CTRL, 0);
  return env.Undefined();
}

Napi::Value Vcpu::GetTscKhz(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int r = ioctl(Fd(env, "KVM_GET_TSC_KHZ"), KVM_GET_TSC_KHZ, 0);
  if (r < 0) ThrowErrno(env, "KVM_GET_TSC_KHZ", errno);
  return Napi::Number::New(env, r);
}

Napi::Value Vcpu::SetTscKhz(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = SnapshotFd(env, "KVM_SET_TSC_KHZ");
  const uint32_t khz = ArgU32(info, 0, "khz");
  if (khz == 0) ThrowRange(env, "setTscKhz: khz must be positive");
  if (ioctl(fd, KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) < 0) ThrowErrno(env, "KVM_SET_TSC_KHZ", errno);
  return env.Undefined();
}

}  // namespace kindling
