// SPDX-License-Identifier: Apache-2.0
// What a client can do to the server below the RPCs: HTTP/2 streams it opens and never feeds, header
// frames sent faster than they are parsed; and how long a connection lives. Against the real server binary over
// loopback.
#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "tests/testing/demo_requests.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::DemoLogprobsRequest;
using ::attribution::test_support::IsOk;
using test_support::ServerProcess;

// Calls opened on one connection (HTTP/2 HEADERS) whose request message never comes: the server's call
// objects for them wait forever, each matched before any handler or token check.
class UnfedCalls {
 public:
  UnfedCalls(const std::shared_ptr<grpc::Channel>& channel, int count,
             std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt)
      : stub_(channel) {
    for (int i = 0; i < count; ++i) {
      contexts_.push_back(std::make_unique<grpc::ClientContext>());
      if (deadline) contexts_.back()->set_deadline(*deadline);
      calls_.push_back(stub_.PrepareCall(contexts_.back().get(), "/attribution.v1.AttributionService/Logprobs", &cq_));
      calls_.back()->StartCall(Tag(i));
    }
  }
  ~UnfedCalls() {
    for (auto& context : contexts_) context->TryCancel();
    std::vector<grpc::Status> statuses(calls_.size());
    for (size_t i = 0; i < calls_.size(); ++i) calls_[i]->Finish(&statuses[i], Tag(i));
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // Counts the calls whose stream started, until none more starts for `quiet`.
  int StartedUntilQuiet(std::chrono::milliseconds quiet) {
    void* tag = nullptr;
    bool ok = false;
    while (cq_.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + quiet) == grpc::CompletionQueue::GOT_EVENT) {
      if (ok) ++started_;
    }
    return started_;
  }
  void Cancel(int i) { contexts_[i]->TryCancel(); }

 private:
  static void* Tag(size_t i) { return reinterpret_cast<void*>(static_cast<intptr_t>(i + 1)); }

  grpc::GenericStub stub_;
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;
  std::vector<std::unique_ptr<grpc::GenericClientAsyncReaderWriter>> calls_;
  int started_ = 0;
};

// gRPC sets no stream limit of its own: 10,000 such calls on one connection grew the server by 116 MB
// (100,000: 1 GB), before any token was asked for. The server now advertises max_streams_per_connection
// (256); the client's further calls wait in its transport, and start as others end.
TEST(Transport, OneConnectionHoldsAtMostItsStreamLimitOfUnfedCalls) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  {
    // Connected, and the server's SETTINGS received, before the flood.
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    ASSERT_TRUE(v1::AttributionService::NewStub(channel)->Logprobs(&context, DemoLogprobsRequest(), &response).ok());
  }
  const double rss_before = test_support::ProcessStatusMegabytes((*server)->pid(), "VmRSS");
  constexpr int kCalls = 10000;
  UnfedCalls calls(channel, kCalls);
  EXPECT_EQ(calls.StartedUntilQuiet(std::chrono::milliseconds(2000)), 256);
  const double grown = test_support::ProcessStatusMegabytes((*server)->pid(), "VmRSS") - rss_before;
  EXPECT_LT(grown, 40) << "MB for " << kCalls << " unfed calls on one connection";

  calls.Cancel(0);  // one stream ends: one waiting call starts
  EXPECT_EQ(calls.StartedUntilQuiet(std::chrono::milliseconds(1000)), 257);

  // Other clients are served meanwhile.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::LogprobsResponse response;
  grpc::ChannelArguments own_connection;  // channels of equal arguments share one connection
  own_connection.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto other = grpc::CreateCustomChannel((*server)->address(), grpc::InsecureChannelCredentials(), own_connection);
  const grpc::Status status =
      v1::AttributionService::NewStub(other)->Logprobs(&context, DemoLogprobsRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// gRPC resolves a name again only when a connection ends: a round-robin client over a headless Service
// never sent a call to a replica added after it connected. A connection older than
// --max_connection_age_seconds is asked to reconnect (GOAWAY): the channel goes IDLE and its next call
// connects (and resolves) again, while a call in flight on the old connection runs to its end there.
TEST(Transport, AnAgedConnectionIsAskedToReconnectWhileItsCallInFlightFinishes) {
  auto server =
      ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_connection_age_seconds=1"});
  ASSERT_THAT(server, IsOk());
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::AttributionService::NewStub(channel);
  {
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    ASSERT_TRUE(stub->Logprobs(&context, DemoLogprobsRequest(), &response).ok());
  }
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // Seconds of work on 2 cores (1,024 steps over a 100-token prompt), begun before the connection's age.
  v1::AttributeRequest attribute;
  attribute.set_model("demo");
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "a cup ";
  attribute.mutable_prompt()->set_text(prompt + "Q: Is it big? A:");
  attribute.mutable_target()->set_text(" No");
  attribute.set_n_steps(1024);
  std::atomic<bool> answered{false};
  grpc::Status attribute_status;
  std::thread in_flight([&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::AttributeResponse response;
    attribute_status = stub->Attribute(&context, attribute, &response);
    answered = true;
  });

  // 1 s, +-10% of gRPC's jitter.
  channel->WaitForStateChange(GRPC_CHANNEL_READY, std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_IDLE);
  const bool answered_before_the_age = answered;
  in_flight.join();
  EXPECT_FALSE(answered_before_the_age) << "the attribution must outlast the connection's age: give it more steps";
  EXPECT_TRUE(attribute_status.ok()) << attribute_status.error_message();

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::LogprobsResponse response;
  const grpc::Status status = stub->Logprobs(&context, DemoLogprobsRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
}

// The log's lines for calls that ended before their message, and the calls they stand for: each line
// counts itself and the calls like it left out before it.
struct LoggedResets {
  int64_t lines = 0, calls = 0;
};
LoggedResets CallsEndedBeforeTheirMessage(const std::string& log) {
  LoggedResets logged;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("the call ended before its request message arrived") == std::string::npos) continue;
    const nlohmann::json json = nlohmann::json::parse(line);
    ++logged.lines;
    logged.calls += 1 + json.value("like_it_not_logged", int64_t{0});
  }
  return logged;
}

// A call ended this close to its deadline before its message arrived is the deadline's, as the README's margin
// (100 ms + 2% of the timeout) says for every call: a client's own timer resets the stream a little before the
// server's, and such calls were counted CANCELLED. Here the client cancels 70 ms before a 2 s deadline.
TEST(Transport, CallsEndedNearTheirDeadlineBeforeTheirMessageCountAsDeadlineExceeded) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
  constexpr int kCalls = 20;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  {
    UnfedCalls calls(channel, kCalls, deadline);
    std::this_thread::sleep_until(deadline - std::chrono::milliseconds(70));
  }  // all cancelled
  const std::string expired = R"(attribution_rpcs_total{code="DEADLINE_EXCEEDED",method="Logprobs",model=""})";
  for (int i = 0; i < 300 && test_support::MetricValue((*server)->metrics_port(), expired) < kCalls; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test_support::MetricValue((*server)->metrics_port(), expired), kCalls);
  EXPECT_EQ(test_support::MetricValue((*server)->metrics_port(),
                                      R"(attribution_rpcs_total{code="CANCELLED",method="Logprobs",model=""})"),
            0);
}

// A client that opens calls and resets them before their message (HTTP/2 rapid reset) wrote one log line
// per call, 146,083 lines (30 MB) in 10 s. At most 20 such lines a second now; every call is still counted
// in the metrics, and the next line written says how many were left out.
TEST(Transport, CallsResetBeforeTheirMessageWriteAtMostTwentyLogLinesASecond) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  constexpr int kCalls = 200;
  {
    UnfedCalls calls(channel, kCalls);
    ASSERT_EQ(calls.StartedUntilQuiet(std::chrono::milliseconds(1000)), kCalls);
  }  // all reset
  const std::string cancelled = R"(attribution_rpcs_total{code="CANCELLED",method="Logprobs",model=""})";
  for (int i = 0; i < 500 && test_support::MetricValue((*server)->metrics_port(), cancelled) < kCalls; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test_support::MetricValue((*server)->metrics_port(), cancelled), kCalls);
  const int64_t lines = CallsEndedBeforeTheirMessage((*server)->Log()).lines;
  EXPECT_GE(lines, 1);
  EXPECT_LE(lines, 60) << "lines for " << kCalls << " reset calls";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // the next second's budget
  {
    UnfedCalls one(channel, 1);
    ASSERT_EQ(one.StartedUntilQuiet(std::chrono::milliseconds(1000)), 1);
  }
  int64_t logged = 0;
  for (int i = 0; i < 500 && logged < kCalls + 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    logged = CallsEndedBeforeTheirMessage((*server)->Log()).calls;
  }
  EXPECT_EQ(logged, kCalls + 1);
}

// One HTTP/2 frame (RFC 9113 section 4.1).
std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  const uint32_t length = payload.size();
  std::string frame = {static_cast<char>(length >> 16), static_cast<char>(length >> 8), static_cast<char>(length),
                       static_cast<char>(type),         static_cast<char>(flags),       static_cast<char>(stream >> 24),
                       static_cast<char>(stream >> 16), static_cast<char>(stream >> 8), static_cast<char>(stream)};
  return frame + payload;
}

// An HPACK literal header field without indexing, new name (RFC 7541 section 6.2.2); both under 127 bytes.
std::string Literal(const std::string& name, const std::string& value) {
  return std::string(1, '\0') + static_cast<char>(name.size()) + name + static_cast<char>(value.size()) + value;
}

// Opens a call's header block and never ends it: CONTINUATION frames of one header each, as fast as the
// socket takes them, for `duration`.
void FloodWithContinuationFrames(int port, absl::Duration duration) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  constexpr uint8_t kHeaders = 1, kSettings = 4, kContinuation = 9;
  std::string start = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + Frame(kSettings, 0, 0, "");
  start +=
      Frame(kHeaders, /*no END_HEADERS*/ 0, 1,
            Literal(":method", "POST") + Literal(":scheme", "http") +
                Literal(":path", "/attribution.v1.AttributionService/Logprobs") + Literal(":authority", "localhost") +
                Literal("content-type", "application/grpc") + Literal("te", "trailers"));
  std::string flood;
  for (int i = 0; i < 4096; ++i) flood += Frame(kContinuation, 0, 1, Literal("x-a", "b"));
  const absl::Time end = absl::Now() + duration;
  std::string pending = start;
  while (absl::Now() < end) {
    pollfd writable{.fd = fd, .events = POLLOUT, .revents = 0};
    if (::poll(&writable, 1, 100) <= 0) continue;
    const ssize_t sent = ::send(fd, pending.data(), pending.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN) break;  // the server closed the connection
    pending.erase(0, sent > 0 ? sent : 0);
    if (pending.empty()) pending = flood;
  }
  ::close(fd);
}

// gRPC 1.51 reads whatever a socket delivers, parsed or not, into memory its (unbounded) resource quota
// lets it take: one connection of one-header CONTINUATION frames grew the server 230 MB a second, without
// end. With max_transport_memory_bytes it stops reading until memory frees.
TEST(Transport, HeaderFramesSentFasterThanParsedHoldBoundedMemory) {
  auto server =
      ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_transport_memory_bytes=67108864"});
  ASSERT_THAT(server, IsOk());
  const double rss_before = test_support::ProcessStatusMegabytes((*server)->pid(), "VmRSS");
  std::thread flood([&] { FloodWithContinuationFrames((*server)->port(), absl::Seconds(6)); });
  flood.join();
  const double grown = test_support::ProcessStatusMegabytes((*server)->pid(), "VmHWM") - rss_before;
  // Other clients are served once it ends. gRPC frees the flood's memory after the connection closes, and
  // until then resets new calls (RST_STREAM ENHANCE_YOUR_CALM, seen in full parallel test runs both during
  // the flood and just after it), which clients retry as UNAVAILABLE or RESOURCE_EXHAUSTED: served within
  // a few tries.
  auto stub =
      v1::AttributionService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  grpc::Status status;
  int tries = 0;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(30); absl::Now() < give_up; ++tries) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::LogprobsResponse response;
    status = stub->Logprobs(&context, DemoLogprobsRequest(), &response);
    if (status.ok()) break;
    std::cout << "[ flood    ] a call after the flood: " << status.error_code() << " " << status.error_message()
              << "\n";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(status.ok()) << status.error_message() << " after " << tries << " tries";
  EXPECT_LT(grown, 500) << "MB at the peak, 6 s of CONTINUATION frames";
}

}  // namespace
}  // namespace attribution
