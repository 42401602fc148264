#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <sched.h>

#include <cstring>
#include <string>
#include <thread>

#include "convert.h"
#include "errors.h"

namespace kindling {

namespace {

// struct virtio_net_hdr_v1: the 12-byte header of virtio 1.x (num_buffers always present).
constexpr int kVnetHdrSize = 12;
// Linux's UIO_MAXIOV.
constexpr uint32_t kMaxSpans = 1024;
// Offload flag sets tried in turn, most capable first: a kernel refuses flags it does not know
// with EINVAL ("a way to test for new features", drivers/net/tun.c).
constexpr unsigned kOffloadProbes[] = {
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
};

/** The spans of a call, resolved to host pointers and checked against their buffers. */
int BuildIovec(const Napi::CallbackInfo& info, struct iovec* iov, size_t* total) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsArray() || !info[2].IsTypedArray()) {
    ThrowType(env, "expected (fd, buffers: ArrayBuffer[], spans: Float64Array, count)");
  }
  Napi::Array buffers = info[1].As<Napi::Array>();
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array) ThrowType(env, "spans must be a Float64Array");
  const uint32_t count = ArgU32(info, 3, "count");
  if (count > kMaxSpans) ThrowRange(env, "more than 1024 spans");
  if (static_cast<size_t>(count) * 3 > ta.ElementLength()) ThrowRange(env, "count exceeds the spans array");
  const double* spans = info[2].As<Napi::Float64Array>().Data();

  // Buffers are few (guest memory regions): resolve each once per call.
  constexpr uint32_t kMaxBuffers = 64;
  const uint32_t nbuf = buffers.Length();
  if (nbuf > kMaxBuffers) ThrowRange(env, "more than 64 buffers");
  uint8_t* base[kMaxBuffers];
  size_t size[kMaxBuffers];
  for (uint32_t i = 0; i < nbuf; i++) {
    Napi::Value v = buffers[i];
    if (!v.IsArrayBuffer()) ThrowType(env, "buffers must be ArrayBuffers");
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    base[i] = static_cast<uint8_t*>(ab.Data());
    size[i] = ab.ByteLength();  // 0 once detached: every span then fails the check below
  }
  *total = 0;
  for (uint32_t i = 0; i < count; i++) {
    const double b = spans[3 * i], off = spans[3 * i + 1], len = spans[3 * i + 2];
    if (!(b >= 0 && b < nbuf) || b != static_cast<double>(static_cast<uint32_t>(b))) ThrowRange(env, "span names a buffer that does not exist");
    const uint32_t bi = static_cast<uint32_t>(b);
    if (!(off >= 0 && len >= 0) || off != static_cast<double>(static_cast<size_t>(off)) ||
        len != static_cast<double>(static_cast<size_t>(len)) || off + len > static_cast<double>(size[bi])) {
      ThrowRange(env, "span lies outside its buffer");
    }
    iov[i].iov_base = base[bi] + static_cast<size_t>(off);
    iov[i].iov_len = static_cast<size_t>(len);
    *total += iov[i].iov_len;
  }
  return static_cast<int>(count);
}

}  // namespace

namespace {

/** What opening a TAP produced: the descriptor and facts, or the failing step and errno. */
struct TapOpen {
  int fd = -1;
  std::string name;
  unsigned offloads = 0;
  const char* op = nullptr;
  int err = 0;
  std::string detail;
};

TapOpen Failed(int fd, const char* op, int err, const std::string& detail) {
  if (fd >= 0) close(fd);
  TapOpen r;
  r.op = op;
  r.err = err;
  r.detail = detail;
  return r;
}

/** The TAP `name` of the calling thread's network namespace (plain C++: may run on any thread). */
TapOpen OpenTapHere(const std::string& name) {
  // TUNSETIFF creates a missing interface (given CAP_NET_ADMIN); a NIC must only attach to an
  // existing one, so check first. (An interface deleted in between would be re-created.)
  if (if_nametoindex(name.c_str()) == 0) return Failed(-1, "if_nametoindex", errno == 0 ? ENODEV : errno, name);
  const int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Failed(-1, "open", errno, "/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) return Failed(fd, "TUNSETIFF", errno, name);
  int hdr = kVnetHdrSize;
  if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) return Failed(fd, "TUNSETVNETHDRSZ", errno, name);
  unsigned accepted = 0;
  for (unsigned flags : kOffloadProbes) {
    if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) == 0) {
      accepted = flags;
      break;
    }
    if (errno != EINVAL) return Failed(fd, "TUNSETOFFLOAD", errno, name);
  }
  // Start with no offloads: the kernel may send GSO frames only once the driver accepted them.
  if (ioctl(fd, TUNSETOFFLOAD, 0UL) < 0) return Failed(fd, "TUNSETOFFLOAD", errno, name);
  TapOpen r;
  r.fd = fd;
  r.name.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  r.offloads = accepted;
  return r;
}

}  // namespace

Napi::Value OpenTap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) ThrowType(env, "openTap: name must be a string");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name.empty() || name.size() >= IFNAMSIZ) ThrowRange(env, "openTap: interface names are 1-15 bytes");
  TapOpen r;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsString()) ThrowType(env, "openTap: netns must be the path of a network namespace");
    const std::string netns = info[1].As<Napi::String>().Utf8Value();
    const int nsFd = open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsFd < 0) ThrowErrno(env, "open", errno, netns);
    // A network namespace is a thread's: a short-lived thread enters it and opens the TAP there
    // (the TAP belongs to the namespace it was attached in), and this thread never leaves its own.
    std::thread t([&] {
      if (setns(nsFd, CLONE_NEWNET) != 0) r = Failed(-1, "setns", errno, netns);
      else r = OpenTapHere(name);
    });
    t.join();
    close(nsFd);
  } else {
    r = OpenTapHere(name);
  }
  if (r.op != nullptr) ThrowErrno(env, r.op, r.err, r.detail);
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, r.fd));
  out.Set("name", Napi::String::New(env, r.name));
  out.Set("offloads", Napi::Number::New(env, r.offloads));
  return out;
}

Napi::Value TapSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  const uint32_t flags = ArgU32(info, 1, "flags");
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) ThrowErrno(env, "TUNSETOFFLOAD", errno);
  return env.Undefined();
}

Napi::Value ReadvSpans(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  struct iovec iov[kMaxSpans];
  size_t total = 0;
  const int n = BuildIovec(info, iov, &total);
  for (;;) {
    const ssize_t r = readv(fd, iov, n);
    if (r >= 0) return Napi::Number::New(env, static_cast<double>(r));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    ThrowErrno(env, "readv", errno);
  }
}

Napi::Value WritevSpans(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  struct iovec iov[kMaxSpans];
  size_t total = 0;
  const int n = BuildIovec(info, iov, &total);
  for (;;) {
    const ssize_t r = writev(fd, iov, n);
    if (r >= 0) return Napi::Number::New(env, static_cast<double>(r));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    ThrowErrno(env, "writev", errno);
  }
}

}  // namespace kindling
