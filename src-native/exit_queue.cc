// The VM-wide exit queue and the handshakes between vCPU threads and the JavaScript thread.
//
// Ordering: every I/O record gets the next `seq` under `mu_`, so posted writes and reads of all
// vCPUs reach JavaScript in one total order. A vCPU that needs an answer (a read, or the verdict
// on an event) records `pendingRequest` and sleeps on its own condition variable; the JS thread
// answers through Answer(), or StopAll() cancels the wait.
#include <signal.h>
#include <algorithm>
#include <system_error>
#include <sys/mman.h>
#include <unistd.h>

#include "vm_core.h"

namespace kindling {

namespace {

uint32_t SizeMask(uint32_t size) { return size >= 4 ? 0xffffffffu : ((1u << (size * 8)) - 1); }

}  // namespace

VmCore::~VmCore() {
  // The JS side joins the threads before it lets go of the core; this is the last line of defence
  // (a joinable std::thread would call std::terminate on destruction).
  StopAll();
  CloseFds();
  ReleaseTsfn();
}

void VmCore::PushLocked(ExitRecord&& r) {
  if (r.type == RecordType::kIo) r.seq = nextSeq_++;
  queue_.push_back(std::move(r));
  // Signal only when no drain is pending (see FinishDrain).
  if (!signalPending_ && tsfn != nullptr) {
    signalPending_ = true;
    napi_call_threadsafe_function(tsfn, nullptr, napi_tsfn_nonblocking);
  }
}

bool VmCore::InPioSink(uint64_t port) const {
  for (const auto& s : pioSinks_) {
    if (port >= s.first && port < uint64_t(s.first) + s.second) return true;
  }
  return false;
}

void VmCore::DefinePioSink(uint32_t base, uint32_t len) {
  std::lock_guard<std::mutex> lk(mu_);
  pioSinks_.emplace_back(base, len);
}

void VmCore::PostWrite(VcpuCore& v, uint8_t kind, uint64_t addr, uint32_t size, uint32_t value) {
  std::unique_lock<std::mutex> lk(mu_);
  // A write nothing decodes (the POST/delay port 0x80 that Linux's outb_p and polling loops hit
  // constantly) is dropped here: it must not cost the JavaScript thread a record each.
  if (kind == kPioWrite && InPioSink(addr)) return;
  if (queue_.size() >= kMaxQueuedRecords && !stopping.load()) {
    // Backpressure. While it waits the thread is outside KVM_RUN and only JavaScript (draining)
    // or a stop lets it go on, so it counts as quiescent for pauseVcpus.
    v.state = VcpuState::kWaitingJs;
    quiesceCv_.notify_all();
    spaceCv_.wait(lk, [&] { return queue_.size() < kMaxQueuedRecords || stopping.load(); });
    v.state = VcpuState::kRunning;
  }
  // A stopping VM still takes the write: JavaScript handles what was queued before the stop.
  ExitRecord r;
  r.type = RecordType::kIo;
  r.kind = kind;
  r.vcpu = &v;
  r.addr = addr;
  r.size = size;
  r.value = value & SizeMask(size);
  PushLocked(std::move(r));
  if (kind != kPioWrite || pioGroups_.empty()) return;
  const uint64_t seq = queue_.back().seq;
  for (PioCacheGroup& g : pioGroups_) {
    for (uint32_t b = 0; b < size; b++) {
      const uint64_t port = addr + b;
      if (port < g.base || port >= uint64_t(g.base) + g.len) continue;
      const uint32_t offset = static_cast<uint32_t>(port - g.base);
      if ((g.transparentWriteMask >> offset) & 1u) continue;
      g.lastInvalidateSeq = seq;
      std::fill(g.values.begin(), g.values.end(), -1);
      break;
    }
  }
}

bool VmCore::WaitLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v, ExitRecord&& r, uint64_t* answer) {
  if (stopping.load()) return false;
  r.request = ++v.lastRequest;
  v.pendingRequest = r.request;
  v.answered = false;
  v.state = VcpuState::kWaitingJs;
  PushLocked(std::move(r));
  quiesceCv_.notify_all();
  v.answerCv.wait(lk, [&] { return v.answered || stopping.load(); });
  v.pendingRequest = 0;
  if (!v.answered) {
    v.state = VcpuState::kRunning;
    return false;
  }
  v.answered = false;
  *answer = v.answer;
  return true;
}

bool VmCore::Read(VcpuCore& v, uint8_t kind, uint64_t addr, uint32_t size, uint32_t* value) {
  const uint32_t mask = SizeMask(size);
  std::unique_lock<std::mutex> lk(mu_);
  if (kind == kPioRead && InPioSink(addr)) {
    *value = mask;  // an undriven ISA bus reads all ones
    return true;
  }
  if (kind == kPioRead) {
    for (const PioCacheGroup& g : pioGroups_) {
      if (addr < g.base || addr >= uint64_t(g.base) + g.len) continue;
      const int64_t cached = g.values[addr - g.base];
      if (cached >= 0) {
        *value = static_cast<uint32_t>(cached) & mask;
        return true;
      }
      break;
    }
  }
  ExitRecord r;
  r.type = RecordType::kIo;
  r.kind = kind;
  r.vcpu = &v;
  r.addr = addr;
  r.size = size;
  uint64_t answer = 0;
  if (!WaitLocked(lk, v, std::move(r), &answer)) {
    *value = mask;
    return false;
  }
  *value = static_cast<uint32_t>(answer) & mask;
  return true;
}

Verdict VmCore::SubmitEvent(VcpuCore& v, std::unique_ptr<EventInfo> info) {
  std::unique_lock<std::mutex> lk(mu_);
  ExitRecord r;
  r.type = RecordType::kEvent;
  r.vcpu = &v;
  r.event = std::move(info);
  uint64_t answer = kStop;
  if (!WaitLocked(lk, v, std::move(r), &answer)) return kStop;
  return answer == kStop ? kStop : kResume;
}

void VmCore::Park(VcpuCore& v) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!pausing.load() || stopping.load()) return;
  // Wait for *a* resume, not for `pausing` to be false: a pause that follows a resume before
  // this thread woke up sets `pausing` again, and the thread must still come out, see it, and
  // park anew (otherwise that pause waits forever for a thread ResumeAll marked running).
  const uint64_t epoch = resumeEpoch_;
  v.state = VcpuState::kParked;
  quiesceCv_.notify_all();
  parkCv_.wait(lk, [&] { return resumeEpoch_ != epoch || stopping.load(); });
  v.state = VcpuState::kRunning;
}

void VmCore::ThreadEnded(VcpuCore& v) {
  std::lock_guard<std::mutex> lk(mu_);
  v.state = VcpuState::kExited;
  ExitRecord r;
  r.type = RecordType::kStopped;
  r.vcpu = &v;
  PushLocked(std::move(r));
  quiesceCv_.notify_all();
}

bool VmCore::Pop(ExitRecord* out) {
  std::lock_guard<std::mutex> lk(mu_);
  if (queue_.empty()) return false;
  *out = std::move(queue_.front());
  queue_.pop_front();
  if (queue_.size() == kMaxQueuedRecords - 1) spaceCv_.notify_all();
  return true;
}

size_t VmCore::Queued() {
  std::lock_guard<std::mutex> lk(mu_);
  return queue_.size();
}

bool VmCore::StillWaiting(const ExitRecord& r) {
  std::lock_guard<std::mutex> lk(mu_);
  return !stopping.load() && r.request != 0 && r.vcpu->pendingRequest == r.request && !r.vcpu->answered;
}

void VmCore::Answer(const ExitRecord& r, uint64_t value) {
  std::lock_guard<std::mutex> lk(mu_);
  VcpuCore& v = *r.vcpu;
  if (r.request == 0 || v.pendingRequest != r.request || v.answered) return;
  v.answer = value;
  v.answered = true;
  // Set here, not by the woken thread: from now on the thread may re-enter KVM_RUN, and register
  // ioctls from JavaScript must be refused at once.
  v.state = VcpuState::kRunning;
  v.answerCv.notify_one();
}

bool VmCore::FinishDrain() {
  std::lock_guard<std::mutex> lk(mu_);
  if (queue_.empty()) {
    signalPending_ = false;
    return false;
  }
  signalPending_ = true;
  return true;
}

void VmCore::StartThread(VcpuCore& v, std::function<void()> body) {
  if (!v.seccomp.empty()) {
    const int err = InstallSigsysReporter();
    if (err != 0) throw ThreadStartFailure{"sigaction(SIGSYS)", err};
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kRunning;
  }
  auto start = std::make_shared<ThreadStart>();
  try {
    v.thread = std::thread(ThreadMain, &v, std::move(body), start);
  } catch (const std::system_error& e) {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kIdle;
    throw ThreadStartFailure{"pthread_create", e.code().value()};
  }
  ThreadStartFailure failure{nullptr, 0};
  {
    std::unique_lock<std::mutex> lk(start->mu);
    start->cv.wait(lk, [&] { return start->done; });
    failure = start->failure;
  }
  if (failure.op != nullptr) {
    v.thread.join();
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kIdle;
    throw failure;
  }
  v.started = true;
}

void VmCore::KickAll() {
  for (auto& v : vcpus) {
    if (!v->started || !v->thread.joinable()) continue;
    // immediate_exit covers the window between the thread's flag check and KVM_RUN; the signal
    // covers a thread already inside KVM_RUN (api.rst, "immediate_exit").
    if (v->run != nullptr) __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_kill(v->thread.native_handle(), KickSignal());
  }
}

void VmCore::StopAll() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping.store(true);
    pausing.store(false);
    for (auto& v : vcpus) v->answerCv.notify_all();
    parkCv_.notify_all();
    quiesceCv_.notify_all();
    spaceCv_.notify_all();
  }
  KickAll();
  for (auto& v : vcpus) {
    if (v->thread.joinable()) v->thread.join();
  }
}

void VmCore::PauseAll() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping.load()) return;
    pausing.store(true);
  }
  KickAll();
  std::unique_lock<std::mutex> lk(mu_);
  quiesceCv_.wait(lk, [&] {
    if (stopping.load() || !pausing.load()) return true;
    for (auto& v : vcpus) {
      if (v->started && !v->Quiescent()) return false;
    }
    return true;
  });
}

void VmCore::ResumeAll() {
  std::lock_guard<std::mutex> lk(mu_);
  pausing.store(false);
  resumeEpoch_++;
  for (auto& v : vcpus) {
    if (v->state == VcpuState::kParked) v->state = VcpuState::kRunning;
  }
  parkCv_.notify_all();
}

bool VmCore::IsQuiescent(VcpuCore& v) {
  std::lock_guard<std::mutex> lk(mu_);
  return v.Quiescent();
}

VcpuState VmCore::StateOf(VcpuCore& v) {
  std::lock_guard<std::mutex> lk(mu_);
  return v.state;
}

bool VmCore::PioGroupOverlaps(uint32_t base, uint32_t len) {
  std::lock_guard<std::mutex> lk(mu_);
  for (const PioCacheGroup& g : pioGroups_) {
    if (base < g.base + g.len && g.base < base + len) return true;
  }
  return false;
}

void VmCore::DefinePioGroup(uint32_t base, uint32_t len, uint32_t mask) {
  std::lock_guard<std::mutex> lk(mu_);
  PioCacheGroup g;
  g.base = base;
  g.len = len;
  g.transparentWriteMask = mask;
  g.values.assign(len, -1);
  pioGroups_.push_back(std::move(g));
}

bool VmCore::SetPioCache(uint32_t port, int64_t value, uint64_t seq) {
  std::lock_guard<std::mutex> lk(mu_);
  for (PioCacheGroup& g : pioGroups_) {
    if (port < g.base || port >= g.base + g.len) continue;
    if (value < 0) {
      g.values[port - g.base] = -1;  // clearing is always safe
      return true;
    }
    if (g.lastInvalidateSeq > seq) return false;
    g.values[port - g.base] = value & 0xffffffff;
    return true;
  }
  return false;
}

void VmCore::ReleaseTsfn() {
  napi_threadsafe_function t;
  {
    std::lock_guard<std::mutex> lk(mu_);
    t = tsfn;
    tsfn = nullptr;
  }
  if (t != nullptr) napi_release_threadsafe_function(t, napi_tsfn_release);
}

void VmCore::CloseFds() {
  for (auto& v : vcpus) {
    if (v->thread.joinable()) continue;  // never pull the run area from under a live thread
    if (v->run != nullptr) {
      munmap(v->run, v->runSize);
      v->run = nullptr;
    }
    if (v->fd >= 0) {
      close(v->fd);
      v->fd = -1;
    }
  }
  if (fd >= 0) {
    close(fd);
    fd = -1;
  }
}

}  // namespace kindling
