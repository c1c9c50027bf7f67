// BatchSocket: the machinery NetlinkSocket and UdpSocket share. A non-blocking
// datagram socket driven by a libuv poll on the current environment's loop:
// - receive: each wakeup drains up to batchSize datagrams with recvmmsg and the
//   subclass hands them to JS in one call (Deliver);
// - send: sendmmsg; whatever the kernel refuses for now (EAGAIN/ENOBUFS) is
//   copied into an ordered queue and flushed later; hard per-datagram errors go
//   to onError with the datagram's index;
// - lifetime: an env cleanup hook closes everything when the environment goes
//   away (process exit, Worker exit/terminate); no JS runs after that.
//
// The subclass is also a Napi::ObjectWrap: it parses its options, opens and
// binds fd_, then calls InitRx, StartPolling and Attach, and owns Ref/Unref.
// The uv handles live in a separate heap block that libuv owns until their
// close callbacks ran, so the object may be collected right after close().
#pragma once

#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"

namespace iwpm {

// Every address family the sockets use, as a msg_name buffer.
union SockAddr {
  sockaddr sa;
  sockaddr_nl nl;
  sockaddr_in in4;
  sockaddr_in6 in6;
};

// False once the environment is stopping (process.exit() or terminate() in a
// Worker): Node then still runs the loop to close its own handles, so our uv
// callbacks can fire, but JS must not be entered.
bool CanCallJs(napi_env env);

// Reads options[key] as an integer in [lo, hi]; absent -> def (or TypeError if def < 0).
// False after throwing.
bool GetIntOption(const Napi::Object& o, const char* key, int64_t def, int64_t lo, int64_t hi, int64_t* out);

// Sets SO_RCVBUFFORCE / SO_SNDBUFFORCE (falling back to SO_RCVBUF / SO_SNDBUF) when
// bytes > 0, then reads the effective size back. *option names what set it
// ("default" when bytes == 0). Returns 0 or an errno, with *syscall set.
int SetBufferSize(int fd, bool receive, int bytes, int* effective, const char** option, const char** syscall);

// One datagram waiting for the socket (or its receiver) to accept it.
struct Queued {
  std::vector<uint8_t> bytes;
  SockAddr dest;
  uint32_t index;  // position in the send() call it came from
};

class BatchSocket {
 public:
  BatchSocket(const BatchSocket&) = delete;
  BatchSocket& operator=(const BatchSocket&) = delete;

 protected:
  struct Policy {
    // ENOBUFS from recvmmsg means "the kernel dropped messages" (netlink overrun).
    bool enobufs_is_overrun;
    // POLLOUT means a send can make progress once EAGAIN was seen (UDP: wmem
    // accounting). When false (netlink: the sender is never charged), a blocked
    // queue is retried from a timer with exponential backoff instead.
    bool writable_is_reliable;
    // A send may fail because of an earlier, unrelated asynchronous error (UDP
    // with IP_RECVERR: the socket error set by an ICMP message is returned by the
    // next send, which then did not go out). Retry a failing datagram a couple of
    // times before reporting it as failed.
    bool retry_send_errors;
  };

  // Receive-side errors seen while draining one wakeup. `where` parallels
  // `errors` (sa_family AF_UNSPEC when the error has no address).
  struct RxErrors {
    uint32_t overruns = 0;
    std::vector<int> errors;  // negative errno values
    std::vector<SockAddr> where;
    void Add(int negative_errno, const SockAddr* addr);
  };

  explicit BatchSocket(Policy policy) : policy_(policy) {}
  virtual ~BatchSocket() { Shutdown(); }

  // Receive slots: batch mmsghdrs of slot bytes, msg_name sized addr_len (also the
  // msg_namelen used for sends).
  void InitRx(uint32_t batch, uint32_t slot, socklen_t addr_len);
  // Creates the poll and timer handles for the open fd_ and polls for readability.
  // Returns 0 or an errno (*syscall set).
  int StartPolling(napi_env env, const char** syscall);
  // Keeps the callbacks, creates the async context, adds the env cleanup hook.
  void Attach(napi_env env, const Napi::Function& on_batch, const Napi::Function& on_error, const char* resource,
              const Napi::Object& self);
  // Closes handles and fd, drops the queue; never calls JS. Idempotent.
  void Shutdown();
  // close(): Shutdown and release the JS callbacks (breaks closure cycles).
  void Detach();

  // Sends n datagrams, datagram i to dests[per_datagram_dest ? i : 0], or queues
  // them behind what is already queued. Reports hard failures through onError
  // (synchronously). Returns how many were sent immediately. fd_ must be open.
  double Submit(uint32_t n, const iovec* iov, const SockAddr* dests, bool per_datagram_dest);

  // Builds one batch: copies the received datagrams back to back into a new
  // Buffer and fills offsets/lengths/truncated (counts truncations).
  Napi::Buffer<uint8_t> PackData(uint32_t got, uint32_t* offsets, uint32_t* lengths, uint8_t* truncated);
  static Napi::Array ErrnoArray(Napi::Env env, const std::vector<int>& errors);
  // The counters both sockets report (the subclass may add its own).
  Napi::Object StatsObject(Napi::Env env) const;
  // Calls onBatch(batch) from the loop (MakeCallback: microtasks and nextTicks run
  // afterwards); a throw becomes an uncaught exception.
  void EmitBatch(napi_value batch) { Call(on_batch_, batch); }

  // --- subclass hooks ---
  // The wrapper's JS object (receiver of the callbacks).
  virtual Napi::Object Self() = 0;
  // Hands one wakeup's datagrams (rx_msgs_[0..got), rx_addr_) and errors to JS.
  virtual void Deliver(uint32_t got, RxErrors& errs) = 0;
  // A receive error other than EAGAIN/EINTR. Default: ENOBUFS -> overrun when the
  // policy says so, else recorded as an error.
  virtual void OnRecvError(int err, RxErrors& errs);
  // The poll reported POLLERR (a pending socket error or error-queue entries).
  virtual void OnPollError(RxErrors& /*errs*/) {}

  int fd_ = -1;
  napi_env env_ = nullptr;
  uint32_t batch_ = 64;
  uint32_t slot_ = 2048;
  socklen_t addr_len_ = 0;
  std::vector<iovec> rx_iov_;
  std::vector<SockAddr> rx_addr_;
  std::vector<mmsghdr> rx_msgs_;

  struct {
    double received = 0, sent = 0, overruns = 0, recv_errors = 0, send_errors = 0, truncated = 0;
  } stats_;
  std::deque<Queued> queue_;

 private:
  struct Handles;
  // Outcome of one Transmit(): `done` datagrams were consumed (sent or failed for
  // good); `blocked` = stopped on EAGAIN/ENOBUFS (`block_err`); `failed` = (index, errno).
  struct TxResult {
    size_t done = 0;
    size_t sent = 0;
    bool blocked = false;
    int block_err = 0;
    std::vector<std::pair<uint32_t, int>> failed;
  };

  TxResult Transmit(mmsghdr* msgs, size_t count, const uint32_t* indexes);
  void Flush();
  void Drain(bool pollerr);
  void SetPollEvents(int events);
  void Quiesce();  // stops the handles until the env cleanup hook closes them
  void ReportSendErrors(const std::vector<std::pair<uint32_t, int>>& failed);
  void Call(Napi::FunctionReference& fn, napi_value arg);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnTimer(uv_timer_t* handle);
  static void OnClosed(uv_handle_t* handle);
  static void OnEnvCleanup(void* arg);

  Policy policy_;
  Handles* handles_ = nullptr;
  int poll_events_ = 0;
  bool hook_added_ = false;
  uint64_t backoff_ms_ = 0;
  Napi::FunctionReference on_batch_;
  Napi::FunctionReference on_error_;
  std::unique_ptr<Napi::AsyncContext> async_;
  std::vector<uint8_t> slab_;
  // Send scratch, reused across calls (never touched after JS may have run).
  std::vector<mmsghdr> tx_msgs_;
  std::vector<iovec> tx_iov_;
  std::vector<uint32_t> tx_index_;
};

}  // namespace iwpm
