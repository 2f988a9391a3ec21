// The layer and step driver: per routing group, the stream, the capacity and the sampler that the
// routing spec selects (counts, token choice with or without stored assignments, expert choice,
// balanced, trace), then the layer's statistics.
#include <stdexcept>
#include <string>
#include <vector>

#include "models/router.hpp"
#include "models/router/counts.hpp"
#include "models/router/destinations.hpp"
#include "models/router/expert_choice.hpp"
#include "models/router/popularity.hpp"
#include "models/router/random.hpp"
#include "models/router/token_choice.hpp"
#include "models/router/trace.hpp"

namespace moesim::models {

LayerRouting route_layer(const RoutingSpec& spec, int layer, const RouteRequest& req, const RoutingTrace* trace) {
  if (spec.experts <= 0 || spec.top_k <= 0 || spec.top_k > spec.experts)
    throw std::invalid_argument("route_layer: invalid experts/top_k");
  if (spec.distribution == Distribution::kTrace && trace == nullptr)
    throw std::invalid_argument("route_layer: distribution trace needs a loaded RoutingTrace");
  LayerRouting out;
  out.layer = layer;
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const std::int64_t T = req.tokens_per_group;
  const bool counts = spec.sampling == SamplingMode::kCounts;
  const auto p = expert_popularity(spec, layer, req.step, req.seed);
  std::vector<double> shares;
  if (counts) shares = counts_inclusion_shares(spec, layer, req.step, req.seed, req.share_cache);
  const std::size_t trace_slot = spec.distribution == Distribution::kTrace ? detail::trace_slot(*trace, layer) : 0;
  const bool token_choice =
      !spec.expert_choice && spec.distribution != Distribution::kBalanced && spec.distribution != Distribution::kTrace;
  detail::TokenChoicePlan plan;
  if (!counts && token_choice) plan = detail::make_token_choice_plan(spec, p);
  out.groups.resize(static_cast<std::size_t>(req.groups));
  std::vector<std::int32_t> scratch_expert;
  std::vector<float> scratch_weight;
  std::vector<std::uint8_t> scratch_keep;
  const auto swap_scratch = [&](GroupRouting& g) {
    g.expert.swap(scratch_expert);
    g.weight.swap(scratch_weight);
    g.keep.swap(scratch_keep);
  };
  for (int gi = 0; gi < req.groups; ++gi) {
    GroupRouting& g = out.groups[static_cast<std::size_t>(gi)];
    g.tokens = T;
    g.top_k = k;
    g.capacity = expert_capacity(T, k, E, spec.capacity_factor, spec.min_capacity);
    g.prob_sum.assign(Eu, 0.0);
    const std::string stream = detail::group_stream(req.step, layer, gi);
    sim::Rng rng(req.seed, stream);
    if (counts) {
      detail::route_group_counts(spec, shares, p, rng, g);
      if (req.dest) detail::estimate_destinations(*req.dest, req.ep_ranks, gi, g, E);
      continue;
    }
    if (token_choice && !req.keep_assignments && spec.drop_policy == DropPolicy::kPosition && !req.dest) {
      // Capacity applied while routing; no per-slot arrays.
      sim::Rng aux(req.seed, stream + "/gshard");
      detail::route_group_token_choice(spec, plan, rng, aux, g, true);
      continue;
    }
    if (!req.keep_assignments) swap_scratch(g);  // reuse one set of per-slot arrays for every group
    const std::size_t slots = static_cast<std::size_t>(T) * static_cast<std::size_t>(k);
    g.expert.assign(slots, -1);
    g.weight.assign(slots, 0.0f);
    if (spec.expert_choice) {
      detail::route_group_expert_choice(spec, p, rng, g);
    } else if (spec.distribution == Distribution::kBalanced) {
      detail::balanced_assignments(spec, req, gi, g);
    } else if (spec.distribution == Distribution::kTrace) {
      detail::replay_trace(*trace, trace_slot, req, gi, g);
    } else {
      sim::Rng aux(req.seed, stream + "/gshard");
      detail::route_group_token_choice(spec, plan, rng, aux, g, false);
    }
    enforce_capacity(g, spec);
    if (req.dest) detail::count_destinations(*req.dest, req.ep_ranks, gi, g);
    if (!req.keep_assignments) {
      swap_scratch(g);
      g.expert.clear();
      g.weight.clear();
      g.keep.clear();
    }
  }
  out.stats = layer_stats(out.groups, E, k);
  return out;
}

StepRouting route_step(const ModelSpec& model, const RoutingSpec& spec, const RouteRequest& req,
                       const RoutingTrace* trace) {
  StepRouting s;
  s.mode = spec.sampling;
  s.tokens_per_group = req.tokens_per_group;
  s.groups = req.groups;
  InclusionShareCache cache;
  RouteRequest r = req;
  if (r.share_cache == nullptr) r.share_cache = &cache;
  for (int l : model.moe_layer_indices()) {
    s.layers.push_back(route_layer(spec, l, r, trace));
    const auto& st = s.layers.back().stats;
    s.routed += st.routed;
    s.dropped += st.dropped;
    s.kept += st.kept;
    s.padded += st.padded;
    s.max_over_mean = std::max(s.max_over_mean, st.max_over_mean);
  }
  s.drop_fraction = s.routed > 0 ? static_cast<double>(s.dropped) / static_cast<double>(s.routed) : 0.0;
  const std::int64_t rows = s.kept + s.padded;
  s.padded_fraction = rows > 0 ? static_cast<double>(s.padded) / static_cast<double>(rows) : 0.0;
  return s;
}

}  // namespace moesim::models
