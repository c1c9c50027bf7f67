{
  "targets": [
    {
      "target_name": "iwpm_native",
      "sources": [
        "native/addon.cc",
        "native/batch_socket.cc",
        "native/netlink_socket.cc",
        "native/ports.cc",
        "native/sys.cc",
        "native/udp_socket.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-fno-exceptions"],
      "cflags_cc!": ["-fno-rtti"]
    }
  ]
}
