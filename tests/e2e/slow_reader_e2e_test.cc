// SPDX-License-Identifier: Apache-2.0
// Slow stream readers: clients of AttributeStream and GenerateStream that read the first event and then
// stop reading for a while (ATTRIBUTION_SLOW_READER_SECONDS, default 10; 30 in the run recorded in
// bench/RESULTS.md). Their connection advertises a small flow-control window, so the server's writes
// are held back at once. Meanwhile Logprobs and Attribute calls, on the stalled readers' own
// connection and on another one, must be answered as usual (once the engine did the stalled calls' work,
// which it must do although nobody reads the results), and the server's resident memory must stay
// bounded (the server keeps at most the stream's unsent events: progress is coalesced, tokens are at
// most max_new_tokens). Afterwards the readers get every token and their results, and a reader that
// gives up while stalled frees its call.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using test_support::MetricValue;
using test_support::ProcessStatusMegabytes;
using test_support::ServerProcess;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Stub = v1::AttributionService::Stub;

constexpr int kNewTokens = 512;  // the server's default max_new_tokens limit

absl::Duration StallFromEnvironment() {
  const char* value = std::getenv("ATTRIBUTION_SLOW_READER_SECONDS");
  int seconds = 0;
  return absl::Seconds(value != nullptr && absl::SimpleAtoi(value, &seconds) && seconds > 0 ? seconds : 10);
}

std::unique_ptr<Stub> NewStub(const std::string& address, const grpc::ChannelArguments& args) {
  return v1::AttributionService::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// The stalled readers' connection: a 1 KB stream window without growth, so the server's writes wait
// for the reader almost at once (gRPC would otherwise buffer megabytes in the client); and another one.
std::pair<std::unique_ptr<Stub>, std::unique_ptr<Stub>> Connections(const std::string& address) {
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  grpc::ChannelArguments other;
  other.SetInt("attribution.other_connection", 1);
  return {NewStub(address, small_window), NewStub(address, other)};
}

v1::LogprobsRequest ShortLogprobs() {
  v1::LogprobsRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Is it true that vaccines cause autism?");
  r.mutable_target()->set_text(" No");
  r.set_top_k(5);
  return r;
}

v1::AttributeRequest ShortAttribute() {
  v1::AttributeRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Is it true that vaccines cause autism?");
  r.mutable_target()->set_text(" No");
  r.set_n_steps(16);
  return r;
}

// An attribution whose answer (a token matrix of a few target tokens x ~120 prompt tokens, the tokens
// with their texts) is larger than the stalled readers' window, so its last write waits for the reader;
// small enough work that the engine finishes it early in the stall.
v1::AttributeRequest LongAttribute() {
  v1::AttributeRequest r;
  r.set_model("demo");
  std::string words;
  for (int i = 0; i < 60; ++i) absl::StrAppend(&words, "word", i % 17, " ");
  r.mutable_prompt()->set_text(words);
  std::string target;
  for (int i = 0; i < 3; ++i) absl::StrAppend(&target, " yes");
  r.mutable_target()->set_text(target);
  r.set_target_tokenization(v1::SEPARATE);
  r.set_n_steps(8);
  r.set_want_token_matrix(true);
  return r;
}

v1::GenerateRequest LongGenerate() {
  v1::GenerateRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Once upon a time there was a");
  r.mutable_generation()->set_max_new_tokens(kNewTokens);
  r.mutable_generation()->set_ignore_stop_tokens(true);
  return r;
}

// One stalled stream: reads the first event, waits for `resume`, then reads the rest.
struct StalledReader {
  grpc::ClientContext context;
  std::atomic<bool> started{false};  // the first event arrived
  grpc::Status status;
  int events = 0, progress_events = 0;
  std::vector<int64_t> streamed_tokens, result_tokens;
  bool answered = false;
  std::thread thread;
};

void ReadAttributeStream(Stub& stub, StalledReader& r, const absl::Notification& resume) {
  auto reader = stub.AttributeStream(&r.context, LongAttribute());
  v1::AttributeEvent event;
  if (reader->Read(&event)) ++r.events;
  r.started = true;
  resume.WaitForNotification();
  while (reader->Read(&event)) {
    ++r.events;
    if (event.has_progress()) ++r.progress_events;
    if (event.has_result()) r.answered = true;
  }
  r.status = reader->Finish();
}

void ReadGenerateStream(Stub& stub, StalledReader& r, const absl::Notification& resume) {
  auto reader = stub.GenerateStream(&r.context, LongGenerate());
  v1::GenerateEvent event;
  if (reader->Read(&event)) {
    ++r.events;
    if (event.has_token()) r.streamed_tokens.push_back(event.token().id());
  }
  r.started = true;
  resume.WaitForNotification();
  while (reader->Read(&event)) {
    ++r.events;
    if (event.has_token()) r.streamed_tokens.push_back(event.token().id());
    if (event.has_result()) {
      r.answered = true;
      for (const v1::Token& t : event.result().tokens()) r.result_tokens.push_back(t.id());
    }
  }
  r.status = reader->Finish();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Latencies (ms) of short calls sent back to back until `stop`, and whether all were OK.
struct ShortCalls {
  std::vector<double> logprobs_ms, attribute_ms;
  std::vector<std::string> failures;
};

void RunShortCalls(Stub& stub, const std::atomic<bool>& stop, ShortCalls& out, int at_least = 0) {
  for (int i = 0; !stop || i < at_least; ++i) {
    grpc::ClientContext context;
    absl::Time start = absl::Now();
    v1::LogprobsResponse scored;
    grpc::Status status = stub.Logprobs(&context, ShortLogprobs(), &scored);
    if (status.ok()) {
      out.logprobs_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    } else {
      out.failures.push_back(absl::StrCat("Logprobs: ", status.error_message()));
    }
    grpc::ClientContext attribute_context;
    start = absl::Now();
    v1::AttributeResponse attributed;
    status = stub.Attribute(&attribute_context, ShortAttribute(), &attributed);
    if (status.ok()) {
      out.attribute_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    } else {
      out.failures.push_back(absl::StrCat("Attribute: ", status.error_message()));
    }
  }
}

TEST(SlowReader, StalledStreamsNeitherBlockOtherCallsNorGrowServerMemory) {
  const absl::Duration stall = StallFromEnvironment();
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  const pid_t pid = (*server)->pid();
  auto [stalled_stub, other_stub] = Connections((*server)->address());

  // Latency of the short calls on the quiet server (after a warm-up).
  ShortCalls quiet;
  const std::atomic<bool> stopped{true};
  RunShortCalls(*other_stub, stopped, quiet, /*at_least=*/3);
  quiet = {};
  RunShortCalls(*other_stub, stopped, quiet, /*at_least=*/10);
  ASSERT_TRUE(quiet.failures.empty()) << quiet.failures[0];
  const double rss_before = ProcessStatusMegabytes(pid, "VmRSS");

  // Stalled readers: three of each stream, and one more of each that gives up during the stall.
  absl::Notification resume;
  constexpr int kStreams = 3;
  std::vector<std::unique_ptr<StalledReader>> attribute_readers, generate_readers;
  for (int i = 0; i < kStreams + 1; ++i) {
    attribute_readers.push_back(std::make_unique<StalledReader>());
    StalledReader& a = *attribute_readers.back();
    a.thread = std::thread([&] { ReadAttributeStream(*stalled_stub, a, resume); });
    generate_readers.push_back(std::make_unique<StalledReader>());
    StalledReader& g = *generate_readers.back();
    g.thread = std::thread([&] { ReadGenerateStream(*stalled_stub, g, resume); });
  }
  for (auto* readers : {&attribute_readers, &generate_readers}) {
    for (auto& r : *readers) {
      while (!r->started) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling another thread
    }
  }

  // The engine does the stalled calls' work although nobody reads its results: its queue drains and
  // stays empty (a generation's next step is queued only once the last is answered, so a single look
  // can fall between two steps). EXPECT, not ASSERT: the reader threads must be joined either way.
  const std::string queued = "attribution_engine_queued_rows{model=\"demo\"}";
  const absl::Time drain_deadline = absl::Now() + absl::Seconds(120);
  absl::Time empty_since = absl::InfiniteFuture();
  while (absl::Now() < drain_deadline &&
         (empty_since == absl::InfiniteFuture() || absl::Now() - empty_since < absl::Seconds(1))) {
    const bool empty = MetricValue((*server)->metrics_port(), queued) == 0;
    if (!empty) empty_since = absl::InfiniteFuture();
    if (empty && empty_since == absl::InfiniteFuture()) empty_since = absl::Now();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling a server: no event to wait on
  }
  EXPECT_LT(absl::Now(), drain_deadline) << "the stalled calls' work did not drain";

  // The stall: short calls on the readers' connection and on another one, memory sampled meanwhile.
  const absl::Time stall_start = absl::Now();
  std::atomic<bool> stop{false};
  ShortCalls same_connection, other_connection;
  std::thread same_thread([&] { RunShortCalls(*stalled_stub, stop, same_connection); });
  std::thread other_thread([&] { RunShortCalls(*other_stub, stop, other_connection); });
  std::vector<std::pair<double, double>> rss;  // (seconds into the stall, MB)
  bool gave_up = false;
  while (absl::Now() - stall_start < stall) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the stall lasts this long: sampling memory
    rss.emplace_back(absl::ToDoubleSeconds(absl::Now() - stall_start), ProcessStatusMegabytes(pid, "VmRSS"));
    if (!gave_up && absl::Now() - stall_start > stall / 2) {
      attribute_readers.back()->context.TryCancel();
      generate_readers.back()->context.TryCancel();
      gave_up = true;
    }
  }
  const double in_flight_stalled = MetricValue((*server)->metrics_port(), "attribution_rpcs_in_flight");
  stop = true;
  same_thread.join();
  other_thread.join();
  resume.Notify();
  for (auto* readers : {&attribute_readers, &generate_readers}) {
    for (auto& r : *readers) r->thread.join();
  }

  // Short calls were answered during the stall, on both connections.
  for (const ShortCalls* calls : {&same_connection, &other_connection}) {
    EXPECT_TRUE(calls->failures.empty()) << calls->failures[0];
    EXPECT_GE(calls->logprobs_ms.size(), 2u);
    EXPECT_GE(calls->attribute_ms.size(), 2u);
  }
  // The readers that waited got everything: every token streamed, then the result.
  for (int i = 0; i < kStreams; ++i) {
    const StalledReader& a = *attribute_readers[i];
    EXPECT_TRUE(a.status.ok()) << a.status.error_message();
    EXPECT_TRUE(a.answered);
    const StalledReader& g = *generate_readers[i];
    EXPECT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_TRUE(g.answered);
    EXPECT_EQ(g.streamed_tokens.size(), static_cast<size_t>(kNewTokens));
    EXPECT_EQ(g.streamed_tokens, g.result_tokens);
  }
  // The readers that gave up ended CANCELLED, and no call stays in flight.
  EXPECT_EQ(attribute_readers.back()->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(generate_readers.back()->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(test_support::WaitForIdle((*server)->metrics_port(), "demo", absl::Seconds(30)));

  // Memory: bounded during the stall, and not growing in its second half.
  double peak = rss_before, middle = 0;
  for (const auto& [at, mb] : rss) {
    peak = std::max(peak, mb);
    if (at <= absl::ToDoubleSeconds(stall) / 2) middle = std::max(middle, mb);
  }
  const double end = rss.empty() ? rss_before : rss.back().second;
  std::cout << absl::StrFormat(
      "[ slow     ] stall %s, %d calls in flight during it: Logprobs median %.1f ms quiet, %.1f ms on the stalled "
      "connection, %.1f ms on another (max %.1f / %.1f ms, %d / %d calls); Attribute median %.1f ms quiet, %.1f / "
      "%.1f ms (max %.1f / %.1f ms)\n"
      "[ slow     ] server RSS %.1f MB before, peak %.1f MB during the stall (first half %.1f MB, end %.1f MB); "
      "AttributeStream progress events received %d\n",
      absl::FormatDuration(stall), static_cast<int>(in_flight_stalled), Median(quiet.logprobs_ms),
      Median(same_connection.logprobs_ms), Median(other_connection.logprobs_ms),
      same_connection.logprobs_ms.empty()
          ? 0
          : *std::max_element(same_connection.logprobs_ms.begin(), same_connection.logprobs_ms.end()),
      other_connection.logprobs_ms.empty()
          ? 0
          : *std::max_element(other_connection.logprobs_ms.begin(), other_connection.logprobs_ms.end()),
      same_connection.logprobs_ms.size(), other_connection.logprobs_ms.size(), Median(quiet.attribute_ms),
      Median(same_connection.attribute_ms), Median(other_connection.attribute_ms),
      same_connection.attribute_ms.empty()
          ? 0
          : *std::max_element(same_connection.attribute_ms.begin(), same_connection.attribute_ms.end()),
      other_connection.attribute_ms.empty()
          ? 0
          : *std::max_element(other_connection.attribute_ms.begin(), other_connection.attribute_ms.end()),
      rss_before, peak, middle, end, attribute_readers[0]->progress_events);
  // Measured: +17 MB in the first second (the stalled calls' work and the short calls), flat after.
  EXPECT_LE(peak - rss_before, 64);
  EXPECT_LE(end, middle + 16) << "memory still grows during the stall";
}

// A reader that stops for longer than --client_read_timeout_seconds: the server cancels its call, which
// frees the admission slot it held (here the only one) and ends it CANCELLED on both sides. Without the
// timeout a client that never reads nor disconnects would hold its slot forever.
TEST(SlowReader, AReaderStalledPastTheReadTimeoutIsCancelledAndFreesItsSlot) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_concurrent_requests=1",
                                      "--client_read_timeout_seconds=2"});
  ASSERT_THAT(server, IsOk());
  auto [stalled_stub, other_stub] = Connections((*server)->address());

  absl::Notification resume;
  StalledReader reader;
  reader.thread = std::thread([&] { ReadGenerateStream(*stalled_stub, reader, resume); });
  while (!reader.started) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling another thread

  // The stalled stream holds the only slot: a Logprobs call is refused at first, then answered once
  // the server cancelled the stream (2 s after its writes stopped moving; the generation itself takes
  // a few seconds first).
  const absl::Time stalled_at = absl::Now();
  grpc::Status refused;
  {
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    refused = other_stub->Logprobs(&context, ShortLogprobs(), &response);
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  grpc::Status status;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // polling the server for the freed slot
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    status = other_stub->Logprobs(&context, ShortLogprobs(), &response);
  } while (!status.ok() && absl::Now() - stalled_at < absl::Seconds(120));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::cout << "[ slow     ] slot " << (status.ok() ? "freed " : "still held ")
            << absl::FormatDuration(absl::Now() - stalled_at) << " after the reader stopped\n";
  EXPECT_EQ(MetricValue((*server)->metrics_port(),
                        "attribution_rpcs_total{code=\"CANCELLED\",method=\"GenerateStream\",model=\"demo\"}"),
            1);

  resume.Notify();
  reader.thread.join();
  EXPECT_EQ(reader.status.error_code(), grpc::StatusCode::CANCELLED) << reader.status.error_message();
  EXPECT_FALSE(reader.answered);
  EXPECT_TRUE(test_support::WaitForIdle((*server)->metrics_port(), "demo", absl::Seconds(30)));
}

// An HTTP/2 client that never lets the server send a byte of DATA (initial window 0, never raised): a
// caller that does not read its unary answer, which gRPC's own clients cannot be made to be. It answers the
// server's SETTINGS and PINGs, so the connection stays up.
class NonReadingClient {
 public:
  explicit NonReadingClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    Send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    Frame(/*SETTINGS*/ 4, 0, 0, std::string("\x00\x04\x00\x00\x00\x00", 6));  // INITIAL_WINDOW_SIZE = 0
    reader_ = std::thread([this] { Answer(); });
  }
  ~NonReadingClient() {
    ::shutdown(fd_, SHUT_RDWR);
    reader_.join();
    ::close(fd_);
  }
  bool connected() const { return connected_; }

  // Starts a unary call of `method` with `request` on stream `id` (odd, increasing).
  void Call(uint32_t id, const std::string& method, const google::protobuf::Message& request) {
    std::string headers;
    for (const auto& [name, value] :
         std::vector<std::pair<std::string, std::string>>{{":method", "POST"},
                                                          {":scheme", "http"},
                                                          {":path", method},
                                                          {":authority", "localhost"},
                                                          {"content-type", "application/grpc"},
                                                          {"te", "trailers"}}) {
      // HPACK: a literal field without indexing, new name, no Huffman coding (every length is under 127).
      absl::StrAppend(&headers, std::string(1, '\0'), std::string(1, static_cast<char>(name.size())), name,
                      std::string(1, static_cast<char>(value.size())), value);
    }
    Frame(/*HEADERS*/ 1, /*END_HEADERS*/ 4, id, headers);
    const std::string body = request.SerializeAsString();
    std::string message(5, '\0');
    for (int i = 0; i < 4; ++i) message[1 + i] = static_cast<char>((body.size() >> (8 * (3 - i))) & 0xff);
    Frame(/*DATA*/ 0, /*END_STREAM*/ 1, id, message + body);
  }

 private:
  void Send(const std::string& bytes) {
    std::lock_guard<std::mutex> lock(write_mu_);
    for (size_t sent = 0; sent < bytes.size();) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }
  void Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
    std::string header(9, '\0');
    for (int i = 0; i < 3; ++i) header[i] = static_cast<char>((payload.size() >> (8 * (2 - i))) & 0xff);
    header[3] = static_cast<char>(type);
    header[4] = static_cast<char>(flags);
    for (int i = 0; i < 4; ++i) header[5 + i] = static_cast<char>((stream >> (8 * (3 - i))) & 0xff);
    Send(header + payload);
  }
  bool Receive(char* out, size_t size) {
    for (size_t got = 0; got < size;) {
      const ssize_t n = ::recv(fd_, out + got, size - got, 0);
      if (n <= 0) return false;
      got += static_cast<size_t>(n);
    }
    return true;
  }
  void Answer() {
    unsigned char header[9];
    while (Receive(reinterpret_cast<char*>(header), 9)) {
      std::string payload((size_t{header[0]} << 16) | (size_t{header[1]} << 8) | header[2], '\0');
      if (!Receive(payload.data(), payload.size())) return;
      const bool ack = (header[4] & 1) != 0;
      if (header[3] == /*SETTINGS*/ 4 && !ack) Frame(4, /*ACK*/ 1, 0, "");
      if (header[3] == /*PING*/ 6 && !ack) Frame(6, /*ACK*/ 1, 0, payload);
    }
  }

  int fd_ = -1;
  bool connected_ = false;
  std::mutex write_mu_;
  std::thread reader_;
};

// A unary answer the client does not read stays in the server's memory until it is delivered or the read
// timeout cancels it: such answers' bytes are counted, and beyond max_unread_answer_bytes new calls are refused
// (there was no bound, so clients that never read parked gigabytes of answers).
TEST(SlowReader, UnreadUnaryAnswersAreBoundedUntilTheReadTimeoutCancelsThem) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_unread_answer_bytes=1",
                                      "--client_read_timeout_seconds=3"});
  ASSERT_THAT(server, IsOk());
  auto [unused, stub] = Connections((*server)->address());
  NonReadingClient parked((*server)->port());
  ASSERT_TRUE(parked.connected());
  parked.Call(1, "/attribution.v1.AttributionService/Logprobs", ShortLogprobs());
  // The parked call's work is done in well under a second; its answer cannot leave the server.
  std::this_thread::sleep_for(std::chrono::seconds(1));  // waiting for the server to answer the parked call
  const absl::Time parked_at = absl::Now();
  grpc::Status status;
  {
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    status = stub->Logprobs(&context, ShortLogprobs(), &response);
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find("answers not yet read by their clients hold "), std::string::npos)
      << status.error_message();
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // polling the server for the freed slot
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    status = stub->Logprobs(&context, ShortLogprobs(), &response);
  } while (!status.ok() && absl::Now() - parked_at < absl::Seconds(60));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::cout << "[ slow     ] calls admitted again " << absl::FormatDuration(absl::Now() - parked_at)
            << " after the unread answer was ready\n";
  // The parked call was logged and counted OK when its work ended (its slot freed then), while its client got
  // CANCELLED with nothing saying so: the undelivered answer is counted and logged on its own.
  EXPECT_EQ(MetricValue((*server)->metrics_port(),
                        "attribution_undelivered_answers_total{method=\"Logprobs\",model=\"demo\"}"),
            1);
  EXPECT_THAT((*server)->LogOnceItHolds("answer_undelivered"),
              AllOf(HasSubstr("\"event\":\"answer_undelivered\""), HasSubstr("\"severity\":\"WARNING\"")));
}

}  // namespace
}  // namespace attribution
