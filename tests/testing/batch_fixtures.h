// SPDX-License-Identifier: Apache-2.0
// What the data-set job tests share: a fixture with one real server, and how two runs' results compare.
#pragma once
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/batch_process.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::test_support {

// Same rows in the same order, each once; same statuses, tokens and choices; numbers equal up to the
// float noise of different batch compositions (1e-5 of the value's scale).
inline void ExpectSameResults(const std::vector<nlohmann::json>& actual, const std::vector<nlohmann::json>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(expected[i]["id"].get<std::string>());
    ASSERT_EQ(actual[i]["id"], expected[i]["id"]);
    for (const char* key : {"status", "error", "prompt_tokens", "target_tokens", "features", "predicted", "request_id",
                            "settings_hash"}) {
      EXPECT_EQ(actual[i].value(key, nlohmann::json()), expected[i].value(key, nlohmann::json())) << key;
    }
    for (const char* key : {"attribution", "choice_probs"}) {
      const nlohmann::json a = actual[i].value(key, nlohmann::json::array()),
                           e = expected[i].value(key, nlohmann::json::array());
      ASSERT_EQ(a.size(), e.size()) << key;
      for (size_t j = 0; j < e.size(); ++j) {
        EXPECT_NEAR(a[j].get<double>(), e[j].get<double>(), 1e-5 * std::max(1.0, std::abs(e[j].get<double>()))) << key;
      }
    }
  }
}

// Data-set jobs against one real server (started once per test binary) and a handful of rows.
class BatchOnOneServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = ServerProcess::Start({});
    start_status_ = server.status();
    if (server.ok()) server_ = server->release();
  }
  static void TearDownTestSuite() { delete server_; }
  void SetUp() override { ASSERT_THAT(start_status_, IsOk()); }

  // `count` rows r0, r1, ... asking whether a thing of the colour `colours[i % size]` is warm.
  std::string WriteQuestions(const std::string& name, int count, const std::string& object = "cup") const {
    const std::vector<std::string> colours = {"red", "blue", "gold", "green"};
    const std::string path = dir_.File(name);
    std::ofstream out(path);
    for (int i = 0; i < count; ++i) {
      out << nlohmann::json{{"id", absl::StrCat("r", i)},
                            {"prompt",
                             absl::StrCat("The ", object, " is ", colours[i % colours.size()], ". Q: Is it warm? A:")},
                            {"target", " Yes"}}
                 .dump()
          << "\n";
    }
    return path;
  }
  int Run(const std::string& input, const std::string& output) const {
    return RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                     "--progress=log"},
                    log_);
  }
  static std::vector<std::string> Ids(const std::vector<nlohmann::json>& results) {
    std::vector<std::string> ids;
    for (const nlohmann::json& result : results) ids.push_back(result["id"].get<std::string>());
    return ids;
  }

  TempDir dir_;
  const std::string log_ = dir_.File("batch.log");
  static inline absl::Status start_status_;
  static inline ServerProcess* server_ = nullptr;
};

}  // namespace attribution::test_support
