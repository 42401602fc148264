// Installing a seccomp-BPF program on the calling thread, and the SIGSYS report when a filtered
// thread makes a call its program refuses. The program itself comes from lib/seccomp: the addon
// decides nothing about which calls are allowed.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kindling {

/** A classic-BPF program for seccomp(SECCOMP_SET_MODE_FILTER). */
using SeccompProgram = std::vector<sock_filter>;

/** BPF_MAXINSNS: the kernel refuses longer programs. */
constexpr size_t kMaxSeccompInstructions = 4096;

/**
 * Decodes `len` bytes of `struct sock_filter` records (8 bytes each, little endian: u16 code,
 * u8 jt, u8 jf, u32 k). False unless there are 1..4096 whole records.
 */
bool ParseSeccompProgram(const uint8_t* data, size_t len, SeccompProgram* out);

/**
 * Makes sure the process's SIGSYS handler is the one that reports a refused call of a filtered
 * thread on stderr and then lets the kernel kill the process with SIGSYS (installing it again if
 * something replaced it; called before each filtered thread starts). SIGSYS for threads the addon
 * did not filter goes to the handler that was there before. Returns 0 or errno.
 *
 * Should another handler replace it while a filtered thread runs, a refused call still does not
 * happen (the trap skips it); the thread then sees ENOSYS instead of ending the process.
 */
int InstallSigsysReporter();

/** Which step of InstallThreadFilter failed. */
struct FilterFailure {
  const char* op = nullptr;
  int err = 0;
};

/**
 * On the calling thread only (no SECCOMP_FILTER_FLAG_TSYNC): registers `threadName` for the
 * SIGSYS report, sets no_new_privs (prctl) and installs `prog`. From then on every system call of
 * this thread goes through `prog`; nothing undoes it. Returns false and fills `failure` when the
 * kernel refuses (then the thread is not filtered).
 */
bool InstallThreadFilter(const SeccompProgram& prog, const char* threadName, FilterFailure* failure);

/** Forgets the calling thread's report name (last thing a filtered thread does). */
void ForgetFilteredThread();

}  // namespace kindling
