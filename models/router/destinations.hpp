#pragma once
/// \file
/// Per-destination token counts of a routed group (internal to models/router): the rows a
/// DeepEP-style dispatcher sends, one per (token, destination rank) and one per (token,
/// destination node). See models::DestinationMap for the rules and the counts-mode estimate.

#include "models/router.hpp"

namespace moesim::models::detail {

/// Token mode: exact counts from the kept assignments of `g` (routing group `group`).
void count_destinations(const DestinationMap& map, int ranks, int group, GroupRouting& g);
/// Counts mode: the estimate from g.kept (no per-token data).
void estimate_destinations(const DestinationMap& map, int ranks, int group, GroupRouting& g, int experts);

}  // namespace moesim::models::detail
