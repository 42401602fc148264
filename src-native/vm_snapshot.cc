// NativeVm's snapshot support: in-kernel device state (PIC, IOAPIC, PIT, kvmclock), dirty-page
// logging, guest memory mapped from a memory file, and memory files written and read on the
// thread pool (memory_file.cc).
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "errors.h"
#include "memory_file.h"
#include "vm.h"

namespace kindling {

namespace {

static_assert(sizeof(kvm_irqchip) == 520, "kvm_irqchip layout");
static_assert(sizeof(kvm_pit_state2) == 112, "kvm_pit_state2 layout");
static_assert(sizeof(kvm_clock_data) == 48, "kvm_clock_data layout");

constexpr uint64_t kPage = kMemoryFilePage;

std::string PathArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) ThrowType(info.Env(), "path must be a string");
  std::string path = info[i].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos) ThrowType(info.Env(), "path must be a non-empty string");
  return path;
}

/**
 * A memory file named by path, or by an open descriptor (a number: what a jailed child has).
 * `fd` is a duplicate the caller owns (so both forms are closed alike), -1 for a path.
 */
struct FileRef {
  std::string name;
  int fd = -1;
};

FileRef FileArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && info[i].IsNumber()) {
    const int fd = ArgFd(info, i);
    const int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) ThrowErrno(info.Env(), "fcntl(F_DUPFD_CLOEXEC)", errno, "descriptor " + std::to_string(fd));
    return {"descriptor " + std::to_string(fd), dup};
  }
  return {PathArg(info, i), -1};
}

// Runs a memory-file transfer on the thread pool with the mapping pinned; settles a promise.
class MemoryFileWorker : public Napi::AsyncWorker {
 public:
  enum class Kind { kWrite, kRead };

  MemoryFileWorker(Napi::Env env, Kind kind, std::shared_ptr<Mapping> mapping, std::string path,
                   std::vector<uint8_t> pages, bool sync, int fd = -1)
      : Napi::AsyncWorker(env, "kindling:memory-file"),
        deferred_(Napi::Promise::Deferred::New(env)),
        kind_(kind),
        mapping_(std::move(mapping)),
        path_(std::move(path)),
        pages_(std::move(pages)),
        sync_(sync),
        fd_(fd) {}

  ~MemoryFileWorker() override {
    mapping_->Unpin();
    if (fd_ >= 0) close(fd_);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (kind_ == Kind::kWrite) {
      result_ = WriteMemoryFile(mapping_->addr, mapping_->size, path_, !mapping_->fileBacked, pages_, sync_);
    } else {
      result_ = fd_ >= 0 ? ReadMemoryFileFd(mapping_->addr, mapping_->size, fd_, path_)
                         : ReadMemoryFile(mapping_->addr, mapping_->size, path_);
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (result_.err != 0) {
      deferred_.Reject(MakeErrnoError(env, result_.op.c_str(), result_.err, result_.detail));
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    if (kind_ == Kind::kWrite) {
      o.Set("pagesWritten", Napi::Number::New(env, static_cast<double>(result_.pagesWritten)));
      o.Set("pagesZero", Napi::Number::New(env, static_cast<double>(result_.pagesZero)));
      o.Set("pagesAbsent", Napi::Number::New(env, static_cast<double>(result_.pagesAbsent)));
    }
    deferred_.Resolve(o);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Kind kind_;
  std::shared_ptr<Mapping> mapping_;
  std::string path_;
  std::vector<uint8_t> pages_;
  bool sync_;
  int fd_;
  MemoryFileResult result_;
};

}  // namespace

Napi::Value Vm::SaveState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_GET_IRQCHIP");
  // The in-kernel devices change as vCPUs run; a state taken while one runs mixes two moments.
  for (auto& v : core_->vcpus) {
    const VcpuState st = core_->StateOf(*v);
    if (st == VcpuState::kRunning || st == VcpuState::kWaitingJs) {
      ThrowErrno(env, "KVM_GET_IRQCHIP", EBUSY, "vCPU " + std::to_string(v->id) + " is not paused");
    }
  }
  Napi::Object out = Napi::Object::New(env);
  const struct {
    const char* key;
    uint32_t chip;
  } chips[] = {{"picMaster", KVM_IRQCHIP_PIC_MASTER}, {"picSlave", KVM_IRQCHIP_PIC_SLAVE}, {"ioapic", KVM_IRQCHIP_IOAPIC}};
  for (const auto& c : chips) {
    kvm_irqchip chip;
    std::memset(&chip, 0, sizeof chip);
    chip.chip_id = c.chip;
    if (ioctl(fd, KVM_GET_IRQCHIP, &chip) < 0) {
      if (errno != ENXIO) ThrowErrno(env, "KVM_GET_IRQCHIP", errno, c.key);
      out.Set(c.key, env.Null());  // no in-kernel irqchip
    } else {
      out.Set(c.key, CopyToBuffer(env, &chip, sizeof chip));
    }
  }
  kvm_pit_state2 pit;
  std::memset(&pit, 0, sizeof pit);
  if (ioctl(fd, KVM_GET_PIT2, &pit) < 0) {
    if (errno != ENXIO) ThrowErrno(env, "KVM_GET_PIT2", errno);
    out.Set("pit2", env.Null());  // no in-kernel PIT
  } else {
    out.Set("pit2", CopyToBuffer(env, &pit, sizeof pit));
  }
  kvm_clock_data clock;
  std::memset(&clock, 0, sizeof clock);
  if (ioctl(fd, KVM_GET_CLOCK, &clock) < 0) ThrowErrno(env, "KVM_GET_CLOCK", errno);
  out.Set("clock", CopyToBuffer(env, &clock, sizeof clock));
  return out;
}

Napi::Value Vm::RestoreState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_PIT2");
  if (info.Length() < 1 || !info[0].IsObject()) ThrowType(env, "restoreState: expected a NativeVmState object");
  Napi::Object s = info[0].As<Napi::Object>();
  auto field = [&](const char* key, size_t size) -> ByteView {
    Napi::Value v = s.Get(key);
    if (v.IsNull() || v.IsUndefined()) return ByteView{};
    ByteView b = BytesOf(env, v, key);
    if (b.size != size) ThrowRange(env, std::string("restoreState: ") + key + " must be " + std::to_string(size) + " bytes");
    return b;
  };
  const ByteView pit = field("pit2", sizeof(kvm_pit_state2));
  const ByteView clock = field("clock", sizeof(kvm_clock_data));
  const ByteView chips[3] = {field("picMaster", sizeof(kvm_irqchip)), field("picSlave", sizeof(kvm_irqchip)),
                             field("ioapic", sizeof(kvm_irqchip))};
  const uint32_t ids[3] = {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC};
  for (int i = 0; i < 3; i++) {
    if (chips[i].data == nullptr) continue;
    uint32_t id;
    std::memcpy(&id, chips[i].data, sizeof id);
    if (id != ids[i]) ThrowRange(env, "restoreState: an irqchip state has the wrong chip_id");
  }

  if (pit.data != nullptr) {
    kvm_pit_state2 p;
    std::memcpy(&p, pit.data, sizeof p);
    if (ioctl(fd, KVM_SET_PIT2, &p) < 0) ThrowErrno(env, "KVM_SET_PIT2", errno);
  }
  if (clock.data != nullptr) {
    // As given: the caller chooses the flags (0 continues the guest's clock where it stopped).
    kvm_clock_data c;
    std::memcpy(&c, clock.data, sizeof c);
    if (ioctl(fd, KVM_SET_CLOCK, &c) < 0) ThrowErrno(env, "KVM_SET_CLOCK", errno);
  }
  for (int i = 0; i < 3; i++) {
    if (chips[i].data == nullptr) continue;
    kvm_irqchip chip;
    std::memcpy(&chip, chips[i].data, sizeof chip);
    if (ioctl(fd, KVM_SET_IRQCHIP, &chip) < 0) ThrowErrno(env, "KVM_SET_IRQCHIP", errno);
  }
  return env.Undefined();
}

Napi::Value Vm::SetDirtyLogging(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_SET_USER_MEMORY_REGION");
  const uint32_t slot = ArgU32(info, 0, "slot");
  const bool enabled = info.Length() > 1 && info[1].ToBoolean().Value();
  auto it = slots_.find(slot);
  if (it == slots_.end()) ThrowRange(env, "setDirtyLogging: slot " + std::to_string(slot) + " was not set up");
  SlotInfo& s = it->second;
  if (s.mapping->addr == nullptr) ThrowErrno(env, "KVM_SET_USER_MEMORY_REGION", EBADF, "the slot's memory is unmapped");
  kvm_userspace_memory_region region;
  std::memset(&region, 0, sizeof region);
  region.slot = slot;
  region.flags = enabled ? (s.flags | KVM_MEM_LOG_DIRTY_PAGES) : (s.flags & ~uint32_t(KVM_MEM_LOG_DIRTY_PAGES));
  region.guest_phys_addr = s.guestPhysAddr;
  region.memory_size = s.size;
  region.userspace_addr = reinterpret_cast<uint64_t>(s.mapping->addr + s.offset);
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) ThrowErrno(env, "KVM_SET_USER_MEMORY_REGION", errno);
  s.flags = region.flags;
  return env.Undefined();
}

Napi::Value Vm::GetDirtyLog(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = Fd(env, "KVM_GET_DIRTY_LOG");
  const uint32_t slot = ArgU32(info, 0, "slot");
  auto it = slots_.find(slot);
  if (it == slots_.end()) ThrowRange(env, "getDirtyLog: slot " + std::to_string(slot) + " was not set up");
  if ((it->second.flags & KVM_MEM_LOG_DIRTY_PAGES) == 0) {
    ThrowErrno(env, "KVM_GET_DIRTY_LOG", ENOENT, "dirty logging is off for slot " + std::to_string(slot));
  }
  const uint64_t pages = (it->second.size + kPage - 1) / kPage;
  // KVM writes whole longs (api.rst, KVM_GET_DIRTY_LOG).
  std::vector<uint64_t> bitmap((pages + 63) / 64, 0);
  kvm_dirty_log log;
  std::memset(&log, 0, sizeof log);
  log.slot = slot;
  log.dirty_bitmap = bitmap.data();
  if (ioctl(fd, KVM_GET_DIRTY_LOG, &log) < 0) ThrowErrno(env, "KVM_GET_DIRTY_LOG", errno);
  return CopyToBuffer(env, bitmap.data(), static_cast<size_t>((pages + 7) / 8));
}

Napi::Value Vm::MapMemoryFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (Closed()) ThrowErrno(env, "mmap", EBADF, "the VM is closed");
  const uint64_t size = ArgSafeU64(info, 1, "size");
  if (size == 0 || size % kPage != 0 || size > (uint64_t(1) << 46)) {
    ThrowRange(env, "mapMemoryFile: size must be a multiple of 4096 in (0, 2^46]");
  }
  const FileRef file = FileArg(info, 0);
  const std::string& path = file.name;
  const int fd = file.fd >= 0 ? file.fd : open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open", errno, path);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    const int err = errno;
    close(fd);
    ThrowErrno(env, "fstat", err, path);
  }
  // A private mapping past the end of its file raises SIGBUS on access: never map one.
  if (static_cast<uint64_t>(st.st_size) < size) {
    close(fd);
    ThrowErrno(env, "mmap", EINVAL,
               path + " holds " + std::to_string(st.st_size) + " bytes, less than the " + std::to_string(size) + " mapped");
  }
  // MAP_PRIVATE: the guest's writes go to its own copies of the pages; everything it only reads
  // stays in the page cache, shared by every VM restored from the same file.
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  const int err = errno;
  close(fd);
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap", err, path);
  auto mapping = std::make_shared<Mapping>();
  mapping->addr = static_cast<uint8_t*>(addr);
  mapping->size = size;
  mapping->fileBacked = true;
  return AdoptMapping(env, mapping);
}

Napi::Value Vm::WriteMemoryFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Mapping> mapping = info.Length() > 0 ? FindMapping(info[0]) : nullptr;
  if (mapping == nullptr) ThrowRange(env, "writeMemoryFile: memory is not a live buffer of this VM");
  const std::string path = PathArg(info, 1);
  std::vector<uint8_t> pages;
  bool sync = false;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    Napi::Value p = o.Get("pages");
    if (!p.IsUndefined() && !p.IsNull()) {
      ByteView b = BytesOf(env, p, "pages");
      const uint64_t need = (mapping->size / kPage + 7) / 8;
      if (b.size != need) {
        ThrowRange(env, "writeMemoryFile: pages must be a bitmap of " + std::to_string(need) + " bytes (one bit per page)");
      }
      pages.assign(b.data, b.data + b.size);
    }
    sync = o.Get("sync").ToBoolean().Value();
  }
  if (!mapping->Pin()) ThrowErrno(env, "writeMemoryFile", EBADF, "the memory is unmapped");
  auto* worker = new MemoryFileWorker(env, MemoryFileWorker::Kind::kWrite, mapping, path, std::move(pages), sync);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Vm::ReadMemoryFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Mapping> mapping = info.Length() > 0 ? FindMapping(info[0]) : nullptr;
  if (mapping == nullptr) ThrowRange(env, "readMemoryFile: memory is not a live buffer of this VM");
  const FileRef file = FileArg(info, 1);
  if (!mapping->Pin()) {
    if (file.fd >= 0) close(file.fd);
    ThrowErrno(env, "readMemoryFile", EBADF, "the memory is unmapped");
  }
  auto* worker = new MemoryFileWorker(env, MemoryFileWorker::Kind::kRead, mapping, file.name, {}, false, file.fd);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace kindling
