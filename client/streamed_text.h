// SPDX-License-Identifier: Apache-2.0
// The text of a GenerateStream as it arrives: each streamed token carries its own bytes, and a
// character that a byte-level tokenizer split across tokens shows as U+FFFD in each token's text. Joining
// the bytes instead, and holding back a character's first bytes until the token that completes it comes,
// prints what GenerateResponse.text reads (special tokens skipped, as there).
//
//   StreamedText shown;
//   client.GenerateStream(options, [&](const Token& t) { std::cout << shown.Add(t); });
//   std::cout << shown.Finish();
#pragma once

#include <string>

#include "client/attribution_client.h"

namespace attribution::client {

// Not thread-safe: one stream's tokens, in order.
class StreamedText {
 public:
  // The text `token` completes: valid UTF-8, possibly empty while a character is still incomplete.
  std::string Add(const Token& token);
  // What is still held back (a character the stream ended inside), as U+FFFD.
  std::string Finish();

 private:
  std::string pending_;  // bytes received but not yet shown: the start of one character at most
};

}  // namespace attribution::client
