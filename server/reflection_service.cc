// SPDX-License-Identifier: Apache-2.0
#include "server/reflection_service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.pb.h"

namespace attribution::server {
namespace {

namespace reflection = ::grpc::reflection::v1alpha;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

// `file` and every file it imports, dependencies first, each once.
void AddWithDependencies(const FileDescriptor* file, std::set<const FileDescriptor*>& added,
                         reflection::FileDescriptorResponse* out) {
  if (!added.insert(file).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) AddWithDependencies(file->dependency(i), added, out);
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
}

void SetError(grpc::StatusCode code, std::string message, reflection::ServerReflectionResponse* out) {
  out->mutable_error_response()->set_error_code(code);
  out->mutable_error_response()->set_error_message(std::move(message));
}

void SetFile(const FileDescriptor* file, const std::string& missing, reflection::ServerReflectionResponse* out) {
  if (file == nullptr) return SetError(grpc::StatusCode::NOT_FOUND, missing, out);
  std::set<const FileDescriptor*> added;
  AddWithDependencies(file, added, out->mutable_file_descriptor_response());
}

// A fresh answer to each request.
reflection::ServerReflectionResponse Answer(const reflection::ServerReflectionRequest& request,
                                            const std::vector<std::string>& services) {
  const DescriptorPool& pool = *DescriptorPool::generated_pool();
  reflection::ServerReflectionResponse out;
  out.set_valid_host(request.host());
  *out.mutable_original_request() = request;
  switch (request.message_request_case()) {
    case reflection::ServerReflectionRequest::kFileByFilename:
      SetFile(pool.FindFileByName(request.file_by_filename()),
              absl::StrCat("file not found: ", request.file_by_filename()), &out);
      break;
    case reflection::ServerReflectionRequest::kFileContainingSymbol:
      SetFile(pool.FindFileContainingSymbol(request.file_containing_symbol()),
              absl::StrCat("symbol not found: ", request.file_containing_symbol()), &out);
      break;
    case reflection::ServerReflectionRequest::kFileContainingExtension: {
      const auto& asked = request.file_containing_extension();
      const auto* type = pool.FindMessageTypeByName(asked.containing_type());
      const auto* extension = type == nullptr ? nullptr : pool.FindExtensionByNumber(type, asked.extension_number());
      SetFile(extension == nullptr ? nullptr : extension->file(),
              absl::StrCat("extension not found: ", asked.containing_type(), " ", asked.extension_number()), &out);
      break;
    }
    case reflection::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const auto* type = pool.FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        SetError(grpc::StatusCode::NOT_FOUND, absl::StrCat("type not found: ", request.all_extension_numbers_of_type()),
                 &out);
        break;
      }
      std::vector<const google::protobuf::FieldDescriptor*> extensions;
      pool.FindAllExtensions(type, &extensions);
      auto* numbers = out.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const auto* extension : extensions) numbers->add_extension_number(extension->number());
      break;
    }
    case reflection::ServerReflectionRequest::kListServices:
      for (const std::string& name : services) out.mutable_list_services_response()->add_service()->set_name(name);
      out.mutable_list_services_response()->add_service()->set_name(reflection::ServerReflection::service_full_name());
      break;
    case reflection::ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      SetError(grpc::StatusCode::INVALID_ARGUMENT, "message_request: set one of its fields", &out);
      break;
  }
  return out;
}

}  // namespace

// Reads a request, writes its answer, reads the next: one message each way at a time.
class ReflectionService::Stream final
    : public grpc::ServerBidiReactor<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse> {
 public:
  explicit Stream(ReflectionService* service) : service_(service) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client is done writing, or gone
    response_ = Answer(request_, service_->services_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
    StartRead(&request_);
  }
  void OnDone() override {
    service_->open_streams_.fetch_sub(1);
    delete this;
  }

 private:
  ReflectionService* const service_;
  reflection::ServerReflectionRequest request_;
  reflection::ServerReflectionResponse response_;
};

ReflectionService::ReflectionService(std::vector<std::string> services) : services_(std::move(services)) {
  // Links health.proto's descriptor into the generated pool, so that grpcurl resolves the health service that
  // gRPC itself serves (without a descriptor of its own: "symbol not found").
  grpc::health::v1::HealthCheckRequest::descriptor();
}

grpc::ServerBidiReactor<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse>*
ReflectionService::ServerReflectionInfo(grpc::CallbackServerContext* /*context*/) {
  if (open_streams_.fetch_add(1) >= kMaxOpenStreams) {
    open_streams_.fetch_sub(1);
    class Refused final
        : public grpc::ServerBidiReactor<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse> {
     public:
      Refused() {
        Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("reflection: ", kMaxOpenStreams, " streams are open; close one")));
      }
      void OnDone() override { delete this; }
    };
    return new Refused();
  }
  return new Stream(this);
}

}  // namespace attribution::server
