// Per-destination token counts (DeepEP dispatch rows): exact from assignments, estimated from
// per-expert counts. The rules are documented on models::DestinationMap.
#include "models/router/destinations.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace moesim::models::detail {

namespace {

void check(const DestinationMap& map, int ranks, std::size_t experts) {
  if (map.replicas == nullptr || map.replicas->size() != experts ||
      map.node_of_rank.size() != static_cast<std::size_t>(ranks) || map.nodes < 1)
    throw std::invalid_argument("DestinationMap: replicas must list every expert and node_of_rank every rank");
}

}  // namespace

void count_destinations(const DestinationMap& map, int ranks, int group, GroupRouting& g) {
  const auto& reps = *map.replicas;
  check(map, ranks, reps.size());
  const int src = group % ranks;
  g.dest_rank_tokens.assign(static_cast<std::size_t>(ranks), 0);
  g.dest_node_tokens.assign(static_cast<std::size_t>(map.nodes), 0);
  std::vector<std::int64_t> rank_seen(static_cast<std::size_t>(ranks), -1),
      node_seen(static_cast<std::size_t>(map.nodes), -1);
  const int k = g.top_k;
  for (std::int64_t t = 0; t < g.tokens; ++t) {
    for (int j = 0; j < k; ++j) {
      const std::size_t i = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
      const int e = g.expert[i];
      if (e < 0 || g.keep[i] == 0) continue;
      const auto& r = reps[static_cast<std::size_t>(e)];
      const int dst = r[static_cast<std::size_t>((t + src) % static_cast<std::int64_t>(r.size()))];
      if (rank_seen[static_cast<std::size_t>(dst)] != t) {
        rank_seen[static_cast<std::size_t>(dst)] = t;
        ++g.dest_rank_tokens[static_cast<std::size_t>(dst)];
      }
      const int n = map.node_of_rank[static_cast<std::size_t>(dst)];
      if (node_seen[static_cast<std::size_t>(n)] != t) {
        node_seen[static_cast<std::size_t>(n)] = t;
        ++g.dest_node_tokens[static_cast<std::size_t>(n)];
      }
    }
  }
}

void estimate_destinations(const DestinationMap& map, int ranks, int group, GroupRouting& g, int experts) {
  const auto& reps = *map.replicas;
  check(map, ranks, reps.size());
  (void)group;  // replicas share an expert's rows evenly in counts mode
  const int k = g.top_k;
  // Kept assignments per destination, and the largest single expert share there.
  std::vector<double> rank_kept(static_cast<std::size_t>(ranks), 0), rank_max(static_cast<std::size_t>(ranks), 0);
  std::vector<double> node_kept(static_cast<std::size_t>(map.nodes), 0),
      node_max(static_cast<std::size_t>(map.nodes), 0);
  double total = 0;
  for (std::size_t e = 0; e < reps.size(); ++e) {
    const double share = static_cast<double>(g.kept[e]) / static_cast<double>(reps[e].size());
    for (int r : reps[e]) {
      const auto ru = static_cast<std::size_t>(r);
      const auto nu = static_cast<std::size_t>(map.node_of_rank[ru]);
      rank_kept[ru] += share;
      rank_max[ru] = std::max(rank_max[ru], share);
      node_kept[nu] += share;
      node_max[nu] = std::max(node_max[nu], share);
    }
    total += static_cast<double>(g.kept[e]);
  }
  const double tokens = static_cast<double>(g.tokens);
  const auto estimate = [&](double kept, double largest) -> std::int64_t {
    if (kept <= 0 || total <= 0) return 0;
    const double m = kept / total * static_cast<double>(experts);  // experts' worth of choices there
    double miss = 1.0;
    for (int i = 0; i < k; ++i) miss *= std::max(0.0, 1.0 - m / static_cast<double>(experts - i));
    const double kept_tokens = total / static_cast<double>(k);  // tokens' worth of kept choices
    double v = kept_tokens * (1.0 - miss);
    v = std::clamp(v, largest, std::min(tokens, kept));
    return static_cast<std::int64_t>(std::llround(v));
  };
  g.dest_rank_tokens.assign(static_cast<std::size_t>(ranks), 0);
  g.dest_node_tokens.assign(static_cast<std::size_t>(map.nodes), 0);
  for (std::size_t r = 0; r < rank_kept.size(); ++r) g.dest_rank_tokens[r] = estimate(rank_kept[r], rank_max[r]);
  for (std::size_t n = 0; n < node_kept.size(); ++n) g.dest_node_tokens[n] = estimate(node_kept[n], node_max[n]);
}

}  // namespace moesim::models::detail
