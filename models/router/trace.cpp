// Trace replay: reading a recorded routing CSV (errors at file:line) and replaying its tokens.
#include "models/router/trace.hpp"

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "config/input_file.hpp"
#include "config/reader.hpp"

namespace moesim::models {

namespace {

[[noreturn]] void trace_error(const std::string& file, int line, const std::string& msg) {
  config::Diagnostics d;
  d.error(config::Location{file, line, 0}, "routing.trace", msg);
  d.throw_if_any();
  throw std::logic_error("unreachable");
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (c != ' ' && c != '\t' && c != '\r') {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

bool parse_int(const std::string& s, long long& v) {
  if (s.empty()) return false;
  std::size_t pos = 0;
  try {
    v = std::stoll(s, &pos);
  } catch (...) {
    return false;
  }
  return pos == s.size();
}

}  // namespace

RoutingTrace load_routing_trace(const std::string& file, const ModelSpec& model, int top_k) {
  // A regular file of at most kMaxTraceBytes (a FIFO, /dev/zero or a directory is refused with
  // what it is, instead of blocking, reading without end or looking like an empty trace).
  std::istringstream in(config::read_input_file(file, config::kMaxTraceBytes, "routing trace", "routing.trace"));
  RoutingTrace t;
  t.file = file;
  t.top_k = top_k;
  const auto moe = model.moe_layer_indices();
  std::vector<int> slot_of_layer(static_cast<std::size_t>(model.num_layers()), -1);
  for (std::size_t i = 0; i < moe.size(); ++i) slot_of_layer[static_cast<std::size_t>(moe[i])] = static_cast<int>(i);
  t.layers = moe;
  t.experts.assign(moe.size(), {});
  std::string line;
  int lineno = 0;
  bool header_seen = false;
  int header_line = 0;
  const std::size_t want_cols = 2 + static_cast<std::size_t>(top_k);
  while (std::getline(in, line)) {
    ++lineno;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto cols = split_csv(line);
    if (!header_seen) {
      header_seen = true;
      header_line = lineno;
      std::string want = "layer,token";
      for (int j = 0; j < top_k; ++j) want += fmt::format(",expert_{}", j);
      std::string got;
      for (std::size_t i = 0; i < cols.size(); ++i) got += (i ? "," : "") + cols[i];
      if (got != want)
        trace_error(file, lineno, fmt::format("header must be '{}' for top_k {} (got '{}')", want, top_k, got));
      continue;
    }
    if (cols.size() != want_cols)
      trace_error(
          file, lineno,
          fmt::format("expected {} columns (layer, token, {} expert ids), got {}", want_cols, top_k, cols.size()));
    long long layer = 0, token = 0;
    if (!parse_int(cols[0], layer)) trace_error(file, lineno, "layer '" + cols[0] + "' is not an integer");
    if (!parse_int(cols[1], token)) trace_error(file, lineno, "token '" + cols[1] + "' is not an integer");
    if (layer < 0 || layer >= model.num_layers())
      trace_error(
          file, lineno,
          fmt::format("layer {} is out of range: model '{}' has {} layers", layer, model.name, model.num_layers()));
    const int slot = slot_of_layer[static_cast<std::size_t>(layer)];
    if (slot < 0)
      trace_error(file, lineno, fmt::format("layer {} of model '{}' is not a MoE layer", layer, model.name));
    auto& ids = t.experts[static_cast<std::size_t>(slot)];
    const long long expect_token = static_cast<long long>(ids.size()) / top_k;
    if (token != expect_token)
      trace_error(file, lineno,
                  fmt::format("token {} of layer {} out of order: expected token {}", token, layer, expect_token));
    for (int j = 0; j < top_k; ++j) {
      long long e = 0;
      const auto& c = cols[2 + static_cast<std::size_t>(j)];
      if (!parse_int(c, e)) trace_error(file, lineno, fmt::format("expert_{} '{}' is not an integer", j, c));
      if (e < 0 || e >= model.experts)
        trace_error(file, lineno,
                    fmt::format("expert id {} out of range [0, {}) in column expert_{}", e, model.experts, j));
      for (int i = 0; i < j; ++i)
        if (ids[ids.size() - static_cast<std::size_t>(j - i)] == e)
          trace_error(file, lineno, fmt::format("expert id {} repeated within one token", e));
      ids.push_back(static_cast<int>(e));
    }
  }
  if (!header_seen) trace_error(file, lineno, "empty routing trace (no header line)");
  std::vector<int> missing;
  for (std::size_t i = 0; i < moe.size(); ++i)
    if (t.experts[i].empty()) missing.push_back(moe[i]);
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 8; ++i) list += fmt::format("{}{}", i ? ", " : "", missing[i]);
    if (missing.size() > 8) list += ", ...";
    trace_error(file, header_line,
                fmt::format("wrong number of layers: the trace has {} MoE layers, model '{}' has {} (missing {})",
                            moe.size() - missing.size(), model.name, moe.size(), list));
  }
  return t;
}

namespace detail {

std::size_t trace_slot(const RoutingTrace& trace, int layer) {
  for (std::size_t i = 0; i < trace.layers.size(); ++i)
    if (trace.layers[i] == layer) return i;
  throw std::invalid_argument(fmt::format("route_layer: layer {} not in the trace", layer));
}

void replay_trace(const RoutingTrace& trace, std::size_t slot, const RouteRequest& req, int group, GroupRouting& g) {
  const int k = g.top_k;
  const std::int64_t T = g.tokens;
  const auto& ids = trace.experts[slot];
  const std::int64_t n = trace.tokens(slot);
  const std::int64_t first = (static_cast<std::int64_t>(req.step) * req.groups + group) * T;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::size_t src = static_cast<std::size_t>((first + t) % n) * static_cast<std::size_t>(k);
    for (int j = 0; j < k; ++j) {
      const std::size_t i = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
      g.expert[i] = ids[src + static_cast<std::size_t>(j)];
      g.weight[i] = static_cast<float>(1.0 / k);
      g.prob_sum[static_cast<std::size_t>(g.expert[i])] += 1.0 / k;
    }
  }
}

}  // namespace detail
}  // namespace moesim::models
