#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks that a Parquet file written by attribution-batch (client/batch/parquet_writer.cc) holds what its
JSONL holds, read back by pyarrow (an independent reader): the same rows in order, every field of a line equal
in its column (an "error" object as error_code / error_message), and every column a line lacks null. The table
is read whole and also one row group at a time (each group's rows are the next lines, their values equal).

Usage: parquet_equals_jsonl.py TABLE.parquet RESULTS.jsonl   (exit 0 and "equal" when they match, with the
number of row groups and each column's name and pyarrow type)
"""
import json
import sys

import pyarrow.parquet as pq


def main():
    table = pq.read_table(sys.argv[1])
    rows = table.to_pylist()
    with open(sys.argv[2]) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == len(lines), (len(rows), len(lines))
    for number, (row, line) in enumerate(zip(rows, lines), 1):
        error = line.pop("error", None)
        if isinstance(error, dict):
            line["error_code"], line["error_message"] = error.get("code"), error.get("message")
        missing = set(line) - set(table.column_names)
        assert not missing, f"line {number}: fields with no column: {sorted(missing)}"
        for column, value in row.items():
            expected = line.get(column)
            assert value == expected, f"line {number}, column {column}: parquet {value!r}, jsonl {expected!r}"
    parquet = pq.ParquetFile(sys.argv[1])
    groups = parquet.metadata.num_row_groups
    by_group = []
    for group in range(groups):
        read = parquet.read_row_group(group).to_pylist()
        assert len(read) == parquet.metadata.row_group(group).num_rows, (group, len(read))
        by_group += read
    assert by_group == rows, "the row groups read one at a time differ from the table read whole"
    columns = ", ".join(f"{field.name}: {field.type}" for field in table.schema)
    print(f"equal: {len(rows)} rows in {groups} row groups, {table.num_columns} columns ({columns})")


if __name__ == "__main__":
    main()
