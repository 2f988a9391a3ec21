#include <catch2/catch.hpp>

#include <set>

#include "models/placement.hpp"
#include "models/router/destinations.hpp"

using namespace moesim::models;

TEST_CASE("contiguous placement", "[models][placement]") {
  const Placement p = place_contiguous(8, 4);
  REQUIRE(p.experts_on_rank[1] == std::vector<int>{2, 3});
  REQUIRE(p.replicas[7] == std::vector<int>{3});
  REQUIRE_THROWS(place_contiguous(8, 3));
}

TEST_CASE("EPLB-style replication gives the hot expert extra copies on distinct ranks", "[models][placement]") {
  const std::vector<double> load = {100, 10, 10, 10, 10, 10};  // 6 experts, 2 redundant -> 8 slots on 4 ranks
  const Placement p = place_replicated(load, 4, 2);
  REQUIRE(p.replicas[0].size() == 3);
  REQUIRE(std::set<int>(p.replicas[0].begin(), p.replicas[0].end()).size() == 3);
  for (const auto& r : p.experts_on_rank) REQUIRE(r.size() == 2);
  REQUIRE_THROWS(place_replicated(load, 4, 1));
}

TEST_CASE("dispatch/combine byte matrices by hand", "[models][placement]") {
  // 2 ranks, 4 experts (0,1 on rank 0; 2,3 on rank 1), two groups (one per rank), top-1.
  LayerRouting l;
  GroupRouting g0, g1;
  g0.tokens = g1.tokens = 4;
  g0.top_k = g1.top_k = 1;
  g0.capacity = g1.capacity = 2;
  g0.kept = {2, 0, 1, 1};  // rank 0 sends 2 rows to itself, 2 rows to rank 1
  g1.kept = {0, 1, 0, 2};  // rank 1 sends 1 row to rank 0, 2 to itself
  g0.routed = g0.kept;
  g1.routed = g1.kept;
  l.groups = {g0, g1};
  ByteMatrixOptions opt;
  opt.hidden = 256;
  opt.dispatch = WireFormat::kFp8;
  opt.combine = WireFormat::kBf16;
  const auto m = build_dispatch_matrices(l, place_contiguous(4, 2), opt);
  REQUIRE(m.dispatch_rows == std::vector<std::int64_t>{2, 2, 1, 2});
  const std::uint64_t fp8_row = 256 + 2 * 4;  // payload + one fp32 scale per 128 elements
  REQUIRE(m.at(m.dispatch_bytes, 0, 1) == 2 * fp8_row);
  REQUIRE(m.at(m.combine_bytes, 1, 0) == 2ULL * 256 * 2);  // results of 0->1 come back 1->0
  REQUIRE(m.at(m.combine_bytes, 0, 1) == 1ULL * 256 * 2);
  REQUIRE(m.rank_rows == std::vector<std::int64_t>{3, 4});
  opt.pad_to_capacity = true;
  const auto mp = build_dispatch_matrices(l, place_contiguous(4, 2), opt);
  REQUIRE(mp.dispatch_rows == std::vector<std::int64_t>{4, 4, 4, 4});
}

TEST_CASE("dedup sends one row per (token, destination rank)", "[models][placement]") {
  LayerRouting l;
  GroupRouting g;
  g.tokens = 2;
  g.top_k = 2;
  g.capacity = -1;
  g.expert = {0, 1, 0, 2};  // token 0 -> rank 0 twice; token 1 -> rank 0 and rank 1
  g.keep = {1, 1, 1, 1};
  g.kept = {2, 1, 1, 0};
  g.routed = g.kept;
  l.groups = {g};
  ByteMatrixOptions opt;
  opt.hidden = 8;
  opt.dedup_per_rank = true;
  const auto m = build_dispatch_matrices(l, place_contiguous(4, 2), opt);
  REQUIRE(m.dispatch_rows == std::vector<std::int64_t>{2, 1, 0, 0});
}

namespace {

/// C(n, k) as a double (small arguments).
double choose(int n, int k) {
  double c = 1;
  for (int i = 0; i < k; ++i) c = c * (n - i) / (i + 1);
  return c;
}

}  // namespace

TEST_CASE("destination counts: exact in token mode, hypergeometric estimate in counts mode", "[models][placement]") {
  // 64 experts on 8 ranks (8 each), 2 nodes of 4 ranks; top-4 uniform, dropless.
  const int E = 64, k = 4, R = 8;
  RoutingSpec s;
  s.experts = E;
  s.top_k = k;
  const Placement pl = place_contiguous(E, R);
  DestinationMap map;
  map.replicas = &pl.replicas;
  map.nodes = 2;
  for (int r = 0; r < R; ++r) map.node_of_rank.push_back(r / 4);
  RouteRequest req;
  req.tokens_per_group = 4096;
  req.groups = R;
  req.ep_ranks = R;
  req.seed = 7;
  req.dest = &map;
  const LayerRouting l = route_layer(s, 0, req);
  // Brute force over the stored assignments.
  for (int gi = 0; gi < R; ++gi) {
    const GroupRouting& g = l.groups[static_cast<std::size_t>(gi)];
    std::vector<std::int64_t> ranks(R, 0), nodes(2, 0);
    for (std::int64_t t = 0; t < g.tokens; ++t) {
      std::set<int> rs, ns;
      for (int j = 0; j < k; ++j) {
        const int e = g.expert[static_cast<std::size_t>(t * k + j)];
        if (e >= 0 && g.keep[static_cast<std::size_t>(t * k + j)]) {
          rs.insert(e / 8);
          ns.insert(e / 32);
        }
      }
      for (int r : rs) ++ranks[static_cast<std::size_t>(r)];
      for (int n : ns) ++nodes[static_cast<std::size_t>(n)];
    }
    REQUIRE(g.dest_rank_tokens == ranks);
    REQUIRE(g.dest_node_tokens == nodes);
  }
  // Uniform top-k without replacement: P(token hits a rank of 8 experts) = 1 - C(56,4)/C(64,4).
  const double p_rank = 1 - choose(E - 8, k) / choose(E, k), p_node = 1 - choose(E - 32, k) / choose(E, k);
  double sum_rank = 0, sum_node = 0;
  for (const auto& g : l.groups) {
    for (auto v : g.dest_rank_tokens) sum_rank += static_cast<double>(v);
    for (auto v : g.dest_node_tokens) sum_node += static_cast<double>(v);
  }
  REQUIRE(sum_rank / (R * R * 4096.0) == Approx(p_rank).epsilon(0.01));
  REQUIRE(sum_node / (R * 2 * 4096.0) == Approx(p_node).epsilon(0.01));
  // Counts mode estimates the same expectation from per-expert counts.
  RoutingSpec sc = s;
  sc.sampling = SamplingMode::kCounts;
  const LayerRouting lc = route_layer(sc, 0, req);
  double c_rank = 0, c_node = 0;
  for (const auto& g : lc.groups) {
    REQUIRE(g.expert.empty());
    for (auto v : g.dest_rank_tokens) c_rank += static_cast<double>(v);
    for (auto v : g.dest_node_tokens) c_node += static_cast<double>(v);
  }
  REQUIRE(c_rank / (R * R * 4096.0) == Approx(p_rank).epsilon(0.01));
  REQUIRE(c_node / (R * 2 * 4096.0) == Approx(p_node).epsilon(0.01));
  // Without a map nothing is counted.
  req.dest = nullptr;
  REQUIRE(route_layer(s, 0, req).groups[0].dest_rank_tokens.empty());
}

TEST_CASE("DeepEP normal matrices by hand: one RDMA row per (token, node), NVLink forwarding per rank",
          "[models][placement]") {
  // 2 nodes x 2 ranks, 4 experts (one per rank), top-2. Rank 0 (node 0, local 0) routes:
  //   token 0 -> experts 2, 3 (both on node 1): 1 RDMA row to rank 2 (node 1, local 0), which
  //              keeps its row and forwards one to rank 3;
  //   token 1 -> experts 0, 3: a local row (0 -> 0) and 1 RDMA row to rank 2, forwarded to 3;
  //   token 2 -> experts 1, 2: an NVLink row 0 -> 1 and 1 RDMA row to rank 2 (its own).
  const Placement pl = place_contiguous(4, 4);
  DestinationMap map;
  map.replicas = &pl.replicas;
  map.nodes = 2;
  map.node_of_rank = {0, 0, 1, 1};
  LayerRouting l;
  for (int gi = 0; gi < 4; ++gi) {
    GroupRouting g;
    g.tokens = 3;
    g.top_k = 2;
    g.capacity = kDropless;
    if (gi == 0) {
      g.expert = {2, 3, 0, 3, 1, 2};
    } else {
      g.expert = {-1, -1, -1, -1, -1, -1};
    }
    g.keep.assign(6, 1);
    g.kept.assign(4, 0);
    for (int e : g.expert)
      if (e >= 0) ++g.kept[static_cast<std::size_t>(e)];
    g.routed = g.kept;
    moesim::models::detail::count_destinations(map, 4, gi, g);
    l.groups.push_back(g);
  }
  REQUIRE(l.groups[0].dest_node_tokens == std::vector<std::int64_t>{2, 3});
  REQUIRE(l.groups[0].dest_rank_tokens == std::vector<std::int64_t>{1, 1, 2, 2});
  ByteMatrixOptions opt;
  opt.hidden = 128;
  opt.dispatch = WireFormat::kBf16;
  opt.combine = WireFormat::kBf16;
  const DispatchMatrices m = build_deepep_normal_matrices(l, pl, opt, map.node_of_rank, {0, 1, 0, 1});
  const auto rows = [&](int s, int d) { return m.dispatch_rows[static_cast<std::size_t>(s * 4 + d)]; };
  REQUIRE(rows(0, 0) == 1);  // token 1's own expert
  REQUIRE(rows(0, 1) == 1);  // token 2, NVLink
  REQUIRE(rows(0, 2) == 3);  // RDMA: tokens 0, 1, 2 once each to node 1
  REQUIRE(rows(0, 3) == 0);  // never RDMA to a non-relay rank
  REQUIRE(rows(2, 3) == 2);  // forwarded: tokens 0 and 1
  REQUIRE(rows(1, 2) == 0);
  // The per-(token, expert) matrix sends 4 rows across nodes instead of 3.
  const DispatchMatrices a2a = build_dispatch_matrices(l, pl, opt);
  REQUIRE(a2a.at(a2a.dispatch_bytes, 0, 2) + a2a.at(a2a.dispatch_bytes, 0, 3) == 4u * 256u);
  REQUIRE(m.at(m.dispatch_bytes, 0, 2) + m.at(m.dispatch_bytes, 0, 3) == 3u * 256u);
  // Combine is the transpose, and the expert rows computed are the kept assignments.
  REQUIRE(m.at(m.combine_bytes, 2, 0) == 3u * 256u);
  REQUIRE(m.rank_rows == std::vector<std::int64_t>{1, 1, 2, 2});
  // Without destination counts the builder refuses.
  LayerRouting bare = l;
  bare.groups[1].dest_rank_tokens.clear();
  REQUIRE_THROWS(build_deepep_normal_matrices(bare, pl, opt, map.node_of_rank, {0, 1, 0, 1}));
}
