#include "hardware/flow/solver.hpp"

namespace moesim::hw::flow {

bool PartialResolve::solve(FlowStore& s, const FlowChange& c, FlowNetworkStats& stats) {
  const double cut = c.rho * (1 - kSatTol);
  set_.clear(s.groups.size());
  auto& in = pf_.gathered();
  in.path.clear();
  in.rate.clear();
  in.begin.clear();
  const std::uint32_t gs = ++stamp_;
  if (bfs_mark_.size() < s.links.size()) bfs_mark_.resize(s.links.size(), 0);
  bfs_queue_.clear();
  for (LinkId l : c.freed) {
    bfs_mark_[l] = gs;
    bfs_queue_.push_back(l);
  }
  for (std::size_t q = 0; q < bfs_queue_.size(); ++q) {
    const LinkId l = bfs_queue_[q];
    for (FlowIdx h : s.link_flows[l]) {
      const Flow& hl = s.flows[h];
      if (hl.active_pos == kNone) continue;
      const GroupId g = hl.group;
      if (!(s.groups[g].rate >= cut) || !set_.mark(g)) continue;
      const Group& G = s.groups[g];
      for (std::uint32_t e = 0; e < G.mem.size(); ++e) {
        set_.flows.push_back(G.mem[e]);
        in.begin.push_back(static_cast<std::uint32_t>(in.path.size()));
        in.rate.push_back(G.rate);
        const LinkId* row = G.row(e);
        for (std::uint32_t j = 0; j < G.stride && row[j] != kNone; ++j) {
          const LinkId m = row[j];
          in.path.push_back(m);
          if (bfs_mark_[m] != gs) {
            bfs_mark_[m] = gs;
            bfs_queue_.push_back(m);
          }
        }
      }
    }
  }
  in.begin.push_back(static_cast<std::uint32_t>(in.path.size()));
  pf_.fill(s, set_.flows, false, true);
  pf_.commit(s, set_.flows, false, c.now_ps, stats);
  stats.flows_partial += set_.flows.size();
  return true;
}

}  // namespace moesim::hw::flow
