// What the jailed mode (lib/jail) needs from the kernel: socket pairs, descriptors passed with
// SCM_RIGHTS, a KVM handle made from a passed descriptor, and a seccomp filter for the whole
// process. Policy-free: lib/jail decides what is passed and lib/seccomp what is allowed.
#pragma once

#include <napi.h>

namespace kindling {

/** Module function `socketPair(kind: 'stream' | 'seqpacket')` -> [fd, fd] (close-on-exec). */
Napi::Value SocketPair(const Napi::CallbackInfo& info);
/** Module function `sendFds(socket, data, fds)`: one sendmsg with SCM_RIGHTS, non-blocking. */
Napi::Value SendFds(const Napi::CallbackInfo& info);
/** Module function `receiveFds(socket, maxBytes, maxFds)` -> { data, fds } | null (EAGAIN). */
Napi::Value ReceiveFds(const Napi::CallbackInfo& info);
/** Module function `adoptKvm(fd)` -> NativeKvm owning `fd`. */
Napi::Value AdoptKvm(const Napi::CallbackInfo& info);
/** Module function `installProcessSeccomp(filter)`: no_new_privs, then the filter on every thread. */
Napi::Value InstallProcessSeccomp(const Napi::CallbackInfo& info);

}  // namespace kindling
