// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Create(const std::string& model_path,
                                                                                       bool add_bos, bool add_eos) {
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
  return tokenizer;
}

absl::StatusOr<Encoding> SentencePieceTokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  RETURN_IF_ERROR(CheckUtf8(text));
  Encoding out;
  if (add_special_tokens && add_bos_) {
    out.ids.push_back(*special_.bos);
    out.spans.push_back({0, 0});
  }
  for (const SentencePiece& piece : processor_->Encode(text)) {
    out.ids.push_back(piece.id);
    out.spans.push_back({piece.begin, piece.end});
  }
  if (add_special_tokens && add_eos_) {
    out.ids.push_back(*special_.eos);
    out.spans.push_back({text.size(), text.size()});
  }
  return out;
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(const std::vector<int64_t>& ids,
                                                           bool skip_special_tokens) const {
  std::vector<int> kept;
  for (int64_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
    // As transformers' tokenizer for a tokenizer.model (libsentencepiece itself refuses such an id).
    if (id >= vocab_size()) continue;
    if (skip_special_tokens && processor_->IsControlOrUnknown(static_cast<int>(id))) continue;
    kept.push_back(static_cast<int>(id));
  }
  std::string text, error;
  if (!processor_->Decode(kept, &text, &error)) return absl::InternalError(absl::StrCat("sentencepiece: ", error));
  return text;
}

std::string SentencePieceTokenizer::TokenText(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
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
  if (id < 0 || id >= vocab_size() || id == special_.unk) return false;
  return processor_->IsControlOrUnknown(static_cast<int>(id));
}

int64_t SentencePieceTokenizer::vocab_size() const { return processor_->size(); }

}  // namespace attribution::engine
