// SPDX-License-Identifier: Apache-2.0
#include "server/attribution_service.h"

#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/attribution/faithfulness.h"
#include "engine/attribution/row_plan.h"
#include "engine/common/monotonic_clock.h"
#include "engine/scheduler/engine_generation.h"
#include "server/component_conversion.h"
#include "server/conversion.h"
#include "server/conversion_parts.h"
#include "server/log_line.h"
#include "server/user_text.h"

namespace attribution::server {
namespace {

// A stream's progress: the queued event now, then a callback that sends rows done / total as
// replaceable events. A unary call has none.
template <typename Event, typename Call>
std::function<void(int64_t, int64_t)> ProgressEvents(Call* call) {
  if constexpr (std::is_same_v<Call, StreamCall<Event>>) {
    Event queued;
    queued.mutable_queued();
    call->Send(std::move(queued));
    return [call](int64_t rows_done, int64_t rows_total) {
      Event event;
      event.mutable_progress()->set_rows_done(rows_done);
      event.mutable_progress()->set_rows_total(rows_total);
      call->Send(std::move(event), /*replaceable=*/true);
    };
  } else {
    return nullptr;
  }
}

// What a request can ask for less of, to make its response smaller (the fields of its own RPC).
const char* AskForLess(const v1::AttributeResponse&) { return "want_token_matrix, fewer target tokens or features"; }
const char* AskForLess(const v1::AttributeComponentsResponse&) {
  return "fewer pairs or sites, shorter prompts, a coarser granularity";
}
const char* AskForLess(const v1::GenerateResponse&) { return "fewer generation.max_new_tokens"; }
const char* AskForLess(const v1::LogprobsResponse&) { return "a smaller top_k, a shorter target or prompt"; }

// A response over the server's message limit would fail in gRPC's send with a message naming no field,
// after the call was logged OK: it ends INVALID_ARGUMENT here (asking again cannot fit it), saying what
// to ask for instead. OK: its size in bytes.
template <typename Response>
absl::StatusOr<int64_t> CheckResponseSize(const google::protobuf::Message& message, int64_t max_bytes) {
  const auto bytes = static_cast<int64_t>(message.ByteSizeLong());
  if (bytes <= max_bytes) return bytes;
  return absl::InvalidArgumentError(
      absl::StrCat("the response would be ", bytes, " bytes, over this server's max_message_bytes of ", max_bytes,
                   ": ask for less (", AskForLess(Response()), "), or raise max_message_bytes"));
}

// The response an attribution will have, built now from its request with every number at 0: packed arrays (the
// attribution, the token matrix, the curves) keep their length, every field that may be 0 in the answer (a
// log-prob, the objective, the stats) leaves nothing, so the size is a lower bound known before any work and a
// response that fits is never refused. The prompt's and a given target's tokens and features are the request's; a
// generated target counts as max_new_tokens empty tokens. Counting only the numbers and tokens let framing and
// feature texts (30 KB) through: a request ran 375 s to fail at its end.
int64_t AttributeResponseBytes(const AttributeCall& call, const ServedModel& model, int64_t targets, int64_t features) {
  const engine::AttributionRequest& request = call.request;
  engine::AttributionResult zeros{.target_ids = request.target_ids,
                                  .sequence = std::vector<double>(static_cast<size_t>(features))};
  if (request.want_token_matrix) zeros.per_token.assign(static_cast<size_t>(targets), zeros.sequence);
  if (request.want_faithfulness) {
    const size_t points = std::size(engine::kFaithfulnessPercents);
    zeros.faithfulness = engine::Faithfulness{
        .percents = {std::begin(engine::kFaithfulnessPercents), std::end(engine::kFaithfulnessPercents)},
        .features_at = std::vector<int64_t>(points),
        .deletion = std::vector<double>(points),
        .insertion = std::vector<double>(points)};
  }
  v1::AttributeResponse response;
  ToAttributeResponse(zeros, call, model, &response);
  if (request.target_ids.empty()) {
    for (int64_t t = 0; t < targets; ++t) response.add_target_tokens();
  }
  response.clear_stats();
  return static_cast<int64_t>(response.ByteSizeLong());
}

// A request that cannot fit is refused before any work, not after minutes of device time. Its numbers alone
// (the token matrix, T x F doubles) are counted first: what is too large then is never built to be measured.
absl::Status CheckAttributionFits(const AttributeCall& call, const ServedModel& model, int64_t max_bytes) {
  const engine::AttributionRequest& request = call.request;
  const int64_t targets =
      request.target_ids.empty() ? request.generation.max_new_tokens : static_cast<int64_t>(request.target_ids.size());
  const int64_t features = engine::NumFeatures(request);
  constexpr auto kDouble = static_cast<int64_t>(sizeof(double));
  int64_t bytes = (request.want_token_matrix ? targets * features * kDouble : 0) + features * kDouble;
  if (bytes <= max_bytes) bytes = AttributeResponseBytes(call, model, targets, features);
  if (bytes <= max_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "the response would be at least ", bytes, " bytes (", request.want_token_matrix ? "the token matrix's " : "",
      request.want_token_matrix ? absl::StrCat(targets, " target tokens x ", features, " features x 8 bytes, ") : "",
      "the attribution, the features and the tokens), over this server's max_message_bytes of ", max_bytes,
      ": ask for less (want_token_matrix, fewer target tokens or features, a shorter prompt), or raise "
      "max_message_bytes"));
}

// Likewise a component attribution's grids: their values first (8 bytes each), then, where they fit, the response
// built from the request with every number at 0, less its stats (a lower bound, as AttributeResponseBytes).
absl::Status CheckComponentsFit(const ComponentsCall& call, const ServedModel& model, int64_t max_bytes) {
  int64_t bytes = engine::CountGridValues(call.request, model.model->config()) * static_cast<int64_t>(sizeof(double));
  if (bytes <= max_bytes) {
    v1::AttributeComponentsResponse response;
    ToComponentsResponse(engine::ComponentResultOfZeros(call.request, model.model->config()), call, model, &response);
    response.clear_stats();
    bytes = static_cast<int64_t>(response.ByteSizeLong());
  }
  if (bytes <= max_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "the response would be at least ", bytes, " bytes (the grids' values x 8 bytes, their shapes and the pairs' ",
      "tokens), over this server's max_message_bytes of ", max_bytes, ": ask for less (",
      AskForLess(v1::AttributeComponentsResponse()), "), or raise max_message_bytes"));
}

// How a unary call ends: its response, or the error.
template <typename Response>
std::function<void(absl::StatusOr<Response>)> FinishUnary(UnaryCall* call, Response* response, int64_t max_bytes) {
  return [call, response, max_bytes](absl::StatusOr<Response> result) {
    if (!result.ok()) return call->Complete(result.status());
    absl::StatusOr<int64_t> bytes = CheckResponseSize<Response>(*result, max_bytes);
    if (!bytes.ok()) return call->Complete(bytes.status());
    *response = std::move(*result);
    call->Complete(absl::OkStatus(), *bytes);
  };
}

// How a stream ends: the result as its last event, or the error.
template <typename Response, typename Event>
std::function<void(absl::StatusOr<Response>)> FinishStream(StreamCall<Event>* call, int64_t max_bytes) {
  return [call, max_bytes](absl::StatusOr<Response> result) {
    if (!result.ok()) return call->Complete(result.status());
    Event last;
    *last.mutable_result() = std::move(*result);
    if (absl::Status fits = CheckResponseSize<Response>(last, max_bytes).status(); !fits.ok()) {
      return call->Complete(fits);
    }
    call->Complete(absl::OkStatus(), std::move(last));
  };
}

std::vector<std::string> ModelNames(const ServerConfig& config) {
  std::vector<std::string> names;
  for (const ModelSpec& model : config.models) names.push_back(model.name);
  return names;
}

}  // namespace

AttributionServiceImpl::AttributionServiceImpl(const ServerConfig& config, ServerMetrics* metrics,
                                               std::optional<BearerAuth> auth)
    : config_(config),
      metrics_(metrics),
      auth_(std::move(auth)),
      gate_(
          config.max_concurrent_requests, [metrics](int64_t calls) { metrics->SetInFlight(calls); },
          ModelNames(config)) {
  if (config.client_read_timeout > absl::ZeroDuration()) watchdog_.emplace(config.client_read_timeout);
}

std::shared_ptr<DeliveryWatch> AttributionServiceImpl::WatchDelivery(grpc::CallbackServerContext* context) {
  return watchdog_ ? watchdog_->Watch(context) : nullptr;
}

absl::StatusOr<const ServedModel*> AttributionServiceImpl::Admit(CallLog& log, grpc::CallbackServerContext* context,
                                                                 const std::string& model, bool needs_model) {
  if (auth_) {
    if (absl::Status s = auth_->CheckCall(*context); !s.ok()) {
      // A stranger's call costs it nothing, so its lines are rationed, and its text (the model it names, its
      // request id) stays out of the log.
      log.logged = unauthenticated_lines_.Take(MonotonicNow(), log.like_it_not_logged);
      log.request_id.clear();
      return s;
    }
  }
  log.model = model;
  const ModelRegistry* models = models_.load();
  // Looked up before anything but the token check may refuse the call: the metrics' label, however the call ends
  // (refused for load too), is a model of this server's, else empty.
  const bool looked_up = models != nullptr && needs_model && !model.empty();
  const absl::StatusOr<const ServedModel*> found = looked_up ? models->Find(model) : nullptr;
  if (looked_up && found.ok()) log.served_model = model;
  // Refusals for load answer in microseconds and clients resend them: an overloaded server wrote a WARNING line
  // for each (25,145 in 5 s), burying the lines of the calls it served. Rationed; the metrics count them all.
  auto refused_for_load = [&](absl::Status refusal) {
    log.logged = refused_for_load_lines_.Take(MonotonicNow(), log.like_it_not_logged);
    return refusal;
  };
  if (const int64_t unread = unread_answer_bytes_.load(); unread >= config_.max_unread_answer_bytes) {
    return refused_for_load(
        absl::ResourceExhaustedError(absl::StrCat("answers not yet read by their clients hold ", unread,
                                                  " bytes; the limit is ", config_.max_unread_answer_bytes)));
  }
  if (absl::Status s = gate_.Enter(log.served_model); !s.ok()) return refused_for_load(std::move(s));
  log.admitted = true;
  if (models == nullptr) return absl::UnavailableError("the server is still loading its models");
  if (!needs_model) return nullptr;
  if (model.empty()) return absl::InvalidArgumentError("model: must name one of this server's models (see ListModels)");
  return found;
}

namespace {

// What every line about a call says of it: its RPC, model, peer, time since receipt and the client's id for it
// (a batch job's is a hash of model, settings and row, so a retried row is recognisable; client text, so capped
// like the model name).
nlohmann::json CallLine(const CallLog& log, absl::Time now) {
  nlohmann::json line = {{"rpc", log.method},
                         {"model", AbbreviateUserText(log.model)},
                         {"wall_s", absl::ToDoubleSeconds(now - log.received)},
                         {"peer", log.peer}};
  if (!log.request_id.empty()) line["request_id"] = AbbreviateUserText(log.request_id, 128);
  return line;
}

}  // namespace

void AttributionServiceImpl::CallEnded(const CallLog& log, const grpc::Status& status) {
  const absl::Time now = MonotonicNow();
  const char* code = StatusCodeName(status.error_code());
  // Counted before its slot frees: a call admitted into that slot finds this one in the metrics.
  metrics_->RecordRpc(log.method, code, log.served_model, now - log.received);
  if (log.admitted) {
    gate_.Leave(log.served_model);
  }
  if (!log.logged) return;
  nlohmann::json line = CallLine(log, now);
  line["code"] = code;
  if (log.stats.rows() > 0) {
    line["rows"] = log.stats.rows();
    line["queue_s"] = log.stats.queue_seconds();
    line["device_s"] = log.stats.device_seconds();
  }
  // Messages quote client strings shortly already; the cap keeps one we missed from flooding the log.
  if (!status.ok()) line["message"] = AbbreviateUserText(status.error_message(), 1024);
  if (log.like_it_not_logged > 0) line["like_it_not_logged"] = log.like_it_not_logged;
  WriteLogLine(std::move(line));
}

void AttributionServiceImpl::AnswerUndelivered(const CallLog& log, int64_t bytes) {
  metrics_->RecordUndeliveredAnswer(log.method, log.served_model);
  if (!log.logged) return;
  nlohmann::json line = CallLine(log, MonotonicNow());
  line["event"] = "answer_undelivered";
  line["severity"] = "WARNING";
  line["answer_bytes"] = bytes;
  line["message"] = "cancelled by the server: the client stopped reading its answer (the client got CANCELLED)";
  WriteLogLine(std::move(line));
}

void AttributionServiceImpl::AnswerWaiting(int64_t bytes) { unread_answer_bytes_.fetch_add(bytes); }

void AttributionServiceImpl::AnswerGone(int64_t bytes) { unread_answer_bytes_.fetch_sub(bytes); }

bool AttributionServiceImpl::WaitCallsClosed(absl::Duration timeout) const {
  const absl::Time deadline = MonotonicNow() + timeout;
  while (open_calls_.load() > 0) {
    if (MonotonicNow() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));  // once, at the end of a drain: no event to wait on is worth its cost
  }
  return true;
}

void AttributionServiceImpl::ConvertThen(grpc::CallbackServerContext* context, const google::protobuf::Message& request,
                                         v1::Priority priority, std::function<void()> convert,
                                         std::function<void(absl::Status)> fail) {
  if (request.ByteSizeLong() < kInlineConversionBytes) return convert();
  // Taken as the engine takes work (HIGH, NORMAL, LOW); a value this server does not know waits as NORMAL, and its
  // conversion refuses it.
  const int rank = priority == v1::LOW ? 0 : priority == v1::HIGH ? 2 : 1;
  conversions_.Run(
      rank,
      [context, convert = std::move(convert), fail] {
        // A call that ended while it waited (its client gone, its deadline past) is not read.
        if (context->IsCancelled()) return fail(absl::CancelledError("the call ended before its request was read"));
        convert();
      },
      [fail] { fail(absl::UnavailableError("the server is shutting down; retry on another replica")); });
}

absl::Status AttributionServiceImpl::ReadingInterrupted(grpc::CallbackServerContext* context) const {
  if (context->IsCancelled()) return absl::CancelledError("the call ended while its request was read");
  // A drain's grace period is over: it waited for the whole conversion (17.6 s for a 1 s grace on a busy machine).
  if (conversions_.stopping()) return absl::UnavailableError("the server is shutting down; retry on another replica");
  return absl::OkStatus();
}

template <typename Call>
void AttributionServiceImpl::StartAttribution(Call* call, grpc::CallbackServerContext* context,
                                              const v1::AttributeRequest& request,
                                              std::function<void(absl::StatusOr<v1::AttributeResponse>)> done) {
  absl::StatusOr<const ServedModel*> model = Admit(call->log(), context, request.model());
  if (!model.ok()) return done(model.status());
  ConvertThen(
      context, request, request.priority(),
      [=, this, &request, served = *model] {
        absl::StatusOr<AttributeCall> converted = ToAttributeCall(request, *served, call->log().deadline);
        if (!converted.ok()) return done(converted.status());
        if (absl::Status fits = CheckAttributionFits(*converted, *served, config_.max_message_bytes); !fits.ok()) {
          return done(fits);
        }
        SubmitAttribution(call, served, std::move(*converted), done);
      },
      done);
}

// A call whose work failed (a deadline, a cancellation, an engine error) still logs what the engine ran for it:
// those are the lines an operator reads to tell a queued call from a huge one.
namespace {

template <typename Call, typename Done>
void FailWithStats(Call* call, const engine::Request& handle, absl::Time received, const absl::Status& status,
                   const Done& done) {
  ToRunStats(handle.stats(), received, &call->log().stats);
  done(status);
}

}  // namespace

template <typename Call>
void AttributionServiceImpl::SubmitAttribution(Call* call, const ServedModel* served, AttributeCall converted,
                                               std::function<void(absl::StatusOr<v1::AttributeResponse>)> done) {
  auto attribute = std::make_shared<AttributeCall>(std::move(converted));
  auto handle = served->engine->NewRequest(attribute->request.priority, attribute->request.deadline);
  call->OnCancelDo([served, handle] { served->engine->Cancel(*handle); });
  const absl::Time received = call->log().received;
  served->attributor->Attribute(
      handle, attribute->request,
      [call, served, attribute, handle, received, done](absl::StatusOr<engine::AttributionResult> result) {
        if (!result.ok()) return FailWithStats(call, *handle, received, result.status(), done);
        v1::AttributeResponse response;
        ToAttributeResponse(*result, *attribute, *served, &response);
        SetWallAndBuild(received, response.mutable_stats());
        call->log().stats = response.stats();
        done(std::move(response));
      },
      ProgressEvents<v1::AttributeEvent>(call));
}

grpc::ServerUnaryReactor* AttributionServiceImpl::Attribute(grpc::CallbackServerContext* context,
                                                            const v1::AttributeRequest* request,
                                                            v1::AttributeResponse* response) {
  auto* call = new UnaryCall(this, "Attribute", context);
  StartAttribution(call, context, *request, FinishUnary(call, response, config_.max_message_bytes));
  return call;
}

grpc::ServerWriteReactor<v1::AttributeEvent>* AttributionServiceImpl::AttributeStream(
    grpc::CallbackServerContext* context, const v1::AttributeRequest* request) {
  auto* call = new StreamCall<v1::AttributeEvent>(this, "AttributeStream", context);
  StartAttribution(call, context, *request, FinishStream<v1::AttributeResponse>(call, config_.max_message_bytes));
  return call;
}

template <typename Call>
void AttributionServiceImpl::StartComponents(
    Call* call, grpc::CallbackServerContext* context, const v1::AttributeComponentsRequest& request,
    std::function<void(absl::StatusOr<v1::AttributeComponentsResponse>)> done) {
  absl::StatusOr<const ServedModel*> model = Admit(call->log(), context, request.model());
  if (!model.ok()) return done(model.status());
  ConvertThen(
      context, request, request.priority(),
      [=, this, &request, served = *model] {
        absl::StatusOr<ComponentsCall> converted =
            ToComponentsCall(request, *served, call->log().deadline, config_.max_message_bytes,
                             [this, context] { return ReadingInterrupted(context); });
        if (!converted.ok()) return done(converted.status());
        if (absl::Status fits = CheckComponentsFit(*converted, *served, config_.max_message_bytes); !fits.ok()) {
          return done(fits);
        }
        SubmitComponents(call, served, std::move(*converted), done);
      },
      done);
}

template <typename Call>
void AttributionServiceImpl::SubmitComponents(
    Call* call, const ServedModel* served, ComponentsCall converted,
    std::function<void(absl::StatusOr<v1::AttributeComponentsResponse>)> done) {
  auto components = std::make_shared<ComponentsCall>(std::move(converted));
  auto handle = served->engine->NewRequest(components->request.priority, components->request.deadline);
  call->OnCancelDo([served, handle] { served->engine->Cancel(*handle); });
  const absl::Time received = call->log().received;
  engine::AttributeComponents(
      *served->engine, handle, served->model->config(), components->limits, components->request,
      [call, served, components, handle, received, done](absl::StatusOr<engine::ComponentResult> result) {
        if (!result.ok()) return FailWithStats(call, *handle, received, result.status(), done);
        v1::AttributeComponentsResponse response;
        ToComponentsResponse(*result, *components, *served, &response);
        ToRunStats(handle->stats(), received, response.mutable_stats());
        call->log().stats = response.stats();
        done(std::move(response));
      },
      ProgressEvents<v1::AttributeComponentsEvent>(call));
}

grpc::ServerUnaryReactor* AttributionServiceImpl::AttributeComponents(grpc::CallbackServerContext* context,
                                                                      const v1::AttributeComponentsRequest* request,
                                                                      v1::AttributeComponentsResponse* response) {
  auto* call = new UnaryCall(this, "AttributeComponents", context);
  StartComponents(call, context, *request, FinishUnary(call, response, config_.max_message_bytes));
  return call;
}

grpc::ServerWriteReactor<v1::AttributeComponentsEvent>* AttributionServiceImpl::AttributeComponentsStream(
    grpc::CallbackServerContext* context, const v1::AttributeComponentsRequest* request) {
  auto* call = new StreamCall<v1::AttributeComponentsEvent>(this, "AttributeComponentsStream", context);
  StartComponents(call, context, *request,
                  FinishStream<v1::AttributeComponentsResponse>(call, config_.max_message_bytes));
  return call;
}

template <typename Call>
void AttributionServiceImpl::StartGeneration(Call* call, grpc::CallbackServerContext* context,
                                             const v1::GenerateRequest& request,
                                             std::function<void(absl::StatusOr<v1::GenerateResponse>)> done,
                                             TokenSink on_token) {
  absl::StatusOr<const ServedModel*> model = Admit(call->log(), context, request.model());
  if (!model.ok()) return done(model.status());
  ConvertThen(
      context, request, request.priority(),
      [=, this, &request, served = *model] {
        absl::StatusOr<GenerateCall> converted = ToGenerateCall(request, *served);
        if (!converted.ok()) return done(converted.status());
        SubmitGeneration(call, served, std::move(*converted), call->log().deadline, done, on_token);
      },
      done);
}

template <typename Call>
void AttributionServiceImpl::SubmitGeneration(Call* call, const ServedModel* served, GenerateCall converted,
                                              absl::Time deadline,
                                              std::function<void(absl::StatusOr<v1::GenerateResponse>)> done,
                                              TokenSink on_token) {
  auto generate = std::make_shared<GenerateCall>(std::move(converted));
  auto handle = served->engine->NewRequest(generate->priority, deadline);
  call->OnCancelDo([served, handle] { served->engine->Cancel(*handle); });
  const absl::Time received = call->log().received;
  engine::GenerateAsync(
      *served->engine, handle, served->model->config(), generate->prompt.encoding.ids, generate->options,
      [call, served, generate, handle, received, done](absl::StatusOr<engine::Generation> generation) {
        if (!generation.ok()) return FailWithStats(call, *handle, received, generation.status(), done);
        v1::GenerateResponse response;
        ToGenerateResponse(*generation, *generate, *served, &response);
        ToRunStats(handle->stats(), received, response.mutable_stats());
        // Prefill and each decode step run their row forward once, never backward.
        response.mutable_stats()->set_forward_passes(response.stats().rows());
        call->log().stats = response.stats();
        done(std::move(response));
      },
      on_token ? engine::TokenCallback([served, on_token](int64_t id, float lp) { on_token(*served, id, lp); })
               : engine::TokenCallback(),
      ToStopCheck(generate, *served->tokenizer));
}

grpc::ServerUnaryReactor* AttributionServiceImpl::Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request,
                                                           v1::GenerateResponse* response) {
  auto* call = new UnaryCall(this, "Generate", context);
  StartGeneration(call, context, *request, FinishUnary(call, response, config_.max_message_bytes), nullptr);
  return call;
}

grpc::ServerWriteReactor<v1::GenerateEvent>* AttributionServiceImpl::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* call = new StreamCall<v1::GenerateEvent>(this, "GenerateStream", context);
  auto on_token = [call](const ServedModel& served, int64_t id, float log_prob) {
    v1::GenerateEvent event;
    ToStreamedToken(id, log_prob, served, event.mutable_token());
    call->Send(std::move(event));
  };
  StartGeneration(call, context, *request, FinishStream<v1::GenerateResponse>(call, config_.max_message_bytes),
                  on_token);
  return call;
}

grpc::ServerUnaryReactor* AttributionServiceImpl::Logprobs(grpc::CallbackServerContext* context,
                                                           const v1::LogprobsRequest* request,
                                                           v1::LogprobsResponse* response) {
  auto* call = new UnaryCall(this, "Logprobs", context);
  absl::StatusOr<const ServedModel*> model = Admit(call->log(), context, request->model());
  if (!model.ok()) {
    call->Complete(model.status());
    return call;
  }
  auto fail = [call](absl::Status status) { call->Complete(status); };
  ConvertThen(
      context, *request, request->priority(),
      [=, this, served = *model] {
        absl::StatusOr<LogprobsCall> converted = ToLogprobsCall(*request, *served, config_.max_top_k);
        if (!converted.ok()) return fail(converted.status());
        SubmitLogprobs(call, served, std::move(*converted), call->log().deadline, response);
      },
      fail);
  return call;
}

void AttributionServiceImpl::SubmitLogprobs(UnaryCall* call, const ServedModel* served, LogprobsCall converted,
                                            absl::Time deadline, v1::LogprobsResponse* response) {
  auto logprobs = std::make_shared<LogprobsCall>(std::move(converted));
  auto handle = served->engine->NewRequest(logprobs->priority, deadline);
  call->OnCancelDo([served, handle] { served->engine->Cancel(*handle); });
  const absl::Time received = call->log().received;
  engine::ScoreTarget(*served->engine, handle, logprobs->prompt.encoding.ids, logprobs->target.encoding.ids,
                      logprobs->top_k,
                      [call, served, logprobs, handle, response, received,
                       max_bytes = config_.max_message_bytes](absl::StatusOr<engine::TargetScores> scores) {
                        if (!scores.ok()) {
                          ToRunStats(handle->stats(), received, &call->log().stats);
                          return call->Complete(scores.status());
                        }
                        ToLogprobsResponse(*scores, *logprobs, *served, response);
                        ToRunStats(handle->stats(), received, response->mutable_stats());
                        // A score request runs each of its rows forward once and never backward.
                        response->mutable_stats()->set_forward_passes(response->stats().rows());
                        absl::StatusOr<int64_t> bytes = CheckResponseSize<v1::LogprobsResponse>(*response, max_bytes);
                        if (!bytes.ok()) {
                          response->Clear();
                          return call->Complete(bytes.status());
                        }
                        call->log().stats = response->stats();
                        call->Complete(absl::OkStatus(), *bytes);
                      });
}

grpc::ServerUnaryReactor* AttributionServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                             const v1::ListModelsRequest*,
                                                             v1::ListModelsResponse* response) {
  auto* call = new UnaryCall(this, "ListModels", context);
  absl::StatusOr<const ServedModel*> admitted = Admit(call->log(), context, "", /*needs_model=*/false);
  if (admitted.ok()) {
    for (const auto& model : models_.load()->models()) ToModelInfo(*model, config_.max_top_k, response->add_models());
  }
  call->Complete(admitted.status());
  return call;
}

}  // namespace attribution::server
