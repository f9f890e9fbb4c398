// SPDX-License-Identifier: Apache-2.0
// The /metrics endpoint over loopback: it answers scrapes, refuses other requests, cuts off a client that
// trickles its request or never reads the response at the connection deadline, and answers a scrape at
// once however many other connections are open and idle.
#include "server/metrics_endpoint.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/notification.h"

namespace attribution::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

// Short, so the tests are quick; the bounds below leave 1.5 s on top for a loaded 2-core machine.
constexpr std::chrono::milliseconds kDeadline{1000};
constexpr std::chrono::milliseconds kSlack{1500};
// For tests whose connections must not reach their deadline: a scrape that takes more than kSlack fails
// them, well before this.
constexpr std::chrono::milliseconds kLongDeadline{5000};
constexpr char kScrape[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";

std::unique_ptr<MetricsEndpoint> StartEndpoint(std::function<std::string()> render,
                                               std::chrono::milliseconds deadline = kDeadline) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", std::move(render), deadline);
  EXPECT_TRUE(endpoint.ok()) << endpoint.status();
  return endpoint.ok() ? std::move(*endpoint) : nullptr;
}

// A blocking loopback connection; a receive buffer of `receive_buffer` bytes when given. Connecting,
// sends and reads time out after `timeout`, so that a broken endpoint fails the test rather than hanging it.
class Client {
 public:
  explicit Client(int port, std::optional<int> receive_buffer = std::nullopt,
                  std::chrono::seconds timeout = std::chrono::seconds(20))
      : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    const timeval timeout_value{static_cast<time_t>(timeout.count()), 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout_value, sizeof(timeout_value));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout_value, sizeof(timeout_value));
    if (receive_buffer) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &*receive_buffer, sizeof(*receive_buffer));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Everything the endpoint sends until it closes the connection; nullopt on a reset or a timeout.
  std::optional<std::string> ReadToEnd() {
    std::string received;
    char buffer[65536];
    for (;;) {
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n == 0) return received;
      if (n < 0) return std::nullopt;
      received.append(buffer, static_cast<size_t>(n));
    }
  }

 private:
  const int fd_;
  bool connected_ = false;
};

// One whole exchange: `request` sent, the response read until the endpoint closes.
std::optional<std::string> Exchange(int port, std::string_view request,
                                    std::chrono::seconds timeout = std::chrono::seconds(20)) {
  Client client(port, std::nullopt, timeout);
  if (!client.connected() || !client.Send(request)) return std::nullopt;
  return client.ReadToEnd();
}

double Seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

// `count` loopback connections that send nothing, opened without waiting for the endpoint to accept them.
class IdleConnections {
 public:
  IdleConnections(int port, int count) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < count; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd < 0) continue;
      fds_.push_back(fd);
      ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));  // EINPROGRESS
    }
  }
  ~IdleConnections() {
    for (int fd : fds_) ::close(fd);
  }
  IdleConnections(const IdleConnections&) = delete;
  IdleConnections& operator=(const IdleConnections&) = delete;

  // How many completed their handshake (the kernel queued them for accept(), or the endpoint accepted them)
  // once all have, or `wait` passed first.
  int Established(Clock::duration wait) {
    const Clock::time_point give_up = Clock::now() + wait;
    std::vector<int> pending = fds_;
    int established = 0;
    while (!pending.empty()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(give_up - Clock::now()).count();
      if (left <= 0) break;
      std::vector<pollfd> fds;
      for (int fd : pending) fds.push_back({fd, POLLOUT, 0});
      if (::poll(fds.data(), fds.size(), static_cast<int>(left)) < 0) break;
      pending.clear();
      for (const pollfd& fd : fds) {
        if (fd.revents == 0) {
          pending.push_back(fd.fd);
          continue;
        }
        int error = 0;
        socklen_t length = sizeof(error);
        ::getsockopt(fd.fd, SOL_SOCKET, SO_ERROR, &error, &length);
        established += error == 0 ? 1 : 0;
      }
    }
    return established;
  }

  // How many the endpoint has closed by now.
  int ClosedByEndpoint() const {
    int closed = 0;
    for (int fd : fds_) {
      char byte;
      closed += ::recv(fd, &byte, 1, MSG_DONTWAIT) == 0 ? 1 : 0;
    }
    return closed;
  }

 private:
  std::vector<int> fds_;
};

TEST(MetricsEndpoint, AnswersAScrapeWithTheRenderedTextAndCloses) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); });
  ASSERT_NE(endpoint, nullptr);
  ASSERT_GT(endpoint->port(), 0);
  const std::optional<std::string> response = Exchange(endpoint->port(), kScrape);
  ASSERT_TRUE(response.has_value());
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(*response, HasSubstr("\r\nContent-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(*response, HasSubstr("\r\nContent-Length: 5\r\n"));
  EXPECT_THAT(*response, HasSubstr("\r\nConnection: close\r\n"));
  EXPECT_EQ(response->substr(response->find("\r\n\r\n") + 4), "up 1\n");
}

// IPv6 addresses bind (an IPv6-only cluster's "[::]:9464" was refused "cannot resolve [::]" at startup, after
// --check_config had passed it); the wildcards take IPv4 connections too.
TEST(MetricsEndpoint, ListensOnIpv6AndItsWildcardAnswersIpv4Too) {
  {
    const int probe = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 loopback{};
    loopback.sin6_family = AF_INET6;
    loopback.sin6_addr = in6addr_loopback;
    const bool has_ipv6 = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&loopback), sizeof(loopback)) == 0;
    if (probe >= 0) ::close(probe);
    if (!has_ipv6) GTEST_SKIP() << "this machine has no IPv6 loopback";
  }
  // "0.0.0.0", "*" and "" too, as gRPC binds its port given those (the default --metrics_listen was IPv4 alone: an
  // IPv6-only cluster's probes passed while Prometheus could not scrape).
  for (const char* listen : {"[::1]:0", "[::]:0", "0.0.0.0:0", "*:0", ":0"}) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint = MetricsEndpoint::Start(
        listen, [] { return std::string("up 1\n"); }, kDeadline);
    ASSERT_TRUE(endpoint.ok()) << listen << ": " << endpoint.status();
    const int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 address{};
    address.sin6_family = AF_INET6;
    address.sin6_port = htons(static_cast<uint16_t>((*endpoint)->port()));
    address.sin6_addr = in6addr_loopback;
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0) << listen;
    ASSERT_EQ(::send(fd, kScrape, sizeof(kScrape) - 1, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(kScrape) - 1));
    std::string received;
    char buffer[4096];
    for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) received.append(buffer, static_cast<size_t>(n));
    ::close(fd);
    EXPECT_THAT(received, StartsWith("HTTP/1.1 200 OK\r\n")) << listen;
  }
  for (const char* listen : {"[::]:0", "0.0.0.0:0"}) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> wildcard = MetricsEndpoint::Start(
        listen, [] { return std::string("up 1\n"); }, kDeadline);
    ASSERT_TRUE(wildcard.ok()) << wildcard.status();
    EXPECT_THAT(Exchange((*wildcard)->port(), kScrape).value_or(""), StartsWith("HTTP/1.1 200 OK\r\n")) << listen;
  }
}

TEST(MetricsEndpoint, AnswersAScrapeWithAQueryString) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); });
  ASSERT_NE(endpoint, nullptr);
  EXPECT_THAT(Exchange(endpoint->port(), "GET /metrics?x=1 HTTP/1.1\r\n\r\n").value_or(""),
              StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST(MetricsEndpoint, AnswersOtherPathsWith404AndOtherMethodsWith405) {
  std::atomic<int> renders{0};
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([&] {
    ++renders;
    return std::string("up 1\n");
  });
  ASSERT_NE(endpoint, nullptr);
  for (const char* request : {"GET / HTTP/1.1\r\n\r\n", "GET /metricsx HTTP/1.1\r\n\r\n",
                              "GET /other/metrics HTTP/1.1\r\n\r\n", "POST /other HTTP/1.1\r\n\r\n"}) {
    EXPECT_THAT(Exchange(endpoint->port(), request).value_or(""), StartsWith("HTTP/1.1 404 Not Found\r\n")) << request;
  }
  for (const char* request :
       {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "DELETE /metrics HTTP/1.1\r\n\r\n"}) {
    const std::string response = Exchange(endpoint->port(), request).value_or("");
    EXPECT_THAT(response, StartsWith("HTTP/1.1 405 Method Not Allowed\r\n")) << request;
    EXPECT_THAT(response, HasSubstr("\r\nAllow: GET\r\n")) << request;
  }
  EXPECT_THAT(Exchange(endpoint->port(), "nonsense\r\n\r\n").value_or(""), StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_EQ(renders.load(), 0);
}

TEST(MetricsEndpoint, RefusesOversizeHeadersWith431) {
  std::atomic<int> renders{0};
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([&] {
    ++renders;
    return std::string("up 1\n");
  });
  ASSERT_NE(endpoint, nullptr);
  const std::string request =
      "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(8 * MetricsEndpoint::kMaxRequestBytes, 'a') + "\r\n\r\n";
  EXPECT_THAT(Exchange(endpoint->port(), request).value_or(""),
              StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
  // Exactly at the cap is still a request.
  const std::string prefix = "GET /metrics HTTP/1.1\r\nX-Fill: ";
  const std::string at_cap =
      prefix + std::string(MetricsEndpoint::kMaxRequestBytes - prefix.size() - 4, 'a') + "\r\n\r\n";
  ASSERT_EQ(at_cap.size(), MetricsEndpoint::kMaxRequestBytes);
  EXPECT_THAT(Exchange(endpoint->port(), at_cap).value_or(""), StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(renders.load(), 1);
}

// Connects and sends the start of a request one byte every 100 ms, never finishing its headers, until the
// endpoint closes the connection or `give_up` passes; held() is how long that took.
class TricklingClient {
 public:
  explicit TricklingClient(int port) : client_(port) {}

  void Run(test_support::Notification& started, Clock::duration give_up) {
    const Clock::time_point start = Clock::now();
    const std::string request = "GET /metrics HTTP/1.1\r\nX-Slow: " + std::string(1 << 20, 'a');
    for (size_t sent = 0; client_.connected() && Clock::now() - start < give_up; ++sent) {
      if (!client_.Send(request.substr(sent % request.size(), 1))) break;
      if (sent == 0) started.Notify();
      // The 100 ms between bytes: wait for the endpoint to close the connection, or send the next byte.
      pollfd fd{client_.fd(), POLLIN, 0};
      if (::poll(&fd, 1, 100) > 0) {
        char byte;
        if (::recv(client_.fd(), &byte, 1, 0) <= 0) break;
      }
    }
    started.Notify();
    held_ = Clock::now() - start;
  }
  Clock::duration held() const { return held_; }

 private:
  Client client_;
  Clock::duration held_{};
};

TEST(MetricsEndpoint, ATricklingClientIsCutOffAtTheDeadlineAndAScrapeBehindItIsAnswered) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); });
  ASSERT_NE(endpoint, nullptr);
  TricklingClient trickler(endpoint->port());
  test_support::Notification started;
  std::thread trickling([&] { trickler.Run(started, std::chrono::seconds(30)); });
  // The trickler's connection is open, its request begun, before the scrape connects.
  started.WaitForNotification();

  const Clock::time_point scrape_start = Clock::now();
  const std::optional<std::string> response = Exchange(endpoint->port(), kScrape);
  const Clock::duration scrape = Clock::now() - scrape_start;
  trickling.join();

  std::printf(
      "[ measured ] scrape behind a trickling client: %.3f s; the trickler was cut off after %.3f s "
      "(deadline %.1f s)\n",
      Seconds(scrape), Seconds(trickler.held()), Seconds(kDeadline));
  ASSERT_TRUE(response.has_value());
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_LT(Seconds(scrape), Seconds(kDeadline + kSlack));
  EXPECT_LT(Seconds(trickler.held()), Seconds(kDeadline + kSlack));
}

TEST(MetricsEndpoint, AClientThatNeverReadsALargeResponseDoesNotHoldTheNextScrape) {
  test_support::Notification rendered_large;
  std::atomic<int> renders{0};
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([&] {
    if (renders++ > 0) return std::string("up 1\n");
    rendered_large.Notify();
    return std::string(16 << 20, 'x');  // far more than the sockets' buffers hold
  });
  ASSERT_NE(endpoint, nullptr);
  Client stuck(endpoint->port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stuck.connected());
  ASSERT_TRUE(stuck.Send(kScrape));
  rendered_large.WaitForNotification();  // the endpoint is now writing to `stuck`, which never reads

  const Clock::time_point scrape_start = Clock::now();
  const std::optional<std::string> response = Exchange(endpoint->port(), kScrape);
  const Clock::duration scrape = Clock::now() - scrape_start;
  std::printf("[ measured ] scrape behind a client that never reads: %.3f s (deadline %.1f s)\n", Seconds(scrape),
              Seconds(kDeadline));
  ASSERT_TRUE(response.has_value());
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(response->substr(response->find("\r\n\r\n") + 4), "up 1\n");
  EXPECT_LT(Seconds(scrape), Seconds(kDeadline + kSlack));
}

TEST(MetricsEndpoint, StopsAtOnceWhileAClientHoldsAConnection) {
  test_support::Notification rendered;
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint(
      [&] {
        rendered.Notify();
        return std::string(16 << 20, 'x');
      },
      /*deadline=*/std::chrono::seconds(60));
  ASSERT_NE(endpoint, nullptr);
  Client stuck(endpoint->port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stuck.connected());
  ASSERT_TRUE(stuck.Send(kScrape));
  rendered.WaitForNotification();

  const Clock::time_point stop_start = Clock::now();
  endpoint.reset();
  EXPECT_LT(Seconds(Clock::now() - stop_start), Seconds(kSlack));
}

TEST(MetricsEndpoint, AnswersAScrapeAtOnceWhileFortyIdleConnectionsAreOpen) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); }, kLongDeadline);
  ASSERT_NE(endpoint, nullptr);
  IdleConnections idle(endpoint->port(), 40);
  EXPECT_EQ(idle.Established(std::chrono::seconds(3)), 40);

  const Clock::time_point scrape_start = Clock::now();
  const std::optional<std::string> response = Exchange(endpoint->port(), kScrape, std::chrono::seconds(5));
  const Clock::duration scrape = Clock::now() - scrape_start;
  std::printf("[ measured ] scrape behind 40 idle connections: %.3f s (deadline %.1f s)\n", Seconds(scrape),
              Seconds(kLongDeadline));
  ASSERT_TRUE(response.has_value());
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_LT(Seconds(scrape), Seconds(kSlack));
}

TEST(MetricsEndpoint, AnswersAScrapeWhileMoreIdleConnectionsThanTheBoundAreOpen) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); }, kLongDeadline);
  ASSERT_NE(endpoint, nullptr);
  const int count = static_cast<int>(MetricsEndpoint::kMaxConnections) + 16;
  IdleConnections idle(endpoint->port(), count);
  // Past the bound the endpoint closes the oldest idle ones: each completes its handshake all the same.
  EXPECT_EQ(idle.Established(std::chrono::seconds(10)), count);

  const Clock::time_point scrape_start = Clock::now();
  const std::optional<std::string> response = Exchange(endpoint->port(), kScrape, std::chrono::seconds(5));
  const Clock::duration scrape = Clock::now() - scrape_start;
  std::printf("[ measured ] scrape behind %d idle connections (bound %zu): %.3f s\n", count,
              MetricsEndpoint::kMaxConnections, Seconds(scrape));
  ASSERT_TRUE(response.has_value());
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_LT(Seconds(scrape), Seconds(kSlack));
  // The oldest idle ones made room, one for each connection past the bound, the scrape's included.
  EXPECT_EQ(idle.ClosedByEndpoint(), count + 1 - static_cast<int>(MetricsEndpoint::kMaxConnections));
}

TEST(MetricsEndpoint, AnswersTwoScrapesSentByteByByteInTurnEachOnceItsRequestIsComplete) {
  std::atomic<int> renders{0};
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint(
      [&] {
        ++renders;
        return std::string("up 1\n");
      },
      kLongDeadline);
  ASSERT_NE(endpoint, nullptr);
  Client first(endpoint->port(), std::nullopt, std::chrono::seconds(5));
  Client second(endpoint->port(), std::nullopt, std::chrono::seconds(5));
  ASSERT_TRUE(first.connected());
  ASSERT_TRUE(second.connected());
  const std::string_view request = kScrape;
  for (size_t i = 0; i < request.size(); ++i) {
    if (i + 1 < request.size()) {
      ASSERT_TRUE(first.Send(request.substr(i, 1)));
    }
    ASSERT_TRUE(second.Send(request.substr(i, 1)));
  }
  // The second request is complete and the first one is not: the second is answered first.
  const std::optional<std::string> second_response = second.ReadToEnd();
  ASSERT_TRUE(second_response.has_value());
  EXPECT_THAT(*second_response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(renders.load(), 1);

  ASSERT_TRUE(first.Send(request.substr(request.size() - 1)));
  const std::optional<std::string> first_response = first.ReadToEnd();
  ASSERT_TRUE(first_response.has_value());
  ASSERT_THAT(*first_response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(first_response->substr(first_response->find("\r\n\r\n") + 4), "up 1\n");
  EXPECT_EQ(renders.load(), 2);
}

// Lowers this process's file-descriptor limit so that the next new descriptor fails with EMFILE, and
// restores it when destroyed. The limit bounds descriptor numbers, so the free numbers below the highest
// one in use are taken first (held here): any descriptor closed meanwhile then frees one under the limit,
// as in a process that reached its limit by opening descriptors.
class OutOfDescriptors {
 public:
  OutOfDescriptors() {
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    // opendir, not std::filesystem: LibTorch's library exports broken copies of its functions.
    int highest = 0;
    DIR* fds = ::opendir("/proc/self/fd");
    for (const dirent* entry; fds != nullptr && (entry = ::readdir(fds)) != nullptr;) {
      highest = std::max(highest, std::atoi(entry->d_name));
    }
    if (fds != nullptr) ::closedir(fds);
    int next = ::dup(0);
    for (; next >= 0 && next < highest; next = ::dup(0)) holes_.push_back(next);
    ::close(next);
    rlimit lowered = saved_;
    lowered.rlim_cur = static_cast<rlim_t>(next);
    ::setrlimit(RLIMIT_NOFILE, &lowered);
  }
  ~OutOfDescriptors() {
    ::setrlimit(RLIMIT_NOFILE, &saved_);
    for (int fd : holes_) ::close(fd);
  }
  OutOfDescriptors(const OutOfDescriptors&) = delete;
  OutOfDescriptors& operator=(const OutOfDescriptors&) = delete;

 private:
  rlimit saved_{};
  std::vector<int> holes_;
};

// A loopback socket made now and connected later (connect() needs no new descriptor), with reads that
// time out after 5 s.
int UnconnectedSocket() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

bool ConnectAndSend(int fd, int port, std::string_view request) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
         ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
}

std::string ReadResponse(int fd) {
  std::string received;
  char buffer[4096];
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) received.append(buffer, static_cast<size_t>(n));
  return received;
}

double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

// Out of descriptors, accept() fails while the connection stays in the backlog: the endpoint closes one
// of its idle connections for it, as past kMaxConnections. It used to retry at once, forever, spinning a core
// while the scrape was never answered.
TEST(MetricsEndpoint, OutOfFileDescriptorsClosesAnIdleConnectionToAnswerAScrape) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); }, kLongDeadline);
  ASSERT_NE(endpoint, nullptr);
  IdleConnections idle(endpoint->port(), 3);
  ASSERT_EQ(idle.Established(std::chrono::seconds(3)), 3);
  // The backlog is accepted in order: once a later scrape is answered, the idle ones hold descriptors here.
  ASSERT_THAT(Exchange(endpoint->port(), kScrape).value_or(""), StartsWith("HTTP/1.1 200 OK\r\n"));
  const int scrape = UnconnectedSocket();
  std::string response;
  {
    OutOfDescriptors limit;
    ASSERT_TRUE(ConnectAndSend(scrape, endpoint->port(), kScrape));
    response = ReadResponse(scrape);
  }
  ::close(scrape);
  EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(idle.ClosedByEndpoint(), 1);
}

// Out of descriptors with none of its own to close (the gRPC side holds them all), the endpoint leaves the
// backlog alone for a while instead of polling it in a loop, and answers the scrape once descriptors free up.
TEST(MetricsEndpoint, OutOfFileDescriptorsWithNoneToCloseWaitsWithoutSpinning) {
  std::unique_ptr<MetricsEndpoint> endpoint = StartEndpoint([] { return std::string("up 1\n"); }, kLongDeadline);
  ASSERT_NE(endpoint, nullptr);
  const int scrape = UnconnectedSocket();
  double cpu_seconds = 0;
  {
    OutOfDescriptors limit;
    ASSERT_TRUE(ConnectAndSend(scrape, endpoint->port(), kScrape));
    const double cpu_before = CpuSeconds();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    cpu_seconds = CpuSeconds() - cpu_before;
  }
  std::printf("[ measured ] CPU time of the process in 1 s out of file descriptors: %.3f s\n", cpu_seconds);
  // Spinning costs a whole core (about 1 s); retrying ten times a second, a few milliseconds.
  EXPECT_LT(cpu_seconds, 0.25);
  EXPECT_THAT(ReadResponse(scrape), StartsWith("HTTP/1.1 200 OK\r\n"));
  ::close(scrape);
}

TEST(MetricsEndpoint, RefusesANonPositiveDeadline) {
  EXPECT_FALSE(MetricsEndpoint::Start(
                   "127.0.0.1:0", [] { return std::string(); }, std::chrono::milliseconds(0))
                   .ok());
}

}  // namespace
}  // namespace attribution::server
