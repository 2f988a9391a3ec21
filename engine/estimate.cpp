#include "engine/estimate.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "sim/units.hpp"

namespace moesim::engine {

namespace {

// Fitted on the development VM (see the header): CPU per op, per flow on the flow network
// (times the number of flows a source drives at once: re-levelling touches the group), per flow
// on the analytical network, per token-layer routing decision; memory per op and per routed slot.
constexpr double kCpuPerOp = 0.6e-6;
constexpr double kCpuPerFlowFanout = 0.25e-6;
constexpr double kCpuPerAnalyticalFlow = 0.05e-6;
constexpr double kCpuBase = 0.01;
constexpr double kBytesPerOp = 220;
constexpr double kBytesPerSlot = 6;
constexpr double kBytesBase = 16.0 * 1024 * 1024;

double routing_seconds_per_decision(const Scenario& s) {
  if (s.routing.sampling == models::SamplingMode::kCounts) return 0;
  const double e = std::max(1, s.model.experts);
  if (e <= 16) return 10e-9;  // the SIMD small-E path
  const bool grouped = s.routing.gate == models::GateFunction::kSigmoid || s.routing.n_groups > 1;
  return 1.7e-9 * e * (grouped ? 1.75 : 1.0);
}

}  // namespace

ResourceEstimate& ResourceEstimate::operator+=(const ResourceEstimate& o) {
  compute_ops += o.compute_ops;
  flows += o.flows;
  events += o.events;
  memory_bytes = std::max(memory_bytes, o.memory_bytes);
  cpu_s += o.cpu_s;
  return *this;
}

ResourceEstimate estimate_resources(const Scenario& s) {
  ResourceEstimate e;
  e.memory_bytes = kBytesBase;
  e.cpu_s = kCpuBase;
  const auto& w = s.workload;
  const double tokens = static_cast<double>(w.tokens_per_step());
  if (w.mode == WorkloadMode::kCollective) {
    const double g = s.has_cluster ? s.cluster.total_gpus() : 1;
    e.flows = g * std::max(1.0, g - 1);
    e.events = 2 * e.flows;
    e.cpu_s += e.flows * kCpuPerFlowFanout * g;
    e.memory_bytes += e.flows * 64;
    return e;
  }
  if (!s.has_model) return e;
  const auto& m = s.model;
  const double moe_layers = m.num_moe_layers();
  const double layers = m.num_layers();
  const double decisions = tokens * moe_layers;
  e.cpu_s += decisions * routing_seconds_per_decision(s);
  if (s.routing.sampling == models::SamplingMode::kToken)
    e.memory_bytes += tokens / std::max<double>(1, s.routing_groups()) * s.routing.top_k * kBytesPerSlot *
                      std::min<double>(s.routing_groups(), 64);
  if (w.mode == WorkloadMode::kRouting || !s.has_cluster) return e;

  const auto& p = s.parallel;
  const double W = static_cast<double>(p.world());
  const double P = p.pp, ep = p.ep, tp = p.tp, dp = p.dp_cp();
  const double S = W / P;  // GPUs per pipeline stage
  const bool train = w.mode == WorkloadMode::kTrain;
  const double M = train ? p.micro_batches : 1;
  const double passes = train ? (w.recompute ? 3 : 2) : 1;  // passes that dispatch and combine
  const double op_passes = train ? (w.recompute ? 3.5 : 2.5) : 1;
  const double ops_per_layer =
      (8 + 4.0 * (s.execution.overlap_chunks - 1) + (m.shared_experts > 0 ? 1.8 : 0)) * op_passes;
  e.compute_ops = W * M * (layers / P) * ops_per_layer;

  // Dispatch + combine: per MoE layer, micro-batch and pass, S/ep groups of ep ranks.
  const double gpn = s.cluster.gpus_per_node;
  double per_group = ep * (ep - 1);
  double fanout = ep;
  if (s.execution.all_to_all == "hierarchical" && ep > gpn && std::fmod(ep, gpn) == 0) {
    per_group = ep * (gpn - 1) + ep * (ep / gpn - 1);
    fanout = std::max(gpn, ep / gpn);
  }
  const double a2a = moe_layers * M * passes * 2 * (S / ep) * per_group;
  const double tp_flows = tp > 1 ? layers * M * passes * 2 * 2 * (tp - 1) * S : 0;
  const double dp_flows = train && dp > 1 ? layers * 2 * 2 * (dp - 1) * S : 0;
  e.flows = a2a + tp_flows + dp_flows;
  const double collectives = moe_layers * M * passes * 2 * (S / ep) +
                             (tp > 1 ? layers * M * passes * 2 * (S / tp) : 0) + (train ? layers * 2 : 0);
  const bool flow_model = s.network.model == NetworkModel::kFlow;
  e.events = e.compute_ops + collectives + (flow_model ? 1.8 * e.flows : 0);
  e.cpu_s +=
      e.compute_ops * kCpuPerOp + (flow_model ? e.flows * kCpuPerFlowFanout * fanout : e.flows * kCpuPerAnalyticalFlow);
  e.memory_bytes += e.compute_ops * kBytesPerOp;
  return e;
}

ResourceLimits ResourceLimits::defaults() {
  ResourceLimits l;
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  l.max_memory_bytes =
      pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 64.0 * (1 << 30);
  l.max_seconds = 86400;
  return l;
}

ResourceLimits ResourceLimits::parse(const std::string& max_memory, const std::string& max_time) {
  ResourceLimits l = defaults();
  config::Diagnostics d;
  if (!max_memory.empty()) {
    try {
      l.max_memory_bytes = sim::parse_bytes(max_memory);
      if (!(l.max_memory_bytes > 0)) throw sim::UnitError("must be > 0");
    } catch (const sim::UnitError& e) {
      d.error(config::Location{"--max-memory " + max_memory, 0, 0}, "", e.what());
    }
  }
  if (!max_time.empty()) {
    try {
      l.max_seconds = sim::parse_time(max_time).to_s();
      if (!(l.max_seconds > 0)) throw sim::UnitError("must be > 0");
    } catch (const sim::UnitError& e) {
      d.error(config::Location{"--max-time " + max_time, 0, 0}, "", e.what());
    }
  }
  d.throw_if_any();
  return l;
}

namespace {
std::string count_text(double v) {
  if (v >= 1e9) return fmt::format("{:.1f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}
std::string bytes_text(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.1f} GiB", b / (1024.0 * 1024 * 1024));
  return fmt::format("{:.0f} MiB", b / (1024.0 * 1024));
}
std::string seconds_text(double s) {
  if (s >= 3600) return fmt::format("{:.1f} h", s / 3600);
  if (s >= 10) return fmt::format("{:.0f} s", s);
  return fmt::format("{:.2f} s", s);
}
}  // namespace

std::string format_estimate(const ResourceEstimate& e) {
  return fmt::format("~{} ops, {} flows, {} events, {} peak memory, {} CPU", count_text(e.compute_ops),
                     count_text(e.flows), count_text(e.events), bytes_text(e.memory_bytes), seconds_text(e.cpu_s));
}

std::string format_limits(const ResourceLimits& l) {
  return fmt::format("--max-memory {}, --max-time {}", bytes_text(l.max_memory_bytes), seconds_text(l.max_seconds));
}

void check_limits(double memory_bytes, double seconds, const ResourceLimits& l, const config::Location& where,
                  const std::string& key, const std::string& what) {
  config::Diagnostics d;
  if (memory_bytes > l.max_memory_bytes)
    d.error(where, key,
            fmt::format("{} needs an estimated {} of memory, more than --max-memory {} (refused before running; "
                        "raise the limit if the estimate is wrong, or make the problem smaller)",
                        what, bytes_text(memory_bytes), bytes_text(l.max_memory_bytes)));
  if (seconds > l.max_seconds)
    d.error(where, key,
            fmt::format("{} needs an estimated {} to run, more than --max-time {} (refused before running; "
                        "raise the limit if the estimate is wrong, or make the problem smaller)",
                        what, seconds_text(seconds), seconds_text(l.max_seconds)));
  d.throw_if_any();
}

config::Location scale_location(const std::string& scenario_file, std::string* key) {
  try {
    const config::Document doc = config::Document::load_file(scenario_file);
    config::Diagnostics d;
    const config::Node root = doc.root(d);
    for (const char* k : {"cluster", "workload"})
      if (root.has(k)) {
        if (key) *key = k;
        return root.child(k).location();
      }
  } catch (const config::ConfigError&) {
  }
  if (key) key->clear();
  return config::Location{scenario_file, 1, 1};
}

}  // namespace moesim::engine
