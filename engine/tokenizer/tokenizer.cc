// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"

namespace attribution::engine {
namespace {

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return parsed;
}

}  // namespace

absl::Status CheckUtf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) len = 1, cp = c;
    else if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (s[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", i));
    i += len;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  // The parsers check the fields they read; this net turns a check they lack (a JSON type error in
  // tokenizer.json or tokenizer_config.json) into a status, so no tokenizer file crashes the server.
  try {
    return LoadFiles(model_dir);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": tokenizer.json / tokenizer_config.json: malformed: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFiles(const std::string& model_dir) {
  nlohmann::json config;
  if (const std::string path = model_dir + "/tokenizer_config.json"; FileExists(path)) {
    ASSIGN_OR_RETURN(config, ReadJson(path));
  }
  if (const std::string path = model_dir + "/tokenizer.json"; FileExists(path)) {
    ASSIGN_OR_RETURN(nlohmann::json tokenizer_json, ReadJson(path));
    auto tokenizer = HfTokenizer::Create(tokenizer_json, config);
    if (!tokenizer.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokenizer.status().message()));
    return std::unique_ptr<Tokenizer>(std::move(*tokenizer));
  }
  if (const std::string path = model_dir + "/tokenizer.model"; FileExists(path)) {
    const bool add_bos = !config.is_object() || config.value("add_bos_token", true);
    const bool add_eos = config.is_object() && config.value("add_eos_token", false);
    ASSIGN_OR_RETURN(auto tokenizer, SentencePieceTokenizer::Create(path, add_bos, add_eos));
    return std::unique_ptr<Tokenizer>(std::move(tokenizer));
  }
  return absl::NotFoundError(absl::StrCat(model_dir, ": no tokenizer.json or tokenizer.model"));
}

}  // namespace attribution::engine
