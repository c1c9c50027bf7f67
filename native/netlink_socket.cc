// NetlinkSocket: a non-blocking AF_NETLINK datagram socket driven by a libuv
// poll on the current environment's loop. Receives in batches (recvmmsg) and
// hands each wakeup's datagrams to JS in one call; sends with sendmmsg and keeps
// whatever the kernel refuses for now (EAGAIN/ENOBUFS) in an ordered queue.
//
// Lifetime: the JS object is kept alive (strong reference) while the socket is
// open. The uv handles live in a separate heap block that libuv owns until their
// close callbacks ran, so the object may be collected right after close().
#include <errno.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"

namespace iwpm {
namespace {

constexpr uint32_t kDefaultBatch = 64;
constexpr uint32_t kMaxBatch = 1024;
constexpr uint32_t kDefaultSlot = 65536;
constexpr uint32_t kMaxSlot = 1u << 20;
constexpr size_t kSendChunk = 1024;    // UIO_MAXIOV: sendmmsg's vlen limit
constexpr size_t kFlushMax = 4096;     // datagrams per flush attempt
constexpr uint64_t kMaxBackoffMs = 64;  // retry delay cap while the peer is full

// One datagram waiting for the socket (or rather its receiver) to accept it.
struct Queued {
  std::vector<uint8_t> bytes;
  sockaddr_nl dest;
  uint32_t index;  // position in the send() call it came from
};

class NetlinkSocket;

// libuv-owned: freed when both handles have finished closing.
struct Handles {
  uv_poll_t poll;
  uv_timer_t timer;
  NetlinkSocket* owner;
  int open;
};

// Outcome of one Transmit(): `done` datagrams were consumed (sent or failed for
// good); `blocked` = stopped on EAGAIN/ENOBUFS; `failed` = (index, errno) pairs.
struct TxResult {
  size_t done = 0;
  size_t sent = 0;
  bool blocked = false;
  std::vector<std::pair<uint32_t, int>> failed;
};

sockaddr_nl NlAddr(uint32_t pid, uint32_t groups) {
  sockaddr_nl a;
  std::memset(&a, 0, sizeof a);
  a.nl_family = AF_NETLINK;
  a.nl_pid = pid;
  a.nl_groups = groups;
  return a;
}

// False once the environment is stopping (process.exit() or terminate() in a
// Worker): Node then still runs the loop to close its own handles, so our uv
// callbacks can fire, but JS must not be entered and node-addon-api would abort
// on the failed calls. strict_equals is a side-effect-free call that Node-API
// refuses in that state.
bool CanCallJs(napi_env env) {
  napi_value u;
  bool eq = false;
  return napi_get_undefined(env, &u) == napi_ok && napi_strict_equals(env, u, u, &eq) == napi_ok;
}

// Reads options[key] as an integer in [lo, hi]; absent -> def (or TypeError if def < 0).
bool GetInt(const Napi::Object& o, const char* key, int64_t def, int64_t lo, int64_t hi, int64_t* out) {
  Napi::Env env = o.Env();
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && def >= 0) {
    *out = def;
    return true;
  }
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
  if (!v.IsNumber() || d != static_cast<double>(static_cast<int64_t>(d)) || d < lo || d > hi) {
    Napi::TypeError::New(env, std::string("options.") + key + " must be an integer in [" + std::to_string(lo) +
                                  ", " + std::to_string(hi) + "]")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
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

class NetlinkSocket : public Napi::ObjectWrap<NetlinkSocket> {
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
  ~NetlinkSocket() override { Shutdown(); }

 private:
  Napi::Value PortId(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_id_); }
  Napi::Value RcvbufBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rcvbuf_); }
  Napi::Value RcvbufOption(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), rcvbuf_opt_); }
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value AddMembership(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  int Open(int protocol, uint32_t port_id, uint32_t groups, int rcvbuf, const char** syscall);
  void Shutdown();  // closes handles and fd; never calls JS
  void Quiesce();   // stops the handles until the env cleanup hook closes them
  TxResult Transmit(std::vector<mmsghdr>& msgs, const std::vector<uint32_t>& indexes);
  void Flush();
  void SetPollEvents(int events);
  void Drain();
  void ReportSendErrors(const std::vector<std::pair<uint32_t, int>>& failed);
  void Call(Napi::FunctionReference& fn, napi_value arg);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnTimer(uv_timer_t* handle);
  static void OnClosed(uv_handle_t* handle);
  static void OnEnvCleanup(void* arg);

  int fd_ = -1;
  uint32_t port_id_ = 0;
  int rcvbuf_ = 0;
  const char* rcvbuf_opt_ = "default";
  Handles* handles_ = nullptr;
  int poll_events_ = 0;
  bool hook_added_ = false;
  bool referenced_ = false;
  uint64_t backoff_ms_ = 0;
  Napi::FunctionReference on_batch_;
  Napi::FunctionReference on_error_;
  std::unique_ptr<Napi::AsyncContext> async_;

  // Receive slots: batch_ mmsghdrs, each with its own slot_-byte area and sender address.
  uint32_t batch_ = kDefaultBatch;
  uint32_t slot_ = kDefaultSlot;
  std::vector<uint8_t> slab_;
  std::vector<iovec> rx_iov_;
  std::vector<sockaddr_nl> rx_addr_;
  std::vector<mmsghdr> rx_msgs_;

  std::deque<Queued> queue_;
  struct {
    double received = 0, sent = 0, overruns = 0, recv_errors = 0, send_errors = 0, truncated = 0;
  } stats_;
};

NetlinkSocket::NetlinkSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetlinkSocket>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsFunction() || !info[2].IsFunction()) {
    Napi::TypeError::New(env, "NetlinkSocket(options, onBatch, onError) expects an object and two functions")
        .ThrowAsJavaScriptException();
    return;
  }
  Napi::Object o = info[0].As<Napi::Object>();
  int64_t protocol, port_id, groups, rcvbuf, batch, slot;
  if (!GetInt(o, "protocol", -1, 0, 31, &protocol) || !GetInt(o, "portId", -1, 0, 4294967295LL, &port_id) ||
      !GetInt(o, "groups", -1, 0, 4294967295LL, &groups) || !GetInt(o, "rcvbufBytes", -1, 0, INT32_MAX, &rcvbuf) ||
      !GetInt(o, "batchSize", kDefaultBatch, 1, kMaxBatch, &batch) ||
      !GetInt(o, "slotBytes", kDefaultSlot, 1, kMaxSlot, &slot)) {
    return;
  }
  batch_ = static_cast<uint32_t>(batch);
  slot_ = static_cast<uint32_t>(slot);

  const char* syscall = "socket";
  int err = Open(static_cast<int>(protocol), static_cast<uint32_t>(port_id), static_cast<uint32_t>(groups),
                 static_cast<int>(rcvbuf), &syscall);
  if (err != 0) {
    ThrowErrno(env, err, syscall);
    return;
  }

  slab_.resize(static_cast<size_t>(batch_) * slot_);
  rx_iov_.resize(batch_);
  rx_addr_.resize(batch_);
  rx_msgs_.resize(batch_);
  for (uint32_t i = 0; i < batch_; i++) {
    rx_iov_[i] = {slab_.data() + static_cast<size_t>(i) * slot_, slot_};
    std::memset(&rx_msgs_[i], 0, sizeof(mmsghdr));
    rx_msgs_[i].msg_hdr.msg_iov = &rx_iov_[i];
    rx_msgs_[i].msg_hdr.msg_iovlen = 1;
    rx_msgs_[i].msg_hdr.msg_name = &rx_addr_[i];
  }

  on_batch_ = Napi::Persistent(info[1].As<Napi::Function>());
  on_error_ = Napi::Persistent(info[2].As<Napi::Function>());
  async_ = std::make_unique<Napi::AsyncContext>(env, "iwpm.NetlinkSocket", Value());
  napi_add_env_cleanup_hook(env, OnEnvCleanup, this);
  hook_added_ = true;
  Ref();  // an open socket keeps its JS object alive, like a Node handle
  referenced_ = true;
}

int NetlinkSocket::Open(int protocol, uint32_t port_id, uint32_t groups, int rcvbuf, const char** syscall) {
  *syscall = "socket";
  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
  if (fd_ < 0) return errno;
  auto fail = [this](const char* sc, const char** out, int err) {
    *out = sc;
    close(fd_);
    fd_ = -1;
    return err;
  };

  if (rcvbuf > 0) {
    if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) == 0) {
      rcvbuf_opt_ = "SO_RCVBUFFORCE";
    } else if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0) {
      rcvbuf_opt_ = "SO_RCVBUF";
    } else {
      return fail("setsockopt", syscall, errno);
    }
  }
  socklen_t len = sizeof rcvbuf_;
  if (getsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf_, &len) != 0) return fail("getsockopt", syscall, errno);

  sockaddr_nl addr = NlAddr(port_id, groups);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return fail("bind", syscall, errno);
  len = sizeof addr;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return fail("getsockname", syscall, errno);
  port_id_ = addr.nl_pid;

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(Env(), &loop) != napi_ok || loop == nullptr) return fail("uv_loop", syscall, EINVAL);
  auto* h = new Handles();
  h->owner = this;
  int r = uv_poll_init(loop, &h->poll, fd_);
  if (r != 0) {
    delete h;  // not registered with the loop
    return fail("uv_poll_init", syscall, -r);
  }
  uv_timer_init(loop, &h->timer);
  h->poll.data = h;
  h->timer.data = h;
  h->open = 2;
  handles_ = h;
  SetPollEvents(UV_READABLE);
  return 0;
}

void NetlinkSocket::SetPollEvents(int events) {
  if (handles_ == nullptr) return;
  poll_events_ = events;
  uv_poll_start(&handles_->poll, events, OnPoll);
}

void NetlinkSocket::Shutdown() {
  if (handles_ != nullptr) {
    handles_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&handles_->poll), OnClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&handles_->timer), OnClosed);
    handles_ = nullptr;
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  queue_.clear();
  if (hook_added_) {
    napi_remove_env_cleanup_hook(Env(), OnEnvCleanup, this);
    hook_added_ = false;
  }
}

void NetlinkSocket::Quiesce() {
  if (handles_ == nullptr) return;
  uv_poll_stop(&handles_->poll);
  uv_timer_stop(&handles_->timer);
}

void NetlinkSocket::OnClosed(uv_handle_t* handle) {
  auto* h = static_cast<Handles*>(handle->data);
  if (--h->open == 0) delete h;
}

// The environment is going away (process exit, Worker termination): release the
// loop's handles and the fd; no JS may run any more.
void NetlinkSocket::OnEnvCleanup(void* arg) {
  auto* self = static_cast<NetlinkSocket*>(arg);
  self->hook_added_ = false;
  self->Shutdown();
  self->async_.reset();
}

// --- receive ---------------------------------------------------------------

void NetlinkSocket::OnPoll(uv_poll_t* handle, int status, int events) {
  NetlinkSocket* self = static_cast<Handles*>(handle->data)->owner;
  if (self == nullptr) return;
  Napi::HandleScope scope(self->Env());
  if (!CanCallJs(self->Env())) return self->Quiesce();
  if (status < 0) {
    // libuv stops the watcher on POLLERR, which netlink raises for a pending
    // ENOBUFS (overrun). Read the error (Drain counts it) and poll again.
    self->Drain();
    if (self->fd_ >= 0) self->SetPollEvents(self->poll_events_);
    return;
  }
  if (events & UV_READABLE) self->Drain();
  if ((events & UV_WRITABLE) && self->fd_ >= 0) self->Flush();
}

// One bounded batch: up to batch_ datagrams, then one onBatch call.
void NetlinkSocket::Drain() {
  uint32_t got = 0;
  uint32_t overruns = 0;
  std::vector<int> errors;
  for (uint32_t iter = 0; got < batch_ && iter < batch_ + 4; iter++) {
    for (uint32_t i = got; i < batch_; i++) {
      rx_msgs_[i].msg_hdr.msg_namelen = sizeof(sockaddr_nl);
      rx_msgs_[i].msg_hdr.msg_flags = 0;
      rx_msgs_[i].msg_len = 0;
    }
    int n = recvmmsg(fd_, &rx_msgs_[got], batch_ - got, MSG_DONTWAIT, nullptr);
    if (n > 0) {
      got += static_cast<uint32_t>(n);
      continue;
    }
    int err = n == 0 ? EAGAIN : errno;
    if (err == EAGAIN || err == EWOULDBLOCK) break;
    if (err == EINTR) continue;
    if (err == ENOBUFS) {
      overruns++;
    } else {
      errors.push_back(-err);
    }
  }
  stats_.overruns += overruns;
  stats_.recv_errors += errors.size();
  if (got == 0 && overruns == 0 && errors.empty()) return;

  Napi::Env env = Env();
  size_t total = 0;
  for (uint32_t i = 0; i < got; i++) total += rx_msgs_[i].msg_len;
  Napi::Buffer<uint8_t> data = Napi::Buffer<uint8_t>::New(env, total);
  // One ArrayBuffer behind the four Uint32Arrays and the Uint8Array.
  Napi::ArrayBuffer meta = Napi::ArrayBuffer::New(env, static_cast<size_t>(got) * 17);
  auto* m32 = static_cast<uint32_t*>(meta.Data());
  uint32_t* offsets = m32;
  uint32_t* lengths = m32 + got;
  uint32_t* senders = m32 + 2 * got;
  uint32_t* groups = m32 + 3 * got;
  uint8_t* truncated = reinterpret_cast<uint8_t*>(m32 + 4 * got);
  size_t at = 0;
  for (uint32_t i = 0; i < got; i++) {
    const msghdr& h = rx_msgs_[i].msg_hdr;
    uint32_t len = rx_msgs_[i].msg_len;
    if (len > 0) std::memcpy(data.Data() + at, rx_iov_[i].iov_base, len);
    offsets[i] = static_cast<uint32_t>(at);
    lengths[i] = len;
    senders[i] = rx_addr_[i].nl_pid;
    groups[i] = rx_addr_[i].nl_groups;
    truncated[i] = (h.msg_flags & MSG_TRUNC) ? 1 : 0;
    stats_.truncated += truncated[i];
    at += len;
  }
  stats_.received += got;

  Napi::Object batch = Napi::Object::New(env);
  batch.Set("count", Napi::Number::New(env, got));
  batch.Set("data", data);
  batch.Set("offsets", Napi::Uint32Array::New(env, got, meta, 0));
  batch.Set("lengths", Napi::Uint32Array::New(env, got, meta, 4 * got));
  batch.Set("senders", Napi::Uint32Array::New(env, got, meta, 8 * got));
  batch.Set("groups", Napi::Uint32Array::New(env, got, meta, 12 * got));
  batch.Set("truncated", Napi::Uint8Array::New(env, got, meta, 16 * got));
  batch.Set("overruns", Napi::Number::New(env, overruns));
  Napi::Array errs = Napi::Array::New(env, errors.size());
  for (size_t i = 0; i < errors.size(); i++) errs.Set(static_cast<uint32_t>(i), Napi::Number::New(env, errors[i]));
  batch.Set("errors", errs);
  Call(on_batch_, batch);
}

// Calls a JS callback from the loop; a throw becomes an uncaught exception.
void NetlinkSocket::Call(Napi::FunctionReference& fn, napi_value arg) {
  if (fn.IsEmpty() || !async_) return;
  Napi::Env env = Env();
  Napi::Object self = Value();  // keeps the object alive during the call
  fn.MakeCallback(self, {arg}, *async_);
  if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
}

// --- send --------------------------------------------------------------------

TxResult NetlinkSocket::Transmit(std::vector<mmsghdr>& msgs, const std::vector<uint32_t>& indexes) {
  TxResult r;
  while (r.done < msgs.size()) {
    unsigned vlen = static_cast<unsigned>(std::min(msgs.size() - r.done, kSendChunk));
    int n = sendmmsg(fd_, &msgs[r.done], vlen, MSG_DONTWAIT);
    if (n > 0) {
      r.done += static_cast<size_t>(n);
      r.sent += static_cast<size_t>(n);
      continue;
    }
    int err = n == 0 ? EAGAIN : errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      r.blocked = true;
      break;
    }
    r.failed.emplace_back(indexes[r.done], err);  // this datagram only; go on with the next
    r.done++;
  }
  stats_.sent += r.sent;
  stats_.send_errors += r.failed.size();
  return r;
}

void NetlinkSocket::ReportSendErrors(const std::vector<std::pair<uint32_t, int>>& failed) {
  for (const auto& f : failed) {
    if (fd_ < 0) return;  // closed by an earlier callback
    Napi::Error e = ErrnoError(Env(), f.second, "sendmmsg");
    e.Set("index", Napi::Number::New(Env(), f.first));
    Call(on_error_, e.Value());
  }
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

  sockaddr_nl dest = NlAddr(dest_pid, dest_groups);
  size_t start = 0;
  TxResult r;
  if (queue_.empty()) {  // otherwise everything waits behind the queue, in order
    std::vector<mmsghdr> msgs(n);
    std::vector<uint32_t> indexes(n);
    for (uint32_t i = 0; i < n; i++) {
      std::memset(&msgs[i], 0, sizeof(mmsghdr));
      msgs[i].msg_hdr.msg_name = &dest;
      msgs[i].msg_hdr.msg_namelen = sizeof dest;
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      indexes[i] = i;
    }
    r = Transmit(msgs, indexes);
    start = r.done;
  }
  if (start < n) {
    bool was_empty = queue_.empty();
    for (size_t i = start; i < n; i++) {
      auto* p = static_cast<uint8_t*>(iov[i].iov_base);
      queue_.push_back(Queued{std::vector<uint8_t>(p, p + iov[i].iov_len), dest, static_cast<uint32_t>(i)});
    }
    if (was_empty) {
      backoff_ms_ = 0;
      SetPollEvents(UV_READABLE | UV_WRITABLE);
    }
  }
  ReportSendErrors(r.failed);
  return Napi::Number::New(env, static_cast<double>(r.sent));
}

// Sends from the head of the queue. When the receiver is still full, netlink
// reports the socket writable anyway (it never charges the sender), so instead
// of spinning on POLLOUT we retry from a timer with exponential backoff.
void NetlinkSocket::Flush() {
  size_t n = std::min(queue_.size(), kFlushMax);
  std::vector<mmsghdr> msgs(n);
  std::vector<iovec> iov(n);
  std::vector<uint32_t> indexes(n);
  for (size_t i = 0; i < n; i++) {
    Queued& q = queue_[i];
    iov[i] = {q.bytes.data(), q.bytes.size()};
    std::memset(&msgs[i], 0, sizeof(mmsghdr));
    msgs[i].msg_hdr.msg_name = &q.dest;
    msgs[i].msg_hdr.msg_namelen = sizeof q.dest;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    indexes[i] = q.index;
  }
  TxResult r = Transmit(msgs, indexes);
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(r.done));

  if (queue_.empty()) {
    backoff_ms_ = 0;
    uv_timer_stop(&handles_->timer);
    SetPollEvents(UV_READABLE);
  } else if (r.blocked) {
    backoff_ms_ = r.done > 0 ? 1 : std::min(std::max<uint64_t>(backoff_ms_ * 2, 1), kMaxBackoffMs);
    SetPollEvents(UV_READABLE);
    uv_timer_start(&handles_->timer, OnTimer, backoff_ms_, 0);
  }  // else: stopped at kFlushMax; POLLOUT brings us back on the next turn
  ReportSendErrors(r.failed);
}

void NetlinkSocket::OnTimer(uv_timer_t* handle) {
  NetlinkSocket* self = static_cast<Handles*>(handle->data)->owner;
  if (self == nullptr) return;
  Napi::HandleScope scope(self->Env());
  if (!CanCallJs(self->Env())) return self->Quiesce();
  self->Flush();
}

// --- the rest ---------------------------------------------------------------

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
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("received", stats_.received);
  o.Set("sent", stats_.sent);
  o.Set("queued", static_cast<double>(queue_.size()));
  o.Set("overruns", stats_.overruns);
  o.Set("recvErrors", stats_.recv_errors);
  o.Set("sendErrors", stats_.send_errors);
  o.Set("truncated", stats_.truncated);
  return o;
}

Napi::Value NetlinkSocket::Close(const Napi::CallbackInfo& info) {
  Shutdown();
  async_.reset();
  on_batch_.Reset();  // break closure cycles so the object can be collected
  on_error_.Reset();
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
