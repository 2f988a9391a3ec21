#include "models/cost/csv.hpp"

#include "config/input_file.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace moesim::models::cost {

namespace {
[[noreturn]] void throw_at(const std::string& file, int line, int col, std::string key, std::string message) {
  config::Diagnostics d;
  d.error(config::Location{file, line, col}, std::move(key), std::move(message));
  d.throw_if_any();
  throw std::logic_error("unreachable");
}

std::string trim(const std::string& s) {
  std::size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
  return s.substr(a, b - a);
}
}  // namespace

CsvTable CsvTable::parse(std::string_view text, const std::string& name) {
  CsvTable t;
  t.file_ = name;
  std::vector<Row> records;
  Row cur;
  std::string field;
  int line = 1;
  cur.line = 1;
  bool in_quotes = false;
  bool field_was_quoted = false;
  bool record_has_content = false;
  int col = 1;
  int quote_line = 0;
  auto end_field = [&] {
    cur.fields.push_back(std::move(field));
    field.clear();
    field_was_quoted = false;
    ++col;
  };
  auto end_record = [&] {
    if (record_has_content || !cur.fields.empty()) {
      end_field();
      records.push_back(std::move(cur));
    }
    cur = Row{};
    cur.line = line + 1;
    record_has_content = false;
    col = 1;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    switch (c) {
      case '"':
        if (!field.empty() || field_was_quoted)
          throw_at(name, line, col, "", "stray '\"' inside a field (quote the whole field and double inner quotes)");
        in_quotes = true;
        field_was_quoted = true;
        record_has_content = true;
        quote_line = line;
        break;
      case ',':
        record_has_content = true;
        end_field();
        break;
      case '\r':
        if (i + 1 < text.size() && text[i + 1] == '\n') break;  // CRLF: the \n ends the record
        throw_at(name, line, col, "", "bare carriage return outside quotes");
      case '\n':
        end_record();
        ++line;
        break;
      default:
        if (field_was_quoted) throw_at(name, line, col, "", "characters after the closing quote of a quoted field");
        field += c;
        record_has_content = true;
    }
  }
  if (in_quotes) throw_at(name, quote_line, 0, "", "unterminated quoted field (missing closing '\"')");
  if (record_has_content || !cur.fields.empty()) {
    end_field();
    records.push_back(std::move(cur));
  }
  if (records.empty()) throw_at(name, 1, 0, "", "empty file: a header row is required");
  t.header_ = std::move(records.front().fields);
  std::set<std::string> seen;
  for (std::size_t i = 0; i < t.header_.size(); ++i) {
    t.header_[i] = trim(t.header_[i]);
    if (t.header_[i].empty()) throw_at(name, 1, static_cast<int>(i + 1), "", "empty column name in the header");
    if (!seen.insert(t.header_[i]).second)
      throw_at(name, 1, static_cast<int>(i + 1), fmt::format("column '{}'", t.header_[i]), "duplicate column name");
  }
  for (std::size_t r = 1; r < records.size(); ++r) {
    if (records[r].fields.size() != t.header_.size())
      throw_at(name, records[r].line, 0, "",
               fmt::format("record has {} fields, the header has {}", records[r].fields.size(), t.header_.size()));
    t.rows_.push_back(std::move(records[r]));
  }
  return t;
}

CsvTable CsvTable::load(const std::string& path) {
  return parse(config::read_input_file(path, config::kMaxCsvBytes, ""), path);
}

std::optional<std::size_t> CsvTable::index_of(std::string_view name) const {
  for (std::size_t i = 0; i < header_.size(); ++i)
    if (header_[i] == name) return i;
  return std::nullopt;
}

void CsvTable::require_columns(const std::vector<std::string>& required) const {
  config::Diagnostics d;
  for (const std::string& c : required)
    if (!has_column(c)) {
      std::string msg = "required column is missing from the header";
      if (auto s = config::did_you_mean(c, header_)) msg += fmt::format(" (did you mean '{}'?)", *s);
      d.error(config::Location{file_, 1, 0}, fmt::format("column '{}'", c), msg);
    }
  d.throw_if_any();
}

config::Location CsvTable::location(const Row& r, std::string_view col) const {
  const auto i = index_of(col);
  return config::Location{file_, r.line, i ? static_cast<int>(*i + 1) : 0};
}

void CsvTable::fail(const Row& r, std::string_view col, const std::string& message) const {
  const config::Location loc = location(r, col);
  throw_at(loc.file, loc.line, loc.col, fmt::format("column '{}'", col), message);
}

const std::string& CsvTable::str(const Row& r, std::string_view col) const {
  const auto i = index_of(col);
  if (!i) fail(r, col, "required column is missing from the header");
  return r.fields[*i];
}

double CsvTable::num(const Row& r, std::string_view col) const {
  const std::string s = trim(str(r, col));
  if (s.empty()) fail(r, col, "empty value where a number is required");
  double v = 0;
  const auto res = std::from_chars(s.data(), s.data() + s.size(), v);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size() || !std::isfinite(v))
    fail(r, col, fmt::format("'{}' is not a finite number", s));
  return v;
}

std::int64_t CsvTable::integer(const Row& r, std::string_view col) const {
  const std::string s = trim(str(r, col));
  if (s.empty()) fail(r, col, "empty value where an integer is required");
  std::int64_t v = 0;
  const auto res = std::from_chars(s.data(), s.data() + s.size(), v);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) fail(r, col, fmt::format("'{}' is not an integer", s));
  return v;
}

bool CsvTable::flag(const Row& r, std::string_view col) const {
  const std::string s = trim(str(r, col));
  if (s == "1" || s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "0" || s == "false" || s == "False" || s == "FALSE" || s.empty()) return false;
  fail(r, col, fmt::format("'{}' is not a flag (expected 0 or 1)", s));
}

}  // namespace moesim::models::cost
