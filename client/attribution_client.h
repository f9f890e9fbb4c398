// SPDX-License-Identifier: Apache-2.0
// C++ client of the attribution server: typed requests and results (callers need no protobuf), sync
// and async forms of every RPC, per-call deadlines, TLS / mutual TLS, a bearer token, and retries with
// exponential backoff on UNAVAILABLE only (gRPC's retry policy, so streams and async calls get them too).
//
//   ClientOptions options{.target = "localhost:50051"};
//   ASSIGN_OR_RETURN(auto client, AttributionClient::Connect(options));
//   ASSIGN_OR_RETURN(Attribution a, client->Attribute({.model = "demo", .prompt = "Is it true?", .target = " No"}));
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace attribution::client {

struct ClientOptions {
  // Any gRPC target: host:port, dns:///name:port (every address the name resolves to, e.g. a
  // Kubernetes headless service's ready pods), ipv4:addr:port,addr:port, ...
  std::string target = "localhost:50051";
  // How calls spread over the target's addresses: "pick_first" (one connection, gRPC's default) or
  // "round_robin" (a connection to every address, calls in turn; re-resolved as replicas come and go).
  std::string load_balancing = "pick_first";
  bool tls = false;
  std::string ca_file;    // PEM roots to verify the server (empty: system roots)
  std::string cert_file;  // PEM client certificate for mutual TLS
  std::string key_file;
  std::string tls_server_name;                  // verify the server as this name instead of the target's host
  std::string bearer_token;                     // sent as "authorization: Bearer <token>"
  absl::Duration timeout = absl::Seconds(120);  // deadline of each call
  int max_attempts = 4;  // tries per call while the answer is UNAVAILABLE (gRPC allows at most 5)
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // How long one connection attempt (TCP, TLS and the HTTP/2 handshake) may take before it counts as
  // failed: a busy server or a distant one needs more than a loopback round trip.
  absl::Duration connect_timeout = absl::Seconds(20);
  // Zero: off. Otherwise, while a call is in flight, an HTTP/2 ping every `keepalive`; one unanswered for as
  // long again fails the connection's calls UNAVAILABLE, which the retries take to another server. A stopped
  // replica process or a dead link held its calls until their deadlines (a data-set job over three servers with
  // one stopped took its timeout twice over). Off by default: servers before 2026-12-07 permit a ping only every
  // 5 minutes and close a connection that pings more, its calls lost. Not detected: an engine that hangs while
  // the process still answers pings, or a backend behind an HTTP/2 proxy, which answers them itself.
  absl::Duration keepalive = absl::ZeroDuration();
  int64_t max_message_bytes = 64 << 20;  // largest request sent (and retried whole: see Connect)
  // Largest response accepted; -1: any. A larger one fails the call with gRPC's RESOURCE_EXHAUSTED
  // ("Received message larger than max"), which retrying never cures.
  int64_t max_receive_message_bytes = 64 << 20;
};

// What Connect answers for ClientOptions::load_balancing: INVALID_ARGUMENT naming it and the policies
// gRPC knows unless it is "pick_first" or "round_robin"; OK otherwise.
absl::Status CheckLoadBalancing(const std::string& policy);

// The longest request_id (x-request-id metadata) and bearer token the client sends; longer ones are
// INVALID_ARGUMENT, since gRPC drops a connection whose metadata passes 8 KiB.
inline constexpr size_t kMaxRequestIdBytes = 1024;
inline constexpr size_t kMaxBearerTokenBytes = 4096;

struct Token {
  int64_t id = 0;
  std::string text;                      // valid UTF-8 (U+FFFD for part of a character)
  std::string bytes;                     // the token's exact bytes
  int64_t char_begin = 0, char_end = 0;  // code points into the prompt/target text
  float log_prob = 0;                    // output tokens
  bool special = false;                  // a special token of the tokenizer (bos, eos, control tokens)
};

struct Feature {
  int64_t token_begin = 0, token_end = 0;
  std::string text;
};

struct RunStats {
  int64_t rows = 0, forward_passes = 0, backward_passes = 0;
  double queue_seconds = 0, device_seconds = 0, wall_seconds = 0;
  std::string server_build;  // the commit the server was built from ("" from servers before 146fc40)
};

struct FeatureGroup {
  int64_t token_begin = 0, token_end = 0;
  // Replaces the group in perturbation methods: text or ids, any length; given but empty deletes the
  // span. Neither given: the request's baseline token once per position.
  std::optional<std::string> baseline_text;
  std::optional<std::vector<int64_t>> baseline_ids;
};

struct GenerationSettings {
  int max_new_tokens = 0;  // 0: server default (25)
  double temperature = 0;
  double top_p = 0;  // 0: no truncation
  // Sample from the top_k most likely tokens only; 0: off (transformers' do_sample default is 50).
  int top_k = 0;
  // Seeds sampling. Unset: Generate samples afresh each call and reports the seed it drew
  // (Generation::seed); an Attribute target generated without one uses seed 0.
  std::optional<uint64_t> seed;
  std::vector<int64_t> stop_token_ids;
  bool ignore_stop_tokens = false;
};

// Ends the calls whose options name it, from any thread, before, while or after they run: a call in flight ends
// CANCELLED (the server stops its work), one started after Cancel() returned ends CANCELLED unsent
// (RefusedBeforeSending; one started meanwhile ends CANCELLED, sent or not).
// One may serve many calls (a user's request fanned out, a job's window); CancelCalls() ends all of a client's.
//
//   auto cancel = std::make_shared<Cancellation>();
//   client->AttributeAsync({.model = "demo", .prompt = p, .cancellation = cancel}, done);
//   cancel->Cancel();  // the user left: done hears CANCELLED
class Cancellation {
 public:
  Cancellation();
  ~Cancellation();
  Cancellation(const Cancellation&) = delete;
  Cancellation& operator=(const Cancellation&) = delete;
  void Cancel();
  bool cancelled() const;

 private:
  friend struct CancellationAccess;
  struct Calls;
  std::shared_ptr<Calls> calls_;
};

struct AttributeOptions {
  std::string model;
  std::string prompt;               // text, or
  std::vector<int64_t> prompt_ids;  // token ids
  bool no_special_tokens = false;
  std::string target;  // text or ids; neither: generated with `generation`
  std::vector<int64_t> target_ids;
  // How target and foil text become tokens: "continuation" (as they follow the prompt: " No" after
  // "A:" is one token) or "separate" (tokenized alone, as Captum does).
  std::string target_tokenization = "continuation";
  GenerationSettings generation;
  std::string method = "integrated_gradients";  // gradient_shap saliency input_x_gradient feature_ablation
                                                // shapley_values shapley_value_sampling lime kernel_shap
                                                // attn_lrp cp_lrp
  std::string quantity = "log_prob";            // prob logit
  std::string foil;                             // contrastive when set (text or ids)
  std::vector<int64_t> foil_ids;
  // Answer choices, one token each (text as the target is read, or ids): the target's probability is
  // renormalised over them.
  std::vector<std::string> choices;
  std::vector<int64_t> choice_ids;
  std::optional<std::pair<int64_t, int64_t>> feature_range;  // [begin, end) tokens, one feature each
  std::vector<FeatureGroup> feature_groups;
  std::string baseline = "default";   // zero pad unk eos bos, or a token id
  int n_steps = 0;                    // 0: server default (50; with a tolerance, the server's max_steps points in all)
  double completeness_tolerance = 0;  // > 0: integrated gradients at growing orders until this close
  // "default" (the server's: gausslegendre, or fejer2 with a completeness_tolerance), gausslegendre,
  // fejer2, riemann_left, riemann_right, riemann_middle, riemann_trapezoid
  std::string rule = "default";
  int n_samples = 0;
  double stdev = 0;
  uint64_t seed = 0;
  bool signed_saliency = false;
  bool want_token_matrix = false;
  bool want_faithfulness = false;       // deletion / insertion curves (12 more forward rows on the server)
  bool include_special_tokens = false;  // special tokens (bos, ...) as features too (Captum parity)
  std::string priority = "normal";      // low high
  std::string request_id;               // sent as x-request-id metadata; the server logs it with the call
  // This call's deadline instead of ClientOptions::timeout (> 0; absl::InfiniteDuration(): none).
  std::optional<absl::Duration> timeout;
  std::shared_ptr<Cancellation> cancellation;  // Cancel() ends this call (see Cancellation)
};

// Deletion / insertion curves of an explanation (see Faithfulness in the proto): probabilities of the
// whole target with the top percents[i]% features removed (deletion) or alone kept (insertion).
struct Faithfulness {
  std::vector<double> percents;
  std::vector<int64_t> features_at;
  double full = 0, empty = 0;
  std::vector<double> deletion, insertion;
  double comprehensiveness_aopc = 0, sufficiency_aopc = 0;
};

// The settings an attribution ran with, in AttributeOptions' terms, the server's defaults and limits filled in:
// copied into AttributeOptions they get this answer again from a server whose defaults differ, where its limits
// admit them. Unset: the method does not read it (or a server before 146fc40 answered).
struct SettingsUsed {
  std::optional<int> n_steps;       // integrated gradients: points at most (Attribution::integration_steps: those used)
  std::optional<std::string> rule;  // as AttributeOptions::rule names it
  std::optional<int> n_samples;
  std::optional<double> stdev;
  std::optional<uint64_t> seed;
  std::optional<std::string> baseline;  // "zero", or the token id (as AttributeOptions::baseline takes it)
};

struct Attribution {
  std::string model, method;
  std::vector<Token> prompt_tokens, target_tokens;
  std::vector<Token> foil_tokens;  // contrastive: the objective is the target's quantity minus the foil's
  std::vector<Feature> features;
  std::vector<int64_t> fixed_tokens;              // prompt token indices in no feature (kept real in every row)
  std::vector<double> sequence;                   // [features]
  std::vector<std::vector<double>> token_matrix;  // [target tokens][features] when asked
  double objective = 0;
  std::optional<double> convergence_delta;
  int integration_steps = 0;          // integrated gradients: points of the answer's integration
  std::optional<bool> tolerance_met;  // with a completeness tolerance
  std::optional<Faithfulness> faithfulness;
  RunStats stats;
  std::string model_digest;  // the weights that computed it (ModelInfo::model_digest); "" from older servers
  std::vector<std::string> unread_settings;  // settings sent that the method does not read: they changed nothing
  SettingsUsed settings_used;
};

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::vector<int64_t> prompt_ids;
  bool no_special_tokens = false;
  GenerationSettings generation;
  std::string priority = "normal";
  std::string request_id;  // sent as x-request-id metadata; the server logs it with the call
  // This call's deadline instead of ClientOptions::timeout (> 0; absl::InfiniteDuration(): none).
  std::optional<absl::Duration> timeout;
  std::shared_ptr<Cancellation> cancellation;  // Cancel() ends this call (see Cancellation)
  // Text stop sequences (at most 8, 1 to 64 bytes each): generation ends once the continuation holds
  // one; Generation::text ends before it, its tokens include the one that completed it.
  std::vector<std::string> stop;
};

struct Generation {
  std::vector<Token> prompt_tokens, tokens;
  std::string text;        // valid UTF-8: as it reads after the prompt (to explain these tokens, send tokens' ids)
  std::string text_bytes;  // exact bytes
  bool stopped = false;
  RunStats stats;
  uint64_t seed = 0;         // the seed sampled with: the request's, or the server's draw (send it to reproduce)
  std::string model_digest;  // the weights that generated it (ModelInfo::model_digest); "" from older servers
};

struct LogprobsOptions {
  std::string model;
  std::string prompt;
  std::vector<int64_t> prompt_ids;
  bool no_special_tokens = false;
  std::string target;
  std::vector<int64_t> target_ids;
  std::string target_tokenization = "continuation";  // or "separate" (see AttributeOptions)
  int top_k = 0;
  std::string priority = "normal";
  std::string request_id;  // sent as x-request-id metadata; the server logs it with the call
  // This call's deadline instead of ClientOptions::timeout (> 0; absl::InfiniteDuration(): none).
  std::optional<absl::Duration> timeout;
  std::shared_ptr<Cancellation> cancellation;  // Cancel() ends this call (see Cancellation)
};

struct TokenLogprob {
  Token token;
  std::vector<Token> top;  // id, text, log_prob
};

struct Logprobs {
  std::vector<Token> prompt_tokens;
  std::vector<TokenLogprob> target;
  double total_log_prob = 0;
  RunStats stats;
  std::string model_digest;  // the weights that computed it (ModelInfo::model_digest); "" from older servers
};

struct ModelInfo {
  std::string name, architecture, dtype, quantization, device;
  // nf4 / fp4 (bitsandbytes' formats): block size, double quantization, and whether the weights were
  // loaded as a bitsandbytes checkpoint saved them (with that checkpoint's bnb_4bit_compute_dtype).
  int64_t quantization_block_size = 0;
  bool double_quantization = false, quantization_from_checkpoint = false;
  std::string checkpoint_compute_dtype;
  int64_t resident_weight_bytes = 0, vocab_size = 0, num_layers = 0, hidden_size = 0;
  int64_t max_steps = 0, max_samples = 0, max_features = 0, max_tokens = 0, max_new_tokens = 0, max_top_k = 0;
  int64_t max_exact_shapley_features = 0;  // shapley_values runs 2^features rows: more features are refused
  int64_t max_choices = 0;
  int64_t max_rows = 0;           // rows one request may queue (forward or forward + backward passes of a sequence)
  int64_t max_pairs = 0;          // prompt pairs of one AttributeComponents call
  int64_t max_queued_tokens = 0;  // tokens of the rows one request may queue, together
  int64_t max_queued_bytes = 0;   // queue memory one request may hold
  // Tokens (prompt + new tokens) the KV caches of the model's generations may hold together: a longer Generate is
  // refused (0 from servers before 2026-12-07).
  int64_t max_kv_cache_tokens = 0;
  // SHA-256 (hex) of the files the server loaded the model from: which checkpoint this is, whatever its name
  // ("" from servers before 2026-12-04).
  std::string weights_digest;
  // SHA-256 (hex) of the checkpoint as loaded (weights_digest, dtype, quantization): every Attribution and
  // Logprobs computed on it carries it as model_digest.
  std::string model_digest;
};

// A clean and a corrupted prompt of the same token length (text, or ids).
struct PromptPair {
  std::string clean, corrupted;
  std::vector<int64_t> clean_ids, corrupted_ids;
};

struct ComponentOptions {
  std::string model;
  std::vector<PromptPair> pairs;  // grids average them
  bool no_special_tokens = false;
  std::string answer;  // one token each: text (tokenized alone) or an id
  std::optional<int64_t> answer_id;
  std::string wrong_answer;  // the difference metrics
  std::optional<int64_t> wrong_answer_id;
  std::string metric = "logit_difference";     // normalized_logit_difference log_prob prob prob_difference
  std::string method = "activation_patching";  // layer_integrated_gradients attribution_patching[_star]
  std::string direction = "denoising";         // noising
  std::vector<std::string> sites = {"heads"};  // attn_out mlp_out resid_pre
  std::string granularity = "default";         // layer_head layer_position layer_position_head
  int n_steps = 0;                             // layer integrated gradients; 0: 16
  std::string rule = "default";  // as AttributeOptions::rule; without a tolerance, default is gausslegendre
  std::string priority = "normal";
  std::string request_id;  // sent as x-request-id metadata; the server logs it with the call
  // This call's deadline instead of ClientOptions::timeout (> 0; absl::InfiniteDuration(): none).
  std::optional<absl::Duration> timeout;
  std::shared_ptr<Cancellation> cancellation;  // Cancel() ends this call (see Cancellation)
};

struct ComponentGrid {
  std::string site, granularity;  // as ComponentOptions spells them
  std::vector<int64_t> shape;
  std::vector<std::string> axes;  // "layer", "head", "position"
  std::vector<double> values;     // row-major
  std::vector<double> convergence_deltas;
};

struct PairComponents {
  double clean_metric = 0, corrupted_metric = 0;
  std::vector<ComponentGrid> grids;
  std::vector<Token> clean_tokens, corrupted_tokens;
};

struct ComponentAttribution {
  std::string model, method, metric, direction;
  std::vector<ComponentGrid> grids;  // per site, averaged over pairs
  std::vector<PairComponents> pairs;
  Token answer, wrong_answer;
  RunStats stats;
  std::string model_digest;  // the weights that computed it (ModelInfo::model_digest); "" from older servers
  std::vector<std::string> unread_settings;  // settings sent that the method does not read: they changed nothing
  // What the method ran with (layer integrated gradients: n_steps and rule), defaults and limits applied; none
  // from servers before this field, or for methods that read no settings.
  SettingsUsed settings_used;
};

// The whole of file `path`; NOT_FOUND naming the path and why when it cannot be read: it cannot be opened, it is a
// directory, or it holds more than 256 MiB (a device).
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// The bearer token on the first line of `path` (what --token_file flags name); NOT_FOUND when the file
// cannot be read, INVALID_ARGUMENT when its first line is empty.
absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path);

// The names CheckTlsOptions gives the TLS options in its messages: ClientOptions' own, or a program's flags.
struct TlsOptionNames {
  const char* tls = "tls";
  const char* ca_file = "ca_file";
  const char* cert_file = "cert_file";
  const char* key_file = "key_file";
  const char* tls_server_name = "tls_server_name";
};

// INVALID_ARGUMENT naming the option when the TLS options do not go together (Connect refuses them): a
// certificate option without tls (the connection would be plaintext, the file unread), or half a key pair.
absl::Status CheckTlsOptions(const ClientOptions& options, const TlsOptionNames& names = {});

// INVALID_ARGUMENT naming the option and the file when a TLS file cannot work (Connect refuses it): a CA file or
// certificate chain that holds no certificate that parses, a key that is encrypted or of another certificate,
// an expired certificate. NOT_FOUND when one cannot be read. CheckTlsOptions' refusals first.
absl::Status CheckTlsFiles(const ClientOptions& options, const TlsOptionNames& names = {});

// What AttributeAsync would answer at once, without a call: INVALID_ARGUMENT naming an option whose
// name (method, quantity, rule, baseline, priority, ...) is unknown; OK otherwise.
absl::Status CheckAttributeOptions(const AttributeOptions& options);
// The same for AttributeComponentsAsync (metric, method, direction, sites, granularity, rule, priority) and
// GetLogprobsAsync (target_tokenization, priority).
absl::Status CheckComponentOptions(const ComponentOptions& options);
absl::Status CheckLogprobsOptions(const LogprobsOptions& options);

template <typename T>
using Callback = std::function<void(absl::StatusOr<T>)>;

// Whether a failed call was refused by this client before it was sent (its options; a sync call inside a
// callback): no server saw it, so no server log line carries its request id.
bool RefusedBeforeSending(const absl::Status& status);

// Thread-safe; one channel shared by every call. The async forms' callbacks (done, progress, on_token) run on
// gRPC's threads (a few, shared by every client): they must not block, and a sync call made in one fails
// FAILED_PRECONDITION (it would wait for those threads). Any callback may hold the client's last reference (a
// shared_ptr it captured), and a done callback may destroy the client; a progress or on_token callback must not
// destroy it itself (the destructor waits for that very call).
class AttributionClient {
 public:
  static absl::StatusOr<std::unique_ptr<AttributionClient>> Connect(const ClientOptions& options);
  // Cancels the calls in flight (each callback hears CANCELLED) and waits until gRPC has let go of them.
  ~AttributionClient();
  // The target it connected to (ClientOptions::target), for messages that name the server.
  const std::string& target() const;

  // Cancels every call in flight and every call made after (each ends CANCELLED): a caller that stops (a batch
  // job whose results file cannot be written) ends its calls instead of waiting for their answers.
  void CancelCalls();

  absl::StatusOr<Attribution> Attribute(const AttributeOptions& options);
  void AttributeAsync(const AttributeOptions& options, Callback<Attribution> done);
  // Streams progress (rows done, rows total) while the attribution runs; callbacks of the async forms
  // run on gRPC threads, one at a time per call.
  absl::StatusOr<Attribution> AttributeStream(const AttributeOptions& options,
                                              std::function<void(int64_t, int64_t)> progress);
  void AttributeStreamAsync(const AttributeOptions& options, std::function<void(int64_t, int64_t)> progress,
                            Callback<Attribution> done);

  // Component attribution (activation patching, layer integrated gradients, attribution patching);
  // `progress` (may be empty) hears rows done / total while it runs.
  absl::StatusOr<ComponentAttribution> AttributeComponents(const ComponentOptions& options,
                                                           std::function<void(int64_t, int64_t)> progress = nullptr);
  void AttributeComponentsAsync(const ComponentOptions& options, std::function<void(int64_t, int64_t)> progress,
                                Callback<ComponentAttribution> done);

  absl::StatusOr<Generation> Generate(const GenerateOptions& options);
  void GenerateAsync(const GenerateOptions& options, Callback<Generation> done);
  // Calls `on_token` with each new token as the server produces it.
  absl::StatusOr<Generation> GenerateStream(const GenerateOptions& options, std::function<void(const Token&)> on_token);
  void GenerateStreamAsync(const GenerateOptions& options, std::function<void(const Token&)> on_token,
                           Callback<Generation> done);

  absl::StatusOr<Logprobs> GetLogprobs(const LogprobsOptions& options);
  void GetLogprobsAsync(const LogprobsOptions& options, Callback<Logprobs> done);

  absl::StatusOr<std::vector<ModelInfo>> ListModels();
  void ListModelsAsync(Callback<std::vector<ModelInfo>> done);

  // The standard health check: "SERVING", "NOT_SERVING", ... (service "" = the whole server).
  absl::StatusOr<std::string> Health(const std::string& service = "");
  void HealthAsync(const std::string& service, Callback<std::string> done);

 private:
  struct Impl;
  explicit AttributionClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attribution::client
