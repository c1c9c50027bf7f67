// Module entry point. Context-aware (NODE_API_MODULE), no per-environment
// statics: every piece of state lives in a socket instance (NetlinkSocket,
// UdpSocket), so the addon loads in worker_threads and in several environments at
// once. The one process-wide exception is the port pool (ports.cc): mutex-guarded,
// never freed, shared by all environments, and it never calls into JS.
#include <cstring>
#include <string>

#include "common.h"

namespace iwpm {

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* code = strerrorname_np(err);  // glibc >= 2.32
  const char* desc = strerrordesc_np(err);  // thread-safe, unlike strerror
  std::string name = code ? code : "E" + std::to_string(err);
  std::string msg = std::string(syscall) + " " + name + ": " + (desc ? desc : "Unknown error");
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, name));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  ErrnoError(env, err, syscall).ThrowAsJavaScriptException();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitNetlinkSocket(env, exports);
  InitPorts(env, exports);
  InitSys(env, exports);
  InitUdpSocket(env, exports);
  return exports;
}

}  // namespace iwpm

// NODE_API_MODULE pastes its argument into an identifier: it needs an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return iwpm::Init(env, exports); }

NODE_API_MODULE(iwpm_native, InitModule)
