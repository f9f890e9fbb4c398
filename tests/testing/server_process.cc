// SPDX-License-Identifier: Apache-2.0
#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/common/files.h"

namespace attribution::test_support {
namespace {

// waitpid with a timeout; the exit code, -2 on a signal death, -1 when still running.
int WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    if (absl::Now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling a child: no event to wait on
  }
}

}  // namespace

std::string ModelsFlag(const std::string& dir, const std::vector<std::string>& names) {
  std::string flag = "--model=";
  for (size_t i = 0; i < names.size(); ++i) absl::StrAppend(&flag, i ? "," : "", names[i], "=", dir, "/", names[i]);
  return flag;
}

std::string DemoModelDir() {
  const char* env = std::getenv("ATTRIBUTION_DEMO_MODEL");
  return env != nullptr ? env : ATTRIBUTION_DEMO_MODEL_DIR;
}

namespace {

// `strings` as execve() takes them: pointers into them, then a null pointer.
std::vector<char*> NullTerminated(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

void ServerProcess::Launch(const std::vector<std::string>& args, const ProcessSetup& setup) {
  std::vector<std::string> argv = {ATTRIBUTION_SERVER_BINARY, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                   "--port_file=" + dir_.File("ports")};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string log = dir_.File("server.log");
  // Built before fork: the child of a threaded process may only make async-signal-safe calls.
  // The setup's variables replace inherited ones of their names: ld.so takes the last LD_PRELOAD of several.
  std::vector<std::string> environment = setup.environment;
  auto overridden = [&](const char* variable) {
    const std::string_view name(variable, std::strcspn(variable, "="));
    return std::any_of(setup.environment.begin(), setup.environment.end(),
                       [&](const std::string& own) { return own.compare(0, own.find('='), name) == 0; });
  };
  for (char** variable = environ; *variable != nullptr; ++variable) {
    if (!overridden(*variable)) environment.emplace_back(*variable);
  }
  std::vector<char*> c_environment = NullTerminated(environment), c_args = NullTerminated(argv);
  pid_ = ::fork();
  if (pid_ == 0) {
    const int fd = setup.output_fd >= 0 ? setup.output_fd : ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    if (setup.open_files_soft != 0 || setup.open_files_hard != 0) {
      rlimit open_files{};
      ::getrlimit(RLIMIT_NOFILE, &open_files);
      if (setup.open_files_soft != 0) open_files.rlim_cur = setup.open_files_soft;
      if (setup.open_files_hard != 0) open_files.rlim_max = setup.open_files_hard;
      if (::setrlimit(RLIMIT_NOFILE, &open_files) != 0) ::_exit(126);
    }
    if (setup.file_size_bytes != 0) {
      rlimit file_size{};
      ::getrlimit(RLIMIT_FSIZE, &file_size);
      file_size.rlim_cur = setup.file_size_bytes;
      if (::setrlimit(RLIMIT_FSIZE, &file_size) != 0) ::_exit(126);
    }
    if (setup.stack_bytes != 0) {
      const rlimit stack{setup.stack_bytes, setup.stack_bytes};
      if (::setrlimit(RLIMIT_STACK, &stack) != 0) ::_exit(126);
    }
    if (!setup.cgroup_procs_file.empty()) {
      // "0" moves the writer itself.
      const int procs = ::open(setup.cgroup_procs_file.c_str(), O_WRONLY);
      if (procs < 0 || ::write(procs, "0", 1) != 1) ::_exit(125);
      ::close(procs);
    }
    // As started from a terminal, whatever ran the tests (nohup, a background job) ignored: the server takes
    // only the signals it was not started to ignore.
    ::signal(SIGHUP, setup.ignore_hangup ? SIG_IGN : SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    ::execve(c_args[0], c_args.data(), c_environment.data());
    ::_exit(127);
  }
}

std::unique_ptr<ServerProcess> ServerProcess::Spawn(const std::vector<std::string>& args, const ProcessSetup& setup) {
  auto server = std::unique_ptr<ServerProcess>(new ServerProcess());
  server->Launch(args, setup);
  return server;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const std::vector<std::string>& args,
                                                                    absl::Duration timeout, const ProcessSetup& setup) {
  std::unique_ptr<ServerProcess> server = Spawn(args, setup);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::ifstream ports(server->dir_.File("ports"));
    if (ports >> server->port_ >> server->metrics_port_) return server;
    int status = 0;
    if (::waitpid(server->pid_, &status, WNOHANG) == server->pid_) {
      server->pid_ = -1;
      return absl::InternalError(absl::StrCat("the server exited while starting:\n", server->Log()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("the server did not start in time:\n", server->Log()));
}

std::pair<int, std::string> ServerProcess::RunToExit(const std::vector<std::string>& args, absl::Duration timeout) {
  ServerProcess server;
  server.Launch(args);
  const int code = server.Wait(timeout);
  return {code, server.Log()};
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void ServerProcess::Signal(int signal) const { ::kill(pid_, signal); }

void ServerProcess::Pause() {
  ::kill(pid_, SIGSTOP);
  int status = 0;
  pid_t waited;
  do {
    waited = ::waitpid(pid_, &status, WUNTRACED);
  } while (waited == -1 && errno == EINTR);
  if (waited == pid_ && !WIFSTOPPED(status)) pid_ = -1;  // it had exited, and is reaped now
}

int ServerProcess::Wait(absl::Duration timeout) {
  const int code = WaitFor(pid_, timeout);
  if (code != -1) pid_ = -1;
  return code < 0 ? -1 : code;
}

std::string ServerProcess::Log() const { return engine::ReadFile(dir_.File("server.log")).value_or(""); }

std::string ServerProcess::LogOnceItHolds(const std::string& text, absl::Duration timeout) const {
  for (const absl::Time give_up = absl::Now() + timeout;; absl::SleepFor(absl::Milliseconds(20))) {
    std::string log = Log();
    // Whole lines only: the server may be writing one, and a line cut short there held `text` but did not parse.
    log.erase(log.rfind('\n') + 1);
    if (log.find(text) != std::string::npos || absl::Now() > give_up) return log;
  }
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  (void)::send(fd, request.data(), request.size(), 0);
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) response.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos) {
    return absl::NotFoundError(response.substr(0, response.find("\r\n")));
  }
  return response.substr(body + 4);
}

double MetricValue(int metrics_port, const std::string& series) {
  absl::StatusOr<std::string> metrics = HttpGet(metrics_port, "/metrics");
  // At a line's start: a series without labels also appears in its family's "# HELP" line.
  const std::string key = "\n" + series + " ";
  if (!metrics.ok()) return 0;
  const size_t at = ("\n" + *metrics).find(key);
  if (at == std::string::npos) return 0;
  return std::stod(metrics->substr(at + key.size() - 1));
}

bool WaitForQueuedRows(int metrics_port, const std::string& model) {
  const std::string series = absl::StrCat("attribution_engine_queued_rows{model=\"", model, "\"}");
  for (int attempt = 0; attempt < 3000; ++attempt) {
    if (MetricValue(metrics_port, series) > 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling a server: no event to wait on
  }
  return false;
}

bool WaitForIdle(int metrics_port, const std::string& model, absl::Duration timeout) {
  const std::string queued = absl::StrCat("attribution_engine_queued_rows{model=\"", model, "\"}");
  const absl::Time deadline = absl::Now() + timeout;
  do {
    if (MetricValue(metrics_port, queued) == 0 && MetricValue(metrics_port, "attribution_rpcs_in_flight") == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling a server: no event to wait on
  } while (absl::Now() < deadline);
  return false;
}

double ProcessStatusMegabytes(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024;
  }
  return -1;
}

}  // namespace attribution::test_support
