#include "engine/executor.hpp"

#include <fmt/format.h>

#include <algorithm>

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
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// StepGraph
// ---------------------------------------------------------------------------------------------

void StepGraph::add_edge(OpId before, OpId after) {
  if (before == kNoOp) return;
  if (before >= ops_.size() || after >= ops_.size() || before == after)
    throw std::invalid_argument(fmt::format("StepGraph: bad dependency {} -> {}", before, after));
  ops_[before].succ.push_back(after);
  ++ops_[after].deps;
}

OpId StepGraph::compute(int gpu, OpInfo info, SimTime duration, const std::vector<OpId>& deps) {
  if (gpu < 0 || gpu >= num_gpus_) throw std::invalid_argument(fmt::format("StepGraph: GPU {} out of range", gpu));
  if (duration < SimTime::zero()) throw std::invalid_argument("StepGraph: negative compute duration");
  const auto id = static_cast<OpId>(ops_.size());
  Op op;
  op.info = std::move(info);
  op.duration = duration;
  op.gpus = {gpu};
  ops_.push_back(std::move(op));
  add_edge(last_compute_[static_cast<std::size_t>(gpu)], id);  // stream order
  for (OpId d : deps) add_edge(d, id);
  last_compute_[static_cast<std::size_t>(gpu)] = id;
  return id;
}

OpId StepGraph::collective(const std::vector<int>& gpus, OpInfo info, std::uint32_t collective_index, EngineKind engine,
                           const std::vector<OpId>& deps, int sm_count) {
  if (gpus.empty()) throw std::invalid_argument("StepGraph: collective without participants");
  const auto id = static_cast<OpId>(ops_.size());
  Op op;
  op.info = std::move(info);
  op.gpus = gpus;
  op.collective = collective_index;
  op.engine = engine == EngineKind::kCompute ? EngineKind::kNvlink : engine;
  op.sm_count = sm_count;
  ops_.push_back(std::move(op));
  for (int g : gpus) {
    if (g < 0 || g >= num_gpus_) throw std::invalid_argument(fmt::format("StepGraph: GPU {} out of range", g));
    add_edge(last_comm_[static_cast<std::size_t>(g)], id);
    last_comm_[static_cast<std::size_t>(g)] = id;
  }
  for (OpId d : deps) add_edge(d, id);
  return id;
}

void StepGraph::depend(OpId after, OpId before) { add_edge(before, after); }

void StepGraph::flow(OpId after, OpId before) {
  add_edge(before, after);
  if (before != kNoOp) ops_[after].flow_pred.push_back(before);
}

// ---------------------------------------------------------------------------------------------
// Executor
// ---------------------------------------------------------------------------------------------

Executor::Executor(sim::Simulation& sim, StepGraph& graph, CommBackend& backend, ExecutorOptions opts)
    : sim_(sim), g_(graph), backend_(backend), opts_(std::move(opts)) {
  if (opts_.sms_per_gpu <= 0) throw std::invalid_argument("Executor: sms_per_gpu must be > 0");
}

namespace {
constexpr int kTrackCompute = 0;
int track_of(EngineKind e) { return static_cast<int>(e); }
}  // namespace

ExecutionResult Executor::run() {
  const std::size_t n = g_.ops_.size();
  pending_deps_.assign(n, 0);
  start_time_.assign(n, SimTime::zero());
  done_.assign(n, 0);
  gpu_.assign(static_cast<std::size_t>(g_.num_gpus_), GpuState{});
  intervals_.assign(static_cast<std::size_t>(g_.num_gpus_), {});
  completed_ = 0;
  for (std::size_t i = 0; i < n; ++i) pending_deps_[i] = g_.ops_[i].deps;

  if (opts_.trace) {
    for (int gi = 0; gi < g_.num_gpus_; ++gi) {
      const auto gs = static_cast<std::size_t>(gi);
      opts_.trace->process(gi, gs < opts_.gpu_names.size() ? opts_.gpu_names[gs] : fmt::format("GPU {}", gi));
      opts_.trace->track(gi, kTrackCompute, "compute");
      opts_.trace->track(gi, track_of(EngineKind::kNvlink), "NVLink comm");
      opts_.trace->track(gi, track_of(EngineKind::kNic), "NIC comm");
    }
  }

  const std::uint64_t events_before = sim_.executed();
  for (std::size_t i = 0; i < n; ++i)
    if (pending_deps_[i] == 0) make_ready(static_cast<OpId>(i));
  sim_.run();

  if (completed_ != n) {
    std::size_t first = 0;
    while (first < n && done_[first]) ++first;
    throw sim::SimulationError(
        fmt::format("step graph: {} of {} ops never ran (first: '{}'); a dependency cycle or a lost collective",
                    n - completed_, n, first < n ? g_.ops_[first].info.name : std::string("?")));
  }
  sim_.check_drained();

  ExecutionResult r;
  r.ops_executed = completed_;
  r.events = sim_.executed() - events_before;
  r.per_gpu.resize(static_cast<std::size_t>(g_.num_gpus_));
  for (int gi = 0; gi < g_.num_gpus_; ++gi) {
    auto& iv = intervals_[static_cast<std::size_t>(gi)];
    GpuBreakdown& b = r.per_gpu[static_cast<std::size_t>(gi)];
    std::vector<std::pair<std::int64_t, std::int64_t>> comp;
    std::vector<std::pair<std::int64_t, std::int64_t>> comm;
    for (const auto& x : iv) {
      const SimTime d = SimTime::from_ps(x.end - x.start);
      switch (x.cat) {
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
      }
      (x.cat == Category::kCompute ? comp : comm).emplace_back(x.start, x.end);
      b.busy_end = sim::max(b.busy_end, SimTime::from_ps(x.end));
    }
    const auto merge = [](std::vector<std::pair<std::int64_t, std::int64_t>>& v) {
      std::sort(v.begin(), v.end());
      std::vector<std::pair<std::int64_t, std::int64_t>> out;
      for (const auto& p : v) {
        if (!out.empty() && p.first <= out.back().second)
          out.back().second = std::max(out.back().second, p.second);
        else
          out.push_back(p);
      }
      v.swap(out);
    };
    merge(comp);
    merge(comm);
    std::int64_t comm_total = 0;
    std::int64_t comp_total = 0;
    for (const auto& p : comm) comm_total += p.second - p.first;
    for (const auto& p : comp) comp_total += p.second - p.first;
    std::int64_t overlap = 0;
    for (std::size_t i = 0, j = 0; i < comp.size() && j < comm.size();) {
      const std::int64_t lo = std::max(comp[i].first, comm[j].first);
      const std::int64_t hi = std::min(comp[i].second, comm[j].second);
      if (hi > lo) overlap += hi - lo;
      (comp[i].second < comm[j].second) ? ++i : ++j;
    }
    b.exposed_comm = SimTime::from_ps(comm_total - overlap);
    r.step_time = sim::max(r.step_time, b.busy_end);
  }
  for (int gi = 0; gi < g_.num_gpus_; ++gi) {
    GpuBreakdown& b = r.per_gpu[static_cast<std::size_t>(gi)];
    // idle = step - |compute U comm| = step - (compute_union + exposed_comm); compute ops on one
    // stream never overlap, so the compute union is the compute sum.
    b.idle = r.step_time - b.compute - b.exposed_comm;
  }
  for (int gi = g_.num_gpus_ - 1; gi >= 0; --gi)
    if (r.per_gpu[static_cast<std::size_t>(gi)].busy_end == r.step_time) r.critical_gpu = gi;
  return r;
}

void Executor::make_ready(OpId id) { start(id); }

void Executor::start(OpId id) {
  start_time_[id] = sim_.now();
  const StepGraph::Op& op = g_.ops_[id];
  if (op.engine == EngineKind::kCompute) {
    start_compute(id);
    return;
  }
  if (op.sm_count > 0)
    for (int gi : op.gpus) set_comm_sms(gi, op.sm_count);
  backend_.start(op.collective, [this, id] { complete(id); });
}

void Executor::start_compute(OpId id) {
  const StepGraph::Op& op = g_.ops_[id];
  GpuState& st = gpu_[static_cast<std::size_t>(op.gpus[0])];
  if (st.running != kNoOp)
    throw sim::SimulationError(fmt::format("GPU {}: compute op '{}' started while '{}' runs", op.gpus[0], op.info.name,
                                           g_.ops_[st.running].info.name));
  st.running = id;
  st.remaining_full_ps = op.duration.ps();
  st.segment_start = sim_.now();
  reschedule_compute(op.gpus[0]);
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
  for (int gi : op.gpus) intervals_[static_cast<std::size_t>(gi)].push_back({start.ps(), end.ps(), op.info.category});
  if (!opts_.trace) return;
  std::vector<sim::TraceArg> args;
  if (op.info.layer >= 0) args.emplace_back("layer", op.info.layer);
  if (op.info.micro_batch >= 0) args.emplace_back("micro_batch", op.info.micro_batch);
  if (op.info.flops > 0) args.emplace_back("flops", op.info.flops);
  if (op.info.bytes > 0) args.emplace_back("bytes", op.info.bytes);
  const int track = track_of(op.engine);
  for (int gi : op.gpus) opts_.trace->slice(gi, track, 0, op.info.name, to_string(op.info.category), start, end, args);
  // Arrows from flow predecessors (e.g. dispatch -> expert GEMM): drawn on a GPU both share,
  // starting inside the predecessor's slice and ending inside this one.
  for (OpId p : op.flow_pred) {
    const StepGraph::Op& pop = g_.ops_[p];
    const int here = op.gpus[0];
    const int there = std::find(pop.gpus.begin(), pop.gpus.end(), here) != pop.gpus.end() ? here : pop.gpus[0];
    const std::uint64_t fid = ++flow_ids_;
    opts_.trace->flow_begin(there, track_of(pop.engine), 0, fid, "flow", start_time_[p]);
    opts_.trace->flow_end(here, track, 0, fid, "flow", start);
  }
}

void Executor::complete(OpId id) {
  const StepGraph::Op& op = g_.ops_[id];
  if (done_[id]) throw sim::SimulationError(fmt::format("op '{}' completed twice", op.info.name));
  done_[id] = 1;
  ++completed_;
  if (op.engine == EngineKind::kCompute) {
    GpuState& st = gpu_[static_cast<std::size_t>(op.gpus[0])];
    st.running = kNoOp;
    st.completion = sim::EventId{};
  } else if (op.sm_count > 0) {
    for (int gi : op.gpus) set_comm_sms(gi, -op.sm_count);
  }
  record(id, start_time_[id], sim_.now());
  for (OpId s : op.succ)
    if (--pending_deps_[s] == 0) make_ready(s);
}

}  // namespace moesim::engine
