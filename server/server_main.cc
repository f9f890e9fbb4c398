// SPDX-License-Identifier: Apache-2.0
// attribution-server: serves attribution.v1 for the models of a config file and/or --model flags;
// with neither, the embedded default model (models/tiny-qa-llama, see its README.md).
// Lifecycle: listen (health NOT_SERVING) -> load every model -> SERVING (NOT_SERVING while a model is
// stalled, see serving_health.h) -> on SIGTERM/SIGINT/SIGHUP: NOT_SERVING, refuse new calls (UNAVAILABLE), let
// calls in flight finish within the grace period, stop the engines, exit 0 (exit 1 at once when a model is
// stalled then or while its engine stops). A signal while the models load exits 0 at once. Exits 1 with a
// clear message when the config or a model is bad, and drains and exits 1 when gRPC stops accepting
// connections.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/common/build_info.h"
#include "engine/common/credential_files.h"
#include "engine/common/files.h"
#include "engine/common/sanitizers.h"
#include "engine/common/standard_descriptors.h"
#include "engine/common/status_macros.h"
#include "engine/common/visible_controls.h"
#include "engine/model/model_config.h"
#include "engine/model/torch_errors.h"
#include "engine/scheduler/intra_op_threads.h"
#include "engine/tokenizer/id_only_tokenizer.h"
#include "server/attribution_service.h"
#include "server/bearer_auth.h"
#include "server/cpu_budget.h"
#include "server/grpc_log.h"
#include "server/lifecycle.h"
#include "server/log_line.h"
#include "server/reflection_service.h"
#include "server/serving_health.h"
#include "server/thread_stacks.h"
#include "server/unparsable_request.h"

ABSL_FLAG(std::string, config, "",
          "JSON config file (listen addresses, TLS, auth, limits, models); flags given "
          "on the command line override its values");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address host:port (port 0: any free port, see --port_file)");
ABSL_FLAG(std::string, port_file, "",
          "once serving, write the bound gRPC port (0 at a unix: address) and then the metrics port (0: none), "
          "one per line, to this file (for scripts and tests); removed as the server stops");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464", "Prometheus /metrics address host:port; empty: none");
ABSL_FLAG(std::vector<std::string>, model, {},
          "NAME=PATH of a Hugging Face model directory to serve; repeat it (or give a "
          "comma-separated list, --model=a=DIR1,b=DIR2, where a comma followed by a NAME= starts the next) for "
          "several; uses --dtype, "
          "--quantization and --device. Without --model and --config: the "
          "embedded default model tiny-qa-llama ($ATTRIBUTION_DEFAULT_MODEL overrides its folder)");
ABSL_FLAG(std::string, dtype, "float32", "compute dtype of --model models: float32 | bfloat16 | float16");
ABSL_FLAG(std::string, quantization, "none",
          "weight quantization of --model models: none | int8 | nf4 | fp4 (nf4 and fp4 are bitsandbytes' formats, "
          "bit for bit; a checkpoint saved quantized by bitsandbytes loads as saved with none or its own type)");
ABSL_FLAG(int64_t, quantization_block_size, 64, "nf4 / fp4 block size (bnb_4bit_blocksize): 32, 64, ..., 4096");
ABSL_FLAG(bool, double_quantization, false,
          "nf4 / fp4: quantize each block's absmax to 8 bits as bitsandbytes' bnb_4bit_use_double_quant does");
ABSL_FLAG(std::string, device, "cpu", "device of --model models: cpu | cuda:N");
ABSL_FLAG(bool, allow_nonfinite_weights, false,
          "load --model models whose weights hold NaN or infinite values "
          "(refused by default: such a model's calls fail FAILED_PRECONDITION where its scores come out NaN)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require and verify client certificates (mutual TLS)");
ABSL_FLAG(std::string, auth_tokens_file, "", "file of accepted bearer tokens, one per line; empty: no auth");
ABSL_FLAG(int64_t, max_concurrent_requests, 256, "calls served at once; more are answered RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_streams_per_connection, 256,
          "calls one connection may hold open at once (HTTP/2 streams); a client's further calls wait in its "
          "transport until one ends");
ABSL_FLAG(int64_t, max_transport_memory_bytes, int64_t{256} << 20,
          "memory gRPC's transport may hold for all connections (read buffers, calls not yet handled); past "
          "it gRPC stops reading from sockets until memory frees");
ABSL_FLAG(int64_t, max_unread_answer_bytes, int64_t{64} << 20,
          "bytes of unary answers waiting for their clients to read them; beyond it new calls are answered "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_message_bytes, 4 << 20, "largest request or response message");
ABSL_FLAG(int64_t, max_tokens, 4096, "per request: prompt + target (or new) tokens, for --model models");
ABSL_FLAG(int64_t, max_steps, 1024, "per request: integrated-gradient steps, for --model models");
ABSL_FLAG(int64_t, max_samples, 1024, "per request: sampling methods' samples, for --model models");
ABSL_FLAG(double, max_batch_seconds, 0,
          "device time of one batch while short calls wait beside long work (latency "
          "isolation), for --model models; 0: 0.025 on the CPU, 0.005 on CUDA");
ABSL_FLAG(double, max_uncontended_batch_seconds, 0.25,
          "device time of one batch at any time (or four times a batch's learned fixed cost, where "
          "that is more), so a request running alone stops within about one batch of its "
          "cancellation or deadline, for --model models");
ABSL_FLAG(bool, check_config, false,
          "validate the config and flags as startup does before it loads a model (values, addresses, "
          "each model's config.json, TLS and token files), print a summary and exit (0: valid, 1: not); "
          "loads no model and binds no port");
ABSL_FLAG(bool, check_config_files, true,
          "with --check_config: also check the files the config names (false: the values only, for a "
          "config checked away from the machine that holds its models and keys, e.g. a ConfigMap in CI)");
ABSL_FLAG(double, grace_period_seconds, 30, "on SIGTERM, how long calls in flight may take to finish");
ABSL_FLAG(double, client_read_timeout_seconds, 120,
          "cancel a call whose answer waited this long for its client to read it (0: never)");
ABSL_FLAG(std::string, log_level, "debug",
          "calls' and gRPC's log lines below this severity are not written: debug (every line), info, warning "
          "(calls that were overloaded, late or unavailable, and the server's faults), error; the server's own "
          "events (listening, serving, draining, stopped, model warnings) are always written");
ABSL_FLAG(double, max_connection_age_seconds, 300,
          "ask a client to reconnect once its connection is this old (calls in flight finish), so "
          "round-robin clients resolve the name again and reach replicas added since (0: never)");

namespace attribution::server {
namespace {

// What argv says, read before abseil parses it: the flags it names (a bool's --noNAME as NAME), since
// Debian's abseil keeps IsSpecifiedOnCommandLine private, and every --model value in order (each may be a
// comma-separated list), since abseil keeps only the last value of a repeated flag.
struct ArgvFlags {
  std::set<std::string> named;
  std::vector<std::string> models;
};

ArgvFlags& TheArgvFlags() {
  static auto* flags = new ArgvFlags;
  return *flags;
}

// The models of one --model value, "a=DIR1,b=DIR2": a comma starts a model only where NAME= follows it (a name
// holds no '/'), so a folder whose name holds a comma ("a=/models/llama,7b") is one path, not a second model
// "7b" refused as not NAME=PATH.
void AppendModelList(absl::string_view value, std::vector<std::string>& models) {
  bool first = true;
  for (absl::string_view piece : absl::StrSplit(value, ',')) {
    const size_t equals = piece.find('='), slash = piece.find('/');
    const bool starts_a_model =
        equals != absl::string_view::npos && equals > 0 && (slash == absl::string_view::npos || equals < slash);
    if (first || starts_a_model) {
      models.emplace_back(piece);
    } else {
      absl::StrAppend(&models.back(), ",", piece);
    }
    first = false;
  }
}

// --model lines of a --flagfile: abseil keeps only a repeated flag's last value, and argv does not show them
// (a flagfile naming two models served only the second).
// Flagfiles may name flagfiles (abseil follows them); `depth` stops a file that names itself.
void ReadFlagfileModels(absl::string_view paths, ArgvFlags& flags, int depth = 0) {
  if (depth > 8) return;
  for (absl::string_view path : absl::StrSplit(paths, ',', absl::SkipEmpty())) {
    absl::StatusOr<std::string> text = engine::ReadFile(std::string(path));
    if (!text.ok()) continue;  // ParseCommandLine names an unreadable flagfile
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (absl::ConsumePrefix(&line, "--flagfile=") || absl::ConsumePrefix(&line, "-flagfile=")) {
        ReadFlagfileModels(line, flags, depth + 1);
        continue;
      }
      if (!absl::ConsumePrefix(&line, "--model=") && !absl::ConsumePrefix(&line, "-model=")) continue;
      AppendModelList(line, flags.models);
      flags.named.insert("model");
    }
  }
}

void ReadArgvFlags(int argc, char** argv) {
  ArgvFlags& flags = TheArgvFlags();
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;                         // what follows is not flags
    if (arg.size() < 2 || arg[0] != '-') continue;  // a value, or "-"
    arg = absl::StripPrefix(absl::StripPrefix(arg, "-"), "-");
    const size_t equals = arg.find('=');
    std::string name(arg.substr(0, equals));
    if (absl::FindCommandLineFlag(name) == nullptr && absl::StartsWith(name, "no")) name = name.substr(2);
    if (name == "model" && (equals != absl::string_view::npos || i + 1 < argc)) {
      const absl::string_view value = equals != absl::string_view::npos ? arg.substr(equals + 1) : argv[++i];
      AppendModelList(value, flags.models);
    }
    if (name == "flagfile" && (equals != absl::string_view::npos || i + 1 < argc)) {
      ReadFlagfileModels(equals != absl::string_view::npos ? arg.substr(equals + 1) : argv[i + 1], flags);
    }
    flags.named.insert(std::move(name));
  }
}

// A flag overrides the config file when the command line names it, even at its default value (the
// README's `--listen 0.0.0.0:50051` beside a config that says otherwise), or a --flagfile moved it away
// from its default (argv does not show those).
bool OnCommandLine(const char* name) {
  if (TheArgvFlags().named.count(name) != 0) return true;
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

template <typename T, typename Flag>
void Override(const char* name, const Flag& flag, T& value) {
  if (OnCommandLine(name)) value = absl::GetFlag(flag);
}

constexpr char kDefaultModelName[] = "tiny-qa-llama";

// $ATTRIBUTION_DEFAULT_MODEL, else models/ beside the binary's folder (install and container layout:
// bin/ and models/), else the source tree the binary was built from.
std::string DefaultModelDir() {
  if (const char* env = std::getenv("ATTRIBUTION_DEFAULT_MODEL")) return env;
  const std::string installed = absl::StrCat(engine::ExecutableDir(), "../models/", kDefaultModelName);
  if (engine::FileExists(installed + "/config.json")) return installed;
  return absl::StrCat(ATTRIBUTION_SOURCE_DIR, "/models/", kDefaultModelName);
}

// A --model (or the default model) with the per-model flags.
absl::StatusOr<ModelSpec> ModelSpecFromFlags(std::string name, std::string path) {
  ModelSpec spec{.name = std::move(name),
                 .path = std::move(path),
                 .dtype = absl::GetFlag(FLAGS_dtype),
                 .quantization = absl::GetFlag(FLAGS_quantization),
                 .device = absl::GetFlag(FLAGS_device)};
  spec.allow_nonfinite_weights = absl::GetFlag(FLAGS_allow_nonfinite_weights);
  spec.quantization_block_size = absl::GetFlag(FLAGS_quantization_block_size);
  spec.double_quantization = absl::GetFlag(FLAGS_double_quantization);
  spec.limits.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  spec.limits.max_steps = absl::GetFlag(FLAGS_max_steps);
  spec.limits.max_samples = absl::GetFlag(FLAGS_max_samples);
  ApplyDeviceDefaults(spec.device, spec.engine);
  // A NaN or negative --max_batch_seconds fell back to the device's default without a word.
  ASSIGN_OR_RETURN(const absl::Duration max_batch_time,
                   DurationOfSeconds(absl::GetFlag(FLAGS_max_batch_seconds), "--max_batch_seconds"));
  if (max_batch_time < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("--max_batch_seconds = ", absl::GetFlag(FLAGS_max_batch_seconds),
                                                   ": give seconds above 0, or 0 for the device's default"));
  }
  if (max_batch_time > absl::ZeroDuration()) spec.engine.max_batch_time = max_batch_time;
  ASSIGN_OR_RETURN(
      spec.engine.max_uncontended_batch_time,
      DurationOfSeconds(absl::GetFlag(FLAGS_max_uncontended_batch_seconds), "--max_uncontended_batch_seconds"));
  return spec;
}

// The flags ModelSpecFromFlags reads: they apply to --model models only.
constexpr const char* kPerModelFlags[] = {"dtype",
                                          "quantization",
                                          "device",
                                          "allow_nonfinite_weights",
                                          "quantization_block_size",
                                          "double_quantization",
                                          "max_tokens",
                                          "max_steps",
                                          "max_samples",
                                          "max_batch_seconds",
                                          "max_uncontended_batch_seconds"};

absl::StatusOr<ServerConfig> ConfigFromFlags() {
  ServerConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::StatusOr<ServerConfig> read = ReadServerConfig(absl::GetFlag(FLAGS_config));
    if (!read.ok()) return read.status();
    config = std::move(*read);
  }
  // Beside a config file's models and no --model, such a flag applied to nothing without a word (--dtype
  // bfloat16 served them in float32).
  if (!config.models.empty() && absl::GetFlag(FLAGS_model).empty()) {
    for (const char* flag : kPerModelFlags) {
      if (!OnCommandLine(flag)) continue;
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " applies to --model models, and none is given: set it in each model entry of ",
                       absl::GetFlag(FLAGS_config)));
    }
  }
  Override("listen", FLAGS_listen, config.listen);
  Override("metrics_listen", FLAGS_metrics_listen, config.metrics_listen);
  Override("tls_cert", FLAGS_tls_cert, config.tls.cert_file);
  Override("tls_key", FLAGS_tls_key, config.tls.key_file);
  Override("tls_client_ca", FLAGS_tls_client_ca, config.tls.client_ca_file);
  Override("auth_tokens_file", FLAGS_auth_tokens_file, config.auth_tokens_file);
  Override("max_concurrent_requests", FLAGS_max_concurrent_requests, config.max_concurrent_requests);
  Override("max_streams_per_connection", FLAGS_max_streams_per_connection, config.max_streams_per_connection);
  Override("max_unread_answer_bytes", FLAGS_max_unread_answer_bytes, config.max_unread_answer_bytes);
  Override("max_transport_memory_bytes", FLAGS_max_transport_memory_bytes, config.max_transport_memory_bytes);
  Override("max_message_bytes", FLAGS_max_message_bytes, config.max_message_bytes);
  Override("log_level", FLAGS_log_level, config.log_level);
  for (auto [flag, value, out] :
       {std::tuple{"grace_period_seconds", &FLAGS_grace_period_seconds, &config.grace_period},
        {"client_read_timeout_seconds", &FLAGS_client_read_timeout_seconds, &config.client_read_timeout},
        {"max_connection_age_seconds", &FLAGS_max_connection_age_seconds, &config.max_connection_age}}) {
    if (OnCommandLine(flag)) {
      ASSIGN_OR_RETURN(*out, DurationOfSeconds(absl::GetFlag(*value), absl::StrCat("--", flag)));
    }
  }
  for (const std::string& entry : absl::GetFlag(FLAGS_model)) {
    std::vector<std::string> parts = absl::StrSplit(entry, absl::MaxSplits('=', 1));
    if (parts.size() != 2)
      return absl::InvalidArgumentError(absl::StrCat("--model \"", entry, "\": expected NAME=PATH"));
    ASSIGN_OR_RETURN(ModelSpec spec, ModelSpecFromFlags(parts[0], parts[1]));
    config.models.push_back(std::move(spec));
  }
  if (absl::GetFlag(FLAGS_config).empty() && absl::GetFlag(FLAGS_model).empty()) {
    ASSIGN_OR_RETURN(ModelSpec spec, ModelSpecFromFlags(kDefaultModelName, DefaultModelDir()));
    config.models.push_back(std::move(spec));
  }
  if (absl::Status s = ValidateServerConfig(config); !s.ok()) return s;
  return config;
}

// The text of `path` for TLS, or an error naming the setting and the file.
absl::StatusOr<PemFile> ReadPemFile(const std::string& path, const char* setting) {
  absl::StatusOr<std::string> text = engine::ReadFile(path);
  if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat(setting, ": ", text.status().message()));
  return PemFile{setting, path, *std::move(text)};
}

// The files startup reads before it loads a model or listens: --check_config reads them too, so a
// config it passes does not fail on them a moment later.
struct StartupFiles {
  std::optional<BearerAuth> auth;
  grpc::SslServerCredentialsOptions::PemKeyCertPair tls_pair;  // empty without TLS
  std::string tls_client_ca;                                   // empty without mutual TLS
};

// Also reads each model directory's config.json (and generation_config.json), the first files loading needs,
// as loading reads them: a folder whose config.json was not JSON, or named an architecture the server lacks,
// passed --check_config and then failed startup.
absl::StatusOr<StartupFiles> ReadStartupFiles(const ServerConfig& config) {
  for (const ModelSpec& m : config.models) {
    if (absl::Status parsed = engine::ReadModelConfig(m.path).status(); !parsed.ok()) {
      return absl::Status(parsed.code(), absl::StrCat("model \"", m.name, "\" (", m.path, "): ", parsed.message()));
    }
  }
  StartupFiles files;
  if (!config.auth_tokens_file.empty()) {
    absl::StatusOr<BearerAuth> auth = BearerAuth::Load(config.auth_tokens_file);
    if (!auth.ok()) return auth.status();
    files.auth = std::move(*auth);
  }
  const TlsConfig& tls = config.tls;
  if (!tls.cert_file.empty()) {
    ASSIGN_OR_RETURN(PemFile chain, ReadPemFile(tls.cert_file, "tls cert_file"));
    ASSIGN_OR_RETURN(PemFile key, ReadPemFile(tls.key_file, "tls key_file"));
    RETURN_IF_ERROR(CheckKeyPair(chain, key));
    files.tls_pair.cert_chain = std::move(chain.text);
    files.tls_pair.private_key = std::move(key.text);
  }
  if (!tls.client_ca_file.empty()) {
    ASSIGN_OR_RETURN(PemFile ca, ReadPemFile(tls.client_ca_file, "tls client_ca_file"));
    RETURN_IF_ERROR(CheckCertificates(ca));
    files.tls_client_ca = std::move(ca.text);
  }
  return files;
}

std::shared_ptr<grpc::ServerCredentials> Credentials(const StartupFiles& files) {
  if (files.tls_pair.cert_chain.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back(files.tls_pair);
  if (!files.tls_client_ca.empty()) {
    options.pem_root_certs = files.tls_client_ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

void Log(const std::string& event, const std::string& detail) { WriteLogLine({{"event", event}, {"detail", detail}}); }

// One line for a model whose checkpoint holds tensors its architecture does not use: loading went on,
// but a config for another architecture or a damaged export would look like this.
void WarnOfUnusedWeights(const ServedModel& m) {
  const std::vector<std::string>& unused = m.model->unused_weights();
  if (unused.empty()) return;
  constexpr size_t kListed = 20;
  std::vector<std::string> listed(unused.begin(), unused.begin() + std::min(unused.size(), kListed));
  std::string names = absl::StrJoin(listed, ", ");
  if (unused.size() > kListed) absl::StrAppend(&names, " and ", unused.size() - kListed, " more");
  Log("model_warning",
      absl::StrCat("model \"", m.spec.name, "\" (", m.spec.path, "): ", unused.size(), " stored tensor(s) that the ",
                   engine::ArchitectureName(m.model->config().architecture),
                   " architecture does not use were not loaded: ", names));
}

// LibTorch's intra-op pool fits the CPUs the process may keep busy (cpu_budget.h), unless OMP_NUM_THREADS
// says how many. The count in force and what chose it, for the listening line.
std::pair<int, std::string> FitIntraOpThreads() {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  if (int threads = 0; omp != nullptr && absl::SimpleAtoi(omp, &threads) && threads > 0) {
    return {engine::LimitProcessIntraOpThreads(threads), absl::StrCat("OMP_NUM_THREADS=", threads)};
  }
  const CpuBudget budget = ReadCpuBudget();
  return {engine::LimitProcessIntraOpThreads(budget.Usable()), budget.Describe()};
}

// Every connection is a file descriptor, and gRPC's listener stops for good when accept() runs out of
// them (see RouteGrpcLogs): the soft limit (1024 by default in many shells and units) goes up to the hard
// one, as servers that hold many connections do. The limit in force.
rlim_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur;
}

// --port_file's folder, written in at startup: checked by --check_config and before the models load, by
// creating a file there as the write will (access(2) passed a regular file as the folder, and /proc as root).
absl::Status CheckPortFileFolder(const std::string& path) {
  if (path.empty()) return absl::OkStatus();
  // A folder there passed, and startup failed only after every model had loaded.
  if (struct stat st{}; ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("--port_file ", path, ": a directory, not a file"));
  }
  std::string probe = path + ".XXXXXX";
  const int fd = ::mkostemp(probe.data(), O_CLOEXEC);
  if (fd < 0) {
    const size_t slash = path.rfind('/');
    const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    return absl::InvalidArgumentError(
        absl::StrCat("--port_file ", path, ": cannot write in ", folder, ": ", std::strerror(errno)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
  return absl::OkStatus();
}

// The ports, one a line, in a file renamed into place once whole (readers never see half of it): every write
// checked, since a file left empty on a full disk, or none at all, kept a script waiting for it forever.
// Returns the file's identity (device, inode), so that the stop removes it only while it is this server's.
absl::StatusOr<std::pair<dev_t, ino_t>> WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  std::string temporary = path + ".XXXXXX";
  const std::string text = absl::StrCat(grpc_port, "\n", metrics_port, "\n");
  // A fresh name, created exclusively: a fixed PATH.tmp was opened through a symbolic link planted there, and the
  // file it pointed to overwritten.
  const int fd = ::mkostemp(temporary.data(), O_CLOEXEC);
  auto failed = [&](int error) {
    if (fd >= 0) std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat(
        "--port_file ", path, ": cannot write it: ", error == 0 ? "the disk took part of it" : std::strerror(error)));
  };
  if (fd < 0) return failed(errno);
  // mkostemp makes it 0600; readable as a plain file would be (the umask applied).
  const mode_t umask = ::umask(0);
  ::umask(umask);
  if (::fchmod(fd, 0644 & ~umask) != 0) {
    const int error = errno;
    ::close(fd);
    return failed(error);
  }
  errno = 0;
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int write_error = errno;
  struct stat identity {};
  if (!written || ::fstat(fd, &identity) != 0) {
    const int error = written ? errno : write_error;
    ::close(fd);
    return failed(error);
  }
  if (::close(fd) != 0) return failed(errno);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) return failed(errno);
  return std::make_pair(identity.st_dev, identity.st_ino);
}

// gRPC removes a socket file at a unix: address before it binds, so a second server there took the first one's
// clients (the first went on, reached by no one). A socket a server answers on is in use; a stale one, left by
// a server that died, is not.
absl::Status CheckUnixSocketFree(const std::string& listen) {
  if (!absl::StartsWith(listen, "unix:")) return absl::OkStatus();
  std::string path = listen.substr(5);
  if (absl::StartsWith(path, "//")) path = path.substr(2);  // unix:///run/a.sock
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) return absl::OkStatus();  // gRPC says why
  path.copy(address.sun_path, path.size());
  // Without blocking: a live server whose backlog is full would hold a blocking connect. Full is in use too.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::OkStatus();
  const bool answered =
      ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0 || errno == EAGAIN;
  ::close(fd);
  if (!answered) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, ": a server is listening there (in use)"));
}

int Fail(const absl::Status& status) {
  Log("startup_failed", std::string(status.message()));
  // The JSON line first, then the same for a person; not when stderr takes nothing (fprintf would block).
  if (!FlushLog(absl::Seconds(1))) return 1;
  std::fprintf(stderr, "attribution-server: %s\n",
               EscapeControls(status.message(), /*keep_line_breaks=*/false).c_str());
  return 1;
}

int Serve(const ThreadStacks& thread_stacks) {
  const bool check_only = absl::GetFlag(FLAGS_check_config);
  if (check_only) Lifecycle::OnlyChecking();
  absl::StatusOr<ServerConfig> config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<StartupFiles> files = StartupFiles{};
  if (!check_only || absl::GetFlag(FLAGS_check_config_files)) files = ReadStartupFiles(*config);
  if (!files.ok()) return Fail(files.status());
  if (absl::Status folder = CheckPortFileFolder(absl::GetFlag(FLAGS_port_file)); !folder.ok()) return Fail(folder);
  if (check_only) {
    std::printf("config ok: listen %s, metrics %s, %zu model(s):", config->listen.c_str(),
                config->metrics_listen.c_str(), config->models.size());
    for (const ModelSpec& m : config->models)
      std::printf(" %s (%s on %s)", m.name.c_str(), m.path.c_str(), m.device.c_str());
    std::printf("\n");
    return 0;
  }
  // Checked with the config: the level is one of the four.
  SetMinimumLogSeverity(config->log_level, "log_level").IgnoreError();
  RouteGrpcLogs();
  const rlim_t open_files = RaiseOpenFileLimit();
  const auto [intra_op_threads, threads_chosen_by] = FitIntraOpThreads();
  absl::StatusOr<std::unique_ptr<ServerMetrics>> metrics = ServerMetrics::Create(config->metrics_listen);
  if (!metrics.ok()) return Fail(metrics.status());

  AttributionServiceImpl service(*config, metrics->get(), std::move(files->auth));
  grpc::EnableDefaultHealthCheckService(true);
  ReflectionService reflection({attribution::v1::AttributionService::service_full_name(), "grpc.health.v1.Health"});
  if (absl::Status free = CheckUnixSocketFree(config->listen); !free.ok()) return Fail(free);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen, Credentials(*files), &port);
  // gRPC sets SO_REUSEPORT by default: a second server on a port in use started, and the kernel split the
  // connections between the two (a client saw either's models). A port in use is a startup error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients ping during calls to tell a hung server from a busy one (ClientOptions::keepalive); gRPC's default
  // permits one ping in 5 minutes without data and closes the connection (its calls failing) after two more.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config->max_message_bytes));
  // Compressed requests are refused (UNIMPLEMENTED) instead of inflated: gRPC inflates a whole message
  // before it checks its size, so 4 MB of gzip cost 4 GB of memory and 16 s of a thread, before any
  // authentication. Our clients never compress.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.SetMaxSendMessageSize(static_cast<int>(config->max_message_bytes));
  // gRPC 1.51 sets no limit: one connection's streams that never send their message (each a call object
  // of about 11 KB, matched before any handler or token check) grew the process by 1 GB per 100,000.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, static_cast<int>(config->max_streams_per_connection));
  // The grace after the GOAWAY stays gRPC's default, unbounded: a 512-step attribution in flight on an aged
  // connection finishes there, while the client's new calls go over a new connection.
  if (config->max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(config->max_connection_age)));
  }
  // gRPC 1.51's quota is unbounded by default, and it reads from a socket whatever arrives, parsed or not: a
  // client sending one-header CONTINUATION frames faster than they were parsed grew the process 230 MB a
  // second (3.4 GB in 15 s, kept after the connection closed). Bounded, reads wait for memory to free.
  builder.SetResourceQuota(
      grpc::ResourceQuota("attribution-server").Resize(static_cast<size_t>(config->max_transport_memory_bytes)));
  builder.RegisterService(&service);
  builder.RegisterService(&reflection);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(
      std::make_unique<UnparsableRequestInterceptorFactory>(service.call_observer(), service.auth()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    // The PEM blocks were checked, but gRPC parses them only here (a key that does not match the
    // certificate, a damaged block) and says which in its own log lines.
    const std::string tls = config->tls.cert_file.empty()
                                ? ""
                                : absl::StrCat(" (or gRPC refused tls cert_file \"", config->tls.cert_file,
                                               "\" / key_file \"", config->tls.key_file, "\": see its lines above)");
    return Fail(absl::UnavailableError(
        absl::StrCat("cannot listen on ", config->listen, " (in use, or not an address of this machine?)", tls)));
  }
  ServingHealth health(server->GetHealthCheckService(), attribution::v1::AttributionService::service_full_name());
  // gRPC reports port 1 for a unix socket: the address says more.
  const std::string where = IsUnixAddress(config->listen) ? config->listen : absl::StrCat("port ", port);
  // Which build, and the limits an operator compares the metrics with (in flight / max_concurrent_requests).
  WriteLogLine({{"event", "listening"},
                {"detail", absl::StrCat(where, config->tls.cert_file.empty() ? " plaintext" : " TLS",
                                        config->tls.client_ca_file.empty() ? "" : " (mutual)", ", metrics port ",
                                        metrics->get()->port(), ", open files limit ", open_files)},
                {"commit", attribution::BuildCommit()},
                {"max_concurrent_requests", config->max_concurrent_requests},
                {"intra_op_threads", intra_op_threads},
                {"intra_op_threads_for", threads_chosen_by},
                {"thread_stack", thread_stacks.Describe()},
                {"client_read_timeout_s", absl::ToDoubleSeconds(config->client_read_timeout)}});

  // A load that waits (network storage that stalls) is named in the log, and by a signal's line that ends it.
  absl::StatusOr<std::unique_ptr<ModelRegistry>> models = ModelRegistry::Load(config->models, [](const ModelSpec& m) {
    Log("model_loading", absl::StrCat(m.name, " from ", m.path));
    Lifecycle::Doing(absl::StrCat("loading model ", m.name, " from ", m.path));
  });
  if (!models.ok()) {
    server->Shutdown();
    return Fail(models.status());
  }
  Lifecycle::ServingStarted();
  metrics->get()->WatchModels(**models);
  service.SetModels(models->get());
  // Its watch reads the models until health.Stop() below, the one way on from here to the models' end.
  health.Serve(**models);
  std::map<std::string, std::string> name_of_digest;  // the first model holding each set of loaded weights
  for (const auto& m : (*models)->models()) {
    // Two names for one folder and settings load it twice (3 names of the default model: 425 -> 504 MB).
    if (const auto [first, fresh] = name_of_digest.emplace(m->model_digest, m->spec.name); !fresh) {
      Log("model_warning",
          absl::StrCat("model \"", m->spec.name, "\" holds the same weights as model \"", first->second,
                       "\" (model_digest ", m->model_digest, "), loaded again: the server keeps both copies"));
    }
    const engine::LoadOptions& loaded = m->model->options();
    Log("model_loaded",
        absl::StrCat(
            m->spec.name, " ", m->spec.path, " ", m->spec.dtype, " ", engine::QuantizationName(loaded.quantization),
            m->model->prequantized() ? " (as saved by bitsandbytes)" : "", " on ", m->spec.device, ", ",
            m->model->ResidentWeightBytes(), " weight bytes, weights_digest ", m->weights_digest, ", model_digest ",
            m->model_digest, " (", absl::StrFormat("%.2f", m->digest_seconds), " s to compute)"));
    WarnOfUnusedWeights(*m);
    std::vector<std::string> warnings = m->model->load_warnings();
    warnings.insert(warnings.end(), m->tokenizer->load_warnings().begin(), m->tokenizer->load_warnings().end());
    for (const std::string& warning : warnings) {
      Log("model_warning", absl::StrCat("model \"", m->spec.name, "\" (", m->spec.path, "): ", warning));
    }
    if (dynamic_cast<const engine::IdOnlyTokenizer*>(m->tokenizer.get()) != nullptr) {
      Log("model_warning", absl::StrCat("model \"", m->spec.name, "\" (", m->spec.path,
                                        "): no tokenizer.json or "
                                        "tokenizer.model: it serves token ids only"));
    }
  }
  std::optional<std::pair<dev_t, ino_t>> port_file;
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    // A script waits for the file: one that cannot be written ends the start, as a port in use does.
    // gRPC reports 1 as the port of a unix socket, which a script would connect to.
    const int grpc_port = IsUnixAddress(config->listen) ? 0 : port;
    absl::StatusOr<std::pair<dev_t, ino_t>> written =
        WritePortFile(absl::GetFlag(FLAGS_port_file), grpc_port, metrics->get()->port());
    if (!written.ok()) {
      ExitAfterLogLine({{"event", "startup_failed"}, {"severity", "ERROR"}, {"detail", written.status().message()}}, 1);
    }
    port_file = *written;
  }
  Log("serving", where);

  const Lifecycle::Stop stop = Lifecycle::WaitForStop();
  // A script that waits for the file to appear must not read this run's ports in the next one's start; a file
  // another server wrote there since is that server's (it was removed while that server served).
  if (struct stat now{}; port_file && ::stat(absl::GetFlag(FLAGS_port_file).c_str(), &now) == 0 &&
                         std::make_pair(now.st_dev, now.st_ino) == *port_file) {
    ::unlink(absl::GetFlag(FLAGS_port_file).c_str());
  }
  Log("draining", absl::StrCat(stop.reason, ", ", service.gate().in_flight(), " calls in flight"));
  // Refusals begin before NOT_SERVING is advertised: a caller that saw NOT_SERVING is refused.
  service.gate().StartDraining();
  health.StartDraining();  // its watch still refuses the work a stalled model holds, which could not finish
  const bool idle = service.gate().WaitIdle(config->grace_period);
  // Conversions still waiting end now, those running finish: their jobs use the models, the metrics and the
  // server, all gone before the service.
  service.StopConversions();
  health.Stop();
  // Stops the engines first, so calls still running past the grace period end UNAVAILABLE. Stopping waits for
  // each engine's running batch, which on a hung device never ends: the process would hang until killed. So
  // it stops them on another thread, and once a model is stalled (then or while waiting) it exits at once,
  // for its supervisor to restart it.
  std::atomic<bool> engines_stopped{false};
  std::thread stopper([&] {
    (*models)->Shutdown();
    engines_stopped = true;
  });
  while (!engines_stopped) {
    for (const auto& m : (*models)->models()) {
      if (!m->engine->stalled()) continue;
      ExitAfterLogLine(
          {{"event", "stopped"},
           {"severity", "ERROR"},
           {"detail",
            absl::StrCat("model \"", m->spec.name, "\" is stalled (its batch made no progress for ",
                         absl::FormatDuration(absl::Trunc(m->engine->TimeWithoutProgress(), absl::Milliseconds(1))),
                         "): exiting without waiting for it, calls cut off")}},
          1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopper.join();
  // Under a sanitizer the exit also checks for leaks (and slows everything): cut short, it would report none.
  Lifecycle::ExitWithin(kAddressSanitizer || kThreadSanitizer ? absl::Seconds(120) : absl::Seconds(15), stop.exit_code);
  // Answers handed to gRPC get 2 s to reach their clients; then what is left, health Watch streams (a client-side
  // health check holds one per channel) and reflection streams, which never end by themselves, is cancelled:
  // waiting for them added the whole 2 s to every drain.
  service.WaitCallsClosed(absl::Seconds(2));
  server->Shutdown(std::chrono::system_clock::now());
  // The metrics endpoint reads the models on every scrape: it stops while they are alive (declared
  // after it, they would be destroyed first).
  metrics->reset();
  Log("stopped", idle ? "every call finished" : "grace period over; remaining calls were cut off");
  return stop.exit_code;
}

}  // namespace
}  // namespace attribution::server

int main(int argc, char** argv) {
  // Started with stderr closed, the log's lines went into whatever the server opened next (a client's connection).
  attribution::OccupyClosedStandardDescriptors();
  // A crash (SIGSEGV, SIGABRT, ...) writes its signal and a symbolized stack trace of the failing
  // thread to the log before the process dies of the same signal; without it a crash leaves no trace.
  absl::InitializeSymbolizer(argv[0]);
  absl::FailureSignalHandlerOptions failure;
  // abseil writes the report to stderr itself, then hands it here: the log's queued lines, which a thread of their
  // own writes, go out after it rather than die with the process (for up to 1 s: that thread may be stuck).
  failure.writerfn = [](const char*) {
    static std::atomic<bool> flushed{false};
    if (!flushed.exchange(true)) attribution::server::FlushLogInSignalHandler(absl::Seconds(1));
  };
  absl::InstallFailureSignalHandler(failure);
  // A log reader that went away (a restarted shipper, a closed terminal's pipe) is EPIPE to the log's
  // writer, which drops lines and goes on; SIGPIPE's default killed the replica mid-call.
  std::signal(SIGPIPE, SIG_IGN);
  // A log file at the file size limit (`ulimit -f`) is EFBIG to the writer the same way; SIGXFSZ's default killed
  // the replica (status 153, no line said why) once its log reached the limit.
  std::signal(SIGXFSZ, SIG_IGN);
  // Before any thread starts (the signal watcher is the first): each takes the default stack when it starts.
  const attribution::server::ThreadStacks thread_stacks = attribution::server::RaiseSmallThreadStacks();
  // From here on: reading the config and model files (network storage can stall) ends at a signal too.
  attribution::server::Lifecycle::WatchSignals();
  // abseil's --help lists the flags of files named after the program (attribution-server.cc and
  // the like) and finds none; ours are defined in this file.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(file, "server/server_main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return attribution::VersionString("attribution-server"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Serves attribution.v1 (Attribute, AttributeComponents, Generate, Logprobs, ListModels) over gRPC.\n"
      "  attribution-server --model tiny=/models/tiny [--listen 0.0.0.0:50051]\n"
      "  attribution-server --config server.json");
  attribution::server::ReadArgvFlags(argc, argv);
  // A word that is no flag (`attribution-server /config/server.json`, the --config= forgotten) was ignored, and
  // the embedded default model served instead.
  if (const std::vector<char*> rest = absl::ParseCommandLine(argc, argv); rest.size() > 1) {
    std::fprintf(stderr,
                 "attribution-server: unexpected argument \"%s\" (flags are --name=value; a config file is "
                 "--config=FILE)\n",
                 rest[1]);
    return 1;
  }
  if (const auto& models = attribution::server::TheArgvFlags().models; !models.empty())
    absl::SetFlag(&FLAGS_model, models);
  // Everything below returns statuses; an exception that still escapes (a bug) ends startup with
  // status 1 and its message rather than std::terminate's abort.
  int exit_code = 1;
  try {
    exit_code = attribution::server::Serve(thread_stacks);
  } catch (const std::exception& e) {
    exit_code = attribution::server::Fail(
        absl::InternalError(absl::StrCat("unexpected error: ", attribution::engine::ExceptionMessage(e))));
  }
  // The last lines out, unless stderr stopped taking them: then the process exits without them.
  attribution::server::FlushLog(absl::Seconds(2));
  return exit_code;
}
