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
#include "engine/common/visible_controls.h"

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

// A value as tables show it: an exact zero as 0, whatever its sign (LIME's lasso, for one, answers -0 for
// features it drops, which read as a negative attribution).
inline double Unsigned0(double v) { return v == 0 ? 0.0 : v; }

// A token or name for a terminal on one line: every control character visible, \n and \t included.
inline std::string Printable(absl::string_view text) { return EscapeControls(text, /*keep_line_breaks=*/false); }

// A message or text for a terminal: control characters visible, line breaks and tabs kept.
inline std::string TerminalText(absl::string_view text) { return EscapeControls(text, /*keep_line_breaks=*/true); }

inline std::string Paint(const std::string& text, Rgb c) {
  return absl::StrFormat("\x1b[48;2;%d;%d;%dm\x1b[38;2;0;0;0m%s\x1b[0m", c.r, c.g, c.b, text);
}

inline std::string Css(Rgb c) { return absl::StrFormat("background:rgb(%d,%d,%d)", c.r, c.g, c.b); }

}  // namespace attribution::client
