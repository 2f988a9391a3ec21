#include "hardware/flow/solver.hpp"

namespace moesim::hw::flow {

bool ArrivalSolve::solve(FlowStore& s, const FlowChange& c, FlowNetworkStats& stats) {
  if (!c.departed.empty()) return false;
  if (lsmax_.size() < s.links.size()) {
    lsmax_.resize(s.links.size(), 0);
    lfz_.resize(s.links.size(), 0);
    lsb_.resize(s.links.size(), 0);
  }
  set_.clear(s.groups.size());
  std::vector<FlowIdx>& set = set_.flows;
  set.assign(c.arrived.begin(), c.arrived.end());
  auto add_group = [&](GroupId g) {
    if (set_.mark(g)) set.insert(set.end(), s.groups[g].mem.begin(), s.groups[g].mem.end());
  };
  auto add_link_groups = [&](LinkId l) {
    if (s.link_ngroups[l] == 0) return;
    if (s.link_ngroups[l] == 1 && s.link_group[l] != kNone) {
      add_group(s.link_group[l]);
      return;
    }
    for (FlowIdx h : s.link_flows[l]) {
      const Flow& hl = s.flows[h];
      if (hl.active_pos != kNone && hl.group != kNone && s.groups[hl.group].link == l) add_group(hl.group);
    }
  };
  auto in_set = [&](const Flow& h) { return h.group == kNone || set_.has(h.group); };
  for (FlowIdx f : c.arrived)
    for (const LinkId l : s.solver_path(f)) add_link_groups(l);
  for (int round = 0;; ++round) {
    if (2 * set.size() > s.active.size() || round == 8) return false;
    pf_.fill(s, set, false, false);
    const auto ns = static_cast<std::uint32_t>(set.size());
    const auto& touched = pf_.touched();
    for (LinkId l : touched) {
      lsmax_[l] = 0;
      lfz_[l] = -1;
      lsb_[l] = 0;
    }
    for (std::uint32_t i = 0; i < ns; ++i) {
      const double r = pf_.rate(i);
      for (const LinkId l : pf_.set_path(i)) lsmax_[l] = std::max(lsmax_[l], r);
      lfz_[pf_.froze_at(i)] = r;
      const LinkId b = s.flows[set[i]].bneck;
      if (b != kNone && pf_.touches(b)) ++lsb_[b];
    }
    for (LinkId l : touched) {
      const auto& lf = s.link_flows[l];
      const bool others = lf.size() - s.link_dead[l] > pf_.set_flows(l);
      if (lfz_[l] >= 0) {
        add_link_groups(l);  // a link where S froze keeps one group: its old one joins S
        if (!others) continue;
        const double hi = lfz_[l] * (1 + kSatTol);
        for (FlowIdx h : lf) {
          const Flow& hl = s.flows[h];
          if (hl.active_pos == kNone || in_set(hl)) continue;
          if (hl.bneck == l || s.groups[hl.group].rate > hi) add_group(hl.group);
        }
      } else if (s.bneck_count[l] > lsb_[l]) {
        const double cap = s.links[l].capacity;
        const bool sat = cap - pf_.residual(l) >= cap * (1 - kSatTol);
        for (FlowIdx h : lf) {
          const Flow& hl = s.flows[h];
          if (hl.active_pos == kNone || in_set(hl) || hl.bneck != l) continue;
          if (!sat || lsmax_[l] > s.groups[hl.group].rate * (1 + kSatTol)) add_group(hl.group);
        }
      }
    }
    if (set.size() != ns) {  // S grew: solve again
      ++stats.arrival_regrows;
      continue;
    }
    pf_.commit(s, set, false, c.now_ps, stats);
    stats.flows_arrival += ns;
    // commit() set max_rate to the fastest flow of S on each link; a saturated link may carry
    // faster flows of the others (bottlenecked there, or tied within kSatTol).
    for (LinkId l : pf_.touched()) {
      if (!s.saturated[l]) continue;
      for (FlowIdx h : s.link_flows[l]) {
        const Flow& hl = s.flows[h];
        if (hl.active_pos == kNone || hl.group == kNone) continue;
        s.max_rate[l] = std::max(s.max_rate[l], s.groups[hl.group].rate);
      }
    }
    return true;
  }
}

}  // namespace moesim::hw::flow
