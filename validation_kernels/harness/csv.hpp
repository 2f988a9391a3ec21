// Minimal CSV reading and writing for the harness: no third-party dependency may reach the GPU machine.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace moesim::vk {

/// One row addressed by column name, so call sites cannot silently shift columns; the writer
/// rejects names the schema does not know and fills unset ones with an empty field.
class CsvRow {
 public:
  CsvRow& set(std::string_view column, const std::string& value);
  CsvRow& set(std::string_view column, const char* value) { return set(column, std::string(value)); }
  CsvRow& set(std::string_view column, int64_t value) { return set(column, std::to_string(value)); }
  CsvRow& set(std::string_view column, int value) { return set(column, std::to_string(value)); }
  /// A value that is not finite (NaN: not measured; inf) is written as an empty field, the form
  /// `moesim calibrate` reads as "missing": one `nan` would make it reject the whole file.
  CsvRow& set(std::string_view column, double value);
  const std::map<std::string, std::string, std::less<>>& fields() const { return fields_; }
  /// The value of a column, empty when unset.
  std::string get(std::string_view column) const;

 private:
  std::map<std::string, std::string, std::less<>> fields_;
};

/// Formats a double as written to the CSVs: 6 significant digits, empty when not finite.
std::string format_number(double value);

/// Quotes a field when it contains a comma, quote, CR or newline (RFC 4180).
std::string csv_escape(const std::string& field);

/// The header line for a column list, no trailing newline.
template <typename Columns>
std::string csv_header(const Columns& columns) {
  std::string s;
  for (const auto& c : columns) {
    if (!s.empty()) s += ',';
    s += std::string(c);
  }
  return s;
}

/// The line (no newline) a row becomes under `columns`; throws std::invalid_argument on a column
/// the schema does not have.
std::string csv_line(const std::vector<std::string>& columns, const CsvRow& row);

class CsvWriter {
 public:
  enum class Mode { kTruncate, kAppend };
  /// kTruncate: (re)creates path with the header. kAppend: appends to an existing file whose header
  /// is exactly this one (throws std::runtime_error naming the file otherwise), or creates it.
  CsvWriter(const std::string& path, std::vector<std::string> columns, Mode mode = Mode::kTruncate);
  /// Throws std::invalid_argument on a column the schema does not have.
  void write(const CsvRow& row);
  void flush() { out_.flush(); }
  void close() { out_.close(); }
  bool ok() const { return static_cast<bool>(out_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
  std::vector<std::string> columns_;
};

template <typename Columns>
std::vector<std::string> column_vector(const Columns& columns) {
  return std::vector<std::string>(columns.begin(), columns.end());
}

/// A parsed CSV file: header + records (RFC 4180: quoted fields, "" escapes, embedded newlines).
struct CsvFile {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  /// Index of a column, -1 when absent.
  int column(std::string_view name) const;
};
/// Parses text; throws std::runtime_error (naming `name`) on an unterminated quote or a record
/// whose field count differs from the header's.
CsvFile parse_csv(const std::string& text, const std::string& name);
/// Reads a file; a missing file gives an empty CsvFile (no header).
CsvFile read_csv(const std::string& path);
/// Writes header + rows to path through a temporary file and a rename, so a reader (or a kill)
/// never sees a half-written file.
void write_csv_atomic(const std::string& path, const CsvFile& file);

/// Replaces the row of `path` whose `key_column` equals row's value (or appends it), keeping every
/// other row: how runs.csv is rewritten during a run (after the probes, periodically, at the end)
/// while other runs' rows in the same file stay. The file's header must be `columns` (or the file
/// absent); throws std::runtime_error otherwise.
void upsert_csv_row(const std::string& path, const std::vector<std::string>& columns, std::string_view key_column,
                    const CsvRow& row);

/// Rows of run `run_id` whose impl is in `impls` and whose status is `from_status` get
/// `to_status`, with `note` prepended to their notes. Returns the number of rows changed.
/// (A failed reference check invalidates the rows that impl already wrote in this run.)
int64_t restatus_rows(const std::string& path, const std::string& run_id, const std::vector<std::string>& impls,
                      const std::string& from_status, const std::string& to_status, const std::string& note);

}  // namespace moesim::vk
