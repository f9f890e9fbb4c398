// SPDX-License-Identifier: Apache-2.0
#include "client/heatmap.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/palette.h"
#include "client/result_json.h"

namespace attribution::client {
namespace {

// The prompt in order: each feature (with its index) and, between them, the fixed tokens (index -1).
struct PromptPiece {
  std::string text;
  int64_t feature = -1;
};

std::vector<PromptPiece> PromptPieces(const Attribution& a) {
  std::vector<PromptPiece> pieces;
  std::vector<bool> fixed(a.prompt_tokens.size(), false);
  for (int64_t p : a.fixed_tokens) {
    if (p >= 0 && p < static_cast<int64_t>(fixed.size())) fixed[p] = true;
  }
  size_t next = 0;  // features are disjoint and in order
  for (int64_t p = 0; p < static_cast<int64_t>(a.prompt_tokens.size());) {
    if (next < a.features.size() && a.features[next].token_begin == p) {
      pieces.push_back({a.features[next].text, static_cast<int64_t>(next)});
      p = std::max(p + 1, a.features[next++].token_end);
      continue;
    }
    if (fixed[p]) pieces.push_back({a.prompt_tokens[p].text, -1});
    ++p;
  }
  for (; next < a.features.size(); ++next) pieces.push_back({a.features[next].text, static_cast<int64_t>(next)});
  return pieces;
}

// Whether every attribution value is a finite number (NaN and infinities are drawn grey).
bool AllFinite(const Attribution& a) {
  auto finite = [](const std::vector<double>& values) {
    return std::all_of(values.begin(), values.end(), [](double v) { return std::isfinite(v); });
  };
  return finite(a.sequence) && std::all_of(a.token_matrix.begin(), a.token_matrix.end(), finite);
}

std::string TokensText(const std::vector<Token>& tokens) {
  std::string text;
  for (const Token& t : tokens) text += t.text;
  return text;
}

std::string TargetText(const Attribution& a) { return TokensText(a.target_tokens); }

// What the objective scores: the target, or (contrastive) the target minus the foil.
std::string ScoredText(const Attribution& a) {
  std::string out = absl::StrCat("target \"", Printable(TargetText(a)), "\"");
  if (!a.foil_tokens.empty()) absl::StrAppend(&out, " minus foil \"", Printable(TokensText(a.foil_tokens)), "\"");
  return out;
}

// Two lines: the AOPCs, then p(target) along the deletion and insertion curves.
std::string FaithfulnessSummary(const Faithfulness& f) {
  std::string out = absl::StrFormat(
      "faithfulness: comprehensiveness AOPC %.4f (high: top features needed), sufficiency AOPC %.4f (low: they "
      "suffice); p(target) %.4f, all features at baseline %.4f\n  top %%:     ",
      f.comprehensiveness_aopc, f.sufficiency_aopc, f.full, f.empty);
  for (size_t i = 0; i < f.percents.size(); ++i) absl::StrAppend(&out, absl::StrFormat(" %7g", f.percents[i]));
  absl::StrAppend(&out, "\n  deleted:   ");
  for (double p : f.deletion) absl::StrAppend(&out, absl::StrFormat(" %7.4f", p));
  absl::StrAppend(&out, "\n  only kept: ");
  for (double p : f.insertion) absl::StrAppend(&out, absl::StrFormat(" %7.4f", p));
  return out;
}

// The deletion and insertion curves as an inline SVG chart: p(target) against the percent of
// features (strongest first) removed from the prompt, or kept with the rest at their baselines; each
// point's value shows on hover.
std::string FaithfulnessChart(const Faithfulness& f) {
  constexpr double kWidth = 520, kHeight = 260, kLeft = 56, kRight = 150, kTop = 14, kBottom = 40;
  std::vector<double> percents = {0}, deletion = {f.full}, insertion = {f.empty};
  for (size_t i = 0; i < f.percents.size() && i < f.deletion.size() && i < f.insertion.size(); ++i) {
    percents.push_back(f.percents[i]);
    deletion.push_back(f.deletion[i]);
    insertion.push_back(f.insertion[i]);
  }
  percents.push_back(100);
  deletion.push_back(f.empty);
  insertion.push_back(f.full);
  double top = 0;  // the largest finite p; 1 when there is none above 0
  for (const std::vector<double>* curve : {&deletion, &insertion}) {
    for (double p : *curve) {
      if (std::isfinite(p)) top = std::max(top, p);
    }
  }
  if (top <= 0) top = 1;
  auto x = [&](double percent) { return kLeft + percent / 100 * (kWidth - kLeft - kRight); };
  auto y = [&](double p) { return kHeight - kBottom - p / top * (kHeight - kTop - kBottom); };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" "
      "font-size=\"12\"><line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#444\"/>"
      "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#444\"/>",
      kWidth, kHeight, kLeft, y(0), x(100), y(0), kLeft, y(0), kLeft, y(top));
  for (double tick : {0.0, 25.0, 50.0, 75.0, 100.0}) {
    absl::StrAppend(
        &svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%g%%</text>", x(tick), y(0) + 16, tick));
  }
  for (double tick : {0.0, top / 2, top}) {
    absl::StrAppend(
        &svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3g</text>", kLeft - 6, y(tick) + 4, tick));
  }
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">features, strongest "
                                        "first</text>",
                                        x(50), kHeight - 4));
  struct Curve {
    const char* name;
    const char* colour;
    const std::vector<double>& values;
  };
  const Curve curves[] = {{"deleted", "#1f77b4", deletion}, {"only kept", "#ff7f0e", insertion}};
  int not_drawn = 0;  // points NaN or infinite: they have no place on the chart, and a curve breaks there
  for (size_t c = 0; c < 2; ++c) {
    std::vector<std::string> pieces(1);  // the curve's runs of drawable points
    std::string circles;
    for (size_t i = 0; i < percents.size(); ++i) {
      const double px = x(percents[i]), py = y(curves[c].values[i]);
      if (!std::isfinite(px) || !std::isfinite(py)) {
        ++not_drawn;
        if (!pieces.back().empty()) pieces.emplace_back();
        continue;
      }
      absl::StrAppend(&pieces.back(), pieces.back().empty() ? "" : " ", absl::StrFormat("%.1f,%.1f", px, py));
      absl::StrAppend(&circles,
                      absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>%s %g%%: "
                                      "p = %.4g</title></circle>",
                                      px, py, curves[c].colour, curves[c].name, percents[i], curves[c].values[i]));
    }
    for (const std::string& points : pieces) {
      if (points.empty()) continue;
      absl::StrAppend(&svg, absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"3\" points=\"%s\"/>",
                                            curves[c].colour, points));
    }
    absl::StrAppend(&svg, circles);
    const double legend = kTop + 10 + 20 * static_cast<double>(c);
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" "
                                          "stroke-width=\"3\"/><text x=\"%g\" y=\"%g\">%s</text>",
                                          kWidth - kRight + 14, legend, kWidth - kRight + 38, legend, curves[c].colour,
                                          kWidth - kRight + 44, legend + 4, curves[c].name));
  }
  if (not_drawn > 0) {
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" fill=\"#b00\">%d point%s NaN or</text>"
                                          "<text x=\"%g\" y=\"%g\" fill=\"#b00\">infinite: not drawn</text>",
                                          kWidth - kRight + 14, kTop + 64, not_drawn, not_drawn == 1 ? "" : "s",
                                          kWidth - kRight + 14, kTop + 80));
  }
  return svg + "</svg>\n";
}

}  // namespace

std::string HtmlEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        // Other control bytes as their pictures (NUL as U+2400): browsers drop a NUL, so ids "a\0b" and "ab"
        // read alike in a report's index; tabs and line breaks stay.
        if ((byte < 0x20 && c != '\t' && c != '\n' && c != '\r') || byte == 0x7f) {
          absl::StrAppend(&out, "&#x", absl::Hex(byte == 0x7f ? 0x2421 : 0x2400 + byte), ";");
        } else {
          out.push_back(c);
        }
    }
  }
  return out;
}

std::string TargetTokensLine(const std::vector<Token>& tokens) {
  std::string out = absl::StrFormat("target tokens (%d):", tokens.size());
  for (const Token& t : tokens) absl::StrAppend(&out, " \"", Printable(t.text), "\" #", t.id);
  return out;
}

std::string TerminalHeatmap(const Attribution& a, bool color) {
  const double scale = MaxAbs(a.sequence);
  std::string out = absl::StrFormat("%s\nmodel %s, method %s, %s (%s = %.6g)\n", TargetTokensLine(a.target_tokens),
                                    Printable(a.model), Printable(a.method), ScoredText(a), "objective", a.objective);
  for (const PromptPiece& piece : PromptPieces(a)) {
    const std::string text = Printable(piece.text.empty() ? "·" : piece.text);
    if (piece.feature < 0) {
      absl::StrAppend(&out, color ? absl::StrCat("\x1b[38;5;245m", text, "\x1b[0m") : absl::StrCat("(", text, ")"),
                      " ");
      continue;
    }
    const double value = a.sequence[piece.feature];
    absl::StrAppend(&out, color ? Paint(text, ColorOf(value, scale)) : absl::StrCat("[", text, "]"), " ");
  }
  if (!a.fixed_tokens.empty()) {
    absl::StrAppend(&out, color ? "\n\x1b[38;5;245mgrey\x1b[0m" : "\n( )",
                    ": fixed tokens, kept real in every row (not features)");
  }
  if (color && !AllFinite(a)) absl::StrAppend(&out, "\n", Paint("grey", kNonFiniteColor), ": NaN or infinite");
  absl::StrAppend(&out, "\n\n");
  std::vector<size_t> order(a.features.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return StrongerThan(a.sequence[x], a.sequence[y]); });
  absl::StrAppend(&out, absl::StrFormat("%-6s %-24s %12s\n", "rank", "feature", "attribution"));
  for (size_t rank = 0; rank < order.size() && rank < 10; ++rank) {
    const size_t f = order[rank];
    const std::string value = absl::StrFormat("%12.5g", Unsigned0(a.sequence[f]));
    absl::StrAppend(&out, absl::StrFormat("%-6d %-24s ", rank + 1, Printable(a.features[f].text).substr(0, 24)),
                    color ? Paint(value, ColorOf(a.sequence[f], scale)) : value, "\n");
  }
  if (!a.token_matrix.empty()) {
    absl::StrAppend(&out, "\nper output token (rows) x feature (columns):\n", absl::StrFormat("%-12s", ""));
    for (const Feature& f : a.features) absl::StrAppend(&out, absl::StrFormat(" %9.9s", Printable(f.text)));
    absl::StrAppend(&out, "\n");
    for (size_t t = 0; t < a.token_matrix.size(); ++t) {
      const double row_scale = MaxAbs(a.token_matrix[t]);
      const std::string label = t < a.target_tokens.size() ? Printable(a.target_tokens[t].text) : "";
      absl::StrAppend(&out, absl::StrFormat("%-12.12s", label));
      for (double v : a.token_matrix[t]) {
        const std::string cell = absl::StrFormat(" %9.3g", Unsigned0(v));
        absl::StrAppend(&out, color ? Paint(cell, ColorOf(v, row_scale)) : cell);
      }
      absl::StrAppend(&out, "\n");
    }
  }
  if (a.convergence_delta) {
    absl::StrAppend(&out, absl::StrFormat("\nconvergence delta %.4g (%d integration points", *a.convergence_delta,
                                          a.integration_steps));
    if (a.tolerance_met) absl::StrAppend(&out, *a.tolerance_met ? ", tolerance met" : ", tolerance NOT met");
    absl::StrAppend(&out, ")");
  }
  if (a.faithfulness) absl::StrAppend(&out, "\n", FaithfulnessSummary(*a.faithfulness));
  if (!a.unread_settings.empty()) {
    absl::StrAppend(&out, "\n", Printable(a.method), " does not read ",
                    Printable(absl::StrJoin(a.unread_settings, ", ")), ": they changed nothing");
  }
  absl::StrAppend(
      &out,
      absl::StrFormat(
          "\n%d rows (%d forward, %d backward); %.3f s queued (summed over rows), %.3f s device share; %.3f s wall\n",
          a.stats.rows, a.stats.forward_passes, a.stats.backward_passes, a.stats.queue_seconds, a.stats.device_seconds,
          a.stats.wall_seconds));
  return out;
}

std::string HtmlReport(const Attribution& a) {
  const double scale = MaxAbs(a.sequence);
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Attribution: ", HtmlEscape(a.method),
      "</title>\n<style>body{font-family:sans-serif;margin:2em}"
      ".tok{display:inline-block;padding:3px 4px;margin:2px;border-radius:3px;font-family:monospace;white-space:pre}"
      "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 6px;font-family:monospace;"
      "text-align:right}th{background:#f4f4f4}.fixed{color:#999;background:#eee}</style></head><body>\n",
      "<h2>Attribution (", HtmlEscape(a.method), ") on model ", HtmlEscape(a.model), "</h2>\n<p>Target: <b>",
      HtmlEscape(TargetText(a)), "</b>",
      a.foil_tokens.empty() ? "" : absl::StrCat(" minus foil <b>", HtmlEscape(TokensText(a.foil_tokens)), "</b>"),
      " &mdash; objective ", absl::StrFormat("%.6g", a.objective), "</p>\n<p>",
      HtmlEscape(TargetTokensLine(a.target_tokens)), "</p>\n<h3>Input features</h3>\n<div>");
  for (const PromptPiece& piece : PromptPieces(a)) {
    if (piece.feature < 0) {
      absl::StrAppend(&html, "<span class=\"tok fixed\" title=\"fixed: not a feature\">", HtmlEscape(piece.text),
                      "</span>");
      continue;
    }
    const double value = a.sequence[piece.feature];
    absl::StrAppend(&html, "<span class=\"tok\" style=\"", Css(ColorOf(value, scale)), "\" title=\"",
                    absl::StrFormat("%.6g", Unsigned0(value)), "\">", HtmlEscape(piece.text), "</span>");
  }
  absl::StrAppend(&html, "</div>\n<p>Legend: <span class=\"tok\" style=\"", Css(ColorOf(-1, 1)),
                  "\">negative</span><span class=\"tok\" style=\"", Css(ColorOf(0, 1)),
                  "\">neutral</span><span class=\"tok\" style=\"", Css(ColorOf(1, 1)), "\">positive</span>",
                  a.fixed_tokens.empty() ? "" : "<span class=\"tok fixed\">fixed (not a feature)</span>",
                  AllFinite(a)
                      ? ""
                      : absl::StrCat("<span class=\"tok\" style=\"", Css(kNonFiniteColor), "\">NaN or infinite</span>"),
                  "</p>\n");
  if (!a.token_matrix.empty()) {
    absl::StrAppend(&html, "<h3>Per output token</h3>\n<table><tr><th></th>");
    for (const Feature& f : a.features) absl::StrAppend(&html, "<th>", HtmlEscape(f.text), "</th>");
    absl::StrAppend(&html, "</tr>\n");
    for (size_t t = 0; t < a.token_matrix.size(); ++t) {
      const double row_scale = MaxAbs(a.token_matrix[t]);
      absl::StrAppend(&html, "<tr><th>", t < a.target_tokens.size() ? HtmlEscape(a.target_tokens[t].text) : "",
                      "</th>");
      for (double v : a.token_matrix[t]) {
        absl::StrAppend(&html, "<td style=\"", Css(ColorOf(v, row_scale)), "\">", absl::StrFormat("%.3g", Unsigned0(v)),
                        "</td>");
      }
      absl::StrAppend(&html, "</tr>\n");
    }
    absl::StrAppend(&html, "</table>\n");
  }
  if (a.convergence_delta)
    absl::StrAppend(&html, absl::StrFormat("<p>Convergence delta: %.4g</p>\n", *a.convergence_delta));
  if (a.faithfulness) {
    absl::StrAppend(&html, "<h3>Faithfulness: p(target) as features go</h3>\n", FaithfulnessChart(*a.faithfulness),
                    "<pre>", HtmlEscape(FaithfulnessSummary(*a.faithfulness)), "</pre>\n");
  }
  absl::StrAppend(&html,
                  absl::StrFormat("<p>%d rows, %.3f s wall</p>\n</body></html>\n", a.stats.rows, a.stats.wall_seconds));
  return html;
}

std::string AttributionJson(const Attribution& a) {
  auto tokens = [](const std::vector<Token>& list) {
    nlohmann::json out = nlohmann::json::array();
    for (const Token& t : list) {
      nlohmann::json token = TokenJson(t);
      token.update(
          {{"char_begin", t.char_begin}, {"char_end", t.char_end}, {"log_prob", t.log_prob}, {"special", t.special}});
      out.push_back(token);
    }
    return out;
  };
  nlohmann::json features = nlohmann::json::array();
  for (const Feature& f : a.features)
    features.push_back({{"token_begin", f.token_begin}, {"token_end", f.token_end}, {"text", f.text}});
  nlohmann::json out = {{"model", a.model},
                        {"model_digest", a.model_digest},
                        {"method", a.method},
                        {"prompt_tokens", tokens(a.prompt_tokens)},
                        {"target_tokens", tokens(a.target_tokens)},
                        {"foil_tokens", tokens(a.foil_tokens)},
                        {"features", features},
                        {"fixed_tokens", a.fixed_tokens},
                        {"sequence_attribution", a.sequence},
                        {"token_matrix", a.token_matrix},
                        {"objective", a.objective},
                        {"settings_used", SettingsUsedJson(a.settings_used)},
                        {"stats", StatsJson(a.stats)}};
  if (a.convergence_delta) out["convergence_delta"] = *a.convergence_delta;
  if (a.integration_steps > 0) out["integration_steps"] = a.integration_steps;
  if (a.tolerance_met) out["tolerance_met"] = *a.tolerance_met;
  if (!a.unread_settings.empty()) out["unread_settings"] = a.unread_settings;
  if (const std::optional<Faithfulness>& f = a.faithfulness) {
    out["faithfulness"] = {{"percents", f->percents},
                           {"features_at", f->features_at},
                           {"full", f->full},
                           {"empty", f->empty},
                           {"deletion", f->deletion},
                           {"insertion", f->insertion},
                           {"comprehensiveness_aopc", f->comprehensiveness_aopc},
                           {"sufficiency_aopc", f->sufficiency_aopc}};
  }
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace attribution::client
