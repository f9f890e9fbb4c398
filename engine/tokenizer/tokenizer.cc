// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"
#include "engine/common/utf8.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"

namespace attribution::engine {
namespace {

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadModelFile(path));
  return ParseBoundedJson(text, path);
}

}  // namespace

absl::Status CheckUtf8(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    const size_t len = Utf8SequenceLength(text, i, /*subpart=*/false);
    if (len == 0) return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", i));
    i += len;
  }
  return absl::OkStatus();
}

std::string ToValidUtf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t len = Utf8SequenceLength(bytes, i, /*subpart=*/false);
    if (len > 0) {
      out.append(bytes, i, len);
      i += len;
      continue;
    }
    out += "\xEF\xBF\xBD";  // U+FFFD
    i += Utf8SequenceLength(bytes, i, /*subpart=*/true);
  }
  return out;
}

std::string Tokenizer::ByteRunText(const std::string&, size_t tokens) const {
  std::string text;
  for (size_t t = 0; t < tokens; ++t) text += "\xEF\xBF\xBD";  // U+FFFD
  return text;
}

bool Tokenizer::IsSpecial(int64_t id) const {
  const SpecialTokens& s = special_tokens();
  return id == s.bos || id == s.eos || id == s.pad;
}

std::optional<char> BytePieceValue(const std::string& piece) {
  unsigned byte = 0;
  if (piece.size() != 6 || std::sscanf(piece.c_str(), "<0x%02X>", &byte) != 1) return std::nullopt;
  return static_cast<char>(byte);
}

void AppendPieceBytes(const std::string& piece, std::string& bytes) {
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
      bytes.push_back(' ');
      i += 3;
    } else {
      bytes.push_back(piece[i++]);
    }
  }
}

int64_t Tokenizer::longest_token_bytes() const {
  std::call_once(longest_token_once_, [this] {
    for (int64_t id = 0; id < vocab_size(); ++id) {
      longest_token_bytes_ = std::max(longest_token_bytes_, static_cast<int64_t>(TokenText(id).size()));
    }
  });
  return longest_token_bytes_;
}

namespace {

// tokenizer_config.json's options that transformers 5 applies by rebuilding the tokenizer from its class
// (GPT2Tokenizer's add_prefix_space, LlamaTokenizer's add_prefix_space and legacy: false, which drops the "▁"
// before the first word and after special tokens), where the tokenizers library runs tokenizer.json as written:
// this server does as the tokenizers library, and says so where the two differ.
//
// `hf`: the tokenizer.json tokenizer loaded, or nullptr for a SentencePiece model.
std::vector<std::string> IgnoredTokenizerOptions(const nlohmann::json& config, const HfTokenizer* hf) {
  std::vector<std::string> warnings;
  if (!config.is_object()) return warnings;
  for (const char* key : {"add_prefix_space", "legacy"}) {
    if (!config.contains(key) || !config[key].is_boolean()) continue;
    const bool value = config[key].get<bool>();
    if (std::string(key) == "legacy" && value) continue;  // legacy: true is what is done
    if (std::string(key) == "add_prefix_space" && hf != nullptr && hf->adds_prefix_space() == value) {
      continue;  // tokenizer.json does the same already (Qwen2's false)
    }
    warnings.push_back(absl::StrCat(
        "tokenizer_config.json sets \"", key, "\": ", config[key].dump(),
        ", which transformers 5 applies by rebuilding the tokenizer; this server tokenizes as the tokenizer files "
        "say (as the tokenizers library does), so a text's tokens may differ from AutoTokenizer's there (send "
        "token ids where it matters)"));
  }
  return warnings;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  nlohmann::json config, special_tokens_map;
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
      tokenizer =
          absl::InvalidArgumentError(absl::StrCat("malformed (tokenizer.json or tokenizer_config.json): ", e.what()));
    }
    if (!tokenizer.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokenizer.status().message()));
    std::vector<std::string> warnings = IgnoredTokenizerOptions(config, tokenizer->get());
    std::unique_ptr<Tokenizer> loaded(std::move(*tokenizer));
    loaded->load_warnings_ = std::move(warnings);
    return loaded;
  }
  if (const std::string path = model_dir + "/tokenizer.model"; FileExists(path)) {
    // json::value throws on a value of another type; such a flag keeps its default.
    auto flag = [&](const char* key, bool fallback) {
      return config.is_object() && config.contains(key) && config[key].is_boolean() ? config[key].get<bool>()
                                                                                    : fallback;
    };
    const bool add_bos = flag("add_bos_token", true);
    const bool add_eos = flag("add_eos_token", false);
    if (const std::string map_path = model_dir + "/special_tokens_map.json"; FileExists(map_path)) {
      ASSIGN_OR_RETURN(special_tokens_map, ReadJson(map_path));
    }
    absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> tokenizer = absl::InternalError("not read");
    try {  // as for tokenizer.json: a JSON type error is a status, not a crash
      tokenizer = SentencePieceTokenizer::Create(path, add_bos, add_eos, config, special_tokens_map);
    } catch (const std::exception& e) {
      tokenizer = absl::InvalidArgumentError(
          absl::StrCat("malformed (tokenizer_config.json or special_tokens_map.json): ", e.what()));
    }
    if (!tokenizer.ok()) return tokenizer.status();
    std::unique_ptr<Tokenizer> loaded(std::move(*tokenizer));
    loaded->load_warnings_ = IgnoredTokenizerOptions(config, nullptr);
    return loaded;
  }
  return absl::NotFoundError(absl::StrCat(model_dir, ": no tokenizer.json or tokenizer.model"));
}

}  // namespace attribution::engine
