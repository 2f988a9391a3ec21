#include "engine/scenario_checks.hpp"

#include <sys/stat.h>

#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "models/cost/profile.hpp"
#include "models/router.hpp"

namespace moesim::engine {

namespace {

/// What validating one trace found: its diagnostics (empty: valid) and the fewest tokens any
/// MoE layer has.
struct TraceCheck {
  std::vector<config::Diagnostic> problems;
  std::int64_t min_tokens = 0;
};

/// Identity of a trace file version and of what it is read against.
using TraceKey = std::tuple<std::string, std::uint64_t, std::int64_t, std::int64_t, std::uint64_t, std::string, int,
                            int, int, std::string>;

TraceCheck check_trace(const std::string& file, const models::ModelSpec& model, int top_k) {
  struct stat st {};
  const bool have = ::stat(file.c_str(), &st) == 0;
  std::string layers;
  for (bool moe : model.moe_layer) layers += moe ? '1' : '0';
  const TraceKey key{file,
                     have ? static_cast<std::uint64_t>(st.st_ino) : 0,
                     have ? static_cast<std::int64_t>(st.st_size) : -1,
                     have ? static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec : 0,
                     have ? static_cast<std::uint64_t>(st.st_dev) : 0,
                     model.name,
                     model.num_layers(),
                     model.experts,
                     top_k,
                     layers};
  static std::mutex mu;
  static std::map<TraceKey, TraceCheck> cache;
  {
    const std::lock_guard<std::mutex> lock(mu);
    if (const auto it = cache.find(key); it != cache.end()) return it->second;
  }
  TraceCheck out;
  try {
    const models::RoutingTrace t = models::load_routing_trace(file, model, top_k);
    for (std::size_t i = 0; i < t.layers.size(); ++i)
      out.min_tokens = i == 0 ? t.tokens(i) : std::min(out.min_tokens, t.tokens(i));
  } catch (const config::ConfigError& e) {
    out.problems = e.diagnostics();
  }
  if (have) {  // a missing file is not cached: it may appear
    const std::lock_guard<std::mutex> lock(mu);
    if (cache.size() > 256) cache.clear();
    cache.emplace(key, out);
  }
  return out;
}

/// Re-reports a file's problems: those located inside the file keep their location, those
/// about the file as a whole (line 0) are located at the scenario key that names it.
void report(const config::Node& at, const std::string& file, const std::vector<config::Diagnostic>& problems) {
  for (const auto& d : problems) {
    if (d.loc.file == file && d.loc.line == 0)
      at.error(fmt::format("{}: {}", file, d.message));
    else
      at.diagnostics().error(d.loc, d.key.empty() ? at.path() : d.key, d.message);
  }
}

}  // namespace

void check_scenario_inputs(Scenario& s, const config::Node& root) {
  // Routing trace: read and validated against the model now (the run reads it again).
  if (s.has_model && s.routing.distribution == models::Distribution::kTrace && !s.routing.trace_file.empty() &&
      s.routing.top_k >= 1 && s.routing.top_k <= s.model.experts) {
    const config::Node at = root.child("routing").child("trace");
    const TraceCheck c = check_trace(s.routing.trace_file, s.model, s.routing.top_k);
    report(at, s.routing.trace_file, c.problems);
    const std::int64_t needed = s.routing_groups() * s.tokens_per_group();
    if (c.problems.empty() && c.min_tokens > 0 && c.min_tokens < needed)
      s.warnings.push_back(
          fmt::format("{}: {}: warning: the routing trace {} has {} tokens in its shortest MoE layer, fewer than the "
                      "{} a step routes: it is replayed cyclically (step token t uses trace token t mod {})",
                      at.location().str(), at.path(), s.routing.trace_file, c.min_tokens, needed, c.min_tokens));
  }
  // Kernel cost profile: parsed now, and checked against the cluster's GPU.
  if (!s.execution.profile.empty()) {
    const config::Node at = root.child("execution").child("profile");
    try {
      const models::cost::CostProfile p = models::cost::read_profile_file(s.execution.profile);
      if (s.has_cluster && p.sm_count != 0 && p.sm_count != s.cluster.gpu.sm_count)
        at.error(fmt::format("{}: the profile was measured on '{}' with {} SMs, but the cluster's GPU '{}' has {}",
                             s.execution.profile, p.gpu_name, p.sm_count, s.cluster.gpu.name, s.cluster.gpu.sm_count));
    } catch (const config::ConfigError& e) {
      report(at, s.execution.profile, e.diagnostics());
    }
  }
  // An all-to-all kernel's SMs come out of the GPU's: at least one must be left for compute.
  if (s.has_cluster && s.execution.comm_sms > 0 && s.cluster.gpu.sm_count > 0 &&
      s.execution.comm_sms >= s.cluster.gpu.sm_count)
    root.child("execution")
        .error_at("comm_sms", fmt::format("comm_sms={} but GPU '{}' has {} SMs (an all-to-all kernel may take at "
                                          "most {}, leaving one for compute)",
                                          s.execution.comm_sms, s.cluster.gpu.name, s.cluster.gpu.sm_count,
                                          s.cluster.gpu.sm_count - 1));
}

}  // namespace moesim::engine
