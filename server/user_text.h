// SPDX-License-Identifier: Apache-2.0
// Strings that clients send (model names and the like) appear in messages and logs only as a short
// prefix: a huge one would otherwise be echoed whole into the status, where past gRPC's 8 KB metadata
// limit the client sees RESOURCE_EXHAUSTED instead of the real code, and into every log line.
//
//   absl::NotFoundError(absl::StrCat("no model named ", QuoteUserText(name)));
//   // a 10,000-byte name: no model named "mmm...m…(10000 bytes)", 64 bytes of it quoted
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace attribution::server {

inline constexpr size_t kUserTextPrefixBytes = 64;

// `text` itself when it holds at most `max_bytes` bytes; otherwise its first `max_bytes` bytes (fewer
// where that would split a UTF-8 character) followed by "…(N bytes)", N the full length.
std::string AbbreviateUserText(absl::string_view text, size_t max_bytes = kUserTextPrefixBytes);

// AbbreviateUserText in double quotes.
std::string QuoteUserText(absl::string_view text, size_t max_bytes = kUserTextPrefixBytes);

}  // namespace attribution::server
