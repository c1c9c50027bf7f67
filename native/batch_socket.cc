// Shared machinery of NetlinkSocket and UdpSocket (see batch_socket.h).
#include "batch_socket.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace iwpm {
namespace {

constexpr size_t kSendChunk = 1024;     // UIO_MAXIOV: sendmmsg's vlen limit
constexpr size_t kFlushMax = 4096;      // datagrams per flush attempt
constexpr uint64_t kMaxBackoffMs = 64;  // retry delay cap while the peer is full
constexpr int kSendRetries = 2;         // extra attempts for a failing datagram (retry_send_errors)

}  // namespace

// libuv-owned: freed when both handles have finished closing.
struct BatchSocket::Handles {
  uv_poll_t poll;
  uv_timer_t timer;
  BatchSocket* owner;
  int open;
};

// strict_equals is a side-effect-free call that Node-API refuses once the
// environment is stopping.
bool CanCallJs(napi_env env) {
  napi_value u;
  bool eq = false;
  return napi_get_undefined(env, &u) == napi_ok && napi_strict_equals(env, u, u, &eq) == napi_ok;
}

bool GetIntOption(const Napi::Object& o, const char* key, int64_t def, int64_t lo, int64_t hi, int64_t* out) {
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

int SetBufferSize(int fd, bool receive, int bytes, int* effective, const char** option, const char** syscall) {
  const int force = receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE;
  const int plain = receive ? SO_RCVBUF : SO_SNDBUF;
  *option = "default";
  if (bytes > 0) {
    if (setsockopt(fd, SOL_SOCKET, force, &bytes, sizeof bytes) == 0) {
      *option = receive ? "SO_RCVBUFFORCE" : "SO_SNDBUFFORCE";
    } else if (setsockopt(fd, SOL_SOCKET, plain, &bytes, sizeof bytes) == 0) {
      *option = receive ? "SO_RCVBUF" : "SO_SNDBUF";
    } else {
      *syscall = "setsockopt";
      return errno;
    }
  }
  socklen_t len = sizeof *effective;
  if (getsockopt(fd, SOL_SOCKET, plain, effective, &len) != 0) {
    *syscall = "getsockopt";
    return errno;
  }
  return 0;
}

void BatchSocket::RxErrors::Add(int negative_errno, const SockAddr* addr) {
  errors.push_back(negative_errno);
  SockAddr a;
  if (addr != nullptr) {
    a = *addr;
  } else {
    std::memset(&a, 0, sizeof a);
    a.sa.sa_family = AF_UNSPEC;
  }
  where.push_back(a);
}

// --- setup and teardown ------------------------------------------------------

void BatchSocket::InitRx(uint32_t batch, uint32_t slot, socklen_t addr_len) {
  batch_ = batch;
  slot_ = slot;
  addr_len_ = addr_len;
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
}

int BatchSocket::StartPolling(napi_env env, const char** syscall) {
  env_ = env;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    *syscall = "uv_loop";
    return EINVAL;
  }
  auto* h = new Handles();
  h->owner = this;
  int r = uv_poll_init(loop, &h->poll, fd_);
  if (r != 0) {
    delete h;  // not registered with the loop
    *syscall = "uv_poll_init";
    return -r;
  }
  uv_timer_init(loop, &h->timer);
  h->poll.data = h;
  h->timer.data = h;
  h->open = 2;
  handles_ = h;
  SetPollEvents(UV_READABLE);
  return 0;
}

void BatchSocket::Attach(napi_env env, const Napi::Function& on_batch, const Napi::Function& on_error,
                         const char* resource, const Napi::Object& self) {
  env_ = env;
  on_batch_ = Napi::Persistent(on_batch);
  on_error_ = Napi::Persistent(on_error);
  async_ = std::make_unique<Napi::AsyncContext>(env, resource, self);
  napi_add_env_cleanup_hook(env, OnEnvCleanup, this);
  hook_added_ = true;
}

void BatchSocket::SetPollEvents(int events) {
  if (handles_ == nullptr) return;
  poll_events_ = events;
  uv_poll_start(&handles_->poll, events, OnPoll);
}

void BatchSocket::Shutdown() {
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
    napi_remove_env_cleanup_hook(env_, OnEnvCleanup, this);
    hook_added_ = false;
  }
}

void BatchSocket::Detach() {
  Shutdown();
  async_.reset();
  on_batch_.Reset();
  on_error_.Reset();
}

void BatchSocket::Quiesce() {
  if (handles_ == nullptr) return;
  uv_poll_stop(&handles_->poll);
  uv_timer_stop(&handles_->timer);
}

void BatchSocket::OnClosed(uv_handle_t* handle) {
  auto* h = static_cast<Handles*>(handle->data);
  if (--h->open == 0) delete h;
}

// The environment is going away (process exit, Worker termination): release the
// loop's handles and the fd; no JS may run any more.
void BatchSocket::OnEnvCleanup(void* arg) {
  auto* self = static_cast<BatchSocket*>(arg);
  self->hook_added_ = false;
  self->Shutdown();
  self->async_.reset();
}

// --- receive -------------------------------------------------------------------

void BatchSocket::OnPoll(uv_poll_t* handle, int status, int events) {
  BatchSocket* self = static_cast<Handles*>(handle->data)->owner;
  if (self == nullptr) return;
  Napi::HandleScope scope(self->env_);
  if (!CanCallJs(self->env_)) return self->Quiesce();
  if (status < 0) {
    // libuv stops the watcher on POLLERR (netlink: a pending ENOBUFS overrun;
    // UDP: a pending ICMP error). Read the error (Drain reports it) and poll again.
    self->Drain(true);
    if (self->fd_ >= 0) self->SetPollEvents(self->poll_events_);
    return;
  }
  if (events & UV_READABLE) self->Drain(false);
  if ((events & UV_WRITABLE) && self->fd_ >= 0) self->Flush();
}

void BatchSocket::OnRecvError(int err, RxErrors& errs) {
  if (err == ENOBUFS && policy_.enobufs_is_overrun) {
    errs.overruns++;
  } else {
    errs.Add(-err, nullptr);
  }
}

// One bounded batch: up to batch_ datagrams, then one Deliver call.
void BatchSocket::Drain(bool pollerr) {
  RxErrors errs;
  if (pollerr) OnPollError(errs);
  uint32_t got = 0;
  for (uint32_t iter = 0; got < batch_ && iter < batch_ + 4; iter++) {
    for (uint32_t i = got; i < batch_; i++) {
      rx_msgs_[i].msg_hdr.msg_namelen = addr_len_;
      rx_msgs_[i].msg_hdr.msg_flags = 0;
      rx_msgs_[i].msg_len = 0;
    }
    uint32_t want = batch_ - got;
    int n = recvmmsg(fd_, &rx_msgs_[got], want, MSG_DONTWAIT, nullptr);
    if (n > 0) {
      got += static_cast<uint32_t>(n);
      // Fewer than asked for: the queue was empty a moment ago. Asking again would
      // mostly cost a syscall that ends in EAGAIN; the poll is level-triggered, so
      // whatever arrives meanwhile wakes us on the next turn.
      if (static_cast<uint32_t>(n) < want) break;
      continue;
    }
    int err = n == 0 ? EAGAIN : errno;
    if (err == EAGAIN || err == EWOULDBLOCK) break;
    if (err == EINTR) continue;
    OnRecvError(err, errs);
  }
  stats_.overruns += errs.overruns;
  stats_.recv_errors += errs.errors.size();
  if (got == 0 && errs.overruns == 0 && errs.errors.empty()) return;
  stats_.received += got;
  Deliver(got, errs);
}

Napi::Buffer<uint8_t> BatchSocket::PackData(uint32_t got, uint32_t* offsets, uint32_t* lengths, uint8_t* truncated) {
  size_t total = 0;
  for (uint32_t i = 0; i < got; i++) total += rx_msgs_[i].msg_len;
  Napi::Buffer<uint8_t> data = Napi::Buffer<uint8_t>::New(Napi::Env(env_), total);
  size_t at = 0;
  for (uint32_t i = 0; i < got; i++) {
    uint32_t len = rx_msgs_[i].msg_len;
    if (len > 0) std::memcpy(data.Data() + at, rx_iov_[i].iov_base, len);
    offsets[i] = static_cast<uint32_t>(at);
    lengths[i] = len;
    truncated[i] = (rx_msgs_[i].msg_hdr.msg_flags & MSG_TRUNC) ? 1 : 0;
    stats_.truncated += truncated[i];
    at += len;
  }
  return data;
}

Napi::Array BatchSocket::ErrnoArray(Napi::Env env, const std::vector<int>& errors) {
  Napi::Array a = Napi::Array::New(env, errors.size());
  for (size_t i = 0; i < errors.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, errors[i]));
  return a;
}

void BatchSocket::Call(Napi::FunctionReference& fn, napi_value arg) {
  if (fn.IsEmpty() || !async_) return;
  Napi::Env env(env_);
  Napi::Object self = Self();  // keeps the object alive during the call
  fn.MakeCallback(self, {arg}, *async_);
  if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
}

// --- send ------------------------------------------------------------------------

BatchSocket::TxResult BatchSocket::Transmit(mmsghdr* msgs, size_t count, const uint32_t* indexes) {
  TxResult r;
  size_t retry_at = SIZE_MAX;
  int retries = 0;
  while (r.done < count) {
    unsigned vlen = static_cast<unsigned>(std::min(count - r.done, kSendChunk));
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
      r.block_err = err;
      break;
    }
    if (policy_.retry_send_errors) {
      if (retry_at != r.done) {
        retry_at = r.done;
        retries = 0;
      }
      if (retries++ < kSendRetries) continue;  // the failed attempt consumed the socket error
    }
    r.failed.emplace_back(indexes[r.done], err);  // this datagram only; go on with the next
    r.done++;
  }
  stats_.sent += r.sent;
  stats_.send_errors += r.failed.size();
  return r;
}

void BatchSocket::ReportSendErrors(const std::vector<std::pair<uint32_t, int>>& failed) {
  Napi::Env env(env_);
  for (const auto& f : failed) {
    if (fd_ < 0) return;  // closed by an earlier callback
    Napi::Error e = ErrnoError(env, f.second, "sendmmsg");
    e.Set("index", Napi::Number::New(env, f.first));
    Call(on_error_, e.Value());
  }
}

double BatchSocket::Submit(uint32_t n, const iovec* iov, const SockAddr* dests, bool per_datagram_dest) {
  size_t start = 0;
  TxResult r;
  if (queue_.empty()) {  // otherwise everything waits behind the queue, in order
    tx_msgs_.resize(n);
    tx_index_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      std::memset(&tx_msgs_[i], 0, sizeof(mmsghdr));
      tx_msgs_[i].msg_hdr.msg_name = const_cast<SockAddr*>(&dests[per_datagram_dest ? i : 0]);
      tx_msgs_[i].msg_hdr.msg_namelen = addr_len_;
      tx_msgs_[i].msg_hdr.msg_iov = const_cast<iovec*>(&iov[i]);
      tx_msgs_[i].msg_hdr.msg_iovlen = 1;
      tx_index_[i] = i;
    }
    r = Transmit(tx_msgs_.data(), n, tx_index_.data());
    start = r.done;
  }
  if (start < n) {
    bool was_empty = queue_.empty();
    for (size_t i = start; i < n; i++) {
      auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
      queue_.push_back(
          Queued{std::vector<uint8_t>(p, p + iov[i].iov_len), dests[per_datagram_dest ? i : 0], static_cast<uint32_t>(i)});
    }
    if (was_empty) {
      backoff_ms_ = 0;
      SetPollEvents(UV_READABLE | UV_WRITABLE);
    }
  }
  ReportSendErrors(r.failed);
  return static_cast<double>(r.sent);
}

// Sends from the head of the queue. UDP: POLLOUT tells when EAGAIN is over, so
// keep polling for it. Netlink reports a socket writable even while the receiver
// is still full (it never charges the sender), and ENOBUFS is not tied to
// writability either: there, instead of spinning on POLLOUT, retry from a timer
// with exponential backoff.
void BatchSocket::Flush() {
  size_t n = std::min(queue_.size(), kFlushMax);
  tx_msgs_.resize(n);
  tx_iov_.resize(n);
  tx_index_.resize(n);
  for (size_t i = 0; i < n; i++) {
    Queued& q = queue_[i];
    tx_iov_[i] = {q.bytes.data(), q.bytes.size()};
    std::memset(&tx_msgs_[i], 0, sizeof(mmsghdr));
    tx_msgs_[i].msg_hdr.msg_name = &q.dest;
    tx_msgs_[i].msg_hdr.msg_namelen = addr_len_;
    tx_msgs_[i].msg_hdr.msg_iov = &tx_iov_[i];
    tx_msgs_[i].msg_hdr.msg_iovlen = 1;
    tx_index_[i] = q.index;
  }
  TxResult r = Transmit(tx_msgs_.data(), n, tx_index_.data());
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(r.done));

  if (queue_.empty()) {
    backoff_ms_ = 0;
    uv_timer_stop(&handles_->timer);
    SetPollEvents(UV_READABLE);
  } else if (r.blocked && policy_.writable_is_reliable && r.block_err != ENOBUFS) {
    backoff_ms_ = 0;
    uv_timer_stop(&handles_->timer);
    if (poll_events_ != (UV_READABLE | UV_WRITABLE)) SetPollEvents(UV_READABLE | UV_WRITABLE);
  } else if (r.blocked) {
    backoff_ms_ = r.done > 0 ? 1 : std::min(std::max<uint64_t>(backoff_ms_ * 2, 1), kMaxBackoffMs);
    SetPollEvents(UV_READABLE);
    uv_timer_start(&handles_->timer, OnTimer, backoff_ms_, 0);
  } else if (poll_events_ != (UV_READABLE | UV_WRITABLE)) {
    // Stopped at kFlushMax (from the timer, where POLLOUT was off): POLLOUT brings
    // us back on the next turn.
    SetPollEvents(UV_READABLE | UV_WRITABLE);
  }
  ReportSendErrors(r.failed);
}

void BatchSocket::OnTimer(uv_timer_t* handle) {
  BatchSocket* self = static_cast<Handles*>(handle->data)->owner;
  if (self == nullptr) return;
  Napi::HandleScope scope(self->env_);
  if (!CanCallJs(self->env_)) return self->Quiesce();
  self->Flush();
}

// --- the rest ----------------------------------------------------------------------

Napi::Object BatchSocket::StatsObject(Napi::Env env) const {
  Napi::Object o = Napi::Object::New(env);
  o.Set("received", stats_.received);
  o.Set("sent", stats_.sent);
  o.Set("queued", static_cast<double>(queue_.size()));
  o.Set("recvErrors", stats_.recv_errors);
  o.Set("sendErrors", stats_.send_errors);
  o.Set("truncated", stats_.truncated);
  return o;
}

}  // namespace iwpm
