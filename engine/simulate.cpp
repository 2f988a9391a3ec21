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

SimTime CostModelCosts::dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const {
  if (m <= 0 || n <= 0 || k <= 0) return SimTime::zero();
  cost::DenseGemmShape s;
  s.m = m;
  s.n = n;
  s.k = k;
  return m_.dense_gemm(s);
}

SimTime CostModelCosts::grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const {
  std::int64_t total = 0;
  for (auto r : rows) total += r;
  if (total <= 0) return SimTime::zero();
  cost::GroupedGemmShape s;
  s.rows_per_expert = rows;
  s.k = k;
  s.n = n;
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
    const SimTime one = m_.dense_gemm(s);
    if (first) {
      cost::DenseGemmShape tiny;
      tiny.m = tiny.n = tiny.k = 1;
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
  return dense_gemm(tokens, experts, hidden) + m_.routing(op);
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
                                   hw::CollectiveAlgo all_reduce_algo) {
  switch (r.kind) {
    case CollectiveKind::kAllToAllV: {
      const int g = r.group_size();
      hw::ByteMatrix m(g);
      for (int i = 0; i < g; ++i)
        for (int j = 0; j < g; ++j) m.at(i, j) = i == j ? 0.0 : r.at(i, j);  // the diagonal is a local copy
      return hw::plan_all_to_allv(topo, r.gpus, m, a2a_algo);
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

namespace {

class NetworkBackend : public CommBackend {
 public:
  NetworkBackend(sim::Simulation& s, const hw::Topology& topo, hw::FlowNetwork& net,
                 const std::vector<CollectiveRequest>& reqs, hw::CollectiveOptions opts, bool analytical)
      : sim_(s), topo_(topo), engine_(s, topo, net, opts), reqs_(reqs), opts_(opts), analytical_(analytical) {}

  void start(std::uint32_t idx, sim::Callback done) override {
    const CollectiveRequest& r = reqs_.at(idx);
    hw::CollectivePlan plan = plan_collective(topo_, r);
    for (const auto& phase : plan.phases) flows_ += phase.bytes.size();
    const double bytes = r.total_bytes();
    sent_ += bytes;
    auto shared = std::make_shared<sim::Callback>(std::move(done));
    if (analytical_) {
      const hw::CollectiveResult res = hw::analytical_collective(topo_, plan, opts_);
      sim_.schedule_in(
          res.time,
          [this, shared, bytes] {
            received_ += bytes;
            (*shared)();
          },
          sim::Phase::kComplete);
      return;
    }
    engine_.start(std::move(plan), [this, shared, bytes](const hw::CollectiveResult&) {
      received_ += bytes;
      (*shared)();
    });
  }

  std::uint64_t flows() const { return flows_; }
  double sent() const { return sent_; }
  double received() const { return received_; }

 private:
  sim::Simulation& sim_;
  const hw::Topology& topo_;
  hw::CollectiveEngine engine_;
  const std::vector<CollectiveRequest>& reqs_;
  hw::CollectiveOptions opts_;
  bool analytical_;
  std::uint64_t flows_ = 0;
  double sent_ = 0;
  double received_ = 0;
};

}  // namespace

StepReport simulate_step(const Scenario& s, const SimulateOptions& opts) {
  if (!s.has_cluster) throw std::invalid_argument("simulate_step: the scenario has no cluster");
  if (!s.has_model) throw std::invalid_argument("simulate_step: the scenario has no model");
  const cost::GpuParams gp = gpu_params(s.cluster.gpu);
  std::optional<CostModelCosts> costs;
  if (!opts.profile_file.empty())
    costs.emplace(cost::CostModel(gp, cost::read_profile_file(opts.profile_file)));
  else
    costs.emplace(cost::CostModel(gp));

  StepBuildOptions bopt = opts.build;
  bopt.memory_capacity_bytes = s.cluster.gpu.hbm_bytes;
  StepReport rep{build_step(s, *costs, bopt), {}};

  const hw::Topology topo = hw::build_topology(s.cluster);
  sim::Simulation simulation(s.seed);
  hw::FlowNetwork net(simulation);
  topo.install(net);
  hw::CollectiveOptions copts;
  copts.launch_overhead = s.cluster.gpu.kernel_launch_overhead;
  NetworkBackend backend(simulation, topo, net, rep.built.collectives, copts,
                         s.network.model == NetworkModel::kAnalytical);

  std::optional<sim::TraceWriter> trace;
  if (!opts.trace_file.empty()) trace.emplace(opts.trace_file);
  ExecutorOptions eo;
  eo.sms_per_gpu = s.cluster.gpu.sm_count;
  eo.trace = trace ? &*trace : nullptr;
  for (int g = 0; g < s.cluster.total_gpus(); ++g)
    eo.gpu_names.push_back(fmt::format("GPU {} (node {})", g, g / s.cluster.gpus_per_node));
  Executor ex(simulation, rep.built.graph, backend, eo);
  rep.exec = ex.run();
  if (trace) trace->close();

  // Conservation: every byte injected by a collective was delivered.
  rep.flows = backend.flows();
  rep.bytes_sent = backend.sent();
  rep.bytes_received = backend.received();
  if (std::fabs(rep.bytes_sent - rep.bytes_received) > 1e-6 * std::max(1.0, rep.bytes_sent))
    throw sim::SimulationError(
        fmt::format("conservation: {} collective bytes sent but {} delivered", rep.bytes_sent, rep.bytes_received));
  // Conservation: tokens routed = kept + dropped.
  if (rep.built.routed != rep.built.kept + rep.built.dropped)
    throw sim::SimulationError(fmt::format("conservation: {} assignments routed but {} kept + {} dropped",
                                           rep.built.routed, rep.built.kept, rep.built.dropped));

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
    rep.exposed_comm_us += b.exposed_comm.to_us() / gpus;
    rep.idle_us += b.idle.to_us() / gpus;
  }
  return rep;
}

}  // namespace moesim::engine
