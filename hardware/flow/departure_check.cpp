#include "hardware/flow/solver.hpp"

namespace moesim::hw::flow {

namespace {
/// The first link of `path` (ending at kNone or `n` entries) that is another saturated link on
/// which `rate` is maximal (within kSatTol), skipping the freed links; kNone if there is none.
LinkId other_bottleneck(const FlowStore& s, const LinkId* path, std::uint32_t n, double rate,
                        const std::vector<std::uint32_t>& freed_stamp, std::uint32_t st) {
  for (std::uint32_t j = 0; j < n && path[j] != kNone; ++j) {
    const LinkId m = path[j];
    if (freed_stamp[m] != st && s.saturated[m] && rate >= s.max_rate[m] * (1 - kSatTol)) return m;
  }
  return kNone;
}
}  // namespace

void DepartureCheck::run(FlowStore& s, FlowChange& c) {
  // Each freed link is examined once, however many departed flows crossed it.
  if (link_stamp_.size() < s.links.size()) link_stamp_.resize(s.links.size(), 0);
  const std::uint32_t u = ++stamp_;
  freed_.clear();
  for (FlowIdx f : c.departed) {
    for (const LinkId l : s.solver_path(f)) {
      if (link_stamp_[l] == u) continue;
      link_stamp_[l] = u;
      freed_.push_back(l);
      s.saturated[l] = s.near_full(l) ? 1 : 0;
    }
  }
  double rho = std::numeric_limits<double>::infinity();
  for (LinkId l : freed_) {
    if (s.bneck_count[l] == 0) continue;
    const GroupId lg = s.link_group[l];
    if (lg != kNone && s.groups[lg].size == s.bneck_count[l] && s.groups[lg].away == 0) {
      // The flows remembering l are exactly its group's members: read their paths from the
      // group's contiguous copy instead of the flow records.
      const Group& G = s.groups[lg];
      for (std::uint32_t e = 0; e < G.mem.size(); ++e) {
        const LinkId alt = other_bottleneck(s, G.row(e), G.stride, G.rate, link_stamp_, u);
        if (alt != kNone)
          s.set_bneck(s.flows[G.mem[e]], alt);
        else
          rho = std::min(rho, G.rate);
      }
      continue;
    }
    for (FlowIdx g : s.link_flows[l]) {
      Flow& gl = s.flows[g];
      if (gl.bneck != l) continue;  // also skips finished flows (bneck cleared)
      const double grate = s.groups[gl.group].rate;
      const LinkId alt = other_bottleneck(s, s.solver_links.data() + gl.sp_begin, gl.sp_len, grate, link_stamp_, u);
      if (alt != kNone)
        s.set_bneck(gl, alt);
      else
        rho = std::min(rho, grate);
    }
  }
  c.freed = freed_;
  c.rho = rho;
}

}  // namespace moesim::hw::flow
