// SPDX-License-Identifier: Apache-2.0
// Unit tests of the server's parts that need no running server: config parsing and validation,
// bearer-token checks, the admission gate and the status mapping.
#include "server/server_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#include "server/bearer_auth.h"
#include "server/call_gate.h"
#include "server/grpc_status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::server {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

TEST(ServerConfig, ClientReadTimeoutDefaultsToTwoMinutesAndMustNotBeNegative) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [{"name": "m", "path": "/p"}]})", "test.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->client_read_timeout, absl::Seconds(120));
  config->client_read_timeout = absl::Seconds(-1);
  EXPECT_THAT(ValidateServerConfig(*config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client_read_timeout_seconds must be 0")));
  config->client_read_timeout = absl::Nanoseconds(1);  // the watchdog would spin
  EXPECT_THAT(ValidateServerConfig(*config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("or at least 0.1, and not negative")));
  config->client_read_timeout = absl::Seconds(0.1);
  EXPECT_THAT(ValidateServerConfig(*config), IsOk());
}

TEST(ServerConfig, MaxConnectionAgeDefaultsToFiveMinutesAndIsZeroOrAtLeastASecond) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [{"name": "m", "path": "/p"}]})", "test.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->max_connection_age, absl::Minutes(5));
  for (const absl::Duration age :
       {absl::Milliseconds(500), absl::Seconds(-1), absl::Hours(600), absl::InfiniteDuration()}) {
    config->max_connection_age = age;
    EXPECT_THAT(ValidateServerConfig(*config), StatusIs(absl::StatusCode::kInvalidArgument,
                                                        HasSubstr("max_connection_age_seconds must be 0 (never)")));
  }
  for (const absl::Duration age : {absl::ZeroDuration(), absl::Seconds(1), absl::Hours(24 * 24)}) {
    config->max_connection_age = age;
    EXPECT_THAT(ValidateServerConfig(*config), IsOk());
  }
}

TEST(ServerConfig, LogLevelDefaultsToEveryLineAndIsOneOfFour) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [{"name": "m", "path": "/p"}]})", "test.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->log_level, "debug");
  for (const char* level : {"debug", "INFO", "warning", "Error"}) {
    config->log_level = level;
    EXPECT_THAT(ValidateServerConfig(*config), IsOk()) << level;
  }
  for (const char* level : {"", "warn", "verbose", "info "}) {
    config->log_level = level;
    EXPECT_THAT(ValidateServerConfig(*config), StatusIs(absl::StatusCode::kInvalidArgument,
                                                        HasSubstr(absl::StrCat("log_level: unknown level \"", level,
                                                                               "\" (debug, info, warning or "
                                                                               "error)"))))
        << level;
  }
}

TEST(ServerConfig, ParsesEveryKey) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({
    "listen": "0.0.0.0:6000", "metrics_listen": "", "auth_tokens_file": "/t", "max_concurrent_requests": 7,
    "max_unread_answer_bytes": 9, "max_streams_per_connection": 11,
    "max_transport_memory_bytes": 33554432,
    "max_message_bytes": 1000, "max_top_k": 5, "grace_period_seconds": 2.5, "client_read_timeout_seconds": 0,
    "max_connection_age_seconds": 60, "log_level": "Warning",
    "tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"},
    "models": [{"name": "m", "path": "/p", "dtype": "bfloat16", "quantization": "nf4", "device": "cuda:1",
                "engine": {"max_batch_tokens": 4096, "max_batch_rows": 16, "max_queue_delay_seconds": 0.005,
                           "max_padding_waste": 0.5, "max_queued_rows": 100, "max_queued_tokens": 1000,
                           "max_queued_bytes": 1048576},
                "limits": {"max_steps": 64, "max_samples": 32, "max_features": 100, "max_exact_shapley_features": 8,
                           "max_tokens": 512, "max_new_tokens": 16, "max_choices": 12}}]})",
                                                          "test.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->listen, "0.0.0.0:6000");
  EXPECT_EQ(config->metrics_listen, "");
  EXPECT_EQ(config->max_concurrent_requests, 7);
  EXPECT_EQ(config->max_unread_answer_bytes, 9);
  EXPECT_EQ(config->max_streams_per_connection, 11);
  EXPECT_EQ(config->max_transport_memory_bytes, 33554432);
  EXPECT_EQ(config->grace_period, absl::Milliseconds(2500));
  EXPECT_EQ(config->client_read_timeout, absl::ZeroDuration());  // 0: no timeout
  EXPECT_EQ(config->max_connection_age, absl::Seconds(60));
  EXPECT_EQ(config->log_level, "Warning");
  EXPECT_EQ(config->tls.client_ca_file, "ca");
  ASSERT_EQ(config->models.size(), 1u);
  const ModelSpec& m = config->models[0];
  EXPECT_EQ(m.dtype, "bfloat16");
  EXPECT_EQ(m.quantization, "nf4");
  EXPECT_EQ(m.device, "cuda:1");
  EXPECT_EQ(m.engine.max_batch_tokens, 4096);
  EXPECT_EQ(m.engine.max_queue_delay, absl::Milliseconds(5));
  EXPECT_EQ(m.engine.max_queued_bytes, 1048576);
  EXPECT_EQ(m.limits.max_steps, 64);
  EXPECT_EQ(m.limits.max_new_tokens, 16);
  EXPECT_EQ(m.limits.max_choices, 12);
  EXPECT_THAT(ValidateServerConfig(*config), IsOk());
}

TEST(ServerConfig, BatchTimeBoundDefaultsByDeviceAndMustBePositive) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [
      {"name": "c", "path": "/p"}, {"name": "g", "path": "/p", "device": "cuda:0"},
      {"name": "s", "path": "/p", "engine": {"max_batch_seconds": 0.1, "max_uncontended_batch_seconds": 2}}]})",
                                                          "t.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->models[0].engine.max_batch_time, absl::Milliseconds(25));
  EXPECT_EQ(config->models[1].engine.max_batch_time, absl::Milliseconds(5));
  EXPECT_EQ(config->models[2].engine.max_batch_time, absl::Milliseconds(100));
  EXPECT_EQ(config->models[0].engine.max_uncontended_batch_time, absl::Milliseconds(250));
  EXPECT_EQ(config->models[2].engine.max_uncontended_batch_time, absl::Seconds(2));
  config->models[2].engine.max_batch_time = absl::ZeroDuration();
  EXPECT_THAT(ValidateServerConfig(*config).message(),
              HasSubstr("models[2].engine.max_batch_seconds must be positive"));
  config->models[2].engine.max_batch_time = absl::Seconds(1);
  config->models[2].engine.max_uncontended_batch_time = absl::ZeroDuration();
  EXPECT_THAT(ValidateServerConfig(*config).message(),
              HasSubstr("models[2].engine.max_uncontended_batch_seconds must be positive"));
}

// absl::Seconds reads NaN as an infinite duration and 1e-300 as 0, which some settings read as "never".
TEST(ServerConfig, SecondsAreFiniteAndZeroOrAtLeastANanosecond) {
  EXPECT_EQ(DurationOfSeconds(0, "x").value_or(absl::InfiniteDuration()), absl::ZeroDuration());
  EXPECT_EQ(DurationOfSeconds(1e-9, "x").value_or(absl::ZeroDuration()), absl::Nanoseconds(1));
  EXPECT_EQ(DurationOfSeconds(2.5, "x").value_or(absl::ZeroDuration()), absl::Milliseconds(2500));
  EXPECT_EQ(DurationOfSeconds(-1, "x").value_or(absl::ZeroDuration()), absl::Seconds(-1));  // ranges: Validate
  for (const double bad : {-1e-300, 1e-300, std::nan(""), std::numeric_limits<double>::infinity()}) {
    EXPECT_THAT(DurationOfSeconds(bad, "--grace_period_seconds"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--grace_period_seconds = ")))
        << bad;
  }
  EXPECT_THAT(ParseServerConfig(R"({"client_read_timeout_seconds": 1e-300, "models": []})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client_read_timeout_seconds = 1e-300: give")));
}

TEST(ServerConfig, LongBatchesPauseUnlessTurnedOffAndTheValueMustBeABoolean) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [
      {"name": "a", "path": "/p"}, {"name": "b", "path": "/p", "engine": {"pause_long_batches": false}}]})",
                                                          "t.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_TRUE(config->models[0].engine.pause_long_batches);
  EXPECT_FALSE(config->models[1].engine.pause_long_batches);
  EXPECT_THAT(
      ParseServerConfig(R"({"models": [{"name": "a", "path": "/p", "engine": {"pause_long_batches": 1}}]})", "t.json")
          .status()
          .message(),
      HasSubstr("pause_long_batches"));
}

TEST(ServerConfig, StallSecondsDefaultsToTwoMinutesAndIsAtLeastAQuarterSecond) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [
      {"name": "a", "path": "/p"}, {"name": "b", "path": "/p", "engine": {"stall_seconds": 30}}]})",
                                                          "t.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->models[0].engine.stall_time, absl::Seconds(120));
  EXPECT_EQ(config->models[1].engine.stall_time, absl::Seconds(30));
  for (const absl::Duration too_short : {absl::ZeroDuration(), absl::Milliseconds(20), absl::Milliseconds(249)}) {
    config->models[1].engine.stall_time = too_short;
    EXPECT_THAT(ValidateServerConfig(*config).message(), HasSubstr("models[1].engine.stall_seconds = "));
    EXPECT_THAT(ValidateServerConfig(*config).message(), HasSubstr("must be at least 0.25"));
  }
  config->models[1].engine.stall_time = absl::Milliseconds(250);
  EXPECT_THAT(ValidateServerConfig(*config), IsOk());
}

TEST(ServerConfig, ContendedIntraOpThreadsDefaultByDeviceAndNamedWhenOutOfRange) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig(R"({"models": [
      {"name": "c", "path": "/p"}, {"name": "g", "path": "/p", "device": "cuda:0"},
      {"name": "s", "path": "/p", "engine": {"contended_intra_op_threads": 0}}]})",
                                                          "t.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->models[0].engine.contended_intra_op_threads, engine::EngineOptions::kOneThreadFewer);
  EXPECT_EQ(config->models[1].engine.contended_intra_op_threads, 0);
  EXPECT_EQ(config->models[2].engine.contended_intra_op_threads, 0);
  EXPECT_THAT(ValidateServerConfig(*config), IsOk());
  config->models[2].engine.contended_intra_op_threads = -2;
  EXPECT_THAT(ValidateServerConfig(*config).message(),
              HasSubstr("models[2].engine.contended_intra_op_threads = -2 must be"));
}

TEST(ServerConfig, RejectsTyposWrongTypesAndBadValuesNamingThem) {
  struct Case {
    const char* json;
    const char* message;
  } cases[] = {
      {R"({"listne": "x"})", "unknown key \"listne\""},
      {R"({"models": [{"name": "m", "path": "/p", "engine": {"max_batch_token": 1}}]})",
       "s.json.models[0].engine has an unknown key"},
      {R"({"max_concurrent_requests": "many"})", "s.json.max_concurrent_requests must be an integer, got string"},
      {R"({"models": {}})", "models must be an array"},
      {R"([1, 2])", "top level must be an object"},
      {R"({"models": [)", "not valid JSON"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ParseServerConfig(c.json, "s.json").status().message(), HasSubstr(c.message)) << c.json;
  }
}

// nlohmann's get<int64_t> truncated 1.9 to 1 and turned 1e30 into INT64_MIN; iterating a string as an
// object reported an unknown key "".
TEST(ServerConfig, ValuesOfTheWrongKindNameTheKeyAndWhatWasExpected) {
  struct Case {
    const char* json;
    const char* message;
  } cases[] = {
      {R"({"max_concurrent_requests": 1.9})", "s.json.max_concurrent_requests must be an integer, got 1.9"},
      {R"({"models": [{"name": "m", "path": "/p", "limits": {"max_tokens": 1e30}}]})",
       "s.json.models[0].limits.max_tokens must be an integer, got 1e+30"},
      {R"({"max_message_bytes": 18446744073709551615})",
       "s.json.max_message_bytes must be an integer within int64, got 18446744073709551615"},
      {R"({"models": [{"name": "m", "path": "/p", "double_quantization": 1}]})",
       "s.json.models[0].double_quantization must be true or false, got 1"},
      {R"({"grace_period_seconds": "5"})", "s.json.grace_period_seconds must be a number, got string"},
      {R"({"tls": "x"})", "s.json.tls must be an object, got string"},
      {R"({"models": [{"name": "m", "path": "/p", "limits": [1, 2]}]})",
       "s.json.models[0].limits must be an object, got array"},
      {R"({"models": [{"name": "m", "path": "/p", "engine": null}]})",
       "s.json.models[0].engine must be an object, got null"},
      {R"({"models": null})", "s.json.models must be an array, got null"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ParseServerConfig(c.json, "s.json"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.json;
  }
  // An integral number written with an exponent (Helm's toJson writes 1000000 as 1e+06) is that integer.
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig(R"({"max_concurrent_requests": 1e3, "models": [{"name": "m", "path": "/p"}]})", "s.json");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->max_concurrent_requests, 1000);
}

// nlohmann keeps the last of repeated keys, so one of the two settings was silently dropped.
TEST(ServerConfig, RefusesARepeatedKeyNamingIt) {
  EXPECT_THAT(ParseServerConfig(R"({"listen": "127.0.0.1:1", "listen": "127.0.0.1:2"})", "s.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("s.json: the key \"listen\" appears twice")));
  EXPECT_THAT(ParseServerConfig(R"({"models": [{"name": "a", "path": "/p", "name": "b"}]})", "s.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("the key \"name\" appears twice")));
  // The same key in different objects is no repetition.
  EXPECT_THAT(ParseServerConfig(R"({"models": [{"name": "a", "path": "/p", "engine": {"max_batch_rows": 2}},
                                               {"name": "b", "path": "/p", "engine": {"max_batch_rows": 2}}]})",
                                "s.json"),
              IsOk());
}

TEST(ServerConfig, ValidationNamesTheField) {
  ServerConfig config;
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("no models"));
  config.models.push_back({.name = "a", .path = "/a"});
  config.models.push_back({.name = "a", .path = "/b"});
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("\"a\" appears twice"));
  config.models.pop_back();
  // Names go into every ListModels answer (proto strings: UTF-8) and are compared byte for byte.
  for (const auto& [name, problem] :
       std::vector<std::pair<std::string, std::string>>{{"ll\xff"
                                                         "ama",
                                                         "models[0].name is not UTF-8"},
                                                        {" a", "begins or ends with a space"},
                                                        {"a ", "begins or ends with a space"},
                                                        {"a\nb", "models[0].name holds a control character"}}) {
    config.models[0].name = name;
    EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr(problem)) << name;
  }
  config.models[0].name = "caf\u00e9 model";
  EXPECT_THAT(ValidateServerConfig(config), IsOk());
  config.models[0].limits.max_steps = 0;
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("models[0].limits.max_steps = 0"));
  config.models[0].limits.max_steps = 10;
  config.models[0].quantization = "fp8";
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("models[0].quantization: quantization \"fp8\""));
  config.models[0].quantization = "fp4";
  config.models[0].quantization_block_size = 48;
  EXPECT_THAT(ValidateServerConfig(config).message(),
              HasSubstr("models[0].quantization_block_size: 4-bit block size 48"));
  config.models[0].quantization_block_size = 128;
  // The 4-bit settings with another quantization were ignored.
  config.models[0].quantization = "int8";
  EXPECT_THAT(ValidateServerConfig(config).message(),
              HasSubstr("models[0].quantization_block_size: applies to nf4 / fp4 quantization only, not \"int8\""));
  config.models[0].quantization_block_size = 64;
  config.models[0].double_quantization = true;
  config.models[0].quantization = "none";
  EXPECT_THAT(ValidateServerConfig(config).message(),
              HasSubstr("models[0].double_quantization: applies to nf4 / fp4 quantization only, not \"none\""));
  config.models[0].quantization = "nf4";
  EXPECT_THAT(ValidateServerConfig(config), IsOk());
  config.max_top_k = 21;
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("max_top_k = 21"));
  config.max_top_k = 20;
  // --grace_period_seconds=nan was an infinite drain; 1e300 one past any pod's grace period.
  for (const double seconds : {std::nan(""), 1e300, -1.0}) {
    config.grace_period = absl::Seconds(seconds);
    EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("grace_period_seconds must lie between 0 and 86400"))
        << seconds;
  }
  config.grace_period = absl::Seconds(30);
  config.tls.client_ca_file = "ca.pem";
  EXPECT_THAT(ValidateServerConfig(config).message(), HasSubstr("client_ca_file (mutual TLS) needs cert_file"));
}

// Values that would start a broken server: a queue delay every call waits, a port gRPC wraps modulo 65536,
// a message limit gRPC's int cannot hold, limits whose products overflow, queue bounds that refuse everything.
TEST(ServerConfig, RefusesValuesThatWouldStartABrokenServer) {
  const auto invalid = [](const std::function<void(ServerConfig&)>& change) {
    ServerConfig config;
    config.models.push_back({.name = "m", .path = "/m"});
    change(config);
    return std::string(ValidateServerConfig(config).message());
  };
  EXPECT_EQ(invalid([](ServerConfig&) {}), "");
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_queue_delay = absl::Seconds(1e300); }),
              HasSubstr("models[0].engine.max_queue_delay_seconds = "));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_queue_delay = absl::Milliseconds(-1); }),
              HasSubstr("max_queue_delay_seconds = -0.001 is outside [0, 1]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.max_unread_answer_bytes = 0; }),
              HasSubstr("max_unread_answer_bytes = 0 must be positive"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.max_streams_per_connection = 0; }),
              HasSubstr("max_streams_per_connection = 0 is outside [1, 2147483647]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.max_streams_per_connection = int64_t{1} << 31; }),
              HasSubstr("max_streams_per_connection = 2147483648 is outside"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.max_transport_memory_bytes = 1000; }),
              HasSubstr("max_transport_memory_bytes = 1000 is outside [16777216, "));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_queued_tokens = 0; }),
              HasSubstr("models[0].engine.max_queued_tokens = 0 must be positive"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_queued_bytes = -7; }),
              HasSubstr("models[0].engine.max_queued_bytes = -7"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_padding_waste = 2; }),
              HasSubstr("max_padding_waste = 2 is outside [0, 1]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].limits.max_tokens = int64_t{1} << 60; }),
              HasSubstr("models[0].limits.max_tokens = 1152921504606846976 is outside [1, 16777216]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].limits.max_exact_shapley_features = 30; }),
              HasSubstr("max_exact_shapley_features = 30"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.max_message_bytes = int64_t{1} << 32; }),
              HasSubstr("max_message_bytes = 4294967296 is outside [1, 2147483647]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.listen = "127.0.0.1:70000"; }),
              HasSubstr("listen \"127.0.0.1:70000\": expected host:port with a port in [0, 65535]"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.listen = "localhost"; }), HasSubstr("listen \"localhost\""));
  EXPECT_EQ(invalid([](ServerConfig& c) { c.listen = "[::]:0"; }), "");
  EXPECT_EQ(invalid([](ServerConfig& c) { c.listen = "unix:/tmp/attribution.sock"; }), "");
  // `unix:$SOCK` with SOCK unset: gRPC bound an abstract socket no client reaches, and the server said serving.
  EXPECT_THAT(invalid([](ServerConfig& c) { c.listen = "unix:"; }),
              HasSubstr("listen \"unix:\": the socket's path is empty"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.listen = "unix://"; }), HasSubstr("path is empty"));
}

// Values --check_config passed and startup refused a moment later: they are now refused by the validation
// both run.
TEST(ServerConfig, RefusesWhatStartupWouldRefuseBeforeLoadingAnything) {
  const auto invalid = [](const std::function<void(ServerConfig&)>& change) {
    ServerConfig config;
    config.models.push_back({.name = "m", .path = "/m"});
    change(config);
    return std::string(ValidateServerConfig(config).message());
  };
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].dtype = "float8"; }),
              HasSubstr("models[0].dtype: dtype \"float8\" is not supported"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].dtype = "FLOAT32"; }), HasSubstr("models[0].dtype"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].device = "tpu"; }),
              HasSubstr("models[0].device \"tpu\" is not supported"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].device = "cpu:1"; }), HasSubstr("models[0].device"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].device = "cuda:x"; }), HasSubstr("models[0].device"));
  EXPECT_EQ(invalid([](ServerConfig& c) { c.models[0].device = "cuda:1"; }), "");
  EXPECT_THAT(invalid([](ServerConfig& c) { c.metrics_listen = "garbage:::"; }),
              HasSubstr("metrics_listen \"garbage:::\": expected host:port"));
  EXPECT_THAT(invalid([](ServerConfig& c) { c.metrics_listen = "127.0.0.1:99999"; }),
              HasSubstr("metrics_listen \"127.0.0.1:99999\""));
  EXPECT_EQ(invalid([](ServerConfig& c) { c.metrics_listen = ""; }), "");
  // The engine refused these only once the weights had loaded.
  EXPECT_THAT(invalid([](ServerConfig& c) { c.models[0].engine.max_batch_tokens = 4; }),
              HasSubstr("models[0].engine.max_batch_tokens = 4 must be at least 64"));
  EXPECT_EQ(invalid([](ServerConfig& c) { c.models[0].engine.max_batch_tokens = 64; }), "");
  // gRPC could not bind the port the metrics endpoint had taken.
  EXPECT_THAT(invalid([](ServerConfig& c) { c.metrics_listen = "0.0.0.0:50051"; }),
              HasSubstr("listen \"0.0.0.0:50051\" and metrics_listen \"0.0.0.0:50051\" use the same port 50051"));
  EXPECT_THAT(invalid([](ServerConfig& c) {
                c.listen = "127.0.0.1:9000";
                c.metrics_listen = "[::]:9000";
              }),
              HasSubstr("use the same port 9000"));
  // One address by two names: compared as text they passed, and gRPC's bind then failed.
  EXPECT_THAT(invalid([](ServerConfig& c) {
                c.listen = "localhost:9000";
                c.metrics_listen = "127.0.0.1:9000";
              }),
              HasSubstr("use the same port 9000"));
  EXPECT_EQ(invalid([](ServerConfig& c) {
              c.listen = "10.0.0.1:9000";
              c.metrics_listen = "10.0.0.2:9000";
            }),
            "");
  EXPECT_EQ(invalid([](ServerConfig& c) {
              c.listen = "127.0.0.1:0";
              c.metrics_listen = "127.0.0.1:0";
            }),
            "");
  EXPECT_EQ(invalid([](ServerConfig& c) { c.listen = "unix:/run/a:9464"; }), "");
}

TEST(BearerAuth, AcceptsListedTokensOnly) {
  test_support::TempDir dir;
  std::ofstream(dir.File("tokens")) << "# comment\n  alpha  \n\nbeta\n";
  absl::StatusOr<BearerAuth> auth = BearerAuth::Load(dir.File("tokens"));
  ASSERT_THAT(auth, IsOk());
  EXPECT_EQ(auth->size(), 2u);
  EXPECT_THAT(auth->Check("Bearer alpha"), IsOk());
  EXPECT_THAT(auth->Check("bearer beta"), IsOk());
  EXPECT_THAT(auth->Check("Bearer alph"), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth->Check("Basic alpha"), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth->Check(std::nullopt), StatusIs(absl::StatusCode::kUnauthenticated));
  std::ofstream(dir.File("empty")) << "# nothing\n";
  EXPECT_THAT(BearerAuth::Load(dir.File("empty")).status().message(), HasSubstr("holds no tokens"));
  // A token no client can send (gRPC's metadata limit) is refused at load, naming its line.
  std::ofstream(dir.File("long")) << "alpha\n" << std::string(BearerAuth::kMaxTokenBytes + 1, 't') << "\n";
  EXPECT_THAT(BearerAuth::Load(dir.File("long")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("long:2: a token of 4097 bytes")));
  std::ofstream(dir.File("longest")) << std::string(BearerAuth::kMaxTokenBytes, 't') << "\n";
  absl::StatusOr<BearerAuth> longest = BearerAuth::Load(dir.File("longest"));
  ASSERT_THAT(longest, IsOk());
  EXPECT_THAT(longest->Check("Bearer " + std::string(BearerAuth::kMaxTokenBytes, 't')), IsOk());
}

// A Windows editor's byte-order mark became part of the first token, which no client could then present;
// tokens with bytes gRPC metadata cannot carry loaded the same way, silently.
TEST(BearerAuth, AByteOrderMarkIsNoPartOfATokenAndUnsendableBytesAreRefused) {
  test_support::TempDir dir;
  std::ofstream(dir.File("bom")) << "\xEF\xBB\xBFtok-bom\r\ntok-two\r\n";
  absl::StatusOr<BearerAuth> bom = BearerAuth::Load(dir.File("bom"));
  ASSERT_THAT(bom, IsOk());
  EXPECT_THAT(bom->Check("Bearer tok-bom"), IsOk());
  EXPECT_THAT(bom->Check("Bearer tok-two"), IsOk());
  std::ofstream(dir.File("binary")) << "alpha\nbe\xFFta\n";
  EXPECT_THAT(BearerAuth::Load(dir.File("binary")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("binary:2: byte 2 of the token (0xff)")));
  std::ofstream(dir.File("nul")) << std::string("ga\0mma\n", 7);
  EXPECT_THAT(BearerAuth::Load(dir.File("nul")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nul:1: byte 2 of the token (0x00)")));
}

// Files may come through pipes, as a shell's `--auth_tokens_file <(vault read ...)` gives them; a named pipe
// nobody writes reads as empty at once (opening it waited for a writer forever), and a directory is named as
// one (it read as empty).
TEST(BearerAuth, TokensMayComeThroughAPipeButNotFromADirectory) {
  int ends[2];
  ASSERT_EQ(::pipe(ends), 0);
  ASSERT_EQ(::write(ends[1], "alpha\n", 6), 6);
  ::close(ends[1]);
  absl::StatusOr<BearerAuth> piped = BearerAuth::Load("/dev/fd/" + std::to_string(ends[0]));
  ::close(ends[0]);
  ASSERT_THAT(piped, IsOk());
  EXPECT_THAT(piped->Check("Bearer alpha"), IsOk());
  test_support::TempDir dir;
  const std::string fifo = dir.File("tokens.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THAT(BearerAuth::Load(fifo), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holds no tokens")));
  EXPECT_THAT(BearerAuth::Load(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a directory, not a file")));
}

// nlohmann throws out_of_range (not parse_error) for a number past a double: it escaped as an unexpected
// error naming no file.
TEST(ServerConfig, NumbersPastADoubleAreInvalidJsonNamingTheFile) {
  EXPECT_THAT(ParseServerConfig(R"({"max_concurrent_requests": 1e400})", "s.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("s.json: not valid JSON")));
}

// A value nested 1,000,000 deep overflowed the stack as the config was copied into its reader.
TEST(ServerConfig, NestingPastTheLimitIsRefusedNamingTheFile) {
  EXPECT_THAT(
      ParseServerConfig(R"({"engine": )" + std::string(1000000, '[') + std::string(1000000, ']') + "}", "s.json"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("s.json: objects and arrays nested more than 128")));
}

TEST(CallGate, RefusesOverTheLimitAndWhileDrainingAndWaitsForIdle) {
  CallGate gate(2);
  ASSERT_THAT(gate.Enter(), IsOk());
  ASSERT_THAT(gate.Enter(), IsOk());
  EXPECT_THAT(gate.Enter(), StatusIs(absl::StatusCode::kResourceExhausted));
  gate.StartDraining();
  EXPECT_THAT(gate.Enter(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(gate.WaitIdle(absl::ZeroDuration()));  // two calls still in flight
  std::thread leaver([&] {
    gate.Leave();
    gate.Leave();
  });
  EXPECT_TRUE(gate.WaitIdle(absl::InfiniteDuration()));
  leaver.join();
  EXPECT_EQ(gate.in_flight(), 0);
}

// With several models, each keeps limit / (4 x models) slots for its own calls: 16 calls on "busy" (of a limit
// of 16 over 2 models) took every slot, and every call to "quiet" was refused. The reserve moves with use: what
// "quiet" runs itself counts towards it; a call for no model (ListModels, which a batch job calls first) may
// take a reserved slot.
TEST(CallGate, EachOfSeveralModelsKeepsAReserveOfTheLimit) {
  CallGate gate(16, nullptr, {"busy", "quiet"});  // a reserve of 2 each
  for (int i = 0; i < 14; ++i) ASSERT_THAT(gate.Enter("busy"), IsOk()) << i;
  EXPECT_THAT(gate.Enter("busy"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("too many concurrent requests for model \"busy\" (14 in flight): the limit is 16, "
                                 "of which 2 are kept for the other models' calls")));
  ASSERT_THAT(gate.Enter(""), IsOk());
  gate.Leave("");
  ASSERT_THAT(gate.Enter("quiet"), IsOk());
  ASSERT_THAT(gate.Enter("quiet"), IsOk());
  EXPECT_THAT(gate.Enter("quiet"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("the limit is 16)")));
  gate.Leave("busy");
  gate.Leave("quiet");
  ASSERT_THAT(gate.Enter("quiet"), IsOk());  // quiet's 2 in flight: its reserve is in use by its own calls,
  ASSERT_THAT(gate.Enter("busy"), IsOk());   // so busy may take the last slot
  gate.Leave("quiet");
  gate.Leave("quiet");
  EXPECT_THAT(gate.Enter("busy"), StatusIs(absl::StatusCode::kResourceExhausted));  // 14, and 2 kept for quiet
  EXPECT_EQ(gate.in_flight(), 14);
  // One model alone keeps no reserve.
  CallGate alone(2, nullptr, {"only"});
  ASSERT_THAT(alone.Enter("only"), IsOk());
  ASSERT_THAT(alone.Enter("only"), IsOk());
  EXPECT_THAT(alone.Enter("only"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("the limit is 2)")));
}

// The in-flight gauge was set from a count read after each Enter / Leave, outside the gate's lock: two calls
// ending together could record 1 last and leave the gauge at 1 while idle. The gate reports each change
// under its lock, so the changes come in order, one call apart, and end at 0.
TEST(CallGate, ReportsEveryChangeInOrder) {
  std::vector<int64_t> seen;  // written under the gate's lock
  CallGate gate(64, [&seen](int64_t calls) { seen.push_back(calls); });
  std::vector<std::thread> callers;
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&gate] {
      for (int i = 0; i < 2000; ++i) {
        if (gate.Enter().ok()) gate.Leave();
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  ASSERT_EQ(seen.size(), 8u * 2000 * 2);
  for (size_t i = 1; i < seen.size(); ++i) ASSERT_EQ(std::abs(seen[i] - seen[i - 1]), 1) << "at change " << i;
  EXPECT_EQ(seen.back(), 0);
}

TEST(GrpcStatus, KeepsCodeAndMessage) {
  for (absl::StatusCode code :
       {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kCancelled, absl::StatusCode::kUnavailable,
        absl::StatusCode::kUnauthenticated, absl::StatusCode::kInternal}) {
    const grpc::Status s = ToGrpcStatus(absl::Status(code, "field: problem"));
    EXPECT_EQ(static_cast<int>(s.error_code()), static_cast<int>(code));
    EXPECT_EQ(s.error_message(), "field: problem");
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_STREQ(StatusCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
}

// A message past gRPC's metadata limit would turn the status into RESOURCE_EXHAUSTED on the caller's side.
TEST(GrpcStatus, CutsLongMessagesAtACharacterBoundary) {
  std::string message = "field: ";
  while (message.size() < 3 * kMaxStatusMessageBytes) message += "\xE2\x82\xAC";  // "€", three bytes each
  const grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError(message));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes + 40);
  EXPECT_THAT(s.error_message(), ::testing::EndsWith(absl::StrCat(" ... (", message.size(), " bytes in all)")));
  const std::string kept = s.error_message().substr(0, s.error_message().find(" ... ("));
  EXPECT_EQ(message.substr(0, kept.size()), kept);
  EXPECT_EQ((kept.size() - 7) % 3, 0u);  // whole "€"s only
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError(std::string(kMaxStatusMessageBytes, 'x'))).error_message(),
            std::string(kMaxStatusMessageBytes, 'x'));
}

}  // namespace
}  // namespace attribution::server
