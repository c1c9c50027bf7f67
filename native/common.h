// Shared helpers for the iwpm_native addon. The addon knows nothing about IWPM:
// it moves datagrams and binds ports; all protocol work is TypeScript.
#pragma once

#include <napi.h>

namespace iwpm {

// An Error shaped like Node's SystemError: message "syscall CODE: description",
// properties errno (positive), code ("EPROTONOSUPPORT") and syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);

// Throws ErrnoError into JS (exceptions are disabled: callers return afterwards).
void ThrowErrno(Napi::Env env, int err, const char* syscall);

// Each registers its part of the surface (see src/native/types.ts) on exports.
void InitNetlinkSocket(Napi::Env env, Napi::Object exports);
void InitPorts(Napi::Env env, Napi::Object exports);
void InitSys(Napi::Env env, Napi::Object exports);
void InitUdpSocket(Napi::Env env, Napi::Object exports);

}  // namespace iwpm
