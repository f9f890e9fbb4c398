// SPDX-License-Identifier: Apache-2.0
// The /metrics endpoint over loopback: it answers scrapes, refuses other requests, and a client that
// trickles its request or never reads the response holds its one thread for at most the connection
// deadline, so a scrape behind it still gets its answer.
#include "server/metrics_endpoint.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "tests/testing/notification.h"

namespace attribution::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

// Short, so the tests are quick; the bounds below leave 1.5 s on top for a loaded 2-core machine.
constexpr std::chrono::milliseconds kDeadline{1000};
constexpr std::chrono::milliseconds kSlack{1500};
constexpr char kScrape[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";

std::unique_ptr<MetricsEndpoint> StartEndpoint(std::function<std::string()> render,
                                               std::chrono::milliseconds deadline = kDeadline) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", std::move(render), deadline);
  EXPECT_TRUE(endpoint.ok()) << endpoint.status();
  return endpoint.ok() ? std::move(*endpoint) : nullptr;
}

// A blocking loopback connection; a receive buffer of `receive_buffer` bytes when given. Reads time out
// after 20 s, so that a broken endpoint fails the test rather than hanging it.
class Client {
 public:
  explicit Client(int port, std::optional<int> receive_buffer = std::nullopt)
      : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    timeval timeout{20, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
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
std::optional<std::string> Exchange(int port, std::string_view request) {
  Client client(port);
  if (!client.connected() || !client.Send(request)) return std::nullopt;
  return client.ReadToEnd();
}

double Seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

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
  // The endpoint accepts connections in order: the trickler's is answered first.
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

TEST(MetricsEndpoint, RefusesANonPositiveDeadline) {
  EXPECT_FALSE(MetricsEndpoint::Start(
                   "127.0.0.1:0", [] { return std::string(); }, std::chrono::milliseconds(0))
                   .ok());
}

}  // namespace
}  // namespace attribution::server
