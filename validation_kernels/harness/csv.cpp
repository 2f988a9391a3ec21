#include "validation_kernels/harness/csv.hpp"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace moesim::vk {

CsvRow& CsvRow::set(std::string_view column, const std::string& value) {
  fields_[std::string(column)] = value;
  return *this;
}

CsvRow& CsvRow::set(std::string_view column, double value) {
  if (std::isnan(value)) return set(column, std::string("nan"));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", value);  // 6 significant digits: timing noise is >> 1e-6
  return set(column, std::string(buf));
}

std::string csv_escape(const std::string& field) {
  if (field.find_first_of(",\"\n") == std::string::npos) return field;
  std::string s = "\"";
  for (char c : field) {
    if (c == '"') s += '"';
    s += c;
  }
  return s + "\"";
}

CsvWriter::CsvWriter(const std::string& path, std::vector<std::string> columns)
    : out_(path), columns_(std::move(columns)) {
  if (!out_) throw std::runtime_error("cannot open " + path);
  out_ << csv_header(columns_) << '\n';
}

void CsvWriter::write(const CsvRow& row) {
  for (const auto& [name, value] : row.fields()) {
    bool known = false;
    for (const auto& c : columns_) known = known || c == name;
    if (!known) throw std::invalid_argument("CSV column not in schema: " + name);
  }
  std::string line;
  for (size_t i = 0; i < columns_.size(); ++i) {
    if (i) line += ',';
    auto it = row.fields().find(columns_[i]);
    if (it != row.fields().end()) line += csv_escape(it->second);
  }
  out_ << line << '\n';
}

}  // namespace moesim::vk
