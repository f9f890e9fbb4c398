// SPDX-License-Identifier: Apache-2.0
// A request whose bytes do not parse as its message (truncated wire data, a string field that is not
// UTF-8) never reaches a handler: gRPC's callback API answers it itself with UNIMPLEMENTED and no
// message. This interceptor turns that answer into INVALID_ARGUMENT naming the message type and, when
// protobuf's parser names one, the field, and reports the call like any other (log line, metrics).
#pragma once
#include <grpcpp/support/server_interceptor.h>

#include <string>

#include "server/bearer_auth.h"
#include "server/call_reactors.h"
#include "server/log_line.h"

namespace attribution::server {

// The status an unparsable request gets. `grpc_method` is gRPC's path ("/package.Service/Method");
// `parser_complaint` is what protobuf's parser logged while failing (empty: nothing).
grpc::Status UnparsableRequestStatus(const std::string& grpc_method, const std::string& parser_complaint);

class UnparsableRequestInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Routes protobuf's parse complaints to the interceptor (any other protobuf log line still goes to
  // stderr). Call before the server starts: protobuf's log handler is not thread-safe to set.
  // `observer` reports the refused calls; `auth` (nullptr: none) refuses those without a valid token
  // UNAUTHENTICATED, as the handlers would have. Both must outlive the server.
  UnparsableRequestInterceptorFactory(CallObserver* observer, const BearerAuth* auth);
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

  // What the factory's interceptors share.
  struct Shared {
    CallObserver* const observer;
    const BearerAuth* const auth;
    // Lines of calls that cost their clients nothing; the metrics still count every call. A client that opens
    // streams and resets them at once (HTTP/2 rapid reset) wrote a line per stream, 146,083 lines (30 MB) in
    // 10 s; one sending bytes that do not parse, 38,000 lines (18 MB) in 5 s.
    LogLineBudget ended_before_message_lines{20};
    LogLineBudget unparsable_lines{20};
    LogLineBudget strangers_lines{20};
  };

 private:
  Shared shared_;
};

}  // namespace attribution::server
