#pragma once
/// \file
/// Flow-level network: transfers are fluid flows over fixed paths of directed links, and the
/// flows that share a link divide its bandwidth by max-min fairness.
///
/// Why max-min (and not a per-packet model): an all-to-all among 1,024 GPUs is a million
/// transfers; packet simulation is out of reach, while the max-min fluid model is what SimGrid
/// and most flow-level simulators use and matches long RDMA transfers well.
///
/// Model
///  - A link is directional (a full-duplex cable is two links) with a capacity in bytes/s and a
///    latency. A flow has a path (a list of links), a byte count, and a start time.
///  - Rates are the exact max-min fair allocation (progressive filling), recomputed whenever the
///    set of flows changes. All flows started at the same instant are solved together, once: the
///    solve runs as a `Phase::kObserve` event at that instant, after every start and completion.
///  - Latency is added at the END: the bytes leave the source at the flow's (changing) rate from
///    the moment it starts, and the flow completes `path latency` after its last byte has left.
///    Completion = start + drain time + sum of link latencies. Choosing the end (rather than
///    delaying the start) keeps the flows of one collective starting together, so they share one
///    solve, and makes the closed forms simple (bytes / bandwidth + latency).
///  - A rate is kept as the pair (residual capacity, flow count) of the link that froze it, and a
///    drain time is `duration_for(remaining * count, residual)`: for flows that share a link
///    equally from the start this is exactly ceil(bytes * n / B) picoseconds, the closed form.
///
/// Structure (as SimGrid separates the same job):
///  - hardware/flow/store.hpp: the constraint store (links, flows, rate groups, drain heap).
///  - hardware/flow/solver.hpp: the solvers behind one interface: progressive filling (the
///    oracle), arrival solve, departure re-levelling, partial re-solve; why each is exact.
///  - this class: the event adapter. It owns the store and the solvers, turns starts into flows
///    and group drain times into simulation events, and picks the solver for each change:
///    arrivals: ArrivalSolve, else ProgressiveFilling over every flow; departures: DepartureCheck,
///    then nothing (no flow lost its bottlenecks), DepartureRelevel, or PartialResolve.
///    set_incremental(false) runs ProgressiveFilling over every flow at every change.
///  Measured effect: hardware/README.md, "Performance".

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "hardware/flow/solver.hpp"
#include "hardware/flow/store.hpp"
#include "sim/simulation.hpp"
#include "sim/time.hpp"

namespace moesim::hw {

using BatchId = std::uint32_t;

/// Flows to start together. Paths are stored flat (CSR) so that a million-flow collective costs
/// three vectors, not a million small ones.
struct FlowBatch {
  std::vector<LinkId> links;              ///< concatenated paths
  std::vector<std::uint32_t> offsets{0};  ///< path i = links[offsets[i] .. offsets[i+1])
  std::vector<double> bytes;              ///< bytes of flow i (>= 0, finite)

  void add(std::span<const LinkId> path, double flow_bytes) {
    links.insert(links.end(), path.begin(), path.end());
    offsets.push_back(static_cast<std::uint32_t>(links.size()));
    bytes.push_back(flow_bytes);
  }
  std::size_t size() const { return bytes.size(); }
  void reserve(std::size_t flows, std::size_t hops_per_flow) {
    bytes.reserve(flows);
    offsets.reserve(flows + 1);
    links.reserve(flows * hops_per_flow);
  }
};

class FlowNetwork {
 public:
  explicit FlowNetwork(sim::Simulation& sim) : sim_(sim) {}
  FlowNetwork(const FlowNetwork&) = delete;
  FlowNetwork& operator=(const FlowNetwork&) = delete;

  /// Adds a directional link. Capacity must be finite and > 0 (std::invalid_argument).
  LinkId add_link(double bytes_per_s, sim::SimTime latency);
  std::size_t link_count() const { return store_.link_count(); }
  double link_capacity(LinkId l) const { return store_.links[l].capacity; }
  sim::SimTime link_latency(LinkId l) const { return store_.links[l].latency; }
  /// Sum of the latencies of a path's links.
  sim::SimTime path_latency(std::span<const LinkId> path) const;

  /// Starts every flow of `batch` now. `on_done` runs as an event at the instant the last flow of
  /// the batch completes (drain + path latency). Zero-byte flows and empty paths complete after
  /// the path latency without taking bandwidth. Throws std::invalid_argument on a bad link id or
  /// a negative/non-finite byte count.
  BatchId start(FlowBatch batch, sim::Callback on_done);

  /// Completion time of flow `index` of a batch (SimTime::max() while it is still running).
  sim::SimTime flow_done_time(BatchId b, std::size_t index) const { return batches_[b].done[index]; }
  /// Completion of the whole batch (SimTime::max() while running).
  sim::SimTime batch_done_time(BatchId b) const;
  bool batch_finished(BatchId b) const { return batches_[b].running == 0; }

  /// Bytes that have been started over each link (cumulative, including running flows).
  double link_bytes(LinkId l) const { return link_bytes_[l]; }
  /// Current rate of flow `index` of batch `b` in bytes/s (0 when finished or not yet solved).
  double flow_rate(BatchId b, std::size_t index) const;

  std::size_t active_flows() const { return store_.active.size(); }
  const FlowNetworkStats& stats() const { return stats_; }
  /// false: re-solve every active flow at every change (the reference the tests compare with).
  void set_incremental(bool on) { incremental_ = on; }

 private:
  struct Batch {
    std::uint32_t running = 0;
    std::int64_t max_done_ps = 0;
    std::vector<sim::SimTime> done;
    sim::Callback on_done;
  };

  void request_solve();
  void solve_event();
  void drain_event();
  void arm_wakeup();
  /// Records a finished flow's completion (after its path latency) in its batch.
  void flow_finished(flow::FlowIdx f, std::int64_t now_ps, std::int64_t latency_ps);

  sim::Simulation& sim_;
  flow::FlowStore store_;
  flow::ProgressiveFilling filling_;
  flow::ArrivalSolve arrival_{filling_};
  flow::DepartureCheck departure_check_;
  flow::DepartureRelevel relevel_;
  flow::PartialResolve partial_{filling_};

  std::vector<double> link_bytes_;             ///< bytes started per link (link_bytes())
  std::vector<Batch> batches_;                 ///< per start(): completions and the callback
  std::vector<flow::FlowIdx> arrived_;         ///< since the last solve
  std::vector<flow::FlowIdx> departed_;        ///< since the last solve
  std::vector<flow::GroupId> departed_group_;  ///< their groups (parallel to departed_)
  bool solve_pending_ = false;
  sim::EventId wakeup_id_{};                                           ///< the scheduled drain event (invalid: none)
  std::int64_t wakeup_ps_ = std::numeric_limits<std::int64_t>::max();  ///< its instant
  bool incremental_ = true;
  FlowNetworkStats stats_;
};

}  // namespace moesim::hw
