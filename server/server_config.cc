// SPDX-License-Identifier: Apache-2.0
#include "server/server_config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/exact_number.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"
#include "engine/model/quantization.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/log_line.h"

namespace attribution::server {
namespace {

using nlohmann::json;

// What a message shows of a value of the wrong type: a number as written, anything else by its type.
std::string Shown(const json& value) { return value.is_number() ? value.dump() : value.type_name(); }

// Each ValueOf overload converts one JSON value or says what was expected: nlohmann's get<> would
// truncate 1.9 to 1, wrap 1e30 and accept any number where a bool is expected.
std::optional<const char*> ValueOf(const json& value, int64_t& out) {
  // 2^63 as a double: the first value int64 cannot hold.
  constexpr double kInt64Limit = 9223372036854775808.0;
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) return "an integer within int64";
    out = static_cast<int64_t>(value.get<uint64_t>());
  } else if (value.is_number_integer()) {
    out = value.get<int64_t>();
  } else if (value.is_number_float() && std::trunc(value.get<double>()) == value.get<double>() &&
             std::abs(value.get<double>()) < kInt64Limit) {
    out = static_cast<int64_t>(value.get<double>());  // 1e6: how Helm's toJson writes 1000000
  } else {
    return "an integer";
  }
  return std::nullopt;
}

std::optional<const char*> ValueOf(const json& value, int& out) {
  int64_t wide = 0;
  if (ValueOf(value, wide) || wide < std::numeric_limits<int>::min() || wide > std::numeric_limits<int>::max()) {
    return "an integer within int32";
  }
  out = static_cast<int>(wide);
  return std::nullopt;
}

std::optional<const char*> ValueOf(const json& value, double& out) {
  if (!value.is_number()) return "a number";
  out = value.get<double>();
  return std::nullopt;
}

std::optional<const char*> ValueOf(const json& value, bool& out) {
  if (!value.is_boolean()) return "true or false";
  out = value.get<bool>();
  return std::nullopt;
}

std::optional<const char*> ValueOf(const json& value, std::string& out) {
  if (!value.is_string()) return "a string";
  out = value.get<std::string>();
  return std::nullopt;
}

// A section (tls, engine, limits) must be an object: iterating a string or an array as one would
// report its characters or indices as unknown keys.
struct Section {
  json value = json::object();
};

std::optional<const char*> ValueOf(const json& value, Section& out) {
  if (!value.is_object()) return "an object";
  out.value = value;
  return std::nullopt;
}

struct List {
  json value = json::array();
};

std::optional<const char*> ValueOf(const json& value, List& out) {
  if (!value.is_array()) return "an array";
  out.value = value;
  return std::nullopt;
}

}  // namespace

bool IsUnixAddress(const std::string& listen) {
  return absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:");
}

absl::StatusOr<absl::Duration> DurationOfSeconds(double seconds, const std::string& name) {
  if (std::isfinite(seconds) && (seconds == 0 || std::fabs(seconds) >= 1e-9)) return absl::Seconds(seconds);
  return absl::InvalidArgumentError(
      absl::StrCat(name, " = ", seconds, ": give a finite number of seconds, 0 or at least a nanosecond in size"));
}

namespace {

// Reads the keys of one JSON object, remembering which were used so that leftovers (typos) fail.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  template <typename T>
  absl::Status Read(const char* key, T& out) {
    used_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end()) return absl::OkStatus();
    if (std::optional<const char*> expected = ValueOf(*it, out)) {
      return absl::InvalidArgumentError(absl::StrCat(where_, ".", key, " must be ", *expected, ", got ", Shown(*it)));
    }
    return absl::OkStatus();
  }

  absl::Status ReadSeconds(const char* key, absl::Duration& out) {
    double seconds = absl::ToDoubleSeconds(out);
    RETURN_IF_ERROR(Read(key, seconds));
    ASSIGN_OR_RETURN(out, DurationOfSeconds(seconds, absl::StrCat(where_, ".", key)));
    return absl::OkStatus();
  }

  absl::Status Finish() const {
    for (const auto& [key, value] : object_.items()) {
      if (!used_.count(key))
        return absl::InvalidArgumentError(absl::StrCat(where_, " has an unknown key \"", key, "\""));
    }
    return absl::OkStatus();
  }

  const std::string& where() const { return where_; }

 private:
  const json& object_;
  std::string where_;
  std::set<std::string> used_;
};

absl::Status ReadEngineOptions(const json& object, const std::string& where, engine::EngineOptions& out) {
  ObjectReader reader(object, where);
  RETURN_IF_ERROR(reader.Read("max_batch_tokens", out.max_batch_tokens));
  RETURN_IF_ERROR(reader.Read("max_batch_rows", out.max_batch_rows));
  RETURN_IF_ERROR(reader.Read("max_padding_waste", out.max_padding_waste));
  RETURN_IF_ERROR(reader.Read("max_queued_rows", out.max_queued_rows));
  RETURN_IF_ERROR(reader.Read("max_queued_tokens", out.max_queued_tokens));
  RETURN_IF_ERROR(reader.Read("max_queued_bytes", out.max_queued_bytes));
  RETURN_IF_ERROR(reader.Read("max_kv_cache_bytes", out.max_kv_cache_bytes));
  RETURN_IF_ERROR(reader.ReadSeconds("max_queue_delay_seconds", out.max_queue_delay));
  RETURN_IF_ERROR(reader.ReadSeconds("max_batch_seconds", out.max_batch_time));
  RETURN_IF_ERROR(reader.ReadSeconds("max_uncontended_batch_seconds", out.max_uncontended_batch_time));
  RETURN_IF_ERROR(reader.Read("contended_intra_op_threads", out.contended_intra_op_threads));
  RETURN_IF_ERROR(reader.Read("pause_long_batches", out.pause_long_batches));
  RETURN_IF_ERROR(reader.ReadSeconds("stall_seconds", out.stall_time));
  return reader.Finish();
}

absl::Status ReadLimits(const json& object, const std::string& where, engine::AttributionLimits& out) {
  ObjectReader reader(object, where);
  RETURN_IF_ERROR(reader.Read("max_steps", out.max_steps));
  RETURN_IF_ERROR(reader.Read("max_samples", out.max_samples));
  RETURN_IF_ERROR(reader.Read("max_features", out.max_features));
  RETURN_IF_ERROR(reader.Read("max_exact_shapley_features", out.max_exact_shapley_features));
  RETURN_IF_ERROR(reader.Read("max_tokens", out.max_tokens));
  RETURN_IF_ERROR(reader.Read("max_new_tokens", out.max_new_tokens));
  RETURN_IF_ERROR(reader.Read("max_choices", out.max_choices));
  return reader.Finish();
}

absl::Status ReadModel(const json& object, const std::string& where, ModelSpec& out) {
  if (!object.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  ObjectReader reader(object, where);
  RETURN_IF_ERROR(reader.Read("name", out.name));
  RETURN_IF_ERROR(reader.Read("path", out.path));
  RETURN_IF_ERROR(reader.Read("dtype", out.dtype));
  RETURN_IF_ERROR(reader.Read("quantization", out.quantization));
  RETURN_IF_ERROR(reader.Read("quantization_block_size", out.quantization_block_size));
  RETURN_IF_ERROR(reader.Read("double_quantization", out.double_quantization));
  RETURN_IF_ERROR(reader.Read("device", out.device));
  RETURN_IF_ERROR(reader.Read("allow_nonfinite_weights", out.allow_nonfinite_weights));
  RETURN_IF_ERROR(reader.Read("pack_weights_for_few_rows", out.pack_weights_for_few_rows));
  Section engine, limits;
  RETURN_IF_ERROR(reader.Read("engine", engine));
  RETURN_IF_ERROR(reader.Read("limits", limits));
  RETURN_IF_ERROR(reader.Finish());
  ApplyDeviceDefaults(out.device, out.engine);
  RETURN_IF_ERROR(ReadEngineOptions(engine.value, where + ".engine", out.engine));
  return ReadLimits(limits.value, where + ".limits", out.limits);
}

// A parser callback that records the first key repeated within one object (nested objects have their own keys).
json::parser_callback_t DuplicateKeyFinder(std::optional<std::string>& duplicate) {
  auto keys = std::make_shared<std::vector<std::set<std::string>>>();
  return [keys, &duplicate](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys->emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys->pop_back();
    } else if (event == json::parse_event_t::key && !keys->back().insert(parsed.get<std::string>()).second &&
               !duplicate) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
}

absl::Status Positive(int64_t value, const std::string& name) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " = ", value, " must be positive"));
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& json_text, const std::string& source) {
  std::optional<std::string> duplicate;
  ASSIGN_OR_RETURN(json root, engine::ParseBoundedJson(json_text, source, DuplicateKeyFinder(duplicate)));
  // nlohmann keeps the last of repeated keys; one of the two settings would be silently lost.
  if (duplicate) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the key \"", *duplicate, "\" appears twice in one object"));
  }
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": the top level must be an object"));
  ServerConfig config;
  ObjectReader reader(root, source);
  RETURN_IF_ERROR(reader.Read("listen", config.listen));
  RETURN_IF_ERROR(reader.Read("metrics_listen", config.metrics_listen));
  RETURN_IF_ERROR(reader.Read("auth_tokens_file", config.auth_tokens_file));
  RETURN_IF_ERROR(reader.Read("max_concurrent_requests", config.max_concurrent_requests));
  RETURN_IF_ERROR(reader.Read("max_streams_per_connection", config.max_streams_per_connection));
  RETURN_IF_ERROR(reader.Read("max_transport_memory_bytes", config.max_transport_memory_bytes));
  RETURN_IF_ERROR(reader.Read("max_unread_answer_bytes", config.max_unread_answer_bytes));
  RETURN_IF_ERROR(reader.Read("max_message_bytes", config.max_message_bytes));
  RETURN_IF_ERROR(reader.Read("max_top_k", config.max_top_k));
  RETURN_IF_ERROR(reader.ReadSeconds("grace_period_seconds", config.grace_period));
  RETURN_IF_ERROR(reader.ReadSeconds("client_read_timeout_seconds", config.client_read_timeout));
  RETURN_IF_ERROR(reader.ReadSeconds("max_connection_age_seconds", config.max_connection_age));
  RETURN_IF_ERROR(reader.Read("log_level", config.log_level));
  Section tls;
  List models;
  RETURN_IF_ERROR(reader.Read("tls", tls));
  RETURN_IF_ERROR(reader.Read("models", models));
  RETURN_IF_ERROR(reader.Finish());
  ObjectReader tls_reader(tls.value, source + ".tls");
  RETURN_IF_ERROR(tls_reader.Read("cert_file", config.tls.cert_file));
  RETURN_IF_ERROR(tls_reader.Read("key_file", config.tls.key_file));
  RETURN_IF_ERROR(tls_reader.Read("client_ca_file", config.tls.client_ca_file));
  RETURN_IF_ERROR(tls_reader.Finish());
  for (size_t i = 0; i < models.value.size(); ++i) {
    ModelSpec spec;
    RETURN_IF_ERROR(ReadModel(models.value[i], absl::StrCat(source, ".models[", i, "]"), spec));
    config.models.push_back(std::move(spec));
  }
  return config;
}

absl::StatusOr<ServerConfig> ReadServerConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, engine::ReadFile(path));
  return ParseServerConfig(text, path);
}

void ApplyDeviceDefaults(const std::string& device, engine::EngineOptions& engine) {
  const bool cuda = device.rfind("cuda", 0) == 0;
  // CPU: measured on the default model (bench/RESULTS.md, latency isolation); a GPU runs a batch of
  // the same rows 10-100x faster, so interactive calls there get a correspondingly shorter bound.
  engine.max_batch_time = cuda ? absl::Milliseconds(5) : absl::Milliseconds(25);
  // On a CPU the batches share the cores with the threads serving calls (EngineOptions); a CUDA
  // device's batches need few host threads.
  engine.contended_intra_op_threads = cuda ? 0 : engine::EngineOptions::kOneThreadFewer;
}

std::optional<HostPort> SplitListenAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  const std::string port = address.substr(colon + 1);
  int value = -1;
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
      !absl::SimpleAtoi(port, &value) || value > 65535) {
    return std::nullopt;
  }
  return HostPort{.host = address.substr(0, colon), .port = value};
}

namespace {

// At most `high`: a bound a value cannot reasonably exceed, so arithmetic on it cannot overflow.
absl::Status Within(int64_t value, int64_t low, int64_t high, const std::string& name) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " = ", value, " is outside [", low, ", ", high, "]"));
}

// Unix sockets have no port.
absl::Status CheckListenAddress(const std::string& listen) {
  if (IsUnixAddress(listen)) {
    // `unix:$SOCK` with SOCK unset: gRPC bound an abstract socket named by 108 NUL bytes, which no client reaches.
    const std::string path = listen.substr(listen.find(':') + 1);
    if (path.empty() || path == "//") {
      return absl::InvalidArgumentError(absl::StrCat("listen \"", listen, "\": the socket's path is empty"));
    }
    return absl::OkStatus();
  }
  if (SplitListenAddress(listen)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("listen \"", listen, "\": expected host:port with a port in [0, 65535], or unix:PATH"));
}

// The metrics endpoint is a plain TCP socket; empty turns it off.
absl::Status CheckMetricsAddress(const std::string& metrics_listen) {
  if (metrics_listen.empty() || SplitListenAddress(metrics_listen)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("metrics_listen \"", metrics_listen, "\": expected host:port with a port in [0, 65535], or empty"));
}

bool IsWildcardHost(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::" || host == "*";
}

// The addresses `host` names ("localhost": 127.0.0.1 and ::1), as text; itself when it does not resolve.
std::set<std::string> AddressesOf(std::string host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::set<std::string> addresses;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  // Names other than localhost are not looked up: --check_config runs where the names may mean other machines,
  // and a lookup may wait seconds on DNS.
  if (host != "localhost") hints.ai_flags = AI_NUMERICHOST;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return {host};
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* address = a->ai_family == AF_INET6
                              ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr)
                              : static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr);
    if (inet_ntop(a->ai_family, address, text, sizeof(text)) != nullptr) addresses.insert(text);
  }
  freeaddrinfo(found);
  return addresses;
}

// "localhost" and "127.0.0.1" are one address: compared as text they passed the check, and the bind failed.
bool SameAddress(const std::string& a, const std::string& b) {
  if (a == b) return true;
  const std::set<std::string> of_a = AddressesOf(a), of_b = AddressesOf(b);
  return std::any_of(of_a.begin(), of_a.end(), [&](const std::string& address) { return of_b.count(address) > 0; });
}

// The metrics socket binds first, so gRPC then failed to bind, after the config check had passed, with
// only "cannot listen on ADDR". Two addresses clash on one port when either is a wildcard or both are the
// same host; port 0 (any free port) never clashes.
absl::Status CheckPortsDiffer(const std::string& listen, const std::string& metrics_listen) {
  if (IsUnixAddress(listen)) return absl::OkStatus();  // a socket file, no port
  const std::optional<HostPort> grpc = SplitListenAddress(listen);
  const std::optional<HostPort> metrics = SplitListenAddress(metrics_listen);
  if (!grpc || !metrics || metrics_listen.empty() || grpc->port == 0 || grpc->port != metrics->port) {
    return absl::OkStatus();
  }
  if (!IsWildcardHost(grpc->host) && !IsWildcardHost(metrics->host) && !SameAddress(grpc->host, metrics->host)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("listen \"", listen, "\" and metrics_listen \"", metrics_listen,
                                                 "\" use the same port ", grpc->port,
                                                 ": give the metrics endpoint another port"));
}

absl::Status ValidateEngineOptions(const engine::EngineOptions& engine, const std::string& where) {
  // The engine refuses a budget below the floor out-of-memory retries shrink it to; checked here, it is
  // refused by --check_config and before the weights load rather than after.
  if (engine.max_batch_tokens < engine.min_batch_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".max_batch_tokens = ", engine.max_batch_tokens,
                                                   " must be at least ", engine.min_batch_tokens,
                                                   " (the smallest budget out-of-memory retries shrink to)"));
  }
  RETURN_IF_ERROR(Positive(engine.max_batch_rows, where + ".max_batch_rows"));
  RETURN_IF_ERROR(Positive(engine.max_queued_rows, where + ".max_queued_rows"));
  RETURN_IF_ERROR(Positive(engine.max_queued_tokens, where + ".max_queued_tokens"));
  RETURN_IF_ERROR(Positive(engine.max_queued_bytes, where + ".max_queued_bytes"));
  RETURN_IF_ERROR(Positive(engine.max_kv_cache_bytes, where + ".max_kv_cache_bytes"));
  if (!(engine.max_padding_waste >= 0 && engine.max_padding_waste <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".max_padding_waste = ", ExactNumber(engine.max_padding_waste), " is outside [0, 1]"));
  }
  // A batch waits at most this long for more rows; every call waits it too, so it is a latency, not a timeout.
  if (!(engine.max_queue_delay >= absl::ZeroDuration() && engine.max_queue_delay <= absl::Seconds(1))) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".max_queue_delay_seconds = ", ExactNumber(absl::ToDoubleSeconds(engine.max_queue_delay)),
                     " is outside [0, 1]"));
  }
  if (!(engine.max_batch_time > absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".max_batch_seconds must be positive"));
  }
  if (!(engine.max_uncontended_batch_time > absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".max_uncontended_batch_seconds must be positive"));
  }
  // Reported stalled after this long without progress, which takes the whole server out of service: below the
  // 0.25 s a batch alone may take by default (max_uncontended_batch_seconds), ordinary batches read as stalls
  // (0.02 s: NOT_SERVING two thirds of the time under two IG calls).
  if (!(engine.stall_time >= absl::Milliseconds(250))) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".stall_seconds = ", absl::ToDoubleSeconds(engine.stall_time), " must be at least 0.25"));
  }
  if (engine.contended_intra_op_threads < engine::EngineOptions::kOneThreadFewer) {
    return absl::InvalidArgumentError(absl::StrCat(where,
                                                   ".contended_intra_op_threads = ", engine.contended_intra_op_threads,
                                                   " must be -1 (one fewer), 0 (all) or a thread count"));
  }
  return absl::OkStatus();
}

// A name travels in every ListModels answer (a proto string: UTF-8, or the whole answer fails to parse in
// every client) and in /metrics labels, and clients compare it byte for byte: a name with bytes that are not
// UTF-8, control characters or spaces at its ends broke ListModels for every model, or could not be asked for.
absl::Status CheckModelName(const std::string& name, const std::string& where) {
  if (absl::Status utf8 = engine::CheckUtf8(name); !utf8.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".name is not UTF-8: ", utf8.message()));
  }
  const bool control = std::any_of(name.begin(), name.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
  });
  if (control) return absl::InvalidArgumentError(absl::StrCat(where, ".name holds a control character"));
  if (std::isspace(static_cast<unsigned char>(name.front())) || std::isspace(static_cast<unsigned char>(name.back()))) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".name \"", name, "\" begins or ends with a space"));
  }
  return absl::OkStatus();
}

// Limits far above what one request can use are refused: request checks multiply them (tokens by bytes,
// samples by features) and must not overflow.
absl::Status ValidateLimits(const engine::AttributionLimits& limits, const std::string& where) {
  constexpr int64_t kMillion = 1 << 20;
  RETURN_IF_ERROR(Within(limits.max_tokens, 1, 16 * kMillion, where + ".max_tokens"));
  RETURN_IF_ERROR(Within(limits.max_steps, 1, kMillion, where + ".max_steps"));
  RETURN_IF_ERROR(Within(limits.max_samples, 1, kMillion, where + ".max_samples"));
  RETURN_IF_ERROR(Within(limits.max_features, 1, kMillion, where + ".max_features"));
  RETURN_IF_ERROR(Within(limits.max_new_tokens, 1, kMillion, where + ".max_new_tokens"));
  RETURN_IF_ERROR(Within(limits.max_choices, 1, kMillion, where + ".max_choices"));
  // 2^n coalitions: beyond 16 features exact Shapley values exceed any request's row limit.
  return Within(limits.max_exact_shapley_features, 1, 16, where + ".max_exact_shapley_features");
}

}  // namespace

absl::Status ValidateServerConfig(const ServerConfig& config) {
  if (config.models.empty())
    return absl::InvalidArgumentError("no models: give --model NAME=PATH or a config file with models");
  std::set<std::string> names;
  for (size_t i = 0; i < config.models.size(); ++i) {
    const ModelSpec& m = config.models[i];
    const std::string where = absl::StrCat("models[", i, "]");
    if (m.name.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ".name must not be empty"));
    RETURN_IF_ERROR(CheckModelName(m.name, where));
    if (m.path.empty())
      return absl::InvalidArgumentError(absl::StrCat(where, " (", m.name, "): path must not be empty"));
    if (!names.insert(m.name).second)
      return absl::InvalidArgumentError(absl::StrCat("model name \"", m.name, "\" appears twice"));
    if (absl::Status s = engine::ParseDtype(m.dtype).status(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".dtype: ", s.message()));
    }
    if (absl::Status s = engine::CheckDeviceName(m.device); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".", s.message()));  // models[i].device "x" ...
    }
    absl::StatusOr<engine::Quantization> quantization = engine::ParseQuantization(m.quantization);
    if (!quantization.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".quantization: ", quantization.status().message()));
    }
    if (absl::Status s = engine::ValidateFourBitOptions({.block_size = m.quantization_block_size}); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".quantization_block_size: ", s.message()));
    }
    // They were ignored with any other quantization (a pre-quantized checkpoint's own are its files').
    if (!engine::IsFourBit(*quantization) &&
        (m.double_quantization || m.quantization_block_size != engine::FourBitOptions{}.block_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", m.double_quantization ? "double_quantization" : "quantization_block_size",
                       ": applies to nf4 / fp4 quantization only, not \"", m.quantization, "\""));
    }
    RETURN_IF_ERROR(ValidateEngineOptions(m.engine, where + ".engine"));
    RETURN_IF_ERROR(ValidateLimits(m.limits, where + ".limits"));
  }
  RETURN_IF_ERROR(Positive(config.max_concurrent_requests, "max_concurrent_requests"));
  RETURN_IF_ERROR(Positive(config.max_unread_answer_bytes, "max_unread_answer_bytes"));
  // gRPC takes it as an int; HTTP/2 allows 2^31 - 1 streams at most.
  RETURN_IF_ERROR(
      Within(config.max_streams_per_connection, 1, std::numeric_limits<int>::max(), "max_streams_per_connection"));
  // Below a few MB gRPC could not hold one connection's buffers and would stall every call.
  RETURN_IF_ERROR(Within(config.max_transport_memory_bytes, int64_t{16} << 20, std::numeric_limits<int64_t>::max(),
                         "max_transport_memory_bytes"));
  RETURN_IF_ERROR(CheckListenAddress(config.listen));
  RETURN_IF_ERROR(CheckMetricsAddress(config.metrics_listen));
  RETURN_IF_ERROR(CheckPortsDiffer(config.listen, config.metrics_listen));
  // gRPC takes the message limit as an int.
  RETURN_IF_ERROR(Within(config.max_message_bytes, 1, std::numeric_limits<int>::max(), "max_message_bytes"));
  if (config.max_top_k < 0 || config.max_top_k > 20) {
    return absl::InvalidArgumentError(absl::StrCat("max_top_k = ", config.max_top_k, " is outside [0, 20]"));
  }
  if (config.tls.cert_file.empty() != config.tls.key_file.empty()) {
    return absl::InvalidArgumentError("tls: cert_file and key_file go together");
  }
  if (!config.tls.client_ca_file.empty() && config.tls.cert_file.empty()) {
    return absl::InvalidArgumentError("tls: client_ca_file (mutual TLS) needs cert_file and key_file");
  }
  // NaN seconds read as an infinite duration: a drain that never ends (the pod killed at its own grace period).
  if (!(config.grace_period >= absl::ZeroDuration() && config.grace_period <= absl::Hours(24))) {
    return absl::InvalidArgumentError(absl::StrCat("grace_period_seconds must lie between 0 and 86400, not ",
                                                   absl::ToDoubleSeconds(config.grace_period)));
  }
  // The watchdog wakes once per timeout: a tiny one would spin a thread.
  if (config.client_read_timeout < absl::ZeroDuration() ||
      (config.client_read_timeout > absl::ZeroDuration() && config.client_read_timeout < absl::Seconds(0.1))) {
    return absl::InvalidArgumentError(
        "client_read_timeout_seconds must be 0 (no timeout) or at least 0.1, and not negative");
  }
  // gRPC takes milliseconds in an int; under a second every client would reconnect all the time.
  if (config.max_connection_age != absl::ZeroDuration() &&
      !(config.max_connection_age >= absl::Seconds(1) && config.max_connection_age <= absl::Hours(24 * 24))) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_connection_age_seconds must be 0 (never) or between 1 and 2073600, not ",
                     absl::ToDoubleSeconds(config.max_connection_age)));
  }
  RETURN_IF_ERROR(CheckLogSeverity(config.log_level, "log_level"));
  return absl::OkStatus();
}

}  // namespace attribution::server
