// SPDX-License-Identifier: Apache-2.0
#include "client/attribution_client.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "client/proto_mapping.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attribution::client {
namespace {

namespace v1 = ::attribution::v1;

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Seconds(absl::Duration d) { return absl::StrCat(absl::ToDoubleSeconds(d), "s"); }

// Retries UNAVAILABLE (only) with exponential backoff, for every method of both services (gRPC caps
// attempts at 5).
std::string RetryServiceConfig(const ClientOptions& o) {
  return absl::StrCat(R"({"methodConfig": [{"name": [{"service": "attribution.v1.AttributionService"},)",
                      R"({"service": "grpc.health.v1.Health"}], "retryPolicy": {"maxAttempts": )",
                      std::min(5, o.max_attempts), R"(, "initialBackoff": ")", Seconds(o.initial_backoff),
                      R"(", "maxBackoff": ")", Seconds(o.max_backoff),
                      R"(", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})");
}

absl::Status ToAbsl(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Blocks until an async call's callback ran.
template <typename T>
absl::StatusOr<T> Wait(const std::function<void(Callback<T>)>& start) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<T>> result;
  start([&](absl::StatusOr<T> r) {
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(r);
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  return std::move(*result);
}

}  // namespace

struct AttributionClient::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::AttributionService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  std::unique_ptr<grpc::ClientContext> NewContext() const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
    if (!options.bearer_token.empty()) context->AddMetadata("authorization", "Bearer " + options.bearer_token);
    return context;
  }

  // One unary call on the callback API: owns its context and messages until the callback ran.
  template <typename Request, typename Response, typename Result, typename Start, typename Convert>
  void Unary(Request request, Start start, Convert convert, Callback<Result> done) const {
    struct Call {
      std::unique_ptr<grpc::ClientContext> context;
      Request request;
      Response response;
    };
    auto call = std::make_shared<Call>();
    call->context = NewContext();
    call->request = std::move(request);
    start(call->context.get(), &call->request, &call->response,
          [call, convert, done = std::move(done)](grpc::Status status) mutable {
            std::shared_ptr<Call> finished = std::move(call);
            absl::StatusOr<Result> result = status.ok() ? absl::StatusOr<Result>(convert(finished->response))
                                                        : absl::StatusOr<Result>(ToAbsl(status));
            // The context goes before the caller hears of the result: a caller that then tears the
            // client (or the process) down must not race gRPC releasing the call.
            finished.reset();
            done(std::move(result));
          });
  }
};

AttributionClient::AttributionClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AttributionClient::~AttributionClient() = default;

absl::StatusOr<std::unique_ptr<AttributionClient>> AttributionClient::Connect(const ClientOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadPem(options.ca_file);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.cert_file.empty()) {
      absl::StatusOr<std::string> cert = ReadPem(options.cert_file), key = ReadPem(options.key_file);
      if (!cert.ok()) return cert.status();
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  if (options.max_attempts > 1) args.SetServiceConfigJSON(RetryServiceConfig(options));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.max_attempts > 1 ? 1 : 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.max_backoff)));
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->channel = grpc::CreateCustomChannel(options.target, credentials, args);
  impl->stub = v1::AttributionService::NewStub(impl->channel);
  impl->health = grpc::health::v1::Health::NewStub(impl->channel);
  return std::unique_ptr<AttributionClient>(new AttributionClient(std::move(impl)));
}

void AttributionClient::AttributeAsync(const AttributeOptions& options, Callback<Attribution> done) {
  absl::StatusOr<v1::AttributeRequest> request = ToProto(options);
  if (!request.ok()) return done(request.status());
  auto* async = impl_->stub->async();
  impl_->Unary<v1::AttributeRequest, v1::AttributeResponse, Attribution>(
      std::move(*request),
      [async](auto* c, auto* q, auto* r, auto cb) { async->Attribute(c, q, r, std::move(cb)); },
      [](const v1::AttributeResponse& r) { return FromProto(r); }, std::move(done));
}

absl::StatusOr<Attribution> AttributionClient::Attribute(const AttributeOptions& options) {
  return Wait<Attribution>([&](Callback<Attribution> done) { AttributeAsync(options, std::move(done)); });
}

absl::StatusOr<Attribution> AttributionClient::AttributeStream(const AttributeOptions& options,
                                                               const std::function<void(int64_t, int64_t)>& progress) {
  absl::StatusOr<v1::AttributeRequest> request = ToProto(options);
  if (!request.ok()) return request.status();
  std::unique_ptr<grpc::ClientContext> context = impl_->NewContext();
  std::unique_ptr<grpc::ClientReader<v1::AttributeEvent>> reader = impl_->stub->AttributeStream(context.get(), *request);
  v1::AttributeEvent event;
  std::optional<Attribution> result;
  while (reader->Read(&event)) {
    if (event.has_progress() && progress) progress(event.progress().rows_done(), event.progress().rows_total());
    if (event.has_result()) result = FromProto(event.result());
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ToAbsl(status);
  if (!result) return absl::DataLossError("the stream ended without a result");
  return std::move(*result);
}

void AttributionClient::GenerateAsync(const GenerateOptions& options, Callback<Generation> done) {
  absl::StatusOr<v1::GenerateRequest> request = ToProto(options);
  if (!request.ok()) return done(request.status());
  auto* async = impl_->stub->async();
  impl_->Unary<v1::GenerateRequest, v1::GenerateResponse, Generation>(
      std::move(*request),
      [async](auto* c, auto* q, auto* r, auto cb) { async->Generate(c, q, r, std::move(cb)); },
      [](const v1::GenerateResponse& r) { return FromProto(r); }, std::move(done));
}

absl::StatusOr<Generation> AttributionClient::Generate(const GenerateOptions& options) {
  return Wait<Generation>([&](Callback<Generation> done) { GenerateAsync(options, std::move(done)); });
}

absl::StatusOr<Generation> AttributionClient::GenerateStream(const GenerateOptions& options,
                                                             const std::function<void(const Token&)>& on_token) {
  absl::StatusOr<v1::GenerateRequest> request = ToProto(options);
  if (!request.ok()) return request.status();
  std::unique_ptr<grpc::ClientContext> context = impl_->NewContext();
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader = impl_->stub->GenerateStream(context.get(), *request);
  v1::GenerateEvent event;
  std::optional<Generation> result;
  while (reader->Read(&event)) {
    if (event.has_token() && on_token) on_token(FromProto(event.token()));
    if (event.has_result()) result = FromProto(event.result());
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ToAbsl(status);
  if (!result) return absl::DataLossError("the stream ended without a result");
  return std::move(*result);
}

void AttributionClient::GetLogprobsAsync(const LogprobsOptions& options, Callback<Logprobs> done) {
  absl::StatusOr<v1::LogprobsRequest> request = ToProto(options);
  if (!request.ok()) return done(request.status());
  auto* async = impl_->stub->async();
  impl_->Unary<v1::LogprobsRequest, v1::LogprobsResponse, Logprobs>(
      std::move(*request),
      [async](auto* c, auto* q, auto* r, auto cb) { async->Logprobs(c, q, r, std::move(cb)); },
      [](const v1::LogprobsResponse& r) { return FromProto(r); }, std::move(done));
}

absl::StatusOr<Logprobs> AttributionClient::GetLogprobs(const LogprobsOptions& options) {
  return Wait<Logprobs>([&](Callback<Logprobs> done) { GetLogprobsAsync(options, std::move(done)); });
}

void AttributionClient::ListModelsAsync(Callback<std::vector<ModelInfo>> done) {
  auto* async = impl_->stub->async();
  impl_->Unary<v1::ListModelsRequest, v1::ListModelsResponse, std::vector<ModelInfo>>(
      v1::ListModelsRequest(),
      [async](auto* c, auto* q, auto* r, auto cb) { async->ListModels(c, q, r, std::move(cb)); },
      [](const v1::ListModelsResponse& r) { return FromProto(r); }, std::move(done));
}

absl::StatusOr<std::vector<ModelInfo>> AttributionClient::ListModels() {
  return Wait<std::vector<ModelInfo>>([&](Callback<std::vector<ModelInfo>> done) { ListModelsAsync(std::move(done)); });
}

absl::StatusOr<std::string> AttributionClient::Health(const std::string& service) {
  std::unique_ptr<grpc::ClientContext> context = impl_->NewContext();
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = impl_->health->Check(context.get(), request, &response);
  if (!status.ok()) return ToAbsl(status);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

}  // namespace attribution::client
