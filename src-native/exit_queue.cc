// The VM-wide exit queue and the handshakes between vCPU threads and the JavaScript thread.
//
// Ordering: every I/O record gets the next `seq` under `mu_`, so posted writes and reads of all
// vCPUs reach JavaScript in one total order. A vCPU that needs an answer (a read, or the verdict
// on an event) records `pendingRequest` and sleeps on its own condition variable; the JS thread
// answers through Answer(), or StopAll() cancels the wait.
#include <pthread.h>
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

napi_threadsafe_function VmCore::PushLocked(ExitRecord&& r, void** data) {
  if (r.type == RecordType::kIo) r.seq = nextSeq_++;
  queue_.push_back(std::move(r));
  records_++;
  *data = nullptr;
  // Signal only when no drain is pending (see FinishDrain); a deferred wake becomes immediate.
  if (wake_ == WakeState::kSignalled || tsfn == nullptr) return nullptr;
  wake_ = WakeState::kSignalled;
  signals_++;
  return tsfn;
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

napi_threadsafe_function VmCore::AppendTxLocked(VcpuCore& v, uint8_t byte, void** data) {
  *data = nullptr;
  const uint64_t seq = nextSeq_++;
  if (queue_.empty() || queue_.back().type != RecordType::kTxBatch || queue_.back().vcpu != &v ||
      queue_.back().bytes.size() >= txCapacity_) {
    ExitRecord r;
    r.type = RecordType::kTxBatch;
    r.kind = kPioWrite;
    r.vcpu = &v;
    r.addr = txPort_;
    r.size = 1;
    r.seq = seq;
    r.bytes.reserve(std::min<size_t>(txCapacity_, 64));
    queue_.push_back(std::move(r));
    records_++;
    txBatches_++;
  }
  ExitRecord& batch = queue_.back();
  batch.bytes.push_back(byte);
  queuedTxBytes_++;
  txBytes_++;
  if (wake_ == WakeState::kSignalled || tsfn == nullptr) return nullptr;
  if (batch.bytes.size() >= txCapacity_ || !txDefer_) {
    // A full batch is not worth waiting for: the JS thread should catch up now. Without
    // deferral (the guest waits for the transmit interrupt) nothing waits either.
    wake_ = WakeState::kSignalled;
    signals_++;
    return tsfn;
  }
  if (wake_ == WakeState::kDeferred) return nullptr;
  wake_ = WakeState::kDeferred;
  signals_++;
  deferredWakes_++;
  *data = DeferredWakeData();
  return tsfn;
}

void VmCore::Signal(napi_threadsafe_function signal, void* data) {
  if (signal != nullptr) napi_call_threadsafe_function(signal, data, napi_tsfn_nonblocking);
}

void VmCore::WaitForRoomLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v) {
  const auto full = [&] { return queue_.size() >= kMaxQueuedRecords || queuedTxBytes_ >= kMaxQueuedTxBytes; };
  if (!full() || stopping.load()) return;
  // Backpressure. While it waits the thread is outside KVM_RUN and only JavaScript (draining)
  // or a stop lets it go on, so it counts as quiescent for pauseVcpus.
  v.state = VcpuState::kWaitingJs;
  quiesceCv_.notify_all();
  spaceCv_.wait(lk, [&] { return !full() || stopping.load(); });
  v.state = VcpuState::kRunning;
}

void VmCore::InvalidatePioCacheLocked(uint64_t addr, uint32_t size, uint64_t seq) {
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

void VmCore::PostWrite(VcpuCore& v, uint8_t kind, uint64_t addr, uint32_t size, uint32_t value) {
  napi_threadsafe_function signal = nullptr;
  void* data = nullptr;
  {
    std::unique_lock<std::mutex> lk(mu_);
    // A write nothing decodes (the POST/delay port 0x80 that Linux's outb_p and polling loops hit
    // constantly) is dropped here: it must not cost the JavaScript thread a record each.
    if (kind == kPioWrite && InPioSink(addr)) return;
    WaitForRoomLocked(lk, v);
    // A stopping VM still takes the write: JavaScript handles what was queued before the stop.
    if (kind == kPioWrite && size == 1 && addr == txPort_) {
      signal = AppendTxLocked(v, static_cast<uint8_t>(value), &data);
    } else {
      ExitRecord r;
      r.type = RecordType::kIo;
      r.kind = kind;
      r.vcpu = &v;
      r.addr = addr;
      r.size = size;
      r.value = value & SizeMask(size);
      signal = PushLocked(std::move(r), &data);
    }
    if (kind == kPioWrite && !pioGroups_.empty()) InvalidatePioCacheLocked(addr, size, nextSeq_ - 1);
  }
  Signal(signal, data);
}

bool VmCore::WaitLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v, ExitRecord&& r, uint64_t* answer) {
  if (stopping.load()) return false;
  r.request = ++v.lastRequest;
  v.pendingRequest = r.request;
  v.answered = false;
  v.state = VcpuState::kWaitingJs;
  void* data = nullptr;
  napi_threadsafe_function signal = PushLocked(std::move(r), &data);
  quiesceCv_.notify_all();
  if (signal != nullptr) {
    // The answer cannot be lost while the lock is dropped: it sets `answered`, which the wait
    // below checks first.
    lk.unlock();
    Signal(signal, data);
    lk.lock();
  }
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
  napi_threadsafe_function signal;
  void* data = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kExited;
    ExitRecord r;
    r.type = RecordType::kStopped;
    r.vcpu = &v;
    signal = PushLocked(std::move(r), &data);
    quiesceCv_.notify_all();
  }
  Signal(signal, data);
}

size_t VmCore::PopMany(std::deque<ExitRecord>* out, size_t max) {
  std::lock_guard<std::mutex> lk(mu_);
  const bool wasFull = queue_.size() >= kMaxQueuedRecords || queuedTxBytes_ >= kMaxQueuedTxBytes;
  size_t n = 0;
  while (n < max && !queue_.empty()) {
    queuedTxBytes_ -= queue_.front().bytes.size();
    out->push_back(std::move(queue_.front()));
    queue_.pop_front();
    n++;
  }
  if (wasFull && n > 0) spaceCv_.notify_all();
  return n;
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

void VmCore::BeginDrain() {
  std::lock_guard<std::mutex> lk(mu_);
  wake_ = WakeState::kSignalled;
}

DrainNext VmCore::FinishDrain() {
  std::lock_guard<std::mutex> lk(mu_);
  if (queue_.empty()) {
    wake_ = WakeState::kIdle;
    return DrainNext::kIdle;
  }
  if (txDefer_ && queue_.size() == 1 && queue_.front().type == RecordType::kTxBatch &&
      queue_.front().bytes.size() < txCapacity_) {
    wake_ = WakeState::kDeferred;
    return DrainNext::kDefer;
  }
  wake_ = WakeState::kSignalled;
  return DrainNext::kContinue;
}

WakeState VmCore::Wake() {
  std::lock_guard<std::mutex> lk(mu_);
  return wake_;
}

void VmCore::DefineTxPort(uint32_t port, uint32_t capacity) {
  std::lock_guard<std::mutex> lk(mu_);
  txPort_ = port;
  txCapacity_ = capacity;
}

bool VmCore::SetTxDefer(bool defer) {
  std::lock_guard<std::mutex> lk(mu_);
  txDefer_ = defer;
  if (defer || wake_ != WakeState::kDeferred) return false;
  wake_ = WakeState::kSignalled;
  return true;
}

ExitCounters VmCore::Counters() {
  std::lock_guard<std::mutex> lk(mu_);
  ExitCounters c;
  c.records = records_;
  c.txBatches = txBatches_;
  c.txBytes = txBytes_;
  c.signals = signals_;
  c.deferredWakes = deferredWakes_;
  c.drains = drains_;
  c.jsCalls = jsCalls_;
  return c;
}

ThreadStartFailure AwaitThreadStart(ThreadStart& start) {
  std::unique_lock<std::mutex> lk(start.mu);
  start.cv.wait(lk, [&] { return start.done; });
  return start.failure;
}

void VmCore::EnsureSigsysReporter(const VcpuCore& v) {
  if (v.seccomp.empty()) return;
  const int err = InstallSigsysReporter();
  if (err != 0) throw ThreadStartFailure{"sigaction(SIGSYS)", err};
}

void VmCore::AwaitStarted(VcpuCore& v, ThreadStart& start) {
  const ThreadStartFailure failure = AwaitThreadStart(start);
  if (failure.op != nullptr) {
    // The thread has ended without running the guest; a later start() makes a new one.
    {
      std::lock_guard<std::mutex> jl(joinMu_);
      v.thread.join();
    }
    v.prestarted = false;
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kIdle;
    throw failure;
  }
  v.started = true;
}

void VmCore::StartThread(VcpuCore& v, std::function<void()> body) {
  EnsureSigsysReporter(v);
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kRunning;
  }
  auto start = std::make_shared<ThreadStart>();
  try {
    std::lock_guard<std::mutex> jl(joinMu_);
    v.thread = std::thread(ThreadMain, &v, std::move(body), start, false);
  } catch (const std::system_error& e) {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kIdle;
    throw ThreadStartFailure{"pthread_create", e.code().value()};
  }
  AwaitStarted(v, *start);
}

void VmCore::ReleaseThread(VcpuCore& v) {
  EnsureSigsysReporter(v);
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kRunning;
  }
  auto start = std::make_shared<ThreadStart>();
  {
    std::lock_guard<std::mutex> g(v.gateMu);
    v.gateStart = start;
    v.gate = VcpuCore::kGateOpen;
  }
  v.gateCv.notify_one();
  AwaitStarted(v, *start);
}

std::shared_ptr<ThreadStart> VmCore::PrepareThread(VcpuCore& v) {
  EnsureSigsysReporter(v);
  auto start = std::make_shared<ThreadStart>();
  {
    std::lock_guard<std::mutex> g(v.gateMu);
    v.gateStart = start;
    v.gate = VcpuCore::kGatePrologue;
  }
  v.gateCv.notify_one();
  return start;
}

void VmCore::JoinEnded(VcpuCore& v) {
  std::lock_guard<std::mutex> jl(joinMu_);
  if (v.thread.joinable()) v.thread.join();
}

void VmCore::GoThread(VcpuCore& v) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.state = VcpuState::kRunning;
  }
  {
    std::lock_guard<std::mutex> g(v.gateMu);
    v.gate = VcpuCore::kGateGo;
  }
  v.gateCv.notify_one();
  v.started = true;
}

void PrestartVcpuThread(VcpuCore& v) {
  v.prestarted = true;
  VcpuCore* p = &v;
  v.thread = std::thread([p] {
    // Until it is released the thread takes no signal; ThreadMain then sets the vCPU's own mask.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, nullptr);
    std::shared_ptr<ThreadStart> start;
    bool hold = false;
    {
      std::unique_lock<std::mutex> g(p->gateMu);
      p->gateCv.wait(g, [p] { return p->gate != VcpuCore::kGateClosed; });
      if (p->gate == VcpuCore::kGateCancelled) return;  // never started: nothing to report
      start = std::move(p->gateStart);
      hold = p->gate == VcpuCore::kGatePrologue;
    }
    ThreadMain(p, nullptr, std::move(start), hold);
  });
}

void CancelVcpuGate(VcpuCore& v) {
  {
    std::lock_guard<std::mutex> g(v.gateMu);
    if (v.gate == VcpuCore::kGateClosed || v.gate == VcpuCore::kGatePrologue) v.gate = VcpuCore::kGateCancelled;
  }
  v.gateCv.notify_all();
}

void VmCore::KickAll() {
  std::lock_guard<std::mutex> jl(joinMu_);
  for (auto& v : vcpus) {
    if (!v->started || !v->thread.joinable()) continue;
    // immediate_exit covers the window between the thread's flag check and KVM_RUN; the signal
    // covers a thread already inside KVM_RUN (api.rst, "immediate_exit").
    if (v->run != nullptr) __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_kill(v->thread.native_handle(), KickSignal());
  }
}

void VmCore::RequestStop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping.store(true);
    pausing.store(false);
    for (auto& v : vcpus) v->answerCv.notify_all();
    parkCv_.notify_all();
    quiesceCv_.notify_all();
    spaceCv_.notify_all();
  }
  for (auto& v : vcpus) {
    if (v->prestarted) CancelVcpuGate(*v);
  }
  KickAll();
}

void VmCore::StopAll() {
  RequestStop();
  std::lock_guard<std::mutex> jl(joinMu_);
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
  // closeAsync closes on a worker thread; a finalizer or a second close may come at the same time.
  std::lock_guard<std::mutex> cl(closeMu_);
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
