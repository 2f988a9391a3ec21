#pragma once
/// \file
/// The flow network's constraint store: links, flows with their paths, rate groups and the
/// per-link state that the solvers read and keep consistent. It holds no events and solves
/// nothing: the solvers (hardware/flow/solver.hpp) change rates, and hw::FlowNetwork
/// (hardware/flow_network.hpp) turns drain times into simulation events.
///
/// Rates live in rate groups: the flows that one link froze in one solve share one rate,
/// num / den (the link's residual capacity and unfrozen flow count when it froze), so a rate
/// change is one update per group, not one per flow. A group keeps a service counter (bytes
/// sent per member since it formed); a member has sent all its bytes when the counter reaches
/// the member's key, and members sit in a per-group min-heap by key. The store's drain heap
/// holds one entry per group: the instant its next member finishes. A solve keeps a link's
/// group when all of that group's members were in the solve; only flows that change group pay a
/// per-flow update.
///
/// Invariants between solves (check_invariants() tests them; the unit tests call it after every
/// solver):
///  - every active flow is in exactly one live group, a group's rate is num / den, and `used` of
///    a non-dominated link is the sum of its active flows' rates;
///  - `bneck_count`, `link_ngroups`, `link_group`, `Group::size`, `Group::away` and the members'
///    inline solver paths match the flow records;
///  - a flow's remembered bottleneck (Flow::bneck) is saturated and no flow on it is faster
///    (within 1e-8): DepartureCheck relies on it to find the flows a departure can speed up;
///  - `nm_max[l]` bounds the rates of the flows on l that are not members of l's group.
///
/// Dominated links (prune_paths) are left out of the solver paths; their `used` is not kept.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "sim/time.hpp"

namespace moesim::hw {
using LinkId = std::uint32_t;
}

namespace moesim::hw::flow {

using FlowIdx = std::uint32_t;
using GroupId = std::uint32_t;
inline constexpr std::uint32_t kNone = ~0U;

/// Relative tolerance for "this link is full" and "this flow has the largest rate on the link".
/// It only decides whether an incremental result is accepted; a wrong "no" costs a re-solve.
inline constexpr double kSatTol = 1e-9;

struct Link {
  double capacity = 0;
  sim::SimTime latency{};
};

struct Flow {
  std::uint32_t path_begin = 0;  ///< path = FlowStore::path_links[path_begin .. + path_len)
  std::uint32_t path_len = 0;
  std::uint32_t sp_begin = 0;  ///< solver path: the path without dominated links (prune_paths)
  std::uint32_t sp_len = 0;
  std::uint32_t batch = 0;           ///< owner's tag (hw::FlowNetwork: the batch id)
  std::uint32_t index = 0;           ///< owner's tag (hw::FlowNetwork: index inside the batch)
  std::uint32_t active_pos = kNone;  ///< position in FlowStore::active (kNone: finished)
  LinkId bneck = kNone;              ///< a link where this flow is bottlenecked (saturated, max rate)
  GroupId group = kNone;             ///< rate group (kNone until the first solve)
  std::uint32_t member_ver = 0;      ///< bumps when the flow leaves a group (stale group-heap entries)
  std::uint32_t mpos = 0;            ///< position in its group's dense member list
  double key = 0;  ///< group service level at which the flow has sent all its bytes (bytes left while ungrouped)
};

/// Entry of a group's member heap (lazy deletion: stale when the flow left the group since).
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
  std::uint32_t resolved = 0;  ///< ProgressiveFilling::commit scratch: members in the set being solved (0 outside)
  std::uint32_t away = 0;      ///< members whose remembered bottleneck is another link
  std::uint32_t stride = 0;    ///< mem_links entries per member (longest member solver path)
  double num = 0;
  double rate = 0;
  double served = 0;  ///< service counter at anchor_ps
  std::int64_t anchor_ps = 0;
  std::int64_t drain_ps = 0;
  std::vector<Member> heap;
  /// Dense member list (swap-remove) with each member's solver path copied inline (padded with
  /// kNone to `stride`), so that re-levelling a group reads one contiguous array.
  std::vector<FlowIdx> mem;
  std::vector<LinkId> mem_links;

  /// Solver path of member e (kNone-padded to `stride`).
  const LinkId* row(std::size_t e) const { return mem_links.data() + e * stride; }
};

/// Entry of the drain heap: group `group` has a member finishing at `ps` (stale when the group's
/// version moved on).
struct Drain {
  std::int64_t ps;
  GroupId group;
  std::uint32_t version;
  bool operator>(const Drain& o) const { return ps != o.ps ? ps > o.ps : group > o.group; }
};

class FlowStore {
 public:
  /// Adds a directional link (the caller validates capacity and latency).
  LinkId add_link(double bytes_per_s, sim::SimTime latency);
  std::size_t link_count() const { return links.size(); }

  /// Makes room for `n` more flows over `hops` more path entries, growing geometrically (an exact
  /// reserve would copy every flow record at every start).
  void reserve(std::size_t n, std::size_t hops);
  /// Adds an active, not yet solved flow (non-empty path, bytes > 0). Its solver path is its
  /// path until prune_paths() runs.
  FlowIdx add_flow(std::span<const LinkId> path, double bytes, std::uint32_t batch, std::uint32_t index);
  /// Removes a flow whose last byte has left: out of its group and the active list, its rate off
  /// the used bandwidth of its links. Returns the sum of its path's latencies in ps.
  std::int64_t finish_flow(FlowIdx f);
  /// Leaves dominated links out of the solver paths, looking at the links `arrived` cross
  /// (flows added since the last call). Returns true when a link rejoined the solver paths of
  /// older flows (then only a full solve is sure to see every change).
  bool prune_paths(std::span<const FlowIdx> arrived);
  /// With no active flow: drops flow records and groups (a long run does not grow without bound).
  void reset_if_idle();

  double rate(FlowIdx f) const { return flows[f].group == kNone ? 0.0 : groups[flows[f].group].rate; }
  std::span<const LinkId> solver_path(FlowIdx f) const {
    return {solver_links.data() + flows[f].sp_begin, flows[f].sp_len};
  }
  std::span<const LinkId> path(FlowIdx f) const { return {path_links.data() + flows[f].path_begin, flows[f].path_len}; }
  /// Used bandwidth at or above capacity * (1 - kSatTol).
  bool near_full(LinkId l) const { return used[l] >= sat_level[l]; }
  /// Used bandwidth over capacity * (1 + kSatTol).
  bool over_full(LinkId l) const { return used[l] > links[l].capacity * (1 + kSatTol); }

  // Rate groups.
  GroupId new_group(LinkId l);
  void release_group(GroupId g);
  void join_group(FlowIdx f, GroupId g);
  void leave_group(Flow& fl);
  /// Moves f out of its group into `to`, keeping its bytes left (key re-based on `to`'s counter).
  void rejoin(FlowIdx f, GroupId to, std::int64_t now_ps) {
    Flow& fl = flows[f];
    double rem = fl.key;
    if (fl.group != kNone) {
      rem -= served_at(groups[fl.group], now_ps);
      leave_group(fl);
    }
    fl.key = served_at(groups[to], now_ps) + std::max(rem, 0.0);
    join_group(f, to);
  }
  /// Service counter of g at now_ps.
  static double served_at(const Group& g, std::int64_t now_ps) {
    return g.den != 0 && now_ps > g.anchor_ps ? g.served + g.rate * (static_cast<double>(now_ps - g.anchor_ps) * 1e-12)
                                              : g.served;
  }
  /// Sets g's rate to num / den from now_ps on (the counter is re-anchored).
  static void set_rate(Group& g, double num, std::uint32_t den, std::int64_t now_ps) {
    g.served = served_at(g, now_ps);
    g.anchor_ps = now_ps;
    g.num = num;
    g.den = den;
    g.rate = num / den;
  }
  /// Instant at which a member with this key finishes, at g's current rate.
  static std::int64_t done_ps(const Group& g, double key) {
    const double left = std::max(key - g.served, 0.0);
    return g.anchor_ps + sim::duration_for(left * g.den, g.num).ps();
  }
  bool member_live(GroupId g, const Member& m) const {
    const Flow& fl = flows[m.flow];
    return fl.group == g && fl.member_ver == m.ver;
  }
  /// Re-computes g's next drain (pushing a drain entry when it changed), or releases g when it
  /// has no member left.
  void refresh_group_drain(GroupId g);
  void set_bneck(Flow& fl, LinkId l) {
    if (fl.group != kNone) {
      Group& G = groups[fl.group];
      if (fl.bneck == G.link && l != G.link) ++G.away;
      if (fl.bneck != G.link && l == G.link) --G.away;
    }
    if (fl.bneck != kNone) --bneck_count[fl.bneck];
    fl.bneck = l;
    if (l != kNone) ++bneck_count[l];
  }

  // Drain heap.
  /// Earliest live drain instant (INT64_MAX when none); drops stale entries on top, and compacts
  /// the heap in one pass when stale entries outnumber live ones four to one.
  std::int64_t earliest_drain_ps();
  /// Pops drain entries due at or before now_ps until a live one: true with its group in `g`,
  /// false when none is due.
  bool pop_due_drain(std::int64_t now_ps, GroupId& g) {
    while (!drains.empty() && drains.front().ps <= now_ps) {
      const Drain d = drains.front();
      pop_drain();
      if (groups[d.group].version != d.version) continue;
      g = d.group;
      return true;
    }
    return false;
  }
  /// Finishes every member of g whose own drain time has come (in key order), calling
  /// `finished(flow, path latency in ps)` after each, then refreshes g's drain.
  template <class Finished>
  void drain_group(GroupId g, std::int64_t now_ps, Finished&& finished) {
    Group& G = groups[g];
    G.drain_ps = std::numeric_limits<std::int64_t>::max();
    while (!G.heap.empty()) {
      const Member m = G.heap.front();
      const bool live = member_live(g, m);
      if (live && done_ps(G, m.key) > now_ps) break;
      std::pop_heap(G.heap.begin(), G.heap.end(), std::greater<>());
      G.heap.pop_back();
      if (live) finished(m.flow, finish_flow(m.flow));
    }
    refresh_group_drain(g);
  }

  /// First violated invariant (see the file comment), or an empty string. O(flows x path).
  std::string check_invariants() const;

  // ---- Links -------------------------------------------------------------------------------
  std::vector<Link> links;
  std::vector<std::vector<FlowIdx>> link_flows;  ///< flows per link (finished ones removed lazily)
  std::vector<std::uint32_t> link_dead;          ///< finished flows still in link_flows[l]
  std::vector<double> used;                      ///< sum of active rates per link (not kept on dominated links)
  std::vector<double> max_rate;                  ///< largest rate on a saturated link (as of its last solve)
  std::vector<double> sat_level;                 ///< capacity * (1 - kSatTol): "near capacity" at or above it
  /// Upper bound on the rates of the flows on a link that are not members of its group: infinite
  /// (unknown) after a solve touches the link, exact after DepartureRelevel scans the link's
  /// flows, raised whenever such a flow's rate grows (re-levelling, moves).
  std::vector<double> nm_max;
  std::vector<std::uint8_t> saturated;      ///< near capacity as of the last solve or departure check
  std::vector<std::uint32_t> bneck_count;   ///< flows whose `bneck` is this link
  std::vector<GroupId> link_group;          ///< the group the link's last freeze formed (or kNone)
  std::vector<std::uint32_t> link_ngroups;  ///< live groups formed at the link (normally 0 or 1)
  std::vector<std::uint8_t> dominated;      ///< left out of solver paths (prune_paths)
  std::vector<LinkId> dom_by;               ///< per dominated link: the smaller link all its flows cross

  // ---- Flows and groups --------------------------------------------------------------------
  std::vector<Flow> flows;
  std::vector<FlowIdx> active;       ///< running flows (swap-remove order)
  std::vector<LinkId> path_links;    ///< paths (Flow::path_begin/path_len)
  std::vector<LinkId> solver_links;  ///< solver paths (Flow::sp_begin/sp_len), rebuilt by prune_paths
  std::vector<Group> groups;
  std::vector<GroupId> free_groups;  ///< released group ids, reused last-in first-out
  /// Min-heap (std::push_heap with std::greater) of group drain times. A rate change pushes a new
  /// entry and leaves the old one stale (version mismatch).
  std::vector<Drain> drains;

 private:
  void push_drain(const Drain& d) {
    drains.push_back(d);
    std::push_heap(drains.begin(), drains.end(), std::greater<>());
  }
  void pop_drain() {
    std::pop_heap(drains.begin(), drains.end(), std::greater<>());
    drains.pop_back();
  }

  // prune_paths scratch (per link unless noted; stamps compared with prune_stamp_)
  std::vector<std::uint32_t> prune_seen_;   ///< == prune_stamp_: crossed by an arrived flow
  std::vector<std::uint32_t> prune_count_;  ///< arrived flows crossing the link (valid where seen)
  std::vector<LinkId> prune_links_;         ///< the links the arrived flows cross, each once
  std::vector<LinkId> opened_;              ///< dominated links that rejoined the solver paths
  std::vector<FlowIdx> repath_;             ///< older flows on opened_ links (their solver paths are rebuilt)
  std::uint32_t prune_stamp_ = 0;           ///< counter for prune_seen_
};

}  // namespace moesim::hw::flow
