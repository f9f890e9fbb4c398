// SPDX-License-Identifier: Apache-2.0
// two_plugins PLUGIN_A PLUGIN_B TARGET PROMPT TARGET_TEXT: loads two modules that each use the client (consumer.cc
// built twice against the shared library) and runs each one's calls. Two modules linking the static libraries
// registered attribution.proto twice, and protobuf aborted the process at the second's load.
#include <dlfcn.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: two_plugins PLUGIN_A PLUGIN_B TARGET PROMPT TARGET_TEXT\n";
    return 2;
  }
  using RunConsumer = int (*)(const char*, const char*, const char*);
  RunConsumer runs[2] = {};
  for (int i = 0; i < 2; ++i) {
    void* module = ::dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
    if (module == nullptr) {
      std::cerr << ::dlerror() << "\n";
      return 1;
    }
    runs[i] = reinterpret_cast<RunConsumer>(::dlsym(module, "RunConsumer"));
    if (runs[i] == nullptr) {
      std::cerr << ::dlerror() << "\n";
      return 1;
    }
  }
  for (RunConsumer run : runs) {
    if (const int status = run(argv[3], argv[4], argv[5]); status != 0) return status;
  }
  return 0;
}
