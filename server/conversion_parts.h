// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the request converters (conversion.cc, component_conversion.cc): field-named
// errors, inputs resolved to ids, proto enums mapped to the engine's, tokens described for responses.
// Private to server/.
#pragma once
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/conversion.h"

namespace attribution::server {

// INVALID_ARGUMENT "field: problem".
absl::Status Invalid(absl::string_view field, absl::string_view problem);
// Prefixes an engine message with the proto field it concerns.
absl::Status InField(absl::string_view field, const absl::Status& status);
// INVALID_ARGUMENT for an enum value this server does not know, listing the ones it does.
absl::Status UnknownEnumValue(absl::string_view field, int value, const google::protobuf::EnumDescriptor* descriptor);

// Fields of `message` (and the messages in it) that arrived with a number this server's attribution.proto knows
// but another wire type: protobuf keeps them as unknown fields and reads the field as unset (n_steps sent as a
// fixed32 ran 50 steps; a method sent length-delimited ran integrated gradients): INVALID_ARGUMENT naming the
// field. Numbers it does not know (a newer client's settings) are appended to `unknown` as "path field N", when
// given: the first 8 distinct ones, then "more fields".
absl::Status CheckWireTypes(const google::protobuf::Message& message, std::vector<std::string>* unknown = nullptr);

// Whether `input` holds text or ids. Where a set but empty Input means something (a feature group's baseline
// deletes its span), read the parent's has_ instead.
bool IsSet(const v1::Input& input);
// The most bytes a text may have for the model's max_tokens: 4 x its longest token's bytes per token (what
// normalization may take away), checked before the text is tokenized.
int64_t MaxTextBytes(const ServedModel& model);
// Token ids as they are (checked against the vocabulary), or text tokenized.
absl::StatusOr<ResolvedInput> Resolve(const v1::Input& input, absl::string_view field, const ServedModel& model,
                                      bool add_special_tokens);

// Token ids as they are; text as the prompt's continuation (the tokens that follow the prompt's own when
// both are tokenized together). `other_way` ends the message of text that continues the prompt in no
// tokens of its own (the request's other ways to give it).
absl::StatusOr<ResolvedInput> ResolveContinuationOf(const v1::Input& input, absl::string_view field,
                                                    const ResolvedInput& prompt, const ServedModel& model,
                                                    absl::string_view other_way = "");
// INVALID_ARGUMENT naming target_tokenization for a value outside its enum, whatever the targets are
// (ids, text or none): a request is refused for a bad field even where the field is not read.
absl::Status CheckTargetTokenization(v1::TargetTokenization tokenization);
// A target or foil: as ResolveContinuationOf, or text on its own (`tokenization` SEPARATE).
absl::StatusOr<ResolvedInput> ResolveTarget(const v1::Input& input, absl::string_view field,
                                            const ResolvedInput& prompt, v1::TargetTokenization tokenization,
                                            const ServedModel& model);

absl::StatusOr<engine::Priority> ToPriority(v1::Priority priority);
// An unspecified rule is Gauss-Legendre (Captum's), or Fejér's second rule when integrating to a tolerance.
absl::StatusOr<engine::IntegrationRule> ToRule(v1::IntegrationRule rule, bool to_tolerance = false);
// The proto's name of a rule (settings_used).
v1::IntegrationRule ToProtoRule(engine::IntegrationRule rule);

// The engine value of a proto enum value, matched by name so that the engine's parser stays the one
// table: `value`'s name in lower case (METHOD_UNSPECIFIED, 0, stands for `unspecified`). The engine
// keeps Captum's one-word spelling of some names ("gausslegendre" for GAUSS_LEGENDRE), so a name is
// also tried without underscores. A value outside the proto's enum is INVALID_ARGUMENT naming
// `field`; a proto value the engine cannot parse is a bug of ours (conversion_test maps each).
template <typename EngineEnum>
absl::StatusOr<EngineEnum> FromProtoEnum(absl::string_view field, int value, int unspecified,
                                         const google::protobuf::EnumDescriptor* descriptor,
                                         absl::StatusOr<EngineEnum> (*parse)(const std::string&)) {
  const google::protobuf::EnumValueDescriptor* named = descriptor->FindValueByNumber(value == 0 ? unspecified : value);
  if (named == nullptr) return UnknownEnumValue(field, value, descriptor);
  const std::string name = absl::AsciiStrToLower(named->name());
  absl::StatusOr<EngineEnum> parsed = parse(name);
  if (!parsed.ok()) {
    return absl::InternalError(absl::StrCat(field, ": ", named->name(), " has no engine counterpart"));
  }
  return parsed;
}

// The proto value named as the engine names its value, in upper case (the `_Parse` protoc generates for
// ProtoEnum); _UNSPECIFIED (0) if the proto has no such name, which conversion tests rule out for
// every engine value.
template <typename ProtoEnum, typename ProtoName>
ProtoEnum ToProtoEnum(absl::string_view engine_name, bool (*parse)(ProtoName, ProtoEnum*)) {
  ProtoEnum value{};
  if (!parse(absl::AsciiStrToUpper(engine_name), &value)) return ProtoEnum{};
  return value;
}

// Each token of `input` with its text and (for text inputs) its offsets.
void FillTokens(const ResolvedInput& input, const engine::Tokenizer& tokenizer,
                google::protobuf::RepeatedPtrField<v1::Token>* out);
// A token's id, readable text (valid UTF-8) and exact bytes, for Token and TopToken.
template <typename ProtoToken>
void SetTokenText(int64_t id, const engine::Tokenizer& tokenizer, ProtoToken* out) {
  std::string bytes = tokenizer.TokenText(id);
  out->set_id(id);
  out->set_text(engine::ToValidUtf8(bytes));
  out->set_token_bytes(std::move(bytes));
}

}  // namespace attribution::server
