// UdpSocket: a non-blocking UDP socket (IPv4 or IPv6) on the shared BatchSocket
// machinery (batch_socket.h): recvmmsg batches with per-datagram source address,
// port and scope id handed to JS in one call; sendmmsg with a per-datagram
// destination and an ordered queue for EAGAIN/ENOBUFS.
//
// UDP specifics:
// - No SO_REUSEADDR: a second socket on the same address and port fails with
//   EADDRINUSE. IPV6_V6ONLY is set explicitly either way (not left to
//   net.ipv6.bindv6only).
// - IP_RECVERR (and IPV6_RECVERR): without it Linux drops every ICMP error for an
//   unconnected UDP socket, so "port unreachable" (ECONNREFUSED) would never be
//   seen. With it each ICMP error lands in the socket's error queue (POLLERR) and
//   also sets the socket error, which the next send or receive call returns once.
//   The error queue is read on every POLLERR and each entry is reported in the
//   batch's `errors` with the destination it was about; the socket error is
//   cleared with SO_ERROR afterwards (it duplicates an entry). A send that fails
//   only because it consumed that pending socket error is retried (retry_send_errors).
// - POLLOUT is reliable after EAGAIN (send buffer accounting), so a blocked queue
//   waits for writability; ENOBUFS (a dropped packet, reported because of
//   IP_RECVERR) is retried with the timer backoff.
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "batch_socket.h"

namespace iwpm {
namespace {

constexpr uint32_t kDefaultBatch = 64;
constexpr uint32_t kMaxBatch = 1024;
constexpr uint32_t kDefaultSlot = 2048;
constexpr uint32_t kMaxSlot = 65536;

// 16-byte address layout shared with JS: IPv4 in bytes 0-3 (rest zero), IPv6 all 16.
void ExportAddr(const SockAddr& a, uint8_t* out16, uint16_t* port, uint32_t* scope) {
  std::memset(out16, 0, 16);
  *port = 0;
  *scope = 0;
  if (a.sa.sa_family == AF_INET) {
    std::memcpy(out16, &a.in4.sin_addr, 4);
    *port = ntohs(a.in4.sin_port);
  } else if (a.sa.sa_family == AF_INET6) {
    std::memcpy(out16, &a.in6.sin6_addr, 16);
    *port = ntohs(a.in6.sin6_port);
    *scope = a.in6.sin6_scope_id;
  }
}

// Optional boolean option; false after throwing.
bool GetBoolOption(const Napi::Object& o, const char* key, bool def, bool* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    *out = def;
    return true;
  }
  if (!v.IsBoolean()) {
    Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a boolean").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

// Builds the local address from options.address (absent = wildcard) and port.
// IPv6 accepts a "%scope" suffix (interface name or index). False after throwing.
bool ParseLocal(const Napi::Object& o, int family, uint16_t port, SockAddr* out) {
  Napi::Env env = o.Env();
  std::memset(out, 0, sizeof *out);
  Napi::Value v = o.Get("address");
  std::string text;
  if (!v.IsUndefined()) {
    if (!v.IsString()) {
      Napi::TypeError::New(env, "options.address must be a string").ThrowAsJavaScriptException();
      return false;
    }
    text = v.As<Napi::String>().Utf8Value();
  }
  if (family == 4) {
    out->in4.sin_family = AF_INET;
    out->in4.sin_port = htons(port);
    out->in4.sin_addr.s_addr = htonl(INADDR_ANY);
    if (!text.empty() && inet_pton(AF_INET, text.c_str(), &out->in4.sin_addr) != 1) {
      Napi::TypeError::New(env, "options.address is not an IPv4 address: " + text).ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }
  out->in6.sin6_family = AF_INET6;
  out->in6.sin6_port = htons(port);
  out->in6.sin6_addr = in6addr_any;
  if (text.empty()) return true;
  std::string addr = text;
  size_t pct = text.find('%');
  if (pct != std::string::npos) {
    addr = text.substr(0, pct);
    std::string scope = text.substr(pct + 1);
    char* end = nullptr;
    unsigned long idx = scope.empty() ? 0 : std::strtoul(scope.c_str(), &end, 10);
    if (scope.empty() || *end != '\0') idx = if_nametoindex(scope.c_str());
    if (idx == 0) {
      Napi::TypeError::New(env, "options.address has an unknown scope: " + text).ThrowAsJavaScriptException();
      return false;
    }
    out->in6.sin6_scope_id = static_cast<uint32_t>(idx);
  }
  if (inet_pton(AF_INET6, addr.c_str(), &out->in6.sin6_addr) != 1) {
    Napi::TypeError::New(env, "options.address is not an IPv6 address: " + text).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool IsTyped(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

class UdpSocket : public Napi::ObjectWrap<UdpSocket>, public BatchSocket {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UdpSocket",
                       {InstanceAccessor<&UdpSocket::Port>("port"),
                        InstanceAccessor<&UdpSocket::RcvbufBytes>("rcvbufBytes"),
                        InstanceAccessor<&UdpSocket::SndbufBytes>("sndbufBytes"),
                        InstanceMethod<&UdpSocket::Send>("send"), InstanceMethod<&UdpSocket::Stats>("stats"),
                        InstanceMethod<&UdpSocket::Close>("close")});
  }

  explicit UdpSocket(const Napi::CallbackInfo& info);

 private:
  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_); }
  Napi::Value RcvbufBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rcvbuf_); }
  Napi::Value SndbufBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), sndbuf_); }
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  int Open(const SockAddr& local, bool v6only, int rcvbuf, int sndbuf, const char** syscall);
  Napi::Object Self() override { return Value(); }
  void Deliver(uint32_t got, RxErrors& errs) override;
  void OnRecvError(int err, RxErrors& errs) override { ReadErrors(errs, err); }
  void OnPollError(RxErrors& errs) override { ReadErrors(errs, 0); }
  uint32_t ReadErrorQueue(RxErrors& errs);
  void ReadErrors(RxErrors& errs, int pending);

  int family_ = 4;
  uint16_t port_ = 0;
  int rcvbuf_ = 0;
  int sndbuf_ = 0;
  bool referenced_ = false;
  // send() scratch, reused across calls (not touched after JS may have run).
  std::vector<iovec> send_iov_;
  std::vector<SockAddr> send_dest_;
};

UdpSocket::UdpSocket(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<UdpSocket>(info),
      BatchSocket(Policy{/*enobufs_is_overrun=*/false, /*writable_is_reliable=*/true, /*retry_send_errors=*/true}) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsFunction() || !info[2].IsFunction()) {
    Napi::TypeError::New(env, "UdpSocket(options, onBatch, onError) expects an object and two functions")
        .ThrowAsJavaScriptException();
    return;
  }
  Napi::Object o = info[0].As<Napi::Object>();
  int64_t family, port, rcvbuf, sndbuf, batch, slot;
  bool v6only = true;
  if (!GetIntOption(o, "family", -1, 4, 6, &family)) return;
  if (family == 5) {
    Napi::TypeError::New(env, "options.family must be 4 or 6").ThrowAsJavaScriptException();
    return;
  }
  SockAddr local;
  if (!GetIntOption(o, "port", -1, 0, 65535, &port) || !GetBoolOption(o, "v6Only", true, &v6only) ||
      !GetIntOption(o, "rcvbufBytes", 0, 0, INT32_MAX, &rcvbuf) ||
      !GetIntOption(o, "sndbufBytes", 0, 0, INT32_MAX, &sndbuf) ||
      !GetIntOption(o, "batchSize", kDefaultBatch, 1, kMaxBatch, &batch) ||
      !GetIntOption(o, "slotBytes", kDefaultSlot, 1, kMaxSlot, &slot) ||
      !ParseLocal(o, static_cast<int>(family), static_cast<uint16_t>(port), &local)) {
    return;
  }
  family_ = static_cast<int>(family);

  const char* syscall = "socket";
  int err = Open(local, v6only, static_cast<int>(rcvbuf), static_cast<int>(sndbuf), &syscall);
  if (err != 0) {
    Shutdown();
    ThrowErrno(env, err, syscall);
    return;
  }
  InitRx(static_cast<uint32_t>(batch), static_cast<uint32_t>(slot),
         family_ == 4 ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
  Attach(env, info[1].As<Napi::Function>(), info[2].As<Napi::Function>(), "iwpm.UdpSocket", Value());
  Ref();  // an open socket keeps its JS object alive, like a Node handle
  referenced_ = true;
}

int UdpSocket::Open(const SockAddr& local, bool v6only, int rcvbuf, int sndbuf, const char** syscall) {
  const int af = local.sa.sa_family;
  *syscall = "socket";
  fd_ = socket(af, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return errno;
  const int on = 1;
  *syscall = "setsockopt";
  if (af == AF_INET6) {
    const int v = v6only ? 1 : 0;
    if (setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v) != 0) return errno;
    if (setsockopt(fd_, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof on) != 0) return errno;
  }
  // ICMPv4 errors for a dual-stack IPv6 socket are governed by IP_RECVERR.
  if ((af == AF_INET || !v6only) && setsockopt(fd_, IPPROTO_IP, IP_RECVERR, &on, sizeof on) != 0) return errno;
  const char* option;
  int err = SetBufferSize(fd_, true, rcvbuf, &rcvbuf_, &option, syscall);
  if (err == 0) err = SetBufferSize(fd_, false, sndbuf, &sndbuf_, &option, syscall);
  if (err != 0) return err;

  socklen_t len = af == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  *syscall = "bind";
  if (bind(fd_, &local.sa, len) != 0) return errno;
  SockAddr bound;
  std::memset(&bound, 0, sizeof bound);
  len = sizeof bound;
  *syscall = "getsockname";
  if (getsockname(fd_, &bound.sa, &len) != 0) return errno;
  port_ = ntohs(af == AF_INET ? bound.in4.sin_port : bound.in6.sin6_port);
  return StartPolling(Env(), syscall);
}

// --- receive ---------------------------------------------------------------------

// Reads up to batch_ entries of the error queue; each one with an errno is
// reported with the destination it was about. Returns the entries read.
uint32_t UdpSocket::ReadErrorQueue(RxErrors& errs) {
  uint32_t k = 0;
  alignas(cmsghdr) char control[512];
  uint8_t payload[64];  // the start of the offending datagram; not used
  while (k < batch_) {
    SockAddr dest;
    std::memset(&dest, 0, sizeof dest);
    iovec iov = {payload, sizeof payload};
    msghdr m;
    std::memset(&m, 0, sizeof m);
    m.msg_name = &dest;
    m.msg_namelen = sizeof dest;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    if (recvmsg(fd_, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
      if (errno == EINTR) continue;
      break;  // EAGAIN: empty
    }
    k++;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
      if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
          (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
        sock_extended_err ee;
        std::memcpy(&ee, CMSG_DATA(c), sizeof ee);
        if (ee.ee_errno != 0) errs.Add(-static_cast<int>(ee.ee_errno), m.msg_namelen > 0 ? &dest : nullptr);
        break;
      }
    }
  }
  return k;
}

// After POLLERR (pending == 0) or a receive error (pending = the errno recvmmsg
// returned, i.e. the socket error it consumed). The socket error duplicates an
// error-queue entry, so it is reported only when there is no entry for it.
void UdpSocket::ReadErrors(RxErrors& errs, int pending) {
  uint32_t k = ReadErrorQueue(errs);
  int so = 0;
  socklen_t len = sizeof so;
  if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &so, &len) != 0) so = 0;  // reads and clears it
  if (k == 0 && (pending != 0 || so != 0)) {
    // An entry may have been queued just after the first look (its socket error
    // comes after it): prefer it; otherwise the error had no entry (the queue was full).
    if (ReadErrorQueue(errs) == 0) errs.Add(-(pending != 0 ? pending : so), nullptr);
  }
}

void UdpSocket::Deliver(uint32_t got, RxErrors& errs) {
  Napi::Env env = Env();
  // One ArrayBuffer behind offsets, lengths, scopeIds (u32), srcPorts (u16), truncated (u8).
  Napi::ArrayBuffer meta = Napi::ArrayBuffer::New(env, static_cast<size_t>(got) * 15);
  auto* m32 = static_cast<uint32_t*>(meta.Data());
  uint32_t* scopes = m32 + 2 * got;
  auto* ports = reinterpret_cast<uint16_t*>(m32 + 3 * got);
  auto* truncated = reinterpret_cast<uint8_t*>(ports + got);
  Napi::Buffer<uint8_t> data = PackData(got, m32, m32 + got, truncated);
  Napi::Buffer<uint8_t> addrs = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(got) * 16);
  for (uint32_t i = 0; i < got; i++) ExportAddr(rx_addr_[i], addrs.Data() + 16 * i, &ports[i], &scopes[i]);

  size_t ne = errs.errors.size();
  Napi::Buffer<uint8_t> err_addrs = Napi::Buffer<uint8_t>::New(env, ne * 16);
  Napi::ArrayBuffer err_meta = Napi::ArrayBuffer::New(env, ne * 2);
  auto* err_ports = static_cast<uint16_t*>(err_meta.Data());
  for (size_t i = 0; i < ne; i++) {
    uint32_t scope;
    ExportAddr(errs.where[i], err_addrs.Data() + 16 * i, &err_ports[i], &scope);
  }

  Napi::Object batch = Napi::Object::New(env);
  batch.Set("count", Napi::Number::New(env, got));
  batch.Set("data", data);
  batch.Set("offsets", Napi::Uint32Array::New(env, got, meta, 0));
  batch.Set("lengths", Napi::Uint32Array::New(env, got, meta, 4 * got));
  batch.Set("truncated", Napi::Uint8Array::New(env, got, meta, 14 * got));
  batch.Set("srcPorts", Napi::Uint16Array::New(env, got, meta, 12 * got));
  batch.Set("srcAddrs", addrs);
  batch.Set("scopeIds", Napi::Uint32Array::New(env, got, meta, 8 * got));
  batch.Set("errors", ErrnoArray(env, errs.errors));
  batch.Set("errorAddrs", err_addrs);
  batch.Set("errorPorts", Napi::Uint16Array::New(env, ne, err_meta, 0));
  EmitBatch(batch);
}

// --- send ----------------------------------------------------------------------------

Napi::Value UdpSocket::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "send(datagrams: Uint8Array[], addrs: Buffer, ports: Uint16Array, scopeIds?: Uint32Array)";
  if (info.Length() < 3 || !info[0].IsArray()) {
    Napi::TypeError::New(env, usage).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (!IsTyped(info[1], napi_uint8_array) || info[1].As<Napi::Uint8Array>().ByteLength() < 16 * size_t{n}) {
    Napi::TypeError::New(env, "send: addrs must be a Buffer/Uint8Array of 16 bytes per datagram")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!IsTyped(info[2], napi_uint16_array) || info[2].As<Napi::Uint16Array>().ElementLength() < n) {
    Napi::TypeError::New(env, "send: ports must be a Uint16Array with one port per datagram")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool has_scopes = info.Length() > 3 && !info[3].IsUndefined();
  if (has_scopes && (!IsTyped(info[3], napi_uint32_array) || info[3].As<Napi::Uint32Array>().ElementLength() < n)) {
    Napi::TypeError::New(env, "send: scopeIds must be a Uint32Array with one scope id per datagram")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  send_iov_.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    if (!IsTyped(v, napi_uint8_array)) {
      Napi::TypeError::New(env, "send: datagrams[" + std::to_string(i) + "] is not a Buffer/Uint8Array")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    send_iov_[i] = {b.Data(), b.ByteLength()};
  }
  if (fd_ < 0) {
    ThrowErrno(env, EBADF, "send");
    return env.Undefined();
  }

  const uint8_t* addrs = info[1].As<Napi::Uint8Array>().Data();
  const uint16_t* ports = info[2].As<Napi::Uint16Array>().Data();
  const uint32_t* scopes = has_scopes ? info[3].As<Napi::Uint32Array>().Data() : nullptr;
  send_dest_.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    SockAddr& d = send_dest_[i];
    std::memset(&d, 0, sizeof d);
    if (family_ == 4) {
      d.in4.sin_family = AF_INET;
      d.in4.sin_port = htons(ports[i]);
      std::memcpy(&d.in4.sin_addr, addrs + 16 * size_t{i}, 4);
    } else {
      d.in6.sin6_family = AF_INET6;
      d.in6.sin6_port = htons(ports[i]);
      std::memcpy(&d.in6.sin6_addr, addrs + 16 * size_t{i}, 16);
      d.in6.sin6_scope_id = scopes != nullptr ? scopes[i] : 0;
    }
  }
  return Napi::Number::New(env, Submit(n, send_iov_.data(), send_dest_.data(), true));
}

// --- the rest ------------------------------------------------------------------------

Napi::Value UdpSocket::Stats(const Napi::CallbackInfo& info) { return StatsObject(info.Env()); }

Napi::Value UdpSocket::Close(const Napi::CallbackInfo& info) {
  Detach();  // break closure cycles so the object can be collected
  if (referenced_) {
    referenced_ = false;
    Unref();
  }
  return info.Env().Undefined();
}

}  // namespace

void InitUdpSocket(Napi::Env env, Napi::Object exports) { exports.Set("UdpSocket", UdpSocket::Define(env)); }

}  // namespace iwpm
