#pragma once
/// \file
/// Counts-mode sampling (internal to models/router): per-expert routed counts drawn from a
/// multinomial over the inclusion shares (counts_inclusion_shares, models/router.hpp).

#include <vector>

#include "models/router.hpp"
#include "sim/rng.hpp"

namespace moesim::models::detail {

/// Fills routed / kept / dropped / padded and prob_sum of group `g` (tokens and capacity set):
/// routed ~ Multinomial(T * k, shares) as a chain of conditional binomials, kept by the capacity
/// rule, prob_sum = p * T (the popularity as the mean router probability), fully dropped tokens
/// unknown (-1).
void route_group_counts(const RoutingSpec& spec, const std::vector<double>& shares, const std::vector<double>& p,
                        sim::Rng& rng, GroupRouting& g);

}  // namespace moesim::models::detail
