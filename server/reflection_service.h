// SPDX-License-Identifier: Apache-2.0
// gRPC server reflection (grpc.reflection.v1alpha, what grpcurl speaks), answered from the generated descriptor
// pool. gRPC 1.51's own service kept one answer per stream and appended to it: the k-th answer on a stream held
// k copies of the file asked for, so one connection made the server send 1 GB for 18 KB of requests
// (grpc/grpc#18009); and it needed a thread per open stream.
//
//   ReflectionService reflection({"attribution.v1.AttributionService", "grpc.health.v1.Health"});
//   builder.RegisterService(&reflection);
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace attribution::server {

class ReflectionService final : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  // Streams open at once; more are refused RESOURCE_EXHAUSTED (they need no token).
  static constexpr int kMaxOpenStreams = 16;

  // `services`: the names list_services answers, besides this one.
  explicit ReflectionService(std::vector<std::string> services);

  grpc::ServerBidiReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                          grpc::reflection::v1alpha::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

 private:
  class Stream;

  const std::vector<std::string> services_;
  std::atomic<int> open_streams_{0};
};

}  // namespace attribution::server
