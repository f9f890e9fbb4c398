// SPDX-License-Identifier: Apache-2.0
// libattribution_sentencepiece.so: libsentencepiece behind a C interface, loaded at run time by
// sentencepiece_backend.cc with RTLD_LOCAL | RTLD_DEEPBIND. Debian's libsentencepiece bundles and
// exports protobuf 3.14; opened this way it binds to its own copy, and the process's libprotobuf
// (gRPC's) never sees it. Includes no abseil header (sentencepiece's declares its own string_view).
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

void SetError(const std::string& message, char* error, size_t error_size) {
  if (error_size == 0) return;
  std::strncpy(error, message.c_str(), error_size - 1);
  error[error_size - 1] = '\0';
}

char* CopyOut(const std::string& text, size_t* length) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  *length = text.size();
  return out;
}

}  // namespace

extern "C" {

// A processor of the serialized ModelProto `model` (`size` bytes), or null with `error` set. The caller
// has read and checked the bytes (sentencepiece_backend.cc): loading runs the model's self-test, which
// already normalizes text.
void* attribution_spm_load_serialized(const char* model, size_t size, char* error, size_t error_size) {
  try {
    auto* processor = new sentencepiece::SentencePieceProcessor();
    const auto status = processor->LoadFromSerializedProto(std::string_view(model, size));
    if (status.ok()) return processor;
    SetError(status.ToString(), error, error_size);
    delete processor;
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
  }
  return nullptr;
}

void attribution_spm_free(void* processor) { delete static_cast<sentencepiece::SentencePieceProcessor*>(processor); }
void attribution_spm_free_buffer(void* buffer) { std::free(buffer); }

// Pieces as malloc'ed triples (id, begin, end); the count, or -1.
long attribution_spm_encode(void* processor, const char* text, size_t length, long** triples) {
  try {
    const sentencepiece::ImmutableSentencePieceText encoded =
        static_cast<sentencepiece::SentencePieceProcessor*>(processor)->EncodeAsImmutableProto(
            std::string(text, length));
    const size_t count = encoded.pieces_size();
    *triples = static_cast<long*>(std::malloc(sizeof(long) * 3 * (count + 1)));
    for (size_t i = 0; i < count; ++i) {
      const auto piece = encoded.pieces(static_cast<int>(i));
      (*triples)[3 * i] = static_cast<long>(piece.id());
      (*triples)[3 * i + 1] = static_cast<long>(piece.begin());
      (*triples)[3 * i + 2] = static_cast<long>(piece.end());
    }
    return static_cast<long>(count);
  } catch (const std::exception&) {
    return -1;
  }
}

// The decoded text (malloc'ed), or null with `error` set.
char* attribution_spm_decode(void* processor, const int* ids, size_t count, size_t* length, char* error,
                             size_t error_size) {
  try {
    std::string text;
    const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Decode(
        std::vector<int>(ids, ids + count), &text);
    if (status.ok()) return CopyOut(text, length);
    SetError(status.ToString(), error, error_size);
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
  }
  return nullptr;
}

// kind: 0 size, 1 bos, 2 eos, 3 pad, 4 unk.
int attribution_spm_id(void* processor, int kind) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
  switch (kind) {
    case 0:
      return p->GetPieceSize();
    case 1:
      return p->bos_id();
    case 2:
      return p->eos_id();
    case 3:
      return p->pad_id();
    default:
      return p->unk_id();
  }
}

int attribution_spm_is_control_or_unknown(void* processor, int id) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
  return p->IsControl(id) || p->IsUnknown(id);
}

// The id of `piece` (length bytes), or -1 when the model has no such piece.
int attribution_spm_piece_to_id(void* processor, const char* piece, size_t length) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
  const std::string text(piece, length);
  const int id = p->PieceToId(text);
  return id >= 0 && id < p->GetPieceSize() && p->IdToPiece(id) == text ? id : -1;
}

char* attribution_spm_id_to_piece(void* processor, int id, size_t* length) {
  return CopyOut(static_cast<sentencepiece::SentencePieceProcessor*>(processor)->IdToPiece(id), length);
}

}  // extern "C"
