// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/common/bounded_json.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

using nlohmann::json;

// tokenizer_config.json names tokens as strings or as {"content": ...} objects.
std::optional<std::string> ConfiguredToken(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

bool DecoderIsByteLevel(const json& decoder) {
  if (!decoder.is_object()) return false;
  if (decoder.value("type", std::string()) == "ByteLevel") return true;
  for (const json& d : JsonMember(decoder, "decoders")) {
    if (DecoderIsByteLevel(d)) return true;
  }
  return false;
}

// Appends the bytes a byte-level token stands for: one for each character, unless a character stands for no
// byte ("Ġ中"), where the tokenizers library's ByteLevel decoder takes the token's own text, all of it.
void AppendByteLevelToken(const std::string& token, std::string& bytes) {
  std::string token_bytes;
  for (size_t i = 0; i < token.size(); i += Utf8Length(token[i])) {
    if (!UnicodeToByte(token.substr(i, Utf8Length(token[i])), token_bytes)) {
      bytes += token;
      return;
    }
  }
  bytes += token_bytes;
}

}  // namespace

// What the decoder does with the space Metaspace / Prepend put before the first word.
HfTokenizer::LeadingSpaceRule HfTokenizer::DecodedLeadingSpaceRule(const json& decoder) {
  using Rule = LeadingSpaceRule;
  if (!decoder.is_object()) return Rule::kKeep;
  const std::string type = decoder.value("type", std::string());
  if (type == "Strip") return decoder.value("start", 0) > 0 ? Rule::kStripOne : Rule::kKeep;
  if (type == "Metaspace") {
    const bool prepends =
        decoder.value("prepend_scheme", std::string("always")) != "never" && decoder.value("add_prefix_space", true);
    return prepends ? Rule::kDropFirstTokenMarks : Rule::kKeep;
  }
  if (type == "Sequence") {
    for (const json& d : JsonMember(decoder, "decoders")) {
      if (const Rule rule = DecodedLeadingSpaceRule(d); rule != Rule::kKeep) return rule;
    }
  }
  return Rule::kKeep;
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Create(const json& tj, const json& config) {
  if (!tj.is_object() || !tj.contains("model")) return absl::InvalidArgumentError("tokenizer.json: no \"model\"");
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());
  ASSIGN_OR_RETURN(t->model_, BpeModel::FromJson(tj["model"]));
  t->vocab_size_ = static_cast<int64_t>(t->model_.tokens().size());
  if (tj.contains("normalizer") && !tj["normalizer"].is_null()) {
    ASSIGN_OR_RETURN(t->normalizer_, TextNormalizer::FromJson(tj["normalizer"]));
  }
  std::vector<AddedToken> added;
  for (const json& a : tj.value("added_tokens", json::array())) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 ||
        !a.contains("content") || !a["content"].is_string()) {
      return absl::InvalidArgumentError(
          "tokenizer.json: added_tokens entries need a non-negative integer \"id\" and a string \"content\"");
    }
    if (a["id"].get<int64_t>() >= BpeModel::kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: added token id ", a["id"].get<int64_t>(),
                                                     " is not below the limit of ", BpeModel::kMaxTokenId));
    }
    const bool special = a.value("special", false);
    // The library's files always say "normalized"; without it, the library's own default for a new token.
    added.push_back({.id = a["id"].get<int64_t>(),
                     .content = a["content"].get<std::string>(),
                     .special = special,
                     .lstrip = a.value("lstrip", false),
                     .rstrip = a.value("rstrip", false),
                     .single_word = a.value("single_word", false),
                     .normalized = a.value("normalized", !special)});
    t->vocab_size_ = std::max(t->vocab_size_, added.back().id + 1);
  }
  // A token with "normalized" is looked for as the normalizer writes its content ("▁hi" for "hi" after
  // Llama 2's Prepend("▁")), as the library does.
  const TextNormalizer* normalizer = t->normalizer_.get();
  t->added_ = AddedTokens(std::move(added), [normalizer](const std::string& content) {
    return normalizer != nullptr ? normalizer->Apply(NormalizedText::FromOriginal(content, 0)).text : content;
  });
  if (tj.contains("pre_tokenizer") && !tj["pre_tokenizer"].is_null()) {
    ASSIGN_OR_RETURN(t->pre_tokenizer_, PreTokenizer::FromJson(tj["pre_tokenizer"]));
  }
  const json& decoder = JsonMember(tj, "decoder");
  t->byte_level_ = (t->pre_tokenizer_ && t->pre_tokenizer_->byte_level()) || DecoderIsByteLevel(decoder);
  t->leading_space_rule_ = DecodedLeadingSpaceRule(decoder);
  RETURN_IF_ERROR(t->ParsePostProcessor(JsonMember(tj, "post_processor")));
  for (const std::vector<int64_t>* ids : {&t->prefix_ids_, &t->suffix_ids_}) {
    for (int64_t id : *ids) {
      if (!t->HasToken(id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: post_processor adds token id ", id, ", which is not in the vocabulary"));
      }
    }
  }
  auto find = [&](const char* key) -> std::optional<int64_t> {
    auto token = ConfiguredToken(config, key);
    return token ? t->IdOf(*token) : std::nullopt;
  };
  t->special_ = {find("bos_token"), find("eos_token"), find("pad_token"), find("unk_token")};
  return t;
}

absl::Status HfTokenizer::ParsePostProcessor(const json& spec) {
  if (!spec.is_object()) return absl::OkStatus();
  const std::string type = spec.value("type", std::string());
  if (type == "Sequence") {
    for (const json& p : JsonMember(spec, "processors")) RETURN_IF_ERROR(ParsePostProcessor(p));
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    // "single": [{"SpecialToken": {"id": NAME}} | {"Sequence": ...}, ...], and "special_tokens":
    // {NAME: {"ids": [...]}}.
    const json special_tokens = spec.value("special_tokens", json::object());
    bool after_sequence = false;
    for (const json& item : spec.value("single", json::array())) {
      if (item.is_object() && item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const json special = item.is_object() ? item.value("SpecialToken", json()) : json();
      const json name = special.is_object() ? special.value("id", json()) : json();
      if (!name.is_string() || !special_tokens.is_object() || !special_tokens.contains(name.get<std::string>())) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: post_processor template item ", item.dump(),
                                                       " names no entry of its special_tokens"));
      }
      const json& entry = special_tokens[name.get<std::string>()];
      const json ids = entry.is_object() ? entry.value("ids", json()) : json();
      if (!ids.is_array()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: post_processor special token ", name.dump(), " has no \"ids\" list"));
      }
      for (const json& id : ids) {
        if (!id.is_number_integer()) {
          return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: post_processor special token ", name.dump(),
                                                         " has an id that is not an integer"));
        }
        (after_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int64_t>());
      }
    }
    return absl::OkStatus();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    // "cls" and "sep" are [token, id] pairs.
    for (const char* key : {"cls", "sep"}) {
      const json pair = spec.value(key, json());
      if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: post_processor ", type, " needs \"", key, "\" as [token, id]"));
      }
      (std::string(key) == "cls" ? prefix_ids_ : suffix_ids_).push_back(pair[1].get<int64_t>());
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // adjusts offsets only
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: post_processor \"", type, "\" is not supported"));
}

bool HfTokenizer::IsSpecial(int64_t id) const {
  if (const AddedToken* added = added_.Find(id); added != nullptr && added->special) return true;
  auto in = [id](const std::vector<int64_t>& ids) { return std::find(ids.begin(), ids.end(), id) != ids.end(); };
  return in(prefix_ids_) || in(suffix_ids_) || Tokenizer::IsSpecial(id);
}

std::optional<int64_t> HfTokenizer::IdOf(const std::string& token) const {
  if (std::optional<int64_t> id = added_.IdOf(token)) return id;
  return model_.IdOf(token);
}

absl::Status HfTokenizer::EncodeSegment(const std::string& text, size_t begin, size_t end, Encoding& out) const {
  if (end <= begin) return absl::OkStatus();
  NormalizedText normalized = NormalizedText::FromOriginal(text.substr(begin, end - begin), begin);
  if (normalizer_) normalized = normalizer_->Apply(normalized);
  return added_.SplitNormalized(
      normalized.text,
      [&](size_t b, size_t e) {
        // Metaspace's prepend_scheme "first": only the piece that starts the input, before any token.
        const bool first = begin == 0 && b == 0;
        if (b == 0 && e == normalized.text.size()) return EncodeNormalized(normalized, first, out);
        return EncodeNormalized(normalized.Slice(b, e), first, out);
      },
      [&](const AddedToken& token, size_t b, size_t e) {
        out.ids.push_back(token.id);
        out.spans.push_back({normalized.OriginAt(b), normalized.OriginAt(e)});
      });
}

absl::Status HfTokenizer::EncodeNormalized(const NormalizedText& piece, bool first, Encoding& out) const {
  auto tokenize = [&](const NormalizedText& word) {
    for (const WordToken& token : model_.Tokenize(word.text)) {
      out.ids.push_back(token.id);
      out.spans.push_back({word.OriginAt(token.begin), word.OriginAt(token.end)});
    }
  };
  if (!pre_tokenizer_) {
    tokenize(piece);
    return absl::OkStatus();
  }
  std::vector<NormalizedText> words;
  RETURN_IF_ERROR(pre_tokenizer_->Split(piece, first, words));
  for (const NormalizedText& word : words) tokenize(word);
  return absl::OkStatus();
}

absl::StatusOr<Encoding> HfTokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  RETURN_IF_ERROR(CheckUtf8(text));
  RegexBudgetScope regex_budget(text.size());
  Encoding out;
  if (add_special_tokens) {
    for (int64_t id : prefix_ids_) {
      out.ids.push_back(id);
      out.spans.push_back({0, 0});
    }
  }
  RETURN_IF_ERROR(added_.Split(
      text, [&](size_t begin, size_t end) { return EncodeSegment(text, begin, end, out); },
      [&](const AddedToken& token, size_t begin, size_t end) {
        out.ids.push_back(token.id);
        out.spans.push_back({begin, end});
      }));
  if (add_special_tokens) {
    for (int64_t id : suffix_ids_) {
      out.ids.push_back(id);
      out.spans.push_back({text.size(), text.size()});
    }
  }
  return out;
}

std::string HfTokenizer::DecodeTokens(const std::vector<int64_t>& ids, bool skip_special,
                                      bool strip_leading_space) const {
  std::string bytes;
  bool first = true;
  for (int64_t id : ids) {
    if (!HasToken(id)) continue;
    const AddedToken* added = added_.Find(id);
    // The tokenizers library's decoders read an added token as any other ("ĠZqx" is " Zqx", "▁foo" " foo"),
    // one with "normalized" in its normalized form ("▁Hello▁World" after Llama 2's normalizer is " Hello
    // World"), and skip it as special by that form.
    const std::string& token = added != nullptr ? added_.DecodedForm(*added) : model_.tokens()[id];
    if (added != nullptr && skip_special && added_.IsSpecialContent(token)) continue;
    const bool starts_text = std::exchange(first, false);
    if (byte_level_) {
      AppendByteLevelToken(token, bytes);
      continue;
    }
    if (const std::optional<char> byte = model_.byte_fallback() ? BytePieceValue(token) : std::nullopt) {
      bytes.push_back(*byte);
      continue;
    }
    if (starts_text && strip_leading_space && leading_space_rule_ == LeadingSpaceRule::kDropFirstTokenMarks) {
      // The library's Metaspace decoder drops every "▁" of the first token, not one space ("▁▁x" is "x").
      AppendPieceBytes(absl::StrReplaceAll(token, {{"\xE2\x96\x81", ""}}), bytes);
      continue;
    }
    AppendPieceBytes(token, bytes);
  }
  if (strip_leading_space && leading_space_rule_ == LeadingSpaceRule::kStripOne && !bytes.empty() && bytes[0] == ' ') {
    bytes.erase(0, 1);
  }
  return bytes;
}

bool HfTokenizer::IsFallbackByte(int64_t id) const {
  // As DecodeTokens reads them: added tokens too ("<0x41>" added as a special token is "A").
  if (!model_.byte_fallback() || !HasToken(id)) return false;
  const AddedToken* added = added_.Find(id);
  return BytePieceValue(added != nullptr ? added_.DecodedForm(*added) : model_.tokens()[id]).has_value();
}

bool HfTokenizer::HasToken(int64_t id) const {
  if (added_.Find(id) != nullptr) return true;
  return id >= 0 && id < static_cast<int64_t>(model_.tokens().size()) && !model_.tokens()[id].empty();
}

absl::StatusOr<std::string> HfTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  for (int64_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
  }
  return DecodeTokens(ids, skip_special_tokens, /*strip_leading_space=*/true);
}

std::string HfTokenizer::TokenText(int64_t id) const {
  if (!HasToken(id)) return "";
  return DecodeTokens({id}, /*skip_special=*/false, /*strip_leading_space=*/false);
}

}  // namespace attribution::engine
