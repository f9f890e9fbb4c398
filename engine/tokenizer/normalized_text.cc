// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/normalized_text.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utext.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

namespace {
thread_local int64_t* current_regex_budget = nullptr;
}  // namespace

RegexBudgetScope::RegexBudgetScope(size_t text_bytes)
    : remaining_(StepsFor(text_bytes)), previous_(current_regex_budget) {
  current_regex_budget = &remaining_;
}

RegexBudgetScope::~RegexBudgetScope() { current_regex_budget = previous_; }

int64_t* RegexBudgetScope::Current() { return current_regex_budget; }

namespace {

using nlohmann::json;

constexpr char kGpt2Pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::string TypeOf(const json& spec) {
  return spec.is_object() && spec.contains("type") && spec["type"].is_string() ? spec["type"].get<std::string>() : "";
}

std::string ToUtf8(const icu::UnicodeString& s) {
  std::string out;
  s.toUTF8String(out);
  return out;
}

// ICU calls it once per step of its match engine (10,000 operations): one step of the budget spent; false stops
// the match (U_REGEX_STOPPED_BY_CALLER).
UBool U_CALLCONV SpendStep(const void* remaining, int32_t) {
  int64_t* steps = static_cast<int64_t*>(const_cast<void*>(remaining));
  return --*steps > 0;
}

// A compiled regular expression; matching works on UTF-8 directly so offsets are byte offsets.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse_error;
    std::unique_ptr<icu::RegexPattern> compiled(
        icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pattern), 0, parse_error, status));
    if (U_FAILURE(status)) {
      return absl::InvalidArgumentError(
          absl::StrCat("regex \"", pattern, "\" does not compile: ", u_errorName(status)));
    }
    auto regex = std::make_unique<Regex>();
    regex->pattern_ = std::move(compiled);
    regex->source_ = pattern;
    return regex;
  }
  // [begin, end) byte ranges of the non-empty matches, left to right, within the calling thread's
  // RegexBudgetScope (or, outside one, a budget for this text alone). A pattern that backtracks without end on
  // the text (nested quantifiers: "(a|aa)+c" on "aaa...b" takes 2^n steps) runs out of it: INVALID_ARGUMENT,
  // since no retry can tokenize that text.
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> Matches(const std::string& text) const {
    std::vector<std::pair<size_t, size_t>> out;
    int64_t own_budget = RegexBudgetScope::StepsFor(text.size());
    int64_t* remaining = RegexBudgetScope::Current() != nullptr ? RegexBudgetScope::Current() : &own_budget;
    UErrorCode status = U_ZERO_ERROR;
    UText* input = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    std::unique_ptr<icu::RegexMatcher> matcher(pattern_->matcher(status));
    if (U_SUCCESS(status)) {
      matcher->reset(input);
      matcher->setMatchCallback(SpendStep, remaining, status);
    }
    while (U_SUCCESS(status) && *remaining > 0 && matcher->find(status)) {
      const int64_t begin = matcher->start64(status), end = matcher->end64(status);
      if (end > begin) out.emplace_back(static_cast<size_t>(begin), static_cast<size_t>(end));
    }
    matcher.reset();
    utext_close(input);
    if (status == U_REGEX_STOPPED_BY_CALLER || *remaining <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json's pre-tokenizer pattern \"", source_,
          "\" did not finish within the matching budget of this text (it backtracks without bound on it)"));
    }
    if (U_FAILURE(status)) {
      return absl::InternalError(
          absl::StrCat("matching tokenizer.json's pattern \"", source_, "\" failed: ", u_errorName(status)));
    }
    return out;
  }

 private:
  std::unique_ptr<icu::RegexPattern> pattern_;
  std::string source_;
};

absl::StatusOr<std::string> PatternOf(const json& spec, bool& is_regex) {
  if (!spec.contains("pattern") || !spec["pattern"].is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: Split/Replace needs a pattern object");
  }
  const json& p = spec["pattern"];
  is_regex = p.contains("Regex");
  if (is_regex) return p["Regex"].get<std::string>();
  if (p.contains("String")) return p["String"].get<std::string>();
  return absl::InvalidArgumentError("tokenizer.json: pattern needs \"String\" or \"Regex\"");
}

// --- Normalizers ---------------------------------------------------------------------------

class UnicodeNormalizer : public TextNormalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* n) : normalizer_(n) {}
  NormalizedText Apply(const NormalizedText& in) const override {
    UErrorCode status = U_ZERO_ERROR;
    if (normalizer_->isNormalized(icu::UnicodeString::fromUTF8(in.text), status)) return in;
    // Normalize segment by segment (segments start where the normalizer has a boundary), so each
    // output byte can be attributed to the start of its segment.
    NormalizedText out;
    out.origin_end = in.origin_end;
    size_t segment = 0;
    auto flush = [&](size_t end) {
      if (end == segment) return;
      UErrorCode s = U_ZERO_ERROR;
      icu::UnicodeString normalized =
          normalizer_->normalize(icu::UnicodeString::fromUTF8(in.text.substr(segment, end - segment)), s);
      out.Append(ToUtf8(normalized), in.origin[segment]);
    };
    for (size_t i = 0; i < in.text.size(); i += Utf8Length(in.text[i])) {
      if (i > segment && normalizer_->hasBoundaryBefore(CodePointAt(in.text, i))) {
        flush(i);
        segment = i;
      }
    }
    flush(in.text.size());
    return out;
  }

 private:
  const icu::Normalizer2* normalizer_;
};

class LowercaseNormalizer : public TextNormalizer {
 public:
  NormalizedText Apply(const NormalizedText& in) const override {
    NormalizedText out;
    out.origin_end = in.origin_end;
    for (size_t i = 0; i < in.text.size(); i += Utf8Length(in.text[i])) {
      icu::UnicodeString ch = icu::UnicodeString::fromUTF8(in.text.substr(i, Utf8Length(in.text[i])));
      // The root locale, as the tokenizers library lowercases: the process's (ICU reads LANG and LC_ALL itself)
      // made "I" a dotless "ı" under tr_TR and az_AZ, and the ids of every text with an I changed.
      out.Append(ToUtf8(ch.toLower(icu::Locale::getRoot())), in.origin[i]);
    }
    return out;
  }
};

class PrependNormalizer : public TextNormalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  NormalizedText Apply(const NormalizedText& in) const override {
    if (in.text.empty()) return in;
    NormalizedText out;
    out.origin_end = in.origin_end;
    out.Append(prefix_, in.origin[0]);
    out.text += in.text;
    out.origin.insert(out.origin.end(), in.origin.begin(), in.origin.end());
    return out;
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public TextNormalizer {
 public:
  ReplaceNormalizer(std::string pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  NormalizedText Apply(const NormalizedText& in) const override {
    NormalizedText out;
    out.origin_end = in.origin_end;
    size_t i = 0;
    while (i < in.text.size()) {
      if (!pattern_.empty() && in.text.compare(i, pattern_.size(), pattern_) == 0) {
        out.Append(content_, in.origin[i]);
        i += pattern_.size();
      } else {
        out.text.push_back(in.text[i]);
        out.origin.push_back(in.origin[i]);
        ++i;
      }
    }
    return out;
  }

 private:
  std::string pattern_, content_;
};

class StripNormalizer : public TextNormalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  NormalizedText Apply(const NormalizedText& in) const override {
    size_t begin = 0, end = in.text.size();
    while (left_ && begin < end && u_isUWhiteSpace(CodePointAt(in.text, begin))) begin += Utf8Length(in.text[begin]);
    while (right_ && end > begin) {
      size_t last = end - 1;
      while (last > begin && (static_cast<unsigned char>(in.text[last]) & 0xC0) == 0x80) --last;
      if (!u_isUWhiteSpace(CodePointAt(in.text, last))) break;
      end = last;
    }
    return in.Slice(begin, end);
  }

 private:
  bool left_, right_;
};

class NormalizerSequence : public TextNormalizer {
 public:
  explicit NormalizerSequence(std::vector<std::unique_ptr<TextNormalizer>> steps) : steps_(std::move(steps)) {}
  NormalizedText Apply(const NormalizedText& in) const override {
    NormalizedText text = in;
    for (const auto& step : steps_) text = step->Apply(text);
    return text;
  }

 private:
  std::vector<std::unique_ptr<TextNormalizer>> steps_;
};

// --- Pre-tokenizers ------------------------------------------------------------------------

// kMatchesOnly is internal (Whitespace keeps its matches and drops the gaps).
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous, kMatchesOnly };

// Splits `piece` around the [begin, end) matches as `behavior` says.
void SplitAround(const NormalizedText& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                 SplitBehavior behavior, std::vector<NormalizedText>& out) {
  std::vector<std::pair<size_t, bool>> cuts;  // (end of a piece, whether it is a match)
  size_t cursor = 0;
  for (const auto& [b, e] : matches) {
    if (b > cursor) cuts.emplace_back(b, false);
    cuts.emplace_back(e, true);
    cursor = e;
  }
  if (cursor < piece.text.size()) cuts.emplace_back(piece.text.size(), false);
  size_t start = 0;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t i = 0; i < cuts.size(); ++i) {
    const auto [end, is_match] = cuts[i];
    switch (behavior) {
      case SplitBehavior::kIsolated:
        ranges.emplace_back(start, end);
        break;
      case SplitBehavior::kRemoved:
        if (!is_match) ranges.emplace_back(start, end);
        break;
      case SplitBehavior::kMatchesOnly:
        if (is_match) ranges.emplace_back(start, end);
        break;
      case SplitBehavior::kMergedWithPrevious:
        // Only onto a piece that is no match: "x  1" splits into "x ", " ", "1", as the tokenizers library splits.
        if (is_match && i > 0 && !cuts[i - 1].second)
          ranges.back().second = end;
        else
          ranges.emplace_back(start, end);
        break;
      case SplitBehavior::kMergedWithNext:
        if (is_match && i + 1 < cuts.size() && !cuts[i + 1].second) {
          ranges.emplace_back(start, cuts[i + 1].first);
          start = cuts[++i].first;
          continue;
        }
        ranges.emplace_back(start, end);
        break;
      case SplitBehavior::kContiguous:
        if (is_match && i > 0 && cuts[i - 1].second)
          ranges.back().second = end;
        else
          ranges.emplace_back(start, end);
        break;
    }
    start = end;
  }
  for (const auto& [b, e] : ranges) {
    if (e > b) out.push_back(piece.Slice(b, e));
  }
}

absl::StatusOr<SplitBehavior> ParseBehavior(const json& spec) {
  const std::string b = spec.value("behavior", std::string("Isolated"));
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: split behavior \"", b, "\" is not supported"));
}

class RegexSplit : public PreTokenizer {
 public:
  RegexSplit(std::unique_ptr<Regex> regex, SplitBehavior behavior) : regex_(std::move(regex)), behavior_(behavior) {}
  absl::Status Split(const NormalizedText& piece, bool, std::vector<NormalizedText>& out) const override {
    ASSIGN_OR_RETURN(auto matches, regex_->Matches(piece.text));
    SplitAround(piece, matches, behavior_, out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
};

class StringSplit : public PreTokenizer {
 public:
  StringSplit(std::string pattern, SplitBehavior behavior) : pattern_(std::move(pattern)), behavior_(behavior) {}
  absl::Status Split(const NormalizedText& piece, bool, std::vector<NormalizedText>& out) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    for (size_t at = piece.text.find(pattern_); !pattern_.empty() && at != std::string::npos;
         at = piece.text.find(pattern_, at + pattern_.size())) {
      matches.emplace_back(at, at + pattern_.size());
    }
    SplitAround(piece, matches, behavior_, out);
    return absl::OkStatus();
  }

 private:
  std::string pattern_;
  SplitBehavior behavior_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status Split(const NormalizedText& piece, bool, std::vector<NormalizedText>& out) const override {
    NormalizedText text = piece;
    if (add_prefix_space_ && !text.text.empty() && text.text[0] != ' ') {
      NormalizedText prefixed;
      prefixed.origin_end = text.origin_end;
      prefixed.Append(" ", text.origin[0]);
      prefixed.text += text.text;
      prefixed.origin.insert(prefixed.origin.end(), text.origin.begin(), text.origin.end());
      text = std::move(prefixed);
    }
    std::vector<NormalizedText> parts;
    if (regex_) {
      ASSIGN_OR_RETURN(auto matches, regex_->Matches(text.text));
      SplitAround(text, matches, SplitBehavior::kIsolated, parts);
    } else {
      parts.push_back(text);
    }
    for (const NormalizedText& part : parts) {
      NormalizedText mapped;
      mapped.origin_end = part.origin_end;
      for (size_t i = 0; i < part.text.size(); ++i) {
        mapped.Append(ByteToUnicode()[static_cast<unsigned char>(part.text[i])], part.origin[i]);
      }
      out.push_back(std::move(mapped));
    }
    return absl::OkStatus();
  }
  bool byte_level() const override { return true; }
  std::optional<bool> adds_prefix_space() const override { return add_prefix_space_; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, std::string scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {}
  absl::Status Split(const NormalizedText& piece, bool first, std::vector<NormalizedText>& out) const override {
    NormalizedText text;
    text.origin_end = piece.origin_end;
    const bool prepend = scheme_ == "always" || (scheme_ == "first" && first);
    // As tokenizers does, no mark is prepended when the text already starts with one (after spaces
    // became marks).
    if (prepend && !piece.text.empty() && piece.text[0] != ' ' &&
        piece.text.compare(0, replacement_.size(), replacement_) != 0) {
      text.Append(replacement_, piece.origin[0]);
    }
    for (size_t i = 0; i < piece.text.size(); ++i) {
      if (piece.text[i] == ' ')
        text.Append(replacement_, piece.origin[i]);
      else
        text.Append(std::string(1, piece.text[i]), piece.origin[i]);
    }
    if (!split_) {
      out.push_back(std::move(text));
      return absl::OkStatus();
    }
    StringSplit splitter(replacement_, SplitBehavior::kMergedWithNext);
    return splitter.Split(text, first, out);
  }
  std::optional<bool> adds_prefix_space() const override { return scheme_ != "never"; }

 private:
  std::string replacement_, scheme_;
  bool split_;
};

class PreTokenizerSequence : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  absl::Status Split(const NormalizedText& piece, bool first, std::vector<NormalizedText>& out) const override {
    std::vector<NormalizedText> pieces = {piece};
    for (const auto& step : steps_) {
      std::vector<NormalizedText> next;
      for (size_t i = 0; i < pieces.size(); ++i) RETURN_IF_ERROR(step->Split(pieces[i], first && i == 0, next));
      pieces = std::move(next);
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
    return absl::OkStatus();
  }
  std::optional<bool> adds_prefix_space() const override {
    for (const auto& step : steps_) {
      if (std::optional<bool> prefix = step->adds_prefix_space()) return prefix;
    }
    return std::nullopt;
  }
  bool byte_level() const override {
    for (const auto& step : steps_) {
      if (step->byte_level()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

size_t Utf8Length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

int32_t CodePointAt(const std::string& text, size_t i) {
  UChar32 c = 0;
  int32_t offset = static_cast<int32_t>(i);
  U8_NEXT(reinterpret_cast<const uint8_t*>(text.data()), offset, static_cast<int32_t>(text.size()), c);
  return c;
}

NormalizedText NormalizedText::FromOriginal(const std::string& text, size_t offset) {
  NormalizedText out;
  out.text = text;
  out.origin.resize(text.size());
  for (size_t i = 0; i < text.size(); ++i) out.origin[i] = offset + i;
  out.origin_end = offset + text.size();
  return out;
}

void NormalizedText::Append(const std::string& bytes, size_t from) {
  text += bytes;
  origin.insert(origin.end(), bytes.size(), from);
}

NormalizedText NormalizedText::Slice(size_t begin, size_t end) const {
  NormalizedText out;
  out.text = text.substr(begin, end - begin);
  out.origin.assign(origin.begin() + begin, origin.begin() + end);
  out.origin_end = OriginAt(end);
  return out;
}

const std::vector<std::string>& ByteToUnicode() {
  static const std::vector<std::string> table = [] {
    // Printable Latin-1 bytes stand for themselves; the rest map to code points from U+0100 upward.
    std::vector<std::string> t(256);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = ToUtf8(icu::UnicodeString(static_cast<UChar32>(printable ? b : next++)));
    }
    return t;
  }();
  return table;
}

bool UnicodeToByte(const std::string& ch, std::string& out) {
  static const std::unordered_map<std::string, char> inverse = [] {
    std::unordered_map<std::string, char> m;
    for (int b = 0; b < 256; ++b) m[ByteToUnicode()[b]] = static_cast<char>(b);
    return m;
  }();
  auto it = inverse.find(ch);
  if (it == inverse.end()) return false;
  out.push_back(it->second);
  return true;
}

absl::StatusOr<std::unique_ptr<TextNormalizer>> TextNormalizer::FromJson(const json& spec) {
  const std::string type = TypeOf(spec);
  UErrorCode status = U_ZERO_ERROR;
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(icu::Normalizer2::getNFCInstance(status));
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(icu::Normalizer2::getNFKCInstance(status));
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(icu::Normalizer2::getNFDInstance(status));
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(icu::Normalizer2::getNFKDInstance(status));
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(spec.value("prepend", std::string()));
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(spec.value("strip_left", true), spec.value("strip_right", true));
  if (type == "Replace") {
    bool is_regex = false;
    ASSIGN_OR_RETURN(std::string pattern, PatternOf(spec, is_regex));
    if (is_regex) return absl::InvalidArgumentError("tokenizer.json: Replace with a Regex pattern is not supported");
    return std::make_unique<ReplaceNormalizer>(pattern, spec.value("content", std::string()));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<TextNormalizer>> steps;
    for (const json& step : JsonMember(spec, "normalizers")) {
      ASSIGN_OR_RETURN(auto normalizer, FromJson(step));
      steps.push_back(std::move(normalizer));
    }
    return std::make_unique<NormalizerSequence>(std::move(steps));
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: normalizer \"", type, "\" is not supported"));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& spec) {
  const std::string type = TypeOf(spec);
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (spec.value("use_regex", true)) {
      ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(spec.value("add_prefix_space", false), std::move(regex));
  }
  if (type == "Split") {
    if (spec.value("invert", false))
      return absl::InvalidArgumentError("tokenizer.json: inverted Split is not supported");
    bool is_regex = false;
    ASSIGN_OR_RETURN(std::string pattern, PatternOf(spec, is_regex));
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(spec));
    if (!is_regex) return std::make_unique<StringSplit>(pattern, behavior);
    ASSIGN_OR_RETURN(auto regex, Regex::Compile(pattern));
    return std::make_unique<RegexSplit>(std::move(regex), behavior);
  }
  if (type == "Metaspace") {
    std::string scheme = spec.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = spec.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<MetaspacePreTokenizer>(spec.value("replacement", std::string("\xE2\x96\x81")), scheme,
                                                   spec.value("split", true));
  }
  if (type == "Digits") {
    // Every number, as the tokenizers library's Digits takes Rust's char::is_numeric ("²", "½", "Ⅻ" too).
    ASSIGN_OR_RETURN(auto regex, Regex::Compile(spec.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+"));
    return std::make_unique<RegexSplit>(std::move(regex), SplitBehavior::kIsolated);
  }
  if (type == "Whitespace") {
    ASSIGN_OR_RETURN(auto regex, Regex::Compile("\\w+|[^\\w\\s]+"));
    return std::make_unique<RegexSplit>(std::move(regex), SplitBehavior::kMatchesOnly);
  }
  if (type == "WhitespaceSplit") {
    ASSIGN_OR_RETURN(auto regex, Regex::Compile("\\s+"));
    return std::make_unique<RegexSplit>(std::move(regex), SplitBehavior::kRemoved);
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& step : JsonMember(spec, "pretokenizers")) {
      ASSIGN_OR_RETURN(auto pre, FromJson(step));
      steps.push_back(std::move(pre));
    }
    return std::make_unique<PreTokenizerSequence>(std::move(steps));
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: pre_tokenizer \"", type, "\" is not supported"));
}

int64_t NormalizedBytesBound(const std::string& text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfkd = icu::Normalizer2::getNFKDInstance(status);
  if (U_FAILURE(status)) return static_cast<int64_t>(text.size());
  const icu::UnicodeString decomposed = nfkd->normalize(icu::UnicodeString::fromUTF8(text), status);
  if (U_FAILURE(status)) return static_cast<int64_t>(text.size());
  return std::max(static_cast<int64_t>(text.size()), static_cast<int64_t>(ToUtf8(decomposed).size()));
}

}  // namespace attribution::engine
