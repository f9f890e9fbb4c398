// SPDX-License-Identifier: Apache-2.0
// Checks the precompiled character maps of a SentencePiece model before libsentencepiece uses them.
// libsentencepiece (0.1.97, Debian's) loads a map without looking inside it and then follows its
// darts-clone trie on every text it normalizes: a damaged map reads outside the model and crashes the
// process at the first request. Python sentencepiece 0.2 refuses such models at load; so do we.
//
//   absl::Status status = CheckPrecompiledCharsmaps(model_bytes);  // before handing them over
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace attribution::engine {

// Finds the precompiled_charsmap of the ModelProto's normalizer_spec (field 3) or denormalizer_spec
// (field 5) in `model_proto` (its serialized bytes), as protobuf reads it: the last one written. Sets
// `charsmap` to a view into `model_proto`, empty when there is none; false when the bytes are not
// protobuf wire format.
bool FindPrecompiledCharsmap(std::string_view model_proto, int spec_field, std::string_view* charsmap);

// OK when every text the normalizer can be given stays inside `charsmap` (an empty map is sound: text is
// kept as it is); INVALID_ARGUMENT saying what is wrong otherwise. `field` names the map in the message.
absl::Status CheckPrecompiledCharsmap(std::string_view charsmap, std::string_view field);

// CheckPrecompiledCharsmap on both maps of `model_proto`; INVALID_ARGUMENT also when it is not protobuf
// wire format.
absl::Status CheckPrecompiledCharsmaps(std::string_view model_proto);

}  // namespace attribution::engine
