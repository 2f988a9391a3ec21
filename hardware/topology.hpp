#pragma once
/// \file
/// Cluster description (ClusterSpec, parsed from the scenario's `cluster:` section) and the
/// network graph built from it (Topology, a Boost.Graph adjacency_list).
///
/// Every edge of the graph is one directional link of the flow network (a cable is two edges),
/// with the bandwidth the flow model sees (nominal x efficiency) and a latency. GPU vertices
/// come first (vertex g is global GPU g = node * gpus_per_node + local index) and never forward
/// traffic: routes only pass through switches and NICs. Multi-hop forwarding through a GPU (the
/// NVLink -> RDMA relay of hierarchical all-to-all) is expressed by the collective as separate
/// transfers, so that its cost is visible.
///
/// Routing: shortest paths by hop count. Where several next hops are equally short (ECMP in a
/// fat tree), the choice is a hash of (flow key, hop index), so it is deterministic and spreads
/// flows like switch ECMP hashing does, collisions included. Distances to each destination are
/// computed once by breadth-first search and cached.

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include <boost/graph/adjacency_list.hpp>

#include "hardware/gpu_catalog.hpp"
#include "sim/time.hpp"

namespace moesim::config {
class Node;
}

namespace moesim::hw {

class FlowNetwork;
using LinkId = std::uint32_t;

enum class IntraFabric { kNvswitch, kNvlinkMesh, kPcie, kNone };
enum class InterFabric { kRailFatTree, kFatTree, kSingleSwitch, kExplicit };

/// A link of an explicit topology, between two named vertices ("gpu3", "node1.nic0" or a
/// declared switch).
struct ExplicitLink {
  std::string from, to;
  double bandwidth = 0;  ///< bytes/s per direction
  sim::SimTime latency{};
  bool duplex = true;  ///< false: only from -> to
};

struct ClusterSpec {
  GpuSpec gpu;
  int nodes = 1;
  int gpus_per_node = 8;
  struct Intra {
    IntraFabric fabric = IntraFabric::kNvswitch;
    double bandwidth = 0;  ///< bytes/s per GPU per direction (default: the GPU's NVLink figure)
    sim::SimTime latency{};
    double efficiency = 1.0;
    /// GPUs on one NVSwitch fabric (a scale-up domain): 0 or gpus_per_node is one fabric per
    /// node (HGX); larger values join domain_gpus / gpus_per_node consecutive nodes on one
    /// fabric at `bandwidth` (GB200/GB300 NVL72: 72 GPUs, 4 per compute tray). nvswitch only.
    int domain_gpus = 0;
  } intra;
  struct Inter {
    InterFabric fabric = InterFabric::kRailFatTree;
    double nic_bandwidth = 50e9;  ///< bytes/s per NIC per direction
    int nics_per_node = 8;
    double oversubscription = 1.0;  ///< leaf downlink : uplink capacity
    sim::SimTime latency{};         ///< NIC-to-NIC one way, charged on the NIC uplink
    int leaf_down_ports = 32;       ///< NICs per leaf switch (radix / 2 for a 1:1 leaf)
    int spines = 0;                 ///< 0: one uplink per leaf down port / oversubscription
    double pcie_bandwidth = 0;      ///< GPU <-> NIC, bytes/s per direction (default: GPU's PCIe)
    double efficiency = 1.0;
    /// false: no NIC tier (a multi-node cluster that is one scale-up domain and names no
    /// inter_node; its GPUs talk over the domain's NVSwitch fabric only).
    bool nic_tier = true;
  } inter;
  std::vector<std::string> explicit_switches;
  std::vector<ExplicitLink> explicit_links;

  int total_gpus() const { return nodes * gpus_per_node; }
  /// GPUs per scale-up (NVLink) domain: intra.domain_gpus, or gpus_per_node when unset.
  int domain_size() const { return intra.domain_gpus > 0 ? intra.domain_gpus : gpus_per_node; }
};

/// Size limits parse_cluster enforces (located config errors beyond them), so every count of
/// GPUs, NICs and links fits an int with room to multiply: a node is at most an NVL576-class
/// domain, and a cluster at most 2^17 GPUs (a 100k-GPU deployment fits).
inline constexpr int kMaxNodes = 65536;
inline constexpr int kMaxGpusPerNode = 1024;
inline constexpr int kMaxClusterGpus = 131072;

/// Reads `cluster:`. Every problem is reported into the node's Diagnostics with its location
/// (unknown keys with did-you-mean, unknown GPU name, non-positive bandwidths, GPU count
/// mismatch, a topology that leaves some GPU unreachable); the caller throws.
ClusterSpec parse_cluster(const config::Node& cluster, const GpuCatalog& catalog);

enum class VertexKind { kGpu, kSwitch, kNic };

struct VertexInfo {
  VertexKind kind = VertexKind::kSwitch;
  std::string name;
  int node = -1;
};
struct EdgeInfo {
  LinkId link = 0;
  double bandwidth = 0;  ///< bytes/s as the flow model sees it (efficiency applied)
  sim::SimTime latency{};
};

class Topology {
 public:
  using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS, VertexInfo, EdgeInfo>;

  int gpu_count() const { return gpus_; }
  int gpus_per_node() const { return gpus_per_node_; }
  int node_of(int gpu) const { return gpu / gpus_per_node_; }
  /// GPUs per scale-up domain (one NVSwitch fabric; gpus_per_node unless the cluster sets
  /// intra_node.domain_gpus) and the domain of a GPU (domains are consecutive GPU ranges).
  int domain_gpus() const { return domain_gpus_; }
  int domain_of(int gpu) const { return gpu / domain_gpus_; }
  const Graph& graph() const { return g_; }
  std::size_t vertex_count() const { return boost::num_vertices(g_); }
  std::size_t link_count() const { return link_src_.size(); }
  double link_bandwidth(LinkId l) const { return link_bw_[l]; }
  sim::SimTime link_latency(LinkId l) const { return link_lat_[l]; }
  /// "gpu3->node0.nvswitch"
  std::string link_name(LinkId l) const;

  /// Adds a vertex / a directional link (builders and tests).
  int add_vertex(VertexKind kind, std::string name, int node);
  LinkId add_link(int from, int to, double bandwidth, sim::SimTime latency);
  void add_duplex(int a, int b, double bandwidth, sim::SimTime latency_ab, sim::SimTime latency_ba);
  std::optional<int> find_vertex(const std::string& name) const;

  /// Appends the links of the route src_gpu -> dst_gpu to `out`. `flow_key` picks among equal
  /// shortest paths. Throws std::runtime_error when dst is unreachable.
  void route(int src_gpu, int dst_gpu, std::uint64_t flow_key, std::vector<LinkId>& out) const;

  /// Creates this topology's links in an empty FlowNetwork (link ids equal).
  void install(FlowNetwork& net) const;

  /// A message naming a GPU that cannot reach another, or nullopt when all pairs connect.
  /// O(vertices + links) plus a check per distinct pair of GPU connection classes.
  std::optional<std::string> connectivity_problem() const;
  /// The same answer by one breadth-first search per destination GPU, O(GPUs x (V + E)) time:
  /// the reference the tests compare connectivity_problem() against.
  std::optional<std::string> connectivity_problem_exhaustive() const;

  /// Graphviz dot: one vertex per GPU / NIC / switch, one edge per link labelled with its
  /// bandwidth; nodes are drawn as clusters.
  void write_dot(std::ostream& os) const;

 private:
  friend Topology build_topology(const ClusterSpec& spec);
  void ensure_csr() const;
  /// The message both connectivity checks give for the first pair that does not connect.
  std::string unreachable(std::size_t src_gpu, std::size_t dst_gpu) const;
  void bfs_to(int dst_gpu, std::vector<std::int16_t>& d) const;
  const std::vector<std::int16_t>& dist_to(int dst_gpu) const;
  static constexpr std::size_t kDistCacheBytes = std::size_t{256} << 20;
  void compute_route(int src_gpu, int dst_gpu, std::uint64_t flow_key, std::vector<LinkId>& out) const;
  void clear_route_cache() const;
  struct RouteEntry {
    std::uint64_t key, flow_key;
    std::uint32_t offset, length;
  };
  static constexpr std::uint32_t kNoRoute = ~std::uint32_t{0};
  static constexpr std::size_t kRouteCacheLinks = std::size_t{1} << 24;  ///< 64 MiB of link ids

  Graph g_;
  int gpus_ = 0;
  int gpus_per_node_ = 1;
  int domain_gpus_ = 1;
  std::vector<int> link_src_, link_dst_;
  std::vector<double> link_bw_;
  std::vector<sim::SimTime> link_lat_;
  // out-edge CSR for route walks
  mutable std::vector<std::uint32_t> out_begin_;
  mutable std::vector<LinkId> out_links_;
  // in-edge CSR and GPU flags for the per-destination breadth-first search
  mutable std::vector<std::uint32_t> in_begin_;
  mutable std::vector<LinkId> in_links_;
  mutable std::vector<std::uint8_t> is_gpu_;
  mutable std::vector<int> bfs_queue_;
  mutable std::vector<std::vector<std::int16_t>> dist_cache_;  ///< per destination GPU, lazily
  mutable std::size_t dist_cache_bytes_ = 0;
  mutable std::vector<std::uint32_t> route_slots_;  ///< open addressing over route_entries_
  mutable std::vector<RouteEntry> route_entries_;
  mutable std::vector<LinkId> route_pool_;
};

/// Builds the graph for a cluster. Throws std::invalid_argument for specs parse_cluster
/// would have rejected.
Topology build_topology(const ClusterSpec& spec);

inline void write_dot(std::ostream& os, const Topology& t) { t.write_dot(os); }

/// `moesim describe fabrics`: the intra- and inter-node fabrics a `cluster:` block can name, the
/// keys each reads, and the defaults.
void describe_fabrics(std::ostream& os);

}  // namespace moesim::hw
