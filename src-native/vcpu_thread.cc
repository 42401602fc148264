// The run loop of one vCPU thread: KVM_RUN, then turn the exit into records for JavaScript.
// See Documentation/virt/kvm/api.rst ("KVM_RUN", "immediate_exit", "KVM_EXIT_IO", "KVM_EXIT_MMIO").
#include <errno.h>
#include <signal.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vm_core.h"

namespace kindling {

static_assert(sizeof(kvm_regs) == 144, "kvm_regs layout");
static_assert(sizeof(kvm_segment) == 24, "kvm_segment layout");
static_assert(sizeof(kvm_sregs) == 312, "kvm_sregs layout");
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 layout");
static_assert(sizeof(kvm_msr_entry) == 16, "kvm_msr_entry layout");
static_assert(sizeof(kvm_lapic_state) == 1024, "kvm_lapic_state layout");
static_assert(sizeof(kvm_run) <= 4096, "kvm_run fits in its first page");
static_assert(offsetof(kvm_run, immediate_exit) == 1, "kvm_run.immediate_exit offset");
static_assert(offsetof(kvm_run, exit_reason) == 8, "kvm_run.exit_reason offset");

namespace {

int g_kickSignal = 0;

void NoopHandler(int) {}

uint64_t LoadLe(const uint8_t* p, uint32_t n) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < n; i++) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

void StoreLe(uint8_t* p, uint32_t n, uint64_t v) {
  for (uint32_t i = 0; i < n; i++) p[i] = uint8_t(v >> (8 * i));
}

// Port I/O, including string instructions: `count` elements of `size` bytes at data_offset.
// Returns false if a read was cancelled by a stop.
bool HandleIo(VcpuCore& v) {
  kvm_run* run = v.run;
  const uint32_t size = run->io.size;
  const uint32_t count = run->io.count;
  const uint64_t offset = run->io.data_offset;
  // KVM places the data inside the mapping; refuse anything that says otherwise.
  if ((size != 1 && size != 2 && size != 4) || offset >= v.runSize ||
      uint64_t(count) * size > v.runSize - offset) {
    return true;
  }
  uint8_t* data = reinterpret_cast<uint8_t*>(run) + offset;
  const uint16_t port = run->io.port;
  if (run->io.direction == KVM_EXIT_IO_OUT) {
    for (uint32_t i = 0; i < count; i++) {
      v.vm->PostWrite(v, kPioWrite, port, size, static_cast<uint32_t>(LoadLe(data + i * size, size)));
    }
    return true;
  }
  for (uint32_t i = 0; i < count; i++) {
    uint32_t value = 0;
    if (!v.vm->Read(v, kPioRead, port, size, &value)) {
      std::memset(data + i * size, 0xff, size_t(count - i) * size);
      return false;
    }
    StoreLe(data + i * size, size, value);
  }
  return true;
}

// MMIO; accesses wider than 4 bytes become two records (low half at addr, then addr + 4).
bool HandleMmio(VcpuCore& v) {
  kvm_run* run = v.run;
  const uint64_t addr = run->mmio.phys_addr;
  const uint32_t len = run->mmio.len;
  if (len == 0 || len > 8) return true;
  const uint32_t lowLen = len > 4 ? 4 : len;
  const uint32_t highLen = len - lowLen;
  if (run->mmio.is_write) {
    const uint64_t value = LoadLe(run->mmio.data, len);
    v.vm->PostWrite(v, kMmioWrite, addr, lowLen, static_cast<uint32_t>(value));
    if (highLen != 0) v.vm->PostWrite(v, kMmioWrite, addr + 4, highLen, static_cast<uint32_t>(value >> 32));
    return true;
  }
  uint32_t low = 0;
  uint32_t high = 0;
  bool ok = v.vm->Read(v, kMmioRead, addr, lowLen, &low);
  if (ok && highLen != 0) ok = v.vm->Read(v, kMmioRead, addr + 4, highLen, &high);
  if (!ok) {
    std::memset(run->mmio.data, 0xff, len);
    return false;
  }
  StoreLe(run->mmio.data, len, uint64_t(low) | (uint64_t(high) << 32));
  return true;
}

std::unique_ptr<EventInfo> DescribeExit(const kvm_run* run) {
  auto info = std::make_unique<EventInfo>();
  info->reason = run->exit_reason;
  switch (run->exit_reason) {
    case KVM_EXIT_INTERNAL_ERROR: {
      info->hasSuberror = true;
      info->suberror = run->internal.suberror;
      const uint32_t ndata = std::min<uint32_t>(run->internal.ndata, 16);
      info->hasData = true;
      info->data.assign(run->internal.data, run->internal.data + ndata);
      if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION && ndata >= 1 &&
          (run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
        const uint32_t n = std::min<uint32_t>(run->emulation_failure.insn_size, 15);
        info->hasInsnBytes = true;
        info->insnBytes.assign(run->emulation_failure.insn_bytes, run->emulation_failure.insn_bytes + n);
      }
      break;
    }
    case KVM_EXIT_FAIL_ENTRY:
      info->hasFailReason = true;
      info->failReason = run->fail_entry.hardware_entry_failure_reason;
      break;
    case KVM_EXIT_SYSTEM_EVENT: {
      info->hasSystemEventType = true;
      info->systemEventType = run->system_event.type;
      const uint32_t ndata = std::min<uint32_t>(run->system_event.ndata, 16);
      info->hasData = true;
      info->data.assign(run->system_event.data, run->system_event.data + ndata);
      break;
    }
    case KVM_EXIT_UNKNOWN:
      info->hasData = true;
      info->data.push_back(run->hw.hardware_exit_reason);
      break;
    default:
      break;
  }
  return info;
}

}  // namespace

int KickSignal() { return g_kickSignal; }

void InstallKickSignalHandler() {
  if (g_kickSignal != 0) return;
  // A real-time signal: Node and libuv use none of them by default (they use SIGUSR1, SIGPROF,
  // SIGCHLD, SIGWINCH...). glibc keeps the first two for itself, SIGRTMIN() already skips them.
  g_kickSignal = SIGRTMIN + 4;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = NoopHandler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
  sigaction(g_kickSignal, &sa, nullptr);
}

namespace {

// The KVM_RUN loop; runs until a stop, a Stop verdict or a failed KVM_RUN.
void RunLoop(VcpuCore& v) {
  VmCore& vm = *v.vm;
  // After an I/O exit the instruction completes only on the next KVM_RUN; before parking we
  // complete it with immediate_exit set so that paused register state is consistent.
  bool ioPending = false;
  while (!vm.stopping.load()) {
    if (vm.pausing.load()) {
      if (ioPending) {
        __atomic_store_n(&v.run->immediate_exit, 1, __ATOMIC_SEQ_CST);
        ioctl(v.fd, KVM_RUN, 0);  // returns EINTR once the pending operation is complete
        ioPending = false;
      }
      vm.Park(v);
      continue;
    }
    // Clear the kick before re-checking the flags: a stop/pause request that lands after this
    // store sets immediate_exit again (seq_cst orders both sides).
    __atomic_store_n(&v.run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    if (vm.stopping.load() || vm.pausing.load()) continue;

    const int rc = ioctl(v.fd, KVM_RUN, 0);
    // Any return from KVM_RUN, EINTR included, has completed the previous exit's I/O.
    ioPending = false;
    if (rc < 0) {
      const int err = errno;
      // EINTR: kicked (or any signal). EAGAIN: an AP waiting for INIT/SIPI (KVM-HOST-NOTES.md).
      if (err == EINTR || err == EAGAIN) continue;
      auto info = std::make_unique<EventInfo>();
      info->reason = kReasonRunFailed;
      info->hasErrno = true;
      info->err = err;
      vm.SubmitEvent(v, std::move(info));  // lets JavaScript inspect registers; the thread then ends
      break;
    }
    const uint32_t reason = v.run->exit_reason;
    if (reason == KVM_EXIT_IO) {
      ioPending = true;
      if (!HandleIo(v)) break;
      continue;
    }
    if (reason == KVM_EXIT_MMIO) {
      ioPending = true;
      if (!HandleMmio(v)) break;
      continue;
    }
    if (reason == KVM_EXIT_INTR) continue;
    if (vm.SubmitEvent(v, DescribeExit(v.run)) == kStop) break;
  }
}

}  // namespace

void ThreadMain(VcpuCore* vp, std::function<void()> body, std::shared_ptr<ThreadStart> start, bool holdAfterPrologue) {
  VcpuCore& v = *vp;

  // Process signals (SIGINT, SIGTERM, SIGCHLD...) belong to the Node thread; the vCPU thread only
  // takes its kick signal, faults raised by itself and SIGSYS from its seccomp filter (blocked,
  // the kernel would kill the process without the report).
  sigset_t set;
  sigfillset(&set);
  for (int sig : {KickSignal(), SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS}) sigdelset(&set, sig);
  pthread_sigmask(SIG_SETMASK, &set, nullptr);

  char name[16];
  snprintf(name, sizeof name, "kindling-cpu%u", v.id % 1000);
  pthread_setname_np(pthread_self(), name);

  // The thread's first allocation picks (or creates) its malloc arena; creating one can make
  // glibc read /sys/devices/system/cpu/online (arena_get2). Do it while that is still allowed.
  // Through a volatile: `free(malloc(n))` is a dead pair the compiler removes at -O2.
  void* volatile arenaProbe = std::malloc(64);
  std::free(arenaProbe);

  // Before the first KVM_RUN: from here on the guest controls what this thread computes.
  FilterFailure failure;
  const bool filtered = !v.seccomp.empty();
  const bool ok = !filtered || InstallThreadFilter(v.seccomp, name, &failure);
  {
    std::lock_guard<std::mutex> lk(start->mu);
    start->done = true;
    if (!ok) start->failure = {failure.op, failure.err};
    start->cv.notify_one();
  }
  start.reset();
  if (!ok) return;  // StartThread joins and reports; the vCPU never ran

  if (holdAfterPrologue) {
    // Prepared (prepareStart): filtered from here on, waiting for start() or a stop.
    std::unique_lock<std::mutex> g(v.gateMu);
    v.gateCv.wait(g, [&] { return v.gate == VcpuCore::kGateGo || v.gate == VcpuCore::kGateCancelled; });
    if (v.gate == VcpuCore::kGateCancelled) {
      g.unlock();
      if (filtered) ForgetFilteredThread();
      return;  // never started: nothing to report
    }
  }

#ifdef KINDLING_TEST_HOOKS
  if (v.testAttempt != 0) AttemptRefusedCall(v, v.testAttempt);
#endif
  if (body) {
    body();
    body = nullptr;  // its captures are freed while the thread still has its name in a report
  } else {
    RunLoop(v);
  }
  v.vm->ThreadEnded(v);
  if (filtered) ForgetFilteredThread();
}

}  // namespace kindling
