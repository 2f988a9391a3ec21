#include "hardware/flow/store.hpp"

#include <cmath>
#include <sstream>

namespace moesim::hw::flow {

LinkId FlowStore::add_link(double bytes_per_s, sim::SimTime latency) {
  const auto id = static_cast<LinkId>(links.size());
  links.push_back(Link{bytes_per_s, latency});
  link_flows.emplace_back();
  link_dead.push_back(0);
  used.push_back(0);
  max_rate.push_back(0);
  sat_level.push_back(bytes_per_s * (1 - kSatTol));
  nm_max.push_back(0);
  saturated.push_back(0);
  bneck_count.push_back(0);
  link_group.push_back(kNone);
  link_ngroups.push_back(0);
  dominated.push_back(0);
  dom_by.push_back(kNone);
  return id;
}

void FlowStore::reserve(std::size_t n, std::size_t hops) {
  const auto grow = [](auto& v, std::size_t more) {
    if (v.size() + more > v.capacity()) v.reserve(std::max(v.size() + more, 2 * v.capacity()));
  };
  grow(flows, n);
  grow(path_links, hops);
  grow(solver_links, hops);
}

FlowIdx FlowStore::add_flow(std::span<const LinkId> path, double bytes, std::uint32_t batch, std::uint32_t index) {
  const auto f = static_cast<FlowIdx>(flows.size());
  Flow fl;
  fl.path_begin = static_cast<std::uint32_t>(path_links.size());
  fl.path_len = static_cast<std::uint32_t>(path.size());
  fl.batch = batch;
  fl.index = index;
  fl.key = bytes;  // bytes left while the flow has no group
  fl.active_pos = static_cast<std::uint32_t>(active.size());
  fl.sp_begin = static_cast<std::uint32_t>(solver_links.size());
  fl.sp_len = fl.path_len;
  for (const LinkId l : path) {
    path_links.push_back(l);
    solver_links.push_back(l);
    link_flows[l].push_back(f);
  }
  flows.push_back(fl);
  active.push_back(f);
  return f;
}

std::int64_t FlowStore::finish_flow(FlowIdx f) {
  Flow& fl = flows[f];
  set_bneck(fl, kNone);
  const double r = groups[fl.group].rate;
  leave_group(fl);
  const FlowIdx moved = active.back();
  active[fl.active_pos] = moved;
  flows[moved].active_pos = fl.active_pos;
  active.pop_back();
  fl.active_pos = kNone;
  // Finished flows stay in the per-link lists (readers skip them: active_pos == kNone) until
  // they are half of a list; then the list is compacted in place, keeping its order.
  std::int64_t lat = 0;
  for (std::uint32_t k = 0; k < fl.path_len; ++k) {
    const LinkId l = path_links[fl.path_begin + k];
    lat += links[l].latency.ps();
    used[l] -= r;
    auto& lf = link_flows[l];
    if (2 * ++link_dead[l] > lf.size() + 64) {
      std::size_t w = 0;
      for (FlowIdx g : lf)
        if (flows[g].active_pos != kNone) lf[w++] = g;
      lf.resize(w);
      link_dead[l] = 0;
    }
  }
  return lat;
}

bool FlowStore::prune_paths(std::span<const FlowIdx> arrived) {
  // A link l whose active flows all cross one link m of strictly smaller capacity never freezes a
  // flow: its residual stays above m's (it carries a subset of m's frozen flows) and it has at most
  // m's unfrozen count, so its share stays strictly above m's, and when m freezes, l has no
  // unfrozen flow left. Removing such links from the solver's paths therefore changes no rate, not
  // even in the last bit (l's residual never enters a rate), and any set of links that satisfies
  // the condition may be left out. Example: a GPU's PCIe link to its NIC (64 GB/s) carries exactly
  // the flows of that NIC's 48.5 GB/s port.
  //
  // Incremental, at each arrival: departures only shrink flow sets, so a link that was dominated
  // stays dominated until a new flow crosses it. Only the links the arrived flows cross are looked
  // at: a link whose active flows are all new is decided afresh; a dominated link stays dominated
  // if every new flow on it crosses its dominator, and otherwise rejoins the solver paths of the
  // flows already on it (their paths are rebuilt, and their groups' copies with them). Other links
  // keep their state (a link that became dominated through departures stays in the paths: slower,
  // same rates).
  if (arrived.empty()) return false;
  if (prune_seen_.size() < links.size()) {
    prune_seen_.resize(links.size(), 0);
    prune_count_.resize(links.size(), 0);
  }
  const FlowIdx first_new = arrived.front();
  auto crosses = [&](const Flow& g, LinkId m) {
    for (std::uint32_t j = 0; j < g.path_len; ++j)
      if (path_links[g.path_begin + j] == m) return true;
    return false;
  };
  const std::uint32_t st = ++prune_stamp_;
  prune_links_.clear();
  for (FlowIdx f : arrived) {
    for (const LinkId l : path(f)) {
      if (prune_seen_[l] != st) {
        prune_seen_[l] = st;
        prune_count_[l] = 0;
        prune_links_.push_back(l);
      }
      ++prune_count_[l];
    }
  }
  opened_.clear();
  for (LinkId l : prune_links_) {
    const auto& lf = link_flows[l];
    if (lf.size() - link_dead[l] == prune_count_[l]) {  // only new flows: decide afresh
      dominated[l] = 0;
      dom_by[l] = kNone;
      const Flow* f0 = nullptr;
      for (FlowIdx g : lf)
        if (flows[g].active_pos != kNone) {
          f0 = &flows[g];
          break;
        }
      for (std::uint32_t k = 0; f0 != nullptr && k < f0->path_len && !dominated[l]; ++k) {
        const LinkId m = path_links[f0->path_begin + k];
        if (!(links[m].capacity < links[l].capacity)) continue;
        bool all = true;
        for (FlowIdx g : lf)
          if (flows[g].active_pos != kNone && !crosses(flows[g], m)) {
            all = false;
            break;
          }
        if (all) {
          dominated[l] = 1;
          dom_by[l] = m;
        }
      }
    } else if (dominated[l]) {
      for (FlowIdx g : lf)
        if (g >= first_new && !crosses(flows[g], dom_by[l])) {
          dominated[l] = 0;
          dom_by[l] = kNone;
          opened_.push_back(l);
          break;
        }
    }
  }
  // New flows: their solver paths (written over the full paths that add_flow copied there).
  for (FlowIdx f : arrived) {
    Flow& fl = flows[f];
    std::uint32_t w = fl.sp_begin;
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links[fl.path_begin + k];
      if (!dominated[l]) solver_links[w++] = l;
    }
    fl.sp_len = w - fl.sp_begin;
  }
  // Older flows on a link that rejoined the solver paths.
  if (opened_.empty()) return false;
  repath_.clear();
  for (LinkId l : opened_)
    for (FlowIdx g : link_flows[l])
      if (g < first_new && flows[g].active_pos != kNone) repath_.push_back(g);
  std::sort(repath_.begin(), repath_.end());
  repath_.erase(std::unique(repath_.begin(), repath_.end()), repath_.end());
  for (FlowIdx g : repath_) {
    Flow& fl = flows[g];
    const GroupId grp = fl.group;
    if (grp != kNone) leave_group(fl);
    fl.sp_begin = static_cast<std::uint32_t>(solver_links.size());
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links[fl.path_begin + k];
      if (!dominated[l]) solver_links.push_back(l);
    }
    fl.sp_len = static_cast<std::uint32_t>(solver_links.size()) - fl.sp_begin;
    if (grp != kNone) join_group(g, grp);  // same key: the group's service counter is unchanged
  }
  return true;
}

GroupId FlowStore::new_group(LinkId l) {
  GroupId g = 0;
  if (free_groups.empty()) {
    g = static_cast<GroupId>(groups.size());
    groups.emplace_back();
  } else {
    g = free_groups.back();
    free_groups.pop_back();
  }
  Group& G = groups[g];
  G.link = l;
  G.size = 0;
  G.den = 0;
  G.resolved = 0;
  G.num = G.rate = G.served = 0;
  G.anchor_ps = 0;
  G.drain_ps = std::numeric_limits<std::int64_t>::max();
  ++G.version;
  G.heap.clear();
  G.mem.clear();
  G.mem_links.clear();
  G.stride = 0;
  G.away = 0;
  link_group[l] = g;
  ++link_ngroups[l];
  return g;
}

void FlowStore::release_group(GroupId g) {
  Group& G = groups[g];
  --link_ngroups[G.link];
  if (link_group[G.link] == g) link_group[G.link] = kNone;
  G.heap.clear();
  G.mem.clear();
  G.mem_links.clear();
  G.stride = 0;
  G.away = 0;
  G.den = 0;
  G.drain_ps = std::numeric_limits<std::int64_t>::max();
  ++G.version;  // its drain-heap entries are stale from now on
  free_groups.push_back(g);
}

void FlowStore::join_group(FlowIdx f, GroupId g) {
  Flow& fl = flows[f];
  Group& G = groups[g];
  fl.group = g;
  G.heap.push_back(Member{fl.key, f, fl.member_ver});
  std::push_heap(G.heap.begin(), G.heap.end(), std::greater<>());
  ++G.size;
  if (fl.bneck != G.link) ++G.away;
  if (fl.sp_len > G.stride) {  // re-stride the inline paths
    const std::uint32_t old = G.stride, n = static_cast<std::uint32_t>(G.mem.size());
    G.mem_links.resize(static_cast<std::size_t>(n) * fl.sp_len, kNone);
    for (std::uint32_t i = n; i-- > 0;)
      for (std::uint32_t j = fl.sp_len; j-- > 0;)
        G.mem_links[static_cast<std::size_t>(i) * fl.sp_len + j] =
            j < old ? G.mem_links[static_cast<std::size_t>(i) * old + j] : kNone;
    G.stride = fl.sp_len;
  }
  fl.mpos = static_cast<std::uint32_t>(G.mem.size());
  G.mem.push_back(f);
  for (std::uint32_t j = 0; j < G.stride; ++j)
    G.mem_links.push_back(j < fl.sp_len ? solver_links[fl.sp_begin + j] : kNone);
}

void FlowStore::leave_group(Flow& fl) {
  Group& G = groups[fl.group];
  if (fl.bneck != G.link) --G.away;
  const std::uint32_t last = static_cast<std::uint32_t>(G.mem.size()) - 1;
  if (fl.mpos != last) {
    const FlowIdx moved = G.mem[last];
    G.mem[fl.mpos] = moved;
    for (std::uint32_t j = 0; j < G.stride; ++j)
      G.mem_links[static_cast<std::size_t>(fl.mpos) * G.stride + j] =
          G.mem_links[static_cast<std::size_t>(last) * G.stride + j];
    flows[moved].mpos = fl.mpos;
  }
  G.mem.pop_back();
  G.mem_links.resize(G.mem_links.size() - G.stride);
  --G.size;
  ++fl.member_ver;  // its entry in the group's heap is stale from now on
  fl.group = kNone;
}

void FlowStore::refresh_group_drain(GroupId g) {
  Group& G = groups[g];
  if (G.size == 0) {
    if (G.den != 0 || !G.heap.empty()) release_group(g);
    return;
  }
  const auto cmp = std::greater<>();
  if (G.heap.size() > 2 * G.size + 64) {  // drop stale members in one pass
    std::size_t w = 0;
    for (const Member& m : G.heap)
      if (member_live(g, m)) G.heap[w++] = m;
    G.heap.resize(w);
    std::make_heap(G.heap.begin(), G.heap.end(), cmp);
  }
  while (!member_live(g, G.heap.front())) {
    std::pop_heap(G.heap.begin(), G.heap.end(), cmp);
    G.heap.pop_back();
  }
  const std::int64_t ps = done_ps(G, G.heap.front().key);
  if (ps == G.drain_ps) return;
  G.drain_ps = ps;
  ++G.version;
  push_drain(Drain{ps, g, G.version});
}

std::int64_t FlowStore::earliest_drain_ps() {
  if (drains.size() > 4 * groups.size() + 1024) {
    // Live entries are unique per group (one per version), and the heap order is a strict total
    // order on (ps, group), so rebuilding gives the same pop sequence as lazy deletion.
    std::size_t w = 0;
    for (const Drain& d : drains)
      if (groups[d.group].version == d.version) drains[w++] = d;
    drains.resize(w);
    std::make_heap(drains.begin(), drains.end(), std::greater<>());
  }
  while (!drains.empty() && groups[drains.front().group].version != drains.front().version) pop_drain();
  return drains.empty() ? std::numeric_limits<std::int64_t>::max() : drains.front().ps;
}

void FlowStore::reset_if_idle() {
  if (!active.empty()) return;
  flows.clear();
  path_links.clear();
  solver_links.clear();
  for (auto& lf : link_flows) lf.clear();
  std::fill(link_dead.begin(), link_dead.end(), 0U);
  drains.clear();
  groups.clear();
  free_groups.clear();
  std::fill(link_group.begin(), link_group.end(), kNone);
  std::fill(link_ngroups.begin(), link_ngroups.end(), 0U);
  std::fill(used.begin(), used.end(), 0.0);
  std::fill(saturated.begin(), saturated.end(), 0);
  std::fill(max_rate.begin(), max_rate.end(), 0.0);
  std::fill(nm_max.begin(), nm_max.end(), 0.0);
  std::fill(bneck_count.begin(), bneck_count.end(), 0U);
}

std::string FlowStore::check_invariants() const {
  std::ostringstream err;
  const std::size_t nl = links.size();
  std::vector<double> sum(nl, 0.0);
  std::vector<std::uint32_t> bn(nl, 0), ng(nl, 0);
  std::vector<std::uint32_t> gsize(groups.size(), 0), gaway(groups.size(), 0);
  for (std::size_t p = 0; p < active.size(); ++p) {
    const FlowIdx f = active[p];
    const Flow& fl = flows[f];
    if (fl.active_pos != p) return (err << "flow " << f << ": active_pos " << fl.active_pos << " != " << p, err.str());
    if (fl.bneck != kNone) ++bn[fl.bneck];
    if (fl.group == kNone) return (err << "flow " << f << " has no group", err.str());
    const Group& G = groups[fl.group];
    if (fl.mpos >= G.mem.size() || G.mem[fl.mpos] != f)
      return (err << "flow " << f << ": not at its position in group " << fl.group, err.str());
    ++gsize[fl.group];
    if (fl.bneck != G.link) ++gaway[fl.group];
    const auto sp = solver_path(f);
    for (std::uint32_t j = 0; j < G.stride; ++j) {
      const LinkId want = j < sp.size() ? sp[j] : kNone;
      if (G.row(fl.mpos)[j] != want)
        return (err << "flow " << f << ": group " << fl.group << " holds a stale copy of its solver path", err.str());
    }
    for (const LinkId l : sp) sum[l] += G.rate;
  }
  for (GroupId g = 0; g < groups.size(); ++g) {
    const Group& G = groups[g];
    if (std::find(free_groups.begin(), free_groups.end(), g) != free_groups.end()) continue;
    if (G.size != gsize[g] || G.size != G.mem.size())
      return (err << "group " << g << ": size " << G.size << ", " << gsize[g] << " members", err.str());
    if (G.away != gaway[g]) return (err << "group " << g << ": away " << G.away << " != " << gaway[g], err.str());
    if (G.size == 0) return (err << "group " << g << " is empty but not released", err.str());
    if (G.den == 0 || G.rate != G.num / G.den) return (err << "group " << g << ": rate is not num / den", err.str());
    ++ng[G.link];
  }
  for (LinkId l = 0; l < nl; ++l) {
    if (bn[l] != bneck_count[l])
      return (err << "link " << l << ": bneck_count " << bneck_count[l] << " != " << bn[l], err.str());
    if (ng[l] != link_ngroups[l])
      return (err << "link " << l << ": link_ngroups " << link_ngroups[l] << " != " << ng[l], err.str());
    const GroupId lg = link_group[l];
    if (lg != kNone && (groups[lg].link != l || groups[lg].size == 0))
      return (err << "link " << l << ": link_group " << lg << " is not a live group of the link", err.str());
    if (!dominated[l] && std::abs(used[l] - sum[l]) > 1e-9 * links[l].capacity)
      return (err << "link " << l << ": used " << used[l] << " != sum of rates " << sum[l], err.str());
  }
  std::vector<double> top(nl, 0.0);
  for (const FlowIdx f : active)
    for (const LinkId l : solver_path(f)) top[l] = std::max(top[l], rate(f));
  for (const FlowIdx f : active) {  // a remembered bottleneck is one (what DepartureCheck relies on)
    const LinkId b = flows[f].bneck;
    if (b == kNone) continue;
    if (sum[b] < links[b].capacity * (1 - 1e-8) || rate(f) < top[b] * (1 - 1e-8))
      return (err << "flow " << f << ": remembered bottleneck " << b << " is not one (load " << sum[b] << " of "
                  << links[b].capacity << ", rate " << rate(f) << ", fastest " << top[b] << ")",
              err.str());
  }
  for (LinkId l = 0; l < nl; ++l) {  // nm_max bounds the rates of non-members of the link's group
    const GroupId lg = link_group[l];
    for (const FlowIdx f : link_flows[l]) {
      const Flow& fl = flows[f];
      if (fl.active_pos == kNone || fl.group == lg || dominated[l]) continue;
      const double r = groups[fl.group].rate;
      if (r > nm_max[l] * (1 + 1e-12))
        return (err << "link " << l << ": nm_max " << nm_max[l] << " below non-member rate " << r, err.str());
    }
  }
  return {};
}

}  // namespace moesim::hw::flow
