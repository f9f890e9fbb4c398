// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/common/utf8.h"
#include "engine/tokenizer/bpe_model.h"

namespace attribution::engine {
namespace {

using nlohmann::json;

// A token as tokenizer_config.json and special_tokens_map.json write one: a string, or an object with
// "content" and flags (transformers' AddedToken).
std::optional<AddedToken> TokenEntry(const json& v, bool special) {
  if (v.is_string()) return AddedToken{.content = v.get<std::string>(), .special = special};
  if (!v.is_object() || !v.contains("content") || !v["content"].is_string()) return std::nullopt;
  auto flag = [&](const char* key, bool fallback) {
    return v.contains(key) && v[key].is_boolean() ? v[key].get<bool>() : fallback;
  };
  return AddedToken{.content = v["content"].get<std::string>(),
                    .special = flag("special", special),
                    .lstrip = flag("lstrip", false),
                    .rstrip = flag("rstrip", false)};
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Create(const std::string& model_path,
                                                                                       bool add_bos, bool add_eos,
                                                                                       const json& tokenizer_config,
                                                                                       const json& special_tokens_map) {
  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer());
  std::string error;
  tokenizer->processor_ = SentencePieceBackend::Load(model_path, &error);
  if (!tokenizer->processor_) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": cannot load the SentencePiece model: ", error));
  }
  const SentencePieceBackend& p = *tokenizer->processor_;
  auto id_or_none = [](int id) { return id >= 0 ? std::optional<int64_t>(id) : std::nullopt; };
  tokenizer->special_ = {id_or_none(p.bos_id()), id_or_none(p.eos_id()), id_or_none(p.pad_id()),
                         id_or_none(p.unk_id())};
  tokenizer->add_bos_ = add_bos && tokenizer->special_.bos.has_value();
  tokenizer->add_eos_ = add_eos && tokenizer->special_.eos.has_value();
  tokenizer->pieces_ = tokenizer->vocab_size_ = p.size();
  RETURN_IF_ERROR(tokenizer->ReadAddedTokens(tokenizer_config, special_tokens_map));
  return tokenizer;
}

// As transformers 5 reads them (PreTrainedTokenizerBase.from_pretrained): added_tokens_decoder gives
// tokens with their ids and flags; the named special tokens come from tokenizer_config.json, overridden
// by special_tokens_map.json where tokenizer_config.json has no added_tokens_decoder, and take the flags
// of the added_tokens_decoder entry of the same content (their own lstrip / rstrip transformers 5
// drops). A named token that is neither there nor a
// piece of the model is left out: transformers would append it past the vocabulary, where the model's
// embedding has no row for it.
absl::Status SentencePieceTokenizer::ReadAddedTokens(const json& config, const json& special_tokens_map) {
  std::vector<AddedToken> tokens;
  const bool has_decoder = config.is_object() && config.contains("added_tokens_decoder");
  if (has_decoder) {
    const json& decoder = config["added_tokens_decoder"];
    if (!decoder.is_object()) {
      return absl::InvalidArgumentError("tokenizer_config.json: \"added_tokens_decoder\" is not an object");
    }
    for (const auto& [key, entry] : decoder.items()) {
      int64_t id = -1;
      std::optional<AddedToken> token = TokenEntry(entry, /*special=*/false);
      if (!absl::SimpleAtoi(key, &id) || id < 0 || id >= BpeModel::kMaxTokenId || !token || !entry.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: added_tokens_decoder entry \"", key,
                                                       "\" needs a non-negative id below ", BpeModel::kMaxTokenId,
                                                       " and an object with a string \"content\""));
      }
      token->id = id;
      tokens.push_back(*token);
      vocab_size_ = std::max(vocab_size_, id + 1);
    }
  }
  // Named special tokens: role -> the model's own piece for a role no file names.
  const std::vector<std::pair<const char*, int>> roles = {{"bos_token", processor_->bos_id()},
                                                          {"eos_token", processor_->eos_id()},
                                                          {"unk_token", processor_->unk_id()},
                                                          {"sep_token", -1},
                                                          {"pad_token", processor_->pad_id()},
                                                          {"cls_token", -1},
                                                          {"mask_token", -1}};
  auto named = [&](const char* key) -> const json* {
    if (!has_decoder && special_tokens_map.is_object() && special_tokens_map.contains(key)) {
      return &special_tokens_map[key];
    }
    if (config.is_object() && config.contains(key)) return &config[key];
    return nullptr;
  };
  std::vector<AddedToken> special;
  for (const auto& [key, own_piece] : roles) {
    if (const json* value = named(key)) {
      if (std::optional<AddedToken> token = TokenEntry(*value, /*special=*/true)) special.push_back(*token);
    } else if (own_piece >= 0 && own_piece < pieces_) {
      special.push_back({.content = processor_->IdToPiece(own_piece), .special = true});
    }
  }
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    const json* list = named(key);
    if (list == nullptr || !(list->is_array() || list->is_object())) continue;
    for (const json& value : *list) {
      if (std::optional<AddedToken> token = TokenEntry(value, /*special=*/true)) special.push_back(*token);
    }
  }
  for (AddedToken& token : special) {
    // transformers 5 keeps lstrip / rstrip of added_tokens_decoder entries only, not of named tokens.
    token.special = true;
    token.lstrip = token.rstrip = false;
    if (token.content.empty()) continue;
    if (std::any_of(tokens.begin(), tokens.end(), [&](const AddedToken& t) { return t.content == token.content; }))
      continue;
    const int id = processor_->PieceToId(token.content);
    if (id < 0) continue;
    token.id = id;
    tokens.push_back(token);
  }
  added_ = AddedTokens(std::move(tokens));
  return absl::OkStatus();
}

const AddedToken* SentencePieceTokenizer::BeyondPieces(int64_t id) const {
  return id >= pieces_ ? added_.Find(id) : nullptr;
}

absl::StatusOr<Encoding> SentencePieceTokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  RETURN_IF_ERROR(CheckUtf8(text));
  Encoding out;
  if (add_special_tokens && add_bos_) {
    out.ids.push_back(*special_.bos);
    out.spans.push_back({0, 0});
  }
  // Each segment is encoded alone, as transformers does: SentencePiece gives it its word-boundary mark.
  RETURN_IF_ERROR(added_.Split(
      text,
      [&](size_t begin, size_t end) {
        for (const SentencePiece& piece : processor_->Encode(text.substr(begin, end - begin))) {
          out.ids.push_back(piece.id);
          out.spans.push_back({begin + piece.begin, begin + piece.end});
        }
        return absl::OkStatus();
      },
      [&](const AddedToken& token, size_t begin, size_t end) {
        out.ids.push_back(token.id);
        out.spans.push_back({begin, end});
      }));
  if (add_special_tokens && add_eos_) {
    out.ids.push_back(*special_.eos);
    out.spans.push_back({text.size(), text.size()});
  }
  return out;
}

namespace {

// `bytes` with each byte that starts no well-formed UTF-8 character replaced by U+FFFD, as libsentencepiece
// decodes byte pieces that are not UTF-8.
std::string ReplaceBytesNotUtf8(const std::string& bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const size_t length = Utf8SequenceLength(bytes, i, /*subpart=*/false);
    out += length > 0 ? bytes.substr(i, length) : "\xEF\xBF\xBD";
    i += std::max<size_t>(length, 1);
  }
  return out;
}

}  // namespace

std::string SentencePieceTokenizer::ExactBytes(const std::vector<int>& pieces, const std::string& decoded) const {
  std::string bytes;
  bool has_byte_piece = false;
  for (int piece : pieces) {
    if (processor_->IsControlOrUnknown(piece)) return decoded;  // decoded as libsentencepiece has them
    const std::string text = processor_->IdToPiece(piece);
    if (const std::optional<char> byte = BytePieceValue(text)) {
      bytes.push_back(*byte);
      has_byte_piece = true;
      continue;
    }
    AppendPieceBytes(text, bytes);
  }
  if (!has_byte_piece) return decoded;
  // The pieces' bytes, unless libsentencepiece did more than replace those that are not UTF-8 (it drops the
  // space of the dummy prefix at the start; a normalizer's denormalization would show as a mismatch).
  const size_t prefix = !bytes.empty() && bytes[0] == ' ' ? 1 : 0;
  for (const std::string& candidate : {bytes, bytes.substr(prefix)}) {
    if (ReplaceBytesNotUtf8(candidate) == decoded) return candidate;
  }
  return decoded;
}

bool SentencePieceTokenizer::IsFallbackByte(int64_t id) const {
  return id >= 0 && id < pieces_ && BytePieceValue(processor_->IdToPiece(static_cast<int>(id))).has_value();
}

std::string SentencePieceTokenizer::ByteRunText(const std::string& bytes, size_t) const {
  return ReplaceBytesNotUtf8(bytes);
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(const std::vector<int64_t>& ids,
                                                           bool skip_special_tokens) const {
  for (int64_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
  }
  std::string text;
  std::vector<int> pieces;   // a run of the model's pieces, decoded together
  bool after_added = false;  // the run follows an added token
  auto flush = [&]() -> absl::Status {
    if (pieces.empty()) return absl::OkStatus();
    std::string decoded, error;
    if (!processor_->Decode(pieces, &decoded, &error))
      return absl::InternalError(absl::StrCat("sentencepiece: ", error));
    // libsentencepiece writes U+FFFD for each byte piece that is not UTF-8; the text keeps the bytes (a
    // generation's text_bytes, and a token's span in it once a later byte piece completes the character).
    // It also drops the space of the run's first word-boundary mark, as the text's dummy prefix: transformers
    // drops only the text's, so a run after an added token keeps it ("<sep>", "▁HELLO" -> "<sep> HELLO").
    if (after_added && DropsLeadingMark(pieces)) text += ' ';
    text += ExactBytes(pieces, decoded);
    pieces.clear();
    return absl::OkStatus();
  };
  for (int64_t id : ids) {
    // A skipped token leaves the pieces around it one run, as a control piece in the run would.
    if (skip_special_tokens && SkippedInText(id)) continue;
    if (const AddedToken* added = BeyondPieces(id)) {
      RETURN_IF_ERROR(flush());
      text += added->content;
      after_added = true;
      continue;
    }
    // As transformers' tokenizer for a tokenizer.model (libsentencepiece itself refuses such an id).
    if (id >= pieces_) continue;
    pieces.push_back(static_cast<int>(id));
  }
  RETURN_IF_ERROR(flush());
  return text;
}

bool SentencePieceTokenizer::DropsLeadingMark(const std::vector<int>& pieces) const {
  // Control pieces decode to nothing before it; the unknown piece is text (" ⁇ "), which ends the dummy prefix.
  auto is_control = [&](int piece) { return processor_->IsControlOrUnknown(piece) && piece != processor_->unk_id(); };
  const auto first = std::find_if_not(pieces.begin(), pieces.end(), is_control);
  if (first == pieces.end() || *first == processor_->unk_id()) return false;
  if (processor_->IdToPiece(*first).rfind("\xE2\x96\x81", 0) != 0) return false;
  // Without a dummy prefix (add_dummy_prefix false) libsentencepiece keeps the space.
  std::string alone, error;
  return processor_->Decode({*first}, &alone, &error) && (alone.empty() || alone[0] != ' ');
}

std::string SentencePieceTokenizer::TokenText(int64_t id) const {
  if (const AddedToken* added = BeyondPieces(id)) return added->content;
  if (id < 0 || id >= pieces_) return "";
  const int i = static_cast<int>(id);
  const std::string piece = processor_->IdToPiece(i);
  if (processor_->IsControlOrUnknown(i)) return piece;
  std::string text, error;
  if (!processor_->Decode({i}, &text, &error)) return piece;
  // A byte-fallback piece of a non-ASCII byte ("<0xE2>") decodes alone to U+FFFD. Its text is the byte
  // itself, as a byte-level BPE token's is (callers make text valid UTF-8 where they show it).
  if (const std::optional<char> byte = text == "\xEF\xBF\xBD" ? BytePieceValue(piece) : std::nullopt) {
    return std::string(1, *byte);
  }
  // Decoding a lone piece drops its word-boundary mark; show it as the space it stands for.
  if (piece.rfind("\xE2\x96\x81", 0) == 0 && (text.empty() || text[0] != ' ')) text = " " + text;
  return text;
}

bool SentencePieceTokenizer::IsSpecial(int64_t id) const {
  if (id < 0 || id >= vocab_size_ || id == special_.unk) return false;
  if (const AddedToken* added = added_.Find(id); added != nullptr && added->special) return true;
  return id < pieces_ && processor_->IsControlOrUnknown(static_cast<int>(id));
}

bool SentencePieceTokenizer::SkippedInText(int64_t id) const {
  return IsSpecial(id) || (id >= 0 && id < pieces_ && processor_->IsControlOrUnknown(static_cast<int>(id)));
}

int64_t SentencePieceTokenizer::vocab_size() const { return vocab_size_; }

}  // namespace attribution::engine
