// SPDX-License-Identifier: Apache-2.0
// A fake attribution server on loopback that answers every RPC with the response a test set before
// calling, whatever it holds: shapes the client must refuse, or strings that are not UTF-8 (C++
// protobuf only logs those, when it serializes and when it parses, and keeps them). Header-only: the
// client's tests and the CLI's end-to-end tests use it.
//
//   FakeAttributionServer fake;
//   fake.service.generate.set_text("a\xff" "b");
//   RunCommand(absl::StrCat(ATTRIBUTION_CLI_BINARY, " generate --json --server=", fake.address()));
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "attribution/v1/attribution.grpc.pb.h"

namespace attribution::test_support {

// Set the responses before the calls that read them: gRPC's threads read them unlocked. The streams
// send one progress event (Generate: the response's first token), then the response.
class FakeAttributionService final : public ::attribution::v1::AttributionService::Service {
 public:
  ::attribution::v1::AttributeResponse attribute;
  ::attribution::v1::AttributeComponentsResponse components;
  ::attribution::v1::GenerateResponse generate;
  ::attribution::v1::LogprobsResponse logprobs;
  ::attribution::v1::ListModelsResponse models;
  // How long Attribute and AttributeStream wait before answering (calls still in flight when a test acts).
  std::atomic<int> attribute_delay_ms = 0;
  std::atomic<int> attribute_calls = 0;  // Attribute calls received

  grpc::Status Attribute(grpc::ServerContext*, const ::attribution::v1::AttributeRequest* request,
                         ::attribution::v1::AttributeResponse* out) override {
    ++attribute_calls;
    {
      absl::MutexLock lock(&mu_);
      last_attribute_request_ = *request;
    }
    absl::SleepFor(absl::Milliseconds(attribute_delay_ms.load()));
    *out = attribute;
    return grpc::Status::OK;
  }
  // The last Attribute request received (not the streamed one's).
  ::attribution::v1::AttributeRequest last_attribute_request() const {
    absl::MutexLock lock(&mu_);
    return last_attribute_request_;
  }
  grpc::Status AttributeStream(grpc::ServerContext*, const ::attribution::v1::AttributeRequest*,
                               grpc::ServerWriter<::attribution::v1::AttributeEvent>* writer) override {
    ::attribution::v1::AttributeEvent event;
    event.mutable_progress()->set_rows_total(1);
    writer->Write(event);
    absl::SleepFor(absl::Milliseconds(attribute_delay_ms.load()));
    *event.mutable_result() = attribute;
    writer->Write(event);
    return grpc::Status::OK;
  }
  grpc::Status AttributeComponentsStream(
      grpc::ServerContext*, const ::attribution::v1::AttributeComponentsRequest*,
      grpc::ServerWriter<::attribution::v1::AttributeComponentsEvent>* writer) override {
    ::attribution::v1::AttributeComponentsEvent event;
    event.mutable_progress()->set_rows_total(1);
    writer->Write(event);
    *event.mutable_result() = components;
    writer->Write(event);
    return grpc::Status::OK;
  }
  grpc::Status Generate(grpc::ServerContext*, const ::attribution::v1::GenerateRequest*,
                        ::attribution::v1::GenerateResponse* out) override {
    *out = generate;
    return grpc::Status::OK;
  }
  grpc::Status GenerateStream(grpc::ServerContext*, const ::attribution::v1::GenerateRequest*,
                              grpc::ServerWriter<::attribution::v1::GenerateEvent>* writer) override {
    ::attribution::v1::GenerateEvent event;
    if (generate.tokens_size() > 0) {
      *event.mutable_token() = generate.tokens(0);
      writer->Write(event);
    }
    *event.mutable_result() = generate;
    writer->Write(event);
    return grpc::Status::OK;
  }
  grpc::Status Logprobs(grpc::ServerContext*, const ::attribution::v1::LogprobsRequest*,
                        ::attribution::v1::LogprobsResponse* out) override {
    *out = logprobs;
    return grpc::Status::OK;
  }
  grpc::Status ListModels(grpc::ServerContext*, const ::attribution::v1::ListModelsRequest*,
                          ::attribution::v1::ListModelsResponse* out) override {
    *out = models;
    return grpc::Status::OK;
  }

 private:
  mutable absl::Mutex mu_;
  ::attribution::v1::AttributeRequest last_attribute_request_ ABSL_GUARDED_BY(mu_);
};

// What a gRPC server answers for a service it does not have (a wrong port given as the attribution server).
class NoMethods final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Refusal : public grpc::ServerGenericBidiReactor {
     public:
      Refusal() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "Method not found!")); }
      void OnDone() override { delete this; }
    };
    return new Refusal;
  }
};

// The service listening on a free loopback port until destruction (with `serve_attribution` false, a gRPC server
// without it). `ok()` false: it could not start.
class FakeAttributionServer {
 public:
  explicit FakeAttributionServer(bool serve_attribution = true) {
    grpc::ServerBuilder builder;
    if (serve_attribution) {
      builder.RegisterService(&service);
    } else {
      builder.RegisterCallbackGenericService(&no_methods_);
    }
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    server_ = builder.BuildAndStart();
  }
  ~FakeAttributionServer() {
    if (server_) server_->Shutdown();
  }
  FakeAttributionServer(const FakeAttributionServer&) = delete;
  FakeAttributionServer& operator=(const FakeAttributionServer&) = delete;

  bool ok() const { return server_ != nullptr && port_ > 0; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  FakeAttributionService service;

 private:
  NoMethods no_methods_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace attribution::test_support
