// SPDX-License-Identifier: Apache-2.0
#include "client/component_render.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/heatmap.h"
#include "client/palette.h"
#include "client/result_json.h"

namespace attribution::client {
namespace {

// A grid as 2-D tables: one for (layer, head) or (layer, position), one per layer for (layer,
// position, head). Each table names its rows and columns.
struct Table {
  std::string title;
  std::vector<std::string> rows, columns;
  std::vector<double> values;  // rows x columns
};

// Position p's label: the clean token, and the corrupted one where they differ.
std::string PositionLabel(const ComponentAttribution& a, int64_t p) {
  if (a.pairs.empty() || p >= static_cast<int64_t>(a.pairs[0].clean_tokens.size())) return absl::StrCat("P", p);
  const std::string clean = Printable(a.pairs[0].clean_tokens[p].text);
  const std::string corrupted = Printable(a.pairs[0].corrupted_tokens[p].text);
  return clean == corrupted ? clean : absl::StrCat(clean, "/", corrupted);
}

std::vector<Table> Tables(const ComponentAttribution& a, const ComponentGrid& grid) {
  auto labels = [&](const std::string& axis, int64_t n) {
    std::vector<std::string> out;
    for (int64_t i = 0; i < n; ++i)
      out.push_back(axis == "position" ? PositionLabel(a, i) : absl::StrCat(axis == "head" ? "H" : "L", i));
    return out;
  };
  if (grid.shape.size() == 2 && grid.axes.size() == 2) {
    return {{.title = grid.site,
             .rows = labels("layer", grid.shape[0]),
             .columns = labels(grid.axes[1], grid.shape[1]),
             .values = grid.values}};
  }
  std::vector<Table> tables;
  if (grid.shape.size() != 3) return tables;
  const int64_t block = grid.shape[1] * grid.shape[2];
  for (int64_t layer = 0; layer < grid.shape[0]; ++layer) {
    tables.push_back({.title = absl::StrCat(grid.site, ", layer ", layer),
                      .rows = labels("position", grid.shape[1]),
                      .columns = labels("head", grid.shape[2]),
                      .values = std::vector<double>(grid.values.begin() + layer * block,
                                                    grid.values.begin() + (layer + 1) * block)});
  }
  return tables;
}

std::string Summary(const ComponentAttribution& a) {
  std::string out = absl::StrFormat("%s, %s, %s of \"%s\"", Printable(a.method), Printable(a.direction),
                                    Printable(a.metric), Printable(a.answer.text));
  if (a.metric.find("difference") != std::string::npos)
    absl::StrAppend(&out, " vs \"", Printable(a.wrong_answer.text), "\"");
  for (size_t k = 0; k < a.pairs.size(); ++k) {
    absl::StrAppendFormat(&out, "\npair %d: clean %.4f, corrupted %.4f", k, a.pairs[k].clean_metric,
                          a.pairs[k].corrupted_metric);
  }
  if (!a.unread_settings.empty()) {
    absl::StrAppend(&out, "\n", Printable(a.method), " does not read ",
                    Printable(absl::StrJoin(a.unread_settings, ", ")), ": they changed nothing");
  }
  return out;
}

// The grid's largest components by |value|, named by their indices.
std::string Strongest(const ComponentGrid& grid, size_t count) {
  std::vector<size_t> order(grid.values.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t x, size_t y) { return StrongerThan(grid.values[x], grid.values[y]); });
  std::string out = "strongest:";
  for (size_t rank = 0; rank < order.size() && rank < count; ++rank) {
    size_t rest = order[rank];
    std::string name;
    for (size_t d = grid.shape.size(); d-- > 0;) {
      name = absl::StrCat(grid.axes[d] == "layer"  ? "L"
                          : grid.axes[d] == "head" ? "H"
                                                   : "P",
                          rest % grid.shape[d], name.empty() ? "" : ".", name);
      rest /= grid.shape[d];
    }
    absl::StrAppendFormat(&out, "  %s %+.4f", name, Unsigned0(grid.values[order[rank]]));
  }
  return out;
}

}  // namespace

std::string TerminalComponents(const ComponentAttribution& a, bool color) {
  std::string out = Summary(a) + "\n";
  for (const ComponentGrid& grid : a.grids) {
    const double scale = MaxAbs(grid.values);
    for (const Table& table : Tables(a, grid)) {
      absl::StrAppend(&out, "\n", Printable(table.title), "\n", absl::StrFormat("%-6s", ""));
      for (const std::string& column : table.columns) absl::StrAppendFormat(&out, " %8.8s", column);
      absl::StrAppend(&out, "\n");
      for (size_t r = 0; r < table.rows.size(); ++r) {
        absl::StrAppendFormat(&out, "%-6.6s", table.rows[r]);
        for (size_t c = 0; c < table.columns.size(); ++c) {
          const double v = table.values[r * table.columns.size() + c];
          const std::string cell = absl::StrFormat(" %8.4f", Unsigned0(v));
          absl::StrAppend(&out, color ? Paint(cell, ColorOf(v, scale)) : cell);
        }
        absl::StrAppend(&out, "\n");
      }
    }
    absl::StrAppend(&out, Strongest(grid, 5), "\n");
    if (!grid.convergence_deltas.empty()) {
      double largest = MaxAbs(grid.convergence_deltas);
      for (double delta : grid.convergence_deltas) {
        if (!std::isfinite(delta)) largest = std::fabs(delta);  // a NaN or infinite delta is the news
      }
      absl::StrAppendFormat(&out, "largest |convergence delta| %.3g\n", largest);
    }
  }
  absl::StrAppendFormat(&out, "\n%d rows (%d backward) in %.3f s\n", a.stats.rows, a.stats.backward_passes,
                        a.stats.wall_seconds);
  return out;
}

std::string ComponentHtmlReport(const ComponentAttribution& a) {
  std::string out =
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Component attribution</title><style>"
      "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
      "td,th{border:1px solid #ddd;padding:3px 6px;font-size:12px;text-align:right}"
      "th{background:#f5f5f5;font-weight:normal}</style></head><body>";
  absl::StrAppend(&out, "<h1>Component attribution: ", HtmlEscape(a.model), "</h1><pre>", HtmlEscape(Summary(a)),
                  "</pre>");
  for (const ComponentGrid& grid : a.grids) {
    const double scale = MaxAbs(grid.values);
    for (const Table& table : Tables(a, grid)) {
      absl::StrAppend(&out, "<h2>", HtmlEscape(table.title), "</h2><table><tr><th></th>");
      for (const std::string& column : table.columns) absl::StrAppend(&out, "<th>", HtmlEscape(column), "</th>");
      absl::StrAppend(&out, "</tr>");
      for (size_t r = 0; r < table.rows.size(); ++r) {
        absl::StrAppend(&out, "<tr><th>", HtmlEscape(table.rows[r]), "</th>");
        for (size_t c = 0; c < table.columns.size(); ++c) {
          const double v = table.values[r * table.columns.size() + c];
          absl::StrAppendFormat(&out, "<td style=\"%s\" title=\"%s %s: %.6g\">%.3f</td>", Css(ColorOf(v, scale)),
                                HtmlEscape(table.rows[r]), HtmlEscape(table.columns[c]), Unsigned0(v), Unsigned0(v));
        }
        absl::StrAppend(&out, "</tr>");
      }
      absl::StrAppend(&out, "</table>");
    }
    absl::StrAppend(&out, "<p>", HtmlEscape(Strongest(grid, 5)), "</p>");
  }
  absl::StrAppend(&out, "</body></html>\n");
  return out;
}

std::string ComponentJson(const ComponentAttribution& a) {
  auto texts = [](const std::vector<Token>& tokens) {
    nlohmann::json out = nlohmann::json::array();
    for (const Token& t : tokens) out.push_back(t.text);
    return out;
  };
  auto grid_json = [](const ComponentGrid& g) {
    return nlohmann::json{{"site", g.site},     {"granularity", g.granularity},
                          {"shape", g.shape},   {"axes", g.axes},
                          {"values", g.values}, {"convergence_deltas", g.convergence_deltas}};
  };
  nlohmann::json out = {{"model", a.model},
                        {"method", a.method},
                        {"metric", a.metric},
                        {"direction", a.direction},
                        {"model_digest", a.model_digest},
                        {"unread_settings", a.unread_settings},
                        {"answer", {{"id", a.answer.id}, {"text", a.answer.text}}},
                        {"wrong_answer", {{"id", a.wrong_answer.id}, {"text", a.wrong_answer.text}}},
                        {"grids", nlohmann::json::array()},
                        {"pairs", nlohmann::json::array()},
                        {"settings_used", SettingsUsedJson(a.settings_used)},
                        {"stats", StatsJson(a.stats)}};
  for (const ComponentGrid& g : a.grids) out["grids"].push_back(grid_json(g));
  for (const PairComponents& p : a.pairs) {
    nlohmann::json pair = {{"clean_metric", p.clean_metric},
                           {"corrupted_metric", p.corrupted_metric},
                           {"clean_tokens", texts(p.clean_tokens)},
                           {"corrupted_tokens", texts(p.corrupted_tokens)},
                           {"grids", nlohmann::json::array()}};
    for (const ComponentGrid& g : p.grids) pair["grids"].push_back(grid_json(g));
    out["pairs"].push_back(std::move(pair));
  }
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace attribution::client
