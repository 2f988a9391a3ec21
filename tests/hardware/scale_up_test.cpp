// Scale-up domains (cluster.intra_node.domain_gpus): NVLink domains larger than a node, such as
// GB200 NVL72 (72 GPUs on one NVSwitch fabric, 4 per compute tray), with NICs below them.
#include <catch2/catch.hpp>

#include <string>

#include "hardware/collectives.hpp"
#include "hardware/topology.hpp"

using namespace moesim;
using namespace moesim::hw;
using namespace moesim::sim::literals;
using sim::duration_for;

namespace {
constexpr double kMiB = 1048576.0;

/// `domains` NVL72-style racks: trays of 4 GPUs, 72 GPUs per NVSwitch fabric, one NIC per GPU.
ClusterSpec nvl72(int domains, InterFabric fabric = InterFabric::kSingleSwitch, int domain_gpus = 72) {
  ClusterSpec s;
  s.gpu.name = "test-gpu";
  s.gpu.pcie_bandwidth = 64e9;
  s.gpus_per_node = 4;
  s.nodes = domains * 72 / 4;
  s.intra.fabric = IntraFabric::kNvswitch;
  s.intra.bandwidth = 900e9;
  s.intra.latency = 1_us;
  s.intra.domain_gpus = domain_gpus;
  s.inter.fabric = fabric;
  s.inter.nic_bandwidth = 50e9;
  s.inter.nics_per_node = 4;
  s.inter.latency = 2_us;
  s.inter.efficiency = 1.0;
  return s;
}

bool via_nic(const Topology& t, const std::vector<LinkId>& path) {
  for (LinkId l : path)
    if (t.link_name(l).find("nic") != std::string::npos) return true;
  return false;
}
}  // namespace

TEST_CASE("scale-up domain: nodes of one domain talk over its NVSwitch, other domains over NICs", "[topology]") {
  const Topology t = build_topology(nvl72(2, InterFabric::kRailFatTree));
  REQUIRE(t.gpu_count() == 144);
  CHECK(t.domain_gpus() == 72);
  CHECK(t.domain_of(71) == 0);
  CHECK(t.domain_of(72) == 1);
  CHECK_FALSE(t.connectivity_problem());
  std::vector<LinkId> path;
  t.route(0, 4, 1, path);  // tray 0 -> tray 1 of the same rack
  REQUIRE(path.size() == 2);
  CHECK(t.link_name(path[0]) == "gpu0->domain0.nvswitch");
  CHECK(t.link_name(path[1]) == "domain0.nvswitch->gpu4");
  path.clear();
  t.route(3, 71, 7, path);  // first and last tray of the rack
  CHECK(path.size() == 2);
  CHECK_FALSE(via_nic(t, path));
  path.clear();
  t.route(0, 72, 1, path);  // rack 0 -> rack 1: the NIC tier
  CHECK(via_nic(t, path));
  CHECK(t.link_name(path.front()) == "gpu0->node0.nic0");
  CHECK(t.link_name(path.back()) == "node18.nic0->gpu72");
  CHECK(t.link_bandwidth(path.front()) == 64e9);  // GPU -> NIC over PCIe

  // Without the domain (one NVSwitch per tray) the same pair of trays needs the NICs.
  const Topology trays = build_topology(nvl72(2, InterFabric::kRailFatTree, 0));
  CHECK(trays.domain_gpus() == 4);
  path.clear();
  trays.route(0, 4, 1, path);
  CHECK(via_nic(trays, path));
}

TEST_CASE("scale-up domain: an all-to-all inside one NVL72 puts no byte on a NIC", "[collectives]") {
  const Topology t = build_topology(nvl72(1));
  const auto r = run_collective(t, plan_all_to_allv(t, all_gpus(t), ByteMatrix(72, kMiB), CollectiveAlgo::kDirect));
  // 71 peers x 1 MiB through each GPU's 900 GB/s port of the one fabric.
  CHECK(r.time == duration_for(71 * kMiB, 900e9) + 1_us);
  double nic = 0, all = 0;
  for (LinkId l = 0; l < r.per_link_bytes.size(); ++l) {
    all += r.per_link_bytes[l];
    if (t.link_name(l).find("nic") != std::string::npos) nic += r.per_link_bytes[l];
  }
  CHECK(all == 72 * 71 * kMiB * 2);
  CHECK(nic == 0);
  const auto a = run_collective(t, plan_all_to_allv(t, all_gpus(t), ByteMatrix(72, kMiB), CollectiveAlgo::kDirect),
                                NetworkModel::kAnalytical);
  CHECK(a.time == r.time);
}

TEST_CASE("scale-up domains: across two NVL72 the NIC is the bottleneck, exactly", "[collectives]") {
  const Topology t = build_topology(nvl72(2));
  const auto plan = plan_all_to_allv(t, all_gpus(t), ByteMatrix(144, kMiB), CollectiveAlgo::kDirect);
  const auto r = run_collective(t, plan);
  // 72 remote destinations x 1 MiB through one 50 GB/s NIC; the 71 in-rack ones ride NVLink.
  CHECK(r.time == duration_for(72 * kMiB, 50e9) + 2_us);
  CHECK(r.size_bytes == 144 * kMiB);
  CHECK(r.busbw == Approx(r.algbw * 143 / 144));
  const auto a = run_collective(t, plan_all_to_allv(t, all_gpus(t), ByteMatrix(144, kMiB), CollectiveAlgo::kDirect),
                                NetworkModel::kAnalytical);
  CHECK(a.time == r.time);
}

TEST_CASE("scale-up domain: a cluster that is one domain needs no NIC tier", "[topology]") {
  ClusterSpec s = nvl72(1);
  s.inter.nic_tier = false;
  const Topology t = build_topology(s);
  CHECK_FALSE(t.connectivity_problem());
  for (std::size_t v = 0; v < t.vertex_count(); ++v) CHECK(t.graph()[v].kind != VertexKind::kNic);
  // Specs parse_cluster rejects are refused by the builder too.
  ClusterSpec bad = nvl72(1);
  bad.intra.domain_gpus = 6;  // not whole trays of 4
  CHECK_THROWS_AS(build_topology(bad), std::invalid_argument);
  bad.intra.domain_gpus = 48;  // does not divide 72
  CHECK_THROWS_AS(build_topology(bad), std::invalid_argument);
  bad.intra.domain_gpus = 72;
  bad.intra.fabric = IntraFabric::kNvlinkMesh;
  CHECK_THROWS_AS(build_topology(bad), std::invalid_argument);
}
