// SPDX-License-Identifier: Apache-2.0
#include "server/unparsable_request.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>

#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/common/monotonic_clock.h"
#include "server/grpc_status.h"

namespace attribution::server {
namespace {

// protobuf's parser says which string field failed only in a log line ("String field 'pkg.Type.field'
// contains invalid UTF-8 data when parsing a protocol buffer. ..."), written on the thread that
// parses; gRPC parses a request on the thread that then runs the interceptors.
thread_local std::string parser_complaint;
google::protobuf::LogHandler* other_protobuf_logs = nullptr;

void RouteProtobufLog(google::protobuf::LogLevel level, const char* filename, int line, const std::string& message) {
  if (absl::StrContains(message, "when parsing a protocol buffer")) {
    // A client's bad bytes: its call's answer and log line carry this, so stderr does not repeat it.
    parser_complaint = message;
    return;
  }
  if (other_protobuf_logs != nullptr) other_protobuf_logs(level, filename, line, message);
}

// "/attribution.v1.AttributionService/Attribute" → AttributeRequest's descriptor (nullptr: not ours).
const google::protobuf::Descriptor* RequestType(const std::string& grpc_method) {
  const std::string method_name = absl::StrReplaceAll(grpc_method.substr(grpc_method.empty() ? 0 : 1), {{"/", "."}});
  const google::protobuf::MethodDescriptor* method =
      google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method_name);
  return method != nullptr ? method->input_type() : nullptr;
}

// The field a UTF-8 complaint names, if it is a field of `request`: a complaint is left behind by any
// parse on the thread, an earlier call's on a stream included. (The requests' only strings are
// top-level model names; their text travels as bytes.)
std::optional<std::string> FieldWithBadUtf8(const std::string& complaint, const google::protobuf::Descriptor* request) {
  constexpr std::string_view kPrefix = "String field '";
  const size_t start = complaint.find(kPrefix);
  if (request == nullptr || start == std::string::npos || !absl::StrContains(complaint, "invalid UTF-8")) {
    return std::nullopt;
  }
  const size_t name = start + kPrefix.size(), end = complaint.find('\'', name);
  if (end == std::string::npos) return std::nullopt;
  const std::string field_name = complaint.substr(name, end - name);
  const google::protobuf::FieldDescriptor* field =
      google::protobuf::DescriptorPool::generated_pool()->FindFieldByName(field_name);
  if (field == nullptr || field->containing_type() != request) return std::nullopt;
  return field_name;
}

class UnparsableRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  UnparsableRequestInterceptor(UnparsableRequestInterceptorFactory::Shared& shared,
                               grpc::experimental::ServerRpcInfo* info)
      : shared_(shared), info_(info) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      const std::string complaint = std::exchange(parser_complaint, {});
      if (methods->GetRecvMessage() == nullptr) {
        // A caller without a valid token learns nothing of the parser, as the handlers would have refused it.
        const absl::Status authenticated =
            shared_.auth != nullptr ? shared_.auth->CheckCall(*info_->server_context()) : absl::OkStatus();
        stranger_ = !authenticated.ok();
        refusal_ =
            authenticated.ok() ? UnparsableRequestStatus(info_->method(), complaint) : ToGrpcStatus(authenticated);
      }
    }
    if (refusal_.has_value() && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      methods->ModifySendStatus(*refusal_);
    }
    // Reported once the call is closed, when the context knows whether it was cancelled.
    if (refusal_.has_value() && methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_CLOSE)) {
      Report();
    }
    methods->Proceed();
  }

 private:
  void Report() {
    grpc::ServerContextBase* context = info_->server_context();
    const std::string method = info_->method();
    CallLog log = StartCallLog(method.substr(method.rfind('/') + 1), context);
    log.received = received_;
    // A call cancelled (or expired) before its message came has no message either: no bad input.
    if (context->IsCancelled()) {
      const bool expired = CancelledByDeadline(log, MonotonicNow());
      log.logged = shared_.ended_before_message_lines.Take(MonotonicNow(), log.like_it_not_logged);
      shared_.observer->CallEnded(
          log, grpc::Status(expired ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED,
                            "the call ended before its request message arrived"));
      return;
    }
    // A stranger's lines have a budget of their own, so its flood hides no client's, and carry none of its text.
    if (stranger_) log.request_id.clear();
    log.logged =
        (stranger_ ? shared_.strangers_lines : shared_.unparsable_lines).Take(MonotonicNow(), log.like_it_not_logged);
    shared_.observer->CallEnded(log, *refusal_);
  }

  UnparsableRequestInterceptorFactory::Shared& shared_;
  grpc::experimental::ServerRpcInfo* const info_;
  const absl::Time received_ = MonotonicNow();
  std::optional<grpc::Status> refusal_;
  bool stranger_ = false;  // refused for its token
};

}  // namespace

grpc::Status UnparsableRequestStatus(const std::string& grpc_method, const std::string& parser_complaint) {
  const google::protobuf::Descriptor* request = RequestType(grpc_method);
  const std::string prefix = absl::StrCat("the request does not parse as ",
                                          request != nullptr ? request->full_name() : "the request message", ": ");
  if (std::optional<std::string> field = FieldWithBadUtf8(parser_complaint, request)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat(prefix, "string field ", *field, " is not valid UTF-8"));
  }
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat(prefix,
                                   "its protobuf encoding is malformed (truncated, a length past the end, or groups "
                                   "nested over 100 deep)"));
}

UnparsableRequestInterceptorFactory::UnparsableRequestInterceptorFactory(CallObserver* observer, const BearerAuth* auth)
    : shared_{observer, auth} {
  static std::once_flag routed;
  std::call_once(routed, [] { other_protobuf_logs = google::protobuf::SetLogHandler(&RouteProtobufLog); });
}

grpc::experimental::Interceptor* UnparsableRequestInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  // Streams of requests end with an empty read, which looks like a failed parse; our RPCs take one.
  if (info->type() != grpc::experimental::ServerRpcInfo::Type::UNARY &&
      info->type() != grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING) {
    return nullptr;
  }
  return new UnparsableRequestInterceptor(shared_, info);
}

}  // namespace attribution::server
