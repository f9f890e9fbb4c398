// SPDX-License-Identifier: Apache-2.0
#include "client/attribution_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpc/support/time.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "client/answer_checks.h"
#include "client/proto_mapping.h"
#include "engine/common/credential_files.h"
#include "engine/common/files.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attribution::client {
namespace {

namespace v1 = ::attribution::v1;

// gRPC's JSON duration: decimal digits (StrCat would write 1e-05), whole milliseconds being what it keeps.
std::string Seconds(absl::Duration d) { return absl::StrFormat("%.3fs", absl::ToDoubleSeconds(d)); }

// The load-balancing policy, and retries of UNAVAILABLE (only) with exponential backoff for every
// method of both services (gRPC caps attempts at 5).
std::string ServiceConfig(const ClientOptions& o) {
  std::string config = absl::StrCat(R"({"loadBalancingConfig": [{")", o.load_balancing, R"(": {}}])");
  if (o.max_attempts > 1) {
    absl::StrAppend(&config, R"(, "methodConfig": [{"name": [{"service": "attribution.v1.AttributionService"},)",
                    R"({"service": "grpc.health.v1.Health"}], "retryPolicy": {"maxAttempts": )", o.max_attempts,
                    R"(, "initialBackoff": ")", Seconds(o.initial_backoff), R"(", "maxBackoff": ")",
                    Seconds(o.max_backoff), R"(", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}])");
  }
  return config + "}";
}

absl::Status ToAbsl(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// The payload marking a call this client refused before sending (RefusedBeforeSending).
constexpr absl::string_view kNotSent = "type.attribution.dev/refused-before-sending";

absl::Status NotSent(absl::Status status) {
  status.SetPayload(kNotSent, absl::Cord("1"));
  return status;
}

// A call's status; gRPC's bare "Method not found!" (a server without the service, or older than this client)
// named neither the server nor what it lacked.
absl::Status CallStatus(const grpc::Status& status, absl::string_view target, absl::string_view path) {
  if (status.error_code() != grpc::StatusCode::UNIMPLEMENTED) return ToAbsl(status);
  return absl::UnimplementedError(
      absl::StrCat(target, " does not serve ", path,
                   " (no attribution server, or one older than this client): ", status.error_message()));
}

// Set while this thread runs or releases a caller's callback (done, progress, on_token) on one of gRPC's threads.
// The sync calls wait for gRPC's callback threads, a thread per core, which such a callback holds: two callbacks
// that each made a sync call waited for each other forever, past every deadline. And a callback's captures may
// hold the client's last reference (a shared_ptr to it): its destructor, run here, must not end the channel on
// this thread.
thread_local int callbacks_running = 0;

class CallbackScope {
 public:
  CallbackScope() { ++callbacks_running; }
  ~CallbackScope() { --callbacks_running; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;
};

// Runs a caller's last callback and destroys it (its captures with it), marked as one.
template <typename Result>
void RunLastCallback(Callback<Result> callback, absl::StatusOr<Result> result) {
  CallbackScope scope;
  callback(std::move(result));
  callback = nullptr;
}

// gRPC reads a port past 65535 modulo 2^16: "127.0.0.1:112636" reached port 47100.
absl::Status CheckTargetPort(absl::string_view target) {
  if (absl::StartsWith(target, "unix:") || absl::StartsWith(target, "unix-abstract:") ||
      absl::StartsWith(target, "vsock:")) {
    return absl::OkStatus();
  }
  const size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos) return absl::OkStatus();
  const absl::string_view port = target.substr(colon + 1);
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit)) return absl::OkStatus();
  int64_t value = 0;
  if (absl::SimpleAtoi(port, &value) && value >= 1 && value <= 65535) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("target: port ", port, " is outside [1, 65535]"));
}

// Whether `host` is this machine: a loopback address (127.0.0.0/8, ::1, ::ffff:127.x), the unspecified one
// (0.0.0.0, ::, which connect here), or a name hosts files give loopback (localhost, ip6-localhost), in any case,
// with or without the root's dot. A name that merely starts with "127." is not.
bool IsThisMachine(absl::string_view host) {
  std::string name = absl::AsciiStrToLower(host);
  if (absl::EndsWith(name, ".")) name.pop_back();
  if (name == "localhost" || name == "ip6-localhost" || name == "ip6-loopback") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, name.c_str(), &v4) == 1) {
    const uint32_t address = ntohl(v4.s_addr);
    return (address >> 24) == 127 || address == 0;
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, name.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) || IN6_IS_ADDR_UNSPECIFIED(&v6) ||
           (IN6_IS_ADDR_V4MAPPED(&v6) &&
            (v6.s6_addr[12] == 127 || (v6.s6_addr[12] | v6.s6_addr[13] | v6.s6_addr[14] | v6.s6_addr[15]) == 0));
  }
  return false;
}

// Whether every address of `target` is this machine's (a unix socket, or IsThisMachine hosts), with or without a
// dns: / ipv4: / ipv6: scheme.
bool IsLoopbackTarget(absl::string_view target) {
  if (absl::StartsWith(target, "unix:") || absl::StartsWith(target, "unix-abstract:")) return true;
  for (absl::string_view scheme : {"dns:///", "dns:", "ipv4:", "ipv6:"}) {
    if (absl::ConsumePrefix(&target, scheme)) break;
  }
  for (absl::string_view address : absl::StrSplit(target, ',')) {
    // host:port, [v6]:port, or a bare host.
    absl::string_view host = address;
    if (absl::ConsumePrefix(&host, "[")) {
      host = host.substr(0, host.find(']'));
    } else if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
      host = host.substr(0, colon);
    }
    if (!IsThisMachine(host)) return false;
  }
  return true;
}

// Blocks until an async call's callback ran.
template <typename T>
absl::StatusOr<T> Wait(const std::function<void(Callback<T>)>& start) {
  if (callbacks_running > 0) {
    return NotSent(absl::FailedPreconditionError(
        "a synchronous call inside a callback of this client library (done, progress or on_token) would wait for "
        "gRPC's callback threads, which the callback holds: make the Async call there"));
  }
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

// An answer's bytes as `message`. gRPC's callback calls do not report an answer that fails to parse (a
// string field that is not UTF-8): a unary call keeps the message cut short at that field under an OK
// status, a stream's read ends as if the stream had. So the client reads bytes and parses them here.
absl::Status ParseAnswer(grpc::ByteBuffer& answer, const std::string& path, google::protobuf::Message& message) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (answer.Dump(&slices).ok()) {
    for (const grpc::Slice& piece : slices) bytes.append(reinterpret_cast<const char*>(piece.begin()), piece.size());
    if (message.ParseFromString(bytes)) return absl::OkStatus();
  }
  return absl::DataLossError(absl::StrCat("the answer to ", path, " (", bytes.size(), " bytes) does not parse as ",
                                          message.GetTypeName(),
                                          ": a string field that is not UTF-8, or bytes of another message"));
}

// The contexts of the calls in flight, so that CancelCalls reaches each; a call leaves before its context is
// destroyed. Recursive, and each context looked up again before it is cancelled: should gRPC run a completion
// on the cancelling thread (1.51 does not), it leaves, and its context is gone.
class LiveCalls {
 public:
  void Enter(grpc::ClientContext* context) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (cancelled_) context->TryCancel();  // before its start: gRPC cancels it as it starts
    contexts_.insert(context);
    ++unreleased_;
  }
  void Leave(grpc::ClientContext* context) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    contexts_.erase(context);
  }
  // After a call's context is destroyed (with it, its reference to the channel).
  void Released() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    --unreleased_;
    released_.notify_all();
  }
  // Cancels the calls in flight and waits until each released its context: the client then holds the last
  // reference to the channel, which must not go on one of gRPC's threads (the channel's end joins the thread
  // that runs it; a client destroyed with calls in flight crashed the process, grpc/grpc#32584).
  void CancelAllAndWait() {
    CancelAll();
    std::unique_lock<std::recursive_mutex> lock(mu_);
    released_.wait(lock, [&] { return unreleased_ == 0; });
  }
  bool cancelled() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    return cancelled_;
  }
  void CancelAll() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    cancelled_ = true;
    const std::vector<grpc::ClientContext*> live(contexts_.begin(), contexts_.end());
    for (grpc::ClientContext* context : live) {
      if (contexts_.count(context) != 0) context->TryCancel();
    }
  }

 private:
  std::recursive_mutex mu_;
  std::set<grpc::ClientContext*> contexts_;
  int64_t unreleased_ = 0;  // calls entered whose context is not destroyed yet
  std::condition_variable_any released_;
  bool cancelled_ = false;
};

// The registries a call is in while it runs: its client's (CancelCalls; the destructor waits for its release)
// and, when its options name one, a Cancellation's.
struct Registries {
  std::shared_ptr<LiveCalls> client, cancellation;

  void Enter(grpc::ClientContext* context) const {
    client->Enter(context);
    if (cancellation) cancellation->Enter(context);
  }
  void Leave(grpc::ClientContext* context) const {
    if (cancellation) cancellation->Leave(context);
    client->Leave(context);
  }
  void Released() const {
    if (cancellation) cancellation->Released();
    client->Released();  // last: the client's destructor may go on from here
  }
};

// What one call adds to the client's options (see AttributeOptions::timeout).
struct PerCall {
  std::string request_id;
  std::optional<absl::Duration> timeout;
  std::shared_ptr<LiveCalls> cancellation;
};

// One server-streaming call on the callback API: owns its context and request, hands each event to
// `on_event` (which sets the result, or the status of a malformed one, from the last one) and reports
// once at the end; deletes itself.
template <typename Request, typename Event, typename Result>
class StreamCall final : public grpc::ClientReadReactor<grpc::ByteBuffer> {
 public:
  using OnEvent = std::function<void(const Event&, std::optional<absl::StatusOr<Result>>&)>;
  StreamCall(Registries registries, std::unique_ptr<grpc::ClientContext> context, Request request, OnEvent on_event,
             Callback<Result> done)
      : registries_(std::move(registries)),
        context_(std::move(context)),
        request_(std::move(request)),
        on_event_(std::move(on_event)),
        done_(std::move(done)) {}
  // Starts the call of `method` of `service` on `channel` (to `target`); its events arrive as bytes (see
  // ParseAnswer).
  void Run(grpc::ChannelInterface* channel, const std::string& target, const char* service, const char* method) {
    target_ = target;
    path_ = absl::StrCat("/", service, "/", method);
    registries_.Enter(context_.get());
    grpc::internal::ClientCallbackReaderFactory<grpc::ByteBuffer>::Create(
        channel, grpc::internal::RpcMethod(path_.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING), context_.get(),
        &request_, this);
    StartRead(&bytes_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    Event event;
    if (absl::Status parsed = ParseAnswer(bytes_, path_, event); !parsed.ok()) {
      malformed_ = std::move(parsed);
      context_->TryCancel();  // no further read: the stream ends here
      return;
    }
    {
      CallbackScope scope;
      on_event_(event, result_);
    }
    StartRead(&bytes_);
  }
  void OnDone(const grpc::Status& status) override {
    absl::StatusOr<Result> result =
        !malformed_.ok() ? absl::StatusOr<Result>(malformed_)
        : !status.ok()   ? absl::StatusOr<Result>(CallStatus(status, target_, path_))
        : result_        ? std::move(*result_)
                         : absl::StatusOr<Result>(absl::DataLossError("the stream ended without a result"));
    Callback<Result> done = std::move(done_);
    OnEvent on_event = std::move(on_event_);  // released after the call, as done: its captures may hold the client
    const Registries registries = registries_;
    registries.Leave(context_.get());
    delete this;  // the context goes before the caller hears of the result (see Impl::Unary)
    registries.Released();
    CallbackScope scope;
    on_event = nullptr;
    done(std::move(result));
    done = nullptr;
  }

 private:
  Registries registries_;
  std::unique_ptr<grpc::ClientContext> context_;
  Request request_;
  OnEvent on_event_;
  Callback<Result> done_;
  std::string target_, path_;
  grpc::ByteBuffer bytes_;
  absl::Status malformed_;  // an event that did not parse
  std::optional<absl::StatusOr<Result>> result_;
};

// A response becomes a result once it has the shapes results index by (FromProto) and answers the request
// (CheckAnswer).
template <typename Result, typename Response>
absl::StatusOr<Result> Answer(const AskedFor& asked, const Response& response) {
  absl::StatusOr<Result> result = FromProto(response);
  if (!result.ok()) return result;
  if (absl::Status s = CheckAnswer(asked, response); !s.ok()) return s;
  return result;
}

}  // namespace

// The server's reader (engine/common/files.h, no LibTorch): a directory is refused (an ifstream read it as empty),
// a device stops at 256 MiB (--token_file=/dev/zero grew the client 2 GB in 6 s), a FIFO without a writer reads
// empty instead of holding the open.
absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  absl::StatusOr<std::string> text = engine::ReadFile(path);
  if (!text.ok()) return absl::NotFoundError(text.status().message());  // a file that cannot be read, whatever why
  return text;
}

absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  // The server's tokens file's format: its first token is the one sent, so one file serves both ends.
  const std::vector<TokenLine> tokens = TokenLines(*text);
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": holds no token (blank and # lines skipped)"));
  }
  const std::string token(tokens.front().token);
  if (absl::Status printable = CheckMetadataValue(absl::StrCat(path, ": the token"), token, kMaxBearerTokenBytes);
      !printable.ok()) {
    return printable;
  }
  return token;
}

absl::Status CheckLoadBalancing(const std::string& policy) {
  if (policy == "pick_first" || policy == "round_robin") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("load_balancing: \"", policy, "\" is not pick_first or round_robin"));
}

absl::Status CheckAttributeOptions(const AttributeOptions& options) { return ToProto(options).status(); }
absl::Status CheckComponentOptions(const ComponentOptions& options) { return ToProto(options).status(); }
absl::Status CheckLogprobsOptions(const LogprobsOptions& options) { return ToProto(options).status(); }

// Its calls, as a client's. Should gRPC ever run a completion on the cancelling thread, Cancel() (this lock, then
// the client's in Leave) and CancelCalls() (the reverse) would wait for each other; gRPC 1.51 does not (LiveCalls).
struct Cancellation::Calls : LiveCalls {};

Cancellation::Cancellation() : calls_(std::make_shared<Calls>()) {}
Cancellation::~Cancellation() = default;
void Cancellation::Cancel() { calls_->CancelAll(); }
bool Cancellation::cancelled() const { return calls_->cancelled(); }

struct CancellationAccess {
  static std::shared_ptr<LiveCalls> Live(const Cancellation& cancellation) { return cancellation.calls_; }
};

namespace {

// A call's request and what it adds to the client's options, or why it is not sent: options that do not map
// (ToProto), a timeout that is not > 0, a cancellation cancelled already.
template <typename Options>
auto Prepare(const Options& options) {
  using Request = typename decltype(ToProto(options))::value_type;
  using Prepared = absl::StatusOr<std::pair<Request, PerCall>>;
  auto request = ToProto(options);
  if (!request.ok()) return Prepared(NotSent(request.status()));
  if (options.timeout && *options.timeout <= absl::ZeroDuration()) {
    return Prepared(NotSent(absl::InvalidArgumentError(absl::StrCat("timeout: ", absl::FormatDuration(*options.timeout),
                                                                    " is not > 0 (absl::InfiniteDuration(): none)"))));
  }
  if (options.cancellation && options.cancellation->cancelled()) {
    return Prepared(NotSent(absl::CancelledError("cancellation: cancelled before the call was sent")));
  }
  PerCall per_call{options.request_id, options.timeout,
                   options.cancellation ? CancellationAccess::Live(*options.cancellation) : nullptr};
  return Prepared(std::pair(*std::move(request), std::move(per_call)));
}

}  // namespace

struct AttributionClient::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> unary;  // unary calls: their answers' bytes, parsed here (see Unary)
  std::shared_ptr<LiveCalls> live = std::make_shared<LiveCalls>();

  // The call's request_id, when set, goes as x-request-id metadata: the server writes it in the call's log line.
  std::unique_ptr<grpc::ClientContext> NewContext(const PerCall& per_call) const {
    auto context = std::make_unique<grpc::ClientContext>();
    const absl::Duration timeout = per_call.timeout.value_or(options.timeout);
    // On gRPC's monotonic clock: a deadline read from the wall clock as it stepped was in the past (attribution-
    // bench's calls failed DEADLINE_EXCEEDED at once, 52,018 of 52,681, after a step an hour ahead) or an hour late.
    if (timeout != absl::InfiniteDuration()) {
      context->set_deadline(gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_nanos(absl::ToInt64Nanoseconds(timeout), GPR_TIMESPAN)));
    }
    if (!options.bearer_token.empty()) context->AddMetadata("authorization", "Bearer " + options.bearer_token);
    if (!per_call.request_id.empty()) context->AddMetadata("x-request-id", per_call.request_id);
    return context;
  }
  Registries RegistriesOf(const PerCall& per_call) const { return {live, per_call.cancellation}; }

  // One unary call on the callback API: owns its context and messages until the callback ran; the answer
  // comes as bytes (see ParseAnswer). `convert` maps the response to absl::StatusOr<Result>: a malformed
  // response fails the call with its status.
  template <typename Response, typename Result, typename Request, typename Convert>
  void Unary(const PerCall& per_call, const char* service, const char* method, const Request& request, Convert convert,
             Callback<Result> done) const {
    struct Call {
      std::unique_ptr<grpc::ClientContext> context;
      grpc::ByteBuffer request;
      grpc::ByteBuffer response;
    };
    auto call = std::make_shared<Call>();
    call->context = NewContext(per_call);
    const std::string bytes = request.SerializeAsString();
    grpc::Slice slice(bytes);
    call->request = grpc::ByteBuffer(&slice, 1);
    const std::string path = absl::StrCat("/", service, "/", method);
    const Registries registries = RegistriesOf(per_call);
    registries.Enter(call->context.get());
    unary->UnaryCall(call->context.get(), path, grpc::StubOptions(), &call->request, &call->response,
                     [call, convert, path, target = options.target, registries,
                      done = std::move(done)](grpc::Status status) mutable {
                       std::shared_ptr<Call> finished = std::move(call);
                       registries.Leave(finished->context.get());
                       Response response;
                       absl::Status parsed = status.ok() ? ParseAnswer(finished->response, path, response)
                                                         : CallStatus(status, target, path);
                       absl::StatusOr<Result> result = parsed.ok() ? convert(response) : absl::StatusOr<Result>(parsed);
                       // The context goes before the caller hears of the result: a caller that then tears the
                       // client (or the process) down must not race gRPC releasing the call.
                       finished.reset();
                       registries.Released();
                       RunLastCallback(std::move(done), std::move(result));
                     });
  }
};

namespace {

// The TLS files `options` name, read and checked as gRPC will read them; errors name the options by `names`.
absl::StatusOr<grpc::SslCredentialsOptions> ReadTlsFiles(const ClientOptions& options, const TlsOptionNames& names) {
  grpc::SslCredentialsOptions ssl;
  if (!options.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadTextFile(options.ca_file);
    if (!ca.ok()) return ca.status();
    const PemFile roots{names.ca_file, options.ca_file, *std::move(ca)};
    if (absl::Status parsed = CheckCertificates(roots); !parsed.ok()) return parsed;
    ssl.pem_root_certs = roots.text;
  }
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadTextFile(options.cert_file), key = ReadTextFile(options.key_file);
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    const PemFile chain{names.cert_file, options.cert_file, *std::move(cert)};
    const PemFile private_key{names.key_file, options.key_file, *std::move(key)};
    if (absl::Status pair = CheckKeyPair(chain, private_key); !pair.ok()) return pair;
    ssl.pem_cert_chain = chain.text;
    ssl.pem_private_key = private_key.text;
  }
  return ssl;
}

}  // namespace

absl::Status CheckTlsOptions(const ClientOptions& options, const TlsOptionNames& names) {
  for (const auto& [name, value] :
       {std::pair{names.ca_file, &options.ca_file}, std::pair{names.cert_file, &options.cert_file},
        std::pair{names.key_file, &options.key_file}, std::pair{names.tls_server_name, &options.tls_server_name}}) {
    if (!options.tls && !value->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": given without ", names.tls, " (the connection would be plaintext)"));
    }
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.cert_file.empty() ? names.key_file : names.cert_file,
                                                   ": give ", names.cert_file, " and ", names.key_file,
                                                   " together for mutual TLS, or neither"));
  }
  return absl::OkStatus();
}

absl::Status CheckTlsFiles(const ClientOptions& options, const TlsOptionNames& names) {
  if (absl::Status together = CheckTlsOptions(options, names); !together.ok() || !options.tls) return together;
  return ReadTlsFiles(options, names).status();
}

bool RefusedBeforeSending(const absl::Status& status) { return status.GetPayload(kNotSent).has_value(); }

AttributionClient::AttributionClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AttributionClient::~AttributionClient() {
  impl_->live->CancelAllAndWait();
  // Inside one of its callbacks, on a gRPC thread, the channel's end would join that very thread: it ends on a
  // thread of its own.
  if (callbacks_running > 0) std::thread([impl = std::move(impl_)] {}).detach();
}

void AttributionClient::CancelCalls() { impl_->live->CancelAll(); }

absl::StatusOr<std::unique_ptr<AttributionClient>> AttributionClient::Connect(const ClientOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  // gRPC reads "" as "dns:///" and fails with "Failed to create secure client channel", naming nothing.
  if (absl::StripAsciiWhitespace(options.target).empty()) {
    return absl::InvalidArgumentError(
        "target: no server address given (host:port, or a gRPC target such as dns:///NAME:PORT)");
  }
  if (absl::Status tls = CheckTlsOptions(options); !tls.ok()) return tls;
  if (options.tls) {
    absl::StatusOr<grpc::SslCredentialsOptions> ssl = ReadTlsFiles(options, {});
    if (!ssl.ok()) return ssl.status();
    credentials = grpc::SslCredentials(*ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  if (absl::Status token = CheckMetadataValue("bearer_token", options.bearer_token, kMaxBearerTokenBytes);
      !token.ok()) {
    return token;
  }
  if (absl::Status policy = CheckLoadBalancing(options.load_balancing); !policy.ok()) return policy;
  // gRPC keeps whole milliseconds of these and refuses a zero retry backoff, failing every call on the
  // channel ("Failed to create channel"); the channel arguments hold milliseconds in an int (24 days).
  for (const auto& [name, duration] :
       {std::pair{"initial_backoff", options.initial_backoff}, std::pair{"max_backoff", options.max_backoff},
        std::pair{"connect_timeout", options.connect_timeout}}) {
    if (!(duration >= absl::Milliseconds(1) && duration <= absl::Hours(24))) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", absl::FormatDuration(duration), " does not lie between 1 ms and 24 h"));
    }
  }
  if (options.max_attempts > 1 && options.initial_backoff > options.max_backoff) {
    return absl::InvalidArgumentError(absl::StrCat("initial_backoff: ", absl::FormatDuration(options.initial_backoff),
                                                   " is above max_backoff (", absl::FormatDuration(options.max_backoff),
                                                   ")"));
  }
  // A deadline of 0 or less expired every call at once, DEADLINE_EXCEEDED naming nothing.
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout: ", absl::FormatDuration(options.timeout),
                                                   " would expire every call at once (absl::InfiniteDuration(): "
                                                   "no deadline)"));
  }
  // gRPC's retry policy allows at most 5 attempts, and took more (or fewer than 1) as its nearest.
  if (!(options.max_attempts >= 1 && options.max_attempts <= 5)) {
    return absl::InvalidArgumentError(absl::StrCat("max_attempts: ", options.max_attempts, " is outside [1, 5]"));
  }
  if (absl::Status port = CheckTargetPort(options.target); !port.ok()) return port;
  // Servers permit a ping a second (a faster one counts against the client, which the server then disconnects).
  if (!(options.keepalive == absl::ZeroDuration() ||
        (options.keepalive >= absl::Seconds(1) && options.keepalive <= absl::Hours(24)))) {
    return absl::InvalidArgumentError(absl::StrCat("keepalive: ", absl::FormatDuration(options.keepalive),
                                                   " is neither 0 (off) nor between 1 s and 24 h"));
  }
  // gRPC holds both limits in an int (-1: no limit on what is received).
  constexpr int64_t kMostBytes = std::numeric_limits<int>::max();
  if (!(options.max_message_bytes >= 1 && options.max_message_bytes <= kMostBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: ", options.max_message_bytes, " does not lie in [1, ", kMostBytes, "]"));
  }
  if (!(options.max_receive_message_bytes == -1 ||
        (options.max_receive_message_bytes >= 1 && options.max_receive_message_bytes <= kMostBytes))) {
    return absl::InvalidArgumentError(absl::StrCat("max_receive_message_bytes: ", options.max_receive_message_bytes,
                                                   " is neither -1 (any) nor in [1, ", kMostBytes, "]"));
  }
  args.SetServiceConfigJSON(ServiceConfig(options));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.max_attempts > 1 ? 1 : 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // gRPC reads its "min reconnect backoff" as the time a connection attempt is given.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.connect_timeout)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.max_backoff)));
  if (options.keepalive > absl::ZeroDuration()) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(absl::ToInt64Milliseconds(options.keepalive)));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(absl::ToInt64Milliseconds(options.keepalive)));
    // gRPC stops pinging after 2 pings without data by default: a call computing for minutes sends none, so a
    // replica stopped after the second ping went unnoticed again.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  // A retry resends the request, which gRPC keeps for it only up to 256 KiB by default: larger requests (many
  // component pairs) were silently tried once.
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, static_cast<int>(options.max_message_bytes));
  // A connection of its own: gRPC pools connections per process, so every client to one server shared one, and
  // a second client could not send past the first's --max_streams_per_connection (the README's "open more
  // channels").
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // gRPC sends every call through http_proxy / https_proxy / grpc_proxy, this machine's too unless no_proxy names
  // it as written: with a corporate proxy set (Docker copies it into every container), a call to 127.0.0.1 went to
  // the proxy and failed ("HTTP proxy returned response code 403"), and with it the image's HEALTHCHECK.
  if (IsLoopbackTarget(options.target)) args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->channel = grpc::CreateCustomChannel(options.target, credentials, args);
  impl->unary = std::make_unique<grpc::GenericStub>(impl->channel);
  return std::unique_ptr<AttributionClient>(new AttributionClient(std::move(impl)));
}

const std::string& AttributionClient::target() const { return impl_->options.target; }

void AttributionClient::AttributeAsync(const AttributeOptions& options, Callback<Attribution> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  impl_->Unary<v1::AttributeResponse, Attribution>(
      per_call, v1::AttributionService::service_full_name(), "Attribute", request,
      [asked = AskedBy(request)](const v1::AttributeResponse& r) { return Answer<Attribution>(asked, r); },
      std::move(done));
}

absl::StatusOr<Attribution> AttributionClient::Attribute(const AttributeOptions& options) {
  return Wait<Attribution>([&](Callback<Attribution> done) { AttributeAsync(options, std::move(done)); });
}

void AttributionClient::AttributeStreamAsync(const AttributeOptions& options,
                                             std::function<void(int64_t, int64_t)> progress,
                                             Callback<Attribution> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  auto on_event = [progress = std::move(progress), asked = AskedBy(request)](
                      const v1::AttributeEvent& event, std::optional<absl::StatusOr<Attribution>>& result) {
    if (event.has_progress() && progress) progress(event.progress().rows_done(), event.progress().rows_total());
    if (event.has_result()) result = Answer<Attribution>(asked, event.result());
  };
  auto* call = new StreamCall<v1::AttributeRequest, v1::AttributeEvent, Attribution>(
      impl_->RegistriesOf(per_call), impl_->NewContext(per_call), std::move(request), std::move(on_event),
      std::move(done));
  call->Run(impl_->channel.get(), impl_->options.target, v1::AttributionService::service_full_name(),
            "AttributeStream");
}

absl::StatusOr<Attribution> AttributionClient::AttributeStream(const AttributeOptions& options,
                                                               std::function<void(int64_t, int64_t)> progress) {
  return Wait<Attribution>(
      [&](Callback<Attribution> done) { AttributeStreamAsync(options, progress, std::move(done)); });
}

void AttributionClient::AttributeComponentsAsync(const ComponentOptions& options,
                                                 std::function<void(int64_t, int64_t)> progress,
                                                 Callback<ComponentAttribution> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  auto on_event = [progress = std::move(progress)](const v1::AttributeComponentsEvent& event,
                                                   std::optional<absl::StatusOr<ComponentAttribution>>& result) {
    if (event.has_progress() && progress) progress(event.progress().rows_done(), event.progress().rows_total());
    if (event.has_result()) result = FromProto(event.result());
  };
  auto* call = new StreamCall<v1::AttributeComponentsRequest, v1::AttributeComponentsEvent, ComponentAttribution>(
      impl_->RegistriesOf(per_call), impl_->NewContext(per_call), std::move(request), std::move(on_event),
      std::move(done));
  call->Run(impl_->channel.get(), impl_->options.target, v1::AttributionService::service_full_name(),
            "AttributeComponentsStream");
}

absl::StatusOr<ComponentAttribution> AttributionClient::AttributeComponents(
    const ComponentOptions& options, std::function<void(int64_t, int64_t)> progress) {
  return Wait<ComponentAttribution>(
      [&](Callback<ComponentAttribution> done) { AttributeComponentsAsync(options, progress, std::move(done)); });
}

void AttributionClient::GenerateAsync(const GenerateOptions& options, Callback<Generation> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  impl_->Unary<v1::GenerateResponse, Generation>(
      per_call, v1::AttributionService::service_full_name(), "Generate", request,
      [asked = AskedBy(request)](const v1::GenerateResponse& r) { return Answer<Generation>(asked, r); },
      std::move(done));
}

absl::StatusOr<Generation> AttributionClient::Generate(const GenerateOptions& options) {
  return Wait<Generation>([&](Callback<Generation> done) { GenerateAsync(options, std::move(done)); });
}

void AttributionClient::GenerateStreamAsync(const GenerateOptions& options, std::function<void(const Token&)> on_token,
                                            Callback<Generation> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  auto on_event = [on_token = std::move(on_token), asked = AskedBy(request)](
                      const v1::GenerateEvent& event, std::optional<absl::StatusOr<Generation>>& result) {
    if (event.has_token() && on_token) on_token(FromProto(event.token()));
    if (event.has_result()) result = Answer<Generation>(asked, event.result());
  };
  auto* call = new StreamCall<v1::GenerateRequest, v1::GenerateEvent, Generation>(
      impl_->RegistriesOf(per_call), impl_->NewContext(per_call), std::move(request), std::move(on_event),
      std::move(done));
  call->Run(impl_->channel.get(), impl_->options.target, v1::AttributionService::service_full_name(), "GenerateStream");
}

absl::StatusOr<Generation> AttributionClient::GenerateStream(const GenerateOptions& options,
                                                             std::function<void(const Token&)> on_token) {
  return Wait<Generation>([&](Callback<Generation> done) { GenerateStreamAsync(options, on_token, std::move(done)); });
}

void AttributionClient::GetLogprobsAsync(const LogprobsOptions& options, Callback<Logprobs> done) {
  auto prepared = Prepare(options);
  if (!prepared.ok()) return done(prepared.status());
  auto& [request, per_call] = *prepared;
  impl_->Unary<v1::LogprobsResponse, Logprobs>(
      per_call, v1::AttributionService::service_full_name(), "Logprobs", request,
      [asked = AskedBy(request)](const v1::LogprobsResponse& r) { return Answer<Logprobs>(asked, r); },
      std::move(done));
}

absl::StatusOr<Logprobs> AttributionClient::GetLogprobs(const LogprobsOptions& options) {
  return Wait<Logprobs>([&](Callback<Logprobs> done) { GetLogprobsAsync(options, std::move(done)); });
}

void AttributionClient::ListModelsAsync(Callback<std::vector<ModelInfo>> done) {
  impl_->Unary<v1::ListModelsResponse, std::vector<ModelInfo>>(
      PerCall{}, v1::AttributionService::service_full_name(), "ListModels", v1::ListModelsRequest(),
      [](const v1::ListModelsResponse& r) { return FromProto(r); }, std::move(done));
}

absl::StatusOr<std::vector<ModelInfo>> AttributionClient::ListModels() {
  return Wait<std::vector<ModelInfo>>([&](Callback<std::vector<ModelInfo>> done) { ListModelsAsync(std::move(done)); });
}

void AttributionClient::HealthAsync(const std::string& service, Callback<std::string> done) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  impl_->Unary<grpc::health::v1::HealthCheckResponse, std::string>(
      PerCall{}, grpc::health::v1::Health::service_full_name(), "Check", request,
      [](const grpc::health::v1::HealthCheckResponse& r) -> absl::StatusOr<std::string> {
        // A newer server's status reads as its number (it read as "").
        const std::string& name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(r.status());
        return name.empty() ? absl::StrCat(static_cast<int>(r.status())) : name;
      },
      std::move(done));
}

absl::StatusOr<std::string> AttributionClient::Health(const std::string& service) {
  return Wait<std::string>([&](Callback<std::string> done) { HealthAsync(service, std::move(done)); });
}

}  // namespace attribution::client
