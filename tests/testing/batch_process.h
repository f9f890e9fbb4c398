// SPDX-License-Identifier: Apache-2.0
// Runs the real attribution-batch binary (ATTRIBUTION_BATCH_BINARY, which the including test defines) as
// a child process, and reads what it wrote: for the data-set job tests.
#pragma once
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/time/clock.h"

namespace attribution::test_support {

// Starts attribution-batch with `args`, output to `log`; kills it with SIGKILL once `kill_when` says so
// (polled every 20 ms) unless it exits first. Returns its exit code (-1 when killed).
// `peak_rss_bytes`, when given, gets the child's maximum resident set size (wait4's rusage). Linux keeps in it
// the larger of the peak after exec and the forked child's size before (the test process's anonymous memory), so
// the test process first returns its freed heap: what it still holds can only raise the figure, never hide a peak.
inline int RunBatch(
    const std::vector<std::string>& args, const std::string& log,
    const std::function<bool()>& kill_when = [] { return false; }, int64_t* peak_rss_bytes = nullptr) {
  std::vector<std::string> argv = {ATTRIBUTION_BATCH_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  if (peak_rss_bytes != nullptr) ::malloc_trim(0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    std::vector<char*> c_args;
    for (std::string& arg : argv) c_args.push_back(arg.data());
    c_args.push_back(nullptr);
    ::execv(c_args[0], c_args.data());
    ::_exit(127);
  }
  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, WNOHANG, &usage) == 0) {
    if (kill_when()) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (peak_rss_bytes != nullptr) *peak_rss_bytes = int64_t{usage.ru_maxrss} * 1024;  // Linux counts KiB
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Every line of a results file, parsed.
inline std::vector<nlohmann::json> ReadResults(const std::string& path) {
  std::vector<nlohmann::json> results;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) results.push_back(nlohmann::json::parse(line));
  return results;
}

inline size_t CountLines(const std::string& path) {
  std::ifstream in(path);
  return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace attribution::test_support
