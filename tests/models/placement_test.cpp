#include <catch2/catch.hpp>

#include <set>

#include "models/placement.hpp"

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
