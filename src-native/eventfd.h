// eventfd(2) helpers exposed to JavaScript (ioeventfd/irqfd plumbing).
#pragma once

#include <napi.h>

namespace kindling {

Napi::Value EventFd(const Napi::CallbackInfo& info);
Napi::Value EventFdWrite(const Napi::CallbackInfo& info);
Napi::Value EventFdRead(const Napi::CallbackInfo& info);
Napi::Value CloseFd(const Napi::CallbackInfo& info);
Napi::Value ResidentPages(const Napi::CallbackInfo& info);

/** Reads and resets an eventfd counter; 0 if it was zero. Returns -errno on failure. */
int64_t ReadEventFdCounter(int fd, uint64_t* count);

}  // namespace kindling
