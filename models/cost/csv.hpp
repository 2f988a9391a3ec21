#pragma once
/// \file
/// A small RFC 4180 CSV reader with located, column-named errors.
///
/// Why our own: measurement files are the contract between the GPU harness and the fitter, so
/// every problem must point at `file:line` and the column by name (columns are looked up by
/// header name, never by position, so the harness may add or reorder columns freely).
/// Supported: comma separator, quoted fields with "" escapes, commas and newlines inside quotes,
/// LF or CRLF line ends, a final line without newline. A header row is required.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/reader.hpp"

namespace moesim::models::cost {

class CsvTable {
 public:
  struct Row {
    int line = 0;  ///< 1-based line where the record starts
    std::vector<std::string> fields;
  };

  /// Parses `text`; `name` is used in error locations. Throws config::ConfigError on an
  /// unterminated quote, a stray quote inside an unquoted field, a record with a different
  /// number of fields than the header, an empty or duplicate header name.
  static CsvTable parse(std::string_view text, const std::string& name);
  /// Reads and parses a file; a missing file is a ConfigError located at the path.
  static CsvTable load(const std::string& path);

  const std::string& file() const { return file_; }
  const std::vector<std::string>& header() const { return header_; }
  const std::vector<Row>& rows() const { return rows_; }
  bool has_column(std::string_view name) const { return index_of(name).has_value(); }
  std::optional<std::size_t> index_of(std::string_view name) const;
  /// Throws one ConfigError (located at the header line) listing every name of `required`
  /// that the header lacks.
  void require_columns(const std::vector<std::string>& required) const;

  // Typed field access by column name; errors are ConfigError "file:line:col: column 'x': ...".
  const std::string& str(const Row& r, std::string_view col) const;
  double num(const Row& r, std::string_view col) const;  ///< finite decimal
  std::int64_t integer(const Row& r, std::string_view col) const;
  bool flag(const Row& r, std::string_view col) const;  ///< 0/1/true/false
  /// Throws a ConfigError located at row r, column col.
  [[noreturn]] void fail(const Row& r, std::string_view col, const std::string& message) const;
  config::Location location(const Row& r, std::string_view col) const;

 private:
  std::string file_;
  std::vector<std::string> header_;
  std::vector<Row> rows_;
};

}  // namespace moesim::models::cost
