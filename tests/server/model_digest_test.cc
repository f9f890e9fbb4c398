// SPDX-License-Identifier: Apache-2.0
// What the server compares before and after it loads a model: the identity of the folder's files changes when
// a file is rewritten (even with its own bytes) or the folder is replaced by a rename, and only then.
#include "server/model_digest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::server {
namespace {

using ::attribution::test_support::IsOk;

void WriteCheckpoint(const std::string& dir) {
  std::filesystem::create_directory(dir);
  std::ofstream(dir + "/config.json") << "{}";
  std::ofstream(dir + "/model.safetensors") << "weights";
  std::ofstream(dir + "/tokenizer.json") << "{}";
}

TEST(ModelFilesIdentity, ChangesWhenAFileIsRewrittenOrTheFolderReplaced) {
  test_support::TempDir temp;
  const std::string dir = temp.File("model");
  WriteCheckpoint(dir);
  const absl::StatusOr<std::string> loaded = ModelFilesIdentity(dir);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(ModelFilesIdentity(dir).value_or(""), *loaded);

  // The same bytes written again, the modification time set back as `cp -p` does: a copy over the file while the
  // load read it.
  const auto modified = std::filesystem::last_write_time(dir + "/model.safetensors");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a change time the filesystem's clock tells apart
  std::ofstream(dir + "/model.safetensors") << "weights";
  std::filesystem::last_write_time(dir + "/model.safetensors", modified);
  const absl::StatusOr<std::string> rewritten = ModelFilesIdentity(dir);
  ASSERT_THAT(rewritten, IsOk());
  EXPECT_NE(*rewritten, *loaded);

  // The folder renamed away and a copy of it renamed in: the atomic way to roll out a checkpoint.
  WriteCheckpoint(temp.File("next"));
  std::filesystem::rename(dir, temp.File("previous"));
  std::filesystem::rename(temp.File("next"), dir);
  EXPECT_NE(ModelFilesIdentity(dir).value_or(""), *rewritten);
}

// A SentencePiece tokenizer (a tokenizer.model, no tokenizer.json) reads its special tokens from
// special_tokens_map.json: two folders that differ only there tokenize apart, so their digests differ, and a
// rewrite of it during the load is seen.
TEST(ModelFiles, HoldTheSpecialTokensMapWhereTheTokenizerReadsIt) {
  test_support::TempDir temp;
  const std::string dir = temp.File("model");
  WriteCheckpoint(dir);
  std::filesystem::remove(dir + "/tokenizer.json");
  std::ofstream(dir + "/tokenizer.model") << "pieces";
  const absl::StatusOr<std::string> without = ModelFilesDigest(dir);
  ASSERT_THAT(without, IsOk());
  std::ofstream(dir + "/special_tokens_map.json") << R"({"eos_token": "red"})";
  EXPECT_THAT(ModelFiles(dir).value_or(std::vector<std::string>{}),
              ::testing::Contains(std::string("special_tokens_map.json")));
  const absl::StatusOr<std::string> with = ModelFilesDigest(dir);
  ASSERT_THAT(with, IsOk());
  EXPECT_NE(*with, *without);
  const absl::StatusOr<std::string> identity = ModelFilesIdentity(dir);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a change time the filesystem's clock tells apart
  std::ofstream(dir + "/special_tokens_map.json") << R"({"eos_token": "</s>"})";
  EXPECT_NE(ModelFilesIdentity(dir).value_or(""), identity.value_or(""));
  // Beside a tokenizer.json nothing reads it: not hashed.
  std::ofstream(dir + "/tokenizer.json") << "{}";
  EXPECT_THAT(ModelFiles(dir).value_or(std::vector<std::string>{}),
              ::testing::Not(::testing::Contains(std::string("special_tokens_map.json"))));
}

}  // namespace
}  // namespace attribution::server
