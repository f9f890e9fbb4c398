// SPDX-License-Identifier: Apache-2.0
#include "client/batch/parquet_writer.h"

#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"

namespace attribution::client::batch {
namespace {

using nlohmann::json;

static_assert(std::endian::native == std::endian::little, "PLAIN values are written as the host stores them");

// Parquet's enums (parquet.thrift).
enum PhysicalType { kBoolean = 0, kInt64 = 2, kDouble = 5, kByteArray = 6 };
enum Repetition { kRequired = 0, kOptional = 1, kRepeated = 2 };
enum ConvertedType { kUtf8 = 0, kList = 3, kUint64 = 14 };
enum Encoding { kPlain = 0, kRle = 3 };

// Thrift's compact protocol, the part Parquet's page headers and file metadata use. Fields are written
// in increasing id order within each struct.
class Compact {
 public:
  static constexpr int kI32 = 5, kI64 = 6, kBinary = 8, kListType = 9, kStruct = 12;

  void I32(int16_t id, int64_t value) {
    Field(id, kI32);
    Varint(ZigZag(value));
  }
  void I64(int16_t id, int64_t value) {
    Field(id, kI64);
    Varint(ZigZag(value));
  }
  void Binary(int16_t id, const std::string& value) {
    Field(id, kBinary);
    String(value);
  }
  void Struct(int16_t id) {
    Field(id, kStruct);
    last_.push_back(0);
  }
  void List(int16_t id, int element_type, size_t size) {
    Field(id, kListType);
    if (size < 15) {
      out_.push_back(static_cast<char>(size << 4 | element_type));
    } else {
      out_.push_back(static_cast<char>(0xF0 | element_type));
      Varint(size);
    }
  }
  void ElementStruct() { last_.push_back(0); }
  void ElementI32(int64_t value) { Varint(ZigZag(value)); }
  void ElementBinary(const std::string& value) { String(value); }
  // A list element already encoded (a struct's fields and its stop byte).
  void ElementRaw(const std::string& encoded) { out_ += encoded; }
  void End() {
    out_.push_back(0);
    last_.pop_back();
  }
  // The bytes of the outermost struct, ended.
  std::string Finish() {
    out_.push_back(0);
    return std::move(out_);
  }

 private:
  void Field(int16_t id, int type) {
    const int delta = id - last_.back();
    if (delta > 0 && delta <= 15) {
      out_.push_back(static_cast<char>(delta << 4 | type));
    } else {
      out_.push_back(static_cast<char>(type));
      Varint(ZigZag(id));
    }
    last_.back() = id;
  }
  void Varint(uint64_t value) {
    for (; value >= 0x80; value >>= 7) out_.push_back(static_cast<char>(value | 0x80));
    out_.push_back(static_cast<char>(value));
  }
  static uint64_t ZigZag(int64_t value) {
    return (static_cast<uint64_t>(value) << 1) ^ static_cast<uint64_t>(value >> 63);
  }
  void String(const std::string& value) {
    Varint(value.size());
    out_ += value;
  }

  std::string out_;
  std::vector<int16_t> last_{0};
};

// One column's levels and PLAIN values.
struct Encoded {
  int max_repetition = 0, max_definition = 0;
  std::vector<uint8_t> repetition, definition;  // levels here are at most 5
  std::string values;
  std::vector<bool> bits;  // booleans, packed at the end
};

template <typename T>
void AppendRaw(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

// Appends a leaf value of `type`'s element kind, or says why it does not fit.
absl::Status AppendValue(ParquetType type, const json& value, Encoded& out) {
  switch (type) {
    case ParquetType::kString:
    case ParquetType::kStringList:
      if (!value.is_string()) return absl::InvalidArgumentError("not a string");
      AppendRaw(out.values, static_cast<uint32_t>(value.get_ref<const std::string&>().size()));
      out.values += value.get_ref<const std::string&>();
      return absl::OkStatus();
    case ParquetType::kDouble:
    case ParquetType::kDoubleList:
    case ParquetType::kDoubleMatrix:
      if (!value.is_number()) return absl::InvalidArgumentError("not a number");
      AppendRaw(out.values, value.get<double>());
      return absl::OkStatus();
    case ParquetType::kInt64:
      if (!value.is_number_integer() || (value.is_number_unsigned() && value.get<uint64_t>() > INT64_MAX)) {
        return absl::InvalidArgumentError("not an integer of 64 signed bits");
      }
      AppendRaw(out.values, value.get<int64_t>());
      return absl::OkStatus();
    case ParquetType::kUint64:
      if (!value.is_number_integer() || (!value.is_number_unsigned() && value.get<int64_t>() < 0)) {
        return absl::InvalidArgumentError("not an integer of 64 unsigned bits");
      }
      AppendRaw(out.values, value.get<uint64_t>());
      return absl::OkStatus();
    case ParquetType::kBool:
      if (!value.is_boolean()) return absl::InvalidArgumentError("not a boolean");
      out.bits.push_back(value.get<bool>());
      return absl::OkStatus();
  }
  return absl::InternalError("unknown column type");
}

void Level(Encoded& out, int repetition, int definition) {
  out.repetition.push_back(static_cast<uint8_t>(repetition));
  out.definition.push_back(static_cast<uint8_t>(definition));
}

// A list element: its definition level when present (one less when null, as JSON writes NaN).
absl::Status AppendElement(ParquetType type, const json& value, int repetition, int definition, Encoded& out) {
  if (value.is_null()) {
    Level(out, repetition, definition - 1);
    return absl::OkStatus();
  }
  Level(out, repetition, definition);
  return AppendValue(type, value, out);
}

// A row's value (or null) as levels and leaf values, definition levels counting what is there:
// primitives 1: present; lists 1: empty, 2: a null element, 3: an element; lists of lists 1: empty,
// 2: a null inner list, 3: an empty one, 4: a null element, 5: an element.
absl::Status EncodeRow(ParquetType type, const json* value, Encoded& out) {
  if (value == nullptr || value->is_null()) {
    Level(out, 0, 0);
    return absl::OkStatus();
  }
  switch (type) {
    case ParquetType::kString:
    case ParquetType::kDouble:
    case ParquetType::kInt64:
    case ParquetType::kUint64:
    case ParquetType::kBool:
      Level(out, 0, 1);
      return AppendValue(type, *value, out);
    case ParquetType::kStringList:
    case ParquetType::kDoubleList: {
      if (!value->is_array()) return absl::InvalidArgumentError("not a list");
      if (value->empty()) Level(out, 0, 1);
      for (size_t i = 0; i < value->size(); ++i) {
        if (absl::Status s = AppendElement(type, (*value)[i], i == 0 ? 0 : 1, 3, out); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    case ParquetType::kDoubleMatrix: {
      if (!value->is_array()) return absl::InvalidArgumentError("not a list of lists");
      if (value->empty()) Level(out, 0, 1);
      for (size_t i = 0; i < value->size(); ++i) {
        const json& inner = (*value)[i];
        const int first = i == 0 ? 0 : 1;
        if (inner.is_null()) {
          Level(out, first, 2);
          continue;
        }
        if (!inner.is_array()) return absl::InvalidArgumentError("not a list of lists");
        if (inner.empty()) Level(out, first, 3);
        for (size_t j = 0; j < inner.size(); ++j) {
          if (absl::Status s = AppendElement(type, inner[j], j == 0 ? first : 2, 5, out); !s.ok()) return s;
        }
      }
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown column type");
}

// Levels in the RLE / bit-packing hybrid, runs only, behind their 4-byte length (data page v1).
std::string Levels(const std::vector<uint8_t>& levels, int max_level) {
  if (max_level == 0) return "";
  std::string runs;
  for (size_t i = 0; i < levels.size();) {
    size_t j = i;
    while (j < levels.size() && levels[j] == levels[i]) ++j;
    for (uint64_t header = (j - i) << 1; true; header >>= 7) {
      if (header < 0x80) {
        runs.push_back(static_cast<char>(header));
        break;
      }
      runs.push_back(static_cast<char>(header | 0x80));
    }
    runs.push_back(static_cast<char>(levels[i]));  // levels here fit one byte
    i = j;
  }
  std::string out;
  AppendRaw(out, static_cast<uint32_t>(runs.size()));
  return out + runs;
}

PhysicalType LeafType(ParquetType type) {
  switch (type) {
    case ParquetType::kString:
    case ParquetType::kStringList:
      return kByteArray;
    case ParquetType::kInt64:
    case ParquetType::kUint64:
      return kInt64;
    case ParquetType::kBool:
      return kBoolean;
    case ParquetType::kDouble:
    case ParquetType::kDoubleList:
    case ParquetType::kDoubleMatrix:
      return kDouble;
  }
  return kByteArray;
}

// The nodes of a column's schema path (WriteSchema): 1, 3 for a list, 5 for a list of lists. None is
// required, so it is also the column's maximum definition level.
int SchemaDepth(ParquetType type) {
  switch (type) {
    case ParquetType::kStringList:
    case ParquetType::kDoubleList:
      return 3;
    case ParquetType::kDoubleMatrix:
      return 5;
    default:
      return 1;
  }
}

void SchemaElement(Compact& c, std::optional<int> type, Repetition repetition, const std::string& name,
                   std::optional<int> children, std::optional<int> converted) {
  c.ElementStruct();
  if (type) c.I32(1, *type);
  c.I32(3, repetition);
  c.Binary(4, name);
  if (children) c.I32(5, *children);
  if (converted) c.I32(6, *converted);
  c.End();
}

// The column's schema elements (depth first) and its leaf's path.
std::vector<std::string> WriteSchema(Compact& c, const ParquetColumn& column) {
  const std::optional<int> utf8 = LeafType(column.type) == kByteArray ? std::optional<int>(kUtf8) : std::nullopt;
  const std::optional<int> converted = column.type == ParquetType::kUint64 ? std::optional<int>(kUint64) : utf8;
  switch (column.type) {
    case ParquetType::kStringList:
    case ParquetType::kDoubleList:
      SchemaElement(c, std::nullopt, kOptional, column.name, 1, kList);
      SchemaElement(c, std::nullopt, kRepeated, "list", 1, std::nullopt);
      SchemaElement(c, LeafType(column.type), kOptional, "element", std::nullopt, utf8);
      return {column.name, "list", "element"};
    case ParquetType::kDoubleMatrix:
      SchemaElement(c, std::nullopt, kOptional, column.name, 1, kList);
      SchemaElement(c, std::nullopt, kRepeated, "list", 1, std::nullopt);
      SchemaElement(c, std::nullopt, kOptional, "element", 1, kList);
      SchemaElement(c, std::nullopt, kRepeated, "list", 1, std::nullopt);
      SchemaElement(c, kDouble, kOptional, "element", std::nullopt, std::nullopt);
      return {column.name, "list", "element", "list", "element"};
    default:
      SchemaElement(c, LeafType(column.type), kOptional, column.name, std::nullopt, converted);
      return {column.name};
  }
}

// What a value adds to its column's buffers (values and one byte per level each), for the group's byte limit.
int64_t BufferedBytes(const Encoded& encoded) {
  return static_cast<int64_t>(encoded.values.size() + encoded.repetition.size() + encoded.definition.size() +
                              encoded.bits.size() / 8);
}

}  // namespace

struct ParquetWriter::Group {
  std::vector<Encoded> columns;
  int64_t rows = 0;
};

ParquetWriter::ParquetWriter(std::vector<ParquetColumn> columns, Sink sink, ParquetRowGroupLimits limits)
    : columns_(std::move(columns)), sink_(std::move(sink)), limits_(limits) {}

ParquetWriter::~ParquetWriter() = default;

absl::Status ParquetWriter::Add(const json& row) {
  if (written_ == 0) {
    if (absl::Status s = sink_("PAR1"); !s.ok()) return s;
    written_ = 4;
  }
  if (!group_) {
    group_ = std::make_unique<Group>();
    group_->columns.resize(columns_.size());
    for (size_t c = 0; c < columns_.size(); ++c) {
      group_->columns[c].max_definition = SchemaDepth(columns_[c].type);
      group_->columns[c].max_repetition = (group_->columns[c].max_definition - 1) / 2;  // one per list level
    }
  }
  int64_t bytes = 0;
  for (size_t c = 0; c < columns_.size(); ++c) {
    const ParquetColumn& column = columns_[c];
    Encoded& encoded = group_->columns[c];
    const auto value = row.find(column.name);
    if (absl::Status s = EncodeRow(column.type, value == row.end() ? nullptr : &*value, encoded); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("row ", rows_, ", column \"", column.name, "\": ", s.message()));
    }
    bytes += BufferedBytes(encoded);
  }
  ++rows_;
  ++group_->rows;
  if (group_->rows >= limits_.rows || bytes >= limits_.bytes) return WriteGroup();
  return absl::OkStatus();
}

absl::Status ParquetWriter::WriteGroup() {
  std::unique_ptr<Group> group = std::move(group_);
  Compact meta;  // the RowGroup struct, for the footer
  meta.List(1, Compact::kStruct, columns_.size());
  int64_t total = 0;
  for (size_t c = 0; c < columns_.size(); ++c) {
    Encoded& encoded = group->columns[c];
    for (size_t i = 0; i < encoded.bits.size(); i += 8) {
      uint8_t byte = 0;
      for (size_t b = 0; b < 8 && i + b < encoded.bits.size(); ++b) byte |= encoded.bits[i + b] << b;
      encoded.values.push_back(static_cast<char>(byte));
    }
    const std::string repetition = Levels(encoded.repetition, encoded.max_repetition);
    const std::string definition = Levels(encoded.definition, encoded.max_definition);
    const size_t data = repetition.size() + definition.size() + encoded.values.size();
    if (data > static_cast<size_t>(INT32_MAX) - 4096) {  // page sizes are 32-bit
      return absl::ResourceExhaustedError(
          absl::StrCat("column \"", columns_[c].name, "\" holds ", data, " bytes, over one Parquet page's 2 GiB"));
    }
    Compact header;
    header.I32(1, 0);  // DATA_PAGE
    header.I32(2, static_cast<int64_t>(data));
    header.I32(3, static_cast<int64_t>(data));
    header.Struct(5);
    header.I32(1, static_cast<int64_t>(encoded.definition.size()));
    header.I32(2, kPlain);
    header.I32(3, kRle);
    header.I32(4, kRle);
    header.End();
    const std::string page_header = header.Finish();
    const int64_t offset = written_, size = static_cast<int64_t>(page_header.size() + data);
    const int64_t values = static_cast<int64_t>(encoded.definition.size());
    const std::string* const page[] = {&page_header, &repetition, &definition, &encoded.values};
    for (const std::string* part : page) {
      if (absl::Status s = sink_(*part); !s.ok()) return s;
    }
    written_ += size;
    total += size;
    encoded = Encoded();  // the values are out: free them before the next column's copy
    meta.ElementStruct();
    meta.I64(2, offset);
    meta.Struct(3);
    meta.I32(1, LeafType(columns_[c].type));
    meta.List(2, Compact::kI32, 2);
    meta.ElementI32(kPlain);
    meta.ElementI32(kRle);
    Compact scratch;  // the leaf's path, as the schema names it
    const std::vector<std::string> path = WriteSchema(scratch, columns_[c]);
    meta.List(3, Compact::kBinary, path.size());
    for (const std::string& part : path) meta.ElementBinary(part);
    meta.I32(4, 0);  // UNCOMPRESSED
    meta.I64(5, values);
    meta.I64(6, size);
    meta.I64(7, size);
    meta.I64(9, offset);
    meta.End();
    meta.End();
  }
  meta.I64(2, total);
  meta.I64(3, group->rows);
  groups_.push_back(meta.Finish());
  return absl::OkStatus();
}

absl::Status ParquetWriter::Finish() {
  if (written_ == 0) {
    if (absl::Status s = sink_("PAR1"); !s.ok()) return s;
    written_ = 4;
  }
  if (group_) {
    if (absl::Status s = WriteGroup(); !s.ok()) return s;
  }
  Compact meta;
  meta.I32(1, 1);  // version
  size_t elements = 1;
  for (const ParquetColumn& column : columns_) elements += SchemaDepth(column.type);
  meta.List(2, Compact::kStruct, elements);
  SchemaElement(meta, std::nullopt, kRequired, "schema", static_cast<int>(columns_.size()), std::nullopt);
  for (const ParquetColumn& column : columns_) WriteSchema(meta, column);
  meta.I64(3, rows_);
  meta.List(4, Compact::kStruct, groups_.size());
  for (const std::string& group : groups_) meta.ElementRaw(group);
  meta.Binary(6, "attribution-batch");
  std::string footer = meta.Finish();
  AppendRaw(footer, static_cast<uint32_t>(footer.size()));
  footer += "PAR1";
  return sink_(footer);
}

absl::StatusOr<std::string> ParquetFile(const std::vector<ParquetColumn>& columns, const std::vector<json>& rows) {
  std::string file;
  ParquetWriter writer(columns, [&file](absl::string_view bytes) {
    file.append(bytes.data(), bytes.size());
    return absl::OkStatus();
  });
  for (const json& row : rows) {
    if (absl::Status s = writer.Add(row); !s.ok()) return s;
  }
  if (absl::Status s = writer.Finish(); !s.ok()) return s;
  return file;
}

}  // namespace attribution::client::batch
