// SPDX-License-Identifier: Apache-2.0
// The colours and escapes the renderers share (heatmap.cc, component_render.cc). Private to client/.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace attribution::client {

struct Rgb {
  int r, g, b;
};

// Captum's palette: white at 0, green for positive, red for negative, saturating at |value| = scale.
inline Rgb ColorOf(double value, double scale) {
  const double strength = scale > 0 ? std::min(1.0, std::fabs(value) / scale) : 0;
  const int fade = static_cast<int>(std::lround(255 * (1 - 0.75 * strength)));
  return value >= 0 ? Rgb{fade, 255, fade} : Rgb{255, fade, fade};
}

inline double MaxAbs(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) m = std::max(m, std::fabs(v));
  return m;
}

// Makes whitespace and control characters visible and keeps a token on one line.
inline std::string Printable(const std::string& text) {
  return absl::StrReplaceAll(text, {{"\n", "\\n"}, {"\t", "\\t"}, {"\r", "\\r"}, {"\x1b", "\\e"}});
}

inline std::string Paint(const std::string& text, Rgb c) {
  return absl::StrFormat("\x1b[48;2;%d;%d;%dm\x1b[38;2;0;0;0m%s\x1b[0m", c.r, c.g, c.b, text);
}

inline std::string Css(Rgb c) { return absl::StrFormat("background:rgb(%d,%d,%d)", c.r, c.g, c.b); }

}  // namespace attribution::client
