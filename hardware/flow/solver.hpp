#pragma once
/// \file
/// Solvers of the flow network's max-min allocation, behind one interface.
///
/// A solver brings a FlowStore to the exact max-min fair allocation of its active flows after a
/// change (flows arrived, or flows departed), or declines and leaves the allocation as it found
/// it, for a more general solver to run:
///  - ProgressiveFilling: progressive filling over every active flow. Always succeeds; it is the
///    oracle every other solver is tested against (tests/hardware/flow_solvers_test.cpp).
///  - ArrivalSolve: arrivals only; re-solves the new flows and the groups around them.
///  - DepartureRelevel: departures only; re-levels the rate groups the departures touch, with
///    in-place repairs of the grouping.
///  - PartialResolve: departures; re-solves the flows at or above the threshold rho that are
///    connected to a freed link. Always succeeds once DepartureCheck has given rho.
/// DepartureCheck is the step before the departure solvers: it finds the remaining flows that
/// lost every bottleneck; when there are none, the allocation is unchanged and nothing runs.
///
/// Why each is exact is written above its class. "Exact" means equal to a full progressive
/// filling up to floating-point rounding of the rates (residuals are updated by differences) and
/// up to ties within kSatTol (a tied flow is at its fair share on both links; a full solve picks
/// the lower link id).

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "hardware/flow/store.hpp"

namespace moesim::hw {

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
  std::uint64_t arrival_solves = 0;   ///< arrivals solved locally (ArrivalSolve), not by a full solve
  std::uint64_t flows_arrival = 0;    ///< flows in those local solves
  std::uint64_t arrival_regrows = 0;  ///< times a local solve's set grew after a violated condition
  std::uint64_t drain_events = 0;     ///< distinct drain instants
};

}  // namespace moesim::hw

namespace moesim::hw::flow {

/// What changed since the store last held a max-min allocation.
struct FlowChange {
  std::span<const FlowIdx> arrived{};                    ///< flows added (solver paths pruned), not yet solved
  std::span<const FlowIdx> departed{};                   ///< flows finished (FlowStore::finish_flow)
  std::span<const GroupId> departed_groups{};            ///< the group each departed flow was in (parallel)
  std::int64_t now_ps = 0;                               ///< rate changes take effect from here
  std::span<const LinkId> freed{};                       ///< DepartureCheck: links the departed flows crossed
  double rho = std::numeric_limits<double>::infinity();  ///< DepartureCheck: see there
};

class FlowSolver {
 public:
  virtual ~FlowSolver() = default;
  /// Brings `store` to the max-min allocation of its active flows after `change` (true), or
  /// returns false with the allocation (rates, groups, used bandwidth) as it was.
  virtual bool solve(FlowStore& store, const FlowChange& change, FlowNetworkStats& stats) = 0;
};

/// (fair share, link id) packed into one integer whose unsigned order is the lexicographic order
/// of the pair: the IEEE bits of the share, made monotone for both signs (-0 counts as +0), then
/// the link id. One integer compare per heap step instead of a two-field compare.
__extension__ typedef unsigned __int128 HeapKey;
HeapKey heap_key(double share, LinkId l);
double key_share(HeapKey k);

/// Progressive filling: raise every unfrozen flow's rate together; the link whose fair share
/// (residual / unfrozen flows) is smallest saturates and freezes its flows at that share. Links
/// sit in a min-heap keyed by share with lazy re-keying (shares only grow while filling), ties
/// broken by link id, so the result is deterministic.
///
/// fill() runs on a set of flows, from the link capacities (`full`) or from the capacity the
/// other flows leave (capacity - used + the set's own rates), into scratch only; commit() then
/// writes the rates, rate groups and per-link state. A link that froze flows keeps its group when
/// every member of that group was in the set (only the group's rate changes; no per-flow work);
/// otherwise it gets a new group. solve() is fill + commit over every active flow.
class ProgressiveFilling final : public FlowSolver {
 public:
  /// Every active flow from the link capacities, whatever the change (only its now_ps is read).
  bool solve(FlowStore& store, const FlowChange& change, FlowNetworkStats& stats) override;

  /// The set to fill, gathered contiguously (index i = position in the set): path i is
  /// path[begin[i] .. begin[i+1]), rate[i] its current rate (0 without a group). fill() gathers it
  /// from the flow records unless the caller has (`gathered`).
  struct Gathered {
    std::vector<std::uint32_t> begin;
    std::vector<LinkId> path;
    std::vector<double> rate;
  };
  Gathered& gathered() { return in_; }

  /// Fills `set` from the link capacities (`full`: the set is every active flow) or from the
  /// capacity the other flows leave, into scratch only.
  void fill(const FlowStore& s, std::span<const FlowIdx> set, bool full, bool gathered);
  /// Writes the result of the last fill() of the same set.
  void commit(FlowStore& s, std::span<const FlowIdx> set, bool full, std::int64_t now_ps, FlowNetworkStats& stats);

  // Result of the last fill(), for ArrivalSolve's checks.
  const std::vector<LinkId>& touched() const { return touched_; }  ///< links the set crosses
  bool touches(LinkId l) const { return link_stamp_[l] == stamp_; }
  double rate(std::uint32_t i) const { return new_num_[i] / new_den_[i]; }  ///< of set position i
  LinkId froze_at(std::uint32_t i) const { return lbneck_[i]; }
  double residual(LinkId l) const { return link_res_[l]; }  ///< capacity the set left on a touched link
  std::uint32_t set_flows(LinkId l) const { return csr_fill_[l] - csr_begin_[l]; }  ///< set flows on l
  std::span<const LinkId> set_path(std::uint32_t i) const {
    return {in_.path.data() + in_.begin[i], in_.begin[i + 1] - in_.begin[i]};
  }

 private:
  void size_links(std::size_t n);

  Gathered in_;
  // Per link (sized to the store's links; valid where link_stamp_ == stamp_):
  std::vector<std::uint32_t> link_stamp_;  ///< == stamp_: crossed by the set (commit: stamp_ + 1, group decided)
  std::vector<std::uint32_t> link_cnt_;    ///< unfrozen set flows on the link
  std::vector<double> link_res_;           ///< residual capacity as the filling proceeds
  std::vector<std::uint32_t> csr_begin_;   ///< the link's set flows: csr_flows_[csr_begin_ .. csr_fill_)
  std::vector<std::uint32_t> csr_fill_;    ///< (end of that range once the sort is done)
  std::vector<std::uint32_t> csr_flows_;   ///< set positions grouped by link (counting sort)
  std::vector<LinkId> touched_;            ///< the links the set crosses, each once
  std::vector<HeapKey> heap_;              ///< (share, link) keys of links with unfrozen flows
  // Per set position:
  std::vector<std::uint8_t> lfrozen_;        ///< frozen yet
  std::vector<double> new_num_;              ///< residual of the link that froze it, at that moment
  std::vector<std::uint32_t> new_den_;       ///< unfrozen count there (rate = num / den)
  std::vector<LinkId> lbneck_;               ///< the link that froze it
  std::vector<std::uint32_t> freeze_order_;  ///< set positions in the order they froze
  /// commit(): groups whose drain must be refreshed; the first entries (up to the count commit
  /// keeps) are the groups with members in the set, whose Group::resolved it resets.
  std::vector<GroupId> touched_groups_;
  std::uint32_t stamp_ = 0;  ///< counter for the stamp arrays above (a fresh value marks a fresh pass)
};

/// Departures: which remaining flows lost every bottleneck? An allocation is max-min fair iff
/// every flow has a saturated link on which its rate is maximal (Bertsekas & Gallager, Data
/// Networks, 6.5). After departures the old rates are still max-min unless some flow lost every
/// such link; only flows whose remembered bottleneck (Flow::bneck) is a freed link can have, and
/// they look for another one on their path (and remember it). rho is the smallest rate among the
/// flows that found none (infinity: the allocation is unchanged). Progressive filling on the new
/// flow set performs the same steps as before below level rho, so every flow below rho keeps its
/// rate.
class DepartureCheck {
 public:
  /// Sets `saturated` on the freed links, may re-point flows' bneck, and fills change.freed and
  /// change.rho.
  void run(FlowStore& s, FlowChange& change);

 private:
  std::vector<std::uint32_t> link_stamp_;  ///< per link: == stamp_ when freed in this run
  std::vector<LinkId> freed_;              ///< the links the departed flows crossed, each once
  std::uint32_t stamp_ = 0;                ///< counter for the stamp arrays above (a fresh value marks a fresh pass)
};

/// A set of flows made of whole rate groups, each group added once (ArrivalSolve, PartialResolve).
class GroupSet {
 public:
  /// Empties the set (and sizes it for `groups` groups).
  void clear(std::size_t groups) {
    if (mark_.size() < groups) mark_.resize(groups, 0);
    ++stamp_;
    flows.clear();
  }
  /// Marks g as in the set: false if it already was. The caller appends g's members to `flows`.
  bool mark(GroupId g) {
    if (mark_[g] == stamp_) return false;
    mark_[g] = stamp_;
    return true;
  }
  bool has(GroupId g) const { return mark_[g] == stamp_; }

  std::vector<FlowIdx> flows;  ///< the set

 private:
  std::vector<std::uint32_t> mark_;  ///< per group: == stamp_ when its members are in the set
  std::uint32_t stamp_ = 0;          ///< counter for the stamp arrays above (a fresh value marks a fresh pass)
};

/// Arrivals only (no departure at this instant). Re-solves a set S of flows on the capacity the
/// others leave, the others keeping their rates, and accepts the result only if it is the max-min
/// allocation of all flows (Bertsekas & Gallager's conditions, within kSatTol): every flow of S
/// froze at a saturated link where it is the fastest (progressive filling guarantees this among
/// S; the others on that link are checked), and every other flow whose bottleneck link carries S
/// traffic still has it (the link is still saturated and no flow of S is faster there). The
/// others' links that S does not cross are unchanged. S starts as the new flows and the groups
/// frozen at the links they cross; a violated condition adds the groups of the flows involved,
/// and S is solved again. S is always whole groups, so commit keeps the links' groups. Declines
/// when S would be over half of the active flows, or after 8 rounds.
class ArrivalSolve final : public FlowSolver {
 public:
  explicit ArrivalSolve(ProgressiveFilling& filling) : pf_(filling) {}
  bool solve(FlowStore& store, const FlowChange& change, FlowNetworkStats& stats) override;

 private:
  ProgressiveFilling& pf_;
  GroupSet set_;  ///< S (the new flows, which have no group yet, and whole groups)
  // Per link, over the links S crosses (valid after each fill):
  std::vector<double> lsmax_;       ///< the fastest flow of S on the link
  std::vector<double> lfz_;         ///< the rate S froze at there (-1: none)
  std::vector<std::uint32_t> lsb_;  ///< flows of S that remember the link as their bottleneck
};

/// Departures only: re-level the groups the departures touch. A group's rate is (capacity - rate
/// of the other flows on its link) / members and depends only on groups that froze before it, so
/// the touched groups are recomputed in rate order (a group whose inputs change again is
/// recomputed again), each change pushed to the links its members cross. The result is accepted
/// only if progressive filling would form the same groups with the new rates (Bertsekas &
/// Gallager's bottleneck conditions): every touched group's link is saturated at the share of its
/// current members, every member's other links that have a group are not slower, the other flows
/// on a group's link are not faster (checked when its rate fell; nm_max usually settles it
/// without a scan), links without a group stay within capacity and nobody remembers one of them
/// as a bottleneck. "Slower" and "faster" are by more than kSatTol: ties are accepted.
///
/// Violations are repaired in place, like a pivot: a flow moves to the slowest group on its path,
/// an over-full link without a group gets a new group (the flows above its water level), and
/// re-levelling continues (moves are tried eagerly while re-levelling, then in up to kMaxRounds
/// rounds). On anything else every change is undone (rates, used, moves, new groups, bounds) and
/// the solver declines.
class DepartureRelevel final : public FlowSolver {
 public:
  bool solve(FlowStore& store, const FlowChange& change, FlowNetworkStats& stats) override;

 private:
  static constexpr int kMaxRounds = 6;
  struct LinkValue {  // undo log entry: a per-link value before this solve
    LinkId link;
    double value;
  };
  struct GroupLog {  // undo log entry: a group's rate before this solve
    GroupId group;
    std::uint32_t den;
    double num, rate, served;
    std::int64_t anchor_ps;
  };
  struct MoveLog {  // undo log entry: a flow moved to another group by a repair
    FlowIdx flow;
    GroupId from;
    LinkId bneck;
    double key;
  };
  struct NewLog {  // undo log entry: a group created by a repair at a link that went over
                   // capacity, or (group kNone) a link whose group a move emptied and unlinked
    GroupId group;
    LinkId link;
    GroupId old;  ///< link_group before
  };
  struct WaterEntry {
    double rate;
    FlowIdx flow;
  };

  void grow(const FlowStore& s);
  void slack(LinkId m);
  void slack_if(const FlowStore& s, LinkId m);
  void raise_nm(FlowStore& s, LinkId m, double r);
  void touch(GroupId g, double orig);
  void push(const FlowStore& s, GroupId g);
  void add_used(FlowStore& s, LinkId m, double d);
  void move(FlowStore& s, FlowIdx f, GroupId to);
  GroupId slowest_group(const FlowStore& s, FlowIdx f) const;
  template <class NotSlower>
  void scan_others(FlowStore& s, LinkId l, GroupId g, double rate, NotSlower&& not_slower);
  bool relevel(FlowStore& s);
  bool check(FlowStore& s, bool& settled);
  bool repair(FlowStore& s);
  void undo(FlowStore& s);
  void finish(FlowStore& s, FlowNetworkStats& stats);

  std::int64_t now_ = 0;       ///< the change's instant (rate changes re-anchor service counters there)
  std::uint32_t st_ = 0;       ///< this solve's stamp (fp_mark_, fp_done_, fp_gain_, fp_lmark_, fp_ulog_)
  std::uint32_t stamp_ = 0;    ///< counter for the stamps of the arrays below (st_ and each check take a fresh one)
  std::size_t budget_ = 0;     ///< re-levellings so far (capped: bounded work)
  std::vector<HeapKey> heap_;  ///< groups waiting to be re-levelled, by (rate, link) at queueing
  // Per group (sized to the store's groups):
  std::vector<std::uint32_t> fp_mark_;  ///< == st_: queued in heap_ (0 once popped)
  std::vector<std::uint32_t> fp_done_;  ///< == st_: touched in this solve (in fp_touched_)
  std::vector<std::uint32_t> fp_chk_;   ///< == a check's or the final refresh's stamp: done there
  std::vector<double> fp_orig_;         ///< rate before this solve (infinity: created by a repair)
  std::vector<std::uint32_t> fp_gain_;  ///< == st_: gained a member in this solve
  // Per link:
  std::vector<std::uint32_t> fp_lmark_;  ///< == st_: in fp_slack_
  std::vector<std::uint32_t> fp_ulog_;   ///< == st_: its used value is in used_log_
  // Per flow:
  std::vector<std::uint32_t> fp_moved_;  ///< == a check's stamp: flagged for a move in fp_fix_
  // Lists:
  std::vector<GroupId> fp_touched_;   ///< groups touched in this solve, each once (rate changed or could have)
  std::vector<LinkId> fp_slack_;      ///< links without a group whose use changed and that matter (slack_if)
  std::vector<LinkId> fp_over_;       ///< links without a group found over capacity by a check
  std::vector<FlowIdx> fp_fix_;       ///< flows a check flagged to move to the slowest group on their path
  std::vector<FlowIdx> fp_early_;     ///< flows to move right away while re-levelling
  std::vector<WaterEntry> fp_water_;  ///< an over-full link's flows, by rate (its water level)
  // Undo logs (replayed backwards when the solve declines):
  std::vector<LinkValue> used_log_;  ///< FlowStore::used before this solve, each link once
  std::vector<LinkValue> nm_log_;    ///< FlowStore::nm_max before each change
  std::vector<GroupLog> group_log_;  ///< a group's rate before each re-levelling
  std::vector<MoveLog> move_log_;    ///< flows moved between groups
  std::vector<NewLog> new_log_;      ///< groups created, links unlinked from their group
};

/// Departures, when re-levelling declined: every flow at or above rho (DepartureCheck) is
/// re-solved on the capacity the others leave. A group's members share one rate, so that set is
/// the members of the groups with rate >= rho; progressive filling levels only grow, so it is
/// closed upwards: it holds every flow that the filling freezes after the first changed step. Of
/// it, only the part connected to a freed link (through links that its flows share) can change:
/// any other part sees the same residual capacities as before, so filling it again gives the
/// rates it has. The connected part is found by a search from the freed links, and its paths and
/// rates are gathered from the groups' contiguous member lists. Always succeeds.
class PartialResolve final : public FlowSolver {
 public:
  explicit PartialResolve(ProgressiveFilling& filling) : pf_(filling) {}
  bool solve(FlowStore& store, const FlowChange& change, FlowNetworkStats& stats) override;

 private:
  ProgressiveFilling& pf_;
  GroupSet set_;                         ///< the flows re-solved
  std::vector<std::uint32_t> bfs_mark_;  ///< per link: == stamp_ when reached by the search
  std::vector<LinkId> bfs_queue_;        ///< the search's links, in visiting order
  std::uint32_t stamp_ = 0;              ///< counter for the stamp arrays above (a fresh value marks a fresh pass)
};

}  // namespace moesim::hw::flow
