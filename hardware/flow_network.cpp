#include "hardware/flow_network.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace moesim::hw {

using flow::FlowIdx;
using flow::GroupId;
using flow::kNone;

LinkId FlowNetwork::add_link(double bytes_per_s, sim::SimTime latency) {
  if (!(bytes_per_s > 0) || !std::isfinite(bytes_per_s))
    throw std::invalid_argument("FlowNetwork::add_link: bandwidth must be finite and > 0, got " +
                                std::to_string(bytes_per_s));
  if (latency < sim::SimTime::zero()) throw std::invalid_argument("FlowNetwork::add_link: negative latency");
  link_bytes_.push_back(0);
  return store_.add_link(bytes_per_s, latency);
}

sim::SimTime FlowNetwork::path_latency(std::span<const LinkId> path) const {
  sim::SimTime t{};
  for (LinkId l : path) t += store_.links.at(l).latency;
  return t;
}

sim::SimTime FlowNetwork::batch_done_time(BatchId b) const {
  const Batch& bt = batches_.at(b);
  return bt.running == 0 ? sim::SimTime::from_ps(bt.max_done_ps) : sim::SimTime::max();
}

double FlowNetwork::flow_rate(BatchId b, std::size_t index) const {
  const Batch& bt = batches_.at(b);
  if (bt.done.at(index) != sim::SimTime::max()) return 0;
  for (FlowIdx f : store_.active)
    if (store_.flows[f].batch == b && store_.flows[f].index == index) return store_.rate(f);
  return 0;
}

BatchId FlowNetwork::start(FlowBatch batch, sim::Callback on_done) {
  const std::size_t n = batch.bytes.size();
  if (batch.offsets.size() != n + 1 || batch.offsets.front() != 0 || batch.offsets.back() != batch.links.size())
    throw std::invalid_argument("FlowNetwork::start: inconsistent FlowBatch offsets");
  for (LinkId l : batch.links)
    if (l >= store_.link_count())
      throw std::invalid_argument("FlowNetwork::start: unknown link id " + std::to_string(l));
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

  store_.reserve(n, batch.links.size());
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b0 = batch.offsets[i], b1 = batch.offsets[i + 1];
    const double bytes = batch.bytes[i];
    std::int64_t lat = 0;
    for (std::uint32_t k = b0; k < b1; ++k) {
      link_bytes_[batch.links[k]] += bytes;
      lat += store_.links[batch.links[k]].latency.ps();
    }
    if (bytes == 0 || b0 == b1) {
      bt.done[i] = sim::SimTime::from_ps(now + lat);
      bt.max_done_ps = std::max(bt.max_done_ps, now + lat);
      continue;
    }
    const std::span<const LinkId> path(batch.links.data() + b0, b1 - b0);
    arrived_.push_back(store_.add_flow(path, bytes, bid, static_cast<std::uint32_t>(i)));
    ++bt.running;
    ++stats_.flows_started;
  }

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
  flow::FlowChange change{
      .arrived = arrived_, .departed = departed_, .departed_groups = departed_group_, .now_ps = sim_.now().ps()};
  if (!arrived_.empty() || !incremental_) {
    const bool reopened = store_.prune_paths(arrived_);
    if (incremental_ && departed_.empty() && !reopened && arrival_.solve(store_, change, stats_)) {
      ++stats_.arrival_solves;
    } else if (!store_.active.empty()) {
      filling_.solve(store_, change, stats_);
      ++stats_.full_solves;
    }
  } else if (!departed_.empty()) {
    departure_check_.run(store_, change);
    if (change.rho == std::numeric_limits<double>::infinity()) {
      ++stats_.skipped_solves;
    } else if (relevel_.solve(store_, change, stats_)) {
      ++stats_.fast_solves;
    } else {
      partial_.solve(store_, change, stats_);
      ++stats_.partial_solves;
    }
  }
  arrived_.clear();
  departed_.clear();
  departed_group_.clear();
  arm_wakeup();
  store_.reset_if_idle();
}

void FlowNetwork::arm_wakeup() {
  const std::int64_t t = store_.earliest_drain_ps();
  if (t == wakeup_ps_) return;
  if (wakeup_id_.valid()) sim_.cancel(wakeup_id_);
  wakeup_id_ = {};
  wakeup_ps_ = t;
  if (t == std::numeric_limits<std::int64_t>::max()) return;
  wakeup_id_ = sim_.schedule_at(
      sim::SimTime::from_ps(t), [this] { drain_event(); }, sim::Phase::kComplete);
}

void FlowNetwork::drain_event() {
  wakeup_id_ = {};
  wakeup_ps_ = std::numeric_limits<std::int64_t>::max();
  const std::int64_t now = sim_.now().ps();
  ++stats_.drain_events;
  GroupId g = kNone;
  while (store_.pop_due_drain(now, g)) {
    store_.drain_group(g, now, [&](FlowIdx f, std::int64_t lat) {
      departed_.push_back(f);
      departed_group_.push_back(g);
      flow_finished(f, now, lat);
    });
  }
  if (!departed_.empty()) request_solve();
  arm_wakeup();
}

void FlowNetwork::flow_finished(FlowIdx f, std::int64_t now_ps, std::int64_t latency_ps) {
  const flow::Flow& fl = store_.flows[f];
  Batch& bt = batches_[fl.batch];
  bt.done[fl.index] = sim::SimTime::from_ps(now_ps + latency_ps);
  bt.max_done_ps = std::max(bt.max_done_ps, now_ps + latency_ps);
  if (--bt.running == 0) sim_.schedule_at(sim::SimTime::from_ps(bt.max_done_ps), std::move(bt.on_done));
}

}  // namespace moesim::hw
