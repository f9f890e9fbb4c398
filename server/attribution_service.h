// SPDX-License-Identifier: Apache-2.0
// The attribution.v1.AttributionService on the gRPC callback API. Handlers never block: they admit
// the call (auth, drain, concurrency), convert the request at the edge (server/conversion.h; a large
// one on the conversion pool, server/conversion_pool.h), submit its work to the model's batching engine
// and return; the engine's completion callback writes the response. Client cancellation and deadlines cancel the engine
// request (its queued rows are dropped).
#pragma once
#include <atomic>
#include <memory>
#include <optional>

#include "attribution/v1/attribution.grpc.pb.h"
#include "server/bearer_auth.h"
#include "server/call_gate.h"
#include "server/call_reactors.h"
#include "server/conversion_pool.h"
#include "server/log_line.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace attribution::server {

// A request converted for the engine (server/conversion.h, server/component_conversion.h).
struct AttributeCall;
struct ComponentsCall;
struct GenerateCall;
struct LogprobsCall;

// Thread-safe. Outlives the grpc::Server it is registered with.
class AttributionServiceImpl final : public v1::AttributionService::CallbackService, private CallObserver {
 public:
  AttributionServiceImpl(const ServerConfig& config, ServerMetrics* metrics, std::optional<BearerAuth> auth);

  // Publishes the loaded models; until then calls are answered UNAVAILABLE.
  void SetModels(const ModelRegistry* models) { models_.store(models); }
  CallGate& gate() { return gate_; }
  // Waits until gRPC is done with every call of this service (answers delivered, or their clients gone), or
  // `timeout`; false then.
  bool WaitCallsClosed(absl::Duration timeout) const;
  // Ends the calls whose large requests wait for the conversion pool UNAVAILABLE, and waits for the conversions
  // running: at the end of a drain, while the models, the metrics and gRPC's server live.
  void StopConversions() { conversions_.Stop(); }
  // Reports calls that end before reaching a handler (server/unparsable_request.h).
  CallObserver* call_observer() { return this; }
  const BearerAuth* auth() const { return auth_ ? &*auth_ : nullptr; }

  grpc::ServerUnaryReactor* Attribute(grpc::CallbackServerContext* context, const v1::AttributeRequest* request,
                                      v1::AttributeResponse* response) override;
  grpc::ServerWriteReactor<v1::AttributeEvent>* AttributeStream(grpc::CallbackServerContext* context,
                                                                const v1::AttributeRequest* request) override;
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateEvent>* GenerateStream(grpc::CallbackServerContext* context,
                                                              const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Logprobs(grpc::CallbackServerContext* context, const v1::LogprobsRequest* request,
                                     v1::LogprobsResponse* response) override;
  grpc::ServerUnaryReactor* AttributeComponents(grpc::CallbackServerContext* context,
                                                const v1::AttributeComponentsRequest* request,
                                                v1::AttributeComponentsResponse* response) override;
  grpc::ServerWriteReactor<v1::AttributeComponentsEvent>* AttributeComponentsStream(
      grpc::CallbackServerContext* context, const v1::AttributeComponentsRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

 private:
  // Authenticates, takes a gate slot and finds the model (nullptr when the call needs none).
  absl::StatusOr<const ServedModel*> Admit(CallLog& log, grpc::CallbackServerContext* context, const std::string& model,
                                           bool needs_model = true);
  void CallEnded(const CallLog& log, const grpc::Status& status) override;
  void AnswerUndelivered(const CallLog& log, int64_t bytes) override;
  void AnswerWaiting(int64_t bytes) override;
  void AnswerGone(int64_t bytes) override;
  void CallOpened() override { open_calls_.fetch_add(1); }
  void CallClosed() override { open_calls_.fetch_sub(1); }
  std::shared_ptr<DeliveryWatch> WatchDelivery(grpc::CallbackServerContext* context) override;
  // Runs `convert` (the request's conversion and the submission of its work) on this thread for a small request,
  // on the conversion pool, by `priority`, for a large one; `fail` ends a call that ended while it waited there,
  // or that the pool dropped at the end of a drain.
  void ConvertThen(grpc::CallbackServerContext* context, const google::protobuf::Message& request,
                   v1::Priority priority, std::function<void()> convert, std::function<void(absl::Status)> fail);
  // Why a large request being read on the conversion pool stops: its call ended, or a drain's grace period is
  // over. OK: read on.
  absl::Status ReadingInterrupted(grpc::CallbackServerContext* context) const;
  // Each RPC: Start admits and converts the request, Submit hands its work to the model's engine.
  using TokenSink = std::function<void(const ServedModel&, int64_t id, float log_prob)>;
  template <typename Call>
  void StartAttribution(Call* call, grpc::CallbackServerContext* context, const v1::AttributeRequest& request,
                        std::function<void(absl::StatusOr<v1::AttributeResponse>)> done);
  template <typename Call>
  void SubmitAttribution(Call* call, const ServedModel* served, AttributeCall converted,
                         std::function<void(absl::StatusOr<v1::AttributeResponse>)> done);
  template <typename Call>
  void StartComponents(Call* call, grpc::CallbackServerContext* context, const v1::AttributeComponentsRequest& request,
                       std::function<void(absl::StatusOr<v1::AttributeComponentsResponse>)> done);
  template <typename Call>
  void SubmitComponents(Call* call, const ServedModel* served, ComponentsCall converted,
                        std::function<void(absl::StatusOr<v1::AttributeComponentsResponse>)> done);
  template <typename Call>
  void StartGeneration(Call* call, grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
                       std::function<void(absl::StatusOr<v1::GenerateResponse>)> done, TokenSink on_token);
  template <typename Call>
  void SubmitGeneration(Call* call, const ServedModel* served, GenerateCall converted, absl::Time deadline,
                        std::function<void(absl::StatusOr<v1::GenerateResponse>)> done, TokenSink on_token);
  void SubmitLogprobs(UnaryCall* call, const ServedModel* served, LogprobsCall converted, absl::Time deadline,
                      v1::LogprobsResponse* response);

  const ServerConfig& config_;
  ServerMetrics* const metrics_;
  const std::optional<BearerAuth> auth_;
  // Calls without a valid token: 36,200 a second from one Python client wrote 15 MB of log in 5 s.
  LogLineBudget unauthenticated_lines_{20};
  LogLineBudget refused_for_load_lines_{20};  // RESOURCE_EXHAUSTED at admission: a flood under overload
  CallGate gate_;
  std::atomic<int64_t> unread_answer_bytes_{0};  // AnswerWaiting, not yet AnswerGone
  std::atomic<int64_t> open_calls_{0};           // CallOpened, not yet CallClosed
  std::optional<DeliveryWatchdog> watchdog_;     // when client_read_timeout is set
  std::atomic<const ModelRegistry*> models_{nullptr};
  // Last: stopped first when the service goes (StopConversions does it earlier, in a drain).
  ConversionPool conversions_{2};
};

}  // namespace attribution::server
