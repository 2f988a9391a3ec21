// Minimal CSV writing for the harness: no third-party dependency may reach the GPU machine.
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
  CsvRow& set(std::string_view column, double value);
  const std::map<std::string, std::string, std::less<>>& fields() const { return fields_; }

 private:
  std::map<std::string, std::string, std::less<>> fields_;
};

/// Quotes a field when it contains a comma, quote or newline (RFC 4180).
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

class CsvWriter {
 public:
  /// Opens (truncates) path and writes the header.
  CsvWriter(const std::string& path, std::vector<std::string> columns);
  /// Throws std::invalid_argument on a column the schema does not have.
  void write(const CsvRow& row);
  void flush() { out_.flush(); }
  bool ok() const { return static_cast<bool>(out_); }

 private:
  std::ofstream out_;
  std::vector<std::string> columns_;
};

template <typename Columns>
std::vector<std::string> column_vector(const Columns& columns) {
  return std::vector<std::string>(columns.begin(), columns.end());
}

}  // namespace moesim::vk
