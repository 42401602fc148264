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

/**
 * kTxBatch: consecutive one-byte writes of one vCPU to the transmit-buffer port
 * (defineTransmitBuffer), in order, as one record. It stays open for more bytes while it is the
 * newest record of the queue and has room; any other record queued after it (another vCPU's
 * byte included) closes it, and so does taking it off the queue.
 */
enum class RecordType : uint8_t { kIo, kEvent, kStopped, kTxBatch };

/** One entry of the VM-wide exit queue. */
struct ExitRecord {
  RecordType type = RecordType::kIo;
  uint8_t kind = 0;  // ExitKind, for kIo
  VcpuCore* vcpu = nullptr;
  uint64_t addr = 0;
  uint32_t size = 0;
  uint32_t value = 0;
  uint64_t seq = 0;        // kIo: its seq; kTxBatch: the first byte's (byte i has seq + i). Dense, from 1
  uint64_t request = 0;    // non-zero when the vCPU waits for the answer
  std::unique_ptr<EventInfo> event;
  std::vector<uint8_t> bytes;  // kTxBatch
};

/**
 * Whether the JavaScript thread has been told about queued records. kDeferred: only an open
 * transmit batch is queued, and the JS thread drains it when the transmit buffer's delay has
 * passed (a timer), unless another record asks for an immediate drain first.
 */
enum class WakeState : uint8_t { kIdle, kDeferred, kSignalled };

/** What FinishDrain asks of the JavaScript thread. */
enum class DrainNext : uint8_t { kIdle, kDefer, kContinue };

/** Counters of the exit path (JS thread reads them with ExitStats). */
struct ExitCounters {
  uint64_t records = 0;        // records queued, every type
  uint64_t txBatches = 0;      // transmit batches queued
  uint64_t txBytes = 0;        // bytes that went into transmit batches
  uint64_t signals = 0;        // thread-safe-function calls made by vCPU threads
  uint64_t deferredWakes = 0;  // of which asked for the transmit timer
  uint64_t drains = 0;         // drains run from the event loop (TSFN, timer or continuation)
  uint64_t jsCalls = 0;        // JavaScript handler invocations
};

struct ThreadStart;

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

  /**
   * A thread created ahead of start() (PrestartVcpuThread, on the set-up worker) waits at this
   * gate: kGateClosed until start() opens it (kGateOpen: prologue, then the run loop) or
   * prepareStart() does (kGatePrologue: prologue, then it waits again until start() sets kGateGo),
   * or a stop cancels it (kGateCancelled). With the gate opened the thread gets `gateStart`,
   * through which it reports its prologue (the seccomp filter installed or refused).
   * `prestarted` is written before the VM is handed to JavaScript and afterwards only on the
   * JavaScript thread, as are `preparing` and `prepared`.
   */
  enum Gate : int { kGateClosed = 0, kGateOpen = 1, kGatePrologue = 2, kGateGo = 3, kGateCancelled = 4 };
  bool prestarted = false;
  bool preparing = false;
  bool prepared = false;
  std::mutex gateMu;
  std::condition_variable gateCv;
  int gate = kGateClosed;
  std::shared_ptr<ThreadStart> gateStart;

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
/** The same bound for the bytes held by transmit batches. */
constexpr size_t kMaxQueuedTxBytes = 256 * 1024;

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
  /**
   * Queues a posted write (PIO or MMIO); applies PIO read-cache invalidation. A one-byte write to
   * the transmit-buffer port is appended to the open transmit batch instead.
   */
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
  /**
   * Takes up to `max` of the oldest records in one go (appended to `out`); returns how many.
   * Wakes writers held by backpressure.
   */
  size_t PopMany(std::deque<ExitRecord>* out, size_t max);
  /** How many records are queued now. */
  size_t Queued();
  /** Whether a record's vCPU still waits for this answer (false after a stop cancelled it). */
  bool StillWaiting(const ExitRecord& r);
  /** Delivers an answer (read value or verdict) to the vCPU that waits for it. */
  void Answer(const ExitRecord& r, uint64_t value);
  /** A drain driven by the event loop starts: records queued from now on need no new signal. */
  void BeginDrain();
  /**
   * Ends a drain driven by the event loop. kContinue: records are still queued; the caller
   * schedules the next drain itself and the signal stays raised, so that vCPUs do not queue more
   * thread-safe-function calls (Node runs up to 1000 of those in one loop turn, which would
   * starve everything else). kDefer: only an open transmit batch is queued; the caller arms the
   * transmit timer (state kDeferred: any other record signals at once). kIdle: the queue is
   * empty and the signal is lowered; the next record signals again.
   *
   * Invariant: while records are queued, a drain is pending (a TSFN call, a continuation, the
   * transmit timer, or a drain in progress).
   */
  DrainNext FinishDrain();
  /** The wake state (JS thread: decides whether a deferred wake or the timer still has work). */
  WakeState Wake();
  /**
   * Declares `port` the transmit-buffer port: one-byte writes to it are batched (up to `capacity`
   * bytes per record). Caller validated the arguments; JS thread, before any vCPU runs.
   */
  void DefineTxPort(uint32_t port, uint32_t capacity);
  /**
   * Whether a transmit batch alone waits for the transmit timer (true) or wakes JS at once.
   * Returns true when turning deferral off found a batch waiting for the timer: the caller then
   * schedules a drain (the state is kSignalled from here on).
   */
  bool SetTxDefer(bool defer);
  /** A snapshot of the counters. */
  ExitCounters Counters();
  /** Counts one JavaScript handler call (JS thread). */
  void CountJsCall() { jsCalls_++; }
  /** Counts one event-loop drain (JS thread). */
  void CountDrain() { drains_++; }
  /**
   * Starts vCPU `v`'s run thread (ThreadMain: the KVM_RUN loop, or `body` for the test hooks) and returns once
   * the thread has installed `v.seccomp` (if any). Throws ThreadStartFailure if the thread cannot
   * be created or the kernel refuses the filter; `v` is then as before the call.
   */
  void StartThread(VcpuCore& v, std::function<void()> body = nullptr);
  /**
   * Stop flag, cancels waits, kicks and joins every thread. Idempotent, and safe to call from
   * the JS thread and a worker thread at once (the joins are serialized).
   */
  void StopAll();
  /** The first half of StopAll: stop flag, cancelled waits and gates, kicks; does not wait for the threads. */
  void RequestStop();
  /**
   * Opens the gate of a thread made by PrestartVcpuThread: it installs `v.seccomp` (if any) and
   * enters its run loop. Returns once the filter is installed; throws ThreadStartFailure as
   * StartThread does (the thread has then ended, and `v` is as before the call with no thread).
   * JS thread.
   */
  void ReleaseThread(VcpuCore& v);
  /**
   * prepareStart(), JS-thread half: has the gated thread of `v` run its prologue (installing
   * `v.seccomp`) and wait again; returns what the thread reports through (AwaitThreadStart). Throws
   * ThreadStartFailure if the SIGSYS reporter cannot be installed.
   */
  std::shared_ptr<ThreadStart> PrepareThread(VcpuCore& v);
  /** Joins `v`'s thread if it has ended (a refused prologue); any thread, serialized with StopAll. */
  void JoinEnded(VcpuCore& v);
  /** start() after prepareStart(): lets the prepared thread enter its run loop. JS thread. */
  void GoThread(VcpuCore& v);
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
  /**
   * Unmaps the kvm_run areas and closes the vCPU fds and the VM fd (idempotent; threads joined).
   * Safe against a concurrent call on another thread (closeAsync runs it on a worker).
   */
  void CloseFds();

 private:
  /** A filtered thread reports refused calls through the SIGSYS reporter: installs it (once). */
  static void EnsureSigsysReporter(const VcpuCore& v);
  /**
   * Waits for `v`'s new thread to finish its prologue; if it failed, joins the ended thread,
   * puts `v` back to idle and throws what it reported.
   */
  void AwaitStarted(VcpuCore& v, ThreadStart& start);
  /**
   * Queues `r` and decides how the JS thread learns of it; returns the TSFN to call (after
   * unlocking: the call takes the TSFN's own lock and writes to an eventfd) and with which data,
   * or null. The TSFN stays valid without the lock: it is released only after every vCPU thread
   * has been joined.
   */
  napi_threadsafe_function PushLocked(ExitRecord&& r, void** data);
  /** Appends a byte to the open transmit batch or starts one; same contract as PushLocked. */
  napi_threadsafe_function AppendTxLocked(VcpuCore& v, uint8_t byte, void** data);
  /** `signal` with `data`, if any (no lock held). */
  static void Signal(napi_threadsafe_function signal, void* data);
  /** Backpressure: waits while the queue (records, or transmit bytes) is full. */
  void WaitForRoomLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v);
  void InvalidatePioCacheLocked(uint64_t addr, uint32_t size, uint64_t seq);
  bool WaitLocked(std::unique_lock<std::mutex>& lk, VcpuCore& v, ExitRecord&& r, uint64_t* answer);
  void KickAll();

  std::mutex mu_;
  /** Serializes kicks and joins (StopAll may run on a worker while the JS thread kicks). */
  std::mutex joinMu_;
  /** Serializes CloseFds (closeAsync runs it on a worker thread). */
  std::mutex closeMu_;
  std::deque<ExitRecord> queue_;
  uint64_t nextSeq_ = 1;
  WakeState wake_ = WakeState::kIdle;
  uint32_t txPort_ = UINT32_MAX;  // none
  uint32_t txCapacity_ = 0;
  bool txDefer_ = true;
  size_t queuedTxBytes_ = 0;
  uint64_t records_ = 0;
  uint64_t txBatches_ = 0;
  uint64_t txBytes_ = 0;
  uint64_t signals_ = 0;
  uint64_t deferredWakes_ = 0;
  uint64_t drains_ = 0;   // JS thread only
  uint64_t jsCalls_ = 0;  // JS thread only
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

/** TSFN data of a wake that may wait for the transmit timer (any other wake has null data). */
inline void* DeferredWakeData() { return reinterpret_cast<void*>(uintptr_t(1)); }

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
 * (test hooks) or the KVM_RUN loop; with `holdAfterPrologue` it waits at its gate for kGateGo
 * (or a cancel) in between.
 */
void ThreadMain(VcpuCore* v, std::function<void()> body, std::shared_ptr<ThreadStart> start, bool holdAfterPrologue);

/** Waits for a new thread's prologue (ThreadMain) and returns how it went. */
ThreadStartFailure AwaitThreadStart(ThreadStart& start);

/**
 * Creates `v`'s thread now, held at its gate until VmCore::ReleaseThread (then it runs
 * ThreadMain: signal mask, name, seccomp filter, KVM_RUN loop; `v->vm` must be set by then) or
 * CancelVcpuGate (then it ends without a trace). For the set-up worker: creating a thread maps
 * its stack, which waits for the process's memory-map lock that page faults of running guests
 * hold. Throws std::system_error if the thread cannot be created.
 */
void PrestartVcpuThread(VcpuCore& v);
/** Cancels the gate of a prestarted thread that was not released (it then ends); idempotent. */
void CancelVcpuGate(VcpuCore& v);

}  // namespace kindling
