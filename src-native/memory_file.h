// Guest memory to and from snapshot memory files, off the JavaScript thread. Plain C++ (no N-API):
// src-native/vm_snapshot.cc runs these on libuv's thread pool.
//
// A memory file is an image of one guest memory mapping: byte i of the file is byte i of the
// mapping. Pages that were never written are holes, so a file is as large as the guest's memory
// but occupies only what the guest used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kindling {

/** What a write or read moved; `err`/`op` name the failing call (0 / "" on success). */
struct MemoryFileResult {
  int err = 0;
  std::string op;
  std::string detail;
  uint64_t bytes = 0;        // bytes written or read
  uint64_t pagesWritten = 0; // pages written (write only)
  uint64_t pagesZero = 0;    // pages skipped because they held only zeros (full writes)
  uint64_t pagesAbsent = 0;  // pages skipped because they were never touched (full writes)
};

/** The page size memory files are made of (x86-64 base pages, KVM's dirty-log granularity). */
constexpr uint64_t kMemoryFilePage = 4096;

/**
 * Writes `size` bytes at `addr` (page-aligned) to a new file `path` (created or truncated, sized
 * `size`). With `pages` empty ("full"), every page that holds a non-zero byte is written and the
 * rest stay holes; `anonymous` lets untouched pages be skipped without reading them
 * (/proc/self/pagemap). With `pages` given (bit i, LSB first in byte i/8, = page i), exactly those
 * pages are written, zero pages included: a diff must be able to say "this page became zero".
 */
MemoryFileResult WriteMemoryFile(const uint8_t* addr, uint64_t size, const std::string& path, bool anonymous,
                                 const std::vector<uint8_t>& pages, bool sync);

/**
 * Reads the data extents of file `path` (SEEK_DATA/SEEK_HOLE) into `size` bytes at `addr`; holes
 * are left as they are (zero in a fresh anonymous mapping). The file must not be larger than `size`.
 */
MemoryFileResult ReadMemoryFile(uint8_t* addr, uint64_t size, const std::string& path);

/**
 * ReadMemoryFile from an open descriptor instead of a path (a jailed child's memory file comes
 * as a descriptor); `fd` is read with pread and not closed; `name` only labels errors.
 */
MemoryFileResult ReadMemoryFileFd(uint8_t* addr, uint64_t size, int fd, const std::string& name);

}  // namespace kindling
