#include "hardware/flow_network.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

namespace moesim::hw {

namespace {
/// Relative tolerance for "this link is full" and "this flow has the largest rate on the link"
/// in the departure check. It only decides whether to re-solve; a false "not a bottleneck"
/// costs a re-solve, never exactness beyond floating-point rounding.
constexpr double kSatTol = 1e-9;

/// (fair share, link id) packed into one integer whose unsigned order is the lexicographic
/// order of the pair: the IEEE bits of the share, made monotone for both signs (-0 counts as
/// +0), then the link id. One integer compare per heap step instead of a two-field compare.
FlowNetwork::HeapKey heap_key(double share, LinkId l) {
  const double s = share + 0.0;
  std::uint64_t b = 0;
  std::memcpy(&b, &s, sizeof b);
  b = (b >> 63) != 0 ? ~b : (b | (1ULL << 63));
  return (static_cast<FlowNetwork::HeapKey>(b) << 32) | l;
}
double key_share(FlowNetwork::HeapKey k) {
  auto b = static_cast<std::uint64_t>(k >> 32);
  b = (b >> 63) != 0 ? (b & ~(1ULL << 63)) : ~b;
  double s = 0;
  std::memcpy(&s, &b, sizeof s);
  return s;
}
}  // namespace

LinkId FlowNetwork::add_link(double bytes_per_s, sim::SimTime latency) {
  if (!(bytes_per_s > 0) || !std::isfinite(bytes_per_s))
    throw std::invalid_argument("FlowNetwork::add_link: bandwidth must be finite and > 0, got " +
                                std::to_string(bytes_per_s));
  if (latency < sim::SimTime::zero()) throw std::invalid_argument("FlowNetwork::add_link: negative latency");
  const auto id = static_cast<LinkId>(links_.size());
  links_.push_back(Link{bytes_per_s, latency});
  link_bytes_.push_back(0);
  link_flows_.emplace_back();
  used_.push_back(0);
  max_rate_.push_back(0);
  saturated_.push_back(0);
  bneck_count_.push_back(0);
  link_dead_.push_back(0);
  link_stamp_.push_back(0);
  link_cnt_.push_back(0);
  csr_begin_.push_back(0);
  csr_fill_.push_back(0);
  link_res_.push_back(0);
  link_group_.push_back(kNone);
  link_ngroups_.push_back(0);
  return id;
}

sim::SimTime FlowNetwork::path_latency(std::span<const LinkId> path) const {
  sim::SimTime t{};
  for (LinkId l : path) t += links_.at(l).latency;
  return t;
}

sim::SimTime FlowNetwork::batch_done_time(BatchId b) const {
  const Batch& bt = batches_.at(b);
  return bt.running == 0 ? sim::SimTime::from_ps(bt.max_done_ps) : sim::SimTime::max();
}

double FlowNetwork::flow_rate(BatchId b, std::size_t index) const {
  const Batch& bt = batches_.at(b);
  if (bt.done.at(index) != sim::SimTime::max()) return 0;
  for (FlowIdx f : active_)
    if (flows_[f].batch == b && flows_[f].index == index)
      return flows_[f].group == kNone ? 0.0 : groups_[flows_[f].group].rate;
  return 0;
}

BatchId FlowNetwork::start(FlowBatch batch, sim::Callback on_done) {
  const std::size_t n = batch.bytes.size();
  if (batch.offsets.size() != n + 1 || batch.offsets.front() != 0 || batch.offsets.back() != batch.links.size())
    throw std::invalid_argument("FlowNetwork::start: inconsistent FlowBatch offsets");
  for (LinkId l : batch.links)
    if (l >= links_.size()) throw std::invalid_argument("FlowNetwork::start: unknown link id " + std::to_string(l));
  for (double b : batch.bytes)
    if (!(b >= 0) || !std::isfinite(b))
      throw std::invalid_argument("FlowNetwork::start: flow bytes must be finite and >= 0");

  const auto bid = static_cast<BatchId>(batches_.size());
  batches_.emplace_back();
  Batch& bt = batches_.back();
  bt.done.assign(n, sim::SimTime::max());
  bt.on_done = std::move(on_done);
  const std::int64_t now = sim_.now().ps();
  bt.max_done_ps = now;

  flows_.reserve(flows_.size() + n);
  path_links_.reserve(path_links_.size() + batch.links.size());
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b0 = batch.offsets[i], b1 = batch.offsets[i + 1];
    const double bytes = batch.bytes[i];
    std::int64_t lat = 0;
    for (std::uint32_t k = b0; k < b1; ++k) {
      link_bytes_[batch.links[k]] += bytes;
      lat += links_[batch.links[k]].latency.ps();
    }
    if (bytes == 0 || b0 == b1) {
      bt.done[i] = sim::SimTime::from_ps(now + lat);
      bt.max_done_ps = std::max(bt.max_done_ps, now + lat);
      continue;
    }
    const auto f = static_cast<FlowIdx>(flows_.size());
    Flow fl;
    fl.path_begin = static_cast<std::uint32_t>(path_links_.size());
    fl.path_len = b1 - b0;
    fl.batch = bid;
    fl.index = static_cast<std::uint32_t>(i);
    fl.key = bytes;  // remaining bytes while the flow has no group
    fl.active_pos = static_cast<std::uint32_t>(active_.size());
    fl.sp_begin = static_cast<std::uint32_t>(solver_links_.size());
    fl.sp_len = fl.path_len;
    for (std::uint32_t k = b0; k < b1; ++k) {
      const LinkId l = batch.links[k];
      path_links_.push_back(l);
      solver_links_.push_back(l);
      link_flows_[l].push_back(f);
    }
    flows_.push_back(fl);
    active_.push_back(f);
    arrived_.push_back(f);
    ++bt.running;
    ++stats_.flows_started;
  }
  alive_.resize(flows_.size(), 1);

  if (bt.running == 0) {
    sim_.schedule_at(sim::SimTime::from_ps(bt.max_done_ps), std::move(bt.on_done));
  } else {
    request_solve();
  }
  return bid;
}

void FlowNetwork::request_solve() {
  if (solve_pending_) return;
  solve_pending_ = true;
  sim_.schedule_at(
      sim_.now(), [this] { solve_event(); }, sim::Phase::kObserve);
}

void FlowNetwork::solve_event() {
  solve_pending_ = false;
  if (!arrived_.empty() || !incremental_) {
    if (!arrived_.empty()) prune_paths();
    if (!active_.empty()) {
      solve(active_, true);
      ++stats_.full_solves;
    }
  } else if (!departed_.empty()) {
    // Which remaining flows lost every bottleneck? Only flows on the freed links can have.
    // Each freed link is examined once, however many departed flows crossed it.
    const std::uint32_t u = ++stamp_;
    freed_.clear();
    for (FlowIdx f : departed_) {
      const Flow& fl = flows_[f];
      for (std::uint32_t k = 0; k < fl.sp_len; ++k) {
        const LinkId l = solver_links_[fl.sp_begin + k];
        if (link_stamp_[l] == u) continue;
        link_stamp_[l] = u;
        freed_.push_back(l);
        saturated_[l] = used_[l] >= links_[l].capacity * (1 - kSatTol) ? 1 : 0;
      }
    }
    double rho = std::numeric_limits<double>::infinity();
    for (LinkId l : freed_) {
      if (bneck_count_[l] == 0) continue;
      const std::uint32_t lg = link_group_[l];
      if (lg != kNone && groups_[lg].size == bneck_count_[l] && groups_[lg].away == 0) {
        // The flows remembering l are exactly its group's members: read their paths from the
        // group's contiguous copy instead of the flow records.
        const Group& G = groups_[lg];
        for (std::uint32_t e = 0; e < G.mem.size(); ++e) {
          const LinkId* row = G.mem_links.data() + static_cast<std::size_t>(e) * G.stride;
          LinkId alt = kNone;
          for (std::uint32_t j = 0; j < G.stride && row[j] != kNone; ++j) {
            const LinkId m = row[j];
            if (link_stamp_[m] != u && saturated_[m] && G.rate >= max_rate_[m] * (1 - kSatTol)) {
              alt = m;
              break;
            }
          }
          if (alt != kNone)
            set_bneck(flows_[G.mem[e]], alt);
          else
            rho = std::min(rho, G.rate);
        }
        continue;
      }
      for (FlowIdx g : link_flows_[l]) {
        Flow& gl = flows_[g];
        if (gl.bneck != l) continue;  // also skips finished flows (bneck cleared)
        const double grate = groups_[gl.group].rate;
        LinkId alt = kNone;
        for (std::uint32_t j = 0; j < gl.sp_len; ++j) {
          const LinkId m = solver_links_[gl.sp_begin + j];
          if (link_stamp_[m] != u && saturated_[m] && grate >= max_rate_[m] * (1 - kSatTol)) {
            alt = m;
            break;
          }
        }
        if (alt != kNone) {
          set_bneck(gl, alt);
        } else {
          rho = std::min(rho, grate);
        }
      }
    }
    if (rho == std::numeric_limits<double>::infinity()) {
      ++stats_.skipped_solves;
    } else {
      if (fast_resolve()) {
        ++stats_.fast_solves;
      } else {
        // Every flow at or above rho: the members of the groups whose rate is >= rho (a group's
        // members share one rate). Progressive filling levels only grow, so this set is closed
        // upwards: it holds every flow that the filling freezes after the first changed step.
        // Their paths and rates are gathered from the groups' contiguous member lists.
        const double cut = rho * (1 - kSatTol);
        set_scratch_.clear();
        lpath_.clear();
        lrate_.clear();
        lbegin_.clear();
        for (std::uint32_t g = 0; g < groups_.size(); ++g) {
          const Group& G = groups_[g];
          if (G.size == 0 || !(G.rate >= cut)) continue;
          for (std::uint32_t e = 0; e < G.mem.size(); ++e) {
            set_scratch_.push_back(G.mem[e]);
            lbegin_.push_back(static_cast<std::uint32_t>(lpath_.size()));
            lrate_.push_back(G.rate);
            const LinkId* row = G.mem_links.data() + static_cast<std::size_t>(e) * G.stride;
            for (std::uint32_t j = 0; j < G.stride && row[j] != kNone; ++j) lpath_.push_back(row[j]);
          }
        }
        lbegin_.push_back(static_cast<std::uint32_t>(lpath_.size()));
        solve(set_scratch_, false, true);
        ++stats_.partial_solves;
      }
    }
  }
  arrived_.clear();
  departed_.clear();
  departed_group_.clear();
  arm_wakeup();
  maybe_reset();
}

bool FlowNetwork::fast_resolve() {
  // Departures only, and each group keeps its members: the old groups' order (by rate, then link
  // id, as the filling froze them) is a valid order for recomputing their rates, because a
  // group's rate depends only on the rates of groups that froze before it (the other flows on
  // its link). Recompute the groups the departures touch, in that order, propagating each rate
  // change to the links its members cross; then check that the filling would form the same groups
  // with the new rates (every member's other links freeze later, every other flow on a group's
  // link froze earlier, links without a group stay below capacity). Near-ties (kSatTol) count as
  // failures. On failure everything is rolled back and the caller re-solves from rho.
  const std::int64_t now = sim_.now().ps();
  const std::uint32_t st = ++stamp_;
  if (fp_mark_.size() < groups_.size()) {
    fp_mark_.resize(groups_.size(), 0);
    fp_done_.resize(groups_.size(), 0);
  }
  heap_.clear();
  used_log_.clear();
  group_log_.clear();
  fp_slack_.clear();
  const auto cmp = std::greater<>();
  auto push = [&](std::uint32_t g) {
    if (fp_mark_[g] == st) return;
    fp_mark_[g] = st;
    heap_.push_back(heap_key(groups_[g].rate, groups_[g].link));
    std::push_heap(heap_.begin(), heap_.end(), cmp);
  };
  auto live_group = [&](LinkId m) {
    const std::uint32_t g = link_group_[m];
    return g != kNone && groups_[g].size > 0 ? g : kNone;
  };
  for (std::size_t k = 0; k < departed_.size(); ++k) {
    const std::uint32_t g = departed_group_[k];
    if (g == kNone || link_group_[groups_[g].link] != g) return false;
    const Flow& fl = flows_[departed_[k]];
    for (std::uint32_t j = 0; j < fl.sp_len; ++j) {
      const LinkId m = solver_links_[fl.sp_begin + j];
      const std::uint32_t gm = live_group(m);
      if (gm != kNone)
        push(gm);
      else
        fp_slack_.push_back(m);
    }
  }
  bool ok = true;
  while (ok && !heap_.empty()) {
    std::pop_heap(heap_.begin(), heap_.end(), cmp);
    const auto l = static_cast<LinkId>(heap_.back());
    heap_.pop_back();
    const std::uint32_t g = link_group_[l];
    fp_done_[g] = st;
    Group& G = groups_[g];
    if (link_ngroups_[l] != 1 || bneck_count_[l] != G.size || G.away != 0) {
      ok = false;
      break;
    }
    const double res = links_[l].capacity - used_[l] + G.size * G.rate;
    if (!(res > 0)) {
      ok = false;
      break;
    }
    if (res == G.num && G.size == G.den) continue;
    group_log_.push_back(GroupLog{g, G.den, G.num, G.rate, G.served, G.anchor_ps});
    const double rate = res / G.size, delta = rate - G.rate;
    G.served = served_at(G, now);
    G.anchor_ps = now;
    G.num = res;
    G.den = G.size;
    G.rate = rate;
    if (delta == 0) continue;
    const LinkId* ml = G.mem_links.data();
    for (std::size_t e = 0, ne = G.mem_links.size(); e < ne; ++e) {
      const LinkId m = ml[e];
      if (m == l || m == kNone) continue;
      used_log_.push_back(UsedLog{m, used_[m]});
      used_[m] += delta;
      const std::uint32_t gm = live_group(m);
      if (gm == kNone) {
        fp_slack_.push_back(m);
      } else if (fp_done_[gm] == st) {
        ok = false;  // would have to freeze before this group: the order changed
        break;
      } else {
        push(gm);
      }
    }
    used_log_.push_back(UsedLog{l, used_[l]});
    used_[l] += G.size * delta;
  }
  // The groups' new rates must give the same groups: check every relation that involves a
  // changed group (relations between unchanged groups still hold).
  for (std::size_t k = 0; ok && k < group_log_.size(); ++k) {
    const std::uint32_t g = group_log_[k].group;
    const Group& G = groups_[g];
    const LinkId l = G.link;
    const double r = G.rate;
    const LinkId* ml = G.mem_links.data();
    for (std::size_t e = 0, ne = G.mem_links.size(); ok && e < ne; ++e) {
      const LinkId m = ml[e];
      if (m == l || m == kNone) continue;
      const std::uint32_t gm = live_group(m);
      if (gm == kNone)
        fp_slack_.push_back(m);
      else if (!(groups_[gm].rate > r * (1 + kSatTol)))
        ok = false;
    }
    if (ok && r < group_log_[k].rate) {  // the other flows on l must still be slower
      for (FlowIdx h : link_flows_[l]) {
        const Flow& hl = flows_[h];
        if (hl.active_pos == kNone || hl.group == g) continue;
        if (!(groups_[hl.group].rate < r * (1 - kSatTol))) {
          ok = false;
          break;
        }
      }
    }
  }
  for (std::size_t k = 0; ok && k < fp_slack_.size(); ++k) {
    const LinkId m = fp_slack_[k];
    if (live_group(m) == kNone && used_[m] > links_[m].capacity * (1 - kSatTol)) ok = false;
  }
  if (!ok) {
    for (std::size_t k = used_log_.size(); k-- > 0;) used_[used_log_[k].link] = used_log_[k].used;
    for (std::size_t k = group_log_.size(); k-- > 0;) {
      const GroupLog& o = group_log_[k];
      Group& G = groups_[o.group];
      G.den = o.den;
      G.num = o.num;
      G.rate = o.rate;
      G.served = o.served;
      G.anchor_ps = o.anchor_ps;
    }
    return false;
  }
  for (LinkId m : fp_slack_)
    if (live_group(m) == kNone) saturated_[m] = 0;
  for (const GroupLog& o : group_log_) {
    const Group& G = groups_[o.group];
    saturated_[G.link] = 1;
    max_rate_[G.link] = G.rate;
    stats_.flows_resolved += G.size;
    refresh_group_drain(o.group);
  }
  return true;
}

void FlowNetwork::solve(const std::vector<FlowIdx>& set, bool full, bool gathered) {
  const std::uint32_t st = ++stamp_;
  const auto ns = static_cast<std::uint32_t>(set.size());
  stats_.flows_resolved += ns;
  touched_.clear();
  if (full) {
    std::fill(used_.begin(), used_.end(), 0.0);
    std::fill(saturated_.begin(), saturated_.end(), 0);
    std::fill(max_rate_.begin(), max_rate_.end(), 0.0);
  }
  // Gather the paths and rates of the set into contiguous local arrays (local index i = position
  // in `set`), so that the passes below do not chase flow records scattered over memory.
  // (A caller may have gathered them already, from the groups' member lists.)
  if (!gathered) {
    lbegin_.resize(ns + 1);
    lpath_.clear();
    lrate_.resize(ns);
    for (std::uint32_t i = 0; i < ns; ++i) {
      const Flow& fl = flows_[set[i]];
      lbegin_[i] = static_cast<std::uint32_t>(lpath_.size());
      for (std::uint32_t k = 0; k < fl.sp_len; ++k) lpath_.push_back(solver_links_[fl.sp_begin + k]);
      lrate_[i] = fl.group == kNone ? 0.0 : groups_[fl.group].rate;
    }
    lbegin_[ns] = static_cast<std::uint32_t>(lpath_.size());
  }
  for (std::uint32_t i = 0; i < ns; ++i) {
    for (std::uint32_t k = lbegin_[i]; k < lbegin_[i + 1]; ++k) {
      const LinkId l = lpath_[k];
      if (link_stamp_[l] != st) {
        link_stamp_[l] = st;
        touched_.push_back(l);
        link_cnt_[l] = 0;
        link_res_[l] = full ? links_[l].capacity : links_[l].capacity - used_[l];
        max_rate_[l] = 0;
      }
      ++link_cnt_[l];
      if (!full) link_res_[l] += lrate_[i];
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
    for (std::uint32_t k = lbegin_[i]; k < lbegin_[i + 1]; ++k) csr_flows_[csr_fill_[lpath_[k]]++] = i;
  // Progressive filling. Keys are (fair share, link id): ties resolve by link id, so the run
  // is deterministic. Shares only grow as flows freeze elsewhere, so a popped key that is
  // smaller than the link's current share is re-inserted instead of updated in place.
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
    if (!(res > 0)) res = links_[l].capacity * 1e-15;
    const double rate = res / cnt;
    for (std::uint32_t k = csr_begin_[l], e = csr_fill_[l]; k < e; ++k) {
      const std::uint32_t i = csr_flows_[k];
      if (lfrozen_[i]) continue;
      lfrozen_[i] = 1;
      freeze_order_.push_back(i);
      new_num_[i] = res;
      new_den_[i] = cnt;
      lbneck_[i] = l;
      for (std::uint32_t j = lbegin_[i]; j < lbegin_[i + 1]; ++j) {
        const LinkId m = lpath_[j];
        link_res_[m] -= rate;
        --link_cnt_[m];
        if (rate > max_rate_[m]) max_rate_[m] = rate;
      }
    }
  }
  for (LinkId l : touched_) {
    used_[l] = links_[l].capacity - link_res_[l];
    saturated_[l] = used_[l] >= links_[l].capacity * (1 - kSatTol) ? 1 : 0;
  }
  const std::int64_t now = sim_.now().ps();
  // Rate groups. A link that froze flows keeps its group when every member of that group was in
  // this solve (then the group's flows that froze there again need no per-flow work, only the
  // group's rate changes); otherwise it gets a new group and the old one keeps its other members.
  touched_groups_.clear();
  for (std::uint32_t i = 0; i < ns; ++i) {
    const std::uint32_t g = flows_[set[i]].group;
    if (g != kNone && groups_[g].resolved++ == 0) touched_groups_.push_back(g);
  }
  const std::uint32_t counted = static_cast<std::uint32_t>(touched_groups_.size());
  for (std::uint32_t i : freeze_order_) {
    const LinkId l = lbneck_[i];
    if (link_stamp_[l] == st + 1) continue;  // this link's group is already decided
    link_stamp_[l] = st + 1;
    std::uint32_t g = link_group_[l];
    if (g == kNone || groups_[g].resolved != groups_[g].size) g = new_group(l);
    Group& G = groups_[g];
    if (G.den != new_den_[i] || G.num != new_num_[i]) {
      G.served = served_at(G, now);
      G.anchor_ps = now;
      G.num = new_num_[i];
      G.den = new_den_[i];
      G.rate = G.num / G.den;
      touched_groups_.push_back(g);
    }
  }
  ++stamp_;  // st + 1 was used above
  for (std::uint32_t i = 0; i < ns; ++i) {
    const FlowIdx f = set[i];
    Flow& fl = flows_[f];
    set_bneck(fl, lbneck_[i]);
    const std::uint32_t g = link_group_[lbneck_[i]];
    if (fl.group == g) continue;
    double rem = fl.key;
    if (fl.group != kNone) {
      rem -= served_at(groups_[fl.group], now);
      touched_groups_.push_back(fl.group);
      leave_group(fl);
    }
    fl.key = served_at(groups_[g], now) + std::max(rem, 0.0);
    join_group(f, g);
    touched_groups_.push_back(g);
  }
  for (std::uint32_t k = 0; k < counted; ++k) groups_[touched_groups_[k]].resolved = 0;
  std::sort(touched_groups_.begin(), touched_groups_.end());
  touched_groups_.erase(std::unique(touched_groups_.begin(), touched_groups_.end()), touched_groups_.end());
  for (std::uint32_t g : touched_groups_) refresh_group_drain(g);
}

void FlowNetwork::prune_paths() {
  // A link l whose active flows all cross one link m of strictly smaller capacity never freezes a
  // flow: its residual stays above m's (it carries a subset of m's frozen flows) and it has at most
  // m's unfrozen count, so its share stays strictly above m's, and when m freezes, l has no
  // unfrozen flow left. Removing such links from the solver's paths therefore changes no rate, not
  // even in the last bit (l's residual never enters a rate). Departures only shrink flow sets, so
  // the pruning stays valid until the next arrival. Example: a GPU's PCIe link to its NIC (64 GB/s)
  // carries exactly the flows of that NIC's 48.5 GB/s port.
  dominated_.assign(links_.size(), 0);
  auto crosses = [&](const Flow& g, LinkId m) {
    for (std::uint32_t j = 0; j < g.path_len; ++j)
      if (path_links_[g.path_begin + j] == m) return true;
    return false;
  };
  for (LinkId l = 0; l < links_.size(); ++l) {
    const auto& lf = link_flows_[l];
    const Flow* f0 = nullptr;
    for (FlowIdx g : lf)
      if (flows_[g].active_pos != kNone) {
        f0 = &flows_[g];
        break;
      }
    if (f0 == nullptr) continue;
    for (std::uint32_t k = 0; k < f0->path_len && !dominated_[l]; ++k) {
      const LinkId m = path_links_[f0->path_begin + k];
      if (!(links_[m].capacity < links_[l].capacity)) continue;
      bool all = true;
      for (FlowIdx g : lf)
        if (flows_[g].active_pos != kNone && !crosses(flows_[g], m)) {
          all = false;
          break;
        }
      if (all) dominated_[l] = 1;
    }
  }
  std::vector<LinkId> sp;
  sp.reserve(solver_links_.size());
  for (FlowIdx f : active_) {
    Flow& fl = flows_[f];
    fl.sp_begin = static_cast<std::uint32_t>(sp.size());
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links_[fl.path_begin + k];
      if (!dominated_[l]) sp.push_back(l);
    }
    fl.sp_len = static_cast<std::uint32_t>(sp.size()) - fl.sp_begin;
  }
  solver_links_.swap(sp);
}

std::uint32_t FlowNetwork::new_group(LinkId l) {
  std::uint32_t g = 0;
  if (free_groups_.empty()) {
    g = static_cast<std::uint32_t>(groups_.size());
    groups_.emplace_back();
  } else {
    g = free_groups_.back();
    free_groups_.pop_back();
  }
  Group& G = groups_[g];
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
  link_group_[l] = g;
  ++link_ngroups_[l];
  return g;
}

void FlowNetwork::release_group(std::uint32_t g) {
  Group& G = groups_[g];
  --link_ngroups_[G.link];
  if (link_group_[G.link] == g) link_group_[G.link] = kNone;
  G.heap.clear();
  G.mem.clear();
  G.mem_links.clear();
  G.stride = 0;
  G.away = 0;
  G.den = 0;
  G.drain_ps = std::numeric_limits<std::int64_t>::max();
  ++G.version;  // its drain-heap entries are stale from now on
  free_groups_.push_back(g);
}

void FlowNetwork::join_group(FlowIdx f, std::uint32_t g) {
  Flow& fl = flows_[f];
  Group& G = groups_[g];
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
    G.mem_links.push_back(j < fl.sp_len ? solver_links_[fl.sp_begin + j] : kNone);
}

void FlowNetwork::leave_group(Flow& fl) {
  Group& G = groups_[fl.group];
  if (fl.bneck != G.link) --G.away;
  const std::uint32_t last = static_cast<std::uint32_t>(G.mem.size()) - 1;
  if (fl.mpos != last) {
    const FlowIdx moved = G.mem[last];
    G.mem[fl.mpos] = moved;
    for (std::uint32_t j = 0; j < G.stride; ++j)
      G.mem_links[static_cast<std::size_t>(fl.mpos) * G.stride + j] =
          G.mem_links[static_cast<std::size_t>(last) * G.stride + j];
    flows_[moved].mpos = fl.mpos;
  }
  G.mem.pop_back();
  G.mem_links.resize(G.mem_links.size() - G.stride);
  --G.size;
  ++fl.member_ver;  // its entry in the group's heap is stale from now on
  fl.group = kNone;
}

void FlowNetwork::refresh_group_drain(std::uint32_t g) {
  Group& G = groups_[g];
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
  const double left = std::max(G.heap.front().key - G.served, 0.0);
  const std::int64_t ps = G.anchor_ps + sim::duration_for(left * G.den, G.num).ps();
  if (ps == G.drain_ps) return;
  G.drain_ps = ps;
  ++G.version;
  push_drain(Pending{ps, g, G.version});
}

void FlowNetwork::arm_wakeup() {
  if (drains_.size() > 4 * groups_.size() + 1024) compact_drains();
  while (!drains_.empty() && groups_[drains_.front().group].version != drains_.front().version) pop_drain();
  const std::int64_t t = drains_.empty() ? std::numeric_limits<std::int64_t>::max() : drains_.front().ps;
  if (t == wakeup_ps_) return;
  if (wakeup_id_.valid()) sim_.cancel(wakeup_id_);
  wakeup_id_ = {};
  wakeup_ps_ = t;
  if (drains_.empty()) return;
  wakeup_id_ = sim_.schedule_at(
      sim::SimTime::from_ps(t), [this] { drain_event(); }, sim::Phase::kComplete);
}

void FlowNetwork::compact_drains() {
  // Live entries are unique per group (one per version), and the heap order is a strict total
  // order on (ps, group), so rebuilding gives the same pop sequence as lazy deletion.
  std::size_t w = 0;
  for (const Pending& p : drains_)
    if (groups_[p.group].version == p.version) drains_[w++] = p;
  drains_.resize(w);
  std::make_heap(drains_.begin(), drains_.end(), std::greater<>());
}

void FlowNetwork::drain_event() {
  wakeup_id_ = {};
  wakeup_ps_ = std::numeric_limits<std::int64_t>::max();
  const std::int64_t now = sim_.now().ps();
  ++stats_.drain_events;
  const auto cmp = std::greater<>();
  while (!drains_.empty() && drains_.front().ps <= now) {
    const Pending p = drains_.front();
    pop_drain();
    if (groups_[p.group].version != p.version) continue;
    // Every member whose own drain time (same formula as the group's) has come finishes now.
    Group& G = groups_[p.group];
    G.drain_ps = std::numeric_limits<std::int64_t>::max();
    while (!G.heap.empty()) {
      const Member m = G.heap.front();
      if (member_live(p.group, m)) {
        const double left = std::max(m.key - G.served, 0.0);
        if (G.anchor_ps + sim::duration_for(left * G.den, G.num).ps() > now) break;
      }
      std::pop_heap(G.heap.begin(), G.heap.end(), cmp);
      G.heap.pop_back();
      if (member_live(p.group, m)) finish_flow(m.flow, now);
    }
    refresh_group_drain(p.group);
  }
  if (!departed_.empty()) request_solve();
  arm_wakeup();
}

void FlowNetwork::finish_flow(FlowIdx f, std::int64_t now_ps) {
  Flow& fl = flows_[f];
  set_bneck(fl, kNone);
  const double rate = groups_[fl.group].rate;
  departed_group_.push_back(fl.group);
  leave_group(fl);
  const FlowIdx moved = active_.back();
  active_[fl.active_pos] = moved;
  flows_[moved].active_pos = fl.active_pos;
  active_.pop_back();
  fl.active_pos = kNone;
  alive_[f] = 0;
  departed_.push_back(f);
  // Finished flows stay in the per-link lists (readers skip them: active_pos == kNone) until
  // they are half of a list; then the list is compacted in place, keeping its order.
  std::int64_t lat = 0;
  for (std::uint32_t k = 0; k < fl.path_len; ++k) {
    const LinkId l = path_links_[fl.path_begin + k];
    lat += links_[l].latency.ps();
    used_[l] -= rate;
    auto& lf = link_flows_[l];
    if (2 * ++link_dead_[l] > lf.size() + 64) {
      std::size_t w = 0;
      for (FlowIdx g : lf)
        if (flows_[g].active_pos != kNone) lf[w++] = g;
      lf.resize(w);
      link_dead_[l] = 0;
    }
  }

  Batch& bt = batches_[fl.batch];
  bt.done[fl.index] = sim::SimTime::from_ps(now_ps + lat);
  bt.max_done_ps = std::max(bt.max_done_ps, now_ps + lat);
  if (--bt.running == 0) sim_.schedule_at(sim::SimTime::from_ps(bt.max_done_ps), std::move(bt.on_done));
}

void FlowNetwork::maybe_reset() {
  if (!active_.empty()) return;
  // Nothing in flight: drop flow records so a long simulation does not grow without bound.
  flows_.clear();
  alive_.clear();
  path_links_.clear();
  solver_links_.clear();
  for (auto& lf : link_flows_) lf.clear();
  std::fill(link_dead_.begin(), link_dead_.end(), 0U);
  drains_.clear();
  groups_.clear();
  free_groups_.clear();
  std::fill(link_group_.begin(), link_group_.end(), kNone);
  std::fill(link_ngroups_.begin(), link_ngroups_.end(), 0U);
  std::fill(used_.begin(), used_.end(), 0.0);
  std::fill(saturated_.begin(), saturated_.end(), 0);
  std::fill(max_rate_.begin(), max_rate_.end(), 0.0);
  std::fill(bneck_count_.begin(), bneck_count_.end(), 0U);
}

}  // namespace moesim::hw
