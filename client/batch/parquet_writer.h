// SPDX-License-Identifier: Apache-2.0
// A Parquet file of JSON rows, for the batch job's results (pyarrow, pandas, Spark and DuckDB read it).
// Debian 12 has no Arrow, so this is a small writer of its own: one row group, one uncompressed data page
// per column, PLAIN values and RLE levels, the metadata in Thrift's compact protocol. Every column, list
// and list element is nullable (JSON writes NaN as null); lists are Parquet's three-level LIST groups.
//
//   ASSIGN_OR_RETURN(std::string bytes, ParquetFile({{"id", ParquetType::kString},
//                                                    {"attribution", ParquetType::kDoubleList}}, rows));
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

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

// The file's bytes: rows[r][column.name] for every column, a missing key or null a null. A value of
// another type is INVALID_ARGUMENT naming the row and the column.
absl::StatusOr<std::string> ParquetFile(const std::vector<ParquetColumn>& columns,
                                        const std::vector<nlohmann::json>& rows);

}  // namespace attribution::client::batch
