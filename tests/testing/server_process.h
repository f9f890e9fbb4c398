// SPDX-License-Identifier: Apache-2.0
// Runs the real attribution-server binary as a child process for end-to-end tests: on loopback, on
// ports the server picks itself (reported through --port_file), its log captured in a file.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/temp_dir.h"

namespace attribution::test_support {

// The demo model directory the test_data fixture writes (tools/make_demo_model.py).
std::string DemoModelDir();

// "--model=NAME=DIR/NAME,...": a server flag serving each of `names` from its folder under `dir`.
std::string ModelsFlag(const std::string& dir, const std::vector<std::string>& names);

// How a server process starts: its open-files limits (0: as this process has them), where its stdout and
// stderr go (-1: its log file, which Log() reads), whether it ignores SIGHUP (as under nohup), and variables
// ("NAME=VALUE") added to this process's environment, a cgroup's cgroup.procs file it joins before it runs, and
// the size its files may grow to (RLIMIT_FSIZE; 0: as this process has it).
struct ProcessSetup {
  uint64_t open_files_soft = 0;
  uint64_t open_files_hard = 0;
  uint64_t file_size_bytes = 0;
  uint64_t stack_bytes = 0;  // RLIMIT_STACK, soft and hard (as `prlimit --stack`)
  int output_fd = -1;
  bool ignore_hangup = false;
  std::vector<std::string> environment;
  std::string cgroup_procs_file;
};

class ServerProcess {
 public:
  // Starts the server with `args` plus loopback listen flags and waits until it serves (health
  // SERVING, port file written) or fails (its log in the status message).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::vector<std::string>& args,
                                                              absl::Duration timeout = absl::Seconds(120),
                                                              const ProcessSetup& setup = {});
  // Starts the server without waiting for anything: port() and metrics_port() stay 0.
  static std::unique_ptr<ServerProcess> Spawn(const std::vector<std::string>& args, const ProcessSetup& setup = {});
  // Runs the server expecting it to exit by itself (e.g. on a bad config); returns its exit code and log.
  static std::pair<int, std::string> RunToExit(const std::vector<std::string>& args,
                                               absl::Duration timeout = absl::Seconds(60));
  ~ServerProcess();  // kills a server still running

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  void Signal(int signal) const;
  // SIGSTOP, returning once every thread has stopped: the kernel stops threads one by one, so right after
  // kill() a thread can still answer a call. Resume with Signal(SIGCONT).
  void Pause();
  // Waits for the exit; the exit code, or -1 when it did not exit in time or died of a signal.
  int Wait(absl::Duration timeout);
  std::string Log() const;
  // The log's whole lines once they hold `text`, or as they are after `timeout`: a call's line is written by the
  // server's log thread after the call ended, so a client can have its answer before the line is there.
  std::string LogOnceItHolds(const std::string& text, absl::Duration timeout = absl::Seconds(10)) const;

 private:
  ServerProcess() = default;
  void Launch(const std::vector<std::string>& args, const ProcessSetup& setup = {});

  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
};

// GET http://127.0.0.1:port/path; the body, or the error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// The value of one series (name{labels}) in a server's /metrics; 0 when it is not there (yet).
double MetricValue(int metrics_port, const std::string& series);

// Polls the metrics endpoint until `model`'s engine has rows queued: a call sent before is then known
// to be on the server (a fixed sleep is not enough on a loaded machine). False after 30 s.
bool WaitForQueuedRows(int metrics_port, const std::string& model);

// Polls the metrics endpoint until `model`'s engine has no rows queued and no call is in flight (its
// answers may still be on their way). False when that did not happen within `timeout`.
bool WaitForIdle(int metrics_port, const std::string& model, absl::Duration timeout);

// A field of /proc/PID/status in MB (VmRSS: resident now, VmHWM: the peak); -1 when there is none.
double ProcessStatusMegabytes(pid_t pid, const std::string& field);

}  // namespace attribution::test_support
