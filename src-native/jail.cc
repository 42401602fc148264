// Jailed mode support: socket pairs, SCM_RIGHTS, KVM from a passed descriptor, whole-process
// seccomp. See jail.h and lib/native/types.ts.
#include "jail.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "addon_data.h"
#include "convert.h"
#include "errors.h"
#include "seccomp.h"

namespace kindling {

namespace {

/** SCM_MAX_FD: the most descriptors one SCM_RIGHTS message can carry. */
constexpr uint32_t kMaxFdsPerMessage = 253;
/** Largest payload of one message (the protocol keeps descriptor messages small). */
constexpr uint32_t kMaxMessageBytes = 1 << 20;

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

}  // namespace

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string kind = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  int type;
  if (kind == "stream") type = SOCK_STREAM;
  else if (kind == "seqpacket") type = SOCK_SEQPACKET;
  else ThrowType(env, "socketPair: kind must be 'stream' or 'seqpacket'");
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) ThrowErrno(env, "socketpair", errno);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, sv[0]));
  out.Set(1u, Napi::Number::New(env, sv[1]));
  return out;
}

Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int sock = ArgFd(info, 0);
  if (info.Length() < 3) ThrowType(env, "sendFds(socket, data, fds)");
  ByteView data = BytesOf(env, info[1], "data");
  if (data.size == 0 || data.size > kMaxMessageBytes) ThrowRange(env, "sendFds: data must be 1 byte to 1 MiB");
  if (!info[2].IsArray()) ThrowType(env, "sendFds: fds must be an array of descriptors");
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxFdsPerMessage) ThrowRange(env, "sendFds: at most 253 descriptors per message");
  std::vector<int> fds;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsNumber()) ThrowType(env, "sendFds: fds must be an array of descriptors");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 2147483647.0 || d != static_cast<double>(static_cast<int>(d))) ThrowRange(env, "sendFds: bad descriptor");
    fds.push_back(static_cast<int>(d));
  }
  struct iovec iov;
  iov.iov_base = const_cast<uint8_t*>(data.data);
  iov.iov_len = data.size;
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "sendmsg", errno);
  if (static_cast<size_t>(n) != data.size) ThrowErrno(env, "sendmsg", EMSGSIZE, "the message was cut");
  return env.Undefined();
}

Napi::Value ReceiveFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int sock = ArgFd(info, 0);
  const uint32_t maxBytes = ArgU32(info, 1, "maxBytes");
  const uint32_t maxFds = ArgU32(info, 2, "maxFds");
  if (maxBytes == 0 || maxBytes > kMaxMessageBytes) ThrowRange(env, "receiveFds: maxBytes must be 1 to 1 MiB");
  if (maxFds > kMaxFdsPerMessage) ThrowRange(env, "receiveFds: maxFds must be at most 253");
  std::vector<uint8_t> buf(maxBytes);
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (maxFds == 0 ? 1 : maxFds)), 0);
  struct iovec iov;
  iov.iov_base = buf.data();
  iov.iov_len = buf.size();
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, "recvmsg", errno);
  }
  std::vector<int> fds;
  for (struct cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(cm));
    for (size_t i = 0; i < count; i++) fds.push_back(p[i]);
  }
  // A cut message or descriptor list cannot be matched to what the sender meant: refuse it whole.
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || fds.size() > maxFds) {
    CloseAll(fds);
    ThrowErrno(env, "recvmsg", EMSGSIZE, "the message or its descriptors were cut");
  }
  Napi::Object out = Napi::Object::New(env);
  try {
    out.Set("data", CopyToBuffer(env, buf.data(), static_cast<size_t>(n)));
    Napi::Array list = Napi::Array::New(env, fds.size());
    for (size_t i = 0; i < fds.size(); i++) list.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
    out.Set("fds", list);
  } catch (...) {
    CloseAll(fds);
    throw;
  }
  return out;
}

Napi::Value AdoptKvm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  return GetAddonData(env)->kvmCtor.New({Napi::External<int>::New(env, &fd)});
}

Napi::Value InstallProcessSeccomp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) ThrowType(env, "installProcessSeccomp(filter: Uint8Array)");
  ByteView bytes = BytesOf(env, info[0], "filter");
  SeccompProgram prog;
  if (!ParseSeccompProgram(bytes.data, bytes.size, &prog)) ThrowRange(env, "filter must be 1..4096 instructions of 8 bytes");
  const int err = InstallSigsysReporter();
  if (err != 0) ThrowErrno(env, "sigaction(SIGSYS)", err);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ThrowErrno(env, "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  sock_fprog fprog;
  fprog.len = static_cast<unsigned short>(prog.size());
  fprog.filter = prog.data();
  // TSYNC: every thread of the process at once (Node's, libuv's, V8's), or none. no_new_privs,
  // set above on this thread, is synchronized with it. A positive result names a thread that
  // could not be synchronized (it has a filter of its own that is not an ancestor of ours).
  const long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
  if (r < 0) ThrowErrno(env, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)", errno);
  if (r > 0) ThrowErrno(env, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)", ESRCH, "thread " + std::to_string(r) + " could not be synchronized");
  return env.Undefined();
}

}  // namespace kindling
