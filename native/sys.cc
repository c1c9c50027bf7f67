// Small process-level helpers: fd limits, fd table pre-growth, sd_notify-style
// AF_UNIX datagrams, getpid.
#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "common.h"

namespace iwpm {
namespace {

double LimitValue(rlim_t v) { return v == RLIM_INFINITY ? -1.0 : static_cast<double>(v); }

// raiseNofileLimit() -> { soft, hard } after raising soft to hard (-1 = unlimited).
Napi::Value RaiseNofileLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    ThrowErrno(env, errno, "getrlimit");
    return env.Undefined();
  }
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0) {
      ThrowErrno(env, errno, "setrlimit");
      return env.Undefined();
    }
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("soft", LimitValue(rl.rlim_cur));
  out.Set("hard", LimitValue(rl.rlim_max));
  return out;
}

// pregrowFdTable(count) -> fd used (>= min(count, soft limit) - 1), or -errno.
// The kernel grows a process's fd table by doubling, which copies it; doing it
// once at startup keeps that cost off the request path.
Napi::Value PregrowFdTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double d = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  if (!(d >= 1 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int>(d))) {
    Napi::TypeError::New(env, "pregrowFdTable(count): count must be an integer >= 1").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return Napi::Number::New(env, -errno);
  long target = static_cast<long>(d);
  if (rl.rlim_cur != RLIM_INFINITY && static_cast<rlim_t>(target) > rl.rlim_cur) target = static_cast<long>(rl.rlim_cur);
  int src = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (src < 0) src = eventfd(0, EFD_CLOEXEC);
  if (src < 0) return Napi::Number::New(env, -errno);
  // F_DUPFD takes the lowest free fd >= target - 1: it never replaces an open one.
  int fd = fcntl(src, F_DUPFD_CLOEXEC, static_cast<int>(target - 1));
  int err = errno;
  close(src);
  if (fd < 0) return Napi::Number::New(env, -err);
  close(fd);
  return Napi::Number::New(env, fd);
}

// unixDatagramSend(path, data) -> 0 or -errno. Non-blocking: a full receiver
// gives -EAGAIN instead of stalling the event loop.
Napi::Value UnixDatagramSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "unixDatagramSend(path: string, data: Buffer)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();

  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path.empty() || path == "@") return Napi::Number::New(env, -EINVAL);
  if (path.size() >= sizeof addr.sun_path) return Napi::Number::New(env, -ENAMETOOLONG);
  std::memcpy(addr.sun_path, path.data(), path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  if (path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract namespace: no terminating NUL counted
  } else {
    len += 1;
  }

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  ssize_t r = sendto(fd, data.Data(), data.ByteLength(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int err = r < 0 ? errno : 0;
  close(fd);
  return Napi::Number::New(env, -err);
}

Napi::Value GetPid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), getpid()); }

}  // namespace

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("raiseNofileLimit", Napi::Function::New(env, RaiseNofileLimit, "raiseNofileLimit"));
  exports.Set("pregrowFdTable", Napi::Function::New(env, PregrowFdTable, "pregrowFdTable"));
  exports.Set("unixDatagramSend", Napi::Function::New(env, UnixDatagramSend, "unixDatagramSend"));
  exports.Set("getpid", Napi::Function::New(env, GetPid, "getpid"));
}

}  // namespace iwpm
