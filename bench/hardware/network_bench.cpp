// Flow-model benchmark: one all-to-allv among 256 and 1,024 GPUs, uniform and skewed.
// Prints wall seconds for building the flows (routing) and for simulating them.
// Run on one core: taskset -c 0 build/bench/hardware/network_bench
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "hardware/collectives.hpp"
#include "hardware/topology.hpp"
#include "sim/rng.hpp"

using namespace moesim;
using namespace moesim::hw;

namespace {
ClusterSpec h100_cluster(int nodes) {
  ClusterSpec s;
  s.gpu.name = "h100-sxm";
  s.gpu.pcie_bandwidth = 64e9;
  s.nodes = nodes;
  s.gpus_per_node = 8;
  s.intra.fabric = IntraFabric::kNvswitch;
  s.intra.bandwidth = 450e9;
  s.intra.latency = sim::SimTime::from_ps(1'000'000);
  s.inter.fabric = InterFabric::kRailFatTree;
  s.inter.nic_bandwidth = 50e9;
  s.inter.efficiency = 0.97;
  s.inter.nics_per_node = 8;
  s.inter.latency = sim::SimTime::from_ps(2'000'000);
  s.inter.leaf_down_ports = 32;
  return s;
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void run_case(const char* name, const Topology& topo, const ByteMatrix& m) {
  const double t0 = now_s();
  CollectivePlan plan = plan_all_to_allv(topo, all_gpus(topo), m, CollectiveAlgo::kDirect);
  const std::size_t flows = plan.phases[0].size();
  const double t1 = now_s();
  sim::Simulation sim;
  FlowNetwork net(sim);
  topo.install(net);
  CollectiveEngine eng(sim, topo, net);
  const auto h = eng.start(std::move(plan));
  sim.run();
  const double t2 = now_s();
  const auto& r = eng.result(h);
  const auto& st = net.stats();
  std::printf(
      "%-28s flows=%-8zu route_s=%.3f simulate_s=%.3f total_s=%.3f | sim_time=%.3f us busbw=%.2f GB/s | "
      "drains=%llu full=%llu partial=%llu fast=%llu repairs=%llu skipped=%llu flows_resolved=%llu\n",
      name, flows, t1 - t0, t2 - t1, t2 - t0, r.time.to_us(), r.busbw / 1e9,
      static_cast<unsigned long long>(st.drain_events), static_cast<unsigned long long>(st.full_solves),
      static_cast<unsigned long long>(st.partial_solves), static_cast<unsigned long long>(st.fast_solves),
      static_cast<unsigned long long>(st.repairs), static_cast<unsigned long long>(st.skipped_solves),
      static_cast<unsigned long long>(st.flows_resolved));
  std::fflush(stdout);
}

/// Per-pair bytes from a power-law expert load: one expert per GPU with popularity
/// p_e ~ 1/(rank+1)^alpha (ranks shuffled), each source GPU routes `tokens` tokens to top_k
/// distinct-draw experts, `token_bytes` per routed token.
ByteMatrix skewed_matrix(int n, double alpha, int tokens, int top_k, double token_bytes, std::uint64_t seed) {
  sim::Rng rng(seed, "bench.skew");
  std::vector<double> w(static_cast<std::size_t>(n));
  for (int e = 0; e < n; ++e) w[static_cast<std::size_t>(e)] = 1.0 / std::pow(e + 1.0, alpha);
  for (int i = n - 1; i > 0; --i)
    std::swap(w[static_cast<std::size_t>(i)], w[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
  std::vector<double> cdf(w.size());
  double acc = 0;
  for (std::size_t e = 0; e < w.size(); ++e) cdf[e] = acc += w[e];
  ByteMatrix m(n);
  for (int s = 0; s < n; ++s)
    for (int t = 0; t < tokens * top_k; ++t) {
      const double u = rng.uniform01() * acc;
      const auto e = static_cast<int>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      m.at(s, std::min(e, n - 1)) += token_bytes;
    }
  for (int s = 0; s < n; ++s) m.at(s, s) = 0;
  return m;
}
}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (only.empty() || only == "256") {
    const Topology topo = build_topology(h100_cluster(32));
    run_case("uniform 256 GPUs 1MiB", topo, ByteMatrix(256, 1048576.0));
  }
  if (only.empty() || only == "skew") {
    const Topology topo = build_topology(h100_cluster(32));
    // 4096 tokens x top-8 per GPU, 7168 B per token (DeepSeek-V3 hidden size, FP8), alpha 1.2.
    const ByteMatrix m = skewed_matrix(256, 1.2, 4096, 8, 7168, 42);
    int distinct = 0;
    {
      std::vector<double> v(m.bytes);
      std::sort(v.begin(), v.end());
      distinct = static_cast<int>(std::unique(v.begin(), v.end()) - v.begin());
    }
    std::printf("skewed matrix: %d distinct per-pair sizes\n", distinct);
    run_case("skewed 256 GPUs power-law", topo, m);
  }
  if (only.rfind("skew-", 0) == 0) {  // smaller skewed variant for profiling: skew-<nodes>
    const int nodes = std::stoi(only.substr(5));
    const Topology topo = build_topology(h100_cluster(nodes));
    const ByteMatrix m = skewed_matrix(nodes * 8, 1.2, 4096, 8, 7168, 42);
    run_case("skewed power-law (small)", topo, m);
  }
  if (only.empty() || only == "1024") {
    const Topology topo = build_topology(h100_cluster(128));
    run_case("uniform 1024 GPUs 1MiB", topo, ByteMatrix(1024, 1048576.0));
  }
  return 0;
}
