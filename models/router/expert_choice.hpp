#pragma once
/// \file
/// Expert-choice routing (internal to models/router): each expert takes its top-C tokens (Zhou et
/// al. 2022, "Mixture-of-Experts with Expert Choice Routing").

#include <vector>

#include "models/router.hpp"
#include "sim/rng.hpp"

namespace moesim::models::detail {

/// Routes group `g` (tokens, capacity and prob_sum[E] set) with popularity `p`: per token the
/// softmax of ln p_e + Gumbel, then per expert the min(C, T) tokens of highest probability (ties
/// to the lower token). Sets g.top_k = E: one slot per (token, expert) pair, -1 where the expert
/// did not take the token.
void route_group_expert_choice(const RoutingSpec& spec, const std::vector<double>& p, sim::Rng& rng, GroupRouting& g);

}  // namespace moesim::models::detail
