// SPDX-License-Identifier: Apache-2.0
#include "client/batch/input_rows.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/batch/untrusted_text.h"

namespace attribution::client::batch {
namespace {

using nlohmann::json;

constexpr absl::string_view kUtf8ByteOrderMark = "\xEF\xBB\xBF";
constexpr size_t kChunkBytes = 1 << 16;
// No request carries a row this long (the client's 64 MiB message limit): a longer one is refused as it is
// read, before it is held whole (a CSV quote left open swallows the rest of the file into one field).
constexpr int64_t kMaxRowBytes = int64_t{64} << 20;

absl::Status RowTooLong(const std::string& path, int64_t line, bool csv) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": the row is over ", kMaxRowBytes >> 20,
                                                 " MiB, more than a request may carry",
                                                 csv ? " (a CSV quote left open?)" : ""));
}

uint64_t Fnv1a(absl::string_view bytes, uint64_t hash = 1469598103934665603ull) {
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

// A CSV record's fields, each with its length, so that moving a comma between two fields changes it.
uint64_t FieldsDigest(const std::vector<std::string>& fields) {
  uint64_t hash = Fnv1a({});
  for (const std::string& field : fields) {
    const uint64_t size = field.size();
    hash = Fnv1a(field, Fnv1a({reinterpret_cast<const char*>(&size), sizeof(size)}, hash));
  }
  return hash;
}

absl::Status Changed(const std::string& path) {
  return absl::FailedPreconditionError(
      absl::StrCat(path,
                   ": the input changed while the job read it (is it being written?): no row of the changed file is "
                   "sent; run the same command again once the file is complete"));
}

// A file's bytes in order through a fixed buffer, read with pread(2) so that rows can be read by offset from
// the same descriptor meanwhile; or a string's (a record read again).
class Bytes {
 public:
  Bytes(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  explicit Bytes(std::string text) : buffer_(std::move(text)), end_(true) {}

  // The next byte, -1 at the end (or on a read error: status()).
  int Get() { return Available() ? static_cast<unsigned char>(buffer_[pos_++]) : -1; }
  int Peek() { return Available() ? static_cast<unsigned char>(buffer_[pos_]) : -1; }
  bool AtEnd() { return !Available(); }
  // Skips `prefix` where the bytes begin with it.
  void SkipPrefix(absl::string_view prefix) {
    if (position() == 0 && Available() && absl::StartsWith(absl::string_view(buffer_).substr(pos_), prefix)) {
      pos_ += prefix.size();
    }
  }
  int64_t position() const { return buffer_offset_ + static_cast<int64_t>(pos_); }
  const absl::Status& status() const { return status_; }
  // The bytes up to the next '\n' (or the end) into `text`, the '\n' consumed; false (the line's rest left
  // unread) once `text` would pass `limit` bytes.
  bool ReadLine(std::string& text, size_t limit) {
    text.clear();
    while (Available()) {
      if (text.size() > limit) return false;
      const size_t newline = buffer_.find('\n', pos_);
      const size_t end = newline == std::string::npos ? buffer_.size() : newline;
      text.append(buffer_, pos_, end - pos_);
      pos_ = end;
      if (newline != std::string::npos) {
        ++pos_;
        return text.size() <= limit;
      }
    }
    return text.size() <= limit;
  }

 private:
  // Whether a byte is there to read, reading the next chunk once the buffer is used up.
  bool Available() {
    if (pos_ < buffer_.size()) return true;
    if (end_) return false;
    buffer_offset_ += static_cast<int64_t>(buffer_.size());
    buffer_.resize(kChunkBytes);
    pos_ = 0;
    ssize_t n;
    do {
      n = ::pread(fd_, buffer_.data(), kChunkBytes, buffer_offset_);
    } while (n < 0 && errno == EINTR);
    if (n < 0) status_ = absl::NotFoundError(absl::StrCat("cannot read ", path_, ": ", std::strerror(errno)));
    buffer_.resize(n > 0 ? static_cast<size_t>(n) : 0);
    end_ = n <= 0;
    return n > 0;
  }

  int fd_ = -1;
  std::string path_;
  std::string buffer_;
  size_t pos_ = 0;
  int64_t buffer_offset_ = 0;  // of buffer_[0]
  bool end_ = false;
  absl::Status status_;
};

// A CSV record: its fields, its first line (1-based) and its bytes in the file, without its line end.
struct CsvRecord {
  std::vector<std::string> fields;
  int64_t line = 0, offset = 0, length = 0;
};

// CSV (RFC 4180, read as Python's csv module reads it by default): fields separated by commas,
// optionally quoted, quotes doubled inside quotes, newlines allowed inside quotes. A quote opens a
// quoted field only as the field's first character; elsewhere it is text (`5" screen`), so a stray
// quote cannot swallow the rows after it. Records are read one at a time, each with where its bytes are,
// so that it can be read again alone (a record parses alone as it did in its file).
class CsvReader {
 public:
  explicit CsvReader(Bytes& in) : in_(in) {}

  // The next record; false at the end. INVALID_ARGUMENT "PATH:LINE: unclosed quote" naming the record's
  // first line when the file ends inside quotes.
  absl::StatusOr<bool> Next(CsvRecord& record, const std::string& path) {
    record.fields.assign(1, "");
    record.line = line_;
    record.offset = in_.position();
    bool quoted = false, any = false, field_start = true;
    for (;;) {
      const int64_t at = in_.position();
      const int c = in_.Get();
      if (c < 0) {
        if (!in_.status().ok()) return in_.status();
        if (quoted) return absl::InvalidArgumentError(absl::StrCat(path, ":", record.line, ": unclosed quote"));
        record.length = at - record.offset;
        return any || record.fields.size() > 1 || !record.fields[0].empty();
      }
      std::string& field = record.fields.back();
      if (at - record.offset > kMaxRowBytes) return RowTooLong(path, record.line, /*csv=*/true);
      if (quoted) {
        if (c == '"' && in_.Peek() == '"') {
          field += '"';
          in_.Get();
        } else if (c == '"') {
          quoted = false;
        } else {
          if (c == '\n') ++line_;
          field += static_cast<char>(c);
        }
        continue;
      }
      if (c == '"' && field_start) {
        quoted = any = true;
        field_start = false;
      } else if (c == ',') {
        record.fields.emplace_back();
        any = field_start = true;
      } else if (c == '\n' || c == '\r') {
        if (c == '\r' && in_.Peek() == '\n') in_.Get();
        ++line_;
        if (any || record.fields.size() > 1 || !record.fields[0].empty()) {
          record.length = at - record.offset;
          return true;
        }
        record.line = line_;  // an empty line: no record
        record.offset = in_.position();
      } else {
        field += static_cast<char>(c);
        any = true;
        field_start = false;
      }
    }
  }

 private:
  Bytes& in_;
  int64_t line_ = 1;
};

// A row is an attribution row (prompt, target or choices, label) or a component row (clean, corrupted,
// answer, wrong_answer), never a mix: a key of the other kind would be silently ignored.
absl::Status CheckComponentRowKeys(const json& object, const std::string& where) {
  static const std::vector<std::string> kAttributionKeys = {"prompt", "target", "choices", "label"};
  static const std::vector<std::string> kAnswerKeys = {"answer", "wrong_answer"};
  const bool pair = object.contains("clean") || object.contains("corrupted");
  for (const std::string& key : pair ? kAttributionKeys : kAnswerKeys) {
    if (!object.contains(key)) continue;
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", key,
                     pair ? "\" is not read by a component row (clean, corrupted, answer, wrong_answer)"
                          : "\" belongs to a component row: give \"clean\" and \"corrupted\" too"));
  }
  if (!pair) return absl::OkStatus();
  for (const char* key : {"clean", "corrupted", "answer"}) {
    if (!object.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": a component row needs \"", key,
                                                     "\" (clean, corrupted, answer; wrong_answer for the "
                                                     "difference metrics)"));
    }
  }
  // Found here, naming the line, not as one server error per row (an empty answer is no token).
  for (const char* key : {"clean", "corrupted", "answer", "wrong_answer"}) {
    if (object.contains(key) && object[key].is_string() && object[key].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"", key, "\" is empty"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<BatchRow> RowFromJson(const json& object, const std::string& where) {
  if (!object.is_object()) return absl::InvalidArgumentError(where + ": a row must be a JSON object");
  BatchRow row;
  for (const auto& [key, value] : object.items()) {
    if (key == "id") {
      if (!value.is_string() && !value.is_number_integer()) {
        return absl::InvalidArgumentError(where + ": \"id\" must be a string or an integer");
      }
      // An integer's exact digits: get<int64_t>() of an id past INT64_MAX wrapped it to a negative one.
      row.id = value.is_string() ? value.get<std::string>() : JsonText(value);
    } else if (key == "prompt" || key == "target" || key == "label" || key == "clean" || key == "corrupted" ||
               key == "answer" || key == "wrong_answer") {
      if (!value.is_string())
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"", key, "\" must be a string"));
      if (key == "prompt" || key == "clean") row.prompt = value.get<std::string>();
      if (key == "target") row.target = value.get<std::string>();
      if (key == "label") row.label = value.get<std::string>();
      if (key == "corrupted") row.corrupted = value.get<std::string>();
      if (key == "answer") row.answer = value.get<std::string>();
      if (key == "wrong_answer") row.wrong_answer = value.get<std::string>();
    } else if (key == "choices") {
      if (!value.is_array()) return absl::InvalidArgumentError(where + ": \"choices\" must be a list of strings");
      for (const json& choice : value) {
        if (!choice.is_string()) return absl::InvalidArgumentError(where + ": \"choices\" must be a list of strings");
        row.choices.push_back(choice.get<std::string>());
      }
      // As an empty target: without choices the row would silently attribute a generated target.
      if (row.choices.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"choices\" is empty (leave it out to attribute a generated target)"));
      }
    } else if (key == "settings") {
      if (!value.is_object()) return absl::InvalidArgumentError(where + ": \"settings\" must be an object");
      // Settings are numbers, strings and booleans (MergeSettings checks which); a list or an object is
      // refused here, naming the line, before the row is copied about.
      for (const auto& [name, setting] : value.items()) {
        if (setting.is_structured()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": setting \"", name, "\" must be a ",
                                                         "number, a string or a boolean, not ", setting.type_name()));
        }
      }
      row.settings = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key \"", key,
                                                     "\" (id, prompt, target, choices, label, settings; a component "
                                                     "row: clean, corrupted, answer, wrong_answer)"));
    }
  }
  if (row.id.empty()) return absl::InvalidArgumentError(where + ": the row has no \"id\"");
  if (absl::Status pair = CheckComponentRowKeys(object, where); !pair.ok()) return pair;
  // The request would carry no target, and the server would attribute one it generates; a target set but
  // empty is INVALID_ARGUMENT in the contract (attribution.proto).
  if (row.target && row.target->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": row \"", row.id, "\": \"target\" is empty (leave it out to attribute a generated target)"));
  }
  if (row.target && !row.choices.empty()) {
    return absl::InvalidArgumentError(where + ": give \"target\" or \"choices\", not both");
  }
  if (row.label && row.choices.empty()) return absl::InvalidArgumentError(where + ": \"label\" needs \"choices\"");
  // Found here, not after every choice was scored (or as the server's complaint about an empty target).
  for (size_t c = 0; c < row.choices.size(); ++c) {
    if (row.choices[c].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": row \"", row.id, "\": choice ", c + 1, " of ",
                                                     row.choices.size(),
                                                     " is empty (in CSV, \"|\" separates choices: none may be empty)"));
    }
  }
  if (row.label && std::find(row.choices.begin(), row.choices.end(), *row.label) == row.choices.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": row \"", row.id, "\": label \"", *row.label,
                                                   "\" is not one of the choices (\"",
                                                   absl::StrJoin(row.choices, "\", \""), "\")"));
  }
  return row;
}

// The header of a CSV file: refused when a column repeats, which would silently lose one of its cells, or is not
// a column rows have (" prompt", "ID", an empty name of a trailing comma), which failed only at the first row, as
// an unknown "key" on line 2, or never, in a file without rows.
absl::Status CheckHeader(const CsvRecord& header, const std::string& path) {
  if (const std::optional<std::pair<size_t, size_t>> repeat = FirstRepeat(header.fields)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", header.line, ": column \"", header.fields[repeat->first],
                                                   "\" repeats column ", repeat->second + 1, " of the header"));
  }
  static const std::vector<std::string> kColumns = {"id",    "prompt",    "target", "choices",     "label",
                                                    "clean", "corrupted", "answer", "wrong_answer"};
  for (size_t c = 0; c < header.fields.size(); ++c) {
    const std::string& name = header.fields[c];
    if (std::find(kColumns.begin(), kColumns.end(), name) != kColumns.end()) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        path, ":", header.line, ": column ", c + 1, " of the header, \"", name,
        "\", is not a column rows have (id, prompt, target, choices, label; component rows: clean, corrupted, "
        "answer, wrong_answer; names are lower case, without spaces)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<BatchRow> RowFromCsv(const std::vector<std::string>& header, const std::vector<std::string>& fields,
                                    const std::string& where) {
  if (fields.size() != header.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", fields.size(), " fields, the header has ", header.size()));
  }
  json object = json::object();
  bool empty_target = false;
  for (size_t c = 0; c < header.size(); ++c) {
    const bool optional =
        header[c] == "target" || header[c] == "choices" || header[c] == "label" || header[c] == "wrong_answer";
    empty_target = empty_target || (header[c] == "target" && fields[c].empty());
    if (optional && fields[c].empty()) continue;  // an empty cell: not given
    if (header[c] == "choices") {
      std::vector<std::string> choices = absl::StrSplit(fields[c], '|');
      object["choices"] = choices;
    } else {
      object[header[c]] = fields[c];
    }
  }
  try {
    (void)object.dump();  // JSONL is checked by its parser; CSV bytes are checked here
  } catch (const json::type_error&) {
    return absl::InvalidArgumentError(where + ": not valid UTF-8");
  }
  absl::StatusOr<BatchRow> row = RowFromJson(object, where);
  if (!row.ok()) return row.status();
  // An empty target cell is a multiple-choice row's in a file of both kinds; a row with neither has lost
  // its target (a generated one is asked for by a file without the target column).
  if (empty_target && row->choices.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": row \"", row->id,
                                                   "\": the \"target\" cell is empty and the row has no choices "
                                                   "(leave out the target column to attribute generated targets)"));
  }
  return row;
}

// Where a row was read, and digests of what it was.
struct RowPlace {
  int64_t offset = 0, line = 0, length = 0;
  uint64_t content_digest = 0;
};
using EachRow = std::function<absl::Status(BatchRow&&, const RowPlace&)>;

// Calls `each` with every row of the JSONL file `in` reads, in order; the first row that does not parse fails.
absl::Status ScanJsonl(Bytes& in, const std::string& path, const EachRow& each) {
  std::string text;
  for (int64_t number = 1; !in.AtEnd(); ++number) {
    const int64_t offset = in.position();
    const bool whole = in.ReadLine(text, kMaxRowBytes);
    if (!in.status().ok()) return in.status();
    if (!whole) return RowTooLong(path, number, /*csv=*/false);
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    const std::string where = absl::StrCat(path, ":", number);
    absl::StatusOr<json> object = ParseJson(text, where);
    if (!object.ok()) return object.status();
    absl::StatusOr<BatchRow> row = RowFromJson(*object, where);
    if (!row.ok()) return row.status();
    row->line = number;
    const RowPlace place{
        .offset = offset, .line = number, .length = static_cast<int64_t>(text.size()), .content_digest = Fnv1a(text)};
    if (absl::Status taken = each(std::move(*row), place); !taken.ok()) return taken;
  }
  return in.status();
}

// As ScanJsonl for a CSV file, its header into `header`. An unclosed quote is the file's error even after a
// row's (it is found at the end), as when the whole file was parsed before its rows were read.
absl::Status ScanCsv(Bytes& in, const std::string& path, std::vector<std::string>& header, const EachRow& each) {
  CsvReader reader(in);
  CsvRecord record;
  absl::StatusOr<bool> more = reader.Next(record, path);
  if (!more.ok()) return more.status();
  if (!*more) return absl::OkStatus();
  // A bad header is the file's error unless a quote is left open (found at the end): read on, as for rows.
  absl::Status first_error = CheckHeader(record, path);
  if (first_error.ok()) header = std::move(record.fields);
  for (;;) {
    more = reader.Next(record, path);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (!first_error.ok()) continue;  // read on for an unclosed quote, which comes first
    const std::string where = absl::StrCat(path, ":", record.line);
    absl::StatusOr<BatchRow> row = RowFromCsv(header, record.fields, where);
    if (!row.ok()) {
      first_error = row.status();
      continue;
    }
    row->line = record.line;
    const RowPlace place{.offset = record.offset,
                         .line = record.line,
                         .length = record.length,
                         .content_digest = FieldsDigest(record.fields)};
    first_error = each(std::move(*row), place);
  }
  return first_error;
}

// Reads every row of `path` (open as `fd`) with `each`, the byte order mark that may open it skipped.
absl::Status ScanRows(int fd, const std::string& path, bool csv, std::vector<std::string>& header,
                      const EachRow& each) {
  Bytes in(fd, path);
  // Excel's "CSV UTF-8" (and some JSONL writers) open the file with a byte order mark, which would
  // otherwise be part of the first header name or id.
  in.SkipPrefix(kUtf8ByteOrderMark);
  return csv ? ScanCsv(in, path, header, each) : ScanJsonl(in, path, each);
}

// The first row, in input order, whose id an earlier row has, among the rows whose id digests are
// `repeated` (read again from the file: digests alike may belong to ids that differ).
absl::Status FirstRepeatedId(int fd, const std::string& path, bool csv, const std::vector<uint64_t>& repeated) {
  std::map<std::string, int64_t> seen;  // of the rows with a repeated digest only
  std::vector<std::string> header;
  absl::Status found;
  absl::Status scanned = ScanRows(fd, path, csv, header, [&](BatchRow&& row, const RowPlace& place) -> absl::Status {
    if (!std::binary_search(repeated.begin(), repeated.end(), IdDigest(row.id))) return absl::OkStatus();
    auto [it, inserted] = seen.emplace(row.id, place.line);
    if (inserted) return absl::OkStatus();
    found = absl::InvalidArgumentError(
        absl::StrCat(path, ":", place.line, ": id \"", row.id, "\" repeats line ", it->second));
    return absl::CancelledError();  // ends a JSONL scan; a CSV one reads on, for an unclosed quote
  });
  return found.ok() ? scanned : found;
}

}  // namespace

std::optional<std::pair<size_t, size_t>> FirstRepeat(const std::vector<std::string>& values) {
  std::unordered_map<std::string_view, size_t> first;
  first.reserve(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const auto [seen, fresh] = first.emplace(values[i], i);
    if (!fresh) return std::make_pair(i, seen->second);
  }
  return std::nullopt;
}

uint64_t IdDigest(const std::string& id) { return Fnv1a(id); }

void JobRows::NoteModel(const BatchRow& row) {
  if (!row.settings.contains("model")) return;
  // A row whose settings do not merge names no model: its result is that error.
  absl::StatusOr<json> effective = MergeSettings(JobDefaults(), row.settings, "row");
  if (!effective.ok()) return;
  const std::string name = (*effective)["model"].get<std::string>();
  if (std::find(models_.begin(), models_.end(), name) == models_.end()) models_.push_back(name);
}

RowsInMemory::RowsInMemory(std::vector<BatchRow> rows) : rows_(std::move(rows)) {
  for (const BatchRow& row : rows_) NoteModel(row);
}

absl::StatusOr<std::unique_ptr<InputRows>> InputRows::Open(const std::string& path, int shard_index, int shard_count) {
  // O_NONBLOCK: a FIFO without a writer held the open forever (it is refused below, as anything but a file is).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  const bool csv = absl::EndsWith(path, ".csv");
  std::unique_ptr<InputRows> rows(new InputRows(path, csv));
  rows->fd_ = fd;
  struct stat file {};
  if (::fstat(fd, &file) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  if (S_ISDIR(file.st_mode))
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(EISDIR)));
  // A pipe (`<(zcat rows.jsonl.gz)`, /dev/stdin) cannot be read twice: pread failed with "Illegal seek".
  if (!S_ISREG(file.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path,
                                                   ": the input must be a regular file (it is read twice, by "
                                                   "offset): write the rows to a file first"));
  }
  if (!csv && !absl::EndsWith(path, ".jsonl") && !absl::EndsWith(path, ".json")) {
    // A file that cannot be read (a directory) is that error first, as when files were read whole.
    char byte;
    if (::pread(fd, &byte, 1, 0) < 0) {
      return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": rows come as .jsonl or .csv"));
  }
  absl::StatusOr<FileIdentity> before = IdentityOfOpenFile(fd, path);
  if (!before.ok()) return before.status();
  // Every row's id digest, for repeated ids across all shards: 8 bytes a row, sorted once read.
  std::vector<uint64_t> ids;
  absl::Status scanned =
      ScanRows(fd, path, csv, rows->header_, [&](BatchRow&& row, const RowPlace& place) -> absl::Status {
        const uint64_t id = IdDigest(row.id);
        const bool mine = ids.size() % static_cast<size_t>(shard_count) == static_cast<size_t>(shard_index);
        ids.push_back(id);
        if (!mine) return absl::OkStatus();
        if (place.length > std::numeric_limits<uint32_t>::max()) {
          return absl::InvalidArgumentError(absl::StrCat(path, ":", place.line, ": the row is over 4 GiB"));
        }
        rows->rows_.push_back({.offset = place.offset,
                               .line = place.line,
                               .id_digest = id,
                               .content_digest = place.content_digest,
                               .length = static_cast<uint32_t>(place.length)});
        rows->NoteModel(row);
        return absl::OkStatus();
      });
  if (!scanned.ok()) return scanned;
  absl::StatusOr<FileIdentity> after = IdentityOfOpenFile(fd, path);
  if (!after.ok()) return after.status();
  if (*after != *before) return Changed(path);
  rows->identity_ = *after;
  std::sort(ids.begin(), ids.end());
  std::vector<uint64_t> repeated;
  for (size_t i = 1; i < ids.size(); ++i) {
    if (ids[i] == ids[i - 1] && (repeated.empty() || repeated.back() != ids[i])) repeated.push_back(ids[i]);
  }
  ids = {};
  if (!repeated.empty()) {
    absl::Status unique = FirstRepeatedId(fd, path, csv, repeated);
    // What that second read found is of the checked file only if the file is still that one.
    absl::StatusOr<FileIdentity> still = IdentityOfOpenFile(fd, path);
    if (!still.ok()) return still.status();
    if (*still != rows->identity_) return Changed(path);
    if (!unique.ok()) return unique;
  }
  return rows;
}

InputRows::~InputRows() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<BatchRow> InputRows::Row(size_t i) const {
  const Located& at = rows_[i];
  // The file as checked, or the row is not sent: a file rewritten in place since would mix rows of both.
  absl::StatusOr<FileIdentity> now = IdentityOfOpenFile(fd_, path_);
  if (!now.ok()) return now.status();
  if (*now != identity_) return Changed(path_);
  std::string text(at.length, '\0');
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::pread(fd_, text.data() + done, text.size() - done, at.offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FileError("cannot read", path_, errno);
    if (n == 0) return Changed(path_);
    done += static_cast<size_t>(n);
  }
  const std::string where = absl::StrCat(path_, ":", at.line);
  absl::StatusOr<BatchRow> row;
  if (csv_) {
    Bytes in(std::move(text));
    CsvReader reader(in);
    CsvRecord record;
    absl::StatusOr<bool> read = reader.Next(record, path_);
    if (!read.ok() || !*read || FieldsDigest(record.fields) != at.content_digest) return Changed(path_);
    row = RowFromCsv(header_, record.fields, where);
  } else {
    if (Fnv1a(text) != at.content_digest) return Changed(path_);
    absl::StatusOr<json> object = ParseJson(text, where);
    if (!object.ok()) return Changed(path_);
    row = RowFromJson(*object, where);
  }
  // The row was checked as it is now: an error here is a changed file's.
  if (!row.ok()) return Changed(path_);
  row->line = at.line;
  return row;
}

absl::StatusOr<std::vector<BatchRow>> ReadRows(const std::string& path) {
  absl::StatusOr<std::unique_ptr<InputRows>> input = InputRows::Open(path);
  if (!input.ok()) return input.status();
  std::vector<BatchRow> rows;
  for (size_t i = 0; i < (*input)->size(); ++i) {
    absl::StatusOr<BatchRow> row = (*input)->Row(i);
    if (!row.ok()) return row.status();
    rows.push_back(std::move(*row));
  }
  return rows;
}

}  // namespace attribution::client::batch
