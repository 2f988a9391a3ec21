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
  sat_level_.push_back(bytes_per_s * (1 - kSatTol));
  nm_max_.push_back(0);
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

  // Grow geometrically: an exact reserve here would copy every flow record at every start.
  const auto grow = [](auto& v, std::size_t more) {
    if (v.size() + more > v.capacity()) v.reserve(std::max(v.size() + more, 2 * v.capacity()));
  };
  grow(flows_, n);
  grow(path_links_, batch.links.size());
  grow(solver_links_, batch.links.size());
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
    if (incremental_ && departed_.empty() && opened_.empty() && arrival_solve()) {
      ++stats_.arrival_solves;
    } else if (!active_.empty()) {
      solve(active_, true);
      ++stats_.full_solves;
      stats_.flows_full += active_.size();
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
        // Of that set, only the part connected to a freed link (through links that its flows
        // share) can change: any other part of it sees the same residual capacities as before
        // (the flows below rho keep their rates), so filling it again gives the rates it has.
        // The connected part is found by a search from the freed links, and its paths and
        // rates are gathered from the groups' contiguous member lists.
        const double cut = rho * (1 - kSatTol);
        set_scratch_.clear();
        lpath_.clear();
        lrate_.clear();
        lbegin_.clear();
        const std::uint32_t gs = ++stamp_;
        if (grp_mark_.size() < groups_.size()) grp_mark_.resize(groups_.size(), 0);
        if (bfs_mark_.size() < links_.size()) bfs_mark_.resize(links_.size(), 0);
        bfs_queue_.clear();
        for (LinkId l : freed_) {
          bfs_mark_[l] = gs;
          bfs_queue_.push_back(l);
        }
        for (std::size_t q = 0; q < bfs_queue_.size(); ++q) {
          const LinkId l = bfs_queue_[q];
          for (FlowIdx h : link_flows_[l]) {
            const Flow& hl = flows_[h];
            if (hl.active_pos == kNone) continue;
            const std::uint32_t g = hl.group;
            if (grp_mark_[g] == gs || !(groups_[g].rate >= cut)) continue;
            grp_mark_[g] = gs;
            const Group& G = groups_[g];
            for (std::uint32_t e = 0; e < G.mem.size(); ++e) {
              set_scratch_.push_back(G.mem[e]);
              lbegin_.push_back(static_cast<std::uint32_t>(lpath_.size()));
              lrate_.push_back(G.rate);
              const LinkId* row = G.mem_links.data() + static_cast<std::size_t>(e) * G.stride;
              for (std::uint32_t j = 0; j < G.stride && row[j] != kNone; ++j) {
                const LinkId m = row[j];
                lpath_.push_back(m);
                if (bfs_mark_[m] != gs) {
                  bfs_mark_[m] = gs;
                  bfs_queue_.push_back(m);
                }
              }
            }
          }
        }
        lbegin_.push_back(static_cast<std::uint32_t>(lpath_.size()));
        solve(set_scratch_, false, true);
        ++stats_.partial_solves;
        stats_.flows_partial += set_scratch_.size();
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
  // Departures only. Re-level the groups the departures touch: a group's rate is (capacity - rate
  // of the other flows on its link) / members, so recompute it, push the change to the links its
  // members cross, and re-level the groups there, until nothing changes (a group whose inputs
  // change after it was re-levelled is re-levelled again). Then check that the result is what
  // progressive filling would form: every touched group's link is saturated at the share of its
  // current members, no member's other link that has a group is slower, no other flow on a group's
  // link is faster, links without a group stay within capacity and are nobody's remembered
  // bottleneck. These are Bertsekas & Gallager's bottleneck conditions, so a state that passes them
  // is the max-min allocation, however it was reached. Slower and faster mean by more than kSatTol:
  // ties are accepted (a tied flow is at its fair share on both links; full solves would break the
  // tie by link id, for the same rates up to kSatTol). A violation is repaired in place, like a
  // pivot: a flow that is faster than another flow on its group's link (or than another link's
  // group) moves to the group of the slowest link on its path, a link without a group that went
  // over capacity gets a new group (the flows above its water level), and re-levelling continues.
  // After kMaxRounds repair rounds, or on anything the repair does not handle, every change is
  // undone and the caller re-solves from rho.
  constexpr int kMaxRounds = 6;
  const std::int64_t now = sim_.now().ps();
  const std::uint32_t st = ++stamp_;
  auto grow = [&] {
    if (fp_mark_.size() < groups_.size()) {
      fp_mark_.resize(groups_.size(), 0);
      fp_done_.resize(groups_.size(), 0);
      fp_chk_.resize(groups_.size(), 0);
      fp_orig_.resize(groups_.size(), 0);
      fp_gain_.resize(groups_.size(), 0);
    }
  };
  grow();
  if (fp_moved_.size() < flows_.size()) fp_moved_.resize(flows_.size(), 0);
  heap_.clear();
  used_log_.clear();
  group_log_.clear();
  fp_slack_.clear();
  move_log_.clear();
  new_log_.clear();
  fp_touched_.clear();
  nm_log_.clear();
  if (fp_lmark_.size() < links_.size()) {
    fp_lmark_.resize(links_.size(), 0);
    fp_ulog_.resize(links_.size(), 0);
  }
  const auto cmp = std::greater<>();
  auto slack = [&](LinkId m) {
    if (fp_lmark_[m] == st) return;
    fp_lmark_[m] = st;
    fp_slack_.push_back(m);
  };
  // A link without a group whose used bandwidth changed: only one that is (or was) near its
  // capacity, or that some flow remembers as its bottleneck, needs the final check.
  auto slack_if = [&](LinkId m) {
    if (used_[m] > sat_level_[m] || saturated_[m] || bneck_count_[m] != 0) slack(m);
  };
  auto raise_nm = [&](LinkId m, double r) {
    if (r > nm_max_[m]) {
      nm_log_.push_back(UsedLog{m, nm_max_[m]});
      nm_max_[m] = r;
    }
  };
  auto touch = [&](std::uint32_t g, double orig) {
    if (fp_done_[g] == st) return;
    fp_done_[g] = st;
    fp_orig_[g] = orig;
    fp_touched_.push_back(g);
  };
  auto push = [&](std::uint32_t g) {
    if (fp_mark_[g] == st) return;  // already queued
    fp_mark_[g] = st;
    touch(g, groups_[g].rate);
    heap_.push_back(heap_key(groups_[g].rate, groups_[g].link));
    std::push_heap(heap_.begin(), heap_.end(), cmp);
  };
  // Outside fast_resolve a link's group always has members (empty groups are released at once);
  // a group that a move empties is unlinked from its link (logged), so this needs no size check.
  auto live_group = [&](LinkId m) { return link_group_[m]; };
  auto add_used = [&](LinkId m, double d) {  // the undo log keeps each link's value before the event
    if (fp_ulog_[m] != st) {
      fp_ulog_[m] = st;
      used_log_.push_back(UsedLog{m, used_[m]});
    }
    used_[m] += d;
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
        slack(m);
    }
  }
  // Moves a flow to group `to` (logged for the undo): the flow's rate becomes the group's, so
  // the links it crosses see the difference, and their groups are re-levelled.
  auto move = [&](FlowIdx f, std::uint32_t to) {
    Flow& fl = flows_[f];
    const std::uint32_t from = fl.group;
    touch(from, groups_[from].rate);
    touch(to, groups_[to].rate);
    fp_gain_[to] = st;
    move_log_.push_back(MoveLog{f, from, fl.bneck, fl.key});
    const double rem = fl.key - served_at(groups_[from], now);
    const double dr = groups_[to].rate - groups_[from].rate;
    leave_group(fl);
    set_bneck(fl, kNone);
    if (groups_[from].size == 0) {  // its link no longer freezes anything
      const LinkId lf = groups_[from].link;
      new_log_.push_back(NewLog{kNone, lf, link_group_[lf]});
      link_group_[lf] = kNone;
      slack(lf);
    }
    fl.key = served_at(groups_[to], now) + std::max(rem, 0.0);
    join_group(f, to);
    set_bneck(fl, groups_[to].link);
    for (std::uint32_t j = 0; j < fl.sp_len; ++j) {
      const LinkId m = solver_links_[fl.sp_begin + j];
      if (dr != 0) add_used(m, dr);
      if (m != groups_[to].link) raise_nm(m, groups_[to].rate);
      const std::uint32_t gm = live_group(m);
      if (gm != kNone)
        push(gm);
      else
        slack_if(m);
    }
    push(from);
    push(to);
  };
  // The group of the slowest link on f's path (the first on the path among exact ties; kNone if
  // no link on its path has a group).
  auto slowest_group = [&](FlowIdx f) {
    const Flow& fl = flows_[f];
    std::uint32_t best = kNone;
    double r1 = std::numeric_limits<double>::infinity();
    for (std::uint32_t j = 0; j < fl.sp_len; ++j) {
      const std::uint32_t gm = live_group(solver_links_[fl.sp_begin + j]);
      if (gm != kNone && groups_[gm].rate < r1) {
        r1 = groups_[gm].rate;
        best = gm;
      }
    }
    return best;
  };
  // The flows on link l outside group g must not be faster than `rate` (beyond kSatTol). nm_max_[l]
  // bounds their rates from above; only when it does not settle that are they scanned: each one
  // that is faster goes to `not_slower`, and the bound becomes exact (logged for undo).
  const auto scan_others = [&](LinkId l, std::uint32_t g, double rate, auto&& not_slower) {
    if (nm_max_[l] <= rate * (1 + kSatTol)) return;
    double mx = 0;
    for (FlowIdx h : link_flows_[l]) {
      const Flow& hl = flows_[h];
      if (hl.active_pos == kNone || hl.group == g) continue;
      const double hr = groups_[hl.group].rate;
      mx = std::max(mx, hr);
      if (hr > rate * (1 + kSatTol)) not_slower(h);
    }
    nm_log_.push_back(UsedLog{l, nm_max_[l]});
    nm_max_[l] = mx;
  };
  std::size_t budget = 0;
  bool ok = true;
  for (int round = 0; ok; ++round) {
    // Re-level until no group's inputs change. A group re-levelled again and again means the
    // order is far from settled: give up (bounded work).
    while (ok && !heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), cmp);
      const auto l = static_cast<LinkId>(heap_.back());
      heap_.pop_back();
      const std::uint32_t g = link_group_[l];
      if (g == kNone) continue;  // emptied by moves (its link is in fp_slack_)
      fp_mark_[g] = 0;
      if (++budget > 4 * fp_touched_.size() + 64) {
        ok = false;
        break;
      }
      Group& G = groups_[g];
      if (link_ngroups_[l] == 1 && G.away != 0 && bneck_count_[l] + G.away == G.size) {
        // Members that found another bottleneck when a departure freed this link (a tie: they
        // are as fast as the flows frozen there) go to that link's group, and this group is
        // re-levelled without them when it comes up again (move() queues both).
        fp_early_.clear();
        for (FlowIdx f : G.mem)
          if (flows_[f].bneck != l) fp_early_.push_back(f);
        for (FlowIdx f : fp_early_) {
          const LinkId b = flows_[f].bneck;
          const std::uint32_t to = b == kNone ? kNone : live_group(b);
          if (to == kNone || to == g) {
            ok = false;
            break;
          }
          move(f, to);
        }
        continue;
      }
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
      // Members that are now at least as fast as another link's group on their path, or (rate
      // fell) other flows on l that are now at least as fast as this group, are moved right away
      // (to the slowest group on their path), so that the rest of the re-levelling sees the new
      // grouping. This is only a guess that saves a later round: the checks below decide.
      fp_early_.clear();
      const LinkId* ml = G.mem_links.data();
      const double lo = rate * (1 - kSatTol);
      for (std::size_t e = 0, ne = G.mem_links.size(); e < ne; ++e) {
        const LinkId m = ml[e];
        if (m == l || m == kNone) continue;
        add_used(m, delta);
        if (delta > 0) raise_nm(m, rate);  // a falling rate leaves the bound valid
        const std::uint32_t gm = live_group(m);
        if (gm == kNone) {
          slack_if(m);
        } else {
          push(gm);
          if (delta > 0 && groups_[gm].rate < lo) fp_early_.push_back(G.mem[e / G.stride]);
        }
      }
      add_used(l, G.size * delta);
      if (delta < 0) scan_others(l, g, rate, [&](FlowIdx h) { fp_early_.push_back(h); });
      if (!fp_early_.empty()) {
        std::sort(fp_early_.begin(), fp_early_.end());
        fp_early_.erase(std::unique(fp_early_.begin(), fp_early_.end()), fp_early_.end());
        for (FlowIdx f : fp_early_) {
          const std::uint32_t to = slowest_group(f);
          if (to != kNone && to != flows_[f].group) move(f, to);
        }
      }
    }
    if (!ok) break;
    // Check every relation that involves a touched group or link (relations between untouched
    // groups still hold), collecting the flows to move and the links that need a group.
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
      const std::uint32_t g = fp_touched_[k];
      if (fp_chk_[g] == cs) continue;
      fp_chk_[g] = cs;
      const Group& G = groups_[g];
      if (G.size == 0) continue;
      const LinkId l = G.link;
      const double r = G.rate;
      // Its rate must be its link's fair share for its current members (saturated link).
      if (G.den != G.size || !(used_[l] >= links_[l].capacity * (1 - kSatTol))) {
        ok = false;
        break;
      }
      const LinkId* ml = G.mem_links.data();
      const bool rose = r > fp_orig_[g] || fp_gain_[g] == st;
      for (std::uint32_t e = 0; rose && e < G.mem.size(); ++e) {
        for (std::uint32_t j = 0; j < G.stride; ++j) {
          const LinkId m = ml[static_cast<std::size_t>(e) * G.stride + j];
          if (m == kNone) break;
          if (m == l) continue;
          const std::uint32_t gm = live_group(m);  // (links without a group: in fp_slack_ if they matter)
          if (gm != kNone && groups_[gm].rate < r * (1 - kSatTol)) flag(G.mem[e]);
        }
      }
      // The other flows on l must still be slower (checked when its rate fell).
      if (r < fp_orig_[g]) scan_others(l, g, r, flag);
    }
    if (!ok) break;
    for (std::size_t k = 0; ok && k < fp_slack_.size(); ++k) {
      const LinkId m = fp_slack_[k];
      // A flow that remembers a link without a group as its bottleneck (a flow of another link's
      // group that found this one saturated, at its rate) may have lost it when its use changed.
      if (live_group(m) == kNone && bneck_count_[m] != 0) ok = false;
      if (live_group(m) == kNone && used_[m] > links_[m].capacity * (1 + kSatTol) && link_stamp_[m] != cs) {
        link_stamp_[m] = cs;
        fp_over_.push_back(m);
      }
    }
    if (!ok) break;
    if (fp_fix_.empty() && fp_over_.empty()) break;
    if (round == kMaxRounds) {
      ok = false;
      break;
    }
    for (FlowIdx f : fp_fix_) {
      const std::uint32_t to = slowest_group(f);
      if (to == kNone || to == flows_[f].group) {
        ok = false;
        break;
      }
      move(f, to);
    }
    for (std::size_t k = 0; ok && k < fp_over_.size(); ++k) {
      // Water level of an over-full link: the flows slower than it keep their rates, the others
      // (in rate order) would be frozen here.
      const LinkId m = fp_over_[k];
      if (!(used_[m] > links_[m].capacity * (1 + kSatTol))) continue;  // the moves above relieved it
      if (link_ngroups_[m] != 0 || live_group(m) != kNone) {
        ok = false;
        break;
      }
      fp_water_.clear();
      for (FlowIdx h : link_flows_[m])
        if (flows_[h].active_pos != kNone) fp_water_.push_back(WaterEntry{groups_[flows_[h].group].rate, h});
      std::sort(fp_water_.begin(), fp_water_.end(), [](const WaterEntry& a, const WaterEntry& b) {
        return a.rate != b.rate ? a.rate < b.rate : a.flow < b.flow;
      });
      double res = links_[m].capacity;
      std::size_t i = 0;
      const std::size_t n = fp_water_.size();
      while (i < n && fp_water_[i].rate * static_cast<double>(n - i) < res) res -= fp_water_[i++].rate;
      if (i == n) {  // not over its water level after all: a near-tie
        ok = false;
        break;
      }
      const std::uint32_t old = link_group_[m];
      const std::uint32_t g = new_group(m);
      grow();
      new_log_.push_back(NewLog{g, m, old});
      touch(g, std::numeric_limits<double>::infinity());
      for (; i < n; ++i) move(fp_water_[i].flow, g);
    }
  }
  if (!ok) {
    for (std::size_t k = move_log_.size(); k-- > 0;) {
      const MoveLog& o = move_log_[k];
      Flow& fl = flows_[o.flow];
      leave_group(fl);
      set_bneck(fl, kNone);
      fl.key = o.key;
      join_group(o.flow, o.from);
      set_bneck(fl, o.bneck);
    }
    for (std::size_t k = used_log_.size(); k-- > 0;) used_[used_log_[k].link] = used_log_[k].used;
    for (std::size_t k = nm_log_.size(); k-- > 0;) nm_max_[nm_log_[k].link] = nm_log_[k].used;
    for (std::size_t k = group_log_.size(); k-- > 0;) {
      const GroupLog& o = group_log_[k];
      Group& G = groups_[o.group];
      G.den = o.den;
      G.num = o.num;
      G.rate = o.rate;
      G.served = o.served;
      G.anchor_ps = o.anchor_ps;
    }
    for (std::size_t k = new_log_.size(); k-- > 0;) {  // new groups (now empty again) and unlinked ones
      if (new_log_[k].group != kNone) release_group(new_log_[k].group);
      link_group_[new_log_[k].link] = new_log_[k].old;
    }
    return false;
  }
  for (LinkId m : fp_slack_)
    if (live_group(m) == kNone) saturated_[m] = 0;
  stats_.repairs += move_log_.size();
  for (const NewLog& o : new_log_) stats_.repairs += o.group != kNone ? 1 : 0;
  // Refresh the groups whose rate or membership changed (each once).
  const std::uint32_t rs = ++stamp_;
  auto refresh = [&](std::uint32_t g) {
    if (fp_chk_[g] == rs) return;
    fp_chk_[g] = rs;
    const Group& G = groups_[g];
    if (G.size > 0) {
      saturated_[G.link] = 1;
      max_rate_[G.link] = G.rate;
      stats_.flows_resolved += G.size;
    }
    refresh_group_drain(g);
  };
  for (const GroupLog& o : group_log_) refresh(o.group);
  for (const MoveLog& o : move_log_) {
    refresh(o.from);
    refresh(flows_[o.flow].group);
  }
  return true;
}

bool FlowNetwork::arrival_solve() {
  // Arrivals only (no departure at this instant). Re-solve a set S of flows on the capacity the
  // others leave, the others keeping their rates, and accept the result only if it is the max-min
  // allocation of all flows (Bertsekas & Gallager's conditions, within kSatTol): every flow of S
  // froze at a saturated link where it is the fastest (progressive filling guarantees this among
  // S; the others on that link are checked), and every other flow whose bottleneck link carries
  // S traffic still has it (the link is still saturated and no flow of S is faster there). The
  // others' links that S does not cross are unchanged. S starts as the new flows and the groups
  // frozen at the links they cross; a violated condition adds the groups of the flows involved,
  // and S is solved again. S is always whole groups, so solve keeps the links' groups. Gives up
  // (the caller re-solves everything) when S would be over half of the active flows.
  const std::uint32_t gs = ++stamp_;
  if (grp_mark_.size() < groups_.size()) grp_mark_.resize(groups_.size(), 0);
  if (lsmax_.size() < links_.size()) {
    lsmax_.resize(links_.size(), 0);
    lfz_.resize(links_.size(), 0);
    lsb_.resize(links_.size(), 0);
  }
  std::vector<FlowIdx>& set = set_scratch_;
  set.assign(arrived_.begin(), arrived_.end());
  auto add_group = [&](std::uint32_t g) {
    if (grp_mark_[g] == gs) return;
    grp_mark_[g] = gs;
    set.insert(set.end(), groups_[g].mem.begin(), groups_[g].mem.end());
  };
  auto add_link_groups = [&](LinkId l) {
    if (link_ngroups_[l] == 0) return;
    if (link_ngroups_[l] == 1 && link_group_[l] != kNone) {
      add_group(link_group_[l]);
      return;
    }
    for (FlowIdx h : link_flows_[l]) {
      const Flow& hl = flows_[h];
      if (hl.active_pos != kNone && hl.group != kNone && groups_[hl.group].link == l) add_group(hl.group);
    }
  };
  auto in_set = [&](const Flow& h) { return h.group == kNone || grp_mark_[h.group] == gs; };
  for (FlowIdx f : arrived_) {
    const Flow& fl = flows_[f];
    for (std::uint32_t k = 0; k < fl.sp_len; ++k) add_link_groups(solver_links_[fl.sp_begin + k]);
  }
  for (int round = 0;; ++round) {
    if (2 * set.size() > active_.size() || round == 8) return false;
    const std::uint32_t st = fill(set, false, false);
    const std::size_t ns = set.size();
    // Per link: the fastest flow of S, the rate S froze at there (-1: none), S flows that
    // remembered it as their bottleneck.
    for (LinkId l : touched_) {
      lsmax_[l] = 0;
      lfz_[l] = -1;
      lsb_[l] = 0;
    }
    for (std::size_t i = 0; i < ns; ++i) {
      const double r = new_num_[i] / new_den_[i];
      for (std::uint32_t k = lbegin_[i]; k < lbegin_[i + 1]; ++k) lsmax_[lpath_[k]] = std::max(lsmax_[lpath_[k]], r);
      lfz_[lbneck_[i]] = r;
      const LinkId b = flows_[set[i]].bneck;
      if (b != kNone && link_stamp_[b] == st) ++lsb_[b];
    }
    for (LinkId l : touched_) {
      const auto& lf = link_flows_[l];
      const bool others = lf.size() - link_dead_[l] > csr_fill_[l] - csr_begin_[l];
      if (lfz_[l] >= 0) {
        add_link_groups(l);  // a link where S froze keeps one group: its old one joins S
        if (!others) continue;
        const double hi = lfz_[l] * (1 + kSatTol);
        for (FlowIdx h : lf) {
          const Flow& hl = flows_[h];
          if (hl.active_pos == kNone || in_set(hl)) continue;
          if (hl.bneck == l || groups_[hl.group].rate > hi) add_group(hl.group);
        }
      } else if (bneck_count_[l] > lsb_[l]) {
        const bool sat = links_[l].capacity - link_res_[l] >= links_[l].capacity * (1 - kSatTol);
        for (FlowIdx h : lf) {
          const Flow& hl = flows_[h];
          if (hl.active_pos == kNone || in_set(hl) || hl.bneck != l) continue;
          if (!sat || lsmax_[l] > groups_[hl.group].rate * (1 + kSatTol)) add_group(hl.group);
        }
      }
    }
    if (set.size() != ns) {  // S grew: solve again
      ++stats_.arrival_regrows;
      continue;
    }
    set.resize(ns);
    commit(set, false, st);
    stats_.flows_arrival += ns;
    // commit() set max_rate_ to the fastest flow of S on each link; a saturated link may carry
    // faster flows of the others (bottlenecked there, or tied within kSatTol).
    for (LinkId l : touched_) {
      if (!saturated_[l]) continue;
      for (FlowIdx h : link_flows_[l]) {
        const Flow& hl = flows_[h];
        if (hl.active_pos == kNone || hl.group == kNone) continue;
        max_rate_[l] = std::max(max_rate_[l], groups_[hl.group].rate);
      }
    }
    return true;
  }
}

void FlowNetwork::solve(const std::vector<FlowIdx>& set, bool full, bool gathered) {
  commit(set, full, fill(set, full, gathered));
}

std::uint32_t FlowNetwork::fill(const std::vector<FlowIdx>& set, bool full, bool gathered) {
  const std::uint32_t st = ++stamp_;
  const auto ns = static_cast<std::uint32_t>(set.size());
  touched_.clear();
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
      }
    }
  }
  return st;
}

void FlowNetwork::commit(const std::vector<FlowIdx>& set, bool full, std::uint32_t st) {
  const auto ns = static_cast<std::uint32_t>(set.size());
  stats_.flows_resolved += ns;
  if (full) {
    std::fill(nm_max_.begin(), nm_max_.end(), std::numeric_limits<double>::infinity());  // unknown until scanned
    std::fill(used_.begin(), used_.end(), 0.0);
    std::fill(saturated_.begin(), saturated_.end(), 0);
    std::fill(max_rate_.begin(), max_rate_.end(), 0.0);
  }
  for (LinkId l : touched_) {
    max_rate_[l] = 0;
    if (!full) nm_max_[l] = std::numeric_limits<double>::infinity();  // unknown: scan when needed
  }
  for (std::uint32_t i = 0; i < ns; ++i) {  // largest rate of the set on each link
    const double rate = new_num_[i] / new_den_[i];
    for (std::uint32_t j = lbegin_[i]; j < lbegin_[i + 1]; ++j)
      max_rate_[lpath_[j]] = std::max(max_rate_[lpath_[j]], rate);
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
  if (arrived_.empty()) return;
  if (dominated_.size() < links_.size()) {
    dominated_.resize(links_.size(), 0);
    dom_by_.resize(links_.size(), kNone);
  }
  const FlowIdx first_new = arrived_.front();
  auto crosses = [&](const Flow& g, LinkId m) {
    for (std::uint32_t j = 0; j < g.path_len; ++j)
      if (path_links_[g.path_begin + j] == m) return true;
    return false;
  };
  const std::uint32_t st = ++stamp_;
  prune_links_.clear();
  for (FlowIdx f : arrived_) {
    const Flow& fl = flows_[f];
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links_[fl.path_begin + k];
      if (link_stamp_[l] != st) {
        link_stamp_[l] = st;
        link_cnt_[l] = 0;
        prune_links_.push_back(l);
      }
      ++link_cnt_[l];
    }
  }
  opened_.clear();
  for (LinkId l : prune_links_) {
    const auto& lf = link_flows_[l];
    if (lf.size() - link_dead_[l] == link_cnt_[l]) {  // only new flows: decide afresh
      dominated_[l] = 0;
      dom_by_[l] = kNone;
      const Flow* f0 = nullptr;
      for (FlowIdx g : lf)
        if (flows_[g].active_pos != kNone) {
          f0 = &flows_[g];
          break;
        }
      for (std::uint32_t k = 0; f0 != nullptr && k < f0->path_len && !dominated_[l]; ++k) {
        const LinkId m = path_links_[f0->path_begin + k];
        if (!(links_[m].capacity < links_[l].capacity)) continue;
        bool all = true;
        for (FlowIdx g : lf)
          if (flows_[g].active_pos != kNone && !crosses(flows_[g], m)) {
            all = false;
            break;
          }
        if (all) {
          dominated_[l] = 1;
          dom_by_[l] = m;
        }
      }
    } else if (dominated_[l]) {
      for (FlowIdx g : lf)
        if (g >= first_new && !crosses(flows_[g], dom_by_[l])) {
          dominated_[l] = 0;
          dom_by_[l] = kNone;
          opened_.push_back(l);
          break;
        }
    }
  }
  // New flows: their solver paths (written over the full paths that start() copied there).
  for (FlowIdx f : arrived_) {
    Flow& fl = flows_[f];
    std::uint32_t w = fl.sp_begin;
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links_[fl.path_begin + k];
      if (!dominated_[l]) solver_links_[w++] = l;
    }
    fl.sp_len = w - fl.sp_begin;
  }
  // Older flows on a link that rejoined the solver paths.
  if (opened_.empty()) return;
  repath_.clear();
  for (LinkId l : opened_)
    for (FlowIdx g : link_flows_[l])
      if (g < first_new && flows_[g].active_pos != kNone) repath_.push_back(g);
  std::sort(repath_.begin(), repath_.end());
  repath_.erase(std::unique(repath_.begin(), repath_.end()), repath_.end());
  for (FlowIdx g : repath_) {
    Flow& fl = flows_[g];
    const std::uint32_t grp = fl.group;
    if (grp != kNone) leave_group(fl);
    fl.sp_begin = static_cast<std::uint32_t>(solver_links_.size());
    for (std::uint32_t k = 0; k < fl.path_len; ++k) {
      const LinkId l = path_links_[fl.path_begin + k];
      if (!dominated_[l]) solver_links_.push_back(l);
    }
    fl.sp_len = static_cast<std::uint32_t>(solver_links_.size()) - fl.sp_begin;
    if (grp != kNone) join_group(g, grp);  // same key: the group's service counter is unchanged
  }
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
  std::fill(nm_max_.begin(), nm_max_.end(), 0.0);
  std::fill(bneck_count_.begin(), bneck_count_.end(), 0U);
}

}  // namespace moesim::hw
