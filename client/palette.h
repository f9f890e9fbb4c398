// SPDX-License-Identifier: Apache-2.0
// The colours and escapes the renderers share (heatmap.cc, component_render.cc, cli_main.cc). Private
// to client/.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace attribution::client {

struct Rgb {
  int r, g, b;
};

// The colour of a value that is NaN or infinite: neither sign nor strength means anything there.
inline constexpr Rgb kNonFiniteColor{190, 190, 190};

// Captum's palette: white at 0, green for positive, red for negative, saturating at |value| = scale;
// grey for NaN and infinities (std::min(1.0, NaN) is 1 and NaN >= 0 is false: the strongest red).
inline Rgb ColorOf(double value, double scale) {
  if (!std::isfinite(value)) return kNonFiniteColor;
  const double strength = std::isfinite(scale) && scale > 0 ? std::min(1.0, std::fabs(value) / scale) : 0;
  const int fade = static_cast<int>(std::lround(255 * (1 - 0.75 * strength)));
  return value >= 0 ? Rgb{fade, 255, fade} : Rgb{255, fade, fade};
}

// The largest finite |value|: the scale ColorOf saturates at (one infinity would wash out the rest).
inline double MaxAbs(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) {
    if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  }
  return m;
}

// Whether `x` ranks before `y`, strongest |value| first and NaN / infinities last: a strict weak order
// for std::sort (comparing |NaN| is not one).
inline bool StrongerThan(double x, double y) {
  auto key = [](double v) { return std::isfinite(v) ? std::fabs(v) : -1.0; };
  return key(x) > key(y);
}

// The length of the UTF-8 sequence that starts at text[i], 0 when none does (a stray continuation
// byte, an overlong or surrogate form, a sequence cut short).
inline size_t Utf8SequenceLength(absl::string_view text, size_t i) {
  const unsigned char c = static_cast<unsigned char>(text[i]);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xbf;  // the second byte's range
  if (c >= 0xc2 && c <= 0xdf) {
    length = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    length = 3;
    if (c == 0xe0) low = 0xa0;
    if (c == 0xed) high = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    length = 4;
    if (c == 0xf0) low = 0x90;
    if (c == 0xf4) high = 0x8f;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    const unsigned char byte = static_cast<unsigned char>(text[i + k]);
    if (byte < (k == 1 ? low : 0x80) || byte > (k == 1 ? high : 0xbf)) return 0;
  }
  return length;
}

// `text` with its control characters visible, for a terminal: C0 controls and DEL become \n \t \r \e
// or \xNN, the C1 controls (U+0080..U+009F) \u00NN, and bytes that are not UTF-8 \xNN (a lone 0x9b is
// CSI to an 8-bit terminal), so that text from a server (a token, a model name, an error message)
// cannot move the cursor, clear, recolour or retitle the terminal. `keep_line_breaks`: newlines and
// tabs stay as they are (messages, generated text).
// The code point of a Unicode bidirectional control that a 3-byte (or, for U+061C, 2-byte) UTF-8 sequence
// at `text[i]` encodes (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), or 0: they reorder what the terminal
// shows after them ("Trojan Source"), so they are escaped as the other controls are.
inline uint32_t BidiControl(absl::string_view text, size_t i, size_t length) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
  if (length == 2 && byte(0) == 0xd8 && byte(1) == 0x9c) return 0x061c;
  if (length != 3 || byte(0) != 0xe2) return 0;
  const uint32_t code = 0x2000 | ((byte(1) & 0x3fu) << 6) | (byte(2) & 0x3fu);
  const bool bidi =
      code == 0x200e || code == 0x200f || (code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069);
  return bidi ? code : 0;
}

inline std::string EscapeControls(absl::string_view text, bool keep_line_breaks) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(text, i);
      if (length == 0) {
        absl::StrAppendFormat(&out, "\\x%02x", c);
      } else if (c == 0xc2 && static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
        absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(text[i + 1]));
      } else if (const uint32_t bidi = BidiControl(text, i, length); bidi != 0) {
        absl::StrAppendFormat(&out, "\\u%04x", bidi);
      } else {
        out.append(text.data() + i, length);
      }
      i += std::max<size_t>(length, 1) - 1;
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

// A token or name for a terminal on one line: every control character visible, \n and \t included.
// A value as tables show it: an exact zero as 0, whatever its sign (LIME's lasso, for one, answers -0 for
// features it drops, which read as a negative attribution).
inline double Unsigned0(double v) { return v == 0 ? 0.0 : v; }

inline std::string Printable(absl::string_view text) { return EscapeControls(text, /*keep_line_breaks=*/false); }

// A message or text for a terminal: control characters visible, line breaks and tabs kept.
inline std::string TerminalText(absl::string_view text) { return EscapeControls(text, /*keep_line_breaks=*/true); }

inline std::string Paint(const std::string& text, Rgb c) {
  return absl::StrFormat("\x1b[48;2;%d;%d;%dm\x1b[38;2;0;0;0m%s\x1b[0m", c.r, c.g, c.b, text);
}

inline std::string Css(Rgb c) { return absl::StrFormat("background:rgb(%d,%d,%d)", c.r, c.g, c.b); }

}  // namespace attribution::client
