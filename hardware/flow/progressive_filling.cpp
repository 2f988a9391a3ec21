#include <algorithm>
#include <cstring>
#include <functional>

#include "hardware/flow/solver.hpp"

namespace moesim::hw::flow {

HeapKey heap_key(double share, LinkId l) {
  const double s = share + 0.0;
  std::uint64_t b = 0;
  std::memcpy(&b, &s, sizeof b);
  b = (b >> 63) != 0 ? ~b : (b | (1ULL << 63));
  return (static_cast<HeapKey>(b) << 32) | l;
}

double key_share(HeapKey k) {
  auto b = static_cast<std::uint64_t>(k >> 32);
  b = (b >> 63) != 0 ? (b & ~(1ULL << 63)) : ~b;
  double s = 0;
  std::memcpy(&s, &b, sizeof s);
  return s;
}

void ProgressiveFilling::size_links(std::size_t n) {
  if (link_stamp_.size() >= n) return;
  link_stamp_.resize(n, 0);
  link_cnt_.resize(n, 0);
  link_res_.resize(n, 0);
  csr_begin_.resize(n, 0);
  csr_fill_.resize(n, 0);
}

bool ProgressiveFilling::solve(FlowStore& s, const FlowChange& c, FlowNetworkStats& stats) {
  fill(s, s.active, true, false);
  commit(s, s.active, true, c.now_ps, stats);
  stats.flows_full += s.active.size();
  return true;
}

void ProgressiveFilling::fill(const FlowStore& s, std::span<const FlowIdx> set, bool full, bool gathered) {
  size_links(s.links.size());
  const std::uint32_t st = ++stamp_;
  const auto ns = static_cast<std::uint32_t>(set.size());
  touched_.clear();
  // Gather the paths and rates of the set into contiguous arrays, so that the passes below do
  // not chase flow records scattered over memory.
  auto& lbegin = in_.begin;
  auto& lpath = in_.path;
  auto& lrate = in_.rate;
  if (!gathered) {
    lbegin.resize(ns + 1);
    lpath.clear();
    lrate.resize(ns);
    for (std::uint32_t i = 0; i < ns; ++i) {
      const Flow& fl = s.flows[set[i]];
      lbegin[i] = static_cast<std::uint32_t>(lpath.size());
      for (std::uint32_t k = 0; k < fl.sp_len; ++k) lpath.push_back(s.solver_links[fl.sp_begin + k]);
      lrate[i] = fl.group == kNone ? 0.0 : s.groups[fl.group].rate;
    }
    lbegin[ns] = static_cast<std::uint32_t>(lpath.size());
  }
  for (std::uint32_t i = 0; i < ns; ++i) {
    for (std::uint32_t k = lbegin[i]; k < lbegin[i + 1]; ++k) {
      const LinkId l = lpath[k];
      if (link_stamp_[l] != st) {
        link_stamp_[l] = st;
        touched_.push_back(l);
        link_cnt_[l] = 0;
        link_res_[l] = full ? s.links[l].capacity : s.links[l].capacity - s.used[l];
      }
      ++link_cnt_[l];
      if (!full) link_res_[l] += lrate[i];
    }
  }
  // Flows of each touched link, counting sort by link.
  std::uint32_t pos = 0;
  for (LinkId l : touched_) {
    csr_begin_[l] = pos;
    csr_fill_[l] = pos;
    pos += link_cnt_[l];
  }
  csr_flows_.resize(pos);
  for (std::uint32_t i = 0; i < ns; ++i)
    for (std::uint32_t k = lbegin[i]; k < lbegin[i + 1]; ++k) csr_flows_[csr_fill_[lpath[k]]++] = i;
  // The filling. A popped key smaller than the link's current share is re-inserted instead of
  // updated in place.
  freeze_order_.clear();
  lfrozen_.assign(ns, 0);
  new_num_.resize(ns);
  new_den_.resize(ns);
  lbneck_.resize(ns);
  heap_.clear();
  for (LinkId l : touched_) heap_.push_back(heap_key(link_res_[l] / link_cnt_[l], l));
  const auto cmp = std::greater<>();
  std::make_heap(heap_.begin(), heap_.end(), cmp);
  while (!heap_.empty()) {
    std::pop_heap(heap_.begin(), heap_.end(), cmp);
    const HeapKey hk = heap_.back();
    heap_.pop_back();
    const auto l = static_cast<LinkId>(hk);
    const double key = key_share(hk);
    const std::uint32_t cnt = link_cnt_[l];
    if (cnt == 0) continue;
    double res = link_res_[l];
    const double share = res / cnt;
    if (share > key) {
      heap_.push_back(heap_key(share, l));
      std::push_heap(heap_.begin(), heap_.end(), cmp);
      continue;
    }
    // Rounding can leave a tied link a hair below zero; it still has flows to serve.
    if (!(res > 0)) res = s.links[l].capacity * 1e-15;
    const double rate = res / cnt;
    for (std::uint32_t k = csr_begin_[l], e = csr_fill_[l]; k < e; ++k) {
      const std::uint32_t i = csr_flows_[k];
      if (lfrozen_[i]) continue;
      lfrozen_[i] = 1;
      freeze_order_.push_back(i);
      new_num_[i] = res;
      new_den_[i] = cnt;
      lbneck_[i] = l;
      for (std::uint32_t j = lbegin[i]; j < lbegin[i + 1]; ++j) {
        const LinkId m = lpath[j];
        link_res_[m] -= rate;
        --link_cnt_[m];
      }
    }
  }
}

void ProgressiveFilling::commit(FlowStore& s, std::span<const FlowIdx> set, bool full, std::int64_t now,
                                FlowNetworkStats& stats) {
  const auto ns = static_cast<std::uint32_t>(set.size());
  const std::uint32_t st = stamp_;
  const auto& lbegin = in_.begin;
  const auto& lpath = in_.path;
  stats.flows_resolved += ns;
  if (full) {
    std::fill(s.nm_max.begin(), s.nm_max.end(), std::numeric_limits<double>::infinity());  // unknown until scanned
    std::fill(s.used.begin(), s.used.end(), 0.0);
    std::fill(s.saturated.begin(), s.saturated.end(), 0);
    std::fill(s.max_rate.begin(), s.max_rate.end(), 0.0);
  }
  for (LinkId l : touched_) {
    s.max_rate[l] = 0;
    if (!full) s.nm_max[l] = std::numeric_limits<double>::infinity();  // unknown: scan when needed
  }
  for (std::uint32_t i = 0; i < ns; ++i) {  // largest rate of the set on each link
    const double rate = new_num_[i] / new_den_[i];
    for (std::uint32_t j = lbegin[i]; j < lbegin[i + 1]; ++j)
      s.max_rate[lpath[j]] = std::max(s.max_rate[lpath[j]], rate);
  }
  for (LinkId l : touched_) {
    s.used[l] = s.links[l].capacity - link_res_[l];
    s.saturated[l] = s.near_full(l) ? 1 : 0;
  }
  // Rate groups. A link that froze flows keeps its group when every member of that group was in
  // this solve (then the group's flows that froze there again need no per-flow work, only the
  // group's rate changes); otherwise it gets a new group and the old one keeps its other members.
  touched_groups_.clear();
  for (std::uint32_t i = 0; i < ns; ++i) {
    const GroupId g = s.flows[set[i]].group;
    if (g != kNone && s.groups[g].resolved++ == 0) touched_groups_.push_back(g);
  }
  const auto counted = static_cast<std::uint32_t>(touched_groups_.size());
  for (std::uint32_t i : freeze_order_) {
    const LinkId l = lbneck_[i];
    if (link_stamp_[l] == st + 1) continue;  // this link's group is already decided
    link_stamp_[l] = st + 1;
    GroupId g = s.link_group[l];
    if (g == kNone || s.groups[g].resolved != s.groups[g].size) g = s.new_group(l);
    Group& G = s.groups[g];
    if (G.den != new_den_[i] || G.num != new_num_[i]) {
      FlowStore::set_rate(G, new_num_[i], new_den_[i], now);
      touched_groups_.push_back(g);
    }
  }
  ++stamp_;  // st + 1 was used above
  for (std::uint32_t i = 0; i < ns; ++i) {
    const FlowIdx f = set[i];
    Flow& fl = s.flows[f];
    s.set_bneck(fl, lbneck_[i]);
    const GroupId g = s.link_group[lbneck_[i]];
    if (fl.group == g) continue;
    if (fl.group != kNone) touched_groups_.push_back(fl.group);
    s.rejoin(f, g, now);
    touched_groups_.push_back(g);
  }
  for (std::uint32_t k = 0; k < counted; ++k) s.groups[touched_groups_[k]].resolved = 0;
  std::sort(touched_groups_.begin(), touched_groups_.end());
  touched_groups_.erase(std::unique(touched_groups_.begin(), touched_groups_.end()), touched_groups_.end());
  for (GroupId g : touched_groups_) s.refresh_group_drain(g);
}

}  // namespace moesim::hw::flow
