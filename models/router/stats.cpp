// Load-balance and capacity statistics of a layer, and the routing-only summary.
#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <string>

#include <fmt/format.h>

#include "models/router.hpp"

namespace moesim::models {

LayerStats layer_stats(const std::vector<GroupRouting>& groups, int E, int /*top_k*/) {
  LayerStats s;
  const std::size_t Eu = static_cast<std::size_t>(E);
  s.expert_routed.assign(Eu, 0);
  s.expert_kept.assign(Eu, 0);
  s.expert_dropped.assign(Eu, 0);
  s.expert_padded.assign(Eu, 0);
  std::vector<double> prob(Eu, 0.0);
  bool fd_known = true;
  for (const auto& g : groups) {
    s.tokens += g.tokens;
    for (std::size_t e = 0; e < Eu; ++e) {
      s.expert_routed[e] += g.routed[e];
      s.expert_kept[e] += g.kept[e];
      s.expert_dropped[e] += g.dropped[e];
      s.expert_padded[e] += g.padded[e];
      prob[e] += g.prob_sum[e];
    }
    if (g.fully_dropped_tokens < 0)
      fd_known = false;
    else
      s.fully_dropped_tokens += g.fully_dropped_tokens;
  }
  for (std::size_t e = 0; e < Eu; ++e) {
    s.routed += s.expert_routed[e];
    s.kept += s.expert_kept[e];
    s.dropped += s.expert_dropped[e];
    s.padded += s.expert_padded[e];
  }
  if (!fd_known) s.fully_dropped_tokens = -1;
  s.drop_fraction = s.routed > 0 ? static_cast<double>(s.dropped) / static_cast<double>(s.routed) : 0.0;
  s.fully_dropped_fraction = !fd_known ? std::numeric_limits<double>::quiet_NaN()
                             : s.tokens > 0
                                 ? static_cast<double>(s.fully_dropped_tokens) / static_cast<double>(s.tokens)
                                 : 0.0;
  const std::int64_t rows = s.kept + s.padded;
  s.padded_fraction = rows > 0 ? static_cast<double>(s.padded) / static_cast<double>(rows) : 0.0;
  if (s.routed > 0 && E > 0) {
    const double total = static_cast<double>(s.routed);
    const double mean = total / E;
    double max = 0, var = 0, aux = 0, ent = 0;
    std::vector<double> sorted(Eu);
    for (std::size_t e = 0; e < Eu; ++e) {
      const double x = static_cast<double>(s.expert_routed[e]);
      sorted[e] = x;
      max = std::max(max, x);
      var += (x - mean) * (x - mean);
      const double f = x / total;
      aux += f * (s.tokens > 0 ? prob[e] / static_cast<double>(s.tokens) : 0.0);
      if (f > 0) ent -= f * std::log(f);
    }
    s.max_over_mean = max / mean;
    s.cv = std::sqrt(var / E) / mean;
    std::sort(sorted.begin(), sorted.end());
    double weighted = 0;
    for (std::size_t i = 0; i < Eu; ++i) weighted += static_cast<double>(i + 1) * sorted[i];
    s.gini = 2.0 * weighted / (E * total) - (E + 1.0) / E;
    s.aux_loss = E * aux;
    s.entropy = ent;
    s.entropy_normalized = E > 1 ? ent / std::log(static_cast<double>(E)) : 1.0;
  }
  return s;
}

void format_routing_summary(std::ostream& os, const ModelSpec& model, const RoutingSpec& spec,
                            const StepRouting& step) {
  const ParamCount pc = count_params(model);
  const auto& t = pc.total;
  os << fmt::format("model {}: {} params total, {} active per token\n", model.name,
                    format_params(static_cast<double>(pc.params_total())),
                    format_params(static_cast<double>(pc.params_active())));
  os << fmt::format(
      "  embeddings {} | lm_head {} | attention {} | dense FFN {} | router {} | experts {} | shared experts {} | "
      "norms {}\n",
      format_params(static_cast<double>(t.embeddings)), format_params(static_cast<double>(t.lm_head)),
      format_params(static_cast<double>(t.attention)), format_params(static_cast<double>(t.dense_ffn)),
      format_params(static_cast<double>(t.router)), format_params(static_cast<double>(t.experts)),
      format_params(static_cast<double>(t.shared_experts)), format_params(static_cast<double>(t.norms)));
  const std::int64_t cap =
      step.layers.empty() || step.layers[0].groups.empty() ? kDropless : step.layers[0].groups[0].capacity;
  os << fmt::format(
      "routing: {} experts, top-{}, distribution {}, sampling mode {}, {} groups x {} tokens, capacity {}{}\n",
      spec.experts, spec.top_k, to_string(spec.distribution), to_string(step.mode), step.groups, step.tokens_per_group,
      cap == kDropless ? fmt::format("none (dropless, block {})", spec.block_size) : fmt::format("{}", cap),
      spec.dropless() ? "" : (spec.drop_policy == DropPolicy::kPosition ? " (drop: position)" : " (drop: probs)"));
  os << fmt::format("{:>6} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} {:>6} {:>7} {:>7}\n", "layer", "drop%", "fulldrop%",
                    "padded%", "max/mean", "CV", "Gini", "aux", "H/lnE", "routed");
  for (const auto& l : step.layers) {
    const auto& s = l.stats;
    os << fmt::format(
        "{:>6} {:>9.4f} {:>9} {:>9.4f} {:>8.3f} {:>7.4f} {:>6.4f} {:>6.4f} {:>7.4f} {:>7}\n", l.layer,
        100 * s.drop_fraction,
        s.fully_dropped_tokens < 0 ? std::string("n/a") : fmt::format("{:.4f}", 100 * s.fully_dropped_fraction),
        100 * s.padded_fraction, s.max_over_mean, s.cv, s.gini, s.aux_loss, s.entropy_normalized, s.routed);
  }
  os << fmt::format("total: drop {:.4f}%, padded {:.4f}%, worst max/mean {:.3f}\n", 100 * step.drop_fraction,
                    100 * step.padded_fraction, step.max_over_mean);
}

}  // namespace moesim::models
