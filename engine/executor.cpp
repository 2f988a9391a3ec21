#include "engine/executor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace moesim::engine {

using sim::SimTime;

const char* to_string(Category c) {
  switch (c) {
    case Category::kCompute:
      return "compute";
    case Category::kDispatch:
      return "dispatch";
    case Category::kCombine:
      return "combine";
    case Category::kOtherComm:
      return "other_comm";
    case Category::kDataParallel:
      return "data_parallel";
    case Category::kPipeline:
      return "pipeline";
  }
  return "?";
}

const char* to_string(Stream s) {
  switch (s) {
    case Stream::kCompute:
      return "compute";
    case Stream::kEpComm:
      return "comm EP/TP";
    case Stream::kDpComm:
      return "comm DP";
    case Stream::kPpComm:
      return "comm PP";
    case Stream::kDpGather:
      return "comm DP gather";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// StepGraph
// ---------------------------------------------------------------------------------------------

StepGraph::StepGraph(int num_gpus) : num_gpus_(num_gpus) {
  if (num_gpus <= 0) throw std::invalid_argument("StepGraph: needs at least one GPU");
  last_.assign(static_cast<std::size_t>(kNumStreams) * static_cast<std::size_t>(num_gpus), kNoOp);
}

std::uint16_t StepGraph::intern(std::string_view name) {
  const auto it = name_ids_.find(name);
  if (it != name_ids_.end()) return it->second;
  if (names_.size() > std::numeric_limits<std::uint16_t>::max())
    throw std::invalid_argument("StepGraph: more than 65536 distinct op names");
  const auto id = static_cast<std::uint16_t>(names_.size());
  names_.emplace_back(name);
  name_ids_.emplace(std::string(name), id);
  return id;
}

void StepGraph::add_edge(OpId before, OpId after) {
  if (before == kNoOp) return;
  if (frozen_) throw std::logic_error("StepGraph: edge added after the graph was frozen");
  if (before >= ops_.size() || after >= ops_.size() || before == after)
    throw std::invalid_argument(fmt::format("StepGraph: bad dependency {} -> {}", before, after));
  edges_.emplace_back(before, after);
  ++ops_[after].deps;
}

OpId StepGraph::add_op(const OpInfo& info) {
  if (frozen_) throw std::logic_error("StepGraph: op added after the graph was frozen");
  if (ops_.size() >= kNoOp - 1) throw std::invalid_argument("StepGraph: too many ops");
  const auto id = static_cast<OpId>(ops_.size());
  Op& op = ops_.emplace_back();
  op.name = intern(info.name);
  op.category = info.category;
  op.layer = info.layer;
  op.micro_batch = info.micro_batch;
  op.flops = info.flops;
  op.bytes = info.bytes;
  op.gpu_begin = static_cast<std::uint32_t>(gpus_.size());
  return id;
}

OpId StepGraph::compute(int gpu, const OpInfo& info, SimTime duration, const std::vector<OpId>& deps) {
  if (gpu < 0 || gpu >= num_gpus_) throw std::invalid_argument(fmt::format("StepGraph: GPU {} out of range", gpu));
  if (duration < SimTime::zero()) throw std::invalid_argument("StepGraph: negative compute duration");
  const OpId id = add_op(info);
  Op& op = ops_[id];
  op.duration = duration;
  op.gpu_count = 1;
  op.ordered = 1;
  op.stream = Stream::kCompute;
  gpus_.push_back(gpu);
  OpId& last = last_[static_cast<std::size_t>(gpu)];
  add_edge(last, id);  // stream order
  for (OpId d : deps) add_edge(d, id);
  last = id;
  add_host_cost(id, std::span<const int>(&gpu, 1), info);
  return id;
}

void StepGraph::add_host_cost(OpId id, std::span<const int> gpus, const OpInfo& info) {
  if (info.host_sync) ops_[id].host_sync = 1;
  if (info.host_cost < sim::SimTime::zero()) throw std::invalid_argument("StepGraph: negative host cost");
  if (info.host_cost == sim::SimTime::zero() && host_offset_.empty()) return;
  if (host_offset_.empty()) host_accum_.assign(static_cast<std::size_t>(num_gpus_), 0);
  host_offset_.resize(ops_.size(), 0);
  for (int g : gpus) host_accum_[static_cast<std::size_t>(g)] += info.host_cost.ps();
  if (ops_[id].stream != Stream::kCompute) return;  // collectives are issued, never gated
  const auto g = static_cast<std::size_t>(gpus[0]);
  host_offset_[id] = host_accum_[g];
  if (info.host_sync) host_accum_[g] = 0;
}

OpId StepGraph::collective(const std::vector<int>& gpus, const OpInfo& info, std::uint32_t collective_index,
                           Stream stream, const std::vector<OpId>& deps, int sm_count, int ordered_gpus) {
  if (gpus.empty()) throw std::invalid_argument("StepGraph: collective without participants");
  if (stream == Stream::kCompute) throw std::invalid_argument("StepGraph: a collective needs a communication stream");
  if (sm_count < 0 || sm_count > std::numeric_limits<std::uint16_t>::max())
    throw std::invalid_argument(fmt::format("StepGraph: sm_count {} out of range", sm_count));
  for (int g : gpus)
    if (g < 0 || g >= num_gpus_) throw std::invalid_argument(fmt::format("StepGraph: GPU {} out of range", g));
  const OpId id = add_op(info);
  {
    Op& op = ops_[id];
    op.gpu_count = static_cast<std::uint32_t>(gpus.size());
    op.collective = collective_index;
    op.stream = stream;
    op.sm_count = static_cast<std::uint16_t>(sm_count);
  }
  gpus_.insert(gpus_.end(), gpus.begin(), gpus.end());
  const std::size_t base = static_cast<std::size_t>(stream) * static_cast<std::size_t>(num_gpus_);
  const std::size_t ordered =
      ordered_gpus < 0 ? gpus.size() : std::min(gpus.size(), static_cast<std::size_t>(ordered_gpus));
  ops_[id].ordered = static_cast<std::uint32_t>(ordered);
  ops_[id].recv_lane = static_cast<std::uint8_t>(info.recv_lane == 0 ? 0 : 1);
  if (ordered < gpus.size()) has_unordered_ = true;
  add_host_cost(id, gpus, info);
  for (std::size_t k = 0; k < ordered; ++k) {
    OpId& last = last_[base + static_cast<std::size_t>(gpus[k])];
    add_edge(last, id);
    last = id;
  }
  for (OpId d : deps) add_edge(d, id);
  return id;
}

void StepGraph::depend(OpId after, OpId before) { add_edge(before, after); }

void StepGraph::flow(OpId after, OpId before) {
  add_edge(before, after);
  if (before != kNoOp) flow_edges_.emplace_back(after, before);
}

void StepGraph::freeze() {
  if (frozen_) return;
  const std::size_t n = ops_.size();
  succ_begin_.assign(n + 1, 0);
  for (const auto& e : edges_) ++succ_begin_[e.first + 1];
  for (std::size_t i = 0; i < n; ++i) succ_begin_[i + 1] += succ_begin_[i];
  succ_.resize(edges_.size());
  std::vector<std::uint32_t> fill(succ_begin_.begin(), succ_begin_.end() - 1);
  // Edges are visited in insertion order, so each op's successors keep their insertion order
  // (completion callbacks make successors ready in a deterministic order).
  for (const auto& e : edges_) succ_[fill[e.first]++] = e.second;
  std::vector<std::pair<OpId, OpId>>().swap(edges_);
  frozen_ = true;
}

std::size_t StepGraph::memory_bytes() const {
  std::size_t b = ops_.size() * sizeof(Op) + gpus_.size() * sizeof(int) + edges_.size() * sizeof(edges_[0]) +
                  flow_edges_.size() * sizeof(flow_edges_[0]) + succ_begin_.size() * sizeof(std::uint32_t) +
                  succ_.size() * sizeof(OpId) + last_.size() * sizeof(OpId);
  for (const auto& s : names_) b += s.capacity() + sizeof(s);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Executor
// ---------------------------------------------------------------------------------------------

Executor::Executor(sim::Simulation& sim, StepGraph& graph, CommBackend& backend, ExecutorOptions opts)
    : sim_(sim), g_(graph), backend_(backend), opts_(std::move(opts)) {
  if (opts_.sms_per_gpu <= 0) throw std::invalid_argument("Executor: sms_per_gpu must be > 0");
}

ExecutionResult Executor::run() {
  g_.freeze();
  const std::size_t n = g_.ops_.size();
  const auto G = static_cast<std::size_t>(g_.num_gpus_);
  pending_deps_.resize(n);
  start_time_.assign(n, SimTime::zero());
  done_.assign(n, 0);
  gpu_.assign(G, GpuState{});
  acc_.assign(G, GpuBreakdown{});
  completed_ = 0;
  for (std::size_t i = 0; i < n; ++i) pending_deps_[i] = g_.ops_[i].deps;
  for (auto& st : gpu_) st.last_change_ps = sim_.now().ps();
  host_release_ps_.assign(G, sim_.now().ps());
  if (!g_.host_offset_.empty()) g_.host_offset_.resize(n, 0);

  if (opts_.trace) {
    for (int gi = 0; gi < g_.num_gpus_; ++gi) {
      const auto gs = static_cast<std::size_t>(gi);
      opts_.trace->process(gi, gs < opts_.gpu_names.size() ? opts_.gpu_names[gs] : fmt::format("GPU {}", gi));
      for (int s = 0; s < kNumStreams; ++s) opts_.trace->track(gi, s, to_string(static_cast<Stream>(s)));
      if (g_.has_unordered_) {
        opts_.trace->track(gi, kNumStreams, "comm PP recv fwd");
        opts_.trace->track(gi, kNumStreams + 1, "comm PP recv bwd");
      }
    }
    // Flow predecessors by op, in the order flow() was called.
    flow_begin_.assign(n + 1, 0);
    for (const auto& f : g_.flow_edges_) ++flow_begin_[f.first + 1];
    for (std::size_t i = 0; i < n; ++i) flow_begin_[i + 1] += flow_begin_[i];
    flow_pred_.resize(g_.flow_edges_.size());
    std::vector<std::uint32_t> fill(flow_begin_.begin(), flow_begin_.end() - 1);
    for (const auto& f : g_.flow_edges_) flow_pred_[fill[f.first]++] = f.second;
  }

  const std::uint64_t events_before = sim_.executed();
  const SimTime t0 = sim_.now();
  for (std::size_t i = 0; i < n; ++i)
    if (pending_deps_[i] == 0) start(static_cast<OpId>(i));
  sim_.run();

  if (completed_ != n) {
    std::size_t first = 0;
    while (first < n && done_[first]) ++first;
    throw sim::SimulationError(
        fmt::format("step graph: {} of {} ops never ran (first: '{}'); a dependency cycle or a lost collective",
                    n - completed_, n, first < n ? g_.name(static_cast<OpId>(first)) : std::string("?")));
  }
  sim_.check_drained();

  ExecutionResult r;
  r.ops_executed = completed_;
  r.events = sim_.executed() - events_before;
  r.per_gpu = std::move(acc_);
  for (std::size_t gi = 0; gi < G; ++gi) {
    GpuBreakdown& b = r.per_gpu[gi];
    const GpuState& st = gpu_[gi];
    b.exposed_comm = SimTime::from_ps(st.comm_union_ps - st.comm_overlap_ps);
    b.busy_end = b.busy_end > t0 ? b.busy_end - t0 : SimTime::zero();  // a GPU without ops ends at 0
    r.step_time = sim::max(r.step_time, b.busy_end);
  }
  for (std::size_t gi = 0; gi < G; ++gi) {
    GpuBreakdown& b = r.per_gpu[gi];
    // idle = step - |compute U comm| = step - (compute_union + exposed_comm); compute ops on one
    // stream never overlap, so the compute union is the compute sum.
    b.idle = r.step_time - b.compute - b.exposed_comm;
    // The idle spans were attributed online as they ended; what remains is the tail after the
    // GPU's last op. Both ways of counting idle time must agree to the picosecond.
    b.idle_tail = r.step_time - b.busy_end;
    const SimTime split = b.wait_ep + b.wait_dp + b.wait_pp + b.wait_other + b.wait_host + b.idle_tail;
    if (split != b.idle || gpu_[gi].idle_pending_ps != 0)
      throw sim::SimulationError(fmt::format(
          "GPU {}: idle time {} ps does not equal its attribution {} ps (EP wait {}, DP wait {}, PP wait {}, "
          "other {}, host {}, tail {}; {} ps unattributed)",
          gi, b.idle.ps(), split.ps(), b.wait_ep.ps(), b.wait_dp.ps(), b.wait_pp.ps(), b.wait_other.ps(),
          b.wait_host.ps(), b.idle_tail.ps(), gpu_[gi].idle_pending_ps));
  }
  for (int gi = g_.num_gpus_ - 1; gi >= 0; --gi)
    if (r.per_gpu[static_cast<std::size_t>(gi)].busy_end == r.step_time) r.critical_gpu = gi;
  return r;
}

void Executor::advance(int gpu) {
  GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
  const std::int64_t now = sim_.now().ps();
  const std::int64_t dt = now - st.last_change_ps;
  if (dt > 0 && st.comm_active > 0) {
    st.comm_union_ps += dt;
    if (st.running != kNoOp) st.comm_overlap_ps += dt;
  }
  if (dt > 0 && st.comm_active == 0 && st.running == kNoOp) st.idle_pending_ps += dt;
  st.last_change_ps = now;
}

void Executor::end_idle(int gpu, Stream starting) {
  GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
  if (st.idle_pending_ps == 0) return;
  GpuBreakdown& b = acc_[static_cast<std::size_t>(gpu)];
  const SimTime t = SimTime::from_ps(st.idle_pending_ps);
  switch (starting) {
    case Stream::kEpComm:
      b.wait_ep += t;
      break;
    case Stream::kDpComm:
    case Stream::kDpGather:
      b.wait_dp += t;
      break;
    case Stream::kPpComm:
      b.wait_pp += t;
      break;
    case Stream::kCompute:
      (st.host_gated ? b.wait_host : b.wait_other) += t;
      break;
  }
  st.idle_pending_ps = 0;
}

void Executor::start(OpId id) {
  start_time_[id] = sim_.now();
  const StepGraph::Op& op = g_.ops_[id];
  if (op.stream == Stream::kCompute) {
    if (!g_.host_offset_.empty()) {
      const int gpu = g_.gpus_[op.gpu_begin];
      const std::int64_t issue = host_release_ps_[static_cast<std::size_t>(gpu)] + g_.host_offset_[id];
      if (issue > sim_.now().ps()) {
        // Idle so far waited for this op's inputs; from now on it waits for the host.
        advance(gpu);
        end_idle(gpu, Stream::kCompute);
        gpu_[static_cast<std::size_t>(gpu)].host_gated = true;
        sim_.schedule_at(SimTime::from_ps(issue), [this, id] {
          start_time_[id] = sim_.now();
          start_compute(id);
        });
        return;
      }
    }
    start_compute(id);
    return;
  }
  for (int gi : g_.gpus(op)) {
    advance(gi);
    end_idle(gi, op.stream);
    ++gpu_[static_cast<std::size_t>(gi)].comm_active;
    if (op.sm_count > 0) set_comm_sms(gi, op.sm_count);
  }
  backend_.start(op.collective, [this, id] { complete(id); });
}

void Executor::start_compute(OpId id) {
  const StepGraph::Op& op = g_.ops_[id];
  const int gpu = g_.gpus_[op.gpu_begin];
  GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
  if (st.running != kNoOp)
    throw sim::SimulationError(
        fmt::format("GPU {}: compute op '{}' started while '{}' runs", gpu, g_.name(id), g_.name(st.running)));
  advance(gpu);
  end_idle(gpu, Stream::kCompute);
  st.host_gated = false;
  st.running = id;
  st.remaining_full_ps = op.duration.ps();
  st.segment_start = sim_.now();
  reschedule_compute(gpu);
}

void Executor::reschedule_compute(int gpu) {
  GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
  if (st.running == kNoOp) return;
  sim_.cancel(st.completion);
  const std::int64_t sms = opts_.sms_per_gpu;
  const std::int64_t avail = std::max<std::int64_t>(1, sms - st.comm_sms);
  // time = ceil(remaining * sms / avail): never early, exact integers.
  const auto num = static_cast<sim::uint128>(st.remaining_full_ps) * static_cast<sim::uint128>(sms);
  const auto t =
      static_cast<std::int64_t>((num + static_cast<sim::uint128>(avail) - 1) / static_cast<sim::uint128>(avail));
  const OpId id = st.running;
  st.completion = sim_.schedule_in(
      SimTime::from_ps(t), [this, id] { complete(id); }, sim::Phase::kComplete);
}

void Executor::set_comm_sms(int gpu, int delta) {
  GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
  if (st.running != kNoOp) {
    // Bank the progress made at the old rate, then re-rate.
    const std::int64_t sms = opts_.sms_per_gpu;
    const std::int64_t avail = std::max<std::int64_t>(1, sms - st.comm_sms);
    const std::int64_t elapsed = (sim_.now() - st.segment_start).ps();
    const auto done = static_cast<std::int64_t>(static_cast<sim::uint128>(elapsed) * static_cast<sim::uint128>(avail) /
                                                static_cast<sim::uint128>(sms));
    st.remaining_full_ps = std::max<std::int64_t>(0, st.remaining_full_ps - done);
    st.segment_start = sim_.now();
  }
  st.comm_sms += delta;
  if (st.running != kNoOp) reschedule_compute(gpu);
}

void Executor::record(OpId id, SimTime start, SimTime end) {
  const StepGraph::Op& op = g_.ops_[id];
  const SimTime d = end - start;
  for (int gi : g_.gpus(op)) {
    GpuBreakdown& b = acc_[static_cast<std::size_t>(gi)];
    switch (op.category) {
      case Category::kCompute:
        b.compute += d;
        break;
      case Category::kDispatch:
        b.dispatch += d;
        break;
      case Category::kCombine:
        b.combine += d;
        break;
      case Category::kOtherComm:
        b.other_comm += d;
        break;
      case Category::kDataParallel:
        b.data_parallel += d;
        break;
      case Category::kPipeline:
        b.pipeline += d;
        break;
    }
    b.busy_end = sim::max(b.busy_end, end);
  }
  if (!opts_.trace) return;
  std::vector<sim::TraceArg> args;
  if (op.layer >= 0) args.emplace_back("layer", op.layer);
  if (op.micro_batch >= 0) args.emplace_back("micro_batch", op.micro_batch);
  if (op.flops > 0) args.emplace_back("flops", op.flops);
  if (op.bytes > 0) args.emplace_back("bytes", op.bytes);
  const int track = static_cast<int>(op.stream);
  const std::string& name = g_.names_[op.name];
  {
    const auto gs = g_.gpus(op);
    for (std::size_t k = 0; k < gs.size(); ++k)
      opts_.trace->slice(gs[k], k < op.ordered ? track : kNumStreams + op.recv_lane, 0, name, to_string(op.category),
                         start, end, args);
  }
  // Arrows from flow predecessors (e.g. dispatch -> expert GEMM): drawn on a GPU both share,
  // starting inside the predecessor's slice and ending inside this one.
  const int here = g_.gpus_[op.gpu_begin];
  for (std::uint32_t k = flow_begin_[id]; k < flow_begin_[id + 1]; ++k) {
    const OpId p = flow_pred_[k];
    const StepGraph::Op& pop = g_.ops_[p];
    const auto pg = g_.gpus(pop);
    const int there = std::find(pg.begin(), pg.end(), here) != pg.end() ? here : pg[0];
    const std::uint64_t fid = ++flow_ids_;
    opts_.trace->flow_begin(there, static_cast<int>(pop.stream), 0, fid, "flow", start_time_[p]);
    opts_.trace->flow_end(here, track, 0, fid, "flow", start);
  }
}

void Executor::complete(OpId id) {
  const StepGraph::Op& op = g_.ops_[id];
  if (done_[id]) throw sim::SimulationError(fmt::format("op '{}' completed twice", g_.name(id)));
  done_[id] = 1;
  ++completed_;
  if (op.stream == Stream::kCompute) {
    const int gpu = g_.gpus_[op.gpu_begin];
    advance(gpu);
    GpuState& st = gpu_[static_cast<std::size_t>(gpu)];
    st.running = kNoOp;
    st.completion = sim::EventId{};
    if (op.host_sync) host_release_ps_[static_cast<std::size_t>(gpu)] = sim_.now().ps();
  } else {
    for (int gi : g_.gpus(op)) {
      advance(gi);
      --gpu_[static_cast<std::size_t>(gi)].comm_active;
      if (op.sm_count > 0) set_comm_sms(gi, -op.sm_count);
    }
  }
  record(id, start_time_[id], sim_.now());
  for (std::uint32_t k = g_.succ_begin_[id]; k < g_.succ_begin_[id + 1]; ++k) {
    const OpId s = g_.succ_[k];
    if (--pending_deps_[s] == 0) start(s);
  }
}

}  // namespace moesim::engine
