// SPDX-License-Identifier: Apache-2.0
// Includes no abseil header (see sentencepiece_backend.h).
#include "engine/tokenizer/sentencepiece_backend.h"

#include <sentencepiece_processor.h>

namespace attribution::engine {

SentencePieceBackend::SentencePieceBackend() : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceBackend::~SentencePieceBackend() = default;

std::unique_ptr<SentencePieceBackend> SentencePieceBackend::Load(const std::string& path, std::string* error) {
  // Debian's libsentencepiece bundles protobuf 3.14 and exports it. In a process that also loads the
  // system libprotobuf first (the server), sentencepiece's model parser binds to that one, whose
  // version check throws: answer with an error instead of terminating.
  try {
    std::unique_ptr<SentencePieceBackend> backend(new SentencePieceBackend());
    const auto status = backend->processor_->Load(path);
    if (!status.ok()) {
      *error = status.ToString();
      return nullptr;
    }
    return backend;
  } catch (const std::exception& e) {
    *error = std::string("libsentencepiece cannot read tokenizer.model in this process (its bundled protobuf "
                         "clashes with the system one: ") + e.what() + "); provide tokenizer.json instead";
    return nullptr;
  }
}

std::vector<SentencePiece> SentencePieceBackend::Encode(const std::string& text) const {
  std::vector<SentencePiece> pieces;
  // The immutable form needs no protobuf headers (engine/ never includes protobuf).
  const sentencepiece::ImmutableSentencePieceText encoded = processor_->EncodeAsImmutableProto(text);
  for (size_t i = 0; i < encoded.pieces_size(); ++i) {
    const auto piece = encoded.pieces(static_cast<int>(i));
    pieces.push_back({static_cast<int>(piece.id()), piece.begin(), piece.end()});
  }
  return pieces;
}

bool SentencePieceBackend::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  const auto status = processor_->Decode(ids, text);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

int SentencePieceBackend::size() const { return processor_->GetPieceSize(); }
int SentencePieceBackend::bos_id() const { return processor_->bos_id(); }
int SentencePieceBackend::eos_id() const { return processor_->eos_id(); }
int SentencePieceBackend::pad_id() const { return processor_->pad_id(); }
int SentencePieceBackend::unk_id() const { return processor_->unk_id(); }
bool SentencePieceBackend::IsControlOrUnknown(int id) const { return processor_->IsControl(id) || processor_->IsUnknown(id); }
std::string SentencePieceBackend::IdToPiece(int id) const { return processor_->IdToPiece(id); }

}  // namespace attribution::engine
