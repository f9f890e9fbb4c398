// SPDX-License-Identifier: Apache-2.0
// One call of any attribution.v1 RPC through the raw generated stub, for tests that drive the server
// with every kind of call (the soak): the request and its answer in one value, the call itself (streams
// read to the end, their events checked against what the API promises), and the comparison of two
// answers to the same request.
//
//   Exchange e{.rpc = Rpc::kLogprobs, .kind = "Logprobs"};
//   e.logprobs_request = ...;
//   grpc::ClientContext context;
//   Outcome outcome = Call(*stub, context, e);                       // fills e.logprobs_response
//   std::vector<std::string> diffs = CompareAnswers(e, again, 1e-4, &deviation);
#pragma once
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "attribution/v1/attribution.grpc.pb.h"

namespace attribution::test_support {

enum class Rpc { kAttribute, kAttributeStream, kGenerate, kGenerateStream, kLogprobs };
const char* RpcName(Rpc rpc);  // "Attribute", ...

// One call: its request and, once answered OK, its response (only the fields of its RPC are used).
struct Exchange {
  Rpc rpc = Rpc::kLogprobs;
  std::string kind;  // the RPC and its variant (method, sampling): strata for sampling answers
  v1::AttributeRequest attribute_request;
  v1::GenerateRequest generate_request;
  v1::LogprobsRequest logprobs_request;
  v1::AttributeResponse attribute_response;
  v1::GenerateResponse generate_response;
  v1::LogprobsResponse logprobs_response;
};

// What a call returned: the status, and for streams whether the events came as the API promises.
struct Outcome {
  grpc::Status status;
  std::string protocol_error;  // empty: the events were in order
};

// Runs `e`'s call on `stub` under `context`, filling its response (a stream's result event).
Outcome Call(v1::AttributionService::Stub& stub, grpc::ClientContext& context, Exchange& e);

// The largest relative deviation between compared floats seen so far, and where.
struct Deviation {
  double worst = 0;
  std::string where;
};

// Compares two answers to the same request: token ids, texts, counts exactly; floats within
// `tolerance` relative to the magnitude of the vector they belong to (its largest absolute value, at
// least 1). One line per difference; `deviation` keeps the largest one.
std::vector<std::string> CompareAnswers(const Exchange& a, const Exchange& b, double tolerance, Deviation* deviation);

}  // namespace attribution::test_support
