// SPDX-License-Identifier: Apache-2.0
#include "server/server_config.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"
#include "engine/model/quantization.h"

namespace attribution::server {
namespace {

using nlohmann::json;

// Reads the keys of one JSON object, remembering which were used so that leftovers (typos) fail.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  template <typename T>
  absl::Status Read(const char* key, T& out) {
    used_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end()) return absl::OkStatus();
    try {
      out = it->template get<T>();
    } catch (const json::exception&) {
      return absl::InvalidArgumentError(absl::StrCat(where_, ".", key, " has the wrong type (", it->type_name(), ")"));
    }
    return absl::OkStatus();
  }

  absl::Status ReadSeconds(const char* key, absl::Duration& out) {
    double seconds = absl::ToDoubleSeconds(out);
    RETURN_IF_ERROR(Read(key, seconds));
    out = absl::Seconds(seconds);
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
  RETURN_IF_ERROR(reader.ReadSeconds("max_queue_delay_seconds", out.max_queue_delay));
  RETURN_IF_ERROR(reader.ReadSeconds("max_batch_seconds", out.max_batch_time));
  RETURN_IF_ERROR(reader.ReadSeconds("max_uncontended_batch_seconds", out.max_uncontended_batch_time));
  RETURN_IF_ERROR(reader.Read("contended_intra_op_threads", out.contended_intra_op_threads));
  RETURN_IF_ERROR(reader.Read("pause_long_batches", out.pause_long_batches));
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
  json engine = json::object(), limits = json::object();
  RETURN_IF_ERROR(reader.Read("engine", engine));
  RETURN_IF_ERROR(reader.Read("limits", limits));
  RETURN_IF_ERROR(reader.Finish());
  ApplyDeviceDefaults(out.device, out.engine);
  RETURN_IF_ERROR(ReadEngineOptions(engine, where + ".engine", out.engine));
  return ReadLimits(limits, where + ".limits", out.limits);
}

absl::Status Positive(int64_t value, const std::string& name) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " = ", value, " must be positive"));
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": the top level must be an object"));
  ServerConfig config;
  ObjectReader reader(root, source);
  RETURN_IF_ERROR(reader.Read("listen", config.listen));
  RETURN_IF_ERROR(reader.Read("metrics_listen", config.metrics_listen));
  RETURN_IF_ERROR(reader.Read("auth_tokens_file", config.auth_tokens_file));
  RETURN_IF_ERROR(reader.Read("max_concurrent_requests", config.max_concurrent_requests));
  RETURN_IF_ERROR(reader.Read("max_message_bytes", config.max_message_bytes));
  RETURN_IF_ERROR(reader.Read("max_top_k", config.max_top_k));
  RETURN_IF_ERROR(reader.ReadSeconds("grace_period_seconds", config.grace_period));
  RETURN_IF_ERROR(reader.ReadSeconds("client_read_timeout_seconds", config.client_read_timeout));
  json tls = json::object(), models = json::array();
  RETURN_IF_ERROR(reader.Read("tls", tls));
  RETURN_IF_ERROR(reader.Read("models", models));
  RETURN_IF_ERROR(reader.Finish());
  ObjectReader tls_reader(tls, source + ".tls");
  RETURN_IF_ERROR(tls_reader.Read("cert_file", config.tls.cert_file));
  RETURN_IF_ERROR(tls_reader.Read("key_file", config.tls.key_file));
  RETURN_IF_ERROR(tls_reader.Read("client_ca_file", config.tls.client_ca_file));
  RETURN_IF_ERROR(tls_reader.Finish());
  if (!models.is_array()) return absl::InvalidArgumentError(absl::StrCat(source, ".models must be an array"));
  for (size_t i = 0; i < models.size(); ++i) {
    ModelSpec spec;
    RETURN_IF_ERROR(ReadModel(models[i], absl::StrCat(source, ".models[", i, "]"), spec));
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

namespace {

// At most `high`: a bound a value cannot reasonably exceed, so arithmetic on it cannot overflow.
absl::Status Within(int64_t value, int64_t low, int64_t high, const std::string& name) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " = ", value, " is outside [", low, ", ", high, "]"));
}

// gRPC reads host:port's port modulo 65536 (70000 would listen on 4464); Unix sockets have no port.
absl::Status CheckListenAddress(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return absl::OkStatus();
  const size_t colon = listen.rfind(':');
  const std::string port = colon == std::string::npos ? "" : listen.substr(colon + 1);
  int64_t value = -1;
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
      !absl::SimpleAtoi(port, &value) || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen \"", listen, "\": expected host:port with a port in [0, 65535], or unix:PATH"));
  }
  return absl::OkStatus();
}

absl::Status ValidateEngineOptions(const engine::EngineOptions& engine, const std::string& where) {
  RETURN_IF_ERROR(Positive(engine.max_batch_tokens, where + ".max_batch_tokens"));
  RETURN_IF_ERROR(Positive(engine.max_batch_rows, where + ".max_batch_rows"));
  RETURN_IF_ERROR(Positive(engine.max_queued_rows, where + ".max_queued_rows"));
  RETURN_IF_ERROR(Positive(engine.max_queued_tokens, where + ".max_queued_tokens"));
  RETURN_IF_ERROR(Positive(engine.max_queued_bytes, where + ".max_queued_bytes"));
  if (!(engine.max_padding_waste >= 0 && engine.max_padding_waste <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".max_padding_waste = ", engine.max_padding_waste, " is outside [0, 1]"));
  }
  // A batch waits at most this long for more rows; every call waits it too, so it is a latency, not a timeout.
  if (!(engine.max_queue_delay >= absl::ZeroDuration() && engine.max_queue_delay <= absl::Seconds(1))) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ".max_queue_delay_seconds = ", absl::ToDoubleSeconds(engine.max_queue_delay), " is outside [0, 1]"));
  }
  if (!(engine.max_batch_time > absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".max_batch_seconds must be positive"));
  }
  if (!(engine.max_uncontended_batch_time > absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".max_uncontended_batch_seconds must be positive"));
  }
  if (engine.contended_intra_op_threads < engine::EngineOptions::kOneThreadFewer) {
    return absl::InvalidArgumentError(absl::StrCat(where,
                                                   ".contended_intra_op_threads = ", engine.contended_intra_op_threads,
                                                   " must be -1 (one fewer), 0 (all) or a thread count"));
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
    if (m.path.empty())
      return absl::InvalidArgumentError(absl::StrCat(where, " (", m.name, "): path must not be empty"));
    if (!names.insert(m.name).second)
      return absl::InvalidArgumentError(absl::StrCat("model name \"", m.name, "\" appears twice"));
    if (absl::Status s = engine::ParseQuantization(m.quantization).status(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".quantization: ", s.message()));
    }
    if (absl::Status s = engine::ValidateFourBitOptions({.block_size = m.quantization_block_size}); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".quantization_block_size: ", s.message()));
    }
    RETURN_IF_ERROR(ValidateEngineOptions(m.engine, where + ".engine"));
    RETURN_IF_ERROR(ValidateLimits(m.limits, where + ".limits"));
  }
  RETURN_IF_ERROR(Positive(config.max_concurrent_requests, "max_concurrent_requests"));
  RETURN_IF_ERROR(CheckListenAddress(config.listen));
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
  if (config.grace_period < absl::ZeroDuration())
    return absl::InvalidArgumentError("grace_period_seconds must not be negative");
  if (config.client_read_timeout < absl::ZeroDuration())
    return absl::InvalidArgumentError("client_read_timeout_seconds must not be negative (0: no timeout)");
  return absl::OkStatus();
}

}  // namespace attribution::server
