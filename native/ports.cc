// Batched TCP port reservation: bind() on the wildcard address without
// listen(), exactly like rdma-core's get_iwpm_tcp_port (spec 4.2). The socket
// holds the port for as long as it stays open; closeFds() / releaseFds()
// release it.
//
// socket() (3-9 us) and close() (~4 us) cost the event loop more than the
// bind() (~3 us) that actually reserves the port, so a per-process background
// thread (the "port pool") does both off the main thread:
// - it keeps a few unbound spare sockets per family, made exactly as
//   ReserveOne would make them, and reservePorts takes one when it can;
// - releaseFds hands it the fds to close, in order.
// The pool is process-wide (shared by every environment: main thread and
// Workers), its state is heap-allocated and never freed, and its thread is
// detached: nothing is destroyed at exit while the thread may still use it. The
// thread only makes syscalls; it never calls into JS.
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "batch_socket.h"
#include "common.h"

namespace iwpm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kDefaultSpares = 64;  // per family, until configurePortPool says otherwise
constexpr int64_t kMaxSpares = 4096;   // spares hold fds: keep a typo from eating the fd limit
constexpr size_t kRefillBatch = 16;    // sockets made per unlock of the pool mutex
constexpr auto kRefillBackoff = std::chrono::milliseconds(100);
// After doing work the thread polls for more every kPollInterval for kBusyLinger
// instead of sleeping until notified: under load a notify costs the caller a futex
// wake-up of another CPU (an IPI on a VM, ~8 us per release call measured here),
// more than the close() it hands off. A busy thread is never notified; an idle one
// sleeps and is. The linger is short so that a slow trickle of connections (or a
// slow CPU: qemu TCG) does not pay for polling it cannot use.
constexpr auto kPollInterval = std::chrono::microseconds(500);
constexpr auto kBusyLinger = std::chrono::milliseconds(5);

int FamilyIndex(int family) { return family == AF_INET ? 0 : family == AF_INET6 ? 1 : -1; }
int IndexFamily(int i) { return i == 0 ? AF_INET : AF_INET6; }

int NewSocket(int family) { return socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0); }

void CloseAll(const std::vector<int>& fds) {
  // Linux releases the descriptor even when close() fails (EINTR): never retry.
  for (int fd : fds) close(fd);
}

class PortPool {
 public:
  struct Stats {
    size_t spares[2];
    uint64_t hits, misses, created, async_closed, pending_close, refill_errors;
    size_t target;
    int thread_error;
  };

  // Leaked on purpose (see the file comment). Function-local static: thread-safe init.
  static PortPool& Get() {
    static PortPool* pool = new PortPool();
    return *pool;
  }

  // An unbound spare socket of family index f, or -1 (pool off or empty).
  int Take(int f) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!Enabled()) return -1;
    Family& fam = fams_[f];
    if (fam.spares.empty()) return -1;
    int fd = fam.spares.back();
    fam.spares.pop_back();
    hits_++;
    // Refill below half, not below full: the thread then works in batches
    // instead of waking for every socket taken.
    if (fam.spares.size() * 2 < target_) Arm(fam);
    return fd;
  }

  // The caller made a socket of family index f itself because no spare was
  // ready: that family is in use, so keep spares of it from now on (lazy: a
  // family never reserved never costs an fd).
  void NoteMiss(int f) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!Enabled()) return;
    misses_++;
    Arm(fams_[f]);
  }

  // A socket whose bind() failed is still unbound: keep it as a spare rather
  // than close it (a probe that hits a busy port then costs one bind() only).
  // False when the pool is off or full: the caller closes it.
  bool PutBack(int f, int fd) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!Enabled() || fams_[f].spares.size() >= target_) return false;
    fams_[f].spares.push_back(fd);
    return true;
  }

  // socket() failed with EMFILE/ENFILE. The old code held none of the fds the
  // pool holds (spares, closes not yet done), so give them all back before the
  // caller retries: the pool must never be the reason for an EMFILE. True when
  // anything was freed (a retry may succeed).
  bool FreeForEmfile() {
    std::vector<int> drop;
    {
      std::unique_lock<std::mutex> lk(mu_);
      const Clock::time_point until = Clock::now() + kRefillBackoff;
      for (Family& fam : fams_) {
        drop.insert(drop.end(), fam.spares.begin(), fam.spares.end());
        fam.spares.clear();
        fam.refill = false;
        fam.retry_at = until;
      }
      // Closes happen in queue order: let the thread finish the ones it is
      // doing, then close the rest here, behind them. A refill in progress ends
      // with the thread closing what it made (retry_at is now in the future).
      bool waited = inflight_ > 0 || refilling_;
      if (waited) {
        drain_waiters_++;
        drained_.wait(lk, [this] { return inflight_ == 0 && !refilling_; });
        drain_waiters_--;
      }
      drop.insert(drop.end(), closing_.begin(), closing_.end());
      closing_.clear();
      if (drop.empty() && !waited) return false;
    }
    CloseAll(drop);
    return true;
  }

  // Queues fds for the thread to close. Closes them here instead when the pool
  // is off (nothing is queued behind which they should wait) or the thread
  // could not be started.
  void Release(const std::vector<int>& fds) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      bool queue = (Enabled() || !closing_.empty() || inflight_ > 0) && StartThread();
      if (queue) {
        closing_.insert(closing_.end(), fds.begin(), fds.end());
        if (sleeping_) wake_.notify_one();
        return;
      }
    }
    CloseAll(fds);
  }

  void Configure(size_t target) {
    std::vector<int> drop;
    {
      std::lock_guard<std::mutex> lk(mu_);
      target_ = target;
      for (Family& fam : fams_) {
        while (fam.spares.size() > target_) {
          drop.push_back(fam.spares.back());
          fam.spares.pop_back();
        }
        if (target_ == 0) fam.refill = false;
      }
    }
    CloseAll(drop);  // unbound sockets: their order does not matter
  }

  Stats Snapshot() {
    std::lock_guard<std::mutex> lk(mu_);
    return Stats{{fams_[0].spares.size(), fams_[1].spares.size()},
                 hits_,
                 misses_,
                 created_,
                 async_closed_,
                 closing_.size() + inflight_,
                 refill_errors_,
                 target_,
                 thread_error_};
  }

 private:
  struct Family {
    std::vector<int> spares;         // unbound sockets, taken from the back
    bool refill = false;             // the thread should fill spares up to target_
    Clock::time_point retry_at{};    // no refill before (after a socket() error)
  };

  PortPool() = default;

  // With the lock held. A failed thread start turns the pool off for good.
  bool Enabled() const { return target_ > 0 && thread_error_ == 0; }

  // With the lock held.
  void Arm(Family& fam) {
    if (fam.refill) return;
    fam.refill = true;
    if (StartThread() && sleeping_) wake_.notify_one();
  }

  // With the lock held. pthread rather than std::thread: with -fno-exceptions a
  // failing std::thread constructor would abort the daemon, while here the pool
  // just stays off (every socket() and close() on the caller, as before).
  bool StartThread() {
    if (started_) return true;
    if (thread_error_ != 0) return false;
    // All signals blocked in the thread (it inherits the mask): SIGTERM, SIGUSR1,
    // SIGCHLD... are delivered to Node's threads, which handle them.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t t;
    int err = pthread_create(&t, &attr, &PortPool::Main, this);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (err != 0) {
      thread_error_ = err;
      for (Family& fam : fams_) fam.refill = false;
      return false;
    }
    pthread_setname_np(t, "iwpm-portpool");
    started_ = true;
    return true;
  }

  static void* Main(void* arg) {
    static_cast<PortPool*>(arg)->Run();
    return nullptr;
  }

  // With the lock held: the family to refill now, or -1; *wake_at is set to
  // the earliest time a family held back by a socket() error may be refilled.
  int NextRefill(Clock::time_point now, Clock::time_point* wake_at) {
    *wake_at = Clock::time_point::max();
    for (int f = 0; f < 2; f++) {
      Family& fam = fams_[f];
      if (!fam.refill) continue;
      if (fam.spares.size() >= target_) {
        fam.refill = false;
        continue;
      }
      if (now >= fam.retry_at) return f;
      *wake_at = std::min(*wake_at, fam.retry_at);
    }
    return -1;
  }

  void Run() {
    std::vector<int> batch;
    std::vector<int> extra;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      // Closes first: a queued fd still holds a port somebody may want.
      if (!closing_.empty()) {
        batch.swap(closing_);
        inflight_ = batch.size();
        lk.unlock();
        CloseAll(batch);
        lk.lock();
        async_closed_ += batch.size();
        inflight_ = 0;
        last_work_ = Clock::now();
        batch.clear();
        if (drain_waiters_ > 0) drained_.notify_all();
        continue;
      }
      Clock::time_point wake_at;
      int f = NextRefill(Clock::now(), &wake_at);
      if (f >= 0) {
        size_t want = std::min(target_ - fams_[f].spares.size(), kRefillBatch);
        int made[kRefillBatch];
        size_t n = 0;
        bool failed = false;
        refilling_ = true;
        lk.unlock();
        while (n < want) {
          int fd = NewSocket(IndexFamily(f));
          if (fd < 0) {
            failed = true;
            break;
          }
          made[n++] = fd;
        }
        lk.lock();
        created_ += n;
        Family& fam = fams_[f];
        // The target may have shrunk (or a FreeForEmfile run) meanwhile.
        bool keep = Enabled() && Clock::now() >= fam.retry_at;
        for (size_t i = 0; i < n; i++) {
          if (keep && fam.spares.size() < target_) {
            fam.spares.push_back(made[i]);
          } else {
            extra.push_back(made[i]);
          }
        }
        if (failed) {
          // EMFILE/ENFILE, or the family is gone (EAFNOSUPPORT): stop for a while,
          // and until a reservation asks again (no polling while idle).
          refill_errors_++;
          fam.refill = false;
          fam.retry_at = Clock::now() + kRefillBackoff;
        }
        if (!extra.empty()) {
          lk.unlock();
          CloseAll(extra);
          lk.lock();
          extra.clear();
        }
        refilling_ = false;
        last_work_ = Clock::now();
        if (drain_waiters_ > 0) drained_.notify_all();
        continue;
      }
      Clock::time_point now = Clock::now();
      if (now - last_work_ < kBusyLinger) {
        // busy: poll (sleeping_ stays false, so callers do not notify)
        wake_.wait_until(lk, std::min(wake_at, now + kPollInterval));
        continue;
      }
      sleeping_ = true;
      if (wake_at == Clock::time_point::max()) {
        wake_.wait(lk);
      } else {
        wake_.wait_until(lk, wake_at);
      }
      sleeping_ = false;
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;     // the thread sleeps on it
  std::condition_variable drained_;  // FreeForEmfile waits on it for inflight_ == 0 && !refilling_
  Family fams_[2];                   // AF_INET, AF_INET6
  std::vector<int> closing_;         // fds to close, in order
  size_t inflight_ = 0;              // fds the thread is closing right now
  Clock::time_point last_work_{};    // when the thread last closed or made sockets
  size_t target_ = kDefaultSpares;
  size_t drain_waiters_ = 0;
  bool refilling_ = false;  // the thread is making spares (outside the lock)
  bool started_ = false;
  bool sleeping_ = false;
  int thread_error_ = 0;  // pthread_create's error: the pool stays off
  uint64_t hits_ = 0, misses_ = 0, created_ = 0, async_closed_ = 0, refill_errors_ = 0;
};

// Opens and binds one reservation socket. Returns the fd, or -errno (nothing left open).
int ReserveOne(int family, uint16_t port, uint16_t* bound) {
  sockaddr_storage ss;
  std::memset(&ss, 0, sizeof ss);
  socklen_t len;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_ANY);
    a->sin_port = htons(port);
    len = sizeof(sockaddr_in);
  } else if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_any;
    a->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
  } else {
    return -EAFNOSUPPORT;
  }
  PortPool& pool = PortPool::Get();
  const int f = FamilyIndex(family);
  int fd = pool.Take(f);
  if (fd < 0) {
    fd = NewSocket(family);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && pool.FreeForEmfile()) fd = NewSocket(family);
    if (fd < 0) return -errno;
    pool.NoteMiss(f);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int err = errno;
    // A failed bind leaves the socket as it was (the kernel resets the address
    // it tentatively set); only "this port is not for you" failures are
    // recycled, anything odder closes the socket as before.
    if (!((err == EADDRINUSE || err == EACCES) && pool.PutBack(f, fd))) close(fd);
    return -err;
  }
  // getsockname only when the kernel chose the port: an explicit port is the bound one.
  if (port == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    int err = errno;
    close(fd);  // bound: never a spare
    return -err;
  }
  // sin_port and sin6_port sit at the same offset.
  *bound = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

bool IsTyped(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

// reservePorts(families: Uint8Array, ports: Uint16Array) -> { fds, ports, errnos }
Napi::Value ReservePorts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !IsTyped(info[0], napi_uint8_array) || !IsTyped(info[1], napi_uint16_array) ||
      info[0].As<Napi::Uint8Array>().ElementLength() != info[1].As<Napi::Uint16Array>().ElementLength()) {
    Napi::TypeError::New(env, "reservePorts(families: Uint8Array, ports: Uint16Array) of equal length")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array families = info[0].As<Napi::Uint8Array>();
  Napi::Uint16Array ports = info[1].As<Napi::Uint16Array>();
  size_t n = families.ElementLength();
  Napi::Int32Array fds = Napi::Int32Array::New(env, n);
  Napi::Uint16Array bound = Napi::Uint16Array::New(env, n);
  Napi::Int32Array errnos = Napi::Int32Array::New(env, n);
  for (size_t i = 0; i < n; i++) {
    uint16_t port = 0;
    int r = ReserveOne(families[i], ports[i], &port);
    fds[i] = r >= 0 ? r : -1;
    bound[i] = r >= 0 ? port : 0;
    errnos[i] = r >= 0 ? 0 : -r;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fds", fds);
  out.Set("ports", bound);
  out.Set("errnos", errnos);
  return out;
}

// True when info[0] is an Int32Array; else throws a TypeError naming the signature.
bool FdsArgument(const Napi::CallbackInfo& info, const char* signature) {
  if (info.Length() >= 1 && IsTyped(info[0], napi_int32_array)) return true;
  Napi::TypeError::New(info.Env(), signature).ThrowAsJavaScriptException();
  return false;
}

// closeFds(fds: Int32Array) -> number closed without error. Negative fds are skipped.
Napi::Value CloseFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!FdsArgument(info, "closeFds(fds: Int32Array)")) return env.Undefined();
  Napi::Int32Array fds = info[0].As<Napi::Int32Array>();
  uint32_t closed = 0;
  for (size_t i = 0; i < fds.ElementLength(); i++) {
    // Linux releases the descriptor even when close() fails (EINTR): never retry.
    if (fds[i] >= 0 && close(fds[i]) == 0) closed++;
  }
  return Napi::Number::New(env, closed);
}

// releaseFds(fds: Int32Array) -> number of fds taken (negative ones skipped);
// closed by the pool's thread, or right here when the pool is off.
Napi::Value ReleaseFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!FdsArgument(info, "releaseFds(fds: Int32Array)")) return env.Undefined();
  Napi::Int32Array fds = info[0].As<Napi::Int32Array>();
  std::vector<int> take;
  take.reserve(fds.ElementLength());
  for (size_t i = 0; i < fds.ElementLength(); i++) {
    if (fds[i] >= 0) take.push_back(fds[i]);
  }
  if (!take.empty()) PortPool::Get().Release(take);
  return Napi::Number::New(env, static_cast<double>(take.size()));
}

// configurePortPool({ spares }) -> undefined
Napi::Value ConfigurePortPool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    Napi::TypeError::New(env, "configurePortPool(options: { spares: number })").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t spares = 0;
  if (!GetIntOption(info[0].As<Napi::Object>(), "spares", -1, 0, kMaxSpares, &spares)) return env.Undefined();
  PortPool::Get().Configure(static_cast<size_t>(spares));
  return env.Undefined();
}

// portPoolStats() -> { sparesV4, sparesV6, spareHits, spareMisses, created, asyncClosed, pendingClose,
//                      refillErrors, target, threadError }
Napi::Value PortPoolStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PortPool::Stats s = PortPool::Get().Snapshot();
  Napi::Object out = Napi::Object::New(env);
  out.Set("sparesV4", static_cast<double>(s.spares[0]));
  out.Set("sparesV6", static_cast<double>(s.spares[1]));
  out.Set("spareHits", static_cast<double>(s.hits));
  out.Set("spareMisses", static_cast<double>(s.misses));
  out.Set("created", static_cast<double>(s.created));
  out.Set("asyncClosed", static_cast<double>(s.async_closed));
  out.Set("pendingClose", static_cast<double>(s.pending_close));
  out.Set("refillErrors", static_cast<double>(s.refill_errors));
  out.Set("target", static_cast<double>(s.target));
  out.Set("threadError", s.thread_error);
  return out;
}

}  // namespace

void InitPorts(Napi::Env env, Napi::Object exports) {
  exports.Set("reservePorts", Napi::Function::New(env, ReservePorts, "reservePorts"));
  exports.Set("closeFds", Napi::Function::New(env, CloseFds, "closeFds"));
  exports.Set("releaseFds", Napi::Function::New(env, ReleaseFds, "releaseFds"));
  exports.Set("configurePortPool", Napi::Function::New(env, ConfigurePortPool, "configurePortPool"));
  exports.Set("portPoolStats", Napi::Function::New(env, PortPoolStats, "portPoolStats"));
}

}  // namespace iwpm
