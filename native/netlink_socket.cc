// NetlinkSocket: a non-blocking AF_NETLINK datagram socket on the shared
// BatchSocket machinery (batch_socket.h): uv_poll on the current environment's
// loop, recvmmsg batches handed to JS in one call, sendmmsg with an ordered queue
// for what the receiver refuses for now (EAGAIN/ENOBUFS).
//
// Netlink specifics: ENOBUFS on receive is an overrun (the kernel dropped
// messages), and the socket reports itself writable even while the receiver is
// full, so a blocked queue is retried from a timer with exponential backoff.
#include <errno.h>
#include <linux/netlink.h>
#include <sys/socket.h>

#include <cstring>
#include <string>

#include "batch_socket.h"

namespace iwpm {
namespace {

constexpr uint32_t kDefaultBatch = 64;
constexpr uint32_t kMaxBatch = 1024;
constexpr uint32_t kDefaultSlot = 65536;
constexpr uint32_t kMaxSlot = 1u << 20;

SockAddr NlAddr(uint32_t pid, uint32_t groups) {
  SockAddr a;
  std::memset(&a, 0, sizeof a);
  a.nl.nl_family = AF_NETLINK;
  a.nl.nl_pid = pid;
  a.nl.nl_groups = groups;
  return a;
}

// Optional uint32 argument at info[i] (undefined -> 0). False after throwing.
bool ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t* out) {
  *out = 0;
  if (info.Length() <= i || info[i].IsUndefined()) return true;
  double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1.0;
  if (!info[i].IsNumber() || d < 0 || d > 4294967295.0 || d != static_cast<double>(static_cast<uint32_t>(d))) {
    Napi::TypeError::New(info.Env(), std::string(name) + " must be a uint32").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

class NetlinkSocket : public Napi::ObjectWrap<NetlinkSocket>, public BatchSocket {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NetlinkSocket",
                       {InstanceAccessor<&NetlinkSocket::PortId>("portId"),
                        InstanceAccessor<&NetlinkSocket::RcvbufBytes>("rcvbufBytes"),
                        InstanceAccessor<&NetlinkSocket::RcvbufOption>("rcvbufOption"),
                        InstanceMethod<&NetlinkSocket::Send>("send"),
                        InstanceMethod<&NetlinkSocket::AddMembership>("addMembership"),
                        InstanceMethod<&NetlinkSocket::Stats>("stats"),
                        InstanceMethod<&NetlinkSocket::Close>("close")});
  }

  explicit NetlinkSocket(const Napi::CallbackInfo& info);

 private:
  Napi::Value PortId(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_id_); }
  Napi::Value RcvbufBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rcvbuf_); }
  Napi::Value RcvbufOption(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), rcvbuf_opt_); }
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value AddMembership(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  int Open(int protocol, uint32_t port_id, uint32_t groups, int rcvbuf, const char** syscall);
  Napi::Object Self() override { return Value(); }
  void Deliver(uint32_t got, RxErrors& errs) override;

  uint32_t port_id_ = 0;
  int rcvbuf_ = 0;
  const char* rcvbuf_opt_ = "default";
  bool referenced_ = false;
};

NetlinkSocket::NetlinkSocket(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<NetlinkSocket>(info),
      BatchSocket(Policy{/*enobufs_is_overrun=*/true, /*writable_is_reliable=*/false, /*retry_send_errors=*/false}) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsFunction() || !info[2].IsFunction()) {
    Napi::TypeError::New(env, "NetlinkSocket(options, onBatch, onError) expects an object and two functions")
        .ThrowAsJavaScriptException();
    return;
  }
  Napi::Object o = info[0].As<Napi::Object>();
  int64_t protocol, port_id, groups, rcvbuf, batch, slot;
  if (!GetIntOption(o, "protocol", -1, 0, 31, &protocol) || !GetIntOption(o, "portId", -1, 0, 4294967295LL, &port_id) ||
      !GetIntOption(o, "groups", -1, 0, 4294967295LL, &groups) ||
      !GetIntOption(o, "rcvbufBytes", -1, 0, INT32_MAX, &rcvbuf) ||
      !GetIntOption(o, "batchSize", kDefaultBatch, 1, kMaxBatch, &batch) ||
      !GetIntOption(o, "slotBytes", kDefaultSlot, 1, kMaxSlot, &slot)) {
    return;
  }

  const char* syscall = "socket";
  int err = Open(static_cast<int>(protocol), static_cast<uint32_t>(port_id), static_cast<uint32_t>(groups),
                 static_cast<int>(rcvbuf), &syscall);
  if (err != 0) {
    Shutdown();
    ThrowErrno(env, err, syscall);
    return;
  }
  InitRx(static_cast<uint32_t>(batch), static_cast<uint32_t>(slot), sizeof(sockaddr_nl));
  Attach(env, info[1].As<Napi::Function>(), info[2].As<Napi::Function>(), "iwpm.NetlinkSocket", Value());
  Ref();  // an open socket keeps its JS object alive, like a Node handle
  referenced_ = true;
}

int NetlinkSocket::Open(int protocol, uint32_t port_id, uint32_t groups, int rcvbuf, const char** syscall) {
  *syscall = "socket";
  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
  if (fd_ < 0) return errno;
  int err = SetBufferSize(fd_, true, rcvbuf, &rcvbuf_, &rcvbuf_opt_, syscall);
  if (err != 0) return err;
  SockAddr addr = NlAddr(port_id, groups);
  *syscall = "bind";
  if (bind(fd_, &addr.sa, sizeof addr.nl) != 0) return errno;
  socklen_t len = sizeof addr.nl;
  *syscall = "getsockname";
  if (getsockname(fd_, &addr.sa, &len) != 0) return errno;
  port_id_ = addr.nl.nl_pid;
  return StartPolling(Env(), syscall);
}

void NetlinkSocket::Deliver(uint32_t got, RxErrors& errs) {
  Napi::Env env = Env();
  // One ArrayBuffer behind the four Uint32Arrays and the Uint8Array.
  Napi::ArrayBuffer meta = Napi::ArrayBuffer::New(env, static_cast<size_t>(got) * 17);
  auto* m32 = static_cast<uint32_t*>(meta.Data());
  uint32_t* senders = m32 + 2 * got;
  uint32_t* groups = m32 + 3 * got;
  Napi::Buffer<uint8_t> data = PackData(got, m32, m32 + got, reinterpret_cast<uint8_t*>(m32 + 4 * got));
  for (uint32_t i = 0; i < got; i++) {
    senders[i] = rx_addr_[i].nl.nl_pid;
    groups[i] = rx_addr_[i].nl.nl_groups;
  }

  Napi::Object batch = Napi::Object::New(env);
  batch.Set("count", Napi::Number::New(env, got));
  batch.Set("data", data);
  batch.Set("offsets", Napi::Uint32Array::New(env, got, meta, 0));
  batch.Set("lengths", Napi::Uint32Array::New(env, got, meta, 4 * got));
  batch.Set("senders", Napi::Uint32Array::New(env, got, meta, 8 * got));
  batch.Set("groups", Napi::Uint32Array::New(env, got, meta, 12 * got));
  batch.Set("truncated", Napi::Uint8Array::New(env, got, meta, 16 * got));
  batch.Set("overruns", Napi::Number::New(env, errs.overruns));
  batch.Set("errors", ErrnoArray(env, errs.errors));
  EmitBatch(batch);
}

Napi::Value NetlinkSocket::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "send(datagrams: Buffer[], destPortId?, destGroups?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t dest_pid, dest_groups;
  if (!ArgU32(info, 1, "destPortId", &dest_pid) || !ArgU32(info, 2, "destGroups", &dest_groups)) {
    return env.Undefined();
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  std::vector<iovec> iov(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      Napi::TypeError::New(env, "send: datagrams[" + std::to_string(i) + "] is not a Buffer/Uint8Array")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    iov[i] = {b.Data(), b.ByteLength()};
  }
  if (fd_ < 0) {
    ThrowErrno(env, EBADF, "send");
    return env.Undefined();
  }
  SockAddr dest = NlAddr(dest_pid, dest_groups);
  return Napi::Number::New(env, Submit(n, iov.data(), &dest, false));
}

Napi::Value NetlinkSocket::AddMembership(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t group;
  if (info.Length() < 1 || !ArgU32(info, 0, "group", &group)) {
    if (!env.IsExceptionPending()) Napi::TypeError::New(env, "group must be a uint32").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (fd_ < 0) {
    ThrowErrno(env, EBADF, "setsockopt");
  } else if (setsockopt(fd_, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) != 0) {
    ThrowErrno(env, errno, "setsockopt");
  }
  return env.Undefined();
}

Napi::Value NetlinkSocket::Stats(const Napi::CallbackInfo& info) {
  Napi::Object o = StatsObject(info.Env());
  o.Set("overruns", stats_.overruns);
  return o;
}

Napi::Value NetlinkSocket::Close(const Napi::CallbackInfo& info) {
  Detach();  // break closure cycles so the object can be collected
  if (referenced_) {
    referenced_ = false;
    Unref();
  }
  return info.Env().Undefined();
}

}  // namespace

void InitNetlinkSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("NetlinkSocket", NetlinkSocket::Define(env));
}

}  // namespace iwpm
