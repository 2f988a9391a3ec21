#pragma once
/// \file
/// Trace replay (internal to models/router). load_routing_trace is declared in models/router.hpp.

#include "models/router.hpp"

namespace moesim::models::detail {

/// The slot of MoE layer `layer` in `trace` (std::invalid_argument when the trace lacks it).
std::size_t trace_slot(const RoutingTrace& trace, int layer);

/// Fills g.expert / g.weight (1/k) / g.prob_sum of routing group `group` from the trace's tokens of
/// layer slot `slot`, continuing where the previous group and step stopped and wrapping around.
void replay_trace(const RoutingTrace& trace, std::size_t slot, const RouteRequest& req, int group, GroupRouting& g);

}  // namespace moesim::models::detail
