// SPDX-License-Identifier: Apache-2.0
#include "client/batch/html_pages.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/batch/batch_job.h"
#include "client/batch/line_files.h"
#include "client/batch/result_log.h"
#include "client/batch/untrusted_text.h"
#include "client/component_render.h"
#include "client/heatmap.h"
#include "client/palette.h"

namespace attribution::client::batch {
namespace {

using nlohmann::json;

absl::Status MakeDirectory(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) == 0) return absl::OkStatus();
  struct stat existing;
  if (errno == EEXIST && ::stat(path.c_str(), &existing) == 0 && S_ISDIR(existing.st_mode)) return absl::OkStatus();
  return FileError("cannot create", path, errno == EEXIST ? ENOTDIR : errno);
}

// A component row's three strongest grid entries as features, named by site and indices ("heads L1 H3",
// "mlp_out L0 P4"), with their values. Only those three are named: a (layer, position, head) grid of a large
// model has 10^5 entries per row. Grids whose shape or axes do not fit their values are left out.
void ComponentFeatures(const json& result, json& features, json& values) {
  features = json::array();
  values = json::array();
  const json sites = result.value("grid_sites", json()), axes = result.value("grid_axes", json()),
             shapes = result.value("grid_shapes", json()), grids = result.value("grid_values", json());
  if (!sites.is_array() || !axes.is_array() || !shapes.is_array() || !grids.is_array()) return;
  struct Grid {
    std::string site;
    std::vector<std::string> axes;
    std::vector<size_t> shape;
  };
  std::vector<Grid> valid;
  struct Entry {
    double value;
    size_t grid, index;  // in `valid`, row-major in it
  };
  std::vector<Entry> entries;
  for (size_t g = 0; g < std::min({sites.size(), axes.size(), shapes.size(), grids.size()}); ++g) {
    if (!sites[g].is_string() || !axes[g].is_string() || !shapes[g].is_array() || !grids[g].is_array()) continue;
    Grid grid{.site = sites[g].get<std::string>(), .axes = absl::StrSplit(axes[g].get<std::string>(), ',')};
    size_t size = 1;
    for (const json& extent : shapes[g]) {
      if (!extent.is_number() || !(extent.get<double>() >= 1) || extent.get<double>() > grids[g].size()) break;
      grid.shape.push_back(static_cast<size_t>(extent.get<double>()));
      size *= grid.shape.back();
      if (size > grids[g].size()) break;
    }
    if (grid.shape.size() != grid.axes.size() || grid.shape.size() != shapes[g].size() || size != grids[g].size()) {
      continue;
    }
    for (size_t i = 0; i < size; ++i) {
      const json& value = grids[g][i];
      if (value.is_number() && std::isfinite(value.get<double>())) {
        entries.push_back({value.get<double>(), valid.size(), i});
      }
    }
    valid.push_back(std::move(grid));
  }
  const size_t shown = std::min<size_t>(3, entries.size());
  std::partial_sort(entries.begin(), entries.begin() + shown, entries.end(),
                    [](const Entry& a, const Entry& b) { return std::abs(a.value) > std::abs(b.value); });
  for (size_t e = 0; e < shown; ++e) {
    const Grid& grid = valid[entries[e].grid];
    std::string name = grid.site;
    size_t rest = entries[e].index;
    std::vector<size_t> index(grid.shape.size());
    for (size_t a = grid.shape.size(); a-- > 0;) {
      index[a] = rest % grid.shape[a];
      rest /= grid.shape[a];
    }
    for (size_t a = 0; a < index.size(); ++a) {
      const std::string& axis = grid.axes[a];
      // The axis' initial ("layer" -> L); a line of another tool may name anything (a UTF-8 lead byte alone: "?").
      const bool letter = !axis.empty() && absl::ascii_isalpha(static_cast<unsigned char>(axis[0]));
      absl::StrAppend(&name, " ", letter ? std::string(1, absl::ascii_toupper(axis[0])) : "?", index[a]);
    }
    features.push_back(name);
    values.push_back(entries[e].value);
  }
}

// The three features with the largest |attribution|, strongest first, coloured as on the row's page.
// Features without a finite value (NaN is written as null) or a text are left out.
std::string TopFeatures(const json& result) {
  json features = result.value("features", json()), values = result.value("attribution", json());
  if (result.contains("grid_values")) ComponentFeatures(result, features, values);
  if (!features.is_array() || !values.is_array()) return "";
  std::vector<size_t> order;
  for (size_t i = 0; i < std::min(features.size(), values.size()); ++i) {
    if (features[i].is_string() && values[i].is_number() && std::isfinite(values[i].get<double>())) {
      order.push_back(i);
    }
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return std::abs(values[a].get<double>()) > std::abs(values[b].get<double>()); });
  const double scale = order.empty() ? 0 : std::abs(values[order[0]].get<double>());
  std::string text;
  for (size_t i = 0; i < std::min<size_t>(3, order.size()); ++i) {
    const double value = values[order[i]].get<double>();
    absl::StrAppend(&text, i ? " " : "", "<code style=\"", Css(ColorOf(value, scale)), "\" title=\"",
                    absl::StrFormat("%.4g", value), "\">", HtmlEscape(features[order[i]].get<std::string>()),
                    "</code>");
  }
  return text;
}

// A failed row's status cell: its error code.
std::string ErrorCode(const json& result) {
  const std::string code = ResultErrorCode(result);
  return code.empty() ? "error" : code;
}

std::string Cell(const json& value) {
  if (value.is_null()) return "";
  if (value.is_number_float()) return absl::StrFormat("%.4g", value.get<double>());
  if (value.is_string()) return HtmlEscape(value.get<std::string>());
  return HtmlEscape(JsonText(value));
}

// A predicted choice's cell: green when it is the label, red when not (nothing without a label).
std::string Correctness(const json& result) {
  const json correct = result.value("correct", json());
  if (!correct.is_boolean()) return "";
  return absl::StrCat(" style=\"", Css(ColorOf(correct.get<bool>() ? 1 : -1, 2)), "\"");
}

// 128 bits of the id's SHA-256, in hex: ids that share their file-safe prefix (every id of a data set may
// start alike) must not share a page, and 32 bits of FNV told 110,000 such ids apart no better than chance.
std::string IdDigest(const std::string& id) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(id.data(), id.size(), digest, &size, EVP_sha256(), nullptr) != 1) {
    std::fprintf(stderr, "attribution-batch: OpenSSL's SHA-256 failed\n");  // a broken libcrypto, not bad input
    std::abort();
  }
  std::string hex;
  for (unsigned int i = 0; i < 16; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

// Sorts the table by the clicked column (numbers numerically), again to reverse.
constexpr char kSortScript[] = R"(<script>
document.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[column].dataset.v ?? r.cells[column].textContent;
                     const n = parseFloat(t); return isNaN(n) ? t : n; };
  const up = th.dataset.up !== "1"; th.dataset.up = up ? "1" : "0";
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
</script>)";

}  // namespace

std::string RowPagePath(const std::string& id) {
  std::string safe;
  for (char c : id.substr(0, 64))
    safe += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') ? c : '_';
  return absl::StrCat("rows/", safe, "-", IdDigest(id), ".html");
}

namespace {

// The tag a row's page carries naming the result it shows (request ids are hex digests: nothing to escape).
std::string RequestIdTag(const std::string& request_id) {
  return absl::StrCat("<meta name=\"attribution-request-id\" content=\"", HtmlEscape(request_id), "\">");
}

// Whether the page at `path` was written for the result of `request_id`.
bool PageIsOfResult(const std::string& path, const std::string& request_id) {
  if (request_id.empty()) return false;
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::string head(4096, '\0');  // the tag is in the page's <head>
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  return head.find(RequestIdTag(request_id)) != std::string::npos;
}

// `page` as the row's page, tagged with the result it shows.
absl::Status WritePage(const std::string& dir, const std::string& id, const std::string& request_id, std::string page) {
  if (absl::Status made = MakeReportDirectory(dir); !made.ok()) return made;
  const size_t head = page.find("<head>");
  page.insert(head == std::string::npos ? 0 : head + 6, RequestIdTag(request_id));
  return WriteAtomically(absl::StrCat(dir, "/", RowPagePath(id)), page);
}

}  // namespace

absl::Status MakeReportDirectory(const std::string& dir) {
  if (absl::Status made = MakeDirectory(dir); !made.ok()) return made;
  return MakeDirectory(dir + "/rows");
}

absl::Status WriteRowPage(const std::string& dir, const std::string& id, const std::string& request_id,
                          const Attribution& attribution) {
  return WritePage(dir, id, request_id, HtmlReport(attribution));
}

absl::Status WriteComponentRowPage(const std::string& dir, const std::string& id, const std::string& request_id,
                                   const ComponentAttribution& attribution) {
  return WritePage(dir, id, request_id, ComponentHtmlReport(attribution));
}

absl::StatusOr<int64_t> WriteIndex(const std::string& dir, const std::string& results_path) {
  if (absl::Status made = MakeDirectory(dir); !made.ok()) return made;
  std::ifstream in(results_path);
  std::string rows;
  int64_t count = 0, errors = 0, without_page = 0;
  for (std::string line; std::getline(in, line);) {
    const absl::StatusOr<json> parsed = ParseJson(line, results_path);
    if (!parsed.ok()) continue;
    const json& result = *parsed;
    if (!result.is_object() || !result.contains("id") || !result["id"].is_string()) continue;
    ++count;
    const std::string id = result["id"].get<std::string>();
    const bool ok = result.value("status", json()) == "ok";
    errors += !ok;
    const json delta = result.value("convergence_delta", json());
    const json request_id = result.value("request_id", json());
    const bool linked = ok && request_id.is_string() &&
                        PageIsOfResult(absl::StrCat(dir, "/", RowPagePath(id)), request_id.get<std::string>());
    without_page += ok && !linked;
    absl::StrAppend(&rows, "<tr><td>",
                    linked ? absl::StrCat("<a href=\"", HtmlEscape(RowPagePath(id)), "\">", HtmlEscape(id), "</a>")
                           : HtmlEscape(id),
                    "</td><td>", ok ? "ok" : HtmlEscape(ErrorCode(result)), "</td><td", Correctness(result), ">",
                    Cell(result.value("predicted", json())), "</td><td>", Cell(result.value("label", json())),
                    "</td><td>", Cell(result.value("objective", json())), "</td><td>",
                    delta.is_number() ? absl::StrFormat("%.4g", std::abs(delta.get<double>())) : "", "</td><td>",
                    TopFeatures(result), "</td></tr>\n");
  }
  const std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Batch results</title>\n<style>"
      "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
      "padding:4px 6px}th{background:#f4f4f4;cursor:pointer}</style></head><body>\n<h2>",
      count, " rows, ", errors, " errors</h2>\n<p>Results: ", HtmlEscape(results_path),
      ". Click a column to sort.</p>\n",
      without_page == 0 ? ""
                        : absl::StrCat("<p>", without_page,
                                       " answered rows have no page here (done by a run without --html, or their "
                                       "pages were written elsewhere): their ids link nowhere.</p>\n"),
      "<table><thead><tr><th>id</th><th>status</th><th>predicted</th><th>label</th>"
      "<th>objective</th><th>|convergence delta|</th><th>strongest features or components</th></tr></thead><tbody>\n",
      rows, "</tbody></table>\n", kSortScript, "</body></html>\n");
  if (absl::Status written = WriteAtomically(dir + "/index.html", html); !written.ok()) return written;
  return without_page;
}

}  // namespace attribution::client::batch
