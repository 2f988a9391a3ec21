#pragma once
/// \file
/// Collectives as phases of flows on the shared FlowNetwork, so concurrent collectives (and
/// other traffic) contend for links exactly as the max-min model says; plus an analytical
/// alternative for very large runs.
///
/// Reported figures follow nccl-tests (doc/PERFORMANCE.md in NVIDIA/nccl-tests):
///   algbw = size / time, and busbw = algbw x factor with factor
///   all-reduce 2(n-1)/n, all-gather and reduce-scatter (n-1)/n, all-to-all (n-1)/n,
///   send/recv 1. `size` is what nccl-tests calls the message size: the buffer of one rank
///   (all-gather: the gathered output; reduce-scatter: the input; all-to-all: the bytes one
///   rank sends, its own chunk included; all-to-allv: the largest such row).
///
/// Algorithms (documented approximations of NCCL / DeepEP / Tutel behaviour):
///  - all-to-allv direct: every (src, dst) pair is one flow, all started together.
///  - all-to-allv hierarchical (2D): phase 1 over NVLink, each GPU sends to the GPU of its own
///    node that sits on the destination's rail (same local index) everything bound for that
///    rail, and intra-node traffic goes straight to its destination; phase 2 over the NICs, one
///    exchange per rail between same-index GPUs. The data is then at its destination, so no
///    third phase is needed. Phases run back to back (no chunk pipelining).
///  - ring all-reduce: 2(n-1) steps, each rank sends size/n to its ring successor per step;
///    all-gather and reduce-scatter: n-1 such steps.
///  - tree all-reduce: a binary tree over the ranks, pipelined: every tree edge carries `size`
///    up (reduce) and `size` down (broadcast) concurrently, plus one latency per extra level.
///  - send/recv: one flow.
/// Options: `launch_overhead` is charged once before the first phase (a kernel launch), and
/// `step_overhead` before every later phase (a synchronisation between steps).

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "hardware/flow_network.hpp"
#include "hardware/topology.hpp"
#include "sim/simulation.hpp"

namespace moesim::hw {

/// Bytes from rank i to rank j of a group, row-major n x n.
struct ByteMatrix {
  int n = 0;
  std::vector<double> bytes;
  ByteMatrix() = default;
  explicit ByteMatrix(int size, double fill = 0) : n(size), bytes(static_cast<std::size_t>(size) * size, fill) {}
  double& at(int i, int j) { return bytes[static_cast<std::size_t>(i) * n + j]; }
  double at(int i, int j) const { return bytes[static_cast<std::size_t>(i) * n + j]; }
};

enum class CollectiveKind { kAllToAllv, kAllReduce, kAllGather, kReduceScatter, kSendRecv };
enum class CollectiveAlgo { kDirect, kHierarchical, kRing, kTree };
enum class NetworkModel { kFlow, kAnalytical };

struct CollectiveOptions {
  sim::SimTime launch_overhead{};
  sim::SimTime step_overhead{};
};

struct CollectiveResult {
  CollectiveKind kind{};
  int ranks = 0;
  double size_bytes = 0;  ///< nccl-tests "size"
  sim::SimTime start{};
  sim::SimTime time{};                 ///< duration
  double algbw = 0;                    ///< bytes/s
  double busbw = 0;                    ///< bytes/s
  std::vector<double> per_link_bytes;  ///< indexed by LinkId
  int phases = 0;
};

std::string to_string(CollectiveKind k);
/// The algorithm a scenario names: "direct", "hierarchical", "ring" or "tree" (the scenario
/// reader has checked the name; anything else throws std::invalid_argument).
CollectiveAlgo collective_algo(const std::string& name);
/// nccl-tests bus-bandwidth factor for n ranks.
double busbw_factor(CollectiveKind k, int n);

/// Traffic of a collective, phase by phase: what both network models consume.
struct CollectivePlan {
  CollectiveKind kind{};
  int ranks = 0;
  double size_bytes = 0;
  std::vector<FlowBatch> phases;
  /// repeat[i]: how many times phases[i] runs back to back (a ring repeats one phase 2(n-1)
  /// times; storing it once keeps a 4,096-rank ring plan O(n) instead of O(n^2) flows). Same
  /// length as phases.
  std::vector<std::uint32_t> repeat;
  void add_phase(FlowBatch b, std::uint32_t times = 1) {
    phases.push_back(std::move(b));
    repeat.push_back(times);
  }
  /// Throws std::logic_error unless repeat has one entry (>= 1) per phase.
  void check() const;
  /// Phases as they run (repeats counted).
  std::size_t phase_count() const {
    std::size_t n = 0;
    for (std::uint32_t k : repeat) n += k;
    return n;
  }
};

/// The batch for the next run of `phases` (see CollectivePlan::repeat): a copy while phase
/// `next` has runs left, the phase itself (moved out) on its last run, after which `next`
/// advances and `runs_done` restarts. Shared by both players of plans.
FlowBatch next_phase_run(std::vector<FlowBatch>& phases, const std::vector<std::uint32_t>& repeat, std::size_t& next,
                         std::uint32_t& runs_done);

/// Builds the phases. `group` lists global GPU ids (rank r is group[r]). Throws
/// std::invalid_argument for inconsistent sizes (matrix not n x n, hierarchical on a group
/// that is not made of whole nodes with the same GPU count...).
/// `chunks` > 1 (hierarchical only) pipelines the two phases the way DeepEP overlaps NVLink
/// forwarding with RDMA: every transfer is cut into `chunks` equal parts, and phase c carries
/// NVLink part c together with rail part c - 1 (chunks + 1 phases, each waiting for the one
/// before). chunks = 1 is the unpipelined plan.
CollectivePlan plan_all_to_allv(const Topology& topo, const std::vector<int>& group, const ByteMatrix& m,
                                CollectiveAlgo algo, int chunks = 1);
CollectivePlan plan_all_reduce(const Topology& topo, const std::vector<int>& group, double bytes, CollectiveAlgo algo);
CollectivePlan plan_all_gather(const Topology& topo, const std::vector<int>& group, double bytes);
CollectivePlan plan_reduce_scatter(const Topology& topo, const std::vector<int>& group, double bytes);
CollectivePlan plan_send_recv(const Topology& topo, int src, int dst, double bytes);

/// Runs plans on a shared network. The topology must have been installed into `net`.
class CollectiveEngine {
 public:
  using Done = std::function<void(const CollectiveResult&)>;
  CollectiveEngine(sim::Simulation& sim, const Topology& topo, FlowNetwork& net, CollectiveOptions opts = {})
      : sim_(sim), topo_(topo), net_(net), opts_(opts) {}
  /// Starts now; `on_done` runs as an event when the last phase completes. Returns a handle
  /// (an index into results()).
  std::size_t start(CollectivePlan plan, Done on_done = {});
  std::size_t start_all_to_allv(const std::vector<int>& group, const ByteMatrix& m, CollectiveAlgo algo,
                                Done on_done = {}) {
    return start(plan_all_to_allv(topo_, group, m, algo), std::move(on_done));
  }
  const CollectiveResult& result(std::size_t handle) const { return runs_[handle].result; }
  bool finished(std::size_t handle) const { return runs_[handle].finished; }

 private:
  struct Run {
    CollectivePlan plan;
    CollectiveResult result;
    Done on_done;
    std::size_t next_phase = 0;
    std::uint32_t repeats_done = 0;  ///< of plan.phases[next_phase]
    bool finished = false;
  };
  void launch_phase(std::size_t h);

  sim::Simulation& sim_;
  const Topology& topo_;
  FlowNetwork& net_;
  CollectiveOptions opts_;
  std::vector<Run> runs_;
};

/// The analytical model: per phase, time = max over links of (bytes on link / bandwidth) +
/// the largest path latency; phases add up (with the same overheads as the flow model).
/// Equal to the flow model when, in every phase, every flow crosses a most-loaded link and all
/// flows on that link carry the same bytes (uniform all-to-all through a non-blocking
/// fabric, rings). It is optimistic otherwise: it ignores that a flow throttled elsewhere
/// leaves its bottleneck underused, and that uneven flows finish at different times.
/// `per_link` false skips CollectiveResult::per_link_bytes (a link-count array per call), which
/// the step executor does not read.
CollectiveResult analytical_collective(const Topology& topo, const CollectivePlan& plan,
                                       const CollectiveOptions& opts = {}, bool per_link = true);

/// One collective alone on a fresh network: the `moesim run` path for a single-collective
/// workload and the closed-form tests.
CollectiveResult run_collective(const Topology& topo, CollectivePlan plan, NetworkModel model = NetworkModel::kFlow,
                                const CollectiveOptions& opts = {});

/// Every GPU of the topology, in order (the default group).
std::vector<int> all_gpus(const Topology& topo);

}  // namespace moesim::hw
