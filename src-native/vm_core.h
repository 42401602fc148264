// Native state shared between the JavaScript thread and the vCPU threads of one VM: the ordered
// exit queue, the answers vCPUs wait for, the PIO read cache and the stop/pause protocol.
// Nothing here touches JavaScript values; the JS side lives in vm.cc (class Vm).
#pragma once

#include <linux/kvm.h>
#include <node_api.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "seccomp.h"

namespace kindling {

class Vm;

/** ExitKind in lib/native/types.ts. */
enum ExitKind : uint8_t { kPioWrite = 0, kPioRead = 1, kMmioWrite = 2, kMmioRead = 3 };

/** VcpuVerdict in lib/native/types.ts. */
enum Verdict : uint32_t { kResume = 0, kStop = 1 };

/** VcpuEventInfo.reason when KVM_RUN itself failed (not a KVM_EXIT_* value). */
constexpr int64_t kReasonRunFailed = -1;

/** A non-I/O exit, as VcpuEventInfo carries it. */
struct EventInfo {
  int64_t reason = 0;
  bool hasSuberror = false;
  uint32_t suberror = 0;
  bool hasData = false;
  std::vector<uint64_t> data;
  bool hasInsnBytes = false;
  std::vector<uint8_t> insnBytes;
  bool hasFailReason = false;
  uint64_t failReason = 0;
  bool hasErrno = false;
  int err = 0;
  bool hasSystemEventType = false;
  uint32_t systemEventType = 0;
};

struct VcpuCore;

enum class RecordType : uint8_t { kIo, kEvent, kStopped };

/** One entry of the VM-wide exit queue. */
struct ExitRecord {
  RecordType type = RecordType::kIo;
  uint8_t kind = 0;  // ExitKind, for kIo
  VcpuCore* vcpu = nullptr;
  uint64_t addr = 0;
  uint32_t size = 0;
  uint32_t value = 0;
  uint64_t seq = 0;        // kIo only; dense, starts at 1
  uint64_t request = 0;    // non-zero when the vCPU waits for the answer
  std::unique_ptr<EventInfo> event;
};

/**
 * Where a vCPU thread is. Register ioctls from JavaScript are allowed only in the "quiescent"
 * states (kIdle, kWaitingJs, kParked, kExited), where the thread is not inside KVM_RUN and can
 * only leave the state because the JavaScript thread lets it.
 */
enum class VcpuState : uint8_t { kIdle, kRunning, kWaitingJs, kParked, kExited };

struct VcpuCore {
  uint32_t id = 0;
  int fd = -1;
  kvm_run* run = nullptr;
  size_t runSize = 0;
  class VmCore* vm = nullptr;
  std::thread thread;
  bool started = false;  // JS thread only

  // Guarded by vm->mu.
  VcpuState state = VcpuState::kIdle;
  uint64_t pendingRequest = 0;
  uint64_t lastRequest = 0;
  bool answered = false;
  uint64_t answer = 0;
  std::condition_variable answerCv;
  /** The seccomp program the thread installs on itself before it runs (empty: none). JS thread, before start. */
  SeccompProgram seccomp;
#ifdef KINDLING_TEST_HOOKS
  /** What a scripted thread's reads and events got back (test_hooks.cc). */
  std::vector<uint32_t> scriptResults;
  /** A refused call the thread attempts right after installing its filter (test_hooks.cc); 0: none. */
  int testAttempt = 0;
#endif

  bool Quiescent() const {
    return state == VcpuState::kIdle || state == VcpuState::kWaitingJs || state == VcpuState::kParked ||
           state == VcpuState::kExited;
  }
};

/**
 * The most records the queue holds. Writes are posted so that a vCPU need not wait for
 * JavaScript, but a guest that writes faster than JavaScript handles the writes must not grow
 * the queue (host memory) without bound: a posted write that finds the queue full waits for room.
 */
constexpr size_t kMaxQueuedRecords = 4096;

/** One read-cache group of ports (definePioReadCache). */
struct PioCacheGroup {
  uint32_t base = 0;
  uint32_t len = 0;
  uint32_t transparentWriteMask = 0;
  uint64_t lastInvalidateSeq = 0;
  std::vector<int64_t> values;  // -1: no cached value
};

class VmCore {
 public:
  VmCore(int fd, size_t runMmapSize) : fd(fd), runMmapSize(runMmapSize) {}
  ~VmCore();
  VmCore(const VmCore&) = delete;
  VmCore& operator=(const VmCore&) = delete;

  int fd;
  size_t runMmapSize;
  std::vector<std::shared_ptr<VcpuCore>> vcpus;  // JS thread mutates; threads only use their own
  napi_threadsafe_function tsfn = nullptr;       // signals the JS thread; null once released
  /** The JS wrapper, or null once it is gone. JS thread only. */
  Vm* owner = nullptr;
  /** Set by close(); the TSFN callback then does nothing. JS thread only. */
  bool closed = false;

  std::atomic<bool> stopping{false};
  std::atomic<bool> pausing{false};

  // ---- vCPU-thread side ----
  /** Queues a posted write (PIO or MMIO); applies PIO read-cache invalidation. */
  void PostWrite(VcpuCore& v, uint8_t kind, uint64_t addr, uint32_t size, uint32_t value);
  /**
   * A read: answered from the PIO read cache if possible, else queued and waited for.
   * Returns false (and all-ones) when the VM is stopping.
   */
  bool Read(VcpuCore& v, uint8_t kind, uint64_t addr, uint32_t size, uint32_t* value);
  /** Queues an event and waits for the verdict; kStop when the VM is stopping. */
  Verdict SubmitEvent(VcpuCore& v, std::unique_ptr<EventInfo> info);
  /** Parks the calling vCPU until resume or stop. */
  void Park(VcpuCore& v);
  /** Last thing a vCPU thread does: marks it exited and queues the 'stopped' record. */
  void ThreadEnded(VcpuCore& v);

  // ---- JavaScript-thread side ----
  /** Takes the oldest record; false when the queue is empty. Wakes writers held by backpressure. */
  bool Pop(ExitRecord* out);
  /** How many records are queued now. */
  size_t Queued();
  /** Whether a record's vCPU still waits for this answer (false after a stop cancelled it). */
  bool StillWaiting(const ExitRecord& r);
  /** Delivers an answer (read value or verdict) to the vCPU that waits for it. */
  void Answer(const ExitRecord& r, uint64_t value);
  /**
   * Ends a drain driven by the event loop. Returns true when records are still queued: the
   * caller then schedules the next drain itself and the signal stays raised, so that vCPUs do
   * not queue more thread-safe-function calls (Node runs up to 1000 of those in one loop turn,
   * which would starve everything else). Returns false, and lowers the signal, when the queue is
   * empty: the next record signals again.
   *
   * Invariant: while records are queued, a drain is pending (a TSFN call or a continuation).
   */
  bool FinishDrain();
  /**
   * Starts vCPU `v`'s run thread (ThreadMain: the KVM_RUN loop, or `body` for the test hooks) and returns once
   * the thread has installed `v.seccomp` (if any). Throws ThreadStartFailure if the thread cannot
   * be created or the kernel refuses the filter; `v` is then as before the call.
   */
  void StartThread(VcpuCore& v, std::function<void()> body = nullptr);
  /** Stop flag, cancels waits, kicks and joins every thread. Idempotent. */
  void StopAll();
  /** Kicks every running vCPU out of KVM_RUN and waits until each is quiescent. */
  void PauseAll();
  void ResumeAll();
  /** Whether `v` is in a state where register ioctls are safe. */
  bool IsQuiescent(VcpuCore& v);
  /** Where `v`'s thread is now. */
  VcpuState StateOf(VcpuCore& v);
  void DefinePioGroup(uint32_t base, uint32_t len, uint32_t mask);  // caller validated
  /** Ports whose writes are dropped and whose reads answer all-ones on the vCPU thread. */
  void DefinePioSink(uint32_t base, uint32_t len);  // caller validated
  bool PioGroupOverlaps(uint32_t base, uint32_t len);
  bool SetPioCache(uint32_t port, int64_t value, uint64_t seq);
  /** Releases the TSFN (idempotent). */
  void ReleaseTsfn();
  /** Unmaps the kvm_run areas and closes the vCPU fds and the VM fd (idempotent; threads joined). */
  void CloseFds();

 private:
  void PushLocked(ExitRecord&& r);
  bool WaitLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v, ExitRecord&& r, uint64_t* answer);
  void KickAll();

  std::mutex mu_;
  std::deque<ExitRecord> queue_;
  uint64_t nextSeq_ = 1;
  bool signalPending_ = false;
  uint64_t resumeEpoch_ = 0;  // bumped by ResumeAll; parked vCPUs wait for it to change
  std::condition_variable parkCv_;     // parked vCPUs wait here for resume/stop
  std::condition_variable quiesceCv_;  // pauseVcpus waits here
  std::condition_variable spaceCv_;    // posted writes wait here while the queue is full
  std::vector<PioCacheGroup> pioGroups_;
  std::vector<std::pair<uint32_t, uint32_t>> pioSinks_;  // [base, base + len)
  bool InPioSink(uint64_t port) const;  // mu_ held
};

/** Why StartThread failed: the call (pthread_create, prctl, seccomp) and errno. */
struct ThreadStartFailure {
  const char* op;
  int err;
};

#ifdef KINDLING_TEST_HOOKS
/** Test builds: makes the calling (filtered) thread attempt refused call `what` (test_hooks.cc). */
void AttemptRefusedCall(VcpuCore& v, int what);
#endif

/** The signal that kicks a vCPU thread out of KVM_RUN. Installed once (no SA_RESTART). */
int KickSignal();
void InstallKickSignalHandler();

/** What a new thread reports to StartThread once its prologue is done. */
struct ThreadStart {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  ThreadStartFailure failure{nullptr, 0};
};

/**
 * Every vCPU thread: signal mask, name, seccomp program (reported through `start`), then `body`
 * (test hooks) or the KVM_RUN loop.
 */
void ThreadMain(VcpuCore* v, std::function<void()> body, std::shared_ptr<ThreadStart> start);

}  // namespace kindling
