#include <algorithm>
#include <functional>

#include "hardware/flow/solver.hpp"

namespace moesim::hw::flow {

void DepartureRelevel::grow(const FlowStore& s) {
  const std::size_t ng = s.groups.size();
  if (fp_mark_.size() < ng) {
    fp_mark_.resize(ng, 0);
    fp_done_.resize(ng, 0);
    fp_chk_.resize(ng, 0);
    fp_orig_.resize(ng, 0);
    fp_gain_.resize(ng, 0);
  }
  if (fp_moved_.size() < s.flows.size()) fp_moved_.resize(s.flows.size(), 0);
  if (fp_lmark_.size() < s.links.size()) {
    fp_lmark_.resize(s.links.size(), 0);
    fp_ulog_.resize(s.links.size(), 0);
  }
}

inline void DepartureRelevel::slack(LinkId m) {
  if (fp_lmark_[m] == st_) return;
  fp_lmark_[m] = st_;
  fp_slack_.push_back(m);
}

// A link without a group whose used bandwidth changed: only one that is (or was) near its
// capacity, or that some flow remembers as its bottleneck, needs the final check.
inline void DepartureRelevel::slack_if(const FlowStore& s, LinkId m) {
  if (s.used[m] > s.sat_level[m] || s.saturated[m] || s.bneck_count[m] != 0) slack(m);
}

inline void DepartureRelevel::raise_nm(FlowStore& s, LinkId m, double r) {
  if (r > s.nm_max[m]) {
    nm_log_.push_back(LinkValue{m, s.nm_max[m]});
    s.nm_max[m] = r;
  }
}

inline void DepartureRelevel::touch(GroupId g, double orig) {
  if (fp_done_[g] == st_) return;
  fp_done_[g] = st_;
  fp_orig_[g] = orig;
  fp_touched_.push_back(g);
}

inline void DepartureRelevel::push(const FlowStore& s, GroupId g) {
  if (fp_mark_[g] == st_) return;  // already queued
  fp_mark_[g] = st_;
  touch(g, s.groups[g].rate);
  heap_.push_back(heap_key(s.groups[g].rate, s.groups[g].link));
  std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
}

inline void DepartureRelevel::add_used(FlowStore& s, LinkId m, double d) {
  if (fp_ulog_[m] != st_) {  // the undo log keeps each link's value before the solve, once
    fp_ulog_[m] = st_;
    used_log_.push_back(LinkValue{m, s.used[m]});
  }
  s.used[m] += d;
}

// Moves a flow to group `to` (logged for the undo): the flow's rate becomes the group's, so the
// links it crosses see the difference, and their groups are re-levelled.
void DepartureRelevel::move(FlowStore& s, FlowIdx f, GroupId to) {
  Flow& fl = s.flows[f];
  const GroupId from = fl.group;
  touch(from, s.groups[from].rate);
  touch(to, s.groups[to].rate);
  fp_gain_[to] = st_;
  move_log_.push_back(MoveLog{f, from, fl.bneck, fl.key});
  const double dr = s.groups[to].rate - s.groups[from].rate;
  s.rejoin(f, to, now_);
  s.set_bneck(fl, s.groups[to].link);
  if (s.groups[from].size == 0) {  // its link no longer freezes anything
    const LinkId lf = s.groups[from].link;
    new_log_.push_back(NewLog{kNone, lf, s.link_group[lf]});
    s.link_group[lf] = kNone;
    slack(lf);
  }
  const Group& T = s.groups[to];
  for (const LinkId m : s.solver_path(f)) {
    if (dr != 0) add_used(s, m, dr);
    if (m != T.link) raise_nm(s, m, T.rate);
    const GroupId gm = s.link_group[m];
    if (gm != kNone)
      push(s, gm);
    else
      slack_if(s, m);
  }
  push(s, from);
  push(s, to);
}

// The group of the slowest link on f's path (the first on the path among exact ties; kNone if no
// link on its path has a group). Outside this solver a link's group always has members (empty
// groups are released at once); a group that a move empties is unlinked from its link (logged).
GroupId DepartureRelevel::slowest_group(const FlowStore& s, FlowIdx f) const {
  GroupId best = kNone;
  double r1 = std::numeric_limits<double>::infinity();
  for (const LinkId m : s.solver_path(f)) {
    const GroupId gm = s.link_group[m];
    if (gm != kNone && s.groups[gm].rate < r1) {
      r1 = s.groups[gm].rate;
      best = gm;
    }
  }
  return best;
}

// The flows on link l outside group g must not be faster than `rate` (beyond kSatTol). nm_max[l]
// bounds their rates from above; only when it does not settle that are they scanned: each one
// that is faster goes to `not_slower`, and the bound becomes exact (logged for undo).
template <class NotSlower>
void DepartureRelevel::scan_others(FlowStore& s, LinkId l, GroupId g, double rate, NotSlower&& not_slower) {
  if (s.nm_max[l] <= rate * (1 + kSatTol)) return;
  double mx = 0;
  for (FlowIdx h : s.link_flows[l]) {
    const Flow& hl = s.flows[h];
    if (hl.active_pos == kNone || hl.group == g) continue;
    const double hr = s.groups[hl.group].rate;
    mx = std::max(mx, hr);
    if (hr > rate * (1 + kSatTol)) not_slower(h);
  }
  nm_log_.push_back(LinkValue{l, s.nm_max[l]});
  s.nm_max[l] = mx;
}

bool DepartureRelevel::solve(FlowStore& s, const FlowChange& c, FlowNetworkStats& stats) {
  if (c.departed.empty() || !c.arrived.empty()) return false;
  now_ = c.now_ps;
  st_ = ++stamp_;
  budget_ = 0;
  grow(s);
  heap_.clear();
  used_log_.clear();
  group_log_.clear();
  fp_slack_.clear();
  move_log_.clear();
  new_log_.clear();
  fp_touched_.clear();
  nm_log_.clear();
  // Seed: the groups on the departed flows' paths (links without a group: to the final check).
  for (std::size_t k = 0; k < c.departed.size(); ++k) {
    const GroupId g = c.departed_groups[k];
    if (g == kNone || s.link_group[s.groups[g].link] != g) return false;
    for (const LinkId m : s.solver_path(c.departed[k])) {
      const GroupId gm = s.link_group[m];
      if (gm != kNone)
        push(s, gm);
      else
        slack(m);
    }
  }
  bool ok = true;
  for (int round = 0;; ++round) {
    bool settled = false;
    if (!relevel(s) || !check(s, settled)) {
      ok = false;
      break;
    }
    if (settled) break;
    if (round == kMaxRounds || !repair(s)) {
      ok = false;
      break;
    }
  }
  if (!ok) {
    undo(s);
    return false;
  }
  finish(s, stats);
  return true;
}

// Re-level until no group's inputs change. A group re-levelled again and again means the order
// is far from settled: give up (bounded work).
bool DepartureRelevel::relevel(FlowStore& s) {
  const auto cmp = std::greater<>();
  while (!heap_.empty()) {
    std::pop_heap(heap_.begin(), heap_.end(), cmp);
    const auto l = static_cast<LinkId>(heap_.back());
    heap_.pop_back();
    const GroupId g = s.link_group[l];
    if (g == kNone) continue;  // emptied by moves (its link is in fp_slack_)
    fp_mark_[g] = 0;
    if (++budget_ > 4 * fp_touched_.size() + 64) return false;
    Group& G = s.groups[g];
    if (s.link_ngroups[l] == 1 && G.away != 0 && s.bneck_count[l] + G.away == G.size) {
      // Members that found another bottleneck when a departure freed this link (a tie: they are
      // as fast as the flows frozen there) go to that link's group, and this group is re-levelled
      // without them when it comes up again (move() queues both).
      fp_early_.clear();
      for (FlowIdx f : G.mem)
        if (s.flows[f].bneck != l) fp_early_.push_back(f);
      for (FlowIdx f : fp_early_) {
        const LinkId b = s.flows[f].bneck;
        const GroupId to = b == kNone ? kNone : s.link_group[b];
        if (to == kNone || to == g) return false;
        move(s, f, to);
      }
      continue;
    }
    if (s.link_ngroups[l] != 1 || s.bneck_count[l] != G.size || G.away != 0) return false;
    const double res = s.links[l].capacity - s.used[l] + G.size * G.rate;
    if (!(res > 0)) return false;
    if (res == G.num && G.size == G.den) continue;
    group_log_.push_back(GroupLog{g, G.den, G.num, G.rate, G.served, G.anchor_ps});
    const double old = G.rate;
    FlowStore::set_rate(G, res, G.size, now_);
    const double rate = G.rate, delta = rate - old;
    if (delta == 0) continue;
    // Members that are now at least as fast as another link's group on their path, or (rate
    // fell) other flows on l that are now at least as fast as this group, are moved right away
    // (to the slowest group on their path), so that the rest of the re-levelling sees the new
    // grouping. This is only a guess that saves a later round: check() decides.
    fp_early_.clear();
    const LinkId* ml = G.mem_links.data();
    const double lo = rate * (1 - kSatTol);
    for (std::size_t e = 0, ne = G.mem_links.size(); e < ne; ++e) {
      const LinkId m = ml[e];
      if (m == l || m == kNone) continue;
      add_used(s, m, delta);
      if (delta > 0) raise_nm(s, m, rate);  // a falling rate leaves the bound valid
      const GroupId gm = s.link_group[m];
      if (gm == kNone) {
        slack_if(s, m);
      } else {
        push(s, gm);
        if (delta > 0 && s.groups[gm].rate < lo) fp_early_.push_back(G.mem[e / G.stride]);
      }
    }
    add_used(s, l, G.size * delta);
    if (delta < 0) scan_others(s, l, g, rate, [&](FlowIdx h) { fp_early_.push_back(h); });
    if (!fp_early_.empty()) {
      std::sort(fp_early_.begin(), fp_early_.end());
      fp_early_.erase(std::unique(fp_early_.begin(), fp_early_.end()), fp_early_.end());
      for (FlowIdx f : fp_early_) {
        const GroupId to = slowest_group(s, f);
        if (to != kNone && to != s.flows[f].group) move(s, f, to);
      }
    }
  }
  return true;
}

// Checks every relation that involves a touched group or link (relations between untouched
// groups still hold), collecting the flows to move (fp_fix_) and the links that need a group
// (fp_over_). False: a condition that no repair handles failed. `settled`: nothing to repair.
bool DepartureRelevel::check(FlowStore& s, bool& settled) {
  const std::uint32_t cs = ++stamp_;
  const std::uint32_t ms = ++stamp_;
  fp_fix_.clear();
  fp_over_.clear();
  auto flag = [&](FlowIdx f) {
    if (fp_moved_[f] == ms) return;
    fp_moved_[f] = ms;
    fp_fix_.push_back(f);
  };
  for (std::size_t k = 0; k < fp_touched_.size(); ++k) {
    const GroupId g = fp_touched_[k];
    if (fp_chk_[g] == cs) continue;
    fp_chk_[g] = cs;
    const Group& G = s.groups[g];
    if (G.size == 0) continue;
    const LinkId l = G.link;
    const double r = G.rate;
    // Its rate must be its link's fair share for its current members (saturated link).
    if (G.den != G.size || !s.near_full(l)) return false;
    const bool rose = r > fp_orig_[g] || fp_gain_[g] == st_;
    for (std::uint32_t e = 0; rose && e < G.mem.size(); ++e) {
      const LinkId* row = G.row(e);
      for (std::uint32_t j = 0; j < G.stride; ++j) {
        const LinkId m = row[j];
        if (m == kNone) break;
        if (m == l) continue;
        const GroupId gm = s.link_group[m];  // (links without a group: in fp_slack_ if they matter)
        if (gm != kNone && s.groups[gm].rate < r * (1 - kSatTol)) flag(G.mem[e]);
      }
    }
    // The other flows on l must still be slower (checked when its rate fell).
    if (r < fp_orig_[g]) scan_others(s, l, g, r, flag);
  }
  for (const LinkId m : fp_slack_) {  // each link once (slack() deduplicates)
    if (s.link_group[m] != kNone) continue;
    // A flow that remembers a link without a group as its bottleneck (a flow of another link's
    // group that found this one saturated, at its rate) may have lost it when its use changed.
    if (s.bneck_count[m] != 0) return false;
    if (s.over_full(m)) fp_over_.push_back(m);
  }
  settled = fp_fix_.empty() && fp_over_.empty();
  return true;
}

// Moves every flagged flow to the slowest group on its path, and gives each link that is still
// over capacity a new group: the flows above its water level (the flows slower than it keep their
// rates, the others, in rate order, would be frozen there).
bool DepartureRelevel::repair(FlowStore& s) {
  for (FlowIdx f : fp_fix_) {
    const GroupId to = slowest_group(s, f);
    if (to == kNone || to == s.flows[f].group) return false;
    move(s, f, to);
  }
  for (const LinkId m : fp_over_) {
    if (!s.over_full(m)) continue;  // the moves above relieved it
    if (s.link_ngroups[m] != 0 || s.link_group[m] != kNone) return false;
    fp_water_.clear();
    for (FlowIdx h : s.link_flows[m])
      if (s.flows[h].active_pos != kNone) fp_water_.push_back(WaterEntry{s.groups[s.flows[h].group].rate, h});
    std::sort(fp_water_.begin(), fp_water_.end(), [](const WaterEntry& a, const WaterEntry& b) {
      return a.rate != b.rate ? a.rate < b.rate : a.flow < b.flow;
    });
    double res = s.links[m].capacity;
    std::size_t i = 0;
    const std::size_t n = fp_water_.size();
    while (i < n && fp_water_[i].rate * static_cast<double>(n - i) < res) res -= fp_water_[i++].rate;
    if (i == n) return false;  // not over its water level after all: a near-tie
    const GroupId old = s.link_group[m];
    const GroupId g = s.new_group(m);
    grow(s);
    new_log_.push_back(NewLog{g, m, old});
    touch(g, std::numeric_limits<double>::infinity());
    for (; i < n; ++i) move(s, fp_water_[i].flow, g);
  }
  return true;
}

void DepartureRelevel::undo(FlowStore& s) {
  for (std::size_t k = move_log_.size(); k-- > 0;) {
    const MoveLog& o = move_log_[k];
    Flow& fl = s.flows[o.flow];
    s.leave_group(fl);
    s.set_bneck(fl, kNone);
    fl.key = o.key;
    s.join_group(o.flow, o.from);
    s.set_bneck(fl, o.bneck);
  }
  for (std::size_t k = used_log_.size(); k-- > 0;) s.used[used_log_[k].link] = used_log_[k].value;
  for (std::size_t k = nm_log_.size(); k-- > 0;) s.nm_max[nm_log_[k].link] = nm_log_[k].value;
  for (std::size_t k = group_log_.size(); k-- > 0;) {
    const GroupLog& o = group_log_[k];
    Group& G = s.groups[o.group];
    G.den = o.den;
    G.num = o.num;
    G.rate = o.rate;
    G.served = o.served;
    G.anchor_ps = o.anchor_ps;
  }
  for (std::size_t k = new_log_.size(); k-- > 0;) {  // new groups (now empty again) and unlinked ones
    if (new_log_[k].group != kNone) s.release_group(new_log_[k].group);
    s.link_group[new_log_[k].link] = new_log_[k].old;
  }
}

// Accepted: links without a group are not saturated; the groups whose rate or membership changed
// get their drains refreshed (each once), and their links' saturation and largest rate.
void DepartureRelevel::finish(FlowStore& s, FlowNetworkStats& stats) {
  for (LinkId m : fp_slack_)
    if (s.link_group[m] == kNone) s.saturated[m] = 0;
  stats.repairs += move_log_.size();
  for (const NewLog& o : new_log_) stats.repairs += o.group != kNone ? 1 : 0;
  const std::uint32_t rs = ++stamp_;
  auto refresh = [&](GroupId g) {
    if (fp_chk_[g] == rs) return;
    fp_chk_[g] = rs;
    const Group& G = s.groups[g];
    if (G.size > 0) {
      s.saturated[G.link] = 1;
      s.max_rate[G.link] = G.rate;
      stats.flows_resolved += G.size;
    }
    s.refresh_group_drain(g);
  };
  for (const GroupLog& o : group_log_) refresh(o.group);
  for (const MoveLog& o : move_log_) {
    refresh(o.from);
    refresh(s.flows[o.flow].group);
  }
}

}  // namespace moesim::hw::flow
