// Hand-solved max-min cases for the flow network. Every expected value is derived in the
// comment above it from the max-min definition, not taken from a run.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <vector>

#include "hardware/flow_network.hpp"
#include "sim/simulation.hpp"

using namespace moesim;
using namespace moesim::sim::literals;
using hw::FlowBatch;
using hw::FlowNetwork;
using hw::LinkId;
using sim::SimTime;

namespace {
SimTime ps(std::int64_t v) { return SimTime::from_ps(v); }
}  // namespace

TEST_CASE("two flows on one link share it equally, then the survivor takes it all") {
  sim::Simulation s;
  FlowNetwork net(s);
  const LinkId l = net.add_link(1e9, 1_us);
  FlowBatch b;
  b.add(std::vector<LinkId>{l}, 1e6);
  b.add(std::vector<LinkId>{l}, 3e6);
  bool done = false;
  const auto id = net.start(std::move(b), [&] { done = true; });
  s.run();
  s.check_drained();
  REQUIRE(done);
  // Both at 0.5e9 B/s: flow 0 drains 1e6 B in 2 ms. Flow 1 then has 2e6 B left at 1e9 B/s: 2 ms
  // more. Latency 1 us is added at the end.
  CHECK(net.flow_done_time(id, 0) == 2_ms + 1_us);
  CHECK(net.flow_done_time(id, 1) == 4_ms + 1_us);
  CHECK(net.batch_done_time(id) == 4_ms + 1_us);
}

TEST_CASE("bottleneck shared by flows of different path lengths (rates change mid-flight)") {
  // L1 = 1e9 B/s carries A (L1+L2) and B (L1 only); L2 = 3e9 B/s carries A and C (L2 only).
  // Filling: L1's share 0.5e9 < L2's 1.5e9, so A = B = 0.5e9 and C = 3e9 - 0.5e9 = 2.5e9.
  // B (1e6 B) drains at 2 ms. Then L1 holds only A: A = 1e9, C = 2e9.
  // A had 1e6 B left at 2 ms -> drains at 3 ms. C had 8e6 - 5e6 = 3e6 left at 2 ms, 2e6 sent by
  // 3 ms, then alone on L2 at 3e9: 1e6 B in 1/3 ms -> 3 ms + ceil(333333333.3) ps.
  sim::Simulation s;
  FlowNetwork net(s);
  const LinkId l1 = net.add_link(1e9, SimTime{});
  const LinkId l2 = net.add_link(3e9, SimTime{});
  for (bool incremental : {true, false}) {
    net.set_incremental(incremental);
    FlowBatch b;
    b.add(std::vector<LinkId>{l1, l2}, 2e6);
    b.add(std::vector<LinkId>{l1}, 1e6);
    b.add(std::vector<LinkId>{l2}, 8e6);
    const SimTime t0 = s.now();
    const auto id = net.start(std::move(b), [] {});
    s.run();
    CHECK(net.flow_done_time(id, 1) - t0 == 2_ms);
    CHECK(net.flow_done_time(id, 0) - t0 == 3_ms);
    CHECK(net.flow_done_time(id, 2) - t0 == 3_ms + ps(333333334));
  }
}

TEST_CASE("oversubscribed uplink: remote flows split the uplink, a local flow takes the rest") {
  // Four hosts h0..h3 under one leaf, each host uplink 1e9 B/s; the leaf's uplink is 1e9 B/s
  // (4:1 oversubscribed). h0..h3 each send 1e6 B to a remote host (distinct remote downlinks of
  // 1e9 B/s), and h0 also sends 1e6 B to h1 locally (h0 up, h1 down).
  // Filling: uplink share 0.25e9 is the smallest -> the four remote flows get 0.25e9 each.
  // h0's uplink then has 0.75e9 left for the local flow.
  // Local: ceil(1e6 / 0.75e9 s) = 1333333334 ps. Remote: 1e6 / 0.25e9 = 4 ms, unchanged when
  // the local flow leaves (their bottleneck, the uplink, is not on the local flow's path).
  sim::Simulation s;
  FlowNetwork net(s);
  std::vector<LinkId> up, down, rdown;
  for (int i = 0; i < 4; ++i) up.push_back(net.add_link(1e9, SimTime{}));
  for (int i = 0; i < 4; ++i) down.push_back(net.add_link(1e9, SimTime{}));
  for (int i = 0; i < 4; ++i) rdown.push_back(net.add_link(1e9, SimTime{}));
  const LinkId uplink = net.add_link(1e9, SimTime{});
  FlowBatch b;
  for (int i = 0; i < 4; ++i) b.add(std::vector<LinkId>{up[i], uplink, rdown[i]}, 1e6);
  b.add(std::vector<LinkId>{up[0], down[1]}, 1e6);
  const auto id = net.start(std::move(b), [] {});
  s.run();
  for (int i = 0; i < 4; ++i) CHECK(net.flow_done_time(id, i) == 4_ms);
  CHECK(net.flow_done_time(id, 4) == ps(1333333334));
  CHECK(net.stats().full_solves == 1);
  CHECK(net.stats().partial_solves == 0);
}

TEST_CASE("crossing traffic in a two-level fat tree") {
  // Leaves A and B, spines S0 and S1; every cable is two links of 1e9 B/s. Hosts a0, a1 under
  // A; b0, b1 under B. ECMP has put a0->b0 and a1->b1 on S0 (collision on A->S0 and S0->B),
  // a0->b1 on S1, and b0->a1 on S1 in the opposite direction (crossing, reverse links).
  // Links: a0 up carries {a0b0, a0b1}: share 0.5e9; A->S0 carries {a0b0, a1b1}: 0.5e9;
  // S0->B {a0b0, a1b1}; b1 down {a1b1, a0b1}: 0.5e9. All at 0.5e9 except b0a1, which is
  // alone on its links: 1e9.
  // Sizes: a0b0 1e6, a1b1 2e6, a0b1 2e6, b0a1 1e6.
  // t=1 ms: a0b0 and b0a1 drain together. Then a0 up holds a0b1 only, A->S0 holds a1b1 only,
  // b1 down holds both -> a1b1 = a0b1 = 0.5e9 still (b1 down). They drain at 2e6/0.5e9 = 4 ms.
  sim::Simulation s;
  FlowNetwork net(s);
  auto L = [&] { return net.add_link(1e9, SimTime{}); };
  const LinkId a0_up = L(), a1_up = L(), b0_up = L(), b1_up = L();
  const LinkId a0_dn = L(), a1_dn = L(), b0_dn = L(), b1_dn = L();
  const LinkId A_S0 = L(), A_S1 = L(), B_S0 = L(), B_S1 = L();
  const LinkId S0_A = L(), S1_A = L(), S0_B = L(), S1_B = L();
  (void)b1_up;
  (void)a0_dn;
  (void)B_S0;
  (void)S0_A;
  FlowBatch b;
  b.add(std::vector<LinkId>{a0_up, A_S0, S0_B, b0_dn}, 1e6);
  b.add(std::vector<LinkId>{a1_up, A_S0, S0_B, b1_dn}, 2e6);
  b.add(std::vector<LinkId>{a0_up, A_S1, S1_B, b1_dn}, 2e6);
  b.add(std::vector<LinkId>{b0_up, B_S1, S1_A, a1_dn}, 1e6);
  const auto id = net.start(std::move(b), [] {});
  s.run();
  CHECK(net.flow_done_time(id, 0) == 2_ms);
  CHECK(net.flow_done_time(id, 3) == 1_ms);
  CHECK(net.flow_done_time(id, 1) == 4_ms);
  CHECK(net.flow_done_time(id, 2) == 4_ms);
}

#include <algorithm>
#include <cstdlib>

#include "coupled_rails.hpp"
#include "hardware/topology.hpp"
#include "sim/rng.hpp"

namespace {
using test::coupled_rails;

/// Runs one skewed all-to-allv among 4 nodes x 8 GPUs (NVSwitch + rail fat tree with two
/// 2-node leaves per rail, so spine ECMP collisions happen) and returns every flow's completion.
std::vector<SimTime> skewed_completions(bool incremental, std::uint64_t seed, hw::FlowNetworkStats* stats = nullptr) {
  const hw::Topology topo = hw::build_topology(coupled_rails());
  sim::Simulation s;
  FlowNetwork net(s);
  topo.install(net);
  net.set_incremental(incremental);
  sim::Rng rng(seed, "test.flow_network.skew");
  // Power-law-ish sizes: a few hot destinations, many small transfers, some equal sizes.
  const int n = topo.gpu_count();
  std::vector<double> hot(static_cast<std::size_t>(n));
  for (auto& h : hot) h = 1.0 / (1.0 + static_cast<double>(rng.uniform_int(16)));
  FlowBatch b;
  std::vector<LinkId> path;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      if (i == j) continue;
      path.clear();
      topo.route(i, j, (static_cast<std::uint64_t>(i) << 32) | static_cast<std::uint64_t>(j), path);
      const double bytes = std::floor(hot[static_cast<std::size_t>(j)] * (1 + rng.uniform_int(64)) * 7168.0 * 32);
      b.add(path, bytes);
    }
  const std::size_t flows = b.size();
  const auto id = net.start(std::move(b), [] {});
  // A second, later collective overlaps the first, so arrivals during departures are covered.
  FlowBatch b2;
  for (int i = 0; i < n; i += 3) {
    path.clear();
    topo.route(i, (i + 9) % n, 7, path);
    b2.add(path, 1e6 * (1 + static_cast<double>(rng.uniform_int(4))));
  }
  const std::size_t flows2 = b2.size();
  hw::BatchId id2 = 0;
  s.schedule_at(SimTime::from_ps(20'000'000), [&] { id2 = net.start(std::move(b2), [] {}); });
  s.run();
  s.check_drained();
  if (stats != nullptr) *stats = net.stats();
  std::vector<SimTime> out;
  for (std::size_t i = 0; i < flows; ++i) out.push_back(net.flow_done_time(id, i));
  for (std::size_t i = 0; i < flows2; ++i) out.push_back(net.flow_done_time(id2, i));
  return out;
}
}  // namespace

TEST_CASE("incremental re-solves match a full re-solve at every event on a skewed workload") {
  // The reference re-runs progressive filling over every active flow at every start and
  // finish. Incremental updates (re-levelling the changed rate groups, or a re-solve from the
  // threshold rho) start from residual capacities that the unchanged flows leave
  // (capacity - used + own rates, with used updated by differences), so a rate may differ from
  // the reference in its last bits; a completion can then round to the neighbouring picosecond,
  // and the next event happens 1 ps earlier or later. Bit-identity would need order-independent
  // (e.g. fixed-point) residual arithmetic; the observed drift is at most 1 ps on these seeds,
  // and the test is deterministic. Anything wrong in the choice of flows to re-solve, or a
  // re-levelling accepted although the groups changed, shows up as microseconds.
  // Both incremental paths (and the in-place regrouping of the re-levelling path) must have been
  // taken, or the comparison would test less than it says.
  std::uint64_t fast = 0, partial = 0, repairs = 0;
  // Seeds 42, 92, 149, 223 and 248 (from a sweep of 4..299) once failed by 2.7 ns to 1.7 us:
  // a flow that remembered a link without a group as its bottleneck kept its rate after that
  // link's use changed.
  // MOESIM_FLOW_SWEEP=N runs seeds 1..N instead (an exploratory sweep, minutes).
  std::vector<std::uint64_t> seeds = {1, 2, 3, 42, 92, 149, 223, 248};
  if (const char* sw = std::getenv("MOESIM_FLOW_SWEEP"); sw != nullptr) {
    seeds.clear();
    for (std::uint64_t k = 1; k <= std::strtoull(sw, nullptr, 10); ++k) seeds.push_back(k);
  }
  for (std::uint64_t seed : seeds) {
    hw::FlowNetworkStats st;
    const auto inc = skewed_completions(true, seed, &st);
    fast += st.fast_solves;
    partial += st.partial_solves;
    repairs += st.repairs;
    const auto ref = skewed_completions(false, seed);
    REQUIRE(inc.size() == ref.size());
    std::int64_t worst = 0;
    std::size_t exact = 0;
    for (std::size_t i = 0; i < inc.size(); ++i) {
      REQUIRE(inc[i] != SimTime::max());
      worst = std::max(worst, std::abs((inc[i] - ref[i]).ps()));
      exact += inc[i] == ref[i] ? 1 : 0;
    }
    INFO("seed " << seed << ": " << exact << " of " << inc.size() << " identical, worst " << worst << " ps");
    CHECK(worst <= 1);
  }
  INFO("fast " << fast << ", partial " << partial << ", repairs " << repairs);
  CHECK(fast > 0);
  CHECK(partial > 0);
  CHECK(repairs > 0);  // in-place regrouping (flows moved, groups created) was exercised
}

namespace {
/// Collectives that start one after another into a loaded coupled_rails() cluster: each start
/// is an arrival while other flows run.
std::vector<SimTime> staggered_completions(bool incremental, std::uint64_t seed, hw::FlowNetworkStats* stats) {
  const hw::Topology topo = hw::build_topology(coupled_rails());
  sim::Simulation s;
  FlowNetwork net(s);
  topo.install(net);
  net.set_incremental(incremental);
  sim::Rng rng(seed, "test.flow_network.staggered");
  const int n = topo.gpu_count();
  std::vector<hw::BatchId> ids(26);
  std::vector<std::size_t> sizes(ids.size());
  std::vector<LinkId> path;
  for (std::size_t k = 0; k < ids.size(); ++k) {
    // Two long-lived background exchanges at t = 0 (every GPU to two GPUs of other nodes), then
    // small ones (a few sources to random destinations) at random instants in the first 60 us.
    FlowBatch b;
    const auto add = [&](int i, int j, double bytes) {
      path.clear();
      topo.route(i, j, (static_cast<std::uint64_t>(i) << 32) | static_cast<std::uint64_t>(j), path);
      b.add(path, bytes);
    };
    SimTime at{};
    if (k < 2) {
      for (int i = 0; i < n; ++i)
        add(i, (i + 8 + 9 * static_cast<int>(k)) % n, 2e6 * static_cast<double>(1 + rng.uniform_int(4)));
    } else {
      for (int src = 0; src < 3; ++src) {
        const int i = static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(n)));
        for (int d = 0; d < 6; ++d) {
          const int j = static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(n)));
          if (j != i) add(i, j, 1e5 * static_cast<double>(1 + rng.uniform_int(40)));
        }
      }
      at = SimTime::from_ps(static_cast<std::int64_t>(rng.uniform_int(60'000'000)));
    }
    sizes[k] = b.size();
    s.schedule_at(at, [&, k, b = std::move(b)]() mutable { ids[k] = net.start(std::move(b), [] {}); });
  }
  s.run();
  s.check_drained();
  *stats = net.stats();
  std::vector<SimTime> out;
  for (std::size_t k = 0; k < ids.size(); ++k)
    for (std::size_t i = 0; i < sizes[k]; ++i) out.push_back(net.flow_done_time(ids[k], i));
  return out;
}
}  // namespace

TEST_CASE("arrivals solved locally (ArrivalSolve) match a full re-solve") {
  // An arrival re-solves only the new flows and the groups they touch, growing the set while a
  // bottleneck condition of the others fails; the reference re-solves every flow at every event.
  // Same 1 ps bound as above (residuals carry rounding); a wrong set shows up as microseconds.
  std::uint64_t local = 0, regrows = 0, fallback = 0;
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    hw::FlowNetworkStats st, st_ref;
    const auto inc = staggered_completions(true, seed, &st);
    const auto ref = staggered_completions(false, seed, &st_ref);
    local += st.arrival_solves;
    regrows += st.arrival_regrows;
    fallback += st.full_solves;
    REQUIRE(inc.size() == ref.size());
    std::int64_t worst = 0;
    for (std::size_t i = 0; i < inc.size(); ++i) {
      REQUIRE(inc[i] != SimTime::max());
      worst = std::max(worst, std::abs((inc[i] - ref[i]).ps()));
    }
    INFO("seed " << seed << ": worst " << worst << " ps");
    CHECK(worst <= 1);
  }
  INFO("local " << local << ", regrows " << regrows << ", full " << fallback);
  CHECK(local > 0);
  CHECK(regrows > 0);  // the set-growing path ran
}

TEST_CASE("processor sharing on one link: many staggered finishes (heap and link-list compaction)") {
  // n flows of k x 1e6 B (k = 1..n) share one 1e9 B/s link. Between the (k-1)-th and the k-th
  // finish, n-k+1 flows each receive 1e6 B at 1e9/(n-k+1) B/s, i.e. (n-k+1) ms, so flow k
  // finishes at sum_{j=1..k} (n-j+1) ms. With n = 200 there are 20,100 rate changes, enough
  // to compact both the drain heap (stale entries > 3 x active + 1024) and the link's flow list.
  // Rates like 1e9/7 are not exact in binary, so the remaining bytes carry rounding: allow 1 ps.
  const int n = 200;
  for (bool incremental : {true, false}) {
    sim::Simulation s;
    FlowNetwork net(s);
    net.set_incremental(incremental);
    const LinkId l = net.add_link(1e9, SimTime{});
    FlowBatch b;
    for (int k = n; k >= 1; --k) b.add(std::vector<LinkId>{l}, k * 1e6);  // reversed: order must not matter
    const auto id = net.start(std::move(b), [] {});
    s.run();
    s.check_drained();
    std::int64_t expect_ms = 0;
    for (int k = 1; k <= n; ++k) {
      expect_ms += n - k + 1;
      const SimTime got = net.flow_done_time(id, static_cast<std::size_t>(n - k));
      INFO("k=" << k << " incremental=" << incremental);
      CHECK(std::abs((got - SimTime::from_ps(expect_ms * 1'000'000'000)).ps()) <= 1);
    }
    CHECK(net.active_flows() == 0);
  }
}

TEST_CASE("a departure that regroups flows is repaired in place (a flow moves to another link's group)") {
  // A = 2e9 B/s carries x (A) and y (A+B); B = 2.4e9 B/s carries y, z1, z2 (B only).
  // Filling: B's share 0.8e9 < A's 1e9, so y = z1 = z2 = 0.8e9 (one group at B) and x = 1.2e9.
  // z1 (0.8e6 B) drains at 1 ms. Then A's share (x, y) is 1e9 < B's (y, z2) 1.2e9: A freezes
  // x = y = 1e9 and z2 = 2.4e9 - 1e9 = 1.4e9. y changed bottleneck (B -> A): the grouping changed.
  // y: 0.8e6 by 1 ms + 1e6 -> 1.8e6 B drains at 2 ms. Then x = 2e9, z2 = 2.4e9.
  // x: 1.2e6 + 1e6 by 2 ms, 2e6 more at 2e9 -> 4.2e6 B drains at 3 ms.
  // z2: 0.8e6 + 1.4e6 by 2 ms, 1.4e6 more at 2.4e9 = 583333333.3 ps -> 2 ms + 583333334 ps.
  // All rates are integers of B/s, so the arithmetic is exact.
  for (bool incremental : {true, false}) {
    sim::Simulation s;
    FlowNetwork net(s);
    net.set_incremental(incremental);
    const LinkId a = net.add_link(2e9, SimTime{});
    const LinkId b = net.add_link(2.4e9, SimTime{});
    FlowBatch fb;
    fb.add(std::vector<LinkId>{a}, 4.2e6);     // x
    fb.add(std::vector<LinkId>{a, b}, 1.8e6);  // y
    fb.add(std::vector<LinkId>{b}, 0.8e6);     // z1
    fb.add(std::vector<LinkId>{b}, 3.6e6);     // z2
    const auto id = net.start(std::move(fb), [] {});
    s.run();
    INFO("incremental=" << incremental);
    CHECK(net.flow_done_time(id, 2) == 1_ms);
    CHECK(net.flow_done_time(id, 1) == 2_ms);
    CHECK(net.flow_done_time(id, 0) == 3_ms);
    CHECK(net.flow_done_time(id, 3) == 2_ms + ps(583333334));
    if (incremental) {  // settled by moving y in place, not by a re-solve
      CHECK(net.stats().partial_solves == 0);
      CHECK(net.stats().repairs >= 1);
    }
  }
}

TEST_CASE("a departure that fills a link without a group gives it a new group in place") {
  // A = 1e9 carries a1 (A+C) and a2 (A); D = 1e9 carries c1 (C+D) and d1 (D); C = 1.4e9 carries
  // a1 and c1. Filling: A and D have share 0.5e9, C 0.7e9: a1 = a2 = c1 = d1 = 0.5e9, and C
  // (1e9 used) has no group. a2 (0.5e6 B) drains at 1 ms. Then A's share is 1e9, C's (a1 alone
  // after c1 froze at D) 1.4e9 - 0.5e9 = 0.9e9: C freezes a1 at 0.9e9 (A stays below capacity).
  // a1: 0.5e6 + 0.9e6 -> 1.4e6 B drains at 2 ms. c1, d1 stay at 0.5e9 (D): 1.5e6 B drain at 3 ms.
  for (bool incremental : {true, false}) {
    sim::Simulation s;
    FlowNetwork net(s);
    net.set_incremental(incremental);
    const LinkId a = net.add_link(1e9, SimTime{});
    const LinkId c = net.add_link(1.4e9, SimTime{});
    const LinkId d = net.add_link(1e9, SimTime{});
    FlowBatch fb;
    fb.add(std::vector<LinkId>{a, c}, 1.4e6);  // a1
    fb.add(std::vector<LinkId>{a}, 0.5e6);     // a2
    fb.add(std::vector<LinkId>{c, d}, 1.5e6);  // c1
    fb.add(std::vector<LinkId>{d}, 1.5e6);     // d1
    const auto id = net.start(std::move(fb), [] {});
    s.run();
    INFO("incremental=" << incremental);
    CHECK(net.flow_done_time(id, 1) == 1_ms);
    CHECK(net.flow_done_time(id, 0) == 2_ms);
    CHECK(net.flow_done_time(id, 2) == 3_ms);
    CHECK(net.flow_done_time(id, 3) == 3_ms);
    if (incremental) {
      CHECK(net.stats().partial_solves == 0);
      CHECK(net.stats().repairs >= 1);
    }
  }
}
