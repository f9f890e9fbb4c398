// SPDX-License-Identifier: Apache-2.0
// What a client can do to the server below the RPCs: HTTP/2 streams it opens and never feeds. Against the
// real server binary over loopback.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "attribution/v1/attribution.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using test_support::ServerProcess;

v1::LogprobsRequest GoodLogprobs() {
  v1::LogprobsRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Once upon a time");
  r.mutable_target()->set_text(" there");
  r.set_target_tokenization(v1::SEPARATE);
  return r;
}

// Calls opened on one connection (HTTP/2 HEADERS) whose request message never comes: the server's call
// objects for them wait forever, each matched before any handler or token check.
class UnfedCalls {
 public:
  UnfedCalls(const std::shared_ptr<grpc::Channel>& channel, int count) : stub_(channel) {
    for (int i = 0; i < count; ++i) {
      contexts_.push_back(std::make_unique<grpc::ClientContext>());
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
    ASSERT_TRUE(v1::AttributionService::NewStub(channel)->Logprobs(&context, GoodLogprobs(), &response).ok());
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
  const grpc::Status status = v1::AttributionService::NewStub(other)->Logprobs(&context, GoodLogprobs(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

}  // namespace
}  // namespace attribution
