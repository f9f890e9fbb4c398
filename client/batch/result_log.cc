// SPDX-License-Identifier: Apache-2.0
#include "client/batch/result_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace attribution::client::batch {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot write", path);
    written += static_cast<size_t>(n);
  }
  return ::fsync(fd) == 0 ? absl::OkStatus() : Errno("cannot sync", path);
}

}  // namespace

bool RetriedOnResume(const std::string& code) {
  return code == "UNAVAILABLE" || code == "RESOURCE_EXHAUSTED" || code == "DEADLINE_EXCEEDED" || code == "CANCELLED";
}

absl::StatusOr<std::unique_ptr<ResultLog>> ResultLog::Open(const std::string& path) {
  std::map<std::string, std::string> done;
  std::string kept;
  bool rewrite = false;
  if (std::ifstream in(path, std::ios::binary); in) {
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    size_t begin = 0;
    while (begin < text.size()) {
      const size_t end = text.find('\n', begin);
      if (end == std::string::npos) {  // cut short by a kill: never counted as done
        rewrite = true;
        break;
      }
      const std::string line = text.substr(begin, end - begin);
      begin = end + 1;
      nlohmann::json result = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (result.is_discarded() || !result.contains("id") || !result["id"].is_string()) {
        return absl::DataLossError(absl::StrCat(path, ": a line is not a result of this tool: ", line.substr(0, 80)));
      }
      const std::string code = result.value("error", nlohmann::json::object()).value("code", "");
      if (RetriedOnResume(code)) {
        rewrite = true;
        continue;
      }
      done[result["id"].get<std::string>()] = result.value("settings_hash", "");
      kept += line + "\n";
    }
  }
  if (rewrite) {
    const std::string temporary = path + ".tmp";
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Errno("cannot create", temporary);
    absl::Status written = WriteAll(fd, kept, temporary);
    ::close(fd);
    if (!written.ok()) return written;
    if (::rename(temporary.c_str(), path.c_str()) != 0) return Errno("cannot rename over", path);
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot open", path);
  return std::unique_ptr<ResultLog>(new ResultLog(path, fd, std::move(done)));
}

ResultLog::ResultLog(std::string path, int fd, std::map<std::string, std::string> done)
    : path_(std::move(path)), fd_(fd), done_(std::move(done)) {}

ResultLog::~ResultLog() { ::close(fd_); }

absl::Status ResultLog::Append(const std::vector<std::string>& lines) {
  if (lines.empty()) return absl::OkStatus();
  std::string bytes;
  for (const std::string& line : lines) absl::StrAppend(&bytes, line, "\n");
  return WriteAll(fd_, bytes, path_);
}

}  // namespace attribution::client::batch
