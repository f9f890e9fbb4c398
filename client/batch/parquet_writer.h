// SPDX-License-Identifier: Apache-2.0
// A Parquet file of JSON rows, for the batch job's results (pyarrow, pandas, Spark and DuckDB read it).
// Debian 12 has no Arrow, so this is a small writer of its own: row groups of one uncompressed data page
// per column, PLAIN values and RLE levels, the metadata in Thrift's compact protocol. Every column, list
// and list element is nullable (JSON writes NaN as null); lists are Parquet's three-level LIST groups.
// Rows stream: the writer holds one row group's values, written out once the group reaches its limits.
//
//   ParquetWriter table({{"id", ParquetType::kString}, {"attribution", ParquetType::kDoubleList}}, sink);
//   for (const json& row : rows) RETURN_IF_ERROR(table.Add(row));
//   RETURN_IF_ERROR(table.Finish());
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attribution::client::batch {

enum class ParquetType {
  kString,
  kDouble,
  kInt64,
  kUint64,  // 64-bit INT64 values read as unsigned (UINT_64), e.g. a uint64 seed
  kBool,
  kStringList,
  kDoubleList,
  kDoubleMatrix,  // a list of lists of doubles (e.g. a token matrix)
};

struct ParquetColumn {
  std::string name;
  ParquetType type;
};

// When a row group is written out: after `rows` rows, or once its buffered values and levels pass `bytes`
// (token matrices make some rows far larger than others). Readers scan a group at a time too.
struct ParquetRowGroupLimits {
  int64_t rows = 1000;
  int64_t bytes = int64_t{64} << 20;
};

// Writes a Parquet file to `sink` (which gets the file's bytes in order) a row at a time.
class ParquetWriter {
 public:
  using Sink = std::function<absl::Status(absl::string_view bytes)>;
  ParquetWriter(std::vector<ParquetColumn> columns, Sink sink, ParquetRowGroupLimits limits = {});
  ~ParquetWriter();

  // row[column.name] for every column, a missing key or null a null. A value of another type is
  // INVALID_ARGUMENT naming the row (0-based, in the file) and the column; the columns before it already hold
  // the row, so after an error the writer is done with: no Add or Finish (the file would be misaligned).
  absl::Status Add(const nlohmann::json& row);
  // The last row group and the footer that lists every group; no Add after it.
  absl::Status Finish();

 private:
  struct Group;
  absl::Status WriteGroup();

  std::vector<ParquetColumn> columns_;
  Sink sink_;
  ParquetRowGroupLimits limits_;
  int64_t written_ = 0;              // bytes given to the sink
  int64_t rows_ = 0;                 // rows added
  std::unique_ptr<Group> group_;     // the rows added since the last group written
  std::vector<std::string> groups_;  // each written group's RowGroup metadata, in the footer's encoding
};

// The file's bytes: rows[r][column.name] for every column (ParquetWriter, its default limits).
absl::StatusOr<std::string> ParquetFile(const std::vector<ParquetColumn>& columns,
                                        const std::vector<nlohmann::json>& rows);

}  // namespace attribution::client::batch
