#pragma once
/// \file
/// Popularity models (internal to models/router): the shape by rank, the per-layer permutation
/// and the deterministic balanced generator. expert_popularity is declared in models/router.hpp.

#include <vector>

#include "models/router.hpp"
#include "sim/rng.hpp"

namespace moesim::models::detail {

/// The popularity shape by rank (before the per-layer permutation) and its kind (a Dirichlet
/// popularity reports its base: power_law or uniform).
std::vector<double> popularity_shape(const RoutingSpec& s, Distribution& shape_kind);

/// A uniformly random permutation of 0..n-1 (Fisher-Yates from the top).
std::vector<int> permutation(int n, sim::Rng& rng);

/// The stream of layer `layer`'s expert permutation.
sim::Rng layer_permutation_rng(std::uint64_t seed, int layer);

/// Distribution::kBalanced: fills g.expert / g.weight / g.prob_sum of routing group `group` (of
/// req.groups) with a round-robin over EP ranks first, then experts, continued from step to step.
void balanced_assignments(const RoutingSpec& spec, const RouteRequest& req, int group, GroupRouting& g);

}  // namespace moesim::models::detail
