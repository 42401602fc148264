// Host memory operations on guest RAM for the balloon: giving pages back to the host kernel, and
// anonymous mappings for tests and benchmarks that need real (RSS-accounted) memory without a VM.
#pragma once

#include <napi.h>

namespace kindling {

/**
 * discardMemory(buffer, offset, length): madvise(MADV_DONTNEED) on [offset, offset+length) of an
 * ArrayBuffer's memory. The range must lie inside the buffer (RangeError) and start on a page
 * boundary of the host (EINVAL from madvise otherwise). For private anonymous memory the pages are
 * freed at once and read back as zeros.
 */
Napi::Value DiscardMemory(const Napi::CallbackInfo& info);

/** mapAnonymous(size): a fresh private anonymous MAP_NORESERVE mapping as an ArrayBuffer (unmapped when collected). */
Napi::Value MapAnonymous(const Napi::CallbackInfo& info);

/** pageSize(): sysconf(_SC_PAGESIZE). */
Napi::Value PageSize(const Napi::CallbackInfo& info);

}  // namespace kindling
