// SPDX-License-Identifier: Apache-2.0
#include "engine/common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace attribution::engine {

bool FileExists(const std::string& path) {
  // lstat: a dangling or looping link is there (and fails to read, naming itself), not silently absent.
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string ExecutableDir() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  std::string path(self, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/') + 1);
}

namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, bool regular_only) {
  // O_NONBLOCK: opening a named pipe without a writer waited forever (startup hung, deaf to SIGTERM).
  // Pipes are still read (`--config <(envsubst < server.json)`), with blocking reads: without a writer a
  // pipe reads as empty at once. A directory, which an ifstream read as empty, is refused.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": a directory, not a file"));
  }
  if (!S_ISREG(st.st_mode) && regular_only) {
    ::close(fd);
    return NotARegularFile(path, st.st_mode);
  }
  if (!S_ISREG(st.st_mode)) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  // A device reads without end: a config.json linked to /dev/zero grew the process past 4 GB.
  const auto too_large = [&] {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": more than ", kMaxReadFileBytes >> 20,
                                                   " MiB, more than a config or tokenizer file holds"));
  };
  if (S_ISREG(st.st_mode) && st.st_size > kMaxReadFileBytes) return too_large();
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string error = std::strerror(errno);
      ::close(fd);
      return absl::DataLossError(absl::StrCat(path, ": cannot read: ", error));
    }
    if (n == 0) break;
    if (static_cast<int64_t>(text.size()) + n > kMaxReadFileBytes) return too_large();
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) { return ReadWholeFile(path, /*regular_only=*/false); }

absl::StatusOr<std::string> ReadModelFile(const std::string& path) {
  return ReadWholeFile(path, /*regular_only=*/true);
}

absl::Status NotARegularFile(const std::string& path, unsigned int mode) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ",
                                                 S_ISFIFO(mode)   ? "a pipe"
                                                 : S_ISSOCK(mode) ? "a socket"
                                                 : S_ISDIR(mode)  ? "a directory"
                                                                  : "a device",
                                                 ", not a regular file (a model's files are read as written to "
                                                 "its folder)"));
}

}  // namespace attribution::engine
