// Batched TCP port reservation: bind() on the wildcard address without
// listen(), exactly like rdma-core's get_iwpm_tcp_port (spec 4.2). The socket
// holds the port for as long as it stays open; closeFds() releases it.
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common.h"

namespace iwpm {
namespace {

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
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  // getsockname only when the kernel chose the port: an explicit port is the bound one.
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
      (port == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)) {
    int err = errno;
    close(fd);
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

// closeFds(fds: Int32Array) -> number closed without error. Negative fds are skipped.
Napi::Value CloseFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !IsTyped(info[0], napi_int32_array)) {
    Napi::TypeError::New(env, "closeFds(fds: Int32Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Int32Array fds = info[0].As<Napi::Int32Array>();
  uint32_t closed = 0;
  for (size_t i = 0; i < fds.ElementLength(); i++) {
    // Linux releases the descriptor even when close() fails (EINTR): never retry.
    if (fds[i] >= 0 && close(fds[i]) == 0) closed++;
  }
  return Napi::Number::New(env, closed);
}

}  // namespace

void InitPorts(Napi::Env env, Napi::Object exports) {
  exports.Set("reservePorts", Napi::Function::New(env, ReservePorts, "reservePorts"));
  exports.Set("closeFds", Napi::Function::New(env, CloseFds, "closeFds"));
}

}  // namespace iwpm
