// parse_cluster: the scenario's `cluster:` section -> ClusterSpec, with located errors.
#include <fmt/format.h>
#include <algorithm>
#include <cstdint>
#include <unordered_set>

#include "config/reader.hpp"
#include "hardware/topology.hpp"

namespace moesim::hw {

namespace {
using config::Range;

constexpr std::size_t kMaxVertexHints = 8;        // unknown vertex names that get a did-you-mean
constexpr std::size_t kMaxHintCandidates = 4096;  // names a did-you-mean compares against

/// g for "gpu<g>" with 0 <= g < gpus written without leading zeros, else -1.
int gpu_vertex_index(const std::string& name, int gpus) {
  if (name.size() < 4 || name.compare(0, 3, "gpu") != 0 || name.size() > 13) return -1;
  if (name[3] == '0' && name.size() > 4) return -1;
  std::int64_t v = 0;
  for (std::size_t i = 3; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v < gpus ? static_cast<int>(v) : -1;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
}  // namespace

ClusterSpec parse_cluster(const config::Node& c, const GpuCatalog& catalog) {
  ClusterSpec s;
  if (!c.defined() || !c.is_map()) {
    c.error("`cluster:` must be a map (gpu, nodes, gpus_per_node, intra_node, inter_node)");
    return s;
  }
  auto& diags = c.diagnostics();
  const std::size_t errors_before = diags.size();

  // GPU: a catalog name, or an inline spec.
  const config::Node gpu = c.child("gpu");
  if (!gpu.defined()) {
    c.error_at("gpu", fmt::format("missing required key (a catalog GPU: {})", join(catalog.names())));
  } else if (gpu.is_scalar()) {
    const std::string name = gpu.as_string();
    if (const GpuSpec* g = catalog.find(name)) {
      s.gpu = *g;
    } else {
      const auto guess = config::did_you_mean(name, catalog.names());
      gpu.error(fmt::format("unknown GPU '{}'{}; known GPUs: {} (or give an inline spec)", name,
                            guess ? fmt::format(" (did you mean '{}'?)", *guess) : std::string(),
                            join(catalog.names())));
    }
  } else {
    s.gpu = parse_gpu_spec(gpu.opt_string("name", "custom"), gpu);
  }

  s.nodes = static_cast<int>(c.req_int("nodes", Range::between(1, kMaxNodes)));
  s.gpus_per_node = static_cast<int>(c.req_int("gpus_per_node", Range::between(1, kMaxGpusPerNode)));
  if (static_cast<std::int64_t>(s.nodes) * s.gpus_per_node > kMaxClusterGpus) {
    c.error_at("nodes",
               fmt::format("nodes x gpus_per_node = {} x {} = {} GPUs is more than the {} a cluster may have", s.nodes,
                           s.gpus_per_node, static_cast<std::int64_t>(s.nodes) * s.gpus_per_node, kMaxClusterGpus));
    s.nodes = 1;  // later checks see a small cluster; the scenario is rejected anyway
  } else if (c.has("gpus")) {
    const auto total = c.child("gpus").as_int(Range::at_least(1));
    if (total != static_cast<std::int64_t>(s.nodes) * s.gpus_per_node)
      c.error_at("gpus", fmt::format("{} GPUs does not match nodes x gpus_per_node = {} x {} = {}", total, s.nodes,
                                     s.gpus_per_node, s.total_gpus()));
  }

  // Intra-node fabric. Defaults: NVSwitch at the GPU's NVLink bandwidth.
  const config::Node intra = c.child("intra_node");
  {
    const std::string fab = intra.defined()
                                ? intra.opt_choice("fabric", {"nvswitch", "nvlink-mesh", "pcie", "none"}, "nvswitch")
                                : "nvswitch";
    s.intra.fabric = fab == "nvswitch"      ? IntraFabric::kNvswitch
                     : fab == "nvlink-mesh" ? IntraFabric::kNvlinkMesh
                     : fab == "pcie"        ? IntraFabric::kPcie
                                            : IntraFabric::kNone;
    const double dflt = s.intra.fabric == IntraFabric::kPcie ? s.gpu.pcie_bandwidth : s.gpu.nvlink_bandwidth;
    s.intra.bandwidth = dflt;
    s.intra.latency = sim::SimTime::from_ps(1'000'000);  // 1us, see hardware/README.md
    // NVLink payload rate: ~80% of the line rate (DeepEP README: H800 "~160 GB/s NVLink maximum
    // bandwidth" of 200 GB/s per direction; NCCL maintainer, nccl-tests issue #212: 450 GB/s line
    // rate, ~20% protocol overhead, ~370 GB/s effective). See hardware/README.md.
    s.intra.efficiency = s.intra.fabric == IntraFabric::kPcie ? 1.0 : 0.8;
    if (intra.defined()) {
      if (auto bw = intra.opt_bandwidth("bandwidth")) s.intra.bandwidth = bw->bytes_per_s;
      s.intra.latency = intra.opt_time("latency", s.intra.latency);
      s.intra.efficiency = intra.opt_double("efficiency", s.intra.efficiency, {0, 1, true});
      if (intra.has("domain_gpus")) {
        // A scale-up domain: whole nodes on one NVSwitch fabric (hardware/README.md).
        const auto d = intra.child("domain_gpus").as_int(Range::between(1, kMaxClusterGpus));
        const std::int64_t total = static_cast<std::int64_t>(s.nodes) * s.gpus_per_node;
        if (d < 1 || s.gpus_per_node < 1) {
          // out of range: already reported
        } else if (d % s.gpus_per_node != 0)
          intra.error_at("domain_gpus", fmt::format("a scale-up domain of {} GPUs is not a whole number of nodes of "
                                                    "{} GPUs (gpus_per_node)",
                                                    d, s.gpus_per_node));
        else if (total % d != 0)
          intra.error_at("domain_gpus", fmt::format("scale-up domains of {} GPUs do not divide the cluster's {} GPUs "
                                                    "(nodes x gpus_per_node = {} x {})",
                                                    d, total, s.nodes, s.gpus_per_node));
        else if (d != s.gpus_per_node && s.intra.fabric != IntraFabric::kNvswitch)
          intra.error_at("domain_gpus",
                         fmt::format("a scale-up domain of {} GPUs (more than one node) needs fabric: nvswitch", d));
        else
          s.intra.domain_gpus = static_cast<int>(d);
      }
      intra.finish();
    }
    if (s.domain_size() > 1 && s.intra.fabric != IntraFabric::kNone && !(s.intra.bandwidth > 0) &&
        diags.size() == errors_before)
      c.error_at("intra_node", fmt::format("GPU '{}' has no {} bandwidth in the catalog: set intra_node.bandwidth",
                                           s.gpu.name, s.intra.fabric == IntraFabric::kPcie ? "PCIe" : "NVLink"));
  }

  // Inter-node fabric. Defaults: rail-optimised fat tree, one NIC per GPU, 1:1.
  const config::Node inter = c.child("inter_node");
  s.inter.nics_per_node = s.gpus_per_node;
  s.inter.latency = sim::SimTime::from_ps(2'000'000);  // 2us
  s.inter.efficiency = 0.97;                           // see hardware/README.md
  if (inter.defined()) {
    const std::string fab =
        inter.opt_choice("fabric", {"rail-fat-tree", "fat-tree", "single-switch", "explicit"}, "rail-fat-tree");
    s.inter.fabric = fab == "rail-fat-tree"   ? InterFabric::kRailFatTree
                     : fab == "fat-tree"      ? InterFabric::kFatTree
                     : fab == "single-switch" ? InterFabric::kSingleSwitch
                                              : InterFabric::kExplicit;
    if (s.inter.fabric != InterFabric::kExplicit) {
      if (s.nodes > 1)
        s.inter.nic_bandwidth = inter.req_bandwidth("nic_bandwidth").bytes_per_s;
      else if (auto v = inter.opt_bandwidth("nic_bandwidth"))
        s.inter.nic_bandwidth = v->bytes_per_s;
      s.inter.nics_per_node =
          static_cast<int>(inter.opt_int("nics_per_node", s.gpus_per_node, Range::between(1, s.gpus_per_node)));
      if (s.gpus_per_node % s.inter.nics_per_node != 0)
        inter.error_at("nics_per_node", fmt::format("{} NICs per node do not divide {} GPUs per node evenly",
                                                    s.inter.nics_per_node, s.gpus_per_node));
      s.inter.oversubscription = inter.opt_double("oversubscription", 1.0, Range::at_least(1.0));
      s.inter.leaf_down_ports = static_cast<int>(inter.opt_int("leaf_down_ports", 32, Range::between(1, 65536)));
      s.inter.spines = static_cast<int>(inter.opt_int("spines", 0, Range::between(0, 65536)));
      if (auto v = inter.opt_bandwidth("pcie_bandwidth")) s.inter.pcie_bandwidth = v->bytes_per_s;
    }
    s.inter.latency = inter.opt_time("latency", s.inter.latency);
    s.inter.efficiency = inter.opt_double("efficiency", s.inter.efficiency, {0, 1, true});
    inter.finish();
  } else if (s.nodes == 1 && s.gpus_per_node > 1 && s.intra.fabric == IntraFabric::kNone) {
    intra.error_at("fabric",
                   "fabric: none leaves the GPUs of a node only their NICs: declare inter_node (e.g. {fabric: "
                   "rail-fat-tree, nic_bandwidth: 400Gb/s}), also for one node");
  } else if (s.nodes > 1 && s.domain_size() == s.total_gpus()) {
    s.inter.nic_tier = false;  // one scale-up domain holds every GPU: no NIC tier is needed
  } else if (s.nodes > 1) {
    c.error_at("inter_node",
               fmt::format("missing required key for a multi-node cluster ({{fabric: rail-fat-tree, nic_bandwidth: "
                           "400Gb/s, ...}}){}",
                           s.domain_size() > s.gpus_per_node
                               ? fmt::format("; its {} scale-up domains of {} GPUs talk over NICs",
                                             s.total_gpus() / s.domain_size(), s.domain_size())
                               : std::string()));
  }

  // Explicit graph: cluster.topology {switches: [...], links: [{from, to, bandwidth, latency, duplex}]}.
  const config::Node topo = c.child("topology");
  if (s.inter.fabric == InterFabric::kExplicit) {
    if (!topo.defined()) {
      c.error_at("topology", "inter_node.fabric: explicit needs a `topology:` map with `switches` and `links`");
    } else {
      const config::Node sw = topo.child("switches");
      // Vertex names: gpu0..gpu{N-1} and the listed switches. Looked up in a hash set (a
      // 131,072-GPU graph has that many names), with an edit-distance hint for the first few
      // unknown names only, over candidates of bounded number.
      std::unordered_set<std::string> switches;
      if (sw.defined())
        for (const auto& n : sw.items()) {
          const std::string name = n.as_string();
          if (name.empty()) continue;
          if (gpu_vertex_index(name, s.total_gpus()) >= 0)
            n.error(fmt::format("switch '{}' has the name of a GPU (GPUs are gpu0..gpu{}); give it another name", name,
                                s.total_gpus() - 1));
          else if (!switches.insert(name).second)
            n.error(fmt::format("duplicate switch '{}' (each switch is listed once)", name));
          else
            s.explicit_switches.push_back(name);
        }
      std::size_t unknown_hints = 0;
      const auto hint = [&](const std::string& name) -> std::string {
        if (unknown_hints++ >= kMaxVertexHints) return {};
        std::vector<std::string> candidates(s.explicit_switches.begin(), s.explicit_switches.end());
        if (candidates.size() > kMaxHintCandidates) candidates.resize(kMaxHintCandidates);
        if (s.total_gpus() <= static_cast<int>(kMaxHintCandidates))
          for (int g = 0; g < s.total_gpus(); ++g) candidates.push_back(fmt::format("gpu{}", g));
        const auto guess = config::did_you_mean(name, candidates);
        return guess ? fmt::format(" (did you mean '{}'?)", *guess) : std::string();
      };
      const config::Node links = topo.child("links");
      if (!links.defined())
        topo.error_at("links", "missing required key (list of {from, to, bandwidth, latency})");
      else
        for (const auto& ln : links.items()) {
          ExplicitLink l;
          l.from = ln.req_string("from");
          l.to = ln.req_string("to");
          for (const auto* end : {&l.from, &l.to})
            if (!end->empty() && gpu_vertex_index(*end, s.total_gpus()) < 0 && switches.count(*end) == 0)
              ln.error_at(end == &l.from ? "from" : "to",
                          fmt::format("unknown vertex '{}'{} (GPUs are gpu0..gpu{}; switches must be listed in "
                                      "topology.switches)",
                                      *end, hint(*end), s.total_gpus() - 1));
          if (!l.from.empty() && l.from == l.to)
            ln.error_at("to", fmt::format("a link from '{}' to itself (a self-loop carries no traffic)", l.from));
          l.bandwidth = ln.req_bandwidth("bandwidth").bytes_per_s;
          l.latency = ln.opt_time("latency", sim::SimTime{});
          l.duplex = ln.opt_bool("duplex", true);
          ln.finish();
          s.explicit_links.push_back(l);
        }
      topo.finish();
    }
  } else if (topo.defined()) {
    topo.error("`topology:` is only read with inter_node.fabric: explicit");
  }
  c.finish();

  // A graph that leaves a GPU unreachable is a configuration error, located at the part of the
  // config that describes the graph.
  if (diags.size() == errors_before) {
    try {
      const Topology t = build_topology(s);
      if (auto problem = t.connectivity_problem()) {
        if (s.inter.fabric == InterFabric::kExplicit && topo.defined())
          topo.error(*problem);
        else
          c.error(*problem + " (a multi-node cluster needs inter_node)");
      }
    } catch (const std::exception& e) {
      c.error(e.what());
    }
  }
  return s;
}

}  // namespace moesim::hw
