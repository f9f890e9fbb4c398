// SPDX-License-Identifier: Apache-2.0
#include "tests/testing/rpc_exchange.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace attribution::test_support {
namespace {

using Stub = v1::AttributionService::Stub;

Outcome ReadAttributeStream(Stub& stub, grpc::ClientContext& context, Exchange& e) {
  Outcome out;
  auto reader = stub.AttributeStream(&context, e.attribute_request);
  v1::AttributeEvent event;
  int events = 0;
  int64_t rows_done = -1;
  bool answered = false;
  while (reader->Read(&event)) {
    if (answered) out.protocol_error = "an event after the result";
    switch (event.event_case()) {
      case v1::AttributeEvent::kQueued:
        if (events != 0) out.protocol_error = "queued is not the first event";
        break;
      case v1::AttributeEvent::kProgress:
        if (event.progress().rows_done() < rows_done || event.progress().rows_done() > event.progress().rows_total()) {
          out.protocol_error = absl::StrCat("progress ", event.progress().rows_done(), "/",
                                            event.progress().rows_total(), " after ", rows_done);
        }
        rows_done = event.progress().rows_done();
        break;
      case v1::AttributeEvent::kResult:
        answered = true;
        e.attribute_response = std::move(*event.mutable_result());
        break;
      case v1::AttributeEvent::EVENT_NOT_SET:
        out.protocol_error = "an empty event";
        break;
    }
    ++events;
  }
  out.status = reader->Finish();
  if (out.status.ok() && !answered) out.protocol_error = "OK without a result";
  return out;
}

Outcome ReadGenerateStream(Stub& stub, grpc::ClientContext& context, Exchange& e) {
  Outcome out;
  auto reader = stub.GenerateStream(&context, e.generate_request);
  v1::GenerateEvent event;
  std::vector<int64_t> streamed;
  bool answered = false;
  while (reader->Read(&event)) {
    if (answered) out.protocol_error = "an event after the result";
    switch (event.event_case()) {
      case v1::GenerateEvent::kToken:
        streamed.push_back(event.token().id());
        break;
      case v1::GenerateEvent::kResult:
        answered = true;
        e.generate_response = std::move(*event.mutable_result());
        break;
      case v1::GenerateEvent::EVENT_NOT_SET:
        out.protocol_error = "an empty event";
        break;
    }
  }
  out.status = reader->Finish();
  if (out.status.ok() && !answered) out.protocol_error = "OK without a result";
  if (out.status.ok() && answered) {
    std::vector<int64_t> result;
    for (const v1::Token& t : e.generate_response.tokens()) result.push_back(t.id());
    if (result != streamed) {
      out.protocol_error = absl::StrCat("streamed tokens [", absl::StrJoin(streamed, ","), "] but the result has [",
                                        absl::StrJoin(result, ","), "]");
    }
  }
  return out;
}

// Compares one answer with another to the same request, collecting the differences.
class Comparison {
 public:
  Comparison(std::string kind, double tolerance, Deviation* deviation)
      : kind_(std::move(kind)), tolerance_(tolerance), deviation_(deviation) {}
  const std::vector<std::string>& diffs() const { return diffs_; }
  double tolerance() const { return tolerance_; }

  template <typename T>
  void Exact(const std::string& what, const T& a, const T& b) {
    if (!(a == b)) diffs_.push_back(absl::StrCat(kind_, ": ", what, " differs"));
  }
  // Floats of one vector (or one scalar, scale = its magnitude).
  void Close(const std::string& what, double a, double b, double scale) {
    const double relative = std::fabs(a - b) / std::max(1.0, scale);
    if (relative > deviation_->worst) *deviation_ = {relative, absl::StrCat(kind_, " ", what)};
    if (!(relative <= tolerance_)) {
      diffs_.push_back(absl::StrFormat("%s: %s %.9g, then %.9g", kind_, what, a, b));
    }
  }
  template <typename Vector>
  void CloseAll(const std::string& what, const Vector& a, const Vector& b) {
    if (a.size() != b.size()) {
      diffs_.push_back(absl::StrCat(kind_, ": ", what, " has ", a.size(), " values, then ", b.size()));
      return;
    }
    double scale = 0;
    for (double v : b) scale = std::max(scale, std::fabs(v));
    for (int i = 0; i < b.size(); ++i) Close(absl::StrCat(what, "[", i, "]"), a[i], b[i], scale);
  }
  void Tokens(const std::string& what, const google::protobuf::RepeatedPtrField<v1::Token>& a,
              const google::protobuf::RepeatedPtrField<v1::Token>& b) {
    std::vector<int64_t> a_ids, b_ids;
    std::vector<double> a_lp, b_lp;
    for (const v1::Token& t : a) a_ids.push_back(t.id()), a_lp.push_back(t.log_prob());
    for (const v1::Token& t : b) b_ids.push_back(t.id()), b_lp.push_back(t.log_prob());
    Exact(what + " ids", a_ids, b_ids);
    if (a_ids == b_ids) {
      for (size_t i = 0; i < b_lp.size(); ++i) {
        Close(absl::StrCat(what, "[", i, "].log_prob"), a_lp[i], b_lp[i], std::fabs(b_lp[i]));
      }
    }
  }

 private:
  const std::string kind_;
  const double tolerance_;
  Deviation* const deviation_;
  std::vector<std::string> diffs_;
};

void CompareAttributions(const v1::AttributeResponse& a, const v1::AttributeResponse& b, Comparison& c) {
  c.Exact("method", a.method(), b.method());
  c.Tokens("prompt_tokens", a.prompt_tokens(), b.prompt_tokens());
  c.Tokens("target_tokens", a.target_tokens(), b.target_tokens());
  std::vector<std::pair<int64_t, int64_t>> a_features, b_features;
  for (const v1::Feature& f : a.features()) a_features.emplace_back(f.token_begin(), f.token_end());
  for (const v1::Feature& f : b.features()) b_features.emplace_back(f.token_begin(), f.token_end());
  c.Exact("features", a_features, b_features);
  c.Exact("integration_steps", a.integration_steps(), b.integration_steps());
  c.CloseAll("sequence_attribution", a.sequence_attribution(), b.sequence_attribution());
  if (a.token_matrix_size() != b.token_matrix_size()) {
    c.Exact("token_matrix rows", a.token_matrix_size(), b.token_matrix_size());
  } else {
    for (int t = 0; t < b.token_matrix_size(); ++t) {
      c.CloseAll(absl::StrCat("token_matrix[", t, "]"), a.token_matrix(t).values(), b.token_matrix(t).values());
    }
  }
  c.Close("objective", a.objective(), b.objective(), std::fabs(b.objective()));
  c.Exact("has convergence_delta", a.has_convergence_delta(), b.has_convergence_delta());
  if (b.has_convergence_delta()) {
    // sum(attr) - (f(x) - f(x')): its rounding is that of its largest term.
    double scale = std::fabs(b.objective());
    for (double v : b.sequence_attribution()) scale += std::fabs(v);
    c.Close("convergence_delta", a.convergence_delta(), b.convergence_delta(), scale);
  }
}

void CompareGenerations(const v1::GenerateResponse& a, const v1::GenerateResponse& b, Comparison& c) {
  c.Tokens("prompt_tokens", a.prompt_tokens(), b.prompt_tokens());
  c.Tokens("tokens", a.tokens(), b.tokens());
  c.Exact("text_bytes", a.text_bytes(), b.text_bytes());
  c.Exact("stopped", a.stopped(), b.stopped());
}

void CompareLogprobs(const v1::LogprobsResponse& a, const v1::LogprobsResponse& b, Comparison& c) {
  c.Tokens("prompt_tokens", a.prompt_tokens(), b.prompt_tokens());
  c.Close("total_log_prob", a.total_log_prob(), b.total_log_prob(), std::fabs(b.total_log_prob()));
  c.Exact("target positions", a.target_size(), b.target_size());
  for (int i = 0; i < std::min(a.target_size(), b.target_size()); ++i) {
    const v1::TokenLogprob& s = a.target(i);
    const v1::TokenLogprob& a = b.target(i);
    c.Exact(absl::StrCat("target[", i, "].id"), s.token().id(), a.token().id());
    c.Close(absl::StrCat("target[", i, "].log_prob"), s.token().log_prob(), a.token().log_prob(),
            std::fabs(a.token().log_prob()));
    c.Exact(absl::StrCat("target[", i, "].top size"), s.top_size(), a.top_size());
    for (int k = 0; k < std::min(s.top_size(), a.top_size()); ++k) {
      // Two alternatives within rounding of each other may swap places; their log-probs still agree.
      if (s.top(k).id() != a.top(k).id() &&
          std::fabs(s.top(k).log_prob() - a.top(k).log_prob()) > c.tolerance() * std::fabs(a.top(k).log_prob())) {
        c.Exact(absl::StrCat("target[", i, "].top[", k, "].id"), s.top(k).id(), a.top(k).id());
      }
      c.Close(absl::StrCat("target[", i, "].top[", k, "].log_prob"), s.top(k).log_prob(), a.top(k).log_prob(),
              std::fabs(a.top(k).log_prob()));
    }
  }
}

}  // namespace

const char* RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kAttribute:
      return "Attribute";
    case Rpc::kAttributeStream:
      return "AttributeStream";
    case Rpc::kGenerate:
      return "Generate";
    case Rpc::kGenerateStream:
      return "GenerateStream";
    case Rpc::kLogprobs:
      return "Logprobs";
  }
  return "?";
}

Outcome Call(Stub& stub, grpc::ClientContext& context, Exchange& e) {
  switch (e.rpc) {
    case Rpc::kAttribute:
      return {stub.Attribute(&context, e.attribute_request, &e.attribute_response), ""};
    case Rpc::kAttributeStream:
      return ReadAttributeStream(stub, context, e);
    case Rpc::kGenerate:
      return {stub.Generate(&context, e.generate_request, &e.generate_response), ""};
    case Rpc::kGenerateStream:
      return ReadGenerateStream(stub, context, e);
    case Rpc::kLogprobs:
      return {stub.Logprobs(&context, e.logprobs_request, &e.logprobs_response), ""};
  }
  return {grpc::Status(grpc::StatusCode::INTERNAL, "unknown rpc"), ""};
}

std::vector<std::string> CompareAnswers(const Exchange& a, const Exchange& b, double tolerance, Deviation* deviation) {
  Comparison c(a.kind, tolerance, deviation);
  switch (a.rpc) {
    case Rpc::kAttribute:
    case Rpc::kAttributeStream:
      CompareAttributions(a.attribute_response, b.attribute_response, c);
      break;
    case Rpc::kGenerate:
    case Rpc::kGenerateStream:
      CompareGenerations(a.generate_response, b.generate_response, c);
      break;
    case Rpc::kLogprobs:
      CompareLogprobs(a.logprobs_response, b.logprobs_response, c);
      break;
  }
  return c.diffs();
}

}  // namespace attribution::test_support
