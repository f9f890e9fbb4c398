// SPDX-License-Identifier: Apache-2.0
// How the server process ends, through the real binary: a signal while its models load ends it at once,
// and when gRPC stops accepting connections (out of file descriptors) it drains and exits 1 to be
// restarted instead of living on with a dead port; while a model's batch makes no progress (a hung device)
// it is NOT_SERVING; steps of its wall clock change nothing. Also: the open-files limit it raises at startup.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/attribution_client.h"
#include "engine/common/files.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::MetricValue;
using test_support::ServerProcess;

// Polls the server's log until it holds `text`; false after `timeout`.
bool WaitForLog(const ServerProcess& server, const std::string& text, absl::Duration timeout) {
  return server.LogOnceItHolds(text, timeout).find(text) != std::string::npos;
}

// The soft and hard "Max open files" of a running process, from /proc/PID/limits.
std::pair<std::string, std::string> OpenFileLimits(pid_t pid) {
  std::ifstream limits(absl::StrCat("/proc/", pid, "/limits"));
  for (std::string line; std::getline(limits, line);) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::string("Max open files").size()));
    std::string soft, hard;
    fields >> soft >> hard;
    return {soft, hard};
  }
  return {};
}

// Adds to the safetensors file `path` a tensor no model reads, of `bytes` zeros, as a hole in the file (no disk
// space): the load passes it over, but the weights digest reads every byte, for seconds, as a checkpoint of tens
// of GB on slow storage does.
void AddSparseUnusedTensor(const std::string& path, int64_t bytes) {
  std::ifstream in(path, std::ios::binary);
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json parsed = nlohmann::json::parse(header);
  const int64_t end = static_cast<int64_t>(data.size());
  parsed["unused.padding"] = {{"dtype", "U8"}, {"shape", {bytes}}, {"data_offsets", {end, end + bytes}}};
  std::string new_header = parsed.dump();
  new_header.resize((new_header.size() + 7) / 8 * 8, ' ');
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const uint64_t new_size = new_header.size();
    out.write(reinterpret_cast<const char*>(&new_size), 8);
    out << new_header << data;
  }
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(8 + new_header.size() + end + bytes)), 0);
}

// A load that takes long (here the weights digest over 64 GB of zeros; before, a pipe for a weights index that
// the test held open, which the server now refuses as no regular file) ends at a signal at once, and says what
// it was doing.
TEST(Lifecycle, ASignalWhileModelsLoadEndsTheProcessAtOnce) {
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(test_support::DemoModelDir(), dir);
  AddSparseUnusedTensor(dir + "/model.safetensors", int64_t{64} << 30);

  std::unique_ptr<ServerProcess> server = ServerProcess::Spawn({"--model=m=" + dir});
  // The load has begun; reading 64 GB for the digest takes far longer than the signal takes to arrive.
  ASSERT_TRUE(WaitForLog(*server, "\"model_loading\"", absl::Seconds(60))) << server->Log();
  server->Signal(SIGTERM);
  // Before, the server waited for the load (with a pipe: forever) and the test's Wait timed out (-1).
  const int code = server->Wait(absl::Seconds(20));
  EXPECT_EQ(code, 0) << server->Log();
  EXPECT_NE(server->Log().find("signal 15 while loading model m from " + dir + ", before serving: exiting at once"),
            std::string::npos)
      << server->Log();
}

// --check_config waiting on a pipe its --config names (a writer holds it open and never writes): a signal ends
// it with exit 1, since nothing was checked (it exited 0, which says "valid").
TEST(Lifecycle, ACheckEndedByASignalExitsOne) {
  test_support::TempDir root;
  const std::string config = root.File("server.json");
  ASSERT_EQ(::mkfifo(config.c_str(), 0644), 0);
  const int writer = ::open(config.c_str(), O_RDWR | O_CLOEXEC);  // O_RDWR: opening does not wait for a reader
  ASSERT_GE(writer, 0);
  std::unique_ptr<ServerProcess> server = ServerProcess::Spawn({"--check_config", "--config=" + config});
  // Into the read of the config: the main thread waits on the pipe (before, loading LibTorch's libraries can take
  // longer than any fixed wait, and a signal then met its default action).
  const std::string wait_channel = absl::StrCat("/proc/", server->pid(), "/wchan");
  for (int i = 0; i < 600 && engine::ReadFile(wait_channel).value_or("").find("pipe_read") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_THAT(engine::ReadFile(wait_channel).value_or(""), ::testing::HasSubstr("pipe_read"));
  server->Signal(SIGTERM);
  const int code = server->Wait(absl::Seconds(20));
  ::close(writer);
  EXPECT_EQ(code, 1) << server->Log();
  EXPECT_NE(server->Log().find("before the check ended: exiting, nothing was checked"), std::string::npos)
      << server->Log();
}

// Answers `calls` Logprobs calls on four connections at once; the count of those not OK.
int FailedLogprobs(const ServerProcess& server, int calls) {
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      absl::StatusOr<std::unique_ptr<client::AttributionClient>> client =
          client::AttributionClient::Connect({.target = server.address(), .timeout = absl::Seconds(20)});
      if (!client.ok()) return void(failed += calls / 4);
      for (int i = 0; i < calls / 4; ++i) {
        if (!(*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c"}).ok()) ++failed;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  return failed;
}

// Whatever reads the server's stderr may stop reading (a stalled log shipper, a container runtime's full
// pipe). Each call's log line was a blocking write on the thread that ended it (the engine's executor for
// most): once the pipe's 64 KiB were full every call ran to its deadline, health still said SERVING, and
// SIGTERM (whose own log line blocked) could not stop the process. The log now has a thread of its own.
TEST(Lifecycle, AStderrNobodyReadsCostsNoCallsAndNoExit) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                     {.output_fd = pipe_fds[1]});
  ::close(pipe_fds[1]);
  ASSERT_THAT(server, IsOk());
  // About 250 bytes of log a call: 1,000 calls are four pipes' worth, none of it read.
  EXPECT_EQ(FailedLogprobs(**server, 1000), 0);
  (*server)->Signal(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(30)), 0);  // its last lines cannot be written: it exits without
  ::close(pipe_fds[0]);
}

// A reader of stderr that is gone (a restarted log collector, a closed terminal): the next log line's write
// raised SIGPIPE, which killed the server mid-call (exit 141). SIGHUP (a closed session) killed it too,
// without a drain; it now drains as SIGTERM does.
TEST(Lifecycle, AStderrWhoseReaderIsGoneAndSigHupNeitherKillTheServer) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                     {.output_fd = pipe_fds[1]});
  ::close(pipe_fds[1]);
  ::close(pipe_fds[0]);  // every write to the server's stderr is now EPIPE
  ASSERT_THAT(server, IsOk());
  EXPECT_EQ(FailedLogprobs(**server, 40), 0);
  // Counted on the log's thread, which may trail the answers.
  double dropped = 0;
  for (int i = 0; i < 500 && dropped < 40; ++i, std::this_thread::sleep_for(std::chrono::milliseconds(10))) {
    dropped = MetricValue((*server)->metrics_port(), "attribution_log_lines_dropped_total");
  }
  EXPECT_GE(dropped, 40);
  (*server)->Signal(SIGHUP);
  EXPECT_EQ((*server)->Wait(absl::Seconds(30)), 0);  // drained: exit 0, not death by a signal (-2)
}

// Started to ignore SIGHUP (nohup), the server keeps ignoring it: a blocked signal reaches sigwait even when
// ignored, so taking it anyway would drain a server its operator meant to outlive the session.
TEST(Lifecycle, SigHupIgnoredAtStartStaysIgnored) {
  auto server =
      ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120), {.ignore_hangup = true});
  ASSERT_THAT(server, IsOk());
  (*server)->Signal(SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(FailedLogprobs(**server, 4), 0);
  EXPECT_EQ((*server)->Log().find("draining"), std::string::npos) << (*server)->Log();
  (*server)->Signal(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(30)), 0);
}

TEST(Lifecycle, RaisesTheSoftOpenFilesLimitToTheHardOne) {
  rlimit own{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &own), 0);
  if (own.rlim_max < 4096) GTEST_SKIP() << "this process's hard limit of open files is " << own.rlim_max;
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                     {.open_files_soft = 256, .open_files_hard = 4096});
  ASSERT_THAT(server, IsOk());
  EXPECT_EQ(OpenFileLimits((*server)->pid()), std::make_pair(std::string("4096"), std::string("4096")));
  EXPECT_NE((*server)->Log().find("open files limit 4096"), std::string::npos) << (*server)->Log();
}

// Entries of a /proc directory (descriptors, threads), "." and ".." aside; -1 when it cannot be read.
int EntriesOf(const std::string& dir_path) {
  DIR* dir = ::opendir(dir_path.c_str());
  if (dir == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = ::readdir(dir)) count += entry->d_name[0] != '.';
  ::closedir(dir);
  return count;
}

// Dashboards and alerts written for any service read process_* (memory against the pod's limit, descriptors
// against the limit gRPC's listener dies at, restarts by start time): the server exported none. Each is checked
// against /proc as this test reads it, and the test's own clock.
TEST(Lifecycle, ProcessMetricsAgreeWithProcAndTheClock) {
  const double started = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  const int port = (*server)->metrics_port();
  const pid_t pid = (*server)->pid();
  const double rss_mb = MetricValue(port, "process_resident_memory_bytes") / (1 << 20);
  EXPECT_NEAR(rss_mb, test_support::ProcessStatusMegabytes(pid, "VmRSS"), 0.1 * rss_mb);
  const double virtual_mb = MetricValue(port, "process_virtual_memory_bytes") / (1 << 20);
  EXPECT_NEAR(virtual_mb, test_support::ProcessStatusMegabytes(pid, "VmSize"), 0.05 * virtual_mb);
  EXPECT_NEAR(MetricValue(port, "process_threads"), EntriesOf(absl::StrCat("/proc/", pid, "/task")), 4);
  // The scrape's own connection is one more while it is served.
  EXPECT_NEAR(MetricValue(port, "process_open_fds"), EntriesOf(absl::StrCat("/proc/", pid, "/fd")), 3);
  EXPECT_EQ(absl::StrCat(static_cast<int64_t>(MetricValue(port, "process_max_fds"))), OpenFileLimits(pid).first);
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double start_time = MetricValue(port, "process_start_time_seconds");
  EXPECT_GE(start_time, started - 1.5);
  EXPECT_LE(start_time, now);
  // proc(5): utime and stime are fields 14 and 15, in clock ticks, counted after the command's ")".
  const auto cpu_from_proc = [pid] {
    std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
    const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::vector<std::string> field((std::istream_iterator<std::string>(fields)), std::istream_iterator<std::string>());
    return (std::stod(field.at(14 - 3)) + std::stod(field.at(15 - 3))) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  };
  const double before = cpu_from_proc();
  const double cpu = MetricValue(port, "process_cpu_seconds_total");
  const double after = cpu_from_proc();
  EXPECT_GT(cpu, 0);
  EXPECT_GE(cpu, before);
  EXPECT_LE(cpu, after);
}

// A log file that reached the file size limit (`ulimit -f`) killed the server with SIGXFSZ (status 153, calls lost,
// no line said why): the log's writer now gets EFBIG, drops lines and goes on, as with a full disk.
TEST(Lifecycle, ALogAtTheFileSizeLimitCostsLinesNotTheServer) {
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                     {.file_size_bytes = 20000});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  for (int i = 0; i < 200; ++i) {  // a call's line is about 300 bytes: the log reaches the limit on the way
    ASSERT_THAT((*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c", .request_id = "call"}), IsOk())
        << i << "\n"
        << (*server)->Log();
  }
  // The lines are written by the log's thread, after their calls.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*server)->Log().size() < 19500 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_GE((*server)->Log().size(), 19500u);
  EXPECT_THAT((*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c"}), IsOk());
  EXPECT_EQ(::kill((*server)->pid(), 0), 0);
}

// `ulimit -s 256` (RLIMIT_STACK, which glibc gives every thread as its stack) let the server say SERVING and then
// die of SIGSEGV in MKL on its second attribution, with no line in the log; at 128 KiB on the first connection.
TEST(Lifecycle, ASmallStackLimitDoesNotShrinkTheThreadsStacks) {
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                     {.stack_bytes = 128 << 10});
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT((*server)->Log(), ::testing::HasSubstr(R"("thread_stack":"8 MiB (glibc's default was )"));
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  for (const char* method : {"integrated_gradients", "saliency", "attn_lrp", "feature_ablation"}) {
    EXPECT_THAT(
        (*client)->Attribute({.model = "m", .prompt = "Q: Is the kettle warm? A:", .target = " yes", .method = method}),
        IsOk())
        << method << "\n"
        << (*server)->Log();
  }
  EXPECT_EQ(::kill((*server)->pid(), 0), 0);
}

// Every call wrote an INFO line, a replica answering thousands of calls a second one for each: --log_level keeps the
// calls' and gRPC's lines at or above it. Below warning go the call lines, below info gRPC's DEBUG lines
// (GRPC_VERBOSITY=debug); the server's events (listening, serving, a model's warning, stopped) stay.
TEST(Lifecycle, TheLogLevelKeepsTheLinesAtOrAboveIt) {
  test_support::TempDir root;
  const std::string ids_only = root.File("ids-only");
  ASSERT_EQ(::mkdir(ids_only.c_str(), 0755), 0);
  for (const char* file : {"config.json", "generation_config.json", "model.safetensors"}) {
    const std::string from = test_support::DemoModelDir() + "/" + file, to = ids_only + "/" + file;
    ASSERT_EQ(::symlink(from.c_str(), to.c_str()), 0) << file;
  }
  for (const std::string level : {"warning", "info"}) {
    SCOPED_TRACE(level);
    auto server = ServerProcess::Start(
        {"--model=m=" + test_support::DemoModelDir(), "--model=ids=" + ids_only, "--log_level=" + level},
        absl::Seconds(120), {.environment = {"GRPC_VERBOSITY=debug"}});
    ASSERT_THAT(server, IsOk());
    auto client = client::AttributionClient::Connect({.target = (*server)->address()});
    ASSERT_THAT(client, IsOk());
    ASSERT_THAT((*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c", .request_id = "the-call"}),
                IsOk());
    // Once the server has stopped, every line it wrote is in the log, the call's among them if it was written.
    (*server)->Signal(SIGTERM);
    const std::string log = (*server)->LogOnceItHolds(R"("event":"stopped")");
    EXPECT_THAT(log, ::testing::HasSubstr(R"("event":"stopped")"));
    EXPECT_THAT(log, ::testing::HasSubstr("serves token ids only"));
    EXPECT_THAT(log, ::testing::HasSubstr(R"("event":"serving")"));
    EXPECT_THAT(log, ::testing::Not(::testing::HasSubstr(R"("severity":"DEBUG")")));
    if (level == "info") {
      EXPECT_THAT(log, ::testing::HasSubstr("the-call"));
    } else {
      EXPECT_THAT(log, ::testing::Not(::testing::HasSubstr("the-call")));
    }
  }
  // As the server writes them without a level: gRPC's DEBUG lines are there.
  auto every_line = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120),
                                         {.environment = {"GRPC_VERBOSITY=debug"}});
  ASSERT_THAT(every_line, IsOk());
  EXPECT_THAT((*every_line)->Log(), ::testing::HasSubstr(R"("severity":"DEBUG")"));
}

// A cgroup of its own with a CPU quota, removed at scope exit; none where cgroups cannot be written here.
class QuotaCgroup {
 public:
  explicit QuotaCgroup(int quota_percent_of_a_cpu) {
    const std::string name = absl::StrCat("/attribution-test-", ::getpid());
    // cgroup v1's cpu controller, else v2 (where the root lets children use the cpu controller).
    for (const auto& [mount, v2] :
         {std::pair<std::string, bool>{"/sys/fs/cgroup/cpu", false}, {"/sys/fs/cgroup", true}}) {
      const std::string dir = mount + name;
      if (::mkdir(dir.c_str(), 0755) != 0) continue;
      const std::string quota = absl::StrCat(quota_percent_of_a_cpu * 1000);
      if (std::ofstream(dir + (v2 ? "/cpu.max" : "/cpu.cfs_quota_us")) << (v2 ? quota + " 100000" : quota)) {
        dir_ = dir;
        return;
      }
      ::rmdir(dir.c_str());
    }
  }
  ~QuotaCgroup() {
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  bool ok() const { return !dir_.empty(); }
  std::string procs_file() const { return dir_ + "/cgroup.procs"; }

 private:
  std::string dir_;
};

nlohmann::json ListeningLine(const ServerProcess& server) {
  std::istringstream log(server.Log());
  for (std::string line; std::getline(log, line);) {
    if (line.find("\"listening\"") != std::string::npos) return nlohmann::json::parse(line);
  }
  return nullptr;
}

// A pod's limits.cpu is a CFS quota: LibTorch sized its pool to the node's cores, and threads past the quota
// burned it spinning (a 0.5-CPU quota on 2 cores: 2.6 -> 3.1 integrated-gradient answers a second).
TEST(Lifecycle, IntraOpThreadsFitTheCgroupCpuQuotaUnlessOmpNumThreadsSaysOtherwise) {
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one CPU: every count is one";
  QuotaCgroup cgroup(50);
  if (!cgroup.ok()) GTEST_SKIP() << "cannot make a cgroup with a CPU quota here";
  test_support::ProcessSetup setup{.cgroup_procs_file = cgroup.procs_file()};
  {
    auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120), setup);
    ASSERT_THAT(server, IsOk());
    const nlohmann::json listening = ListeningLine(**server);
    EXPECT_EQ(listening.value("intra_op_threads", -1), 1) << listening;
    EXPECT_NE(listening.value("intra_op_threads_for", "").find("cgroup CPU quota of 0.50"), std::string::npos)
        << listening;
  }
  setup.environment = {"OMP_NUM_THREADS=2"};
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir()}, absl::Seconds(120), setup);
  ASSERT_THAT(server, IsOk());
  const nlohmann::json listening = ListeningLine(**server);
  EXPECT_EQ(listening.value("intra_op_threads", -1), 2) << listening;
  EXPECT_EQ(listening.value("intra_op_threads_for", ""), "OMP_NUM_THREADS=2") << listening;
}

// gRPC 1.51's listener stops accepting for good once accept() fails with EMFILE, even after the
// connections close. The server sees it in gRPC's log, drains and exits 1 so that it is restarted; before,
// it lived on, deaf, and a client that held as many connections as its limit had it down for good.
TEST(Lifecycle, OutOfFileDescriptorsTheServerDrainsAndExitsOneInsteadOfServingNoOne) {
  auto server = ServerProcess::Start({"--model=m=" + test_support::DemoModelDir(), "--grace_period_seconds=5"},
                                     absl::Seconds(120), {.open_files_soft = 128, .open_files_hard = 128});
  ASSERT_THAT(server, IsOk());
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>((*server)->port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<int> connections;
  for (int i = 0; i < 200; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    connections.push_back(fd);
    // The kernel completes the handshake into the backlog whether or not the server accepts.
    (void)::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  }
  const int code = (*server)->Wait(absl::Seconds(60));
  for (int fd : connections) ::close(fd);
  EXPECT_EQ(code, 1) << (*server)->Log();
  const std::string log = (*server)->Log();
  EXPECT_NE(log.find("gRPC stopped accepting connections (Failed accept4: Too many open files)"), std::string::npos)
      << log;
  // gRPC's own line is one JSON object, as the server's are.
  EXPECT_NE(log.find("{\"detail\":\"Failed accept4: Too many open files\",\"event\":\"grpc\",\"severity\":\"ERROR\""),
            std::string::npos)
      << log;
}

// A server whose demo model counts as stalled after 0.3 s without progress, and whose batches never pause
// and may run for a minute: the engine cannot tell a hung device from a batch that is only slow, so a batch
// of long rows (OneLongBatch) stands in for a hang.
std::unique_ptr<ServerProcess> StartWithQuickStall(const test_support::TempDir& root,
                                                   const std::vector<std::string>& flags = {},
                                                   double stall_seconds = 0.3) {
  const std::string config = root.File("server.json");
  std::ofstream(config) << R"({"models": [{"name": "demo", "path": ")" << test_support::DemoModelDir()
                        << R"(", "engine": {"stall_seconds": )" << stall_seconds << R"(, "pause_long_batches": false,
                            "max_uncontended_batch_seconds": 60, "max_batch_tokens": 65536}}]})";
  std::vector<std::string> args = {"--config=" + config};
  args.insert(args.end(), flags.begin(), flags.end());
  auto server = ServerProcess::Start(args);
  EXPECT_THAT(server, IsOk());
  return server.ok() ? std::move(*server) : nullptr;
}

// Integrated gradients on a 900-token prompt: `n_steps` rows in one batch, seconds of work on 2 cores.
client::AttributeOptions OneLongBatch(int n_steps) {
  std::string words;
  for (int i = 0; i < 900; ++i) words += " word";
  return {.model = "demo", .prompt = words, .target = " word", .target_tokenization = "separate", .n_steps = n_steps};
}

// Polls the health service until it says `status`: false after `timeout`.
bool WaitForHealth(client::AttributionClient& client, const std::string& status, absl::Duration timeout) {
  for (const absl::Time give_up = absl::Now() + timeout; absl::Now() < give_up;) {
    if (client.Health().value_or("") == status) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// A hung device answers nothing, and without a check the server still advertised SERVING, so probes kept
// sending it calls and never restarted it. NOT_SERVING while the batch makes no progress, SERVING again
// once it moves, and the call's answer intact.
TEST(Lifecycle, WhileABatchMakesNoProgressPastTheStallTimeHealthIsNotServing) {
  test_support::TempDir root;
  std::unique_ptr<ServerProcess> server = StartWithQuickStall(root);
  ASSERT_NE(server, nullptr);
  auto client = std::move(*client::AttributionClient::Connect({.target = server->address()}));
  ASSERT_EQ(client->Health().value_or("error"), "SERVING");

  std::atomic<bool> done{false};
  absl::StatusOr<client::Attribution> result = absl::UnknownError("not run");
  std::thread call([&] {
    result = client->Attribute(OneLongBatch(16));
    done = true;
  });
  bool saw_not_serving = false;
  double most_seconds_without_progress = 0;
  while (!done) {
    saw_not_serving = saw_not_serving || client->Health().value_or("") == "NOT_SERVING";
    most_seconds_without_progress =
        std::max(most_seconds_without_progress,
                 MetricValue(server->metrics_port(), R"(attribution_engine_seconds_without_progress{model="demo"})"));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  call.join();
  ASSERT_THAT(result, IsOk());
  EXPECT_TRUE(saw_not_serving) << server->Log();
  EXPECT_GT(most_seconds_without_progress, 0.3);
  EXPECT_TRUE(WaitForLog(*server, "\"event\":\"model_stalled\"", absl::Seconds(1))) << server->Log();
  // Moving again, it serves again (the watch looks every 75 ms here).
  EXPECT_TRUE(WaitForHealth(*client, "SERVING", absl::Seconds(10)));
  EXPECT_NE(server->Log().find("\"event\":\"model_progressing\""), std::string::npos);
  // The batch was only slow: the call got its whole answer.
  EXPECT_GE(result->prompt_tokens.size(), 900u);
  EXPECT_EQ(result->sequence.size(), result->features.size());
  EXPECT_TRUE(result->convergence_delta.has_value());
}

// One long integrated-gradients call (OneLongBatch(24)) on its own thread, seen running: its gradient batch
// has gone without progress for a moment, under the server's 1 s stall time.
class LongCallRunning {
 public:
  explicit LongCallRunning(const ServerProcess& server)
      : client_(std::move(*client::AttributionClient::Connect({.target = server.address()}))), call_([this] {
          result_ = client_->Attribute(OneLongBatch(24));
          done_ = true;
        }) {
    while (!done_ &&
           MetricValue(server.metrics_port(), R"(attribution_engine_seconds_without_progress{model="demo"})") < 0.05) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  ~LongCallRunning() { Join(); }
  bool done() const { return done_; }
  const absl::StatusOr<client::Attribution>& Join() {
    if (call_.joinable()) call_.join();
    return result_;
  }

 private:
  std::unique_ptr<client::AttributionClient> client_;
  std::atomic<bool> done_{false};
  absl::StatusOr<client::Attribution> result_ = absl::UnknownError("not run");
  std::thread call_;
};

const client::LogprobsOptions kShortCall{
    .model = "demo", .prompt = "The cup is tiny. Q: Is it big? A:", .target = " No"};

// Calls queued behind a hung batch, or arriving while it hangs, would wait for their deadlines on a client
// that keeps its connection to this replica: they end UNAVAILABLE naming the stall (a client retries that
// on another replica), long before the batch ends; the batch's own call still gets its whole answer.
TEST(Lifecycle, WhileABatchMakesNoProgressPastTheStallTimeOtherCallsEndUnavailable) {
  test_support::TempDir root;
  // Stalled after 1 s: the first short call is surely sent before.
  std::unique_ptr<ServerProcess> server = StartWithQuickStall(root, {}, /*stall_seconds=*/1);
  ASSERT_NE(server, nullptr);
  // One try: this test's only replica would answer the retries as it answered the first.
  auto once = std::move(*client::AttributionClient::Connect({.target = server->address(), .max_attempts = 1}));
  LongCallRunning long_call(*server);
  ASSERT_FALSE(long_call.done()) << "the long batch ended before the test saw it run";
  // Queued: sent while the long batch runs, before it counts as stalled.
  const absl::StatusOr<client::Logprobs> queued = once->GetLogprobs(kShortCall);
  EXPECT_FALSE(long_call.done());
  EXPECT_THAT(queued, test_support::StatusIs(absl::StatusCode::kUnavailable,
                                             ::testing::HasSubstr("the model is stalled: its running batch has made "
                                                                  "no progress for")));
  // Arriving while stalled: refused at once.
  const absl::Time sent = absl::Now();
  EXPECT_THAT(once->GetLogprobs(kShortCall),
              test_support::StatusIs(absl::StatusCode::kUnavailable, ::testing::HasSubstr("retry on another replica")));
  EXPECT_FALSE(long_call.done());
  EXPECT_LT(absl::Now() - sent, absl::Seconds(1));
  const absl::StatusOr<client::Attribution>& result = long_call.Join();
  ASSERT_THAT(result, IsOk());
  EXPECT_GE(result->prompt_tokens.size(), 900u);
  EXPECT_TRUE(WaitForLog(*server, "refused (UNAVAILABLE; 1 queued rows) until it moves", absl::Seconds(1)))
      << server->Log();
  // Moving again, it answers the same call.
  EXPECT_THAT(once->GetLogprobs(kShortCall), IsOk());
}

// Draining, the server waits for its calls; those queued behind a stalled batch could not finish in the
// grace period, so the stall still refuses them then, and the batch's own call finishes as before.
TEST(Lifecycle, DrainingAStalledModelsQueuedCallsEndUnavailable) {
  test_support::TempDir root;
  std::unique_ptr<ServerProcess> server =
      StartWithQuickStall(root, {"--grace_period_seconds=120"}, /*stall_seconds=*/1);
  ASSERT_NE(server, nullptr);
  auto once = std::move(*client::AttributionClient::Connect({.target = server->address(), .max_attempts = 1}));
  LongCallRunning long_call(*server);
  absl::StatusOr<client::Logprobs> queued = absl::UnknownError("not run");
  std::atomic<bool> queued_done{false};
  std::thread short_call([&] {
    queued = once->GetLogprobs(kShortCall);
    queued_done = true;
  });
  // Admitted (the long call may have rows queued too), then queued a moment later: well under the stall time.
  while (!queued_done && MetricValue(server->metrics_port(), "attribution_rpcs_in_flight") < 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(long_call.done()) << "the long batch ended before the test saw it run";
  server->Signal(SIGTERM);
  short_call.join();
  EXPECT_FALSE(long_call.done());
  EXPECT_THAT(queued,
              test_support::StatusIs(absl::StatusCode::kUnavailable, ::testing::HasSubstr("the model is stalled")));
  EXPECT_EQ(server->Wait(absl::Seconds(120)), 0) << server->Log();
  EXPECT_THAT(long_call.Join(), IsOk());
}

// Stopping waits for the running batch; a stalled one may never end, and the process then hung until
// killed. A server with a model stalled at the end of the grace period (here 0 s), or one that stalls while
// its engine stops, exits 1 at once.
void ExpectSignalWhileABatchRunsExitsOne(bool stalled_before_the_signal) {
  test_support::TempDir root;
  std::unique_ptr<ServerProcess> server = StartWithQuickStall(root, {"--grace_period_seconds=0"});
  ASSERT_NE(server, nullptr);
  auto client = std::move(*client::AttributionClient::Connect({.target = server->address()}));
  absl::StatusOr<client::Attribution> result = absl::UnknownError("not run");
  std::thread call([&] { result = client->Attribute(OneLongBatch(32)); });
  if (stalled_before_the_signal) {
    ASSERT_TRUE(WaitForHealth(*client, "NOT_SERVING", absl::Seconds(30))) << server->Log();
  } else {
    // The gradient batch runs (the call's first batch, of its score rows, is over and no row waits), not
    // yet stalled (0.3 s).
    const int port = server->metrics_port();
    auto gradient_batch_runs = [port] {
      return MetricValue(port, R"(attribution_engine_batches_total{model="demo"})") >= 1 &&
             MetricValue(port, R"(attribution_engine_queued_rows{model="demo"})") == 0 &&
             MetricValue(port, R"(attribution_engine_seconds_without_progress{model="demo"})") > 0.05;
    };
    for (const absl::Time give_up = absl::Now() + absl::Seconds(30); absl::Now() < give_up && !gradient_batch_runs();) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  server->Signal(SIGTERM);
  EXPECT_EQ(server->Wait(absl::Seconds(30)), 1) << server->Log();
  call.join();
  EXPECT_FALSE(result.ok());
  EXPECT_NE(server->Log().find("model \\\"demo\\\" is stalled (its batch made no progress for "), std::string::npos)
      << server->Log();
}

TEST(Lifecycle, ASignalWhileAModelIsStalledExitsAfterTheGracePeriodWithoutWaitingForTheBatch) {
  ExpectSignalWhileABatchRunsExitsOne(/*stalled_before_the_signal=*/true);
}

// Before, only a model already stalled when the grace period ended counted: one that stalled while its
// engine stopped hung the process.
TEST(Lifecycle, AModelThatStallsWhileItsEngineStopsEndsTheProcessToo) {
  ExpectSignalWhileABatchRunsExitsOne(/*stalled_before_the_signal=*/false);
}

// The "time" of the first log line holding `text`: the server's wall clock, which libfaketime moves.
absl::Time LogLineTime(const std::string& log, const std::string& text) {
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    const size_t time = line.find("\"time\":\"");
    if (line.find(text) == std::string::npos || time == std::string::npos) continue;
    absl::Time parsed;
    std::string error;
    if (absl::ParseTime("%Y-%m-%dT%H:%M:%E3SZ", line.substr(time + 8, 24), &parsed, &error)) return parsed;
  }
  return absl::InfinitePast();
}

// The server's wall clock stepped (NTP after a VM's boot or migration, an operator fixing the date) while it
// served. Deadlines, batch times, the delivery watchdog and the rationed log lines ran on it: a step an hour
// ahead failed the running attribution DEADLINE_EXCEEDED although its client's 60 s were not over, and a step
// back left the log's rationed lines refused until the clock caught up. They run on the monotonic clock now;
// libfaketime moves the server's CLOCK_REALTIME only, as a real step does.
TEST(Lifecycle, StepsOfTheWallClockFailNoCallAndSilenceNoLogLines) {
  const std::string faketime = ATTRIBUTION_FAKETIME_LIBRARY;
  ASSERT_FALSE(faketime.empty()) << "libfaketimeMT.so.1 not found: scripts/setup installs Debian's faketime";
  test_support::TempDir dir;
  const std::string offset = dir.File("clock_offset");
  auto step_clock = [&](const char* seconds) { std::ofstream(offset) << seconds << "\n"; };
  step_clock("+0");
  std::ofstream(dir.File("tokens")) << "clock-test-token\n";
  auto server = ServerProcess::Start(
      {"--model=m=" + test_support::DemoModelDir(), "--auth_tokens_file=" + dir.File("tokens")}, absl::Seconds(120),
      {.environment = {"LD_PRELOAD=" + faketime, "FAKETIME_TIMESTAMP_FILE=" + offset, "FAKETIME_NO_CACHE=1",
                       "DONT_FAKE_MONOTONIC=1"}});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect(
      {.target = (*server)->address(), .bearer_token = "clock-test-token", .timeout = absl::Seconds(60)});
  ASSERT_THAT(client, IsOk());

  absl::StatusOr<client::Attribution> attribution;
  std::thread long_call([&] {
    attribution = (*client)->Attribute(
        {.model = "m", .prompt = "Ann lives in York. Q: Is the kettle warm? A:", .target = " Yes", .n_steps = 1024});
  });
  ASSERT_TRUE(test_support::WaitForQueuedRows((*server)->metrics_port(), "m"));
  step_clock("+3600");
  long_call.join();
  EXPECT_THAT(attribution, IsOk());
  // The step came while the attribution ran: its line, written as it ended, is an hour past the server's start.
  const std::string log = (*server)->LogOnceItHolds("\"rpc\":\"Attribute\"");
  EXPECT_GE(LogLineTime(log, "\"rpc\":\"Attribute\"") - LogLineTime(log, "\"event\":\"serving\""), absl::Minutes(59))
      << log;
  EXPECT_THAT((*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c"}), IsOk());

  // Callers without a token: 20 log lines a second, the next line written counting those left out. A burst
  // uses up a second's lines; once the clock is back two hours, the next stranger's call is logged.
  auto stranger = client::AttributionClient::Connect({.target = (*server)->address(), .max_attempts = 1});
  ASSERT_THAT(stranger, IsOk());
  auto strangers_lines = [&] {
    const std::string log = (*server)->Log();
    int64_t lines = 0;
    for (size_t at = log.find("UNAUTHENTICATED"); at != std::string::npos; at = log.find("UNAUTHENTICATED", at + 1)) {
      ++lines;
    }
    return lines;
  };
  std::atomic<int> refused{0};
  for (int i = 0; i < 60; ++i) {
    (*stranger)->GetLogprobsAsync({.model = "m", .prompt = "a b", .target = " c"},
                                  [&](absl::StatusOr<client::Logprobs> answer) {
                                    refused += answer.status().code() == absl::StatusCode::kUnauthenticated;
                                  });
  }
  for (int i = 0; i < 1000 && refused < 60; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(refused, 60);
  // Time-based: the burst's second must be over (its lines are written by then too).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const int64_t lines_before = strangers_lines();
  ASSERT_LT(lines_before, 60);
  step_clock("-3600");  // two hours back
  // Calls arriving as the clock stepped were refused "deadline has passed" (37 of 37 in the first 2 s).
  EXPECT_THAT((*client)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c"}), IsOk());
  // Time-based: here the wall-clock code saw a step back only a second or two after it, and the stranger's
  // call must come after that to show the budget stuck in the earlier hour.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ((*stranger)->GetLogprobs({.model = "m", .prompt = "a b", .target = " c"}).status().code(),
            absl::StatusCode::kUnauthenticated);
  int64_t lines_after = lines_before;
  for (int i = 0; i < 500 && lines_after == lines_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    lines_after = strangers_lines();
  }
  EXPECT_EQ(lines_after, lines_before + 1) << (*server)->Log();
}

}  // namespace
}  // namespace attribution
