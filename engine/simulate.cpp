#include "engine/simulate.hpp"

#include <fmt/format.h>

#include <cmath>

#include "engine/gpu_params.hpp"
#include "hardware/collectives.hpp"
#include "hardware/flow_network.hpp"
#include "hardware/topology.hpp"
#include "models/cost/profile.hpp"

namespace moesim::engine {

namespace cost = models::cost;
using sim::SimTime;

// ---------------------------------------------------------------------------------------------
// Cost-model adapter
// ---------------------------------------------------------------------------------------------

SimTime CostModelCosts::gemm_in(std::int64_t m, std::int64_t n, std::int64_t k, cost::DType d) const {
  if (m <= 0 || n <= 0 || k <= 0) return SimTime::zero();
  cost::DenseGemmShape s;
  s.m = m;
  s.n = n;
  s.k = k;
  s.dtype = d;
  return m_.dense_gemm(s);
}

SimTime CostModelCosts::dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const {
  return gemm_in(m, n, k, linear_);
}

SimTime CostModelCosts::head_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const {
  return gemm_in(m, n, k, cost::DType::kBf16);
}

SimTime CostModelCosts::grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const {
  std::int64_t total = 0;
  for (auto r : rows) total += r;
  if (total <= 0) return SimTime::zero();
  cost::GroupedGemmShape s;
  s.rows_per_expert = rows;
  s.k = k;
  s.n = n;
  s.dtype = linear_;
  return m_.grouped_gemm(s);
}

SimTime CostModelCosts::grouped_gemm_wgrad(const std::vector<std::int64_t>& rows, std::int64_t k,
                                           std::int64_t n) const {
  SimTime t = SimTime::zero();
  bool first = true;
  SimTime launch = SimTime::zero();
  for (auto r : rows) {
    if (r <= 0) continue;
    cost::DenseGemmShape s;
    s.m = k;
    s.n = n;
    s.k = r;
    s.dtype = linear_;
    const SimTime one = m_.dense_gemm(s);
    if (first) {
      cost::DenseGemmShape tiny;
      tiny.m = tiny.n = tiny.k = 1;
      tiny.dtype = linear_;
      launch = m_.dense_gemm(tiny);  // ~ the fixed per-kernel cost
      first = false;
      t += one;
    } else {
      t += one > launch ? one - launch : SimTime::zero();
    }
  }
  return t;
}

SimTime CostModelCosts::attention(const AttentionShape& a) const {
  cost::AttentionShape s;
  s.phase = a.q_len == 1 && !a.causal ? cost::AttentionShape::Phase::kDecode : cost::AttentionShape::Phase::kPrefill;
  s.batch = a.batch;
  s.q_len = a.q_len;
  s.kv_len = a.kv_len;
  s.heads = a.heads;
  s.head_dim = a.qk_dim;
  s.causal = a.causal;
  s.context_shards = a.context_shards;
  // K/V heads from the cache footprint (GQA: 2 x kv_heads x head_dim x bytes per token); for
  // MLA's latent cache this gives the equivalent number of full heads.
  const double per_head = 2.0 * static_cast<double>(a.qk_dim) * static_cast<double>(a.bytes_per_elem);
  s.kv_heads = per_head > 0 ? std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(
                                                            static_cast<double>(a.kv_bytes_per_token) / per_head)))
                            : a.heads;
  s.kv_heads = std::min(s.kv_heads, s.heads);
  return m_.attention(s);
}

SimTime CostModelCosts::router_topk(std::int64_t tokens, std::int64_t hidden, int experts, int top_k) const {
  if (tokens <= 0) return SimTime::zero();
  cost::RoutingOp op;
  op.kind = cost::RoutingKind::kGateTopk;
  op.tokens = tokens;
  op.experts = experts;
  op.topk = top_k;
  op.hidden = hidden;
  return gemm_in(tokens, experts, hidden, cost::DType::kBf16) + m_.routing(op);  // gate GEMM in bf16
}

SimTime CostModelCosts::permute(std::int64_t rows, std::int64_t row_bytes) const {
  if (rows <= 0) return SimTime::zero();
  cost::RoutingOp op;
  op.kind = cost::RoutingKind::kPermute;
  op.tokens = rows;
  op.hidden = std::max<std::int64_t>(1, row_bytes / 2);
  return m_.routing(op);
}

SimTime CostModelCosts::unpermute(std::int64_t rows, std::int64_t row_bytes) const {
  if (rows <= 0) return SimTime::zero();
  cost::RoutingOp op;
  op.kind = cost::RoutingKind::kUnpermuteCombine;
  op.tokens = rows;
  op.hidden = std::max<std::int64_t>(1, row_bytes / 2);
  return m_.routing(op);
}

SimTime CostModelCosts::elementwise(double bytes) const {
  if (bytes <= 0) return SimTime::zero();
  cost::ElementwiseOp op;
  op.bytes = bytes;
  return m_.elementwise(op);
}

// ---------------------------------------------------------------------------------------------
// Flow-network communication backend
// ---------------------------------------------------------------------------------------------

hw::CollectivePlan plan_collective(const hw::Topology& topo, const CollectiveRequest& r, hw::CollectiveAlgo a2a_algo,
                                   hw::CollectiveAlgo all_reduce_algo, int a2a_chunks) {
  switch (r.kind) {
    case CollectiveKind::kAllToAllV: {
      const int g = r.group_size();
      hw::ByteMatrix m(g);
      for (int i = 0; i < g; ++i)
        // The diagonal is a rank's own chunk: a local copy that no flow carries (the planner
        // skips src == dst), but part of nccl-tests' all-to-all `size` (hardware/collectives.hpp).
        for (int j = 0; j < g; ++j) m.at(i, j) = r.at(i, j) * r.wire_inflation;
      return hw::plan_all_to_allv(topo, r.gpus, m, a2a_algo,
                                  a2a_algo == hw::CollectiveAlgo::kHierarchical ? a2a_chunks : 1);
    }
    case CollectiveKind::kAllReduce:
      return hw::plan_all_reduce(topo, r.gpus, r.bytes, all_reduce_algo);
    case CollectiveKind::kReduceScatter:
      return hw::plan_reduce_scatter(topo, r.gpus, r.bytes);
    case CollectiveKind::kAllGather:
      return hw::plan_all_gather(topo, r.gpus, r.bytes);
    case CollectiveKind::kSendRecv:
      return hw::plan_send_recv(topo, r.gpus.front(), r.gpus.back(), r.bytes);
  }
  throw std::logic_error("unknown collective kind");
}

NetworkCommBackend::NetworkCommBackend(sim::Simulation& s, const hw::Topology& topo, hw::FlowNetwork* net,
                                       const std::vector<CollectiveRequest>& reqs, hw::CollectiveOptions opts,
                                       hw::CollectiveAlgo a2a_algo, hw::CollectiveAlgo all_reduce_algo, int a2a_chunks)
    : sim_(s),
      topo_(topo),
      net_(net),
      reqs_(reqs),
      opts_(opts),
      a2a_algo_(a2a_algo),
      all_reduce_algo_(all_reduce_algo),
      a2a_chunks_(a2a_chunks),
      sent_(reqs.size(), 0.0),
      received_(reqs.size(), 0.0) {}

void NetworkCommBackend::start(std::uint32_t idx, sim::Callback done) {
  const CollectiveRequest& r = reqs_.at(idx);
  hw::CollectivePlan plan = plan_collective(topo_, r, a2a_algo_, all_reduce_algo_, a2a_chunks_);
  plan.check();
  for (std::size_t i = 0; i < plan.phases.size(); ++i) flows_ += plan.phases[i].bytes.size() * plan.repeat[i];
  if (!net_) {
    for (std::size_t i = 0; i < plan.phases.size(); ++i)
      for (std::uint32_t k = 0; k < plan.repeat[i]; ++k)
        for (double b : plan.phases[i].bytes) sent_[idx] += b;
    const hw::CollectiveResult res = hw::analytical_collective(topo_, plan, opts_, /*per_link=*/false);
    sim_.schedule_in(
        std::max(res.time, r.min_time),
        [this, idx, done = std::move(done)]() mutable {
          received_[idx] = sent_[idx];  // the analytical model delivers every byte it was given
          done();
        },
        sim::Phase::kComplete);
    return;
  }
  // Phases back to back on the shared flow network, with the launch overhead before the first
  // and the step overhead between phases (the same rules as hw::CollectiveEngine, without its
  // per-collective result record, which costs a link-count array per collective).
  std::uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(runs_.size());
    runs_.emplace_back();
  }
  Run& run = runs_[slot];
  run.phases = std::move(plan.phases);
  run.repeat = std::move(plan.repeat);
  run.next = 0;
  run.repeats_done = 0;
  run.collective = idx;
  run.done = std::move(done);
  run.not_before = sim_.now() + r.min_time;
  sim_.schedule_in(opts_.launch_overhead, [this, slot] { next_phase(slot); });
}

void NetworkCommBackend::next_phase(std::uint32_t slot) {
  Run& run = runs_[slot];
  if (run.next == run.phases.size()) {
    sim::Callback done = std::move(run.done);
    const sim::SimTime not_before = run.not_before;
    std::vector<hw::FlowBatch>().swap(run.phases);
    run.repeat.clear();
    free_.push_back(slot);
    if (sim_.now() < not_before)
      sim_.schedule_in(not_before - sim_.now(), std::move(done), sim::Phase::kComplete);
    else
      done();
    return;
  }
  hw::FlowBatch batch = hw::next_phase_run(run.phases, run.repeat, run.next, run.repeats_done);
  const bool last = run.next == run.phases.size();
  const std::uint32_t idx = run.collective;
  for (double b : batch.bytes) sent_[idx] += b;
  std::vector<double> bytes = batch.bytes;  // to count what the network delivers
  auto id = std::make_shared<hw::BatchId>();
  *id = net_->start(std::move(batch), [this, slot, last, idx, id, bytes = std::move(bytes)] {
    const sim::SimTime now = sim_.now();
    for (std::size_t i = 0; i < bytes.size(); ++i)
      if (net_->flow_done_time(*id, i) <= now) received_[idx] += bytes[i];
    if (last || opts_.step_overhead == sim::SimTime{})
      next_phase(slot);
    else
      sim_.schedule_in(opts_.step_overhead, [this, slot] { next_phase(slot); });
  });
}

// Totals count bytes moved: a collective's wire_inflation (an implementation slower than the
// links) is timing, not traffic.
double NetworkCommBackend::total_sent() const {
  double t = 0;
  for (std::size_t i = 0; i < sent_.size(); ++i) t += sent_[i] / reqs_[i].wire_inflation;
  return t;
}

double NetworkCommBackend::total_received() const {
  double t = 0;
  for (std::size_t i = 0; i < received_.size(); ++i) t += received_[i] / reqs_[i].wire_inflation;
  return t;
}

void check_conservation(const BuiltStep& b, const std::vector<double>& bytes_sent,
                        const std::vector<double>& bytes_received) {
  std::vector<std::string> bad;
  const auto note = [&](std::string msg) {
    if (bad.size() < 5) bad.push_back(std::move(msg));
  };
  std::size_t violations = 0;
  // Tokens: every routed assignment is kept or dropped, and the expert GEMMs compute exactly the
  // rows the routing kept (plus capacity padding), forward and (training) backward.
  std::int64_t routed = 0, kept = 0, dropped = 0;
  for (const auto& l : b.moe_layers) {
    const auto& st = l.stats;
    routed += st.routed;
    kept += st.kept;
    dropped += st.dropped;
    if (st.routed != st.kept + st.dropped) {
      ++violations;
      note(fmt::format("layer {}: {} assignments routed but {} kept + {} dropped", l.layer, st.routed, st.kept,
                       st.dropped));
    }
    if (l.rows_fed_fwd != l.rows_expected) {
      ++violations;
      note(fmt::format("layer {}: routing kept {} expert rows but the forward expert GEMMs computed {}", l.layer,
                       l.rows_expected, l.rows_fed_fwd));
    }
    if (l.rows_fed_bwd != (b.training ? l.rows_expected : 0)) {
      ++violations;
      note(fmt::format("layer {}: routing kept {} expert rows but the backward expert GEMMs computed {}", l.layer,
                       l.rows_expected, l.rows_fed_bwd));
    }
  }
  if (routed != b.routed || kept != b.kept || dropped != b.dropped || b.routed != b.kept + b.dropped) {
    ++violations;
    note(fmt::format("step totals: {} routed, {} kept, {} dropped; the layers sum to {}, {}, {}", b.routed, b.kept,
                     b.dropped, routed, kept, dropped));
  }
  // Bytes: what each collective injected into the network was delivered.
  if (bytes_sent.size() != b.collectives.size() || bytes_received.size() != b.collectives.size()) {
    ++violations;
    note(fmt::format("{} collectives but {} sent / {} received byte counts", b.collectives.size(), bytes_sent.size(),
                     bytes_received.size()));
  } else {
    for (std::size_t i = 0; i < bytes_sent.size(); ++i) {
      const double s = bytes_sent[i], r = bytes_received[i];
      if (!(std::fabs(s - r) <= 1e-9 * std::max(1.0, s))) {
        ++violations;
        const auto& c = b.collectives[i];
        note(fmt::format("collective {} ({}, layer {}, micro-batch {}): {} bytes sent but {} delivered", i,
                         to_string(c.kind), c.layer, c.micro_batch, s, r));
      }
    }
  }
  if (violations == 0) return;
  std::string msg = fmt::format("conservation check failed ({} violation(s)):", violations);
  for (const auto& m : bad) msg += "\n  " + m;
  throw sim::SimulationError(msg);
}

SimulateOptions simulate_options(const Scenario& s) {
  SimulateOptions o;
  o.profile_file = s.execution.profile;
  o.build.overlap_chunks = s.execution.overlap_chunks;
  o.build.a2a_sm_count = s.execution.comm_sms;
  o.build.sm_copy_bandwidth = s.execution.sm_copy_bandwidth.value_or(kDeepepSmCopyBandwidth);
  if (s.execution.dispatch_dtype == "fp8") o.build.dispatch_format = models::WireFormat::kFp8;
  o.build.dispatcher = s.execution.dispatcher == "deepep_normal" ? Dispatcher::kDeepepNormal
                       : s.execution.dispatcher == "deepep_ll"   ? Dispatcher::kDeepepLl
                                                                 : Dispatcher::kNcclA2a;
  o.build.host_op_cost = s.execution.host_op_cost.value_or(
      s.workload.mode == WorkloadMode::kTrain ? kDefaultTrainHostOpCost : sim::SimTime::zero());
  o.build.grad_bytes = s.workload.optimizer.main_grads_bytes;
  o.build.zero_stage = s.workload.optimizer.zero_stage;
  o.build.param_gather = s.workload.optimizer.param_gather;
  o.build.grad_sync = s.workload.optimizer.grad_sync;
  o.build.optimizer_state_bytes = s.workload.optimizer.state_bytes();
  // The Adam step's HBM traffic: the main grads and the optimizer state per local parameter
  // (16 bytes with the fp32 defaults, as before).
  o.build.optimizer_bytes_per_param = s.workload.optimizer.main_grads_bytes + s.workload.optimizer.state_bytes();
  if (s.has_cluster) o.build.gpus_per_node = s.cluster.gpus_per_node;
  if (s.has_cluster) o.build.memory_capacity_bytes = s.cluster.gpu.hbm_bytes;
  return o;
}

StepReport simulate_step(const Scenario& s, const SimulateOptions& opts) {
  if (!s.has_cluster) throw std::invalid_argument("simulate_step: the scenario has no cluster");
  if (!s.has_model) throw std::invalid_argument("simulate_step: the scenario has no model");
  const cost::GpuParams gp = gpu_params(s.cluster.gpu);
  std::optional<CostModelCosts> costs;
  const cost::DType linear = s.execution.weights_dtype == "fp8" ? cost::DType::kFp8 : cost::DType::kBf16;
  if (!opts.profile_file.empty())
    costs.emplace(cost::CostModel(gp, cost::read_profile_file(opts.profile_file)), linear);
  else
    costs.emplace(cost::CostModel(gp), linear);

  StepBuildOptions bopt = opts.build;
  bopt.memory_capacity_bytes = s.cluster.gpu.hbm_bytes;
  StepReport rep{build_step(s, *costs, bopt), {}};

  const double t_topo = thread_cpu_seconds();
  const hw::Topology topo = hw::build_topology(s.cluster);
  sim::Simulation simulation(s.seed);
  hw::FlowNetwork net(simulation);
  topo.install(net);
  hw::CollectiveOptions copts;
  copts.launch_overhead = s.cluster.gpu.kernel_launch_overhead;
  NetworkCommBackend backend(simulation, topo, s.network.model == NetworkModel::kAnalytical ? nullptr : &net,
                             rep.built.collectives, copts, hw::collective_algo(s.execution.all_to_all),
                             hw::collective_algo(s.execution.all_reduce), s.execution.all_to_all_chunks);

  std::optional<sim::TraceWriter> trace;
  if (!opts.trace_file.empty()) trace.emplace(opts.trace_file);
  ExecutorOptions eo;
  eo.sms_per_gpu = s.cluster.gpu.sm_count;
  eo.trace = trace ? &*trace : nullptr;
  for (int g = 0; g < s.cluster.total_gpus(); ++g)
    eo.gpu_names.push_back(fmt::format("GPU {} (node {})", g, g / s.cluster.gpus_per_node));
  Executor ex(simulation, rep.built.graph, backend, eo);
  const double t_play = thread_cpu_seconds();
  rep.host_topology_s = t_play - t_topo;
  rep.exec = ex.run();
  const double t_check = thread_cpu_seconds();
  rep.host_play_s = t_check - t_play;
  if (trace) trace->close();

  // Conservation: tokens (per layer) and bytes (per collective); ops run and the queue drained
  // were checked by the executor.
  rep.flows = backend.flows();
  rep.net_stats = net.stats();
  rep.bytes_sent = backend.total_sent();
  rep.bytes_received = backend.total_received();
  for (const auto& c : rep.built.collectives) rep.payload_bytes += c.total_bytes();
  check_conservation(rep.built, backend.sent(), backend.received());
  rep.host_check_s = thread_cpu_seconds() - t_check;

  const double step_s = rep.exec.step_time.to_s();
  const double gpus = static_cast<double>(s.cluster.total_gpus());
  rep.tokens_per_step = static_cast<double>(s.workload.tokens_per_step());
  rep.tokens_per_s = step_s > 0 ? rep.tokens_per_step / step_s : 0;
  rep.mfu = step_s > 0 ? rep.built.flops.model / (step_s * gpus * s.cluster.gpu.bf16_flops) : 0;
  for (const auto& b : rep.exec.per_gpu) {
    rep.compute_us += b.compute.to_us() / gpus;
    rep.dispatch_us += b.dispatch.to_us() / gpus;
    rep.combine_us += b.combine.to_us() / gpus;
    rep.other_comm_us += b.other_comm.to_us() / gpus;
    rep.data_parallel_us += b.data_parallel.to_us() / gpus;
    rep.pipeline_us += b.pipeline.to_us() / gpus;
    rep.exposed_comm_us += b.exposed_comm.to_us() / gpus;
    rep.idle_us += b.idle.to_us() / gpus;
    rep.wait_ep_us += b.wait_ep.to_us() / gpus;
    rep.wait_dp_us += b.wait_dp.to_us() / gpus;
    rep.wait_pp_us += b.wait_pp.to_us() / gpus;
    rep.wait_other_us += b.wait_other.to_us() / gpus;
    rep.wait_host_us += b.wait_host.to_us() / gpus;
    rep.idle_tail_us += b.idle_tail.to_us() / gpus;
  }
  return rep;
}

}  // namespace moesim::engine
