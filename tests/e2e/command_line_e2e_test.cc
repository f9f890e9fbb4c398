// SPDX-License-Identifier: Apache-2.0
// The programs' command lines: --help lists each program's own flags (abseil's default lists only
// flags of files named after the program, which printed "No flags matched"), a repeated --model
// serves every model it names (abseil kept only the last), the CLI's --html to a path it cannot
// write is an error, and bad flags are usage errors (exit 2).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "tests/testing/fake_attribution_service.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

namespace v1 = ::attribution::v1;
using ::attribution::test_support::IsOk;
using ::testing::HasSubstr;
using ::testing::Not;

// Runs `command` through the shell; its exit status and everything it printed.
std::pair<int, std::string> RunCommand(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Runs `command` through the shell; its exit status, standard output and standard error apart.
struct Outputs {
  int code = -1;
  std::string out, err;
};
Outputs RunCommandApart(const std::string& command) {
  test_support::TempDir dir;
  Outputs outputs;
  FILE* pipe = ::popen(absl::StrCat(command, " 2>", dir.File("stderr")).c_str(), "r");
  if (pipe == nullptr) return {-1, "", "popen failed"};
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) outputs.out.append(buffer, n);
  const int status = ::pclose(pipe);
  outputs.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(dir.File("stderr"));
  outputs.err.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  return outputs;
}

struct Program {
  std::string binary;
  std::vector<std::string> flags;  // some of the program's own flags
};

void PrintTo(const Program& p, std::ostream* os) { *os << p.binary.substr(p.binary.rfind('/') + 1); }

class Help : public ::testing::TestWithParam<Program> {};

// abseil (Debian's 20220623) ends every usage request with exit status 1.
TEST_P(Help, ListsTheProgramsOwnFlags) {
  auto [code, output] = RunCommand(GetParam().binary + " --help");
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, Not(HasSubstr("No flags matched")));
  for (const std::string& flag : GetParam().flags) EXPECT_THAT(output, HasSubstr("--" + flag + " ")) << output;
  // Only its own: abseil's internal flags stay in --helpfull.
  EXPECT_THAT(output, Not(HasSubstr("--flagfile")));
}

INSTANTIATE_TEST_SUITE_P(
    EveryProgram, Help,
    ::testing::Values(Program{ATTRIBUTION_SERVER_BINARY,
                              {"listen", "model", "dtype", "allow_nonfinite_weights", "quantization_block_size",
                               "double_quantization"}},
                      Program{ATTRIBUTION_CLI_BINARY,
                              {"server", "prompt", "target", "model", "tls", "cert", "key", "token_file"}},
                      Program{ATTRIBUTION_BENCH_BINARY, {"server", "concurrency", "tls", "cert", "key", "token_file"}},
                      Program{ATTRIBUTION_BATCH_BINARY,
                              {"input", "output", "window", "shard_index", "tls", "cert", "key", "token_file"}}),
    [](const auto& info) {
      std::string name = info.param.binary.substr(info.param.binary.rfind('/') + 1);
      return name.substr(name.find('-') + 1);
    });

// A word that is no flag was ignored by the bench (the server's case is in CheckConfigRefusesWhatStartupRefuses);
// the CLI takes it as its command and the batch runner refuses it.
TEST(BenchCommandLine, AWordThatIsNoFlagIsAUsageError) {
  auto [code, output] = RunCommand(absl::StrCat(ATTRIBUTION_BENCH_BINARY, " --server=127.0.0.1:1 extra_positional"));
  EXPECT_EQ(code, 2) << output;
  EXPECT_THAT(output, HasSubstr("unexpected argument \"extra_positional\""));
}

// --version printed abseil's "Debug build (NDEBUG not #defined)" for Release builds, and nothing said which
// commit a replica runs: each program names it, as the server's listening line and metrics do.
TEST(ServerCommandLine, EveryProgramNamesTheCommitItWasBuiltFrom) {
  std::string commit;
  for (const char* program :
       {ATTRIBUTION_SERVER_BINARY, ATTRIBUTION_CLI_BINARY, ATTRIBUTION_BENCH_BINARY, ATTRIBUTION_BATCH_BINARY}) {
    const Outputs outputs = RunCommandApart(absl::StrCat(program, " --version"));
    EXPECT_EQ(outputs.code, 0) << program;
    const std::string name = std::filesystem::path(program).filename().string();
    ASSERT_THAT(outputs.out, ::testing::StartsWith(name + " commit ")) << outputs.out;
    EXPECT_THAT(outputs.out, Not(HasSubstr("NDEBUG")));
    const std::string words = outputs.out.substr(name.size() + 8);
    const std::string this_commit = words.substr(0, words.find(' '));
    EXPECT_FALSE(this_commit.empty());
    if (commit.empty()) commit = this_commit;
    EXPECT_EQ(this_commit, commit) << program;
  }
  auto server = test_support::ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT((*server)->Log(), HasSubstr("\"commit\":\"" + commit + "\""));
  EXPECT_EQ(test_support::MetricValue((*server)->metrics_port(), "attribution_build_info{commit=\"" + commit + "\"}"),
            1);
}

// A proxy set in the environment (Docker copies a user's into every container) took calls to this machine too: the
// image's HEALTHCHECK (`attribution-cli health --server=127.0.0.1:50051`) failed through a proxy that refused them.
TEST(CliCommandLine, CallsToThisMachineBypassAProxyFromTheEnvironment) {
  auto server = test_support::ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  // Nothing listens on port 1: a call that went through the proxy would fail UNAVAILABLE.
  const std::string proxies =
      "http_proxy=http://127.0.0.1:1 https_proxy=http://127.0.0.1:1 grpc_proxy=http://127.0.0.1:1 ";
  for (const std::string host : {"127.0.0.1", "localhost", "LOCALHOST", "[::ffff:127.0.0.1]"}) {
    const Outputs health = RunCommandApart(
        absl::StrCat(proxies, ATTRIBUTION_CLI_BINARY, " health --server=", host, ":", (*server)->port()));
    EXPECT_EQ(health.code, 0) << host << ": " << health.err;
    EXPECT_THAT(health.out, HasSubstr("SERVING")) << host;
  }
}

// Nothing tied a CLI call to its server log line: --request_id is sent as x-request-id, which the line carries.
TEST(CliCommandLine, ARequestIdReachesTheServersLogLine) {
  auto server = test_support::ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  const std::string cli = absl::StrCat(ATTRIBUTION_CLI_BINARY, " logprobs --server=", (*server)->address(),
                                       " --prompt='Is it warm?' --target=' Yes'");
  const Outputs sent = RunCommandApart(cli + " --request_id=cli-call-7");
  EXPECT_EQ(sent.code, 0) << sent.err;
  EXPECT_THAT((*server)->LogOnceItHolds("cli-call-7"), HasSubstr("\"request_id\":\"cli-call-7\""));
  const Outputs refused = RunCommandApart(cli + " --request_id='caf\xc3\xa9'");  // gRPC metadata is ASCII
  EXPECT_NE(refused.code, 0);
  EXPECT_THAT(refused.err, HasSubstr("request_id"));
}

TEST(ServerCommandLine, ARepeatedModelFlagServesEveryModel) {
  const std::string dir = test_support::DemoModelDir();
  // A comma starts a model only where NAME= follows: a folder named "demo,copy" was "demo" and a model "copy"
  // refused as not NAME=PATH.
  test_support::TempDir links;
  const std::string with_comma = links.File("demo,copy");
  ASSERT_EQ(::symlink(dir.c_str(), with_comma.c_str()), 0);
  auto server = test_support::ServerProcess::Start(
      {"--model=a=" + dir + ",b=" + dir, "--model", "c=" + dir + ",d=" + with_comma + ",e=" + dir});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  absl::StatusOr<std::vector<client::ModelInfo>> models = (*client)->ListModels();
  ASSERT_THAT(models, IsOk());
  std::vector<std::string> names;
  for (const client::ModelInfo& model : *models) names.push_back(model.name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("a", "b", "c", "d", "e"));
  // One folder under three names is held three times: the log says so (once per later name).
  EXPECT_THAT((*server)->Log(), HasSubstr("model \\\"b\\\" holds the same weights as model \\\"a\\\""));
  EXPECT_THAT((*server)->Log(), HasSubstr("model \\\"c\\\" holds the same weights as model \\\"a\\\""));
}

// abseil keeps a repeated flag's last value, and argv does not show a --flagfile's lines: a flagfile naming two
// models served only the second.
TEST(ServerCommandLine, EveryModelOfAFlagfileIsServed) {
  test_support::TempDir dir;
  const std::string model = test_support::DemoModelDir();
  std::ofstream(dir.File("nested")) << "--model=d=" << model << "\n";
  std::ofstream(dir.File("flags")) << "--model=a=" << model << "\n# a comment\n--model=b=" << model
                                   << "\n--flagfile=" << dir.File("nested") << "\n";
  auto [code, output] = RunCommand(
      absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config --flagfile=", dir.File("flags"), " --model=c=", model));
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat("4 model(s): a (", model, " on cpu) b (")));
  EXPECT_THAT(output, HasSubstr(absl::StrCat("d (", model, " on cpu)")));
}

// Per-model flags beside a config file's models and no --model applied to nothing, without a word.
TEST(ServerCommandLine, PerModelFlagsBesideAConfigsModelsAloneAreRefused) {
  test_support::TempDir dir;
  const std::string config = dir.File("server.json");
  std::ofstream(config) << R"({"models": [{"name": "a", "path": ")" << test_support::DemoModelDir() << R"("}]})";
  const std::string check = absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config --config=", config);
  for (const char* flag : {"--dtype=bfloat16", "--max_tokens=10", "--quantization=int8"}) {
    auto [code, output] = RunCommand(absl::StrCat(check, " ", flag));
    EXPECT_EQ(code, 1) << flag << ": " << output;
    EXPECT_THAT(output, HasSubstr("applies to --model models, and none is given")) << flag;
  }
  auto [code, output] = RunCommand(absl::StrCat(check, " --dtype=bfloat16 --model=b=", test_support::DemoModelDir()));
  EXPECT_EQ(code, 0) << output;  // the flags go with --model b, as --help says
}

// --check_config said "config ok" for settings startup refused a moment later; it now reads what startup
// reads before loading a model (the model's config.json, TLS and token files) and checks the same values.
TEST(ServerCommandLine, CheckConfigRefusesWhatStartupRefuses) {
  test_support::TempDir dir;
  const std::string garbage = dir.File("garbage.pem");
  std::ofstream(garbage) << "not a certificate\n";
  // Model folders whose config.json startup cannot read as a model's (not JSON; an architecture it lacks).
  std::filesystem::create_directories(dir.File("not-json"));
  std::ofstream(dir.File("not-json/config.json")) << "{";
  std::filesystem::create_directories(dir.File("bert"));
  std::ofstream(dir.File("bert/config.json")) << R"({"model_type": "bert"})";
  const std::string check = absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config ");
  const std::pair<std::string, std::string> cases[] = {
      {"--model=m=" + dir.File("missing"),
       "model \"m\" (" + dir.File("missing") + "): " + dir.File("missing/config.json") + ": cannot open"},
      {"--model=m=" + dir.File("not-json"), "model \"m\" (" + dir.File("not-json") + "): "},
      {"--model=m=" + dir.File("bert"), "\"bert\""},
      {"--dtype=FLOAT32", "models[0].dtype: dtype \"FLOAT32\" is not supported"},
      {"--device=cpu:1", "models[0].device \"cpu:1\" is not supported"},
      {"--listen=127.0.0.1:70000", "listen \"127.0.0.1:70000\""},
      {"--metrics_listen=garbage:::", "metrics_listen \"garbage:::\""},
      {"--auth_tokens_file=" + dir.File("no-tokens"), dir.File("no-tokens")},
      {"--tls_cert=" + dir.File("no-cert") + " --tls_key=" + garbage, "tls cert_file: "},
      {"--tls_cert=" + garbage + " --tls_key=" + garbage, "tls cert_file \"" + garbage + "\" holds no PEM certificate"},
      {"--listen=127.0.0.1:9000 --metrics_listen=0.0.0.0:9000", "use the same port 9000"},
      // A word that is no flag (the --config= forgotten) was ignored, and the embedded default model served.
      {dir.File("server.json"), "unexpected argument \"" + dir.File("server.json") + "\""},
      {"-- --port_file=x", "unexpected argument \"--port_file=x\""},
      // A folder as the port file was refused only after every model had loaded.
      {"--port_file=" + dir.path(), "--port_file " + dir.path() + ": a directory, not a file"},
      // A file as the port file's folder (a typo) passed, as access(2) said it was writable.
      {"--port_file=" + garbage + "/ports", "--port_file " + garbage + "/ports: cannot write in " + garbage},
  };
  for (const auto& [flags, message] : cases) {
    auto [code, output] = RunCommand(check + flags);
    EXPECT_EQ(code, 1) << flags << ": " << output;
    EXPECT_THAT(output, HasSubstr(message)) << flags;
  }
  auto [code, output] = RunCommand(check);
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("config ok"));
  // A config checked away from its machine (a ConfigMap in CI): the values only.
  auto [values_code, values_output] = RunCommand(check + "--check_config_files=false --model=m=" + dir.File("missing") +
                                                 " --tls_cert=" + garbage + " --tls_key=" + garbage);
  EXPECT_EQ(values_code, 0) << values_output;
  auto [bad_code, bad_output] = RunCommand(check + "--check_config_files=false --device=tpu");
  EXPECT_EQ(bad_code, 1) << bad_output;
}

// A batch token budget below the engine's floor passed --check_config, and startup refused it only after
// the weights had loaded (minutes for a large model), naming min_batch_tokens, which no config has.
TEST(ServerCommandLine, CheckConfigRefusesATokenBudgetTheEngineRefuses) {
  test_support::TempDir dir;
  const std::string config = dir.File("server.json");
  std::ofstream(config) << R"({"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "models": [)"
                        << R"({"name": "m", "path": "/m", "engine": {"max_batch_tokens": 16}}]})";
  auto [code, output] = RunCommand(
      absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config --check_config_files=false --config ", config));
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, HasSubstr("models[0].engine.max_batch_tokens = 16 must be at least 64"));
}

// A flag given on the command line overrides the config file even at its default value; it used to
// count only when it differed from its default, so the file won.
TEST(ServerCommandLine, AFlagAtItsDefaultValueStillOverridesTheConfigFile) {
  test_support::TempDir dir;
  const std::string config = dir.File("server.json");
  std::ofstream(config)
      << R"({"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "models": [{"name": "m", "path": "/m"}]})";
  auto [code, output] =
      RunCommand(absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config --check_config_files=false", " --config ",
                              config, " --listen 0.0.0.0:50051 --metrics_listen=0.0.0.0:9464"));
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("config ok: listen 0.0.0.0:50051, metrics 0.0.0.0:9464"));
  auto [file_code, file_output] = RunCommand(
      absl::StrCat(ATTRIBUTION_SERVER_BINARY, " --check_config --check_config_files=false --config ", config));
  EXPECT_EQ(file_code, 0) << file_output;
  EXPECT_THAT(file_output, HasSubstr("config ok: listen 127.0.0.1:0, metrics 127.0.0.1:0"));
}

// gRPC sets SO_REUSEPORT by default: a second server on a port in use started, and the two split the
// connections (a client saw either server's models at random). It is a startup error naming the address.
TEST(ServerCommandLine, APortInUseIsAStartupError) {
  auto first = test_support::ServerProcess::Start({});
  ASSERT_THAT(first, IsOk());
  auto [code, log] = test_support::ServerProcess::RunToExit({"--listen=" + (*first)->address()}, absl::Seconds(60));
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log, HasSubstr("cannot listen on " + (*first)->address() + " (in use"));
}

// A TLS certificate that is not PEM was reported only as "cannot listen on ADDR".
TEST(ServerCommandLine, ATlsFileThatIsNotPemIsNamedAtStartup) {
  test_support::TempDir dir;
  const std::string garbage = dir.File("garbage.pem");
  std::ofstream(garbage) << "-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n";
  auto [code, log] =
      test_support::ServerProcess::RunToExit({"--tls_cert=" + garbage, "--tls_key=" + garbage}, absl::Seconds(30));
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log,
              HasSubstr("tls cert_file \"" + garbage + "\": its first certificate does not parse (bad base64 decode)"));
}

// An --html report that cannot be written is an error naming the path (it exited 0 without a word), and
// the result is printed all the same (it was lost).
TEST(CliCommandLine, AnHtmlReportThatCannotBeWrittenIsAnError) {
  auto server = test_support::ServerProcess::Start({});
  ASSERT_THAT(server, IsOk());
  test_support::TempDir dir;
  const std::string attribute = absl::StrCat(ATTRIBUTION_CLI_BINARY, " attribute --server=", (*server)->address(),
                                             " --prompt='The cup is red. Q: Is it warm? A:' --target=' Yes'"
                                             " --method=saliency --html=");
  for (const std::string& path : {dir.path(), dir.File("missing/report.html")}) {
    const Outputs outputs = RunCommandApart(attribute + path);
    EXPECT_EQ(outputs.code, 1) << outputs.err;
    EXPECT_THAT(outputs.err, HasSubstr("--html: cannot write " + path));
    EXPECT_THAT(outputs.out, HasSubstr("target tokens (1)"));
    EXPECT_THAT(outputs.out, HasSubstr("attribution\n1 "));  // the ranked table
  }
  auto [code, output] = RunCommand(attribute + dir.File("report.html"));
  EXPECT_EQ(code, 0) << output;
  // What is no file is written as it is (the report goes through a temporary and a rename to a file).
  for (const std::string& device : {std::string("/dev/null"), std::string("/dev/stdout")}) {
    const Outputs outputs = RunCommandApart(attribute + device);
    EXPECT_EQ(outputs.code, 0) << device << "\n" << outputs.err;
  }
  EXPECT_THAT(RunCommandApart(attribute + "/dev/stdout").out, HasSubstr("</html>"));
  // stdout a pipe whose reader is gone before the answer comes (SIGPIPE as the result is printed): the
  // report is written all the same (it was lost without a word).
  RunCommand(attribute + dir.File("piped.html") + " | true");
  const absl::StatusOr<std::string> piped = client::ReadTextFile(dir.File("piped.html"));
  ASSERT_THAT(piped, IsOk());
  EXPECT_THAT(*piped, HasSubstr("</html>"));
  const std::string components = absl::StrCat(
      ATTRIBUTION_CLI_BINARY, " components --server=", (*server)->address(),
      " --clean='When Mary and John went out, John gave a drink to'"
      " --corrupted='When Mary and John went out, Mary gave a drink to' --answer=' Mary' --wrong_answer=' John'"
      " --sites=attn_out --html=",
      dir.path());
  const Outputs outputs = RunCommandApart(components);
  EXPECT_EQ(outputs.code, 1) << outputs.err;
  EXPECT_THAT(outputs.err, HasSubstr("--html: cannot write " + dir.path()));
  EXPECT_THAT(outputs.out, HasSubstr("strongest:"));
}

// What the tools print is their result: a stdout that does not take it (a full disk, a closed descriptor) fails
// the command naming why. Every command exited 0 and left an empty file behind.
TEST(CliCommandLine, AStandardOutputThatCannotBeWrittenFailsTheCommand) {
  auto server = test_support::ServerProcess::Start({});
  ASSERT_THAT(server, IsOk());
  const std::string server_flag = " --server=" + (*server)->address();
  for (const std::string& command :
       {absl::StrCat(ATTRIBUTION_CLI_BINARY, " models --json", server_flag),
        // An answer larger than stdout's buffer fails as it is printed, not at the last flush.
        absl::StrCat(ATTRIBUTION_CLI_BINARY,
                     " attribute --json --method=saliency --prompt='The cup is red. Q: Is it warm? A:' --target=' Yes'",
                     server_flag),
        absl::StrCat(ATTRIBUTION_CLI_BINARY, " health", server_flag),
        absl::StrCat(ATTRIBUTION_CLI_BINARY, " generate --prompt='Q: Is the kettle warm? A:' --max_new_tokens=3",
                     server_flag),
        absl::StrCat(ATTRIBUTION_CLI_BINARY,
                     " generate --stream --prompt='Q: Is the kettle warm? A:' --max_new_tokens=3", server_flag),
        absl::StrCat(ATTRIBUTION_BENCH_BINARY, " --duration=0.5 --concurrency=1 --mix=logprobs=1 --json",
                     server_flag)}) {
    for (const auto& [redirect, why] :
         {std::pair{" >/dev/full", "No space left on device"}, std::pair{" >&-", "Bad file descriptor"}}) {
      const Outputs outputs = RunCommandApart(command + redirect);
      EXPECT_EQ(outputs.code, 1) << command << redirect << "\n" << outputs.err;
      EXPECT_THAT(outputs.err, HasSubstr(absl::StrCat("cannot write the standard output: ", why)))
          << command << redirect;
      EXPECT_THAT(outputs.err, Not(HasSubstr("Invalid argument"))) << "stdout was another file's number";
    }
  }
}

// A load none of whose calls succeeded measured nothing, yet exited 0 (95,557 calls to a port where nothing
// listened); its table still shows their codes.
TEST(BenchCommandLine, ALoadWithoutOneSucceededCallExitsOne) {
  const Outputs outputs = RunCommandApart(absl::StrCat(
      ATTRIBUTION_BENCH_BINARY, " --server=127.0.0.1:1 --model=demo --duration=0.3 --concurrency=1 --mix=logprobs=1"));
  EXPECT_EQ(outputs.code, 1) << outputs.err;
  EXPECT_THAT(outputs.err, HasSubstr("no call succeeded"));
  EXPECT_THAT(outputs.out, HasSubstr("UNAVAILABLE"));
}

// --keepalive below the second a server permits between pings would get the connection closed mid-call.
TEST(CliCommandLine, AKeepaliveBelowASecondIsRefused) {
  const Outputs outputs =
      RunCommandApart(absl::StrCat(ATTRIBUTION_CLI_BINARY, " models --server=127.0.0.1:1 --keepalive=0.5"));
  EXPECT_NE(outputs.code, 0);
  EXPECT_THAT(outputs.err, HasSubstr("--keepalive: 0.5 is neither 0 (off) nor between 1 and 86400 s"));
}

// Bad flag values and unknown flags exited 1 (abseil's parser), as did a bad --range, where the CLI
// documents 2 for usage errors; --timeout=nan meant no deadline at all, and -1 a DEADLINE_EXCEEDED (exit 1);
// an empty --server failed inside gRPC ("Failed to create secure client channel", exit 1).
TEST(CliCommandLine, BadFlagsAreUsageErrors) {
  const std::pair<std::string, std::string> cases[] = {
      {"--n_steps=nan", "--n_steps: illegal value \"nan\""},
      {"--top_k=3.5", "--top_k: illegal value \"3.5\""},
      {"--json=perhaps", "--json: illegal value \"perhaps\""},
      {"--tls=maybe", "--tls: illegal value \"maybe\""},
      {"--no_such_flag", "unknown flag --no_such_flag"},
      {"--timeout=nan", "--timeout: give a number of seconds above 0, not nan"},
      {"--timeout=-1", "--timeout: give a number of seconds above 0, not -1"},
      {"--timeout=0", "--timeout: give a number of seconds above 0, not 0"},
      {"--prompt", "--prompt: give a value"},
      {"--range=3", "--range: expected BEGIN:END token indices, not \"3\""},
      {"--range=a:b", "--range: expected BEGIN:END token indices, not \"a:b\""},
      {"--range=5:2", "--range: expected 0 <= BEGIN < END (prompt tokens BEGIN to END - 1), not \"5:2\""},
      {"--range=3:3", "--range: expected 0 <= BEGIN < END"},
      {"--range=-1:3", "--range: expected 0 <= BEGIN < END"},
      {"--server=", "--server: give the server's address (host:port)"},
      {"--server=' '", "--server: give the server's address (host:port)"},
      {"--stop_token_ids=2,x", "--stop_token_ids: \"x\" is not a token id (comma-separated integers)"},
      // Stop strings split at commas that are not escaped, and each entry's escapes are read.
      {"--stop='a\\,\\q'", "--stop: \"a,\\q\": "},
      {"--stop='a\\,b,\\q'", "--stop: \"\\q\": "},
      {"--stop='ok,\\'", "--stop: \"\\\": "},
      {"--stop='No,'", "--stop: entry 2 is empty (a comma with nothing after it, or two in a row)"},
      // How the connection flags combine: found before connecting (exit 1 before, as a failed call).
      {"--ca=/x", "--ca: given without --tls (the connection would be plaintext)"},
      {"--tls --cert=/x", "--cert: give --cert and --key together for mutual TLS, or neither"},
  };
  for (const auto& [flag, message] : cases) {
    auto [code, output] = RunCommand(absl::StrCat(ATTRIBUTION_CLI_BINARY, " attribute --server=127.0.0.1:1 ", flag));
    EXPECT_EQ(code, 2) << flag << ": " << output;
    EXPECT_THAT(output, HasSubstr("attribution-cli: " + message)) << flag;
  }
}

// A flag naming an unknown method (metric, rule, ...) reached the call and came back INVALID_ARGUMENT, exit 1.
// It is a usage error found before any call (no server listens here), naming the flag as typed and the
// values the client library accepts.
TEST(CliCommandLine, UnknownNamesInFlagsAreUsageErrors) {
  const std::string unknown = "unknown value \"bogus\" (one of: ";
  const std::tuple<std::string, std::string, std::string> cases[] = {
      {"attribute", "--method=bogus", "--method: " + unknown + "attn_lrp, cp_lrp, feature_ablation, "},
      {"attribute", "--quantity=bogus", "--quantity: " + unknown + "log_prob, logit, prob)"},
      {"attribute", "--rule=bogus", "--rule: " + unknown + "default, fejer2, gausslegendre, "},
      {"attribute", "--baseline=bogus", "--baseline: " + unknown + "bos, default, eos, pad, unk, zero or a token id)"},
      {"attribute", "--target_tokenization=bogus", "--target_tokenization: " + unknown + "continuation, separate)"},
      {"logprobs", "--target_tokenization=bogus", "--target_tokenization: " + unknown + "continuation, separate)"},
      {"components", "--metric=bogus", "--metric: " + unknown + "log_prob, logit_difference, "},
      {"components", "--component_method=bogus", "--component_method: " + unknown + "activation_patching, "},
      {"components", "--direction=bogus", "--direction: " + unknown + "denoising, noising)"},
      {"components", "--sites=heads,bogus", "--sites: " + unknown + "attn_out, heads, mlp_out, resid_pre)"},
      {"components", "--granularity=bogus", "--granularity: " + unknown + "default, layer_head, "},
      {"components", "--rule=bogus", "--rule: " + unknown + "default, fejer2, "},
      {"generate", "--load_balancing=bogus", "--load_balancing: \"bogus\" is not pick_first or round_robin"},
      // Each command's method flag: components ran activation patching beside --method without a word.
      {"components", "--method=layer_integrated_gradients",
       "--method: components reads its method from --component_method (--method is attribute's)"},
      {"attribute", "--component_method=activation_patching",
       "--component_method: attribute reads its method from --method"},
  };
  for (const auto& [command, flag, message] : cases) {
    auto [code, output] = RunCommand(absl::StrCat(ATTRIBUTION_CLI_BINARY, " ", command,
                                                  " --server=127.0.0.1:1 --model=m --prompt=x --target=y"
                                                  " --clean=a --corrupted=b --answer=c ",
                                                  flag));
    EXPECT_EQ(code, 2) << command << " " << flag << ": " << output;
    EXPECT_THAT(output, HasSubstr("attribution-cli: " + message)) << command << " " << flag;
  }
  // Names are read as the library reads them: in any case.
  auto [code, output] = RunCommand(absl::StrCat(ATTRIBUTION_CLI_BINARY,
                                                " attribute --server=127.0.0.1:1 --timeout=1 --model=m --prompt=x"
                                                " --method=Saliency --quantity=PROB"));
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, HasSubstr("UNAVAILABLE")) << output;
}

// Text that is not UTF-8 from a server (C++ protobuf only logs it as it serializes) stops the client's
// parse at that field, and gRPC's callback API kept the message cut short under an OK status: the fields
// after it read as empty and the CLI exited 0. The answer is now DATA_LOSS naming the RPC, exit 1.
TEST(CliCommandLine, AnAnswerWithTextThatIsNotUtf8IsDataLoss) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  v1::Token* token = fake.service.generate.add_tokens();
  token->set_id(7);
  token->set_text(std::string("a\xff") + "b");
  fake.service.generate.set_text("ab");
  const Outputs generate = RunCommandApart(
      absl::StrCat(ATTRIBUTION_CLI_BINARY, " generate --json --model=demo --prompt=x --server=", fake.address()));
  EXPECT_EQ(generate.code, 1) << generate.out;
  EXPECT_THAT(generate.err, HasSubstr("DATA_LOSS: the answer to /attribution.v1.AttributionService/Generate"));
  EXPECT_EQ(generate.out, "");
}

// Text from a server reached the terminal raw: a token, a model name or an error message holding ESC or
// BEL could clear, recolour or retitle it. The CLI's human-readable output shows control characters as
// escapes (--json keeps the text exact).
TEST(CliCommandLine, ShowsControlCharactersFromAServerVisibly) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  const std::string hostile = "\x1b]0;pwned\x07\x1b[2J";
  const std::string shown = "\\e]0;pwned\\x07\\e[2J";
  fake.service.models.add_models()->set_name("m" + hostile);
  fake.service.generate.add_tokens()->set_text(hostile);
  fake.service.generate.set_text(hostile + "\nupon");
  v1::TokenLogprob* scored = fake.service.logprobs.add_target();
  scored->mutable_token()->set_text(hostile);
  scored->add_top()->set_text(hostile);
  for (const char* command : {"models", "generate", "generate --stream", "logprobs --top_k=1"}) {
    const Outputs outputs = RunCommandApart(absl::StrCat(
        ATTRIBUTION_CLI_BINARY, " ", command, " --server=", fake.address(), " --model=m --prompt=x --target=y"));
    EXPECT_EQ(outputs.code, 0) << command << ": " << outputs.err;
    EXPECT_EQ((outputs.out + outputs.err).find_first_of("\x1b\x07"), std::string::npos)
        << command << ": " << outputs.out;
    EXPECT_THAT(outputs.out, HasSubstr(shown)) << command;
  }
  // A message naming the server's text: two models of one name are DATA_LOSS.
  fake.service.models.add_models()->set_name("m" + hostile);
  const Outputs failed = RunCommandApart(absl::StrCat(ATTRIBUTION_CLI_BINARY, " models --server=", fake.address()));
  EXPECT_EQ(failed.code, 1) << failed.err;
  EXPECT_EQ(failed.err.find_first_of("\x1b\x07"), std::string::npos) << failed.err;
  EXPECT_THAT(failed.err, HasSubstr(shown));
}

// A --pairs or --token_file path that is a directory read as an empty file: "give at least one
// clean/corrupted pair" from the server, or "the first line holds no token".
TEST(CliCommandLine, AnInputFileThatCannotBeReadIsNamed) {
  test_support::TempDir dir;
  const std::string cli = absl::StrCat(ATTRIBUTION_CLI_BINARY, " components --server=127.0.0.1:1 --model=m ");
  const std::pair<std::string, std::string> cases[] = {
      {"--pairs=" + dir.path(), "--pairs: " + dir.path() + ": a directory, not a file"},
      {"--pairs=" + dir.File("missing"), "--pairs: " + dir.File("missing") + ": cannot open: No such file"},
      {"--pairs=/dev/null", "--pairs: /dev/null holds no pairs"},
      {"--clean=a --corrupted=b --token_file=" + dir.path(),
       "--token_file: " + dir.path() + ": a directory, not a file"},
      // A device read without end (2 GB in 6 s), and a pipe without a writer held the open forever.
      {"--clean=a --corrupted=b --token_file=/dev/zero", "--token_file: /dev/zero: more than 256 MiB"},
      {"--clean=a --corrupted=b --tls --ca=/dev/zero", "/dev/zero: more than 256 MiB"},
      {"--clean=a --corrupted=b --token_file=" + dir.File("fifo"), "holds no token"},
  };
  ASSERT_EQ(::mkfifo(dir.File("fifo").c_str(), 0600), 0);
  for (const auto& [flags, message] : cases) {
    auto [code, output] = RunCommand(cli + flags);
    EXPECT_EQ(code, 1) << flags << ": " << output;
    EXPECT_THAT(output, HasSubstr(message)) << flags;
  }
  // An id past int64 went out as -1 (nlohmann's unsigned number read as int64).
  std::ofstream(dir.File("huge_id.jsonl")) << R"({"clean_ids": [1, 18446744073709551615], "corrupted": "b"})"
                                           << "\n";
  auto [code, output] = RunCommand(cli + "--pairs=" + dir.File("huge_id.jsonl"));
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, HasSubstr("--pairs: line 1 is not"));
  // A repeated key ran its last value, and a batch row's "answer", a misspelt key or clean beside clean_ids
  // were passed over while the flags' values ran.
  for (const auto& [line, message] : std::vector<std::pair<std::string, std::string>>{
           {R"({"clean": "a", "clean": "b", "corrupted": "c"})", "--pairs: line 1: key \"clean\" given twice"},
           {R"({"clean": "a", "corrupted": "c", "answer": " No"})", "--pairs: line 1: unknown key \"answer\""},
           {R"({"clean": "a", "clean_ids": [1], "corrupted": "c"})",
            "--pairs: line 1: give \"clean\" or \"clean_ids\", not both"}}) {
    std::ofstream(dir.File("keys.jsonl")) << line << "\n";
    auto [keys_code, keys_output] = RunCommand(cli + "--pairs=" + dir.File("keys.jsonl"));
    EXPECT_EQ(keys_code, 1) << keys_output;
    EXPECT_THAT(keys_output, HasSubstr(message)) << line;
  }
}

// --json printed nothing but the table for logprobs and models, and generate --stream --json wrote the
// streamed tokens on stdout before the JSON. Now stdout is one JSON document for each.
TEST(CliCommandLine, JsonIsAllThatGoesToStdout) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  v1::ModelInfo* model = fake.service.models.add_models();
  model->set_name("m");
  model->set_vocab_size(512);
  model->mutable_limits()->set_max_top_k(20);
  model->mutable_limits()->set_max_rows(65536);
  v1::Token* token = fake.service.generate.add_tokens();
  token->set_id(7);
  token->set_text(" once");
  fake.service.generate.set_text(" once");
  fake.service.logprobs.add_prompt_tokens()->set_text("x");
  v1::TokenLogprob* scored = fake.service.logprobs.add_target();
  scored->mutable_token()->set_id(9);
  scored->mutable_token()->set_text(" y");
  scored->mutable_token()->set_log_prob(-0.5);
  v1::TopToken* top = scored->add_top();
  top->set_id(3);
  top->set_text(" z");
  top->set_log_prob(-1);
  fake.service.logprobs.set_total_log_prob(-0.5);
  auto run = [&](const std::string& command) {
    const Outputs outputs =
        RunCommandApart(absl::StrCat(ATTRIBUTION_CLI_BINARY, " ", command, " --json --server=", fake.address(),
                                     " --model=m --prompt=x --target=' y'"));
    EXPECT_EQ(outputs.code, 0) << command << ": " << outputs.err;
    const nlohmann::json json = nlohmann::json::parse(outputs.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(json.is_discarded()) << command << ": " << outputs.out;
    return std::pair(json, outputs.err);
  };
  auto [streamed, shown] = run("generate --stream");
  EXPECT_EQ(streamed["text"], " once");
  EXPECT_EQ(streamed["tokens"][0]["id"], 7);
  EXPECT_EQ(shown, " once\n");  // the tokens as they came, on stderr
  const nlohmann::json logprobs = run("logprobs --top_k=1").first;
  EXPECT_EQ(logprobs["prompt_tokens"][0]["text"], "x");
  EXPECT_EQ(logprobs["target"][0]["text"], " y");
  EXPECT_EQ(logprobs["target"][0]["log_prob"], -0.5);
  EXPECT_EQ(logprobs["target"][0]["top"][0]["text"], " z");
  EXPECT_EQ(logprobs["total_log_prob"], -0.5);
  const nlohmann::json models = run("models").first;
  EXPECT_EQ(models["models"][0]["name"], "m");
  EXPECT_EQ(models["models"][0]["vocab_size"], 512);
  EXPECT_EQ(models["models"][0]["max_top_k"], 20);
  EXPECT_EQ(models["models"][0]["max_rows"], 65536);
}

// --seed seeds the method and a generated target alike; beside a given target the CLI sent it as the generation
// seed too, and the server (rightly) named "generation" among the settings that changed nothing.
TEST(CliCommandLine, ASeedBesideAGivenTargetSeedsTheMethodOnly) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  fake.service.attribute.set_method(v1::GRADIENT_SHAP);
  fake.service.attribute.add_target_tokens()->set_text(" y");
  const auto attribute = [&](const std::string& target) {
    const Outputs outputs =
        RunCommandApart(absl::StrCat(ATTRIBUTION_CLI_BINARY, " attribute --json --server=", fake.address(),
                                     " --model=m --prompt=x --method=gradient_shap --seed=5", target));
    EXPECT_EQ(outputs.code, 0) << outputs.err;
    return fake.service.last_attribute_request();
  };
  const v1::AttributeRequest given = attribute(" --target=' y'");
  EXPECT_EQ(given.seed(), 5u);
  EXPECT_FALSE(given.generation().has_seed());
  const v1::AttributeRequest generated = attribute("");
  EXPECT_EQ(generated.seed(), 5u);
  EXPECT_EQ(generated.generation().seed(), 5u);
}

// logprobs' table quoted the scored token but not its alternatives, so " No" and "No" both read `No:-0.000`:
// the difference the table is there to show when a text target was tokenized unlike the model's answer.
TEST(CliCommandLine, LogprobsAlternativesShowTheirLeadingSpace) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  v1::TokenLogprob* scored = fake.service.logprobs.add_target();
  scored->mutable_token()->set_text("N");
  scored->mutable_token()->set_log_prob(-22.5);
  for (const char* text : {" No", "No"}) {
    v1::TopToken* top = scored->add_top();
    top->set_text(text);
    top->set_log_prob(-1);
  }
  const Outputs outputs = RunCommandApart(absl::StrCat(ATTRIBUTION_CLI_BINARY, " logprobs --server=", fake.address(),
                                                       " --model=m --prompt=x --target=No --top_k=2"));
  ASSERT_EQ(outputs.code, 0) << outputs.err;
  EXPECT_THAT(outputs.out, HasSubstr("\"N\"")) << outputs.out;
  EXPECT_THAT(outputs.out, HasSubstr("\" No\":-1.000  \"No\":-1.000")) << outputs.out;
}

// `models` showed no max_exact_shapley_features (--json) and no limits at all (text), though the server
// refuses requests by them. Every field of Limits (found by reflection, so that one added later is not
// missed) shows in both, under its proto name in the JSON; and a saved checkpoint's compute dtype too.
TEST(CliCommandLine, ModelsShowEveryLimitTheServerReports) {
  test_support::FakeAttributionServer fake;
  ASSERT_TRUE(fake.ok());
  v1::ModelInfo* model = fake.service.models.add_models();
  model->set_name("m");
  model->set_quantization("nf4");
  model->mutable_quantization_info()->set_block_size(64);
  model->mutable_quantization_info()->set_from_checkpoint(true);
  model->mutable_quantization_info()->set_checkpoint_compute_dtype("float16");
  const google::protobuf::Descriptor* limits = v1::Limits::descriptor();
  for (int i = 0; i < limits->field_count(); ++i) {
    model->mutable_limits()->GetReflection()->SetInt64(model->mutable_limits(), limits->field(i), 1000 + i);
  }
  const std::string models = absl::StrCat(ATTRIBUTION_CLI_BINARY, " models --server=", fake.address());
  const Outputs json_outputs = RunCommandApart(models + " --json");
  ASSERT_EQ(json_outputs.code, 0) << json_outputs.err;
  const nlohmann::json json = nlohmann::json::parse(json_outputs.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(json.is_discarded()) << json_outputs.out;
  const Outputs text = RunCommandApart(models);
  ASSERT_EQ(text.code, 0) << text.err;
  for (int i = 0; i < limits->field_count(); ++i) {
    const std::string& name = limits->field(i)->name();
    EXPECT_EQ(json["models"][0][name], 1000 + i) << name << " in " << json_outputs.out;
    EXPECT_THAT(text.out, HasSubstr(absl::StrCat(" ", 1000 + i))) << name;
  }
  EXPECT_THAT(text.out, HasSubstr("exact shapley features 1003"));
  EXPECT_EQ(json["models"][0]["checkpoint_compute_dtype"], "float16");
  EXPECT_THAT(text.out, HasSubstr("nf4/64 (saved, compute float16)"));
}

}  // namespace
}  // namespace attribution
