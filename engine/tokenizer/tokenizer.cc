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
  nlohmann::json config;
  if (const std::string path = model_dir + "/tokenizer_config.json"; FileExists(path)) {
    ASSIGN_OR_RETURN(config, ReadJson(path));
  }
  if (const std::string path = model_dir + "/tokenizer.json"; FileExists(path)) {
    ASSIGN_OR_RETURN(nlohmann::json tokenizer_json, ReadJson(path));
    absl::StatusOr<std::unique_ptr<HfTokenizer>> tokenizer = absl::InternalError("not parsed");
    // HfTokenizer checks the fields it reads; a JSON type error it missed is a status too, not a
    // crash of the server loading it.
    try {
      tokenizer = HfTokenizer::Create(tokenizer_json, config);
    } catch (const std::exception& e) {
      tokenizer = absl::InvalidArgumentError(absl::StrCat("malformed (tokenizer.json or tokenizer_config.json): ", e.what()));
    }
    if (!tokenizer.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokenizer.status().message()));
    return std::unique_ptr<Tokenizer>(std::move(*tokenizer));
  }
  if (const std::string path = model_dir + "/tokenizer.model"; FileExists(path)) {
    // json::value throws on a value of another type; such a flag keeps its default.
    auto flag = [&](const char* key, bool fallback) {
      return config.is_object() && config.contains(key) && config[key].is_boolean() ? config[key].get<bool>() : fallback;
    };
    const bool add_bos = flag("add_bos_token", true);
    const bool add_eos = flag("add_eos_token", false);
    ASSIGN_OR_RETURN(auto tokenizer, SentencePieceTokenizer::Create(path, add_bos, add_eos));
    return std::unique_ptr<Tokenizer>(std::move(tokenizer));
  }
  return absl::NotFoundError(absl::StrCat(model_dir, ": no tokenizer.json or tokenizer.model"));
}

}  // namespace attribution::engine
