// SPDX-License-Identifier: Apache-2.0
// What the server serves and how: models (path, dtype, quantization, device, batching budgets, request
// limits), listening addresses, TLS, auth and admission limits. Read from a JSON file; flags override.
//
//   ASSIGN_OR_RETURN(ServerConfig config, ReadServerConfig("/etc/attribution/server.json"));
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/attribution/attribution_request.h"
#include "engine/model/causal_lm.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::server {

struct ModelSpec {
  std::string name;
  std::string path;  // a Hugging Face model directory (config.json, safetensors, tokenizer)
  std::string dtype = "float32";
  std::string quantization = "none";     // none | int8 | nf4 | fp4 (a pre-quantized checkpoint: none or its own)
  int64_t quantization_block_size = 64;  // nf4 / fp4
  bool double_quantization = false;      // nf4 / fp4: bitsandbytes' double quantization of the absmaxes
  std::string device = "cpu";
  bool allow_nonfinite_weights = false;  // load weights holding NaN / inf instead of refusing them
  // float32 on the CPU: a second copy of the linear weights, laid out for fast products of few rows
  bool pack_weights_for_few_rows = true;
  engine::EngineOptions engine;      // batching budgets
  engine::AttributionLimits limits;  // per-request maxima
};

struct TlsConfig {
  std::string cert_file;       // PEM server certificate chain; empty: plaintext
  std::string key_file;        // PEM private key
  std::string client_ca_file;  // PEM; set: mutual TLS, clients must present a certificate it signed
};

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9464";  // empty: no metrics endpoint
  TlsConfig tls;
  std::string auth_tokens_file;  // one bearer token per line; empty: no auth
  int64_t max_concurrent_requests = 256;
  // HTTP/2 streams (calls) one connection may hold open at once (SETTINGS_MAX_CONCURRENT_STREAMS); a
  // client's further calls wait in its own transport. Without it one connection's streams that never
  // send their message held about 11 KB each, unbounded (100,000 of them: 1 GB) and before any token.
  int64_t max_streams_per_connection = 256;
  // Memory gRPC's transport may hold for all connections (read buffers, calls not yet handled), its
  // resource quota: past it gRPC stops reading from sockets until memory frees. Without it a client
  // that sent header frames faster than gRPC parsed them grew the process by 230 MB a second.
  int64_t max_transport_memory_bytes = int64_t{256} << 20;
  // Bytes (serialized) of unary answers handed to gRPC that their clients have not read yet: they stay
  // in memory until read (or until client_read_timeout cancels them), outside max_concurrent_requests'
  // slots; beyond this new calls are refused. In memory an answer takes a few times its serialized size.
  int64_t max_unread_answer_bytes = int64_t{64} << 20;
  int64_t max_message_bytes = 4 << 20;
  int64_t max_top_k = 20;  // Logprobs alternatives per position
  absl::Duration grace_period = absl::Seconds(30);
  // How long an answer may wait for its client to read it before the call is cancelled (frees the
  // admission slot of a client that stopped reading); zero: forever.
  absl::Duration client_read_timeout = absl::Seconds(120);
  // How long a connection may stay open before the server asks its client to make a new one (HTTP/2
  // GOAWAY; gRPC adds +-10% jitter; calls in flight on it finish): gRPC resolves a name again only when
  // a connection ends, so without it a round-robin client never sent a call to a replica added after it
  // connected (the new pods of a scale-out stayed idle). Zero: never.
  absl::Duration max_connection_age = absl::Minutes(5);
  // Calls' and gRPC's log lines below this severity are not written (debug, info, warning, error): calls' lines are
  // INFO, their overloads and deadlines WARNING, the server's faults ERROR. The server's own events always are.
  std::string log_level = "debug";
  std::vector<ModelSpec> models;
};

// `seconds` of a setting as a duration, when finite and 0 or at least a nanosecond in size: absl::Seconds reads
// NaN as an infinite duration and 1e-300 as 0, which for some settings means "never". `name` names the setting
// (a flag, a key) in the error. Each setting's range is checked by ValidateServerConfig.
absl::StatusOr<absl::Duration> DurationOfSeconds(double seconds, const std::string& name);

// Parses the JSON text of a config file; `source` names it in errors. Unknown keys are errors (a
// typo must not silently fall back to a default).
absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& json_text, const std::string& source);
absl::StatusOr<ServerConfig> ReadServerConfig(const std::string& path);

// Checks a complete config (after flags): at least one model, unique names, values in range.
absl::Status ValidateServerConfig(const ServerConfig& config);

// A unix: or unix-abstract: address (a socket file, no port).
bool IsUnixAddress(const std::string& listen);

// "host:port" split, when the port is a decimal in [0, 65535]: gRPC reads 70000 as 4464 (modulo 65536), and
// the metrics socket binds what the config check accepted.
struct HostPort {
  std::string host;  // may be empty
  int port = 0;
};
std::optional<HostPort> SplitListenAddress(const std::string& address);

// The engine settings whose defaults depend on the model's device, for a model that does not set them:
// max_batch_seconds 25 ms on the CPU, 5 ms on a CUDA device; contended_intra_op_threads one thread
// fewer on the CPU (EngineOptions::kOneThreadFewer), all on a CUDA device.
void ApplyDeviceDefaults(const std::string& device, engine::EngineOptions& engine);

}  // namespace attribution::server
