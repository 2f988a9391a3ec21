#pragma once
/// \file
/// Capacity rules shared by every routing path (internal to models/router). The public entry
/// points (expert_capacity, enforce_capacity) are declared in models/router.hpp.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "models/router.hpp"

namespace moesim::models::detail {

/// Drop policy `position` for one group of capacity C: assignments arrive in token order (slot
/// order within a token) and each expert keeps its first C (all of them when dropless). Every
/// path that applies this policy counts through admit(), and every path, whatever its policy,
/// takes an expert's kept count from kept() (the probs policy also keeps min(routed, C)).
struct PositionRule {
  std::int64_t limit;  ///< C, or the largest int64 when dropless
  explicit PositionRule(std::int64_t capacity)
      : limit(capacity == kDropless ? std::numeric_limits<std::int64_t>::max() : capacity) {}
  /// One more assignment for an expert that has `routed` so far: true when it is kept.
  bool admit(std::int64_t& routed) const { return routed++ < limit; }
  /// True when an expert with `routed` assignments keeps no further one.
  bool full(std::int64_t routed) const { return routed >= limit; }
  std::int64_t kept(std::int64_t routed) const { return std::min(routed, limit); }
};

/// From g.routed: kept (PositionRule::kept), dropped = routed - kept, and the padded rows
/// (pad_to_capacity: C - kept; dropless: up to the next multiple of block_size).
void finish_capacity_counts(GroupRouting& g, const RoutingSpec& spec);

}  // namespace moesim::models::detail
