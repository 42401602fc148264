#include "memory_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace kindling {

namespace {

// /proc/self/pagemap: one u64 per virtual page; bit 63 = present in RAM, bit 62 = swapped out
// (Documentation/admin-guide/mm/pagemap.rst). Either means the page has contents of its own.
constexpr uint64_t kPagemapPresent = uint64_t(1) << 63;
constexpr uint64_t kPagemapSwapped = uint64_t(1) << 62;
// Pages examined per pagemap read (32 KiB of entries, 16 MiB of guest memory).
constexpr uint64_t kPagemapBatch = 4096;
// Largest single pwrite: a run of pages to write is split at this size.
constexpr uint64_t kMaxWriteRun = uint64_t(8) << 20;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

bool IsZeroPage(const uint8_t* p) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < kMemoryFilePage / 8; i += 8) {
    if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) != 0) return false;
  }
  return true;
}

bool Fail(MemoryFileResult* r, const char* op, int err, const std::string& detail = "") {
  r->err = err;
  r->op = op;
  r->detail = detail;
  return false;
}

// Writes [off, off+len) of the mapping at the same file offset, retrying short writes and EINTR.
bool WriteRun(int fd, const uint8_t* addr, uint64_t off, uint64_t len, MemoryFileResult* r) {
  while (len > 0) {
    const size_t chunk = static_cast<size_t>(std::min(len, kMaxWriteRun));
    const ssize_t n = pwrite(fd, addr + off, chunk, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(r, "pwrite", errno);
    }
    if (n == 0) return Fail(r, "pwrite", EIO, "wrote nothing");
    off += static_cast<uint64_t>(n);
    len -= static_cast<uint64_t>(n);
    r->bytes += static_cast<uint64_t>(n);
  }
  return true;
}

bool BitSet(const std::vector<uint8_t>& bits, uint64_t i) {
  const uint64_t byte = i / 8;
  return byte < bits.size() && ((bits[byte] >> (i % 8)) & 1) != 0;
}

}  // namespace

MemoryFileResult WriteMemoryFile(const uint8_t* addr, uint64_t size, const std::string& path, bool anonymous,
                                 const std::vector<uint8_t>& pages, bool sync) {
  MemoryFileResult r;
  if (size % kMemoryFilePage != 0 || reinterpret_cast<uintptr_t>(addr) % kMemoryFilePage != 0) {
    Fail(&r, "write memory file", EINVAL, "memory is not page-aligned");
    return r;
  }
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) {
    Fail(&r, "open", errno, path);
    return r;
  }
  if (ftruncate(fd.get(), static_cast<off_t>(size)) < 0) {
    Fail(&r, "ftruncate", errno, path);
    return r;
  }
  const uint64_t npages = size / kMemoryFilePage;
  const bool diff = !pages.empty();

  // Only for full writes of anonymous memory: a page the guest never touched is not in the
  // page tables at all, and reading it just to find zeros would fault in the zero page.
  Fd pagemap(anonymous && !diff ? open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC) : -1);
  std::vector<uint64_t> entries;
  uint64_t entriesBase = 0;
  if (pagemap.get() >= 0) entries.reserve(kPagemapBatch);

  uint64_t runStart = 0;
  uint64_t runLen = 0;  // pages
  auto flush = [&]() -> bool {
    if (runLen == 0) return true;
    const bool ok = WriteRun(fd.get(), addr, runStart * kMemoryFilePage, runLen * kMemoryFilePage, &r);
    runLen = 0;
    return ok;
  };

  for (uint64_t i = 0; i < npages; i++) {
    bool write;
    if (diff) {
      write = BitSet(pages, i);
    } else {
      bool absent = false;
      if (pagemap.get() >= 0) {
        if (entries.empty() || i >= entriesBase + entries.size()) {
          entriesBase = i;
          const uint64_t want = std::min(kPagemapBatch, npages - i);
          entries.assign(want, 0);
          const uint64_t vpage = (reinterpret_cast<uintptr_t>(addr) / kMemoryFilePage) + i;
          const ssize_t n = pread(pagemap.get(), entries.data(), want * 8, static_cast<off_t>(vpage * 8));
          if (n != static_cast<ssize_t>(want * 8)) {
            // pagemap unusable (restricted, or a short read): examine every page's contents instead.
            close(pagemap.release());
            entries.clear();
          }
        }
        if (!entries.empty()) {
          const uint64_t e = entries[i - entriesBase];
          absent = (e & (kPagemapPresent | kPagemapSwapped)) == 0;
        }
      }
      if (absent) {
        r.pagesAbsent++;
        write = false;
      } else if (IsZeroPage(addr + i * kMemoryFilePage)) {
        r.pagesZero++;
        write = false;
      } else {
        write = true;
      }
    }
    if (write) {
      if (runLen == 0) runStart = i;
      runLen++;
      r.pagesWritten++;
      if (runLen * kMemoryFilePage >= kMaxWriteRun && !flush()) return r;
    } else if (!flush()) {
      return r;
    }
  }
  if (!flush()) return r;
  if (sync && fdatasync(fd.get()) < 0) {
    Fail(&r, "fdatasync", errno, path);
    return r;
  }
  if (close(fd.release()) < 0) Fail(&r, "close", errno, path);
  return r;
}

MemoryFileResult ReadMemoryFile(uint8_t* addr, uint64_t size, const std::string& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    MemoryFileResult r;
    Fail(&r, "open", errno, path);
    return r;
  }
  return ReadMemoryFileFd(addr, size, fd.get(), path);
}

MemoryFileResult ReadMemoryFileFd(uint8_t* addr, uint64_t size, int fileFd, const std::string& path) {
  MemoryFileResult r;
  struct stat st;
  if (fstat(fileFd, &st) < 0) {
    Fail(&r, "fstat", errno, path);
    return r;
  }
  const uint64_t fileSize = static_cast<uint64_t>(st.st_size);
  if (fileSize > size) {
    Fail(&r, "read memory file", EFBIG, path + " holds " + std::to_string(fileSize) + " bytes, the memory " + std::to_string(size));
    return r;
  }
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < fileSize) {
    off_t data = lseek(fileFd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after pos: the rest is a hole
      if (errno == EINVAL) {
        data = pos;  // the filesystem cannot tell holes: read everything
      } else {
        Fail(&r, "lseek", errno, path);
        return r;
      }
    }
    off_t hole = lseek(fileFd, data, SEEK_HOLE);
    if (hole < 0) hole = static_cast<off_t>(fileSize);
    uint64_t off = static_cast<uint64_t>(data);
    const uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), fileSize);
    while (off < end) {
      const size_t chunk = static_cast<size_t>(std::min(end - off, kMaxWriteRun));
      const ssize_t n = pread(fileFd, addr + off, chunk, static_cast<off_t>(off));
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail(&r, "pread", errno, path);
        return r;
      }
      if (n == 0) {
        Fail(&r, "pread", EIO, path + " shrank while it was read");
        return r;
      }
      off += static_cast<uint64_t>(n);
      r.bytes += static_cast<uint64_t>(n);
    }
    pos = static_cast<off_t>(end);
  }
  return r;
}

}  // namespace kindling
