// SPDX-License-Identifier: Apache-2.0
#include "server/conversion_parts.h"

#include <google/protobuf/unknown_field_set.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/continuation.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::server {
namespace {

int64_t CodePoints(absl::string_view text, size_t bytes) {
  bytes = std::min(bytes, text.size());
  return std::count_if(text.begin(), text.begin() + bytes,
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

// The text a prompt stands for: its own text, or its ids decoded. Tokenizers split text at special tokens and
// tokenize each piece alone, so text after a special token does not continue the text before it: an ids
// prompt's text is its text from its last special token on (decoding it all without its special tokens joined
// the pieces, and " No" after "A:</s>" became other tokens than after the same prompt sent as text). A bos at
// the start is the tokenizer's own, as a text prompt's is, and a special token whose text does not encode as
// itself splits no text: neither ends a piece (a SentencePiece model's unknown piece, named in text, does).
absl::StatusOr<std::string> PromptText(const ResolvedInput& prompt, const engine::Tokenizer& tokenizer) {
  if (!prompt.encoding.spans.empty()) return prompt.text;
  const std::vector<int64_t>& ids = prompt.encoding.ids;
  const auto split = std::find_if(ids.rbegin(), ids.rend(), [&](int64_t id) { return tokenizer.SkippedInText(id); });
  if (split == ids.rend()) return tokenizer.Decode(ids, /*skip_special_tokens=*/true);
  const std::string name = tokenizer.TokenText(*split);
  const absl::StatusOr<engine::Encoding> named = tokenizer.Encode(name, /*add_special_tokens=*/false);
  const bool own_bos = split.base() - 1 == ids.begin() && ids.front() == tokenizer.special_tokens().bos;
  if (own_bos || !named.ok() || named->ids != std::vector<int64_t>{*split}) {
    return tokenizer.Decode(ids, /*skip_special_tokens=*/true);
  }
  // From the special token on, so that no leading space of the text after it is taken for the decoding's first.
  ASSIGN_OR_RETURN(std::string text, tokenizer.Decode({split.base() - 1, ids.end()}, /*skip_special_tokens=*/false));
  if (absl::StartsWith(text, name)) return text;
  // libsentencepiece decodes a control piece to nothing and the unknown piece to " ⁇ ": the text after it, behind
  // its name (SentencePiece puts the leading space its decoding drops back on each piece of text).
  ASSIGN_OR_RETURN(std::string after, tokenizer.Decode({split.base(), ids.end()}, /*skip_special_tokens=*/true));
  return name + after;
}

// A text target as the tokens that follow the prompt's own when both are tokenized together.
absl::StatusOr<ResolvedInput> ResolveContinuation(const std::string& text, absl::string_view field,
                                                  const ResolvedInput& prompt, const engine::Tokenizer& tokenizer,
                                                  absl::string_view other_way) {
  if (absl::Status utf8 = engine::CheckUtf8(text); !utf8.ok()) return InField(absl::StrCat(field, ".text"), utf8);
  absl::StatusOr<std::string> prompt_text = PromptText(prompt, tokenizer);
  if (!prompt_text.ok()) return InField("prompt", prompt_text.status());
  absl::StatusOr<engine::Encoding> encoding = engine::EncodeContinuation(tokenizer, *prompt_text, text);
  if (!encoding.ok()) {
    return InField(field, absl::Status(encoding.status().code(), absl::StrCat(encoding.status().message(), other_way)));
  }
  return ResolvedInput{.text = text, .encoding = std::move(*encoding)};
}

}  // namespace

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status InField(absl::string_view field, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
}

absl::Status UnknownEnumValue(absl::string_view field, int value, const google::protobuf::EnumDescriptor* descriptor) {
  std::string names;
  for (int i = 0; i < descriptor->value_count(); ++i)
    absl::StrAppend(&names, i ? ", " : "", descriptor->value(i)->name());
  return Invalid(field, absl::StrCat("unknown value ", value, " (one of: ", names, ")"));
}

bool IsSet(const v1::Input& input) { return !input.text().empty() || input.token_ids_size() > 0; }

namespace {

// A token stands for at most longest_token_bytes of normalized text, and normalization (NFKC) leaves a
// character at least a quarter of its bytes, so a longer text holds more tokens than any request may, unless
// normalization drops much of it (SentencePiece collapses runs of whitespace): refused, as a bound on bytes,
// before tokenizing, it cannot cost seconds of CPU and a concurrency slot. Normalization can also
// expand a text (NFKC's U+FDFA: 3 bytes to 33, some 3.4 million tokens from 420 KB that took 3-5 s and
// 600 MB to encode before their refusal), so the text's largest normalized form is held to the same bound.
absl::Status CheckTextFits(const std::string& text, absl::string_view field, const ServedModel& model) {
  constexpr int64_t kMostExpansion = 11;  // bytes of NFKD per byte of text, at most
  const int64_t max_bytes = MaxTextBytes(model);
  const int64_t bytes = static_cast<int64_t>(text.size());
  const auto too_long = [&](const std::string& size) {
    return Invalid(absl::StrCat(field, ".text"),
                   absl::StrCat("is ", size, ", over the ", max_bytes, " bytes that this model's limits.max_tokens of ",
                                model.spec.limits.max_tokens, " tokens allows"));
  };
  if (bytes > max_bytes) return too_long(absl::StrCat(bytes, " bytes"));
  if (bytes * kMostExpansion <= max_bytes) return absl::OkStatus();
  if (const int64_t normalized = engine::NormalizedBytesBound(text); normalized > max_bytes) {
    return too_long(absl::StrCat(bytes, " bytes (", normalized, " once Unicode-normalized)"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t MaxTextBytes(const ServedModel& model) {
  constexpr int64_t kNormalizationShrink = 4;
  return kNormalizationShrink * model.tokenizer->longest_token_bytes() * model.spec.limits.max_tokens;
}

absl::StatusOr<ResolvedInput> Resolve(const v1::Input& input, absl::string_view field, const ServedModel& model,
                                      bool add_special_tokens) {
  if (!input.text().empty() && input.token_ids_size() > 0) return Invalid(field, "set text or token_ids, not both");
  ResolvedInput out;
  if (input.token_ids_size() > 0) {
    out.encoding.ids.assign(input.token_ids().begin(), input.token_ids().end());
    RETURN_IF_ERROR(
        InField(field, engine::CheckTokenIds(out.encoding.ids, "token_ids", model.model->config().vocab_size)));
    return out;
  }
  RETURN_IF_ERROR(CheckTextFits(input.text(), field, model));
  out.text = input.text();
  absl::StatusOr<engine::Encoding> encoding = model.tokenizer->Encode(out.text, add_special_tokens);
  if (!encoding.ok()) return InField(absl::StrCat(field, ".text"), encoding.status());
  out.encoding = std::move(*encoding);
  return out;
}

absl::StatusOr<engine::Priority> ToPriority(v1::Priority priority) {
  switch (priority) {
    case v1::PRIORITY_UNSPECIFIED:
    case v1::NORMAL:
      return engine::Priority::kNormal;
    case v1::LOW:
      return engine::Priority::kLow;
    case v1::HIGH:
      return engine::Priority::kHigh;
    default:
      return UnknownEnumValue("priority", priority, v1::Priority_descriptor());
  }
}

absl::StatusOr<engine::IntegrationRule> ToRule(v1::IntegrationRule rule, bool to_tolerance) {
  return FromProtoEnum("rule", rule, to_tolerance ? v1::FEJER2 : v1::GAUSS_LEGENDRE, v1::IntegrationRule_descriptor(),
                       &engine::ParseIntegrationRule);
}

v1::IntegrationRule ToProtoRule(engine::IntegrationRule rule) {
  const google::protobuf::EnumDescriptor* rules = v1::IntegrationRule_descriptor();
  for (int i = 0; i < rules->value_count(); ++i) {
    const google::protobuf::EnumValueDescriptor* value = rules->value(i);
    if (value->number() == v1::INTEGRATION_RULE_UNSPECIFIED) continue;
    absl::StatusOr<engine::IntegrationRule> parsed = engine::ParseIntegrationRule(absl::AsciiStrToLower(value->name()));
    if (parsed.ok() && *parsed == rule) return static_cast<v1::IntegrationRule>(value->number());
  }
  return v1::INTEGRATION_RULE_UNSPECIFIED;
}

void FillTokens(const ResolvedInput& input, const engine::Tokenizer& tokenizer,
                google::protobuf::RepeatedPtrField<v1::Token>* out) {
  for (size_t i = 0; i < input.encoding.ids.size(); ++i) {
    v1::Token* token = out->Add();
    SetTokenText(input.encoding.ids[i], tokenizer, token);
    token->set_special(tokenizer.IsSpecial(input.encoding.ids[i]));
    if (i < input.encoding.spans.size()) {
      const engine::TokenSpan& span = input.encoding.spans[i];
      token->set_byte_begin(span.begin);
      token->set_byte_end(span.end);
      token->set_char_begin(CodePoints(input.text, span.begin));
      token->set_char_end(CodePoints(input.text, span.end));
    }
  }
}

// A target or foil: token ids as they are; text as the prompt's continuation or on its own.
absl::StatusOr<ResolvedInput> ResolveContinuationOf(const v1::Input& input, absl::string_view field,
                                                    const ResolvedInput& prompt, const ServedModel& model,
                                                    absl::string_view other_way) {
  if (input.text().empty() || input.token_ids_size() > 0) return Resolve(input, field, model, false);
  RETURN_IF_ERROR(CheckTextFits(input.text(), field, model));
  return ResolveContinuation(input.text(), field, prompt, *model.tokenizer, other_way);
}

absl::Status CheckTargetTokenization(v1::TargetTokenization tokenization) {
  if (v1::TargetTokenization_IsValid(tokenization)) return absl::OkStatus();
  return UnknownEnumValue("target_tokenization", tokenization, v1::TargetTokenization_descriptor());
}

absl::StatusOr<ResolvedInput> ResolveTarget(const v1::Input& input, absl::string_view field,
                                            const ResolvedInput& prompt, v1::TargetTokenization tokenization,
                                            const ServedModel& model) {
  RETURN_IF_ERROR(CheckTargetTokenization(tokenization));
  if (input.text().empty() || input.token_ids_size() > 0) return Resolve(input, field, model, false);
  switch (tokenization) {
    case v1::TARGET_TOKENIZATION_UNSPECIFIED:
    case v1::CONTINUATION:
      return ResolveContinuationOf(input, field, prompt, model, "; or set target_tokenization = SEPARATE");
    case v1::SEPARATE: {
      // A normalizer can drop all of a text (SentencePiece's whitespace, a byte-order mark); an empty target would
      // read as unset and have one generated, which the caller never asked for.
      ASSIGN_OR_RETURN(ResolvedInput resolved, Resolve(input, field, model, false));
      if (resolved.empty()) {
        return Invalid(
            absl::StrCat(field, ".text"),
            "makes no tokens on its own (this tokenizer drops all of it); give text that does, or token_ids");
      }
      return resolved;
    }
    default:  // ruled out above; a value added to the proto lands here
      return UnknownEnumValue("target_tokenization", tokenization, v1::TargetTokenization_descriptor());
  }
}

namespace {

const char* WireTypeName(google::protobuf::UnknownField::Type type) {
  switch (type) {
    case google::protobuf::UnknownField::TYPE_VARINT:
      return "a varint";
    case google::protobuf::UnknownField::TYPE_FIXED32:
      return "a fixed32";
    case google::protobuf::UnknownField::TYPE_FIXED64:
      return "a fixed64";
    case google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED:
      return "length-delimited";
    case google::protobuf::UnknownField::TYPE_GROUP:
      return "a group";
  }
  return "another wire type";
}

constexpr size_t kMaxNamedUnknownFields = 8;

absl::Status CheckWireTypesAt(const google::protobuf::Message& message, const std::string& prefix,
                              std::vector<std::string>* unknown) {
  const google::protobuf::Reflection& reflection = *message.GetReflection();
  const google::protobuf::UnknownFieldSet& fields = reflection.GetUnknownFields(message);
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& field = fields.field(i);
    if (const auto* known = message.GetDescriptor()->FindFieldByNumber(field.number())) {
      const std::string declared = known->enum_type() != nullptr      ? known->enum_type()->full_name()
                                   : known->message_type() != nullptr ? known->message_type()->full_name()
                                                                      : known->type_name();
      return Invalid(absl::StrCat(prefix, known->name()),
                     absl::StrCat("field ", field.number(), " arrived as ", WireTypeName(field.type()),
                                  ", but it is declared ", known->is_repeated() ? "repeated " : "", declared,
                                  " (a client built from another attribution.proto?)"));
    }
    // The first few distinct ones by name, then one "more fields": 160,000 of them, deduplicated against all the
    // others, took 33 s of a conversion thread for a 0.64 MB request.
    if (unknown == nullptr || unknown->size() > kMaxNamedUnknownFields) continue;
    const std::string name = absl::StrCat(prefix, "field ", field.number());
    if (std::find(unknown->begin(), unknown->end(), name) != unknown->end()) continue;
    unknown->push_back(unknown->size() < kMaxNamedUnknownFields ? name : "more fields");
  }
  std::vector<const google::protobuf::FieldDescriptor*> set;
  reflection.ListFields(message, &set);
  for (const google::protobuf::FieldDescriptor* field : set) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (!field->is_repeated()) {
      RETURN_IF_ERROR(
          CheckWireTypesAt(reflection.GetMessage(message, field), absl::StrCat(prefix, field->name(), "."), unknown));
      continue;
    }
    for (int i = 0; i < reflection.FieldSize(message, field); ++i) {
      RETURN_IF_ERROR(CheckWireTypesAt(reflection.GetRepeatedMessage(message, field, i),
                                       absl::StrCat(prefix, field->name(), "[", i, "]."), unknown));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckWireTypes(const google::protobuf::Message& message, std::vector<std::string>* unknown) {
  return CheckWireTypesAt(message, "", unknown);
}

}  // namespace attribution::server
