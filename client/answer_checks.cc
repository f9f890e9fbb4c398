// SPDX-License-Identifier: Apache-2.0
#include "client/answer_checks.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attribution::client {
namespace {

namespace v1 = ::attribution::v1;

// A log-probability is log_softmax's, <= 0 exactly; a choice-renormalised one may round a little above.
constexpr double kLogProbSlack = 1e-3;

absl::Status Contradicts(absl::string_view field, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(field, ": ", what, " (the response does not answer this request)"));
}

absl::Status CheckLogProb(double log_prob, absl::string_view field, int64_t terms = 1) {
  if (!(log_prob > kLogProbSlack * static_cast<double>(terms))) return absl::OkStatus();  // NaN passes
  return absl::DataLossError(absl::StrCat(field, " = ", log_prob, ": a log-probability is at most 0"));
}

std::string MethodName(v1::Method method) {
  const std::string& name = v1::Method_Name(method);
  return name.empty() ? absl::StrCat(static_cast<int>(method)) : name;
}

// The target ids asked for, or (none given) one token or more.
absl::Status CheckTargetIds(const std::vector<int64_t>& asked, const std::vector<int64_t>& got,
                            absl::string_view field) {
  if (asked.empty()) {
    return got.empty() ? Contradicts(field, "no target token") : absl::OkStatus();
  }
  if (got == asked) return absl::OkStatus();
  return Contradicts(
      field, absl::StrCat("ids [", absl::StrJoin(got, ", "), "], asked for [", absl::StrJoin(asked, ", "), "]"));
}

}  // namespace

AskedFor AskedBy(const v1::AttributeRequest& request) {
  return {.method = request.method(),
          .target_ids = {request.target().token_ids().begin(), request.target().token_ids().end()}};
}

AskedFor AskedBy(const v1::LogprobsRequest& request) {
  return {.target_ids = {request.target().token_ids().begin(), request.target().token_ids().end()},
          .top_k = request.top_k()};
}

AskedFor AskedBy(const v1::GenerateRequest& request) {
  return {.max_new_tokens = request.generation().max_new_tokens()};
}

absl::Status CheckAnswer(const AskedFor& asked, const v1::AttributeResponse& r) {
  if (asked.method != v1::METHOD_UNSPECIFIED && r.method() != asked.method) {
    return Contradicts("AttributeResponse.method",
                       absl::StrCat(MethodName(r.method()), ", asked for ", MethodName(asked.method)));
  }
  std::vector<int64_t> ids;
  for (const v1::Token& t : r.target_tokens()) ids.push_back(t.id());
  if (absl::Status s = CheckTargetIds(asked.target_ids, ids, "AttributeResponse.target_tokens"); !s.ok()) return s;
  for (int i = 0; i < r.target_tokens_size(); ++i) {
    absl::Status s =
        CheckLogProb(r.target_tokens(i).log_prob(), absl::StrCat("AttributeResponse.target_tokens[", i, "].log_prob"));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckAnswer(const AskedFor& asked, const v1::LogprobsResponse& r) {
  std::vector<int64_t> ids;
  for (const v1::TokenLogprob& t : r.target()) ids.push_back(t.token().id());
  if (absl::Status s = CheckTargetIds(asked.target_ids, ids, "LogprobsResponse.target"); !s.ok()) return s;
  for (int i = 0; i < r.target_size(); ++i) {
    const v1::TokenLogprob& t = r.target(i);
    const std::string field = absl::StrCat("LogprobsResponse.target[", i, "]");
    if (absl::Status s = CheckLogProb(t.token().log_prob(), field + ".token.log_prob"); !s.ok()) return s;
    if (t.top_size() > asked.top_k) {
      return Contradicts(field + ".top", absl::StrCat(t.top_size(), " alternatives, asked for top_k = ", asked.top_k));
    }
    for (int k = 0; k < t.top_size(); ++k) {
      if (absl::Status s = CheckLogProb(t.top(k).log_prob(), absl::StrCat(field, ".top[", k, "].log_prob")); !s.ok())
        return s;
    }
  }
  return CheckLogProb(r.total_log_prob(), "LogprobsResponse.total_log_prob", r.target_size());
}

absl::Status CheckAnswer(const AskedFor& asked, const v1::GenerateResponse& r) {
  if (asked.max_new_tokens > 0 && r.tokens_size() > asked.max_new_tokens) {
    return Contradicts("GenerateResponse.tokens",
                       absl::StrCat(r.tokens_size(), " tokens, asked for max_new_tokens = ", asked.max_new_tokens));
  }
  for (int i = 0; i < r.tokens_size(); ++i) {
    absl::Status s = CheckLogProb(r.tokens(i).log_prob(), absl::StrCat("GenerateResponse.tokens[", i, "].log_prob"));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace attribution::client
