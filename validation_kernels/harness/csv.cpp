#include "validation_kernels/harness/csv.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace moesim::vk {

CsvRow& CsvRow::set(std::string_view column, const std::string& value) {
  fields_[std::string(column)] = value;
  return *this;
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return std::string();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", value);  // 6 significant digits: timing noise is >> 1e-6
  return buf;
}

CsvRow& CsvRow::set(std::string_view column, double value) { return set(column, format_number(value)); }

std::string CsvRow::get(std::string_view column) const {
  const auto it = fields_.find(column);
  return it == fields_.end() ? std::string() : it->second;
}

std::string csv_escape(const std::string& field) {
  if (field.find_first_of(",\"\n\r") == std::string::npos) return field;
  std::string s = "\"";
  for (char c : field) {
    if (c == '"') s += '"';
    s += c;
  }
  return s + "\"";
}

std::string csv_line(const std::vector<std::string>& columns, const CsvRow& row) {
  for (const auto& [name, value] : row.fields())
    if (std::find(columns.begin(), columns.end(), name) == columns.end())
      throw std::invalid_argument("CSV column not in schema: " + name);
  std::string line;
  for (size_t i = 0; i < columns.size(); ++i) {
    if (i) line += ',';
    auto it = row.fields().find(columns[i]);
    if (it != row.fields().end()) line += csv_escape(it->second);
  }
  return line;
}

namespace {

std::string first_line(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

}  // namespace

CsvWriter::CsvWriter(const std::string& path, std::vector<std::string> columns, Mode mode)
    : path_(path), columns_(std::move(columns)) {
  const std::string header = csv_header(columns_);
  std::error_code ec;
  const bool existing =
      mode == Mode::kAppend && std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > 0;
  if (existing) {
    const std::string have = first_line(path);
    if (have != header)
      throw std::runtime_error(path + ": its header is not this harness's (schema) header; write to a new directory");
    out_.open(path, std::ios::binary | std::ios::app);
  } else {
    out_.open(path, std::ios::binary | std::ios::trunc);
  }
  if (!out_) throw std::runtime_error("cannot open " + path);
  if (!existing) out_ << header << '\n';
}

void CsvWriter::write(const CsvRow& row) { out_ << csv_line(columns_, row) << '\n'; }

int CsvFile::column(std::string_view name) const {
  for (size_t i = 0; i < header.size(); ++i)
    if (header[i] == name) return static_cast<int>(i);
  return -1;
}

CsvFile parse_csv(const std::string& text, const std::string& name) {
  CsvFile f;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false, any = false;
  int line = 1, record_line = 1;
  auto end_record = [&] {
    record.push_back(field);
    field.clear();
    if (f.header.empty())
      f.header = record;
    else if (record.size() != f.header.size())
      throw std::runtime_error(name + ":" + std::to_string(record_line) + ": " + std::to_string(record.size()) +
                               " fields, the header has " + std::to_string(f.header.size()));
    else
      f.rows.push_back(record);
    record.clear();
    any = false;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      record.push_back(field);
      field.clear();
      any = true;
    } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      // CRLF: the '\n' ends the record
    } else if (c == '\n') {
      end_record();
      record_line = ++line;
    } else {
      field += c;
      any = true;
    }
  }
  if (quoted) throw std::runtime_error(name + ":" + std::to_string(record_line) + ": unterminated quoted field");
  if (any || !field.empty() || !record.empty()) end_record();
  return f;
}

CsvFile read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_csv(ss.str(), path);
}

void write_csv_atomic(const std::string& path, const CsvFile& file) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp);
    auto write_record = [&](const std::vector<std::string>& r) {
      for (size_t i = 0; i < r.size(); ++i) out << (i ? "," : "") << csv_escape(r[i]);
      out << '\n';
    };
    write_record(file.header);
    for (const auto& r : file.rows) write_record(r);
    out.flush();
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

void upsert_csv_row(const std::string& path, const std::vector<std::string>& columns, std::string_view key_column,
                    const CsvRow& row) {
  CsvFile f = read_csv(path);
  if (f.header.empty())
    f.header = columns;
  else if (f.header != columns)
    throw std::runtime_error(path + ": its header is not this harness's (schema) header; write to a new directory");
  const int key = f.column(key_column);
  if (key < 0) throw std::invalid_argument("upsert_csv_row: no column " + std::string(key_column));
  const CsvFile line = parse_csv(csv_header(columns) + "\n" + csv_line(columns, row) + "\n", "row");
  const std::vector<std::string>& fields = line.rows.at(0);
  bool replaced = false;
  for (auto& r : f.rows)
    if (r[static_cast<size_t>(key)] == fields[static_cast<size_t>(key)]) {
      r = fields;
      replaced = true;
    }
  if (!replaced) f.rows.push_back(fields);
  write_csv_atomic(path, f);
}

int64_t restatus_rows(const std::string& path, const std::string& run_id, const std::vector<std::string>& impls,
                      const std::string& from_status, const std::string& to_status, const std::string& note) {
  if (impls.empty()) return 0;
  CsvFile f = read_csv(path);
  const int c_run = f.column("run_id"), c_impl = f.column("impl"), c_status = f.column("status"),
            c_notes = f.column("notes");
  if (c_run < 0 || c_impl < 0 || c_status < 0 || c_notes < 0) return 0;
  int64_t changed = 0;
  for (auto& r : f.rows) {
    if (r[static_cast<size_t>(c_run)] != run_id || r[static_cast<size_t>(c_status)] != from_status) continue;
    if (std::find(impls.begin(), impls.end(), r[static_cast<size_t>(c_impl)]) == impls.end()) continue;
    r[static_cast<size_t>(c_status)] = to_status;
    std::string& n = r[static_cast<size_t>(c_notes)];
    n = n.empty() ? note : note + "; " + n;
    ++changed;
  }
  if (changed) write_csv_atomic(path, f);
  return changed;
}

}  // namespace moesim::vk
