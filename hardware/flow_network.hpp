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
/// Speed without approximation
///  - Progressive filling over a min-heap of links keyed by fair share, with lazy re-keying
///    (shares only grow while filling), per-link flow lists, and one pass over each path.
///  - When flows finish and nothing starts, the old allocation (minus the finished flows) is
///    still the max-min allocation unless some remaining flow lost every bottleneck it had
///    (Bertsekas & Gallager, Data Networks, 6.5: an allocation is max-min fair iff every flow
///    has a saturated link on which its rate is maximal). Each flow remembers one bottleneck;
///    only flows whose remembered bottleneck is a freed link are checked, and they look for
///    another one on their path (which they then remember). If some flows lost all their bottlenecks, let rho be the
///    smallest of their rates: progressive filling on the new flow set performs the same steps as before below level
///    rho, so every flow whose rate is below rho keeps it, and only the flows at or above rho are re-solved, on the
///    capacity the others leave; of those, only the part connected to a freed link through links its flows share
///    (found by a search from the freed links), since any other part sees the same residual capacities as before.
///    Results equal a full re-solve (up to floating-point rounding of the rates;
///    `set_incremental(false)` forces full solves, and the tests compare the two).
///  - Arrivals (arrival_solve): the new flows and the groups frozen at the links they cross are
///    re-solved on the capacity the others leave, the others keeping their rates. The result is
///    accepted if it is the max-min allocation of all flows: on each link where the set froze, no
///    other flow is faster (within kSatTol) or bottlenecked there; on each other link the set
///    crosses, the other flows bottlenecked there still are (saturated, none of the set faster).
///    A violation adds the groups of the flows involved and the set is solved again; past half the
///    active flows, everything is re-solved. Without this, every collective's start re-solved
///    every active flow of the cluster (all pipeline stages).
///  - Rate groups: the flows one link freezes in one solve share one rate, so rates, service and
///    drain times are kept per group. A group has a service counter (bytes sent per member since
///    it formed); a member finishes when the counter reaches its key (counter at joining + its
///    bytes left), and members sit in a per-group min-heap by key. A rate change re-anchors the
///    counter (one update per group, however many members), and the simulation's drain heap
///    holds one entry per group. A solve keeps a link's group when all of that group's members
///    were in the solve; only flows that change group pay a per-flow update (about 1% of the
///    re-solved flows in the skewed benchmark).
///  - Re-levelling on departures (fast_resolve): a group's rate is (capacity - rate of the other
///    flows on its link) / members, and depends only on groups that froze before it. After
///    departures, the touched groups are recomputed (in rate order; a group whose inputs change
///    again is recomputed again), each change propagated to the links its members cross. The
///    result is accepted only if progressive filling would form the same groups with the new
///    rates (Bertsekas & Gallager's bottleneck conditions): every touched group's link is
///    saturated at the share of its current members, every member's other links that have a
///    group are strictly faster, the other flows on a group's link are strictly slower (checked
///    when its rate fell; a per-link upper bound on non-member rates, nm_max_, usually settles it
///    without a scan), links without a group stay below capacity and no flow remembers one of them
///    as its bottleneck, and no flow remembers a bottleneck other than its group's link. "Faster"
///    and "slower" are by more than kSatTol: ties are accepted (symmetric all-to-alls are full of
///    them), and members that remember another link as their bottleneck (a tie found when a
///    departure freed their link) move to that link's group first.
///    Violations are repaired in place, like a pivot: a flow moves to the slowest group on its
///    path, an over-full link without a group gets a new group (the flows above its water level),
///    and re-levelling continues (moves are tried eagerly while re-levelling, then in up to 6
///    rounds). On failure every change (rates, used,
///    moves, new groups, bounds) is undone and the flows at or above rho are re-solved as above.
///    Accepted results equal a full re-solve up to floating-point rounding (used bandwidth is
///    updated by differences); the tests compare with full re-solves and check that every path runs.
///  - Dominated links are left out of the solver's paths (prune_paths, at each arrival, looking
///    only at the links the new flows cross): a link whose flows all cross one link of strictly
///    smaller capacity never freezes a flow, so this changes no rate, not even in the last bit.
///    Example: a GPU's PCIe link to its NIC.
///  - One simulation event at a time stands for the earliest group drain; same-picosecond drains
///    are processed together. Heaps use lazy deletion and are compacted in one pass when stale
///    entries dominate.
///  - Finished flows leave the per-link flow lists lazily (a list is compacted when half of it
///    is finished flows), so a finish costs O(path length), not a scan of other flows' paths;
///    the bottleneck check examines each freed link once per event.
///  - A solve first gathers its flows' paths and rates into contiguous arrays (a group keeps a
///    copy of its members' paths, so the departure check, re-levelling and the rho re-solve read
///    contiguous memory); progressive filling then runs on those, with (share, link id) packed
///    into one integer heap key.
///  Measured effect and what still limits the skewed case: hardware/README.md, "Performance".

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "sim/simulation.hpp"
#include "sim/time.hpp"

namespace moesim::hw {

using LinkId = std::uint32_t;
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

/// Counters for benchmarks and tests.
struct FlowNetworkStats {
  std::uint64_t flows_started = 0;
  std::uint64_t full_solves = 0;      ///< progressive filling over every active flow
  std::uint64_t partial_solves = 0;   ///< over the flows at or above the threshold rho
  std::uint64_t fast_solves = 0;      ///< departures solved by re-levelling the changed groups
  std::uint64_t repairs = 0;          ///< in-place regroupings in fast solves (flows moved, groups created)
  std::uint64_t skipped_solves = 0;   ///< departures that provably changed no rate
  std::uint64_t flows_resolved = 0;   ///< sum of flow counts over all solves (+ re-levelled groups' members)
  std::uint64_t flows_full = 0;       ///< of which in full solves (arrivals)
  std::uint64_t flows_partial = 0;    ///< of which in partial solves (at or above rho)
  std::uint64_t arrival_solves = 0;   ///< arrivals solved locally (arrival_solve), not by a full solve
  std::uint64_t flows_arrival = 0;    ///< flows in those local solves
  std::uint64_t arrival_regrows = 0;  ///< times a local solve's set grew after a violated condition
  std::uint64_t drain_events = 0;     ///< distinct drain instants
};

class FlowNetwork {
 public:
  __extension__ typedef unsigned __int128 HeapKey;  ///< internal: packed (share, link) solver key

  explicit FlowNetwork(sim::Simulation& sim) : sim_(sim) {}
  FlowNetwork(const FlowNetwork&) = delete;
  FlowNetwork& operator=(const FlowNetwork&) = delete;

  /// Adds a directional link. Capacity must be finite and > 0 (std::invalid_argument).
  LinkId add_link(double bytes_per_s, sim::SimTime latency);
  std::size_t link_count() const { return links_.size(); }
  double link_capacity(LinkId l) const { return links_[l].capacity; }
  sim::SimTime link_latency(LinkId l) const { return links_[l].latency; }
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

  std::size_t active_flows() const { return active_.size(); }
  const FlowNetworkStats& stats() const { return stats_; }
  /// false: re-solve every active flow at every change (the reference the tests compare with).
  void set_incremental(bool on) { incremental_ = on; }

 private:
  using FlowIdx = std::uint32_t;
  static constexpr std::uint32_t kNone = ~0U;

  struct Link {
    double capacity = 0;
    sim::SimTime latency{};
  };
  struct Flow {
    std::uint32_t path_begin = 0;
    std::uint32_t path_len = 0;
    std::uint32_t sp_begin = 0;  ///< solver path: the path without dominated links (prune_paths)
    std::uint32_t sp_len = 0;
    BatchId batch = 0;
    std::uint32_t index = 0;  ///< index inside its batch
    std::uint32_t active_pos = kNone;
    LinkId bneck = kNone;          ///< a link where this flow is bottlenecked (saturated, max rate)
    std::uint32_t group = kNone;   ///< rate group (kNone until the first solve)
    std::uint32_t member_ver = 0;  ///< bumps when the flow leaves a group (stale group-heap entries)
    std::uint32_t mpos = 0;        ///< position in its group's dense member list
    double key = 0;                ///< group service level at which the flow has sent all its bytes
  };
  /// Flows frozen by the same link in the same solve share one rate (num / den: the link's
  /// residual and unfrozen count when it froze). A group keeps a service counter (bytes sent per
  /// member since the group was formed), so a rate change costs one update per group, not one
  /// per flow: a member finishes when the counter reaches its key, and members are kept in a
  /// min-heap by key (lazy deletion), so the group's next finish is its heap top.
  struct Member {
    double key;
    FlowIdx flow;
    std::uint32_t ver;
    bool operator>(const Member& o) const { return key != o.key ? key > o.key : flow > o.flow; }
  };
  struct Group {
    LinkId link = kNone;
    std::uint32_t size = 0;      ///< live members
    std::uint32_t den = 0;       ///< 0 = no rate yet
    std::uint32_t version = 0;   ///< bumps when the group's drain time changes
    std::uint32_t resolved = 0;  ///< solver scratch: members in the set being solved
    std::uint32_t away = 0;      ///< members whose remembered bottleneck is another link
    std::uint32_t stride = 0;    ///< mem_links entries per member (longest member solver path)
    double num = 0;
    double rate = 0;
    double served = 0;  ///< service counter at anchor_ps
    std::int64_t anchor_ps = 0;
    std::int64_t drain_ps = 0;
    std::vector<Member> heap;
    /// Dense member list (swap-remove) with each member's solver path copied inline (padded
    /// with kNone to `stride`), so re-levelling a group reads one contiguous array.
    std::vector<FlowIdx> mem;
    std::vector<LinkId> mem_links;
  };
  struct Batch {
    std::uint32_t running = 0;
    std::int64_t max_done_ps = 0;
    std::vector<sim::SimTime> done;
    sim::Callback on_done;
  };
  struct Pending {  // min-heap entry of group drain times
    std::int64_t ps;
    std::uint32_t group;
    std::uint32_t version;
    bool operator>(const Pending& o) const { return ps != o.ps ? ps > o.ps : group > o.group; }
  };

  void request_solve();
  void solve_event();
  void solve(const std::vector<FlowIdx>& set, bool full, bool gathered = false);
  /// Progressive filling of `set` into solver scratch only (touched_, link_res_, csr_*,
  /// new_num_/new_den_/lbneck_, freeze_order_); returns its link stamp. commit() then writes the
  /// rates, groups and per-link state. solve() = commit(fill()).
  std::uint32_t fill(const std::vector<FlowIdx>& set, bool full, bool gathered);
  void commit(const std::vector<FlowIdx>& set, bool full, std::uint32_t st);
  bool arrival_solve();
  void drain_event();
  void finish_flow(FlowIdx f, std::int64_t now_ps);
  std::uint32_t new_group(LinkId l);
  void release_group(std::uint32_t g);
  bool fast_resolve();
  double served_at(const Group& g, std::int64_t now_ps) const {
    return g.den != 0 && now_ps > g.anchor_ps ? g.served + g.rate * (static_cast<double>(now_ps - g.anchor_ps) * 1e-12)
                                              : g.served;
  }
  void leave_group(Flow& fl);
  void join_group(FlowIdx f, std::uint32_t g);
  void refresh_group_drain(std::uint32_t g);
  bool member_live(std::uint32_t g, const Member& m) const {
    const Flow& fl = flows_[m.flow];
    return fl.group == g && fl.member_ver == m.ver;
  }
  void arm_wakeup();
  void prune_paths();
  void maybe_reset();
  void set_bneck(Flow& fl, LinkId l) {
    if (fl.group != kNone) {
      Group& G = groups_[fl.group];
      if (fl.bneck == G.link && l != G.link) ++G.away;
      if (fl.bneck != G.link && l == G.link) --G.away;
    }
    if (fl.bneck != kNone) --bneck_count_[fl.bneck];
    fl.bneck = l;
    if (l != kNone) ++bneck_count_[l];
  }

  sim::Simulation& sim_;
  std::vector<Link> links_;
  std::vector<double> link_bytes_;
  std::vector<std::vector<FlowIdx>> link_flows_;  ///< flows per link (finished ones lazily removed)
  std::vector<std::uint32_t> link_dead_;          ///< finished flows still in link_flows_[l]
  std::vector<double> used_;                      ///< sum of active rates per link
  std::vector<double> max_rate_;                  ///< largest rate on a saturated link
  std::vector<double> sat_level_;                 ///< capacity * (1 - kSatTol): "near capacity" above it
  /// Upper bound on the rates of the flows on a link that are not members of its group: infinite
  /// (unknown) after a solve touches the link, exact after fast_resolve scans the link's flows,
  /// raised whenever such a flow's rate grows (re-levelling, moves).
  std::vector<double> nm_max_;
  std::vector<std::uint8_t> saturated_;
  std::vector<std::uint32_t> bneck_count_;  ///< flows whose `bneck` is this link

  std::vector<Flow> flows_;
  std::vector<Group> groups_;
  std::vector<std::uint32_t> free_groups_;
  std::vector<std::uint32_t> link_group_;  ///< per link: the group its last freeze formed (or kNone)
  std::vector<std::uint32_t> touched_groups_;
  std::vector<std::uint32_t> link_ngroups_;  ///< per link: live groups formed there (normally 0 or 1)
  // fast_resolve scratch and undo logs
  struct UsedLog {
    LinkId link;
    double used;
  };
  struct GroupLog {
    std::uint32_t group, den;
    double num, rate, served;
    std::int64_t anchor_ps;
  };
  struct MoveLog {  // a flow moved to another group by a repair
    FlowIdx flow;
    std::uint32_t from;
    LinkId bneck;
    double key;
  };
  struct NewLog {  // a group created by a repair at a link that went over capacity, or (group
                   // kNone) a link whose group a repair emptied and unlinked
    std::uint32_t group;
    LinkId link;
    std::uint32_t old;  ///< link_group_ before
  };
  struct WaterEntry {
    double rate;
    FlowIdx flow;
  };
  std::vector<UsedLog> used_log_;
  std::vector<GroupLog> group_log_;
  std::vector<MoveLog> move_log_;
  std::vector<NewLog> new_log_;
  std::vector<LinkId> fp_slack_, fp_over_;
  std::vector<std::uint32_t> fp_mark_, fp_done_, fp_chk_;  ///< per group: queued / touched / checked stamps
  std::vector<double> fp_orig_;                            ///< per group: rate before this event
  std::vector<std::uint32_t> fp_gain_;                     ///< per group: gained a member in this event
  std::vector<std::uint32_t> fp_lmark_, fp_ulog_;          ///< per link: in fp_slack_ / in used_log_
  std::vector<UsedLog> nm_log_;                            ///< undo log of nm_max_
  std::vector<std::uint32_t> fp_touched_;
  std::vector<std::uint32_t> fp_moved_;  ///< per flow: flagged or moved in this repair round
  std::vector<FlowIdx> fp_fix_, fp_early_;
  std::vector<WaterEntry> fp_water_;
  std::vector<LinkId> path_links_;
  std::vector<LinkId> solver_links_;     ///< solver paths (sp_begin/sp_len), rebuilt by prune_paths
  std::vector<std::uint8_t> dominated_;  ///< per link: left out of solver paths
  std::vector<LinkId> dom_by_;           ///< per dominated link: the smaller link all its flows cross
  std::vector<LinkId> prune_links_, opened_;
  std::vector<FlowIdx> repath_;
  // arrival_solve scratch: per group, in the set being solved; per link, the fastest flow of the
  // set, the rate the set froze at there (-1: none), the set's flows that remembered it as bottleneck
  std::vector<std::uint32_t> grp_mark_;
  std::vector<double> lsmax_, lfz_;
  std::vector<std::uint32_t> lsb_;
  std::vector<std::uint32_t> bfs_mark_;  ///< per link: reached by the partial solve's search
  std::vector<LinkId> bfs_queue_;
  std::vector<FlowIdx> active_;
  std::vector<Batch> batches_;

  std::vector<FlowIdx> arrived_;               ///< since the last solve
  std::vector<FlowIdx> departed_;              ///< since the last solve
  std::vector<std::uint32_t> departed_group_;  ///< their groups (parallel to departed_)
  bool solve_pending_ = false;
  /// Min-heap (std::push_heap with std::greater) of drain times. A rate change pushes a new
  /// entry and leaves the old one stale (version mismatch); compact_drains() drops the stale
  /// entries in one O(n) pass when they outnumber the live ones three to one, so the heap stays
  /// a small multiple of the active set instead of growing with every rate change.
  std::vector<Pending> drains_;
  void push_drain(const Pending& p) {
    drains_.push_back(p);
    std::push_heap(drains_.begin(), drains_.end(), std::greater<>());
  }
  void pop_drain() {
    std::pop_heap(drains_.begin(), drains_.end(), std::greater<>());
    drains_.pop_back();
  }
  void compact_drains();
  sim::EventId wakeup_id_{};
  std::int64_t wakeup_ps_ = std::numeric_limits<std::int64_t>::max();

  // solver scratch (sized to links / flows, reused)
  std::vector<std::uint32_t> link_stamp_, link_cnt_, csr_begin_, csr_fill_;
  std::vector<double> link_res_;
  std::vector<FlowIdx> csr_flows_;
  std::vector<LinkId> touched_, freed_;
  std::vector<std::uint8_t> alive_;  ///< per flow: still running (dense copy of active_pos != kNone)
  // per-solve arrays indexed by position in the solved set
  std::vector<std::uint32_t> lbegin_;
  std::vector<LinkId> lpath_, lbneck_;
  std::vector<double> lrate_;
  std::vector<std::uint8_t> lfrozen_;
  std::vector<double> new_num_;
  std::vector<std::uint32_t> new_den_;
  std::vector<HeapKey> heap_;
  std::vector<FlowIdx> set_scratch_;
  std::vector<FlowIdx> freeze_order_;
  std::uint32_t stamp_ = 0;

  bool incremental_ = true;
  FlowNetworkStats stats_;
};

}  // namespace moesim::hw
