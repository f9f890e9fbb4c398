// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the libFuzzer targets in tests/fuzz: a scratch folder for parsers that read files,
// and a check that stops the run (a crash for libFuzzer) when a parser's promise is broken.
#pragma once

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

// Aborts with the failed condition: libFuzzer reports it as a crash and keeps the input.
#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (false)

namespace attribution::fuzz {

// A folder of this process (in /dev/shm where there is one, so writes stay in memory), made once and
// removed with its contents when the process exits normally (a crash leaves it for inspection).
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    std::string pattern =
        access("/dev/shm", W_OK) == 0 ? "/dev/shm/attribution-fuzz-XXXXXX" : "/tmp/attribution-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    return pattern;
  }();
  // Registered once `dir` is complete, so it runs before `dir` is destroyed.
  static const int cleanup = std::atexit([] {
    nftw(
        ScratchDir().c_str(), [](const char* path, const struct stat*, int, FTW*) { return remove(path); }, 16,
        FTW_DEPTH | FTW_PHYS);
  });
  (void)cleanup;
  return dir;
}

// Replaces the file `name` in ScratchDir() by `size` bytes of `data`; returns its path.
inline std::string WriteScratchFile(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = ScratchDir() + "/" + name;
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  for (size_t written = 0; written < size;) {
    const ssize_t n = write(fd, data + written, size - written);
    if (n <= 0) std::abort();
    written += static_cast<size_t>(n);
  }
  close(fd);
  return path;
}

}  // namespace attribution::fuzz
