#pragma once
/// \file
/// The pieces of a sweep's results.csv: field quoting, number formatting, and the metric
/// columns taken from a `moesim run` report, so sweeps print exactly the numbers runs print.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engine/scenario.hpp"

namespace moesim::explore {

/// RFC 4180 quoting: fields with a comma, quote, newline or surrounding blanks are quoted, with
/// quotes doubled; others are written as they are.
std::string csv_field(std::string_view text);

/// Splits one CSV line (RFC 4180 quoting) into fields.
std::vector<std::string> csv_split(std::string_view line);

/// A double in the shortest form that reads back to the same value ("0.1", "1e-05", "3").
std::string format_number(double v);

/// Folds a (possibly multi-line) message into one CSV-safe line: newlines become "; ".
std::string one_line(std::string_view message);

/// The metric columns of the given workload modes, in one fixed order (units in the names).
std::vector<std::string> metric_columns(const std::vector<engine::WorkloadMode>& modes);

/// The cells of `columns` for a run's JSON report ("" where the report has no such value).
std::vector<std::string> metric_cells(const nlohmann::ordered_json& report, const std::vector<std::string>& columns);

}  // namespace moesim::explore
