// TAP devices for virtio-net: opening an existing TAP with a virtio header, TUNSETOFFLOAD, and
// readv/writev between a descriptor and ranges of ArrayBuffers (guest memory), so frames move
// between the kernel and guest buffers with no copy in between. See lib/native/types.ts.
#pragma once

#include <napi.h>

namespace kindling {

/** Module function `openTap(name, netns?)` -> { fd, name, offloads }. */
Napi::Value OpenTap(const Napi::CallbackInfo& info);
/** Module function `tapSetOffload(fd, flags)`. */
Napi::Value TapSetOffload(const Napi::CallbackInfo& info);
/** Module function `readvSpans(fd, buffers, spans, count)` -> bytes, or -1 on EAGAIN. */
Napi::Value ReadvSpans(const Napi::CallbackInfo& info);
/** Module function `writevSpans(fd, buffers, spans, count)` -> bytes, or -1 on EAGAIN. */
Napi::Value WritevSpans(const Napi::CallbackInfo& info);

}  // namespace kindling
