#include "models/placement.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

namespace moesim::models {

Placement place_contiguous(int experts, int ranks) {
  if (experts <= 0 || ranks <= 0 || experts % ranks != 0)
    throw std::invalid_argument(
        fmt::format("place_contiguous: {} experts do not divide over {} ranks", experts, ranks));
  Placement p;
  p.ranks = ranks;
  p.experts = experts;
  p.slots_per_rank = experts / ranks;
  p.replicas.resize(static_cast<std::size_t>(experts));
  p.experts_on_rank.resize(static_cast<std::size_t>(ranks));
  for (int e = 0; e < experts; ++e) {
    const int r = e / p.slots_per_rank;
    p.replicas[static_cast<std::size_t>(e)] = {r};
    p.experts_on_rank[static_cast<std::size_t>(r)].push_back(e);
  }
  return p;
}

Placement place_replicated(const std::vector<double>& load, int ranks, int redundant) {
  const int E = static_cast<int>(load.size());
  if (E <= 0 || ranks <= 0 || redundant < 0 || (E + redundant) % ranks != 0)
    throw std::invalid_argument(
        fmt::format("place_replicated: {} experts + {} redundant do not fill {} ranks evenly", E, redundant, ranks));
  Placement p;
  p.ranks = ranks;
  p.experts = E;
  p.slots_per_rank = (E + redundant) / ranks;
  std::vector<int> copies(static_cast<std::size_t>(E), 1);
  for (int i = 0; i < redundant; ++i) {
    int best = 0;
    for (int e = 1; e < E; ++e)
      if (load[static_cast<std::size_t>(e)] / copies[static_cast<std::size_t>(e)] >
          load[static_cast<std::size_t>(best)] / copies[static_cast<std::size_t>(best)])
        best = e;
    ++copies[static_cast<std::size_t>(best)];
  }
  struct Item {
    double w;
    int e;
  };
  std::vector<Item> items;
  for (int e = 0; e < E; ++e)
    for (int c = 0; c < copies[static_cast<std::size_t>(e)]; ++c)
      items.push_back({load[static_cast<std::size_t>(e)] / copies[static_cast<std::size_t>(e)], e});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.w > b.w; });
  std::vector<double> rank_load(static_cast<std::size_t>(ranks), 0.0);
  p.replicas.resize(static_cast<std::size_t>(E));
  p.experts_on_rank.resize(static_cast<std::size_t>(ranks));
  for (const Item& it : items) {
    int best = -1;
    for (int pass = 0; pass < 2 && best < 0; ++pass) {
      for (int r = 0; r < ranks; ++r) {
        const auto& here = p.experts_on_rank[static_cast<std::size_t>(r)];
        if (static_cast<int>(here.size()) >= p.slots_per_rank) continue;
        if (pass == 0 && std::find(here.begin(), here.end(), it.e) != here.end()) continue;
        if (best < 0 || rank_load[static_cast<std::size_t>(r)] < rank_load[static_cast<std::size_t>(best)]) best = r;
      }
    }
    p.experts_on_rank[static_cast<std::size_t>(best)].push_back(it.e);
    p.replicas[static_cast<std::size_t>(it.e)].push_back(best);
    rank_load[static_cast<std::size_t>(best)] += it.w;
  }
  for (auto& v : p.replicas) std::sort(v.begin(), v.end());
  for (auto& v : p.experts_on_rank) std::sort(v.begin(), v.end());
  return p;
}

std::int64_t row_bytes(std::int64_t hidden, WireFormat f) {
  switch (f) {
    case WireFormat::kBf16:
      return 2 * hidden;
    case WireFormat::kFp32:
      return 4 * hidden;
    case WireFormat::kFp8:
      return hidden + 4 * ((hidden + 127) / 128);
  }
  return 0;
}

namespace {

/// Rows of `n` sent from `src` to replica i of an expert with m replicas.
std::int64_t share_of(std::int64_t n, int m, int i, int src) {
  const std::int64_t base = n / m, rem = n % m;
  const int rotated = ((i - src) % m + m) % m;
  return base + (rotated < rem ? 1 : 0);
}

}  // namespace

DispatchMatrices build_dispatch_matrices(const LayerRouting& layer, const Placement& pl, const ByteMatrixOptions& opt) {
  const int R = pl.ranks;
  const std::size_t RR = static_cast<std::size_t>(R) * static_cast<std::size_t>(R);
  DispatchMatrices m;
  m.ranks = R;
  m.dispatch_rows.assign(RR, 0);
  m.rank_rows.assign(static_cast<std::size_t>(R), 0);
  for (std::size_t gi = 0; gi < layer.groups.size(); ++gi) {
    const GroupRouting& g = layer.groups[gi];
    const int src = static_cast<int>(gi % static_cast<std::size_t>(R));
    const auto row = [&](int dst) -> std::int64_t& {
      return m
          .dispatch_rows[static_cast<std::size_t>(src) * static_cast<std::size_t>(R) + static_cast<std::size_t>(dst)];
    };
    if (opt.dedup_per_rank) {
      if (g.expert.empty())
        throw std::invalid_argument("build_dispatch_matrices: dedup_per_rank needs per-token routing (token mode)");
      std::vector<std::int64_t> seen(static_cast<std::size_t>(R), -1);
      const int k = g.top_k;
      for (std::int64_t t = 0; t < g.tokens; ++t) {
        for (int j = 0; j < k; ++j) {
          const std::size_t i = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
          if (!g.keep[i]) continue;
          const auto& reps = pl.replicas[static_cast<std::size_t>(g.expert[i])];
          const int dst = reps[static_cast<std::size_t>((t + src) % static_cast<std::int64_t>(reps.size()))];
          ++m.rank_rows[static_cast<std::size_t>(dst)];
          if (seen[static_cast<std::size_t>(dst)] == t) continue;
          seen[static_cast<std::size_t>(dst)] = t;
          ++row(dst);
        }
      }
      continue;
    }
    for (int e = 0; e < pl.experts; ++e) {
      const std::int64_t n =
          opt.pad_to_capacity && g.capacity != kDropless ? g.capacity : g.kept[static_cast<std::size_t>(e)];
      const auto& reps = pl.replicas[static_cast<std::size_t>(e)];
      const int mrep = static_cast<int>(reps.size());
      for (int i = 0; i < mrep; ++i) {
        const std::int64_t s = share_of(n, mrep, i, src);
        row(reps[static_cast<std::size_t>(i)]) += s;
        m.rank_rows[static_cast<std::size_t>(reps[static_cast<std::size_t>(i)])] += s;
      }
    }
  }
  const auto db = static_cast<std::uint64_t>(row_bytes(opt.hidden, opt.dispatch));
  const auto cb = static_cast<std::uint64_t>(row_bytes(opt.hidden, opt.combine));
  m.dispatch_bytes.assign(RR, 0);
  m.combine_bytes.assign(RR, 0);
  for (int s = 0; s < R; ++s)
    for (int d = 0; d < R; ++d) {
      const auto rows = static_cast<std::uint64_t>(
          m.dispatch_rows[static_cast<std::size_t>(s) * static_cast<std::size_t>(R) + static_cast<std::size_t>(d)]);
      m.dispatch_bytes[static_cast<std::size_t>(s) * static_cast<std::size_t>(R) + static_cast<std::size_t>(d)] =
          rows * db;
      m.combine_bytes[static_cast<std::size_t>(d) * static_cast<std::size_t>(R) + static_cast<std::size_t>(s)] =
          rows * cb;
    }
  return m;
}

DispatchMatrices build_deepep_normal_matrices(const LayerRouting& layer, const Placement& pl,
                                              const ByteMatrixOptions& opt, const std::vector<int>& node_of_rank,
                                              const std::vector<int>& local_of_rank) {
  const int R = pl.ranks;
  const auto Ru = static_cast<std::size_t>(R);
  if (node_of_rank.size() != Ru || local_of_rank.size() != Ru)
    throw std::invalid_argument("build_deepep_normal_matrices: node_of_rank/local_of_rank need one entry per rank");
  int nodes = 0, locals = 0;
  for (std::size_t r = 0; r < Ru; ++r) {
    nodes = std::max(nodes, node_of_rank[r] + 1);
    locals = std::max(locals, local_of_rank[r] + 1);
  }
  std::vector<int> rank_at(static_cast<std::size_t>(nodes) * static_cast<std::size_t>(locals), -1);
  for (std::size_t r = 0; r < Ru; ++r)
    rank_at[static_cast<std::size_t>(node_of_rank[r]) * static_cast<std::size_t>(locals) +
            static_cast<std::size_t>(local_of_rank[r])] = static_cast<int>(r);
  DispatchMatrices m;
  m.ranks = R;
  m.dispatch_rows.assign(Ru * Ru, 0);
  m.rank_rows.assign(Ru, 0);
  const auto row = [&](int s, int d) -> std::int64_t& {
    return m.dispatch_rows[static_cast<std::size_t>(s) * Ru + static_cast<std::size_t>(d)];
  };
  for (std::size_t gi = 0; gi < layer.groups.size(); ++gi) {
    const GroupRouting& g = layer.groups[gi];
    const int src = static_cast<int>(gi % Ru);
    if (g.dest_rank_tokens.size() != Ru || g.dest_node_tokens.size() != static_cast<std::size_t>(nodes))
      throw std::invalid_argument("build_deepep_normal_matrices: the layer was routed without a DestinationMap");
    const int sn = node_of_rank[static_cast<std::size_t>(src)];
    const int sl = local_of_rank[static_cast<std::size_t>(src)];
    for (int n = 0; n < nodes; ++n) {
      const std::int64_t node_tok = g.dest_node_tokens[static_cast<std::size_t>(n)];
      if (node_tok == 0) continue;
      int relay = src;
      if (n != sn) {
        relay = rank_at[static_cast<std::size_t>(n) * static_cast<std::size_t>(locals) + static_cast<std::size_t>(sl)];
        if (relay < 0)
          throw std::invalid_argument(
              "build_deepep_normal_matrices: no relay rank with the source's local index on a destination node");
        row(src, relay) += node_tok;  // RDMA
      }
      for (std::size_t d = 0; d < Ru; ++d)
        if (node_of_rank[d] == n && static_cast<int>(d) != relay)
          row(relay, static_cast<int>(d)) += g.dest_rank_tokens[d];
    }
    // The relay's own rows arrive with its RDMA transfer; inside the source node the source
    // "sends" its own rows to itself (the diagonal, as in build_dispatch_matrices).
    row(src, src) += g.dest_rank_tokens[static_cast<std::size_t>(src)];
    for (int e = 0; e < pl.experts; ++e) {
      const std::int64_t n =
          opt.pad_to_capacity && g.capacity != kDropless ? g.capacity : g.kept[static_cast<std::size_t>(e)];
      const auto& reps = pl.replicas[static_cast<std::size_t>(e)];
      const int mrep = static_cast<int>(reps.size());
      for (int i = 0; i < mrep; ++i)
        m.rank_rows[static_cast<std::size_t>(reps[static_cast<std::size_t>(i)])] += share_of(n, mrep, i, src);
    }
  }
  const auto db = static_cast<std::uint64_t>(row_bytes(opt.hidden, opt.dispatch));
  const auto cb = static_cast<std::uint64_t>(row_bytes(opt.hidden, opt.combine));
  m.dispatch_bytes.assign(Ru * Ru, 0);
  m.combine_bytes.assign(Ru * Ru, 0);
  for (std::size_t s = 0; s < Ru; ++s)
    for (std::size_t d = 0; d < Ru; ++d) {
      const auto rows = static_cast<std::uint64_t>(m.dispatch_rows[s * Ru + d]);
      m.dispatch_bytes[s * Ru + d] = rows * db;
      m.combine_bytes[d * Ru + s] = rows * cb;
    }
  return m;
}

std::vector<std::int64_t> rank_loads(const LayerRouting& layer, const Placement& pl) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(pl.ranks), 0);
  for (std::size_t gi = 0; gi < layer.groups.size(); ++gi) {
    const int src = static_cast<int>(gi % static_cast<std::size_t>(pl.ranks));
    for (int e = 0; e < pl.experts; ++e) {
      const auto& reps = pl.replicas[static_cast<std::size_t>(e)];
      const int mrep = static_cast<int>(reps.size());
      for (int i = 0; i < mrep; ++i)
        out[static_cast<std::size_t>(reps[static_cast<std::size_t>(i)])] +=
            share_of(layer.groups[gi].routed[static_cast<std::size_t>(e)], mrep, i, src);
    }
  }
  return out;
}

}  // namespace moesim::models
