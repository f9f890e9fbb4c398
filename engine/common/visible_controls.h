// SPDX-License-Identifier: Apache-2.0
// Text for a terminal with its control characters made visible: shared by the server's stderr line and the
// client's renderers, which both print what a model's files or a server hold (a model_type, a tensor's name,
// a token, an error message). Header-only, so a client links nothing of the engine for it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "engine/common/utf8.h"

namespace attribution {

// The code point of a control beyond ASCII that the `length`-byte UTF-8 sequence at `text[i]` encodes, or 0:
// the C1 controls (U+0080..U+009F; U+009B is CSI to a terminal), the bidirectional controls (U+061C, U+200E/F,
// U+202A-U+202E, U+2066-U+2069: they reorder what the terminal shows after them, "Trojan Source") and the line
// and paragraph separators U+2028/U+2029 (line breaks to log viewers). Shown, they are spelled \uNNNN.
inline uint32_t NonAsciiControl(std::string_view text, size_t i, size_t length) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
  if (length == 2 && byte(0) == 0xc2 && byte(1) <= 0x9f) return byte(1);
  if (length == 2 && byte(0) == 0xd8 && byte(1) == 0x9c) return 0x061c;
  if (length != 3 || byte(0) != 0xe2) return 0;
  const uint32_t code = 0x2000 | ((byte(1) & 0x3fu) << 6) | (byte(2) & 0x3fu);
  const bool control = code == 0x200e || code == 0x200f || code == 0x2028 || code == 0x2029 ||
                       (code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069);
  return control ? code : 0;
}

// `message` with its control characters visible: C0 controls and DEL become \n \t \r \e or \xNN, the C1
// controls (U+0080..U+009F) and bidirectional controls \uNNNN, and bytes that are not UTF-8 \xNN (a lone 0x9b
// is CSI to an 8-bit terminal), so that it cannot move the cursor, clear, recolour or retitle the terminal.
// `keep_line_breaks`: newlines and tabs stay as they are (messages, generated text).
inline std::string EscapeControls(absl::string_view message, bool keep_line_breaks) {
  const std::string_view text(message.data(), message.size());  // absl's is not std's on Debian
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(text, i, /*subpart=*/false);
      if (length == 0) {
        absl::StrAppendFormat(&out, "\\x%02x", c);
      } else if (const uint32_t control = NonAsciiControl(text, i, length); control != 0) {
        absl::StrAppendFormat(&out, "\\u%04x", control);
      } else {
        out.append(text.data() + i, length);
      }
      i += (length == 0 ? 1 : length) - 1;
    } else if (c >= 0x20 && c != 0x7f) {
      out.push_back(static_cast<char>(c));
    } else if (keep_line_breaks && (c == '\n' || c == '\t')) {
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == 0x1b) {
      out += "\\e";
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    }
  }
  return out;
}

}  // namespace attribution
