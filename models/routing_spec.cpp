#include "models/routing_spec.hpp"

#include <fmt/format.h>
#include <ostream>

#include "config/reader.hpp"

namespace moesim::models {

using config::Node;
using config::Range;

RoutingSpec default_routing(const ModelSpec& m) {
  RoutingSpec r;
  r.experts = m.experts;
  r.top_k = m.top_k;
  r.gate = m.gate;
  r.renormalize = m.renormalize;
  r.n_groups = m.n_groups;
  r.topk_group = m.topk_group;
  r.scaling_factor = m.routed_scaling_factor;
  return r;
}

RoutingSpec parse_routing(const Node& node, const ModelSpec& model) {
  RoutingSpec r = default_routing(model);
  if (!node.defined()) return r;
  if (!node.is_map()) {
    node.error("expected a routing block (a map)");
    return r;
  }
  const std::string dist = node.opt_choice(
      "distribution", {"uniform", "balanced", "power_law", "hot_experts", "dirichlet", "trace"}, "uniform");
  r.distribution = dist == "balanced"      ? Distribution::kBalanced
                   : dist == "power_law"   ? Distribution::kPowerLaw
                   : dist == "hot_experts" ? Distribution::kHotExperts
                   : dist == "dirichlet"   ? Distribution::kDirichlet
                   : dist == "trace"       ? Distribution::kTrace
                                           : Distribution::kUniform;
  r.alpha = node.opt_double("alpha", 1.0, Range::non_negative());
  if (r.distribution == Distribution::kDirichlet && node.has("alpha")) r.dirichlet_base_alpha = r.alpha;
  r.hot_count = static_cast<int>(node.opt_int("hot_count", 1, Range::between(1, 1 << 20)));
  r.hot_share = node.opt_double("hot_share", 0.5, Range::between(0, 1));
  r.concentration = node.opt_double("concentration", 1.0, Range::positive());
  r.layer_correlation = node.opt_double("layer_correlation", 0.0, Range::between(0, 1));
  if (r.distribution == Distribution::kTrace) {
    r.trace_file = node.req_string("trace");
  } else if (node.has("trace")) {
    node.error_at("trace", "a trace file is only read with distribution: trace");
  }
  r.top_k = static_cast<int>(node.opt_int("top_k", model.top_k, Range::between(1, 1 << 20)));
  if (model.experts <= 0) node.error("the model has no experts to route to");
  if (r.top_k > model.experts && model.experts > 0)
    node.error_at("top_k", fmt::format("top_k ({}) exceeds the number of experts ({})", r.top_k, model.experts));
  if (r.distribution == Distribution::kHotExperts && r.hot_count > model.experts)
    node.error_at("hot_count",
                  fmt::format("hot_count ({}) exceeds the number of experts ({})", r.hot_count, model.experts));
  r.gate = node.opt_choice("gate", {"softmax", "sigmoid"},
                           model.gate == GateFunction::kSigmoid ? "sigmoid" : "softmax") == "sigmoid"
               ? GateFunction::kSigmoid
               : GateFunction::kSoftmax;
  if (node.has("gate_bias")) {
    for (const Node& b : node.child("gate_bias").items()) r.gate_bias.push_back(b.as_double());
    if (static_cast<int>(r.gate_bias.size()) != model.experts)
      node.error_at("gate_bias", fmt::format("gate_bias has {} values, the model has {} experts", r.gate_bias.size(),
                                             model.experts));
  }
  r.renormalize = node.opt_bool("renormalize", model.renormalize);
  r.n_groups = static_cast<int>(node.opt_int("n_groups", model.n_groups, Range::between(1, 1 << 20)));
  r.topk_group = static_cast<int>(
      node.opt_int("topk_group", node.has("n_groups") ? r.n_groups : model.topk_group, Range::between(1, 1 << 20)));
  if (model.experts > 0 && model.experts % r.n_groups != 0)
    node.error_at("n_groups", fmt::format("experts ({}) do not split into n_groups ({})", model.experts, r.n_groups));
  else if (r.topk_group > r.n_groups)
    node.error_at("topk_group", fmt::format("topk_group ({}) exceeds n_groups ({})", r.topk_group, r.n_groups));
  else if (model.experts > 0 && r.topk_group * (model.experts / r.n_groups) < r.top_k)
    node.error_at("topk_group", "the kept groups hold fewer experts than top_k");
  r.scaling_factor = node.opt_double("scaling_factor", model.routed_scaling_factor, Range::positive());
  r.gshard_random_second = node.opt_bool("gshard_random_second", false);
  if (r.gshard_random_second && r.top_k != 2)
    node.error_at("gshard_random_second", fmt::format("GShard random routing needs top_k 2 (got {})", r.top_k));
  r.expert_choice = node.opt_bool("expert_choice", false);

  // capacity_factor: a number > 0, or "none" (dropless, also the default).
  if (node.has("capacity_factor")) {
    const Node cf = node.child("capacity_factor");
    if (cf.is_scalar() && cf.as_string() == "none") {
      r.capacity_factor.reset();
    } else {
      const double v = cf.as_double(Range::positive());
      if (v > 0) r.capacity_factor = v;
    }
  }
  if (r.expert_choice && r.dropless())
    node.error_at("expert_choice", "expert_choice needs a capacity_factor (each expert takes C tokens)");
  r.min_capacity = node.opt_int("min_capacity", 0, Range::between(0, static_cast<double>(std::int64_t{1} << 40)));
  r.drop_policy = node.opt_choice("drop_policy", {"position", "probs"}, "position") == "probs" ? DropPolicy::kProbs
                                                                                               : DropPolicy::kPosition;
  r.pad_to_capacity = node.opt_bool("pad_to_capacity", false);
  if (r.pad_to_capacity && r.dropless())
    node.error_at("pad_to_capacity", "pad_to_capacity needs a capacity_factor (dropless has no capacity)");
  r.block_size = node.opt_int("block_size", 128, Range::between(1, 1 << 20));
  r.sampling = node.opt_choice("sampling", {"token", "counts"}, "token") == "counts" ? SamplingMode::kCounts
                                                                                     : SamplingMode::kToken;
  if (r.sampling == SamplingMode::kCounts &&
      (r.expert_choice || r.distribution == Distribution::kTrace || r.drop_policy == DropPolicy::kProbs))
    node.error_at("sampling", "sampling: counts cannot do expert_choice, trace replay or drop_policy: probs");
  r.redundant_experts = static_cast<int>(node.opt_int("redundant_experts", 0, Range::between(0, 1 << 20)));
  node.finish();
  r.experts = model.experts;
  return r;
}

std::optional<std::string> placement_problem(int experts, int ep, int redundant) {
  if (ep <= 0) return fmt::format("expert-parallel size must be positive (got {})", ep);
  if (redundant == 0 && experts % ep != 0)
    return fmt::format(
        "{} experts do not divide evenly over ep={} ranks; choose ep dividing {} or set "
        "routing.redundant_experts so that experts + redundant is a multiple of ep",
        experts, ep, experts);
  if (redundant > 0 && (experts + redundant) % ep != 0)
    return fmt::format("experts + redundant_experts = {} is not a multiple of ep={}", experts + redundant, ep);
  return std::nullopt;
}

std::string to_string(Distribution d) {
  switch (d) {
    case Distribution::kUniform:
      return "uniform";
    case Distribution::kBalanced:
      return "balanced";
    case Distribution::kPowerLaw:
      return "power_law";
    case Distribution::kHotExperts:
      return "hot_experts";
    case Distribution::kDirichlet:
      return "dirichlet";
    case Distribution::kTrace:
      return "trace";
  }
  return "?";
}

std::string to_string(SamplingMode m) { return m == SamplingMode::kToken ? "token" : "counts"; }

void describe_routing(std::ostream& os) {
  os << R"(routing: block of a scenario [defaults in brackets; gate defaults come from the model's config]

Where choices come from (distribution) [uniform]:
  uniform       every expert equally likely; an expert's load over T tokens is Binomial(T, k/E)
  balanced      deterministic round robin over EP ranks first, then experts: perfectly even
  power_law     popularity of rank r proportional to (r+1)^-alpha over a random expert permutation
                per layer; alpha [1.0] (0 = balanced in expectation)
  hot_experts   hot_count [1] experts share hot_share [0.5] of the mass
  dirichlet     per step, p ~ Dirichlet(concentration [1] x E x base); base = power_law(alpha) when
                alpha is set, else uniform (temporal variation)
  trace         replay a CSV of recorded expert ids: trace: FILE (layer,token,expert_0..expert_{k-1})
  layer_correlation [0]: 0 = each layer draws its own permutation, 1 = every layer the same

Gate: logit = ln p_e + Gumbel noise per token, so softmax top-k is Plackett-Luce sampling from p:
  gate [softmax | sigmoid], gate_bias (E numbers, sigmoid selection bias), renormalize,
  n_groups / topk_group (group-limited top-k, DeepSeek), scaling_factor, top_k [model],
  gshard_random_second (top-2: keep expert 2 with probability min(1, 2 g2)),
  expert_choice (each expert takes its top-C tokens)

Capacity per routing group (one rank's micro-batch): C = max(min_capacity, ceil(cf x T x k / E))
  capacity_factor [none = dropless] (> 0), min_capacity [0],
  drop_policy [position: earlier tokens keep their slot | probs: highest weights keep theirs],
  pad_to_capacity [false: every expert buffer exactly C rows],
  block_size [128: dropless rows per expert rounded up to it, padding counted as wasted compute]

sampling [token]: token = every token drawn and gated (exact for the logit model);
  counts = per-expert counts from a multinomial with exact or piloted shares (fast, approximate:
  per-expert variance of T x k independent draws; fully dropped tokens unknown)
redundant_experts [0]: EPLB-style replica slots for hot experts (lets E not divide EP)
)";
}

}  // namespace moesim::models
