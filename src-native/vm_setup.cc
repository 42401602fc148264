// NativeKvm.createVmAsync(setup): the whole KVM set-up of a VM on a libuv worker thread, from a
// description made in JavaScript (lib/native/types.ts, VmSetup). It issues the same ioctls, in the
// same order, as the synchronous methods a caller would otherwise chain on the JavaScript thread:
//
//   KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VM, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR,
//   KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, mmap (guest RAM: one anonymous mapping per buffer of at
//   most 4 GiB, between guard pages), KVM_SET_USER_MEMORY_REGION per slot, file ranges read into
//   guest RAM (pread: the kernel and initrd), byte ranges copied into guest RAM (the boot
//   structures: so that their first-touch page faults, too, happen here), then per vCPU: KVM_CREATE_VCPU, mmap (kvm_run), KVM_SET_CPUID2, KVM_SET_MSRS,
//   KVM_GET_LAPIC + edits + KVM_SET_LAPIC, KVM_SET_REGS, KVM_GET_SREGS + overrides +
//   KVM_SET_SREGS, KVM_GET_FPU + fcw/mxcsr + KVM_SET_FPU, and the vCPU's thread, created here and
//   held at a gate until NativeVcpu.start() (creating a thread maps its stack: that waits for the
//   process's memory-map lock, which page faults of running guests hold). start() hands the
//   thread its seccomp filter, which it installs before its first KVM_RUN, as any vCPU thread.
//
// Why: these calls take milliseconds (KVM_SET_USER_MEMORY_REGION alone 5-7 ms for 128 MiB on the
// emulated-KVM host, a 17 MB kernel as long to read and copy), and on the JavaScript thread they
// serialize every VM start in the process and stall the event loop. On the thread pool, starts
// run in parallel on every core while the loop goes on. Nothing here decides anything: every value
// comes from the description; the addon stays policy-free.
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <system_error>
#include <memory>
#include <string>
#include <vector>

#include "async_task.h"
#include "convert.h"
#include "errors.h"
#include "kvm_abi.h"
#include "vm.h"
#include "vm_setup.h"

namespace kindling {

namespace {

constexpr size_t kMaxSetupVcpus = 1024;
constexpr size_t kMaxSetupEntries = 1024;  // CPUID entries, MSRs, LAPIC edits, slots, loads, buffers
constexpr size_t kCpuidWords = 7;          // a packed CPUID entry

struct SlotSpec {
  uint32_t slot = 0;
  uint64_t guestAddr = 0;
  uint32_t buffer = 0;  // index into Setup::memory
  uint64_t offset = 0;  // in that buffer
  uint64_t size = 0;
};

struct LoadSpec {
  int fd = -1;       // the caller's descriptor, open until the set-up has finished; never closed here
  std::string name;  // for error messages
  uint64_t fileOffset = 0;
  uint64_t length = 0;
  uint64_t zeroFill = 0;
  uint32_t buffer = 0;     // where guestAddr lies: this buffer (checked on the JS thread)
  uint64_t memOffset = 0;  // at this offset
};

struct WriteSpec {
  uint32_t buffer = 0;
  uint64_t memOffset = 0;
  std::vector<uint8_t> bytes;
};

struct LapicEdit {
  uint32_t offset = 0;
  uint32_t mask = 0;
  uint32_t bits = 0;
};

struct VcpuSpec {
  uint32_t id = 0;
  bool hasCpuid = false;
  std::unique_ptr<FlexTable<KvmCpuid2Header, kvm_cpuid_entry2>> cpuid;
  bool hasMsrs = false;
  size_t nmsrs = 0;
  std::unique_ptr<FlexTable<KvmMsrsHeader, kvm_msr_entry>> msrs;
  std::vector<LapicEdit> lapic;
  bool hasRegs = false;
  kvm_regs regs{};
  bool hasSregs = false;
  kvm_sregs sregsTemplate{};   // applied over KVM_GET_SREGS where sregsMask says so
  kvm_sregs sregsMask{};        // 0xff bytes where the override applies
  bool hasFpu = false;
  uint16_t fcw = 0;
  uint32_t mxcsr = 0;
};

// Everything the worker needs and everything it made; owned by the task.
struct Setup {
  int kvmFd = -1;  // a dup: the NativeKvm may be closed meanwhile
  std::vector<uint64_t> memory;  // buffer sizes
  uint32_t tssAddr = 0;
  uint64_t identityMapAddr = 0;
  bool irqchip = false;
  bool pit2 = false;
  uint32_t pit2Flags = 0;
  std::vector<SlotSpec> slots;
  std::vector<LoadSpec> loads;
  std::vector<WriteSpec> writes;
  std::vector<VcpuSpec> vcpus;

  // Results.
  int vmFd = -1;
  size_t runSize = 0;
  std::vector<std::shared_ptr<Mapping>> mappings;
  std::vector<std::shared_ptr<VcpuCore>> vcpuCores;
  // The first failure.
  const char* failedOp = nullptr;
  int err = 0;
  std::string detail;

  ~Setup() {
    // Whatever the JavaScript side did not take over.
    for (auto& v : vcpuCores) {
      if (!v) continue;  // adopted by the VM
      if (v->thread.joinable()) {
        CancelVcpuGate(*v);
        v->thread.join();
      }
      if (v->run != nullptr) munmap(v->run, v->runSize);
      if (v->fd >= 0) close(v->fd);
    }
    for (auto& m : mappings) {
      if (m) m->Unmap();
    }
    if (vmFd >= 0) close(vmFd);
    if (kvmFd >= 0) close(kvmFd);
  }

  bool Fail(const char* op, int e, std::string d = "") {
    failedOp = op;
    err = e;
    detail = std::move(d);
    return false;
  }

  bool Ioctl(int fd, unsigned long req, void* arg, const char* op) {
    if (ioctl(fd, req, arg) < 0) return Fail(op, errno);
    return true;
  }

  bool Run();
  bool LoadFiles();
  bool SetUpVcpu(VcpuSpec& spec);
};

bool Setup::Run() {
  const int mmapSize = ioctl(kvmFd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmapSize < 0) return Fail("KVM_GET_VCPU_MMAP_SIZE", errno);
  runSize = static_cast<size_t>(mmapSize);
  // KVM_CREATE_VM can fail with EINTR when a signal arrives while it sets up the MMU.
  do {
    vmFd = ioctl(kvmFd, KVM_CREATE_VM, 0);
  } while (vmFd < 0 && errno == EINTR);
  if (vmFd < 0) return Fail("KVM_CREATE_VM", errno);
  if (ioctl(vmFd, KVM_SET_TSS_ADDR, static_cast<unsigned long>(tssAddr)) < 0) return Fail("KVM_SET_TSS_ADDR", errno);
  if (!Ioctl(vmFd, KVM_SET_IDENTITY_MAP_ADDR, &identityMapAddr, "KVM_SET_IDENTITY_MAP_ADDR")) return false;
  if (irqchip && ioctl(vmFd, KVM_CREATE_IRQCHIP, 0) < 0) return Fail("KVM_CREATE_IRQCHIP", errno);
  if (pit2) {
    kvm_pit_config config;
    std::memset(&config, 0, sizeof config);
    config.flags = pit2Flags;
    if (!Ioctl(vmFd, KVM_CREATE_PIT2, &config, "KVM_CREATE_PIT2")) return false;
  }
  for (const uint64_t size : memory) {
    auto m = std::make_shared<Mapping>();
    const char* op = nullptr;
    if (const int err = m->MapAnonymous(size, &op)) return Fail(op, err, "guest memory");
    mappings.push_back(std::move(m));
  }
  for (const SlotSpec& s : slots) {
    kvm_userspace_memory_region region;
    std::memset(&region, 0, sizeof region);
    region.slot = s.slot;
    region.guest_phys_addr = s.guestAddr;
    region.memory_size = s.size;
    region.userspace_addr = reinterpret_cast<uint64_t>(mappings[s.buffer]->addr + s.offset);
    if (!Ioctl(vmFd, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION")) return false;
  }
  if (!LoadFiles()) return false;
  for (const WriteSpec& w : writes) std::memcpy(mappings[w.buffer]->addr + w.memOffset, w.bytes.data(), w.bytes.size());
  for (VcpuSpec& v : vcpus) {
    if (!SetUpVcpu(v)) return false;
  }
  return true;
}

bool Setup::LoadFiles() {
  // By descriptor only: the caller opened the files (in a jailed child, its parent did), so the
  // addon needs no path to the host's filesystem.
  for (const LoadSpec& l : loads) {
    const int fd = l.fd;
    // Straight into guest memory: no copy through a JavaScript buffer.
    uint8_t* dst = mappings[l.buffer]->addr + l.memOffset;
    uint64_t done = 0;
    while (done < l.length) {
      const ssize_t n = pread(fd, dst + done, l.length - done, static_cast<off_t>(l.fileOffset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Fail("pread", errno, l.name);
      }
      if (n == 0) return Fail("pread", EIO, l.name + " is shorter than its load plan (was it changed?)");
      done += static_cast<uint64_t>(n);
    }
    if (l.zeroFill != 0) std::memset(dst + l.length, 0, l.zeroFill);
  }
  return true;
}

bool Setup::SetUpVcpu(VcpuSpec& spec) {
  const int fd = ioctl(vmFd, KVM_CREATE_VCPU, static_cast<unsigned long>(spec.id));
  if (fd < 0) return Fail("KVM_CREATE_VCPU", errno);
  auto core = std::make_shared<VcpuCore>();
  core->id = spec.id;
  core->fd = fd;
  core->runSize = runSize;
  vcpuCores.push_back(core);  // closed by ~Setup unless adopted
  void* run = mmap(nullptr, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (run == MAP_FAILED) return Fail("mmap", errno, "kvm_run area");
  core->run = static_cast<kvm_run*>(run);
  if (spec.hasCpuid && ioctl(fd, kKvmSetCpuid2, spec.cpuid->data()) < 0) return Fail("KVM_SET_CPUID2", errno);
  if (spec.hasMsrs) {
    const int r = ioctl(fd, kKvmSetMsrs, spec.msrs->data());
    if (r < 0) return Fail("KVM_SET_MSRS", errno);
    // KVM stops at the first MSR it refuses and returns how many it set.
    if (static_cast<size_t>(r) != spec.nmsrs) {
      char hex[16];
      snprintf(hex, sizeof hex, "0x%x", spec.msrs->entries()[r].index);
      return Fail("KVM_SET_MSRS", EINVAL, std::string("MSR ") + hex + " was refused");
    }
  }
  if (!spec.lapic.empty()) {
    kvm_lapic_state lapic;
    std::memset(&lapic, 0, sizeof lapic);
    if (!Ioctl(fd, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC")) return false;
    for (const LapicEdit& e : spec.lapic) {
      uint32_t reg;
      std::memcpy(&reg, lapic.regs + e.offset, 4);
      reg = (reg & ~e.mask) | (e.bits & e.mask);
      std::memcpy(lapic.regs + e.offset, &reg, 4);
    }
    if (!Ioctl(fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC")) return false;
  }
  if (spec.hasRegs && !Ioctl(fd, KVM_SET_REGS, &spec.regs, "KVM_SET_REGS")) return false;
  if (spec.hasSregs) {
    kvm_sregs sregs;
    std::memset(&sregs, 0, sizeof sregs);
    if (!Ioctl(fd, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS")) return false;
    // Byte-wise merge: where the mask is set the override wins (whole fields).
    auto* dst = reinterpret_cast<uint8_t*>(&sregs);
    const auto* src = reinterpret_cast<const uint8_t*>(&spec.sregsTemplate);
    const auto* mask = reinterpret_cast<const uint8_t*>(&spec.sregsMask);
    for (size_t i = 0; i < sizeof sregs; i++) dst[i] = (dst[i] & ~mask[i]) | (src[i] & mask[i]);
    if (!Ioctl(fd, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS")) return false;
  }
  if (spec.hasFpu) {
    kvm_fpu fpu;
    std::memset(&fpu, 0, sizeof fpu);
    if (!Ioctl(fd, KVM_GET_FPU, &fpu, "KVM_GET_FPU")) return false;
    fpu.fcw = spec.fcw;
    fpu.mxcsr = spec.mxcsr;
    if (!Ioctl(fd, KVM_SET_FPU, &fpu, "KVM_SET_FPU")) return false;
  }
  try {
    PrestartVcpuThread(*core);
  } catch (const std::system_error& e) {
    return Fail("pthread_create", e.code().value());
  }
  return true;
}

// ---- conversion from the JavaScript description (JS thread) ----

Napi::Object Obj(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsObject()) ThrowType(env, std::string("createVmAsync: ") + what + " must be an object");
  return v.As<Napi::Object>();
}

Napi::Array Arr(Napi::Env env, Napi::Value v, const char* what, bool optional = false) {
  if (optional && v.IsUndefined()) return Napi::Array::New(env, 0);
  if (!v.IsArray()) ThrowType(env, std::string("createVmAsync: ") + what + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > kMaxSetupEntries) ThrowRange(env, std::string("createVmAsync: too many ") + what);
  return a;
}

uint64_t U64(Napi::Env env, Napi::Object o, const char* key) { return ValueToU64(env, o.Get(key), key); }

uint32_t U32(Napi::Env env, Napi::Object o, const char* key) {
  const uint64_t v = U64(env, o, key);
  if (v > 0xffffffffu) ThrowRange(env, std::string("createVmAsync: ") + key + " must fit in 32 bits");
  return static_cast<uint32_t>(v);
}

void ParseVcpu(Napi::Env env, Napi::Object o, VcpuSpec* spec) {
  spec->id = U32(env, o, "id");
  Napi::Value cpuid = o.Get("cpuid");
  if (cpuid.IsTypedArray() && cpuid.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array) {
    // Packed: function, index, flags, eax, ebx, ecx, edx per entry (object conversion costs
    // about 4 us per entry, a third of a millisecond for a usual table).
    Napi::Uint32Array words = cpuid.As<Napi::Uint32Array>();
    if (words.ElementLength() % kCpuidWords != 0 || words.ElementLength() / kCpuidWords > kMaxSetupEntries) {
      ThrowRange(env, "createVmAsync: a packed cpuid table has 7 words per entry, at most 1024 entries");
    }
    const size_t n = words.ElementLength() / kCpuidWords;
    spec->hasCpuid = true;
    spec->cpuid = std::make_unique<FlexTable<KvmCpuid2Header, kvm_cpuid_entry2>>(n);
    spec->cpuid->header()->nent = static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; i++) {
      const uint32_t* w = words.Data() + i * kCpuidWords;
      kvm_cpuid_entry2& e = spec->cpuid->entries()[i];
      e.function = w[0];
      e.index = w[1];
      e.flags = w[2];
      e.eax = w[3];
      e.ebx = w[4];
      e.ecx = w[5];
      e.edx = w[6];
    }
  } else if (!cpuid.IsUndefined()) {
    Napi::Array list = Arr(env, cpuid, "cpuid");
    spec->hasCpuid = true;
    spec->cpuid = std::make_unique<FlexTable<KvmCpuid2Header, kvm_cpuid_entry2>>(list.Length());
    spec->cpuid->header()->nent = list.Length();
    for (uint32_t i = 0; i < list.Length(); i++) CpuidEntryFromJs(env, list.Get(i), &spec->cpuid->entries()[i]);
  }
  if (!o.Get("msrs").IsUndefined()) {
    Napi::Array list = Arr(env, o.Get("msrs"), "msrs");
    spec->hasMsrs = true;
    spec->nmsrs = list.Length();
    spec->msrs = std::make_unique<FlexTable<KvmMsrsHeader, kvm_msr_entry>>(list.Length());
    spec->msrs->header()->nmsrs = list.Length();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Object e = Obj(env, list.Get(i), "an MSR entry");
      spec->msrs->entries()[i].index = U32(env, e, "index");
      spec->msrs->entries()[i].data = U64(env, e, "data");
    }
  }
  Napi::Array edits = Arr(env, o.Get("lapic"), "lapic edits", true);
  for (uint32_t i = 0; i < edits.Length(); i++) {
    Napi::Object e = Obj(env, edits.Get(i), "a LAPIC edit");
    LapicEdit edit{U32(env, e, "offset"), U32(env, e, "mask"), U32(env, e, "bits")};
    if (edit.offset % 4 != 0 || edit.offset + 4 > sizeof(kvm_lapic_state::regs)) {
      ThrowRange(env, "createVmAsync: a LAPIC edit's offset must be 4-byte aligned inside the 1024-byte register page");
    }
    spec->lapic.push_back(edit);
  }
  if (!o.Get("regs").IsUndefined()) {
    spec->hasRegs = true;
    RegsFromJs(env, o.Get("regs"), &spec->regs);
  }
  if (!o.Get("sregs").IsUndefined()) {
    spec->hasSregs = true;
    SregsOverridesFromJs(env, o.Get("sregs"), &spec->sregsTemplate, &spec->sregsMask);
  }
  if (!o.Get("fpu").IsUndefined()) {
    Napi::Object f = Obj(env, o.Get("fpu"), "fpu");
    const uint64_t fcw = U64(env, f, "fcw");
    const uint64_t mxcsr = U64(env, f, "mxcsr");
    if (fcw > 0xffff || mxcsr > 0xffffffffu) ThrowRange(env, "createVmAsync: fcw is 16 bits, mxcsr 32 bits");
    spec->hasFpu = true;
    spec->fcw = static_cast<uint16_t>(fcw);
    spec->mxcsr = static_cast<uint32_t>(mxcsr);
  }
}

// Where `span` bytes at `guestAddr` lie in guest memory (buffer, offset), if inside one slot.
bool MemOffset(const std::vector<SlotSpec>& slots, uint64_t guestAddr, uint64_t span, uint32_t* buffer, uint64_t* offset) {
  for (const SlotSpec& slot : slots) {
    if (guestAddr >= slot.guestAddr && guestAddr - slot.guestAddr <= slot.size && span <= slot.size - (guestAddr - slot.guestAddr)) {
      *buffer = slot.buffer;
      *offset = slot.offset + (guestAddr - slot.guestAddr);
      return true;
    }
  }
  return false;
}

void Parse(Napi::Env env, Napi::Value value, Setup* s) {
  Napi::Object o = Obj(env, value, "the set-up");
  Napi::Array memory = Arr(env, o.Get("memory"), "memory buffers");
  for (uint32_t i = 0; i < memory.Length(); i++) {
    const uint64_t size = ValueToU64(env, memory.Get(i), "memory");
    if (size == 0 || size > kMaxMemoryBuffer || size % 4096 != 0) {
      ThrowRange(env, "createVmAsync: a memory buffer's size must be a multiple of 4096 in (0, 4 GiB]");
    }
    s->memory.push_back(size);
  }
  s->tssAddr = U32(env, o, "tssAddr");
  s->identityMapAddr = U64(env, o, "identityMapAddr");
  s->irqchip = o.Get("irqchip").ToBoolean().Value();
  if (!o.Get("pit2Flags").IsUndefined()) {
    s->pit2 = true;
    s->pit2Flags = U32(env, o, "pit2Flags");
  }
  Napi::Array slots = Arr(env, o.Get("slots"), "slots", true);
  for (uint32_t i = 0; i < slots.Length(); i++) {
    Napi::Object e = Obj(env, slots.Get(i), "a slot");
    SlotSpec slot{U32(env, e, "slot"), U64(env, e, "guestAddr"), U32(env, e, "buffer"), U64(env, e, "offset"), U64(env, e, "size")};
    if (slot.buffer >= s->memory.size() || slot.size == 0 || slot.offset > s->memory[slot.buffer] ||
        slot.size > s->memory[slot.buffer] - slot.offset) {
      ThrowRange(env, "createVmAsync: a slot lies outside its memory buffer");
    }
    s->slots.push_back(slot);
  }
  Napi::Array loads = Arr(env, o.Get("loads"), "loads", true);
  for (uint32_t i = 0; i < loads.Length(); i++) {
    Napi::Object e = Obj(env, loads.Get(i), "a load");
    Napi::Value fd = e.Get("fd");
    Napi::Value name = e.Get("name");
    if (!fd.IsNumber() || !name.IsString()) ThrowType(env, "createVmAsync: a load needs a descriptor (fd) and a name");
    LoadSpec l;
    const double fdValue = fd.As<Napi::Number>().DoubleValue();
    if (!(fdValue >= 0 && fdValue <= 0x7fffffff) || fdValue != static_cast<int>(fdValue)) ThrowRange(env, "createVmAsync: a load's fd is not a descriptor");
    l.fd = static_cast<int>(fdValue);
    l.name = name.As<Napi::String>().Utf8Value();
    l.fileOffset = U64(env, e, "fileOffset");
    l.length = U64(env, e, "length");
    l.zeroFill = e.Get("zeroFill").IsUndefined() ? 0 : U64(env, e, "zeroFill");
    const uint64_t guestAddr = U64(env, e, "guestAddr");
    if (l.length > (uint64_t(1) << 46) || l.zeroFill > (uint64_t(1) << 46) || !MemOffset(s->slots, guestAddr, l.length + l.zeroFill, &l.buffer, &l.memOffset)) {
      ThrowRange(env, "createVmAsync: a load does not lie inside one memory slot");
    }
    s->loads.push_back(std::move(l));
  }
  Napi::Array writes = Arr(env, o.Get("writes"), "writes", true);
  for (uint32_t i = 0; i < writes.Length(); i++) {
    Napi::Object e = Obj(env, writes.Get(i), "a write");
    Napi::Value bytes = e.Get("bytes");
    if (!bytes.IsTypedArray() || bytes.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(env, "createVmAsync: a write's bytes must be a Uint8Array");
    }
    Napi::Uint8Array arr = bytes.As<Napi::Uint8Array>();
    WriteSpec w;
    if (!MemOffset(s->slots, U64(env, e, "guestAddr"), arr.ByteLength(), &w.buffer, &w.memOffset)) {
      ThrowRange(env, "createVmAsync: a write does not lie inside one memory slot");
    }
    w.bytes.assign(arr.Data(), arr.Data() + arr.ByteLength());
    s->writes.push_back(std::move(w));
  }
  Napi::Array vcpus = Arr(env, o.Get("vcpus"), "vcpus");
  if (vcpus.Length() > kMaxSetupVcpus) ThrowRange(env, "createVmAsync: too many vCPUs");
  s->vcpus.resize(vcpus.Length());
  for (uint32_t i = 0; i < vcpus.Length(); i++) ParseVcpu(env, Obj(env, vcpus.Get(i), "a vCPU"), &s->vcpus[i]);
}

}  // namespace

Napi::Value CreateVmAsync(Napi::Env env, int kvmFd, Napi::Value description) {
  auto setup = std::make_shared<Setup>();
  Parse(env, description, setup.get());
  setup->kvmFd = fcntl(kvmFd, F_DUPFD_CLOEXEC, 0);
  if (setup->kvmFd < 0) ThrowErrno(env, "fcntl", errno, "F_DUPFD_CLOEXEC on the KVM fd");
  auto ok = std::make_shared<bool>(false);
  return AsyncTask::Start(
      env, "kindling:createVm", [setup, ok] { *ok = setup->Run(); },
      [setup, ok](Napi::Env e, Napi::Promise::Deferred& d) {
        if (!*ok) {
          d.Reject(MakeErrnoError(e, setup->failedOp, setup->err, setup->detail));
          return;  // ~Setup releases what was made
        }
        // From here each object owns its part: the VM object the VM fd (even if this throws),
        // the VM's core the vCPUs it adopts, the buffers' finalizers and the VM the mappings.
        const int vmFd = setup->vmFd;
        setup->vmFd = -1;
        Napi::Object vmObj = Vm::NewInstance(e, vmFd, setup->runSize);
        Vm* vm = Vm::Unwrap(vmObj);
        Napi::Array memory = Napi::Array::New(e, setup->mappings.size());
        std::vector<std::shared_ptr<Mapping>> mappings = std::move(setup->mappings);
        setup->mappings.clear();
        for (uint32_t i = 0; i < mappings.size(); i++) memory.Set(i, vm->AdoptMapping(e, mappings[i]));
        for (const SlotSpec& slot : setup->slots) {
          vm->AdoptSlot(slot.slot, SlotInfo{mappings[slot.buffer], slot.offset, slot.guestAddr, slot.size, 0});
        }
        Napi::Array vcpus = Napi::Array::New(e, setup->vcpuCores.size());
        for (uint32_t i = 0; i < setup->vcpuCores.size(); i++) {
          std::shared_ptr<VcpuCore> core = std::move(setup->vcpuCores[i]);
          vcpus.Set(i, vm->AdoptVcpu(e, vmObj, std::move(core)));
        }
        setup->vcpuCores.clear();
        Napi::Object result = Napi::Object::New(e);
        result.Set("vm", vmObj);
        result.Set("memory", memory);
        result.Set("vcpus", vcpus);
        d.Resolve(result);
      },
      [] {});
}

}  // namespace kindling
