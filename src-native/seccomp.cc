// seccomp for vCPU threads: installation on the calling thread and the SIGSYS report.
//
// Why SECCOMP_RET_TRAP and a handler rather than SECCOMP_RET_KILL_PROCESS: a killed process
// leaves, at best, an audit record that only root can read (and only where audit is on); the
// person whose Node process died needs to see which call was refused and on which thread. The
// filter therefore traps; the handler writes the thread's name, the call's number and arguments to
// stderr, then makes a system call no filter of ours allows. The kernel finds SIGSYS blocked
// (the handler is running), resets it to its default action and kills the whole process with
// SIGSYS (kernel/signal.c, force_sig_info_to_task), so the end is the same as KILL_PROCESS plus
// the message. The handler uses only async-signal-safe code: no malloc, no stdio, no locks.
#include "seccomp.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <execinfo.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace kindling {

namespace {

// Names of the filtered threads, found by pthread_self() (no system call). Thread-local storage
// is not used: in a dlopen()ed library its first access per thread may allocate, which a signal
// handler must not do.
constexpr size_t kMaxFilteredThreads = 1024;
struct NamedThread {
  std::atomic<uintptr_t> self{0};
  char name[16] = {};
};
NamedThread g_threads[kMaxFilteredThreads];

// A number above every x86-64 system call and without the x32 bit (0x40000000): no filter from
// lib/seccomp allows it, and where one did the kernel would only answer ENOSYS.
constexpr long kRefusedSyscall = 0x3fffffff;
// si_code of a SIGSYS raised by SECCOMP_RET_TRAP (SYS_SECCOMP in <asm-generic/siginfo.h>, which
// glibc's <signal.h> does not export).
constexpr int kSysSeccomp = 1;

struct sigaction g_previous;
std::mutex g_reporterMu;

NamedThread* FindThread(uintptr_t self) {
  for (NamedThread& t : g_threads) {
    if (t.self.load(std::memory_order_acquire) == self) return &t;
  }
  return nullptr;
}

// Async-signal-safe formatting into a fixed buffer.
struct Line {
  char buf[512];
  size_t n = 0;
  void Put(const char* s) {
    while (*s && n < sizeof buf) buf[n++] = *s++;
  }
  void Dec(uint64_t v) {
    char tmp[24];
    int i = 0;
    do {
      tmp[i++] = char('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (i > 0 && n < sizeof buf) buf[n++] = tmp[--i];
  }
  void Hex(uint64_t v) {
    Put("0x");
    char tmp[16];
    int i = 0;
    do {
      tmp[i++] = "0123456789abcdef"[v & 0xf];
      v >>= 4;
    } while (v != 0);
    while (i > 0 && n < sizeof buf) buf[n++] = tmp[--i];
  }
};

void Chain(int sig, siginfo_t* info, void* ctx) {
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, ctx);
    return;
  }
  if (g_previous.sa_handler == SIG_IGN) return;
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  // Default action: restore it; the signal, still pending for a kill(), or raised again here for
  // a trap, then ends the process as it would have without us.
  sigaction(SIGSYS, &g_previous, nullptr);
  raise(SIGSYS);
}

void OnSigsys(int sig, siginfo_t* info, void* ctx) {
  const int savedErrno = errno;
  NamedThread* t = FindThread(static_cast<uintptr_t>(pthread_self()));
  const bool seccompTrap = info != nullptr && info->si_code == kSysSeccomp;
  const bool chainable = (g_previous.sa_flags & SA_SIGINFO) ? g_previous.sa_sigaction != nullptr
                                                             : g_previous.sa_handler != SIG_DFL;
  // Not ours: a SIGSYS sent by kill(), or a trap of another filter whose owner handles SIGSYS.
  if (!seccompTrap || (t == nullptr && chainable)) {
    Chain(sig, info, ctx);
    errno = savedErrno;
    return;
  }
  const greg_t* r = static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs;
  Line line;
  line.Put("kindling: seccomp: ");
  if (t != nullptr) {
    line.Put("vCPU thread ");
    line.Put(t->name);
  } else {
    line.Put("a thread");
  }
  line.Put(" made system call ");
  line.Dec(static_cast<uint32_t>(info->si_syscall));
  line.Put(" (arch ");
  line.Hex(info->si_arch);
  line.Put(", args ");
  const int regs[6] = {REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9};
  for (int i = 0; i < 6; i++) {
    if (i > 0) line.Put(" ");
    line.Hex(static_cast<uint64_t>(r[regs[i]]));
  }
  line.Put("), which its filter does not allow; the process is killed with SIGSYS."
           " new MicroVM({ seccomp: false }) turns the filter off for debugging.\n");
  size_t off = 0;
  while (off < line.n) {
    const ssize_t w = write(STDERR_FILENO, line.buf + off, line.n - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  // Where the call came from (the unwinder was loaded before the filter, see InstallThreadFilter;
  // writing the symbols needs only write(2)).
  void* frames[32];
  const int n = backtrace(frames, 32);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  syscall(kRefusedSyscall);
  // Only a filter that allows everything gets here; the thread must not go on.
  __builtin_trap();
}

}  // namespace

bool ParseSeccompProgram(const uint8_t* data, size_t len, SeccompProgram* out) {
  if (len == 0 || len % 8 != 0 || len / 8 > kMaxSeccompInstructions) return false;
  out->resize(len / 8);
  for (size_t i = 0; i < out->size(); i++) {
    const uint8_t* p = data + i * 8;
    sock_filter& f = (*out)[i];
    f.code = static_cast<uint16_t>(p[0] | (p[1] << 8));
    f.jt = p[2];
    f.jf = p[3];
    f.k = uint32_t(p[4]) | (uint32_t(p[5]) << 8) | (uint32_t(p[6]) << 16) | (uint32_t(p[7]) << 24);
  }
  return true;
}

int InstallSigsysReporter() {
  std::lock_guard<std::mutex> lk(g_reporterMu);
  struct sigaction current;
  if (sigaction(SIGSYS, nullptr, &current) != 0) return errno;
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == OnSigsys) return 0;
  // First time, or someone (process.on('SIGSYS') through libuv, say) replaced us since: their
  // handler becomes the one SIGSYS of other threads goes to.
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = OnSigsys;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO;
  struct sigaction previous;
  if (sigaction(SIGSYS, &sa, &previous) != 0) return errno;
  g_previous = previous;
  return 0;
}

bool InstallThreadFilter(const SeccompProgram& prog, const char* threadName, FilterFailure* failure) {
  // The first backtrace() loads the unwinder (libgcc_s: openat, mmap): do it while that is
  // still allowed, so the SIGSYS report can include a backtrace.
  static std::once_flag unwinderLoaded;
  std::call_once(unwinderLoaded, [] {
    void* frame[1];
    backtrace(frame, 1);
  });
  const uintptr_t self = static_cast<uintptr_t>(pthread_self());
  NamedThread* slot = nullptr;
  for (NamedThread& t : g_threads) {
    uintptr_t expected = 0;
    if (t.self.load(std::memory_order_relaxed) != 0) continue;
    // Claim with a placeholder, fill in the name, then publish the owner.
    if (t.self.compare_exchange_strong(expected, ~uintptr_t(0), std::memory_order_acq_rel)) {
      std::strncpy(t.name, threadName, sizeof t.name - 1);
      t.name[sizeof t.name - 1] = '\0';
      t.self.store(self, std::memory_order_release);
      slot = &t;
      break;
    }
  }
  // A full table only costs the name in the report.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    *failure = {"prctl(PR_SET_NO_NEW_PRIVS)", errno};
  } else {
    sock_fprog fprog;
    fprog.len = static_cast<unsigned short>(prog.size());
    fprog.filter = const_cast<sock_filter*>(prog.data());
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == 0) return true;
    *failure = {"seccomp(SECCOMP_SET_MODE_FILTER)", errno};
  }
  if (slot != nullptr) slot->self.store(0, std::memory_order_release);
  return false;
}

void ForgetFilteredThread() {
  NamedThread* t = FindThread(static_cast<uintptr_t>(pthread_self()));
  if (t != nullptr) t->self.store(0, std::memory_order_release);
}

}  // namespace kindling
