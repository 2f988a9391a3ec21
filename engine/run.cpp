#include "engine/run.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "engine/dispatch_run.hpp"
#include "engine/simulate.hpp"
#include "hardware/collectives.hpp"
#include "models/router.hpp"
#include "sim/units.hpp"

namespace moesim::engine {

namespace {

constexpr const char* kVersion = MOESIM_VERSION;

void append_header(const Scenario& s, std::string& out) {
  const auto& p = s.parallel;
  const auto& w = s.workload;
  fmt::format_to(std::back_inserter(out), "scenario   {} ({})\n", s.name, s.file);
  fmt::format_to(std::back_inserter(out), "seed       {}\n", s.seed);
  if (w.mode != WorkloadMode::kCollective) {
    fmt::format_to(std::back_inserter(out), "parallel   dp={} tp={} ep={} pp={}", p.dp, p.tp, p.ep, p.pp);
    if (p.cp > 1) fmt::format_to(std::back_inserter(out), " cp={}", p.cp);
    if (p.vpp > 1) fmt::format_to(std::back_inserter(out), " vpp={}", p.vpp);
    fmt::format_to(std::back_inserter(out), " micro_batches={} (world {})\n", p.micro_batches, p.world());
    if (!p.pipeline_layout.empty())
      fmt::format_to(std::back_inserter(out), "layout     {}\n", p.pipeline_layout);
    else if (p.account_for_embedding || p.account_for_loss)
      fmt::format_to(std::back_inserter(out), "layout     even split, {}{}{} counted as layers\n",
                     p.account_for_embedding ? "embedding" : "",
                     p.account_for_embedding && p.account_for_loss ? " and " : "", p.account_for_loss ? "loss" : "");
  }
  fmt::format_to(std::back_inserter(out), "workload   {}", to_string(w.mode));
  if (w.tokens_per_step() > 0) fmt::format_to(std::back_inserter(out), ", {} tokens/step", w.tokens_per_step());
  if (w.mode == WorkloadMode::kTrain && w.recompute) out += ", full recomputation";
  if (w.mode == WorkloadMode::kTrain && w.recompute_modules != 0)
    out += fmt::format(", recomputes {}", fmt::join(w.recomputed_module_names(), " "));
  if (w.collective)
    fmt::format_to(std::back_inserter(out), ", {} of {} ({})", to_string(w.collective->op),
                   sim::format_bytes(w.collective->bytes), w.collective->algorithm);
  fmt::format_to(std::back_inserter(out), "\nnetwork    {}\n", to_string(s.network.model));
}

/// Routing-only run: sample the step's routing and report per-layer drop and imbalance.
void run_routing(const Scenario& s, nlohmann::ordered_json& j, std::string& out) {
  namespace m = models;
  m::RouteRequest req;
  req.tokens_per_group = s.tokens_per_group();
  req.groups = static_cast<int>(s.routing_groups());
  req.seed = s.seed;
  req.ep_ranks = s.parallel.ep;
  req.keep_assignments = false;
  std::optional<m::RoutingTrace> trace;
  if (s.routing.distribution == m::Distribution::kTrace)
    trace = m::load_routing_trace(s.routing.trace_file, s.model, s.routing.top_k);
  const m::StepRouting step = m::route_step(s.model, s.routing, req, trace ? &*trace : nullptr);
  std::ostringstream os;
  m::format_routing_summary(os, s.model, s.routing, step);
  out += os.str();
  nlohmann::ordered_json r;
  r["sampling_mode"] = m::to_string(step.mode);
  r["groups"] = step.groups;
  r["tokens_per_group"] = step.tokens_per_group;
  r["drop_fraction"] = step.drop_fraction;
  r["padded_fraction"] = step.padded_fraction;
  r["max_over_mean_load"] = step.max_over_mean;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& l : step.layers) {
    const auto& st = l.stats;
    layers.push_back(
        {{"layer", l.layer},
         {"routed", st.routed},
         {"kept", st.kept},
         {"dropped", st.dropped},
         {"padded", st.padded},
         {"drop_fraction", st.drop_fraction},
         {"fully_dropped_fraction",
          st.fully_dropped_tokens < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(st.fully_dropped_fraction)},
         {"padded_fraction", st.padded_fraction},
         {"max_over_mean_load", st.max_over_mean},
         {"cv", st.cv},
         {"gini", st.gini},
         {"aux_loss", st.aux_loss},
         {"entropy_normalized", st.entropy_normalized},
         {"expert_routed", st.expert_routed}});
  }
  r["layers"] = std::move(layers);
  j["routing"] = std::move(r);
}

/// Single-collective run: the collective over every GPU of the cluster, alone on the network.
void run_collective(const Scenario& s, const hw::Topology& topo, nlohmann::ordered_json& j, std::string& out) {
  const auto& c = *s.workload.collective;
  CollectiveRequest req;
  req.gpus = hw::all_gpus(topo);
  req.bytes = c.bytes;
  switch (c.op) {
    case CollectiveOp::kAllToAll: {
      // Every GPU sends c.bytes to every other GPU.
      const std::size_t n = req.gpus.size();
      req.kind = CollectiveKind::kAllToAllV;
      req.matrix = std::make_shared<const std::vector<double>>(n * n, c.bytes);
      break;
    }
    case CollectiveOp::kAllReduce:
      req.kind = CollectiveKind::kAllReduce;
      break;
    case CollectiveOp::kAllGather:
      req.kind = CollectiveKind::kAllGather;
      break;
    case CollectiveOp::kReduceScatter:
      req.kind = CollectiveKind::kReduceScatter;
      break;
    case CollectiveOp::kSendRecv:
      req.kind = CollectiveKind::kSendRecv;
      break;
  }
  // One `algorithm` key serves both: all-to-all reads direct | hierarchical, all-reduce ring | tree.
  const bool a2a = req.kind == CollectiveKind::kAllToAllV;
  // execution.all_to_all_chunks pipelines a hierarchical all-to-all (the scenario reader rejects it
  // for any other collective).
  const hw::CollectivePlan plan = plan_collective(
      topo, req, a2a ? hw::collective_algo(c.algorithm) : hw::CollectiveAlgo::kDirect,
      req.kind == CollectiveKind::kAllReduce ? hw::collective_algo(c.algorithm) : hw::CollectiveAlgo::kRing,
      a2a && c.algorithm == "hierarchical" ? s.execution.all_to_all_chunks : 1);
  hw::CollectiveOptions opts;
  opts.launch_overhead = s.cluster.gpu.kernel_launch_overhead;
  const auto model = s.network.model == NetworkModel::kFlow ? hw::NetworkModel::kFlow : hw::NetworkModel::kAnalytical;
  const hw::CollectiveResult r = hw::run_collective(topo, plan, model, opts);
  fmt::format_to(std::back_inserter(out),
                 "collective {} ({}) over {} GPUs, size {}: time {:.3f} us, algbw {:.2f} GB/s, busbw {:.2f} GB/s "
                 "({} network model, launch overhead {} included)\n",
                 hw::to_string(r.kind), c.algorithm, r.ranks, sim::format_bytes(r.size_bytes), r.time.to_us(),
                 r.algbw / 1e9, r.busbw / 1e9, to_string(s.network.model), sim::to_string(opts.launch_overhead));
  j["step_time_us"] = r.time.to_us();
  j["collective"] = {{"op", hw::to_string(r.kind)}, {"algorithm", c.algorithm},  {"ranks", r.ranks},
                     {"size_bytes", r.size_bytes},  {"time_us", r.time.to_us()}, {"algbw_GBps", r.algbw / 1e9},
                     {"busbw_GBps", r.busbw / 1e9}, {"phases", r.phases}};
}

/// One MoE layer's dispatch and combine (engine/dispatch_run.hpp).
void run_dispatch(const Scenario& s, nlohmann::ordered_json& j, std::string& out) {
  const DispatchReport r = simulate_dispatch(s);
  auto op_json = [](const DispatchOpReport& o) {
    const double t = o.time_us * 1e-6;
    return nlohmann::ordered_json{{"time_us", o.time_us},
                                  {"payload_bytes", o.payload_bytes},
                                  {"network_bytes", o.network_bytes},
                                  {"phases", o.phases},
                                  {"sm_floor_us", o.sm_floor_us},
                                  {"deepep_nvl_bytes", o.nvl_logical_bytes},
                                  {"deepep_rdma_bytes", o.rdma_logical_bytes},
                                  {"deepep_ll_bytes", o.ll_logical_bytes},
                                  {"deepep_nvl_bw_GBps", o.nvl_logical_bytes / t / 1e9},
                                  {"deepep_rdma_bw_GBps", o.rdma_logical_bytes / t / 1e9},
                                  {"deepep_ll_bw_GBps", o.ll_logical_bytes / t / 1e9}};
  };
  j["step_time_us"] = r.dispatch.time_us + r.combine.time_us;
  j["dispatch"] = op_json(r.dispatch);
  j["combine"] = op_json(r.combine);
  j["routing"] = {{"drop_fraction", r.drop_fraction},
                  {"max_over_mean_load", r.max_over_mean_load},
                  {"mean_destination_ranks", r.mean_dest_ranks},
                  {"mean_destination_nodes", r.mean_dest_nodes}};
  for (const auto* op : {&r.dispatch, &r.combine}) {
    const double t = op->time_us * 1e-6;
    fmt::format_to(std::back_inserter(out),
                   "{:<9}  {:.3f} us over {} GPUs ({} nodes), {} phases; payload {}, on the network {}; DeepEP "
                   "bandwidth (rank 0): NVL {:.1f} GB/s, RDMA {:.1f} GB/s, LL {:.1f} GB/s\n",
                   op == &r.dispatch ? "dispatch" : "combine", op->time_us, r.ranks, r.nodes, op->phases,
                   sim::format_bytes(op->payload_bytes), sim::format_bytes(op->network_bytes),
                   op->nvl_logical_bytes / t / 1e9, op->rdma_logical_bytes / t / 1e9, op->ll_logical_bytes / t / 1e9);
  }
  fmt::format_to(std::back_inserter(out),
                 "routing    {} tokens per rank, drop {:.4f}%, max/mean expert load {:.3f}, per token (rank 0) "
                 "{:.3f} destination ranks, {:.3f} destination nodes\n",
                 r.tokens_per_rank, 100 * r.drop_fraction, r.max_over_mean_load, r.mean_dest_ranks, r.mean_dest_nodes);
}

/// "token", "counts", or "trace" for a replayed routing trace (token by token, no sampling).
std::string routing_mode(const models::RoutingSpec& r) {
  return r.distribution == models::Distribution::kTrace ? "trace" : models::to_string(r.sampling);
}

/// Full step (train / prefill / decode): executor on the cluster with cost models.
void run_step(const Scenario& s, const RunOptions& ro, nlohmann::ordered_json& j, std::string& out) {
  SimulateOptions o = simulate_options(s);
  o.trace_file = ro.trace_file;
  o.build.routing_threads = ro.threads;
  const StepReport r = simulate_step(s, o);
  const auto& b = r.built;
  const auto& crit = r.exec.per_gpu[static_cast<std::size_t>(r.exec.critical_gpu)];
  fmt::format_to(std::back_inserter(out),
                 "step time  {:.3f} ms ({} GPUs, critical GPU {}), {:.0f} tokens/s, MFU {:.1f}%\n",
                 r.exec.step_time.to_ms(), s.cluster.total_gpus(), r.exec.critical_gpu, r.tokens_per_s, 100 * r.mfu);
  fmt::format_to(
      std::back_inserter(out),
      "breakdown  (mean per GPU, us) compute {:.1f} | dispatch {:.1f} | combine {:.1f} | other comm {:.1f} | "
      "DP comm {:.1f} | PP comm {:.1f} | exposed comm {:.1f} | idle {:.1f}\n",
      r.compute_us, r.dispatch_us, r.combine_us, r.other_comm_us, r.data_parallel_us, r.pipeline_us, r.exposed_comm_us,
      r.idle_us);
  fmt::format_to(std::back_inserter(out),
                 "idle       (mean per GPU, us) waiting for EP/TP peers {:.1f} | for DP peers {:.1f} | pipeline "
                 "{:.1f} | for the host {:.1f} | other {:.1f} | after own last op {:.1f}\n",
                 r.wait_ep_us, r.wait_dp_us, r.wait_pp_us, r.wait_host_us, r.wait_other_us, r.idle_tail_us);
  fmt::format_to(std::back_inserter(out), "critical   compute {:.1f} | exposed comm {:.1f} | idle {:.1f} us\n",
                 crit.compute.to_us(), crit.exposed_comm.to_us(), crit.idle.to_us());
  fmt::format_to(std::back_inserter(out),
                 "routing    {} sampling, drop {:.4f}% of assignments, padded {:.4f}% of expert rows, {} MoE layers\n",
                 routing_mode(s.routing), 100 * b.drop_fraction(), 100 * b.padded_fraction(), b.moe_layers.size());
  fmt::format_to(std::back_inserter(out), "memory     peak {:.2f} GiB of {:.2f} GiB per GPU: {}\n",
                 b.memory.peak_bytes / 1073741824.0, b.memory.capacity_bytes / 1073741824.0,
                 b.memory.fits ? "fits" : "DOES NOT FIT");
  fmt::format_to(std::back_inserter(out), "simulated  {} compute ops, {} collectives, {} flows, {} events\n",
                 b.compute_ops, b.collective_ops, r.flows, r.exec.events);

  j["step_time_us"] = r.exec.step_time.to_us();
  j["tokens_per_s"] = r.tokens_per_s;
  j["mfu"] = r.mfu;
  j["flops"] = {{"model", b.flops.model}, {"executed", b.flops.executed}};
  j["breakdown_us"] = {{"compute", r.compute_us},
                       {"dispatch", r.dispatch_us},
                       {"combine", r.combine_us},
                       {"other_collectives", r.other_comm_us},
                       {"data_parallel", r.data_parallel_us},
                       {"pipeline", r.pipeline_us},
                       {"exposed_communication", r.exposed_comm_us},
                       {"idle", r.idle_us}};
  // Idle time by what ended each idle span: a collective that could only start once the slowest
  // participant arrived (EP/TP: load imbalance and stragglers; PP: pipeline bubbles), a compute
  // op (host: one the host had not issued yet), or nothing (the GPU finished before the slowest one). Sums to
  // breakdown_us.idle.
  j["idle_us"] = {{"waiting_for_ep_tp_peers", r.wait_ep_us},
                  {"waiting_for_dp_peers", r.wait_dp_us},
                  {"pipeline", r.wait_pp_us},
                  {"host", r.wait_host_us},
                  {"other", r.wait_other_us},
                  {"after_last_op", r.idle_tail_us}};
  j["critical_gpu"] = {{"index", r.exec.critical_gpu},
                       {"compute_us", crit.compute.to_us()},
                       {"exposed_communication_us", crit.exposed_comm.to_us()},
                       {"idle_us", crit.idle.to_us()}};
  double max_over_mean = 0;
  for (const auto& l : b.moe_layers) max_over_mean = std::max(max_over_mean, l.stats.max_over_mean);
  j["routing"] = {{"sampling_mode", routing_mode(s.routing)},
                  {"drop_fraction", b.drop_fraction()},
                  {"padded_fraction", b.padded_fraction()},
                  {"max_over_mean_load", max_over_mean},
                  {"routed", b.routed},
                  {"kept", b.kept},
                  {"dropped", b.dropped},
                  {"padded", b.padded}};
  // (build arrays before inserting: ordered_json references are invalidated by insertions)
  nlohmann::ordered_json stages = nlohmann::ordered_json::array();
  for (const auto& st : b.memory.stages)
    stages.push_back({{"stage", st.stage},
                      {"weights", st.weights},
                      {"grads", st.grads},
                      {"optimizer", st.optimizer},
                      {"activations", st.activations},
                      {"activations_no_recompute", st.activations_no_recompute},
                      {"activations_recompute", st.activations_recompute},
                      {"kv_cache", st.kv_cache},
                      {"comm_buffers", st.comm_buffers},
                      {"total", st.total()}});
  j["memory"] = {{"peak_bytes_per_gpu", b.memory.peak_bytes},
                 {"capacity_bytes_per_gpu", b.memory.capacity_bytes},
                 {"fits", b.memory.fits},
                 {"stages", std::move(stages)}};
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& l : b.moe_layers)
    layers.push_back({{"layer", l.layer},
                      {"stage", l.stage},
                      {"drop_fraction", l.stats.drop_fraction},
                      {"padded_fraction", l.stats.padded_fraction},
                      {"max_over_mean_load", l.stats.max_over_mean},
                      {"rank_max_over_mean_rows", l.rank_max_over_mean},
                      {"cv", l.stats.cv},
                      {"aux_loss", l.stats.aux_loss}});
  j["layers"] = std::move(layers);
  j["simulation"] = {{"compute_ops", b.compute_ops},
                     {"collective_ops", b.collective_ops},
                     {"flows", r.flows},
                     {"events", r.exec.events},
                     {"collective_bytes", r.payload_bytes}};
}

nlohmann::ordered_json summary_json(const Scenario& s) {
  nlohmann::ordered_json j;
  j["moesim_version"] = kVersion;
  j["scenario"] = s.name;
  j["seed"] = s.seed;
  j["parallel"] = {{"dp", s.parallel.dp},
                   {"tp", s.parallel.tp},
                   {"ep", s.parallel.ep},
                   {"pp", s.parallel.pp},
                   {"cp", s.parallel.cp},
                   {"vpp", s.parallel.vpp},
                   {"micro_batches", s.parallel.micro_batches},
                   {"stage_layers", s.parallel.stage_layers}};
  if (!s.parallel.pipeline_layout.empty()) j["parallel"]["pipeline_layout"] = s.parallel.pipeline_layout;
  j["workload"] = {{"mode", to_string(s.workload.mode)}, {"tokens_per_step", s.workload.tokens_per_step()}};
  if (s.workload.mode == WorkloadMode::kTrain) {
    if (s.workload.recompute_modules != 0) {
      j["workload"]["recompute"] = s.workload.recomputed_module_names();
    } else {
      j["workload"]["recompute"] = s.workload.recompute;
    }
  }
  if (s.has_model) {
    const auto pc = models::count_params(s.model);
    j["model"] = {{"name", s.model.name}, {"params_total", pc.params_total()}, {"params_active", pc.params_active()}};
  }
  return j;
}

}  // namespace

const char* version() { return kVersion; }

std::string format_header(const Scenario& s) {
  std::string out;
  append_header(s, out);
  return out;
}

RunResult run_scenario(const Scenario& s, const RunOptions& o) {
  RunResult r;
  r.report = summary_json(s);
  std::optional<hw::Topology> topo;
  if (s.has_cluster) topo.emplace(hw::build_topology(s.cluster));
  switch (s.workload.mode) {
    case WorkloadMode::kCollective:
      if (!o.trace_file.empty()) throw std::runtime_error("--trace is written for train/prefill/decode workloads only");
      run_collective(s, *topo, r.report, r.text);
      break;
    case WorkloadMode::kRouting:
      run_routing(s, r.report, r.text);
      break;
    case WorkloadMode::kDispatch:
      if (!o.trace_file.empty()) throw std::runtime_error("--trace is written for train/prefill/decode workloads only");
      run_dispatch(s, r.report, r.text);
      break;
    case WorkloadMode::kTrain:
    case WorkloadMode::kPrefill:
    case WorkloadMode::kDecode:
      run_step(s, o, r.report, r.text);
      break;
  }
  return r;
}

}  // namespace moesim::engine
