// SPDX-License-Identifier: Apache-2.0
// The log's writer on a pipe this test reads or does not: appending never waits for the reader, lines
// that do not fit are counted and said once the pipe takes lines again, and a reader gone costs lines only.
#include "server/log_line.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace attribution::server {
namespace {

// Line i: its number, then filler to 1,000 characters.
std::string Line(int i) { return absl::StrFormat("%06d", i) + std::string(994, 'x') + "\n"; }

// Reads `fd` until end of file.
std::string ReadAll(int fd) {
  std::string text;
  char buffer[65536];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<size_t>(n));
  return text;
}

TEST(LogWriter, AppendingNeverWaitsForAReaderAndSaysWhatItDropped) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  // The pipe holds a page (4 KB, or 64 KB on some kernels) and the writer's buffer four times that: of the lines
  // it takes (more than the pipe holds), some must wait, and of 1,000 KB most are dropped.
  const int pipe_bytes = ::fcntl(fds[1], F_SETPIPE_SZ, 4096);
  ASSERT_GT(pipe_bytes, 0);
  constexpr int kLines = 1000;
  int64_t dropped = 0;
  {
    LogWriter writer(fds[1], 4 * pipe_bytes);
    // Before, with nobody reading, this loop blocked in write() for good (the test timed out).
    for (int i = 0; i < kLines; ++i) writer.Append(Line(i));
    dropped = writer.dropped();
    EXPECT_GT(dropped, kLines / 2);
    EXPECT_FALSE(writer.Flush(absl::Milliseconds(50)));  // the pipe is full: not all written
    // Read it all now: the writer writes what it holds and what comes after.
    std::string text;
    std::thread reader([&] { text = ReadAll(fds[0]); });
    writer.Append("after\n");
    EXPECT_TRUE(writer.Flush(absl::Seconds(30)));
    EXPECT_EQ(writer.dropped(), dropped);
    ::close(fds[1]);  // all written (Flush): the reader meets end of file
    reader.join();
    EXPECT_NE(text.find("after\n"), std::string::npos);
  }
  ::close(fds[0]);
}

TEST(LogWriter, LinesComeOutWholeInOrderWithTheCountOfThoseLeftOut) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ASSERT_GT(::fcntl(fds[1], F_SETPIPE_SZ, 4096), 0);  // a small pipe: few lines fill it
  constexpr int kLines = 100;
  int64_t dropped = 0;
  std::string text;
  {
    LogWriter writer(fds[1], 8 << 10);
    for (int i = 0; i < kLines; ++i) writer.Append(Line(i));
    dropped = writer.dropped();
    ASSERT_GT(dropped, 0);
    std::thread reader([&] { text = ReadAll(fds[0]); });
    writer.Append("last\n");
    ASSERT_TRUE(writer.Flush(absl::Seconds(30)));
    ::close(fds[1]);  // the writer wrote everything (Flush): the reader meets end of file
    reader.join();
  }
  ::close(fds[0]);
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines.back(), "last");
  int kept = 0, previous = -1;  // line numbers
  int64_t said = 0;
  for (const std::string& line : lines) {
    if (line.find("\"log_lines_dropped\"") != std::string::npos) {
      const size_t at = line.find("\"count\":");
      ASSERT_NE(at, std::string::npos) << line;
      said += std::stoll(line.substr(at + 8));
      continue;
    }
    if (line == "last") continue;
    ASSERT_EQ(line + "\n", Line(std::stoi(line.substr(0, 6))));  // whole
    const int number = std::stoi(line.substr(0, 6));
    EXPECT_GT(number, previous);  // in order
    previous = number;
    ++kept;
  }
  EXPECT_EQ(kept + dropped, kLines);
  EXPECT_EQ(said, dropped);
}

TEST(LogWriter, AReaderGoneCostsLinesNotTheProcess) {
  ::signal(SIGPIPE, SIG_IGN);  // as the server's main does
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]);
  LogWriter writer(fds[1], 1 << 20);
  for (int i = 0; i < 10; ++i) writer.Append(Line(i));
  EXPECT_TRUE(writer.Flush(absl::Seconds(30)));  // tried and failed: done
  EXPECT_EQ(writer.dropped(), 10);
  ::close(fds[1]);
}

// A write cut short (a full disk; here the file size limit) left half a line, and the next line was glued to it,
// so neither parsed: the half line is ended before the next, and the count of lines lost says why they were.
TEST(LogWriter, AWriteCutShortEndsItsLineBeforeTheNextAndSaysWhy) {
  char path[] = "/tmp/log_line_test.XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of ending the process
  rlimit unlimited{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &unlimited), 0);
  rlimit small = unlimited;
  small.rlim_cur = 1500;
  {
    LogWriter writer(fd, 1 << 20);
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    for (int i = 0; i < 3; ++i) {  // the first whole, the second cut short, the third refused
      writer.Append(Line(i));
      ASSERT_TRUE(writer.Flush(absl::Seconds(30)));
    }
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &unlimited), 0);
    writer.Append(Line(3));
    ASSERT_TRUE(writer.Flush(absl::Seconds(30)));
    EXPECT_EQ(writer.dropped(), 2);
  }
  ::close(fd);
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(path);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << text;
  EXPECT_EQ(lines[0] + "\n", Line(0));
  EXPECT_LT(lines[1].size() + 1, Line(1).size());  // cut short: its end, then the next line on a line of its own
  EXPECT_EQ(lines[1], Line(1).substr(0, lines[1].size()));
  const nlohmann::json dropped = nlohmann::json::parse(lines[2], nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(dropped.is_object()) << lines[2];
  EXPECT_EQ(dropped.value("event", ""), "log_lines_dropped");
  EXPECT_EQ(dropped.value("count", 0), 2);
  EXPECT_NE(dropped.value("detail", "").find(std::strerror(EFBIG)), std::string::npos) << lines[2];
  EXPECT_EQ(lines[3] + "\n", Line(3));
}

// A caller without a token put a model name of CSI sequences and a right-to-left override into a line, raw:
// `kubectl logs` cleared the screen and showed a forged "serving OK" in green.
TEST(FormatLogLine, ControlsATerminalObeysAreEscapedAndTheLineStaysTheSameJson) {
  const std::string sent = "\u009b2J\u009bH\u009b32mserving OK\u009b0m\u202edelifni\u2028x\u2029\u2066y\u007fz é 🙂";
  const std::string line = FormatLogLine({{"model", sent}});
  for (const char* raw : {"\xc2\x9b", "\xe2\x80\xae", "\xe2\x80\xa8", "\xe2\x80\xa9", "\xe2\x81\xa6", "\x7f"}) {
    EXPECT_EQ(line.find(raw), std::string::npos) << line;
  }
  EXPECT_NE(line.find("\\u009b2J"), std::string::npos) << line;
  EXPECT_NE(line.find("é 🙂"), std::string::npos) << line;  // other text stays readable
  EXPECT_EQ(nlohmann::json::parse(line).at("model").get<std::string>(), sent);
}

}  // namespace
}  // namespace attribution::server
