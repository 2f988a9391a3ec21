#pragma once
// The cluster the flow network tests run on.
#include "hardware/topology.hpp"
#include "sim/time.hpp"

namespace moesim::test {

/// 4 nodes x 8 GPUs: NVSwitch + rail fat tree with two 2-node leaves per rail and 2 spines, so
/// spine ECMP collisions couple the rails.
inline hw::ClusterSpec coupled_rails() {
  hw::ClusterSpec c;
  c.gpu.pcie_bandwidth = 64e9;
  c.nodes = 4;
  c.gpus_per_node = 8;
  c.intra.fabric = hw::IntraFabric::kNvswitch;
  c.intra.bandwidth = 450e9;
  c.intra.latency = sim::SimTime::from_ps(1'000'000);
  c.inter.fabric = hw::InterFabric::kRailFatTree;
  c.inter.nic_bandwidth = 50e9;
  c.inter.efficiency = 0.97;
  c.inter.nics_per_node = 8;
  c.inter.latency = sim::SimTime::from_ps(2'000'000);
  c.inter.leaf_down_ports = 2;
  c.inter.spines = 2;
  return c;
}

}  // namespace moesim::test
