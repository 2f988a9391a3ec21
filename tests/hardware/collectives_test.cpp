// Closed forms for collectives on built topologies, determinism, and the incremental solver
// against full re-solves.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include "hardware/collectives.hpp"
#include "hardware/memory.hpp"
#include "hardware/topology.hpp"
#include "sim/rng.hpp"

using namespace moesim;
using namespace moesim::hw;
using namespace moesim::sim::literals;
using sim::duration_for;
using sim::SimTime;

namespace {
constexpr double kMiB = 1048576.0;

ClusterSpec cluster(int nodes, InterFabric fabric) {
  ClusterSpec s;
  s.gpu.name = "test-gpu";
  s.gpu.pcie_bandwidth = 64e9;
  s.nodes = nodes;
  s.gpus_per_node = 8;
  s.intra.fabric = IntraFabric::kNvswitch;
  s.intra.bandwidth = 450e9;
  s.intra.latency = 1_us;
  s.inter.fabric = fabric;
  s.inter.nic_bandwidth = 50e9;
  s.inter.nics_per_node = 8;
  s.inter.latency = 2_us;
  s.inter.efficiency = 1.0;
  return s;
}
}  // namespace

TEST_CASE("all-to-all on 8 GPUs over NVSwitch equals bytes per GPU / per-direction bandwidth") {
  const Topology topo = build_topology(cluster(1, InterFabric::kSingleSwitch));
  REQUIRE(topo.gpu_count() == 8);
  const auto r =
      run_collective(topo, plan_all_to_allv(topo, all_gpus(topo), ByteMatrix(8, kMiB), CollectiveAlgo::kDirect));
  // Each GPU pushes 7 MiB through its 450 GB/s NVSwitch port; 7 equal flows share it.
  CHECK(r.time == duration_for(7 * kMiB, 450e9) + 1_us);
  CHECK(r.size_bytes == 8 * kMiB);
  CHECK(r.busbw == Approx(r.algbw * 7 / 8));
  // Per-link bytes: every GPU uplink carries 7 MiB.
  double total = 0;
  for (double b : r.per_link_bytes) total += b;
  CHECK(total == 8 * 7 * kMiB * 2);  // each flow crosses two links
}

TEST_CASE("all-to-all on 2x8 GPUs over NICs: the NIC is the bottleneck") {
  for (auto fabric : {InterFabric::kSingleSwitch, InterFabric::kRailFatTree, InterFabric::kFatTree}) {
    const Topology topo = build_topology(cluster(2, fabric));
    const auto r =
        run_collective(topo, plan_all_to_allv(topo, all_gpus(topo), ByteMatrix(16, kMiB), CollectiveAlgo::kDirect));
    // 8 remote destinations x 1 MiB through one 50 GB/s NIC (intra-node traffic finishes first).
    CHECK(r.time == duration_for(8 * kMiB, 50e9) + 2_us);
    CHECK(r.busbw == Approx(16 * kMiB / r.time.to_s() * 15 / 16));
    // Analytical model agrees here: every flow crosses a most-loaded link (its NIC).
    const auto a =
        run_collective(topo, plan_all_to_allv(topo, all_gpus(topo), ByteMatrix(16, kMiB), CollectiveAlgo::kDirect),
                       NetworkModel::kAnalytical);
    CHECK(a.time == r.time);
  }
}

TEST_CASE("hierarchical all-to-all on 2x8: NVLink gather then one exchange per rail") {
  const Topology topo = build_topology(cluster(2, InterFabric::kRailFatTree));
  const auto r =
      run_collective(topo, plan_all_to_allv(topo, all_gpus(topo), ByteMatrix(16, kMiB), CollectiveAlgo::kHierarchical));
  // Phase 1: each GPU sends 2 MiB (1 local + 1 for the remote GPU on that rail) to each of its
  // 7 peers over 450 GB/s. Phase 2: each GPU sends 8 MiB to its same-rail peer over 50 GB/s.
  CHECK(r.phases == 2);
  CHECK(r.time == duration_for(14 * kMiB, 450e9) + 1_us + duration_for(8 * kMiB, 50e9) + 2_us);
}

TEST_CASE("pipelined hierarchical all-to-all on 2x8: NVLink part c overlaps rail part c-1") {
  const Topology topo = build_topology(cluster(2, InterFabric::kRailFatTree));
  const ByteMatrix m(16, kMiB);
  const int K = 4;
  const auto plan = plan_all_to_allv(topo, all_gpus(topo), m, CollectiveAlgo::kHierarchical, K);
  REQUIRE(plan.phases.size() == K + 1);
  // The same bytes as the unpipelined plan, in quarters.
  const auto whole = plan_all_to_allv(topo, all_gpus(topo), m, CollectiveAlgo::kHierarchical);
  double a = 0, b = 0;
  for (const auto& ph : plan.phases)
    for (double x : ph.bytes) a += x;
  for (const auto& ph : whole.phases)
    for (double x : ph.bytes) b += x;
  CHECK(a == Approx(b).epsilon(1e-12));
  const auto r = run_collective(topo, plan);
  // NVLink part: 14/4 MiB per GPU port (t1); rail part: 8/4 MiB per NIC (t2). They use disjoint
  // links, so a middle phase takes max(t1, t2) = t2: total t1 + (K-1) t2 + t2.
  const SimTime t1 = duration_for(14 * kMiB / K, 450e9) + 1_us;
  const SimTime t2 = duration_for(8 * kMiB / K, 50e9) + 2_us;
  CHECK(r.time == t1 + t2 * K);
  // Shorter than the phases back to back, although every chunk pays the latencies again.
  const auto r1 = run_collective(topo, whole);
  CHECK(r.time < r1.time);
  // Chunks need the hierarchical algorithm.
  CHECK_THROWS_AS(plan_all_to_allv(topo, all_gpus(topo), m, CollectiveAlgo::kDirect, 2), std::invalid_argument);
}

TEST_CASE("ring all-reduce, all-gather and reduce-scatter on one NVSwitch node") {
  const Topology topo = build_topology(cluster(1, InterFabric::kSingleSwitch));
  const double S = 64 * kMiB;
  // Each ring step: every GPU sends S/8 to its successor, one flow per port.
  const SimTime step = duration_for(S / 8, 450e9) + 1_us;
  const auto ar = run_collective(topo, plan_all_reduce(topo, all_gpus(topo), S, CollectiveAlgo::kRing));
  CHECK(ar.time == step * 14);
  CHECK(ar.busbw == Approx(S / ar.time.to_s() * 2 * 7 / 8));
  const auto ag = run_collective(topo, plan_all_gather(topo, all_gpus(topo), S));
  CHECK(ag.time == step * 7);
  const auto rs = run_collective(topo, plan_reduce_scatter(topo, all_gpus(topo), S));
  CHECK(rs.time == step * 7);
  const auto sr = run_collective(topo, plan_send_recv(topo, 0, 5, S));
  CHECK(sr.time == duration_for(S, 450e9) + 1_us);
  CHECK(sr.busbw == Approx(sr.algbw));
  // Tree: depth 3 for 8 ranks; the root's port carries 2 broadcast flows (S each) while each
  // leaf's carries one reduce flow; a middle GPU's port carries reduce + 2 broadcasts = 3 S.
  const auto tr = run_collective(topo, plan_all_reduce(topo, all_gpus(topo), S, CollectiveAlgo::kTree));
  CHECK(tr.time >= duration_for(3 * S, 450e9) + 1_us);
}

TEST_CASE("a ring plan stores its phase once; both network models run it 2(n-1) times", "[collectives]") {
  const Topology topo = build_topology(cluster(2, InterFabric::kRailFatTree));
  const double S = 16 * kMiB;
  const int n = topo.gpu_count();
  const CollectivePlan plan = plan_all_reduce(topo, all_gpus(topo), S, CollectiveAlgo::kRing);
  REQUIRE(plan.phases.size() == 1);
  REQUIRE(plan.repeat.size() == 1);
  CHECK(plan.repeat[0] == static_cast<std::uint32_t>(2 * (n - 1)));
  CHECK(plan.phase_count() == static_cast<std::size_t>(2 * (n - 1)));
  CollectiveOptions opts;
  opts.launch_overhead = 5_us;
  opts.step_overhead = 3_us;
  const CollectiveResult flow = run_collective(topo, plan, NetworkModel::kFlow, opts);
  const CollectiveResult ana = run_collective(topo, plan, NetworkModel::kAnalytical, opts);
  CHECK(flow.phases == 2 * (n - 1));
  CHECK(ana.phases == 2 * (n - 1));
  // One phase alone, then the repeats: time = launch + k x phase + (k - 1) x step overhead.
  CollectivePlan one = plan;
  one.repeat[0] = 1;
  const CollectiveResult single = run_collective(topo, one, NetworkModel::kFlow, opts);
  const std::int64_t k = 2 * (n - 1);
  const SimTime phase = single.time - opts.launch_overhead;
  CHECK(flow.time == opts.launch_overhead + phase * k + opts.step_overhead * (k - 1));
  // A ring is a case where the analytical model is exact (every flow crosses an equally loaded
  // bottleneck).
  CHECK(ana.time == flow.time);
  // Every link carries k times what it carries in one phase, on both models.
  const CollectiveResult ana_one = run_collective(topo, one, NetworkModel::kAnalytical, opts);
  double moved = 0;
  for (std::size_t l = 0; l < topo.link_count(); ++l) {
    CHECK(flow.per_link_bytes[l] == Approx(ana_one.per_link_bytes[l] * static_cast<double>(k)));
    CHECK(ana.per_link_bytes[l] == flow.per_link_bytes[l]);
    moved += ana.per_link_bytes[l];
  }
  CHECK(moved > 0);
  // A plan whose repeat counts do not match its phases is a programming error, not a silent run.
  CollectivePlan broken = plan;
  broken.repeat.clear();
  CHECK_THROWS_AS(run_collective(topo, broken, NetworkModel::kAnalytical, opts), std::logic_error);
  CHECK_THROWS_AS(run_collective(topo, broken, NetworkModel::kFlow, opts), std::logic_error);
}

TEST_CASE("same scenario twice gives identical completion times; incremental equals full re-solves") {
  const Topology topo = build_topology(cluster(4, InterFabric::kRailFatTree));
  const int n = topo.gpu_count();
  ByteMatrix m(n);
  sim::Rng rng(7, "test.matrix");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) m.at(i, j) = i == j ? 0 : std::floor(1 + rng.uniform01() * 4e6);
  auto run = [&](bool incremental) {
    sim::Simulation s;
    FlowNetwork net(s);
    net.set_incremental(incremental);
    topo.install(net);
    const auto plan = plan_all_to_allv(topo, all_gpus(topo), m, CollectiveAlgo::kDirect);
    const auto b = net.start(plan.phases[0], [] {});
    s.run();
    std::vector<SimTime> t;
    for (std::size_t i = 0; i < plan.phases[0].size(); ++i) t.push_back(net.flow_done_time(b, i));
    return std::make_pair(t, net.stats());
  };
  const auto [a, sa] = run(true);
  const auto [b, sb] = run(true);
  CHECK(a == b);
  const auto [full, sf] = run(false);
  REQUIRE(full.size() == a.size());
  CHECK(sa.skipped_solves + sa.partial_solves > 0);
  CHECK(sf.partial_solves == 0);
  std::size_t differ = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    // Rates are doubles; the two solvers may round the last bit differently.
    CHECK(std::llabs(a[i].ps() - full[i].ps()) <= std::max<std::int64_t>(2, full[i].ps() / 1'000'000'000));
    differ += a[i] != full[i];
  }
  INFO("flows whose completion differs by rounding: " << differ);
  CHECK(differ <= a.size() / 10);
}

TEST_CASE("topology: connectivity, routes, dot output") {
  ClusterSpec s = cluster(2, InterFabric::kRailFatTree);
  const Topology topo = build_topology(s);
  CHECK_FALSE(topo.connectivity_problem());
  std::vector<LinkId> path;
  topo.route(0, 9, 123, path);  // gpu0 (rail 0) -> gpu9 (node 1, rail 1): via a spine
  CHECK(path.size() == 6);
  CHECK(topo.link_name(path.front()) == "gpu0->node0.nic0");
  CHECK(topo.link_name(path.back()) == "node1.nic1->gpu9");
  path.clear();
  topo.route(0, 3, 1, path);  // same node: NVSwitch, never through another GPU
  CHECK(path.size() == 2);
  std::ostringstream dot;
  topo.write_dot(dot);
  CHECK(dot.str().find("digraph") == 0);
  CHECK(dot.str().find("cluster_node1") != std::string::npos);

  // Two nodes with no inter-node fabric described: not connected.
  ClusterSpec e = s;
  e.inter.fabric = InterFabric::kExplicit;
  const Topology broken = build_topology(e);
  REQUIRE(broken.connectivity_problem());
  CHECK(broken.connectivity_problem()->find("cannot reach") != std::string::npos);
}

TEST_CASE("topology: component-based connectivity check agrees with one search per destination", "[topology]") {
  // Random explicit graphs (one-way and duplex links, GPUs, switches, nodes with and without an
  // intra-node fabric): the O(V + E) check must name the same first failing pair as the
  // exhaustive breadth-first reference, and agree when everything connects.
  int disconnected = 0, connected = 0;
  for (std::uint64_t seed = 1; seed <= 400; ++seed) {
    moesim::sim::Rng rng(seed, 7);
    ClusterSpec s = cluster(1, InterFabric::kExplicit);
    s.gpus_per_node = 1 + static_cast<int>(rng.uniform_int(2));
    s.nodes = 2 + static_cast<int>(rng.uniform_int(4));
    s.intra.fabric = rng.uniform_int(2) == 0 ? IntraFabric::kNvswitch : IntraFabric::kNvlinkMesh;
    const int switches = static_cast<int>(rng.uniform_int(5));
    for (int k = 0; k < switches; ++k) s.explicit_switches.push_back(fmt::format("sw{}", k));
    const int total = s.nodes * s.gpus_per_node;
    auto vertex = [&](std::uint64_t i) {
      return i < static_cast<std::uint64_t>(total) ? fmt::format("gpu{}", i) : fmt::format("sw{}", i - total);
    };
    const auto nvert = static_cast<std::uint64_t>(total + switches);
    const int links =
        total + switches + static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(4 * (total + switches))));
    for (int k = 0; k < links; ++k) {
      ExplicitLink l;
      l.from = vertex(rng.uniform_int(nvert));
      l.to = vertex(rng.uniform_int(nvert));
      if (l.from == l.to) continue;
      l.bandwidth = 1e9;
      l.duplex = rng.uniform_int(3) == 0;
      s.explicit_links.push_back(l);
    }
    const Topology t = build_topology(s);
    const auto fast = t.connectivity_problem();
    const auto ref = t.connectivity_problem_exhaustive();
    INFO("seed " << seed);
    REQUIRE(fast.has_value() == ref.has_value());
    if (ref) {
      CHECK(*fast == *ref);
      ++disconnected;
    } else {
      ++connected;
    }
  }
  // Both outcomes must be exercised, or the comparison proves little.
  INFO("connected " << connected << " disconnected " << disconnected);
  CHECK(disconnected > 20);
  CHECK(connected > 20);
  for (auto fabric : {InterFabric::kRailFatTree, InterFabric::kFatTree, InterFabric::kSingleSwitch}) {
    const Topology t = build_topology(cluster(4, fabric));
    CHECK_FALSE(t.connectivity_problem());
    CHECK_FALSE(t.connectivity_problem_exhaustive());
  }
}

TEST_CASE("memory ledger: peak, categories, fits") {
  MemoryLedger mem(2, 80.0 * (1 << 30));
  mem.alloc_all(MemCategory::kWeights, 30.0 * (1 << 30));
  mem.alloc(1, MemCategory::kActivations, 40.0 * (1 << 30));
  mem.free(1, MemCategory::kActivations, 40.0 * (1 << 30));
  mem.alloc(1, MemCategory::kKvCache, 10.0 * (1 << 30));
  CHECK(mem.peak(0) == 30.0 * (1 << 30));
  CHECK(mem.peak(1) == 70.0 * (1 << 30));
  CHECK(mem.in_use(1) == 40.0 * (1 << 30));
  CHECK(mem.at_peak(1)[static_cast<std::size_t>(MemCategory::kActivations)] == 40.0 * (1 << 30));
  CHECK(mem.max_peak_gpu() == 1);
  CHECK(mem.fits());
  mem.alloc(0, MemCategory::kOptimizer, 60.0 * (1 << 30));
  CHECK_FALSE(mem.fits());
  CHECK_THROWS_AS(mem.free(0, MemCategory::kGradients, 1), MemoryAccountingError);
}

TEST_CASE("a single-GPU cluster has a topology without links and trivial collectives", "[collectives][topology]") {
  // Regression: the route CSR was never built for a graph with zero links (segfault).
  ClusterSpec s = cluster(1, InterFabric::kRailFatTree);
  s.gpus_per_node = 1;
  const Topology t = build_topology(s);
  REQUIRE_FALSE(t.connectivity_problem().has_value());
  const CollectiveResult r = run_collective(t, plan_all_reduce(t, all_gpus(t), 1 << 20, CollectiveAlgo::kRing));
  REQUIRE(r.time == moesim::sim::SimTime::zero());
}
