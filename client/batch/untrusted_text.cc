// SPDX-License-Identifier: Apache-2.0
#include "client/batch/untrusted_text.h"

#include <set>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/palette.h"

namespace attribution::client::batch {

using nlohmann::json;

namespace {

// Where and why nlohmann's parser refuses `text` ("at byte 7: syntax error while parsing object - unexpected
// end of input; expected '}'"; invalid UTF-8 and lone surrogates say so), its echo of the text ("last read:
// '...'") cut short, since a row may be megabytes. A SAX pass: no value is built, however deep the text nests.
std::string WhyNotJson(absl::string_view text) {
  struct Refusal : json::json_sax_t {
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(json::number_integer_t) override { return true; }
    bool number_unsigned(json::number_unsigned_t) override { return true; }
    bool number_float(json::number_float_t, const json::string_t&) override { return true; }
    bool string(json::string_t&) override { return true; }
    bool binary(json::binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(json::string_t&) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& error) override {
      // "[json.exception.parse_error.101] parse error at line 1, column 8: syntax error ...": the byte says where.
      std::string what = error.what();
      const size_t after_where = what.find(": ", what.find("parse error"));
      if (after_where != std::string::npos) what.erase(0, after_where + 2);
      reason = absl::StrCat("at byte ", position, ": ", what);
      return false;
    }
    std::string reason;
  } refusal;
  json::sax_parse(text.begin(), text.end(), &refusal, nlohmann::detail::input_format_t::json, /*strict=*/true);
  std::string& reason = refusal.reason;
  constexpr std::string_view kEcho = "; last read: '";
  constexpr size_t kMostEchoed = 40;
  if (const size_t echo = reason.find(kEcho); echo != std::string::npos) {
    const size_t begin = echo + kEcho.size();
    const size_t expected = reason.find("'; expected ", begin);
    const size_t end = expected != std::string::npos ? expected : reason.size() - 1;
    if (end > begin + kMostEchoed) {
      size_t cut = begin + kMostEchoed;  // on a character's first byte: the message stays UTF-8
      while (cut > begin && (static_cast<unsigned char>(reason[cut]) & 0xc0) == 0x80) --cut;
      reason.replace(cut, end - cut, "...");
    }
  }
  return reason;
}

}  // namespace

absl::StatusOr<json> ParseJson(absl::string_view text, const std::string& where) {
  std::string problem;                      // the first reason to refuse the text; then nothing more is kept
  std::vector<std::set<std::string>> keys;  // of each object open now, innermost last
  // Refusing a value (returning false) keeps it out of the DOM, and with it everything nested in it.
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    if (!problem.empty()) return false;
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) {
          problem = absl::StrCat("objects and arrays nested more than ", kMaxJsonDepth, " deep");
          return false;
        }
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        return true;
      case json::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second) {
          problem = absl::StrCat("key \"", parsed.get<std::string>(), "\" given twice in one object");
          return false;
        }
        return true;
      case json::parse_event_t::object_end:
        keys.pop_back();
        return true;
      case json::parse_event_t::array_end:
      case json::parse_event_t::value:
        return true;
    }
    return true;
  };
  json value = json::parse(text.begin(), text.end(), check, /*allow_exceptions=*/false);
  if (!problem.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", problem));
  if (value.is_discarded()) {
    const std::string why = WhyNotJson(text);
    return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON", why.empty() ? "" : " ", why));
  }
  return value;
}

std::string JsonText(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// The CLI's escaping: C0/C1 controls and DEL shown as escapes, and bytes that are not UTF-8 too (a lone
// 0x9b is CSI to an 8-bit terminal).
std::string TerminalSafe(absl::string_view text) { return Printable(text); }

}  // namespace attribution::client::batch
