// SPDX-License-Identifier: Apache-2.0
// The text of a GenerateStream as it arrives: each streamed token carries its own bytes, and a
// character that a byte-level tokenizer split across tokens shows as U+FFFD in each token's text. Joining
// the bytes instead, and holding back a character's first bytes until the token that completes it comes,
// prints what GenerateResponse.text reads (special tokens skipped, as there). Given the request's stop
// strings, it also holds back text that may begin one and shows nothing from a stop string on, as the
// response's text ends before it (the stream still carries the token that completed it).
//
//   StreamedText shown(options.stop);
//   client.GenerateStream(options, [&](const Token& t) { std::cout << shown.Add(t); });
//   std::cout << shown.Finish();
#pragma once

#include <string>
#include <vector>

#include "client/attribution_client.h"

namespace attribution::client {

// Not thread-safe: one stream's tokens, in order.
class StreamedText {
 public:
  explicit StreamedText(std::vector<std::string> stop = {});

  // The text `token` completes: valid UTF-8, possibly empty while a character is still incomplete or the
  // text may begin a stop string.
  std::string Add(const Token& token);
  // What is still held back (a character the stream ended inside, as U+FFFD; the start of a stop string
  // that never completed), or nothing once a stop string was found.
  std::string Finish();

 private:
  // `text` appended to what was held back; returns what can be shown now.
  std::string Release(std::string text);

  std::vector<std::string> stop_;  // the request's stop strings (empty ones left out)
  std::string pending_;            // bytes received but not yet shown: the start of one character at most
  std::string held_;               // whole characters not yet shown: the start of a stop string, perhaps
  bool stopped_ = false;           // a stop string was found: nothing more is shown
};

}  // namespace attribution::client
