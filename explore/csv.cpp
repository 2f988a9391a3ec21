#include "explore/csv.hpp"

#include <fmt/format.h>

#include <array>
#include <optional>

namespace moesim::explore {

std::string csv_field(std::string_view text) {
  const bool quote = text.find_first_of(",\"\n\r") != std::string_view::npos ||
                     (!text.empty() && (text.front() == ' ' || text.back() == ' '));
  if (!quote) return std::string(text);
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::vector<std::string> csv_split(std::string_view line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cur += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cur += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(std::move(cur));
  return out;
}

std::string format_number(double v) { return fmt::format("{}", v); }

std::string one_line(std::string_view message) {
  std::string out;
  for (std::size_t i = 0; i < message.size(); ++i) {
    const char c = message[i];
    if (c == '\r') continue;
    if (c == '\n') {
      if (i + 1 < message.size()) out += "; ";
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

using Json = nlohmann::ordered_json;

constexpr unsigned kStep = 1;        // train / prefill / decode
constexpr unsigned kRouting = 2;     // routing-only
constexpr unsigned kCollective = 4;  // one collective
constexpr unsigned kDispatch = 8;    // one MoE layer's dispatch and combine

unsigned mode_bit(engine::WorkloadMode m) {
  switch (m) {
    case engine::WorkloadMode::kRouting:
      return kRouting;
    case engine::WorkloadMode::kCollective:
      return kCollective;
    case engine::WorkloadMode::kDispatch:
      return kDispatch;
    default:
      return kStep;
  }
}

const Json* find(const Json& j, std::initializer_list<const char*> path) {
  const Json* cur = &j;
  for (const char* k : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(k);
    if (it == cur->end()) return nullptr;
    cur = &*it;
  }
  return cur;
}

std::string cell(const Json* v, double scale = 1.0) {
  if (v == nullptr || v->is_null()) return {};
  if (v->is_boolean()) return v->get<bool>() ? "true" : "false";
  if (scale == 1.0 && v->is_number_unsigned()) return fmt::format("{}", v->get<std::uint64_t>());
  if (scale == 1.0 && v->is_number_integer()) return fmt::format("{}", v->get<std::int64_t>());
  if (v->is_number()) return format_number(v->get<double>() * scale);
  if (v->is_string()) return v->get<std::string>();
  return {};
}

/// Mean of a per-layer value over report["layers"] or report["routing"]["layers"]; "" when a
/// layer lacks it (e.g. fully-dropped fractions that need token-level routing).
std::string layer_mean(const Json& report, const char* key) {
  const Json* layers = find(report, {"layers"});
  if (layers == nullptr) layers = find(report, {"routing", "layers"});
  if (layers == nullptr || !layers->is_array() || layers->empty()) return {};
  double sum = 0;
  for (const auto& l : *layers) {
    auto it = l.find(key);
    if (it == l.end() || !it->is_number()) return {};
    sum += it->get<double>();
  }
  return format_number(sum / static_cast<double>(layers->size()));
}

struct MetricDef {
  const char* name;
  unsigned modes;
  std::string (*get)(const Json&);
};

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The fixed column order. Keep names in units-in-the-name form (CONVENTIONS.md).
const std::array<MetricDef, 28> kMetrics{{
    {"step_time_us", kStep | kCollective, [](const Json& r) { return cell(find(r, {"step_time_us"})); }},
    {"tokens_per_s", kStep, [](const Json& r) { return cell(find(r, {"tokens_per_s"})); }},
    {"mfu", kStep, [](const Json& r) { return cell(find(r, {"mfu"})); }},
    {"drop_fraction", kStep | kRouting,
     [](const Json& r) {
       return cell(find(r, {"routing", "drop_fraction"}));
     }},
    {"padded_fraction", kStep | kRouting,
     [](const Json& r) {
       return cell(find(r, {"routing", "padded_fraction"}));
     }},
    {"max_over_mean_load", kStep | kRouting,
     [](const Json& r) {
       return cell(find(r, {"routing", "max_over_mean_load"}));
     }},
    {"fully_dropped_fraction", kRouting, [](const Json& r) { return layer_mean(r, "fully_dropped_fraction"); }},
    {"load_cv", kStep | kRouting, [](const Json& r) { return layer_mean(r, "cv"); }},
    {"aux_loss", kStep | kRouting, [](const Json& r) { return layer_mean(r, "aux_loss"); }},
    {"peak_mem_GiB", kStep,
     [](const Json& r) {
       return cell(find(r, {"memory", "peak_bytes_per_gpu"}), 1 / kGiB);
     }},
    {"mem_capacity_GiB", kStep,
     [](const Json& r) {
       return cell(find(r, {"memory", "capacity_bytes_per_gpu"}), 1 / kGiB);
     }},
    {"fits", kStep,
     [](const Json& r) {
       return cell(find(r, {"memory", "fits"}));
     }},
    {"compute_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "compute"}));
     }},
    {"dispatch_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "dispatch"}));
     }},
    {"combine_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "combine"}));
     }},
    {"other_comm_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "other_collectives"}));
     }},
    {"exposed_comm_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "exposed_communication"}));
     }},
    {"dp_comm_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "data_parallel"}));
     }},
    {"pp_comm_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "pipeline"}));
     }},
    {"idle_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"breakdown_us", "idle"}));
     }},
    {"ep_wait_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"idle_us", "waiting_for_ep_tp_peers"}));
     }},
    {"pp_bubble_us", kStep,
     [](const Json& r) {
       return cell(find(r, {"idle_us", "pipeline"}));
     }},
    {"dispatch_time_us", kDispatch,
     [](const Json& r) {
       return cell(find(r, {"dispatch", "time_us"}));
     }},
    {"combine_time_us", kDispatch,
     [](const Json& r) {
       return cell(find(r, {"combine", "time_us"}));
     }},
    {"algbw_GBps", kCollective,
     [](const Json& r) {
       return cell(find(r, {"collective", "algbw_GBps"}));
     }},
    {"busbw_GBps", kCollective,
     [](const Json& r) {
       return cell(find(r, {"collective", "busbw_GBps"}));
     }},
    {"params_total", kStep | kRouting,
     [](const Json& r) {
       return cell(find(r, {"model", "params_total"}));
     }},
    {"params_active", kStep | kRouting,
     [](const Json& r) {
       return cell(find(r, {"model", "params_active"}));
     }},
}};

}  // namespace

std::vector<std::string> metric_columns(const std::vector<engine::WorkloadMode>& modes) {
  unsigned mask = 0;
  for (auto m : modes) mask |= mode_bit(m);
  std::vector<std::string> out;
  for (const auto& m : kMetrics)
    if ((m.modes & mask) != 0) out.emplace_back(m.name);
  return out;
}

std::vector<std::string> metric_cells(const nlohmann::ordered_json& report, const std::vector<std::string>& columns) {
  std::vector<std::string> out;
  out.reserve(columns.size());
  for (const auto& c : columns) {
    std::string v;
    for (const auto& m : kMetrics)
      if (c == m.name) {
        v = m.get(report);
        break;
      }
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace moesim::explore
