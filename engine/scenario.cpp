#include "engine/scenario.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "engine/pipeline.hpp"
#include "engine/scenario_checks.hpp"
#include "hardware/gpu_catalog.hpp"
#include "models/model_spec.hpp"
#include "models/routing_spec.hpp"

namespace moesim::engine {

using config::Node;
using config::Range;

const char* to_string(WorkloadMode m) {
  switch (m) {
    case WorkloadMode::kTrain:
      return "train";
    case WorkloadMode::kPrefill:
      return "prefill";
    case WorkloadMode::kDecode:
      return "decode";
    case WorkloadMode::kRouting:
      return "routing";
    case WorkloadMode::kCollective:
      return "collective";
    case WorkloadMode::kDispatch:
      return "dispatch";
  }
  return "?";
}

const char* to_string(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllToAll:
      return "all_to_all";
    case CollectiveOp::kAllReduce:
      return "all_reduce";
    case CollectiveOp::kAllGather:
      return "all_gather";
    case CollectiveOp::kReduceScatter:
      return "reduce_scatter";
    case CollectiveOp::kSendRecv:
      return "send_recv";
  }
  return "?";
}

const char* to_string(RecomputeModule m) {
  switch (m) {
    case RecomputeModule::kCoreAttn:
      return "core_attn";
    case RecomputeModule::kMoeAct:
      return "moe_act";
    case RecomputeModule::kLayernorm:
      return "layernorm";
    case RecomputeModule::kMlaUpProj:
      return "mla_up_proj";
    case RecomputeModule::kMlp:
      return "mlp";
    case RecomputeModule::kMoe:
      return "moe";
    case RecomputeModule::kSharedExperts:
      return "shared_experts";
  }
  return "?";
}

const char* to_string(NetworkModel m) { return m == NetworkModel::kFlow ? "flow" : "analytical"; }

std::vector<std::string> WorkloadSpec::recomputed_module_names() const {
  std::vector<std::string> out;
  for (int i = 0; i < kRecomputeModules; ++i)
    if (recomputes(static_cast<RecomputeModule>(i))) out.emplace_back(to_string(static_cast<RecomputeModule>(i)));
  return out;
}

std::int64_t WorkloadSpec::tokens_per_step() const {
  switch (mode) {
    case WorkloadMode::kTrain:
    case WorkloadMode::kRouting:
      return seq_len * global_batch;
    case WorkloadMode::kPrefill:
      return batch * prompt_len;
    case WorkloadMode::kDecode:
      return batch;
    case WorkloadMode::kCollective:
    case WorkloadMode::kDispatch:  // tokens per rank x ranks: see Scenario::routing_groups
      return 0;
  }
  return 0;
}

std::int64_t Scenario::routing_groups() const {
  switch (workload.mode) {
    case WorkloadMode::kTrain:
    case WorkloadMode::kRouting:
      return static_cast<std::int64_t>(parallel.dp_cp()) * parallel.micro_batches;
    case WorkloadMode::kPrefill:
    case WorkloadMode::kDecode:
    case WorkloadMode::kDispatch:
      return parallel.dp_cp();
    case WorkloadMode::kCollective:
      return 0;
  }
  return 0;
}

std::int64_t Scenario::tokens_per_group() const {
  if (workload.mode == WorkloadMode::kDispatch) return workload.tokens_per_rank;
  const std::int64_t g = routing_groups();
  return g > 0 ? workload.tokens_per_step() / g : 0;
}

namespace {

constexpr std::int64_t kMaxCount = std::int64_t{1} << 40;

/// "dp*tp*pp = 8*2*1" (with cp when it is not 1), for messages about the GPU count.
std::string world_formula(const ParallelSpec& p) {
  if (p.cp > 1) return fmt::format("dp*cp*tp*pp = {}*{}*{}*{}", p.dp, p.cp, p.tp, p.pp);
  return fmt::format("dp*tp*pp = {}*{}*{}", p.dp, p.tp, p.pp);
}

ParallelSpec parse_parallel(const Node& n) {
  ParallelSpec p;
  if (!n.defined()) return p;
  const Range r = Range::between(1, 1 << 20);
  p.dp = static_cast<int>(n.opt_int("dp", 1, r));
  p.tp = static_cast<int>(n.opt_int("tp", 1, r));
  p.ep = static_cast<int>(n.opt_int("ep", 1, r));
  p.pp = static_cast<int>(n.opt_int("pp", 1, r));
  p.cp = static_cast<int>(n.opt_int("cp", 1, r));
  p.micro_batches = static_cast<int>(n.opt_int("micro_batches", 1, r));
  p.vpp = static_cast<int>(n.opt_int("vpp", 1, Range::between(1, 1024)));
  p.pipeline_layout = n.opt_string("pipeline_layout", "");
  p.account_for_embedding = n.opt_bool("account_for_embedding", false);
  p.account_for_loss = n.opt_bool("account_for_loss", false);
  n.finish();
  if (!p.pipeline_layout.empty() && (p.account_for_embedding || p.account_for_loss))
    n.error_at("pipeline_layout",
               "a pipeline_layout places the embedding and the loss itself: drop account_for_embedding / "
               "account_for_loss");
  if (p.vpp > 1 && p.pp < 2)
    n.error_at("vpp",
               fmt::format("vpp={} needs a pipeline (pp >= 2): virtual stages interleave pipeline ranks", p.vpp));
  if (p.vpp > 1 && p.pp > 1 && p.micro_batches % p.pp != 0)
    n.error_at("micro_batches",
               fmt::format("micro_batches={} is not a multiple of pp={}: the interleaved schedule (vpp={}) runs "
                           "micro-batches in groups of pp",
                           p.micro_batches, p.pp, p.vpp));
  // dp*cp*tp*pp is a GPU count: bounded like the cluster's, so no product below overflows an int.
  const std::int64_t world = std::int64_t{p.dp} * p.cp * p.tp * p.pp;
  if (world > hw::kMaxClusterGpus)
    n.error(fmt::format("{} = {} GPUs is more than the {} a cluster may have", world_formula(p), world,
                        hw::kMaxClusterGpus));
  // Megatron-Core forms expert-parallel groups out of the dp x cp x tp ranks of one stage.
  const std::int64_t stage = std::int64_t{p.dp} * p.cp * p.tp;
  if (p.ep > 0 && p.dp > 0 && p.tp > 0 && stage % p.ep != 0)
    n.error_at("ep", fmt::format("ep={} must divide {}={} (expert-parallel groups are carved out of the {} "
                                 "tensor-parallel ranks of a pipeline stage)",
                                 p.ep, p.cp > 1 ? "dp*cp*tp" : "dp*tp", stage,
                                 p.cp > 1 ? "data-, context- and" : "data- and"));
  if (p.pp > 1 && p.micro_batches < p.pp)
    n.error_at(
        "micro_batches",
        fmt::format("micro_batches={} is less than pp={}: a 1F1B pipeline needs at least one micro-batch per stage",
                    p.micro_batches, p.pp));
  return p;
}

CollectiveSpec parse_collective(const Node& n) {
  CollectiveSpec c;
  const std::string op = n.req_choice("op", {"all_to_all", "all_reduce", "all_gather", "reduce_scatter", "send_recv"});
  if (op == "all_to_all") c.op = CollectiveOp::kAllToAll;
  if (op == "all_reduce") c.op = CollectiveOp::kAllReduce;
  if (op == "all_gather") c.op = CollectiveOp::kAllGather;
  if (op == "reduce_scatter") c.op = CollectiveOp::kReduceScatter;
  if (op == "send_recv") c.op = CollectiveOp::kSendRecv;
  c.bytes = n.req_bytes("bytes").value;
  std::vector<std::string> algos;
  std::string dflt;
  switch (c.op) {
    case CollectiveOp::kAllToAll:
      algos = {"direct", "hierarchical"}, dflt = "direct";
      break;
    case CollectiveOp::kAllReduce:
      algos = {"ring", "tree"}, dflt = "ring";
      break;
    default:
      algos = {"ring"}, dflt = "ring";
      break;
  }
  c.algorithm = n.opt_choice("algorithm", algos, dflt);
  n.finish();
  return c;
}

/// recompute: false | true (full) | [module, ...] (selective, Megatron-Core module names).
void parse_recompute(const Node& n, WorkloadSpec& w) {
  const Node r = n.child("recompute");
  if (!r.defined() || r.is_null()) return;
  if (!r.is_sequence()) {
    w.recompute = r.as_bool();
    return;
  }
  std::vector<std::string> names;
  for (int i = 0; i < kRecomputeModules; ++i) names.emplace_back(to_string(static_cast<RecomputeModule>(i)));
  const std::vector<Node> items = r.items();
  for (const Node& item : items) {
    const std::string v = item.as_choice(names);
    for (int i = 0; i < kRecomputeModules; ++i)
      if (v == names[static_cast<std::size_t>(i)]) {
        if ((w.recompute_modules >> i) & 1U) item.error(fmt::format("'{}' is listed twice", v));
        w.recompute_modules |= 1U << i;
      }
  }
  if (items.empty()) r.error("an empty list recomputes nothing: write recompute: false");
}

/// optimizer: {distributed | zero_stage, param_gather, grad_sync, main_params_dtype, exp_avg_dtype,
/// exp_avg_sq_dtype, main_grads_dtype}.
void parse_optimizer(const Node& n, WorkloadSpec& w) {
  const Node o = n.child("optimizer");
  if (!o.defined() || o.is_null()) return;
  if (!o.is_map()) {
    o.error("expected a map, e.g. optimizer: {exp_avg_dtype: bf16, exp_avg_sq_dtype: bf16, main_grads_dtype: bf16}");
    return;
  }
  auto& opt = w.optimizer;
  if (o.has("distributed") && o.has("zero_stage"))
    o.child("zero_stage").error("give one of distributed (ZeRO-1 or 0) and zero_stage, not both");
  else if (o.has("zero_stage"))
    opt.zero_stage = static_cast<int>(o.opt_int("zero_stage", 1, Range::between(0, 3)));
  else
    opt.zero_stage = o.opt_bool("distributed", true) ? 1 : 0;
  using Opt = WorkloadSpec::Optimizer;
  if (o.has("param_gather")) {
    const std::string g = o.opt_choice("param_gather", {"per_use", "per_micro_batch", "per_step"}, "per_use");
    if (opt.zero_stage != 3)
      o.child("param_gather")
          .error(fmt::format("parameters are sharded (and gathered) only with zero_stage: 3; this is ZeRO-{}",
                             opt.zero_stage));
    opt.param_gather = g == "per_step"          ? Opt::ParamGather::kPerStep
                       : g == "per_micro_batch" ? Opt::ParamGather::kPerMicroBatch
                                                : Opt::ParamGather::kPerUse;
  }
  if (o.has("grad_sync")) {
    const std::string g = o.opt_choice("grad_sync", {"per_micro_batch", "per_step"}, "per_micro_batch");
    if (opt.zero_stage < 2)
      o.child("grad_sync")
          .error(fmt::format(
              "gradients are sharded (and reduced per micro-batch or per step) only with zero_stage: 2 or 3; ZeRO-{} "
              "reduces them once per step",
              opt.zero_stage));
    opt.grad_sync = g == "per_step" ? Opt::GradSync::kPerStep : Opt::GradSync::kPerMicroBatch;
  }
  const auto bytes = [&](const char* key, const std::vector<std::string>& choices) {
    const std::string v = o.opt_choice(key, choices, "fp32");
    return v == "fp32" ? 4 : v == "fp8" ? 1 : 2;
  };
  opt.main_params_bytes = bytes("main_params_dtype", {"fp32", "fp16"});
  opt.exp_avg_bytes = bytes("exp_avg_dtype", {"fp32", "bf16", "fp16", "fp8"});
  opt.exp_avg_sq_bytes = bytes("exp_avg_sq_dtype", {"fp32", "bf16", "fp16", "fp8"});
  opt.main_grads_bytes = bytes("main_grads_dtype", {"fp32", "bf16"});
  o.finish();
}

WorkloadSpec parse_workload(const Node& n) {
  WorkloadSpec w;
  if (!n.defined()) {
    n.error("required section is missing (workload: {mode: train|prefill|decode|routing|collective|dispatch, ...})");
    return w;
  }
  const std::string mode = n.req_choice("mode", {"train", "prefill", "decode", "routing", "collective", "dispatch"});
  const Range count = Range::between(1, static_cast<double>(kMaxCount));
  if (mode == "train" || mode == "routing") {
    w.mode = mode == "train" ? WorkloadMode::kTrain : WorkloadMode::kRouting;
    w.seq_len = n.req_int("seq_len", count);
    w.global_batch = n.req_int("global_batch", count);
    if (mode == "train") {
      parse_recompute(n, w);
      parse_optimizer(n, w);
    }
  } else if (mode == "prefill") {
    w.mode = WorkloadMode::kPrefill;
    w.batch = n.req_int("batch", count);
    w.prompt_len = n.req_int("prompt_len", count);
  } else if (mode == "decode") {
    w.mode = WorkloadMode::kDecode;
    w.batch = n.req_int("batch", count);
    w.context_len = n.req_int("context_len", count);
  } else if (mode == "dispatch") {
    w.mode = WorkloadMode::kDispatch;
    w.tokens_per_rank = n.req_int("tokens_per_rank", Range::between(1, 1 << 24));
  } else if (mode == "collective") {
    w.mode = WorkloadMode::kCollective;
    const Node c = n.child("collective");
    if (!c.defined())
      n.error_at("collective", "required for mode: collective (e.g. collective: {op: all_to_all, bytes: 1MiB})");
    else
      w.collective = parse_collective(c);
  } else {
    // Unknown mode (already reported): do not pile unknown-key errors on top of it.
    n.finish({"seq_len", "global_batch", "recompute", "optimizer", "batch", "prompt_len", "context_len", "collective",
              "tokens_per_rank"});
    return w;
  }
  n.finish();
  // Token and KV-entry counts per step are products of two counts; keep them (and every byte
  // count derived from them) far from int64 overflow.
  auto product_limit = [&](std::int64_t a, std::int64_t b, const char* key_b, const char* what) {
    if (a > 0 && b > kMaxCount / a) {
      n.error_at(key_b, fmt::format("{} x {} = {:.3g} {} per step is more than the {} allowed", a, b,
                                    static_cast<double>(a) * static_cast<double>(b), what, kMaxCount));
      return true;
    }
    return false;
  };
  if (w.mode == WorkloadMode::kTrain || w.mode == WorkloadMode::kRouting) {
    if (product_limit(w.global_batch, w.seq_len, "seq_len", "tokens")) w.seq_len = 1;
  } else if (w.mode == WorkloadMode::kPrefill) {
    if (product_limit(w.batch, w.prompt_len, "prompt_len", "tokens")) w.prompt_len = 1;
  } else if (w.mode == WorkloadMode::kDecode) {
    if (product_limit(w.batch, w.context_len, "context_len", "KV-cache entries")) w.context_len = 1;
  }
  return w;
}

NetworkSpec parse_network(const Node& n) {
  NetworkSpec s;
  if (!n.defined()) return s;
  s.model =
      n.opt_choice("model", {"flow", "analytical"}, "flow") == "flow" ? NetworkModel::kFlow : NetworkModel::kAnalytical;
  n.finish();
  return s;
}

ExecutionSpec parse_execution(const Node& n, const std::string& scenario_file) {
  ExecutionSpec e;
  if (!n.defined()) return e;
  e.overlap_chunks = static_cast<int>(n.opt_int("overlap_chunks", 1, Range::between(1, 64)));
  e.comm_sms = static_cast<int>(n.opt_int("comm_sms", 0, Range::between(0, 1024)));
  e.dispatch_dtype = n.opt_choice("dispatch_dtype", {"bf16", "fp8"}, "bf16");
  e.weights_dtype = n.opt_choice("weights_dtype", {"bf16", "fp8"}, "bf16");
  if (auto b = n.opt_bandwidth("sm_copy_bandwidth")) e.sm_copy_bandwidth = b->bytes_per_s;
  e.two_batch_overlap = n.opt_bool("two_batch_overlap", false);
  if (n.has("host_op_cost"))
    e.host_op_cost = n.child("host_op_cost").as_time(Range::between(0, 1e9));  // at most 1 ms per op
  e.profile = n.opt_string("profile", "");
  e.all_to_all = n.opt_choice("all_to_all", {"direct", "hierarchical"}, "direct");
  e.all_to_all_chunks = static_cast<int>(n.opt_int("all_to_all_chunks", 1, Range::between(1, 64)));
  e.dispatcher = n.opt_choice("dispatcher", {"nccl_a2a", "deepep_normal", "deepep_ll"}, "nccl_a2a");
  if (e.dispatcher != "nccl_a2a" && e.all_to_all != "direct")
    n.error_at("all_to_all", fmt::format("all_to_all: {} is the path of the nccl_a2a dispatcher; {} sets its own "
                                         "(remove all_to_all or set dispatcher: nccl_a2a)",
                                         e.all_to_all, e.dispatcher));
  if (e.all_to_all_chunks > 1 && e.all_to_all != "hierarchical")
    n.error_at("all_to_all_chunks",
               fmt::format("all_to_all_chunks={} pipelines the phases of the hierarchical all-to-all; set "
                           "all_to_all: hierarchical (the direct exchange has one phase)",
                           e.all_to_all_chunks));
  e.all_reduce = n.opt_choice("all_reduce", {"ring", "tree"}, "ring");
  if (!e.profile.empty() && std::filesystem::path(e.profile).is_relative() && !scenario_file.empty()) {
    // Profiles named relative to the repository root are the common case (hardware/profiles/).
    const std::filesystem::path beside = std::filesystem::path(scenario_file).parent_path() / e.profile;
    if (std::filesystem::exists(beside)) e.profile = beside.lexically_normal().string();
  }
  n.finish();  // the profile file itself is read and checked by check_scenario_inputs
  return e;
}

}  // namespace

Scenario parse_scenario(const config::Document& doc, std::optional<std::uint64_t> seed_override) {
  config::Diagnostics diags;
  const Node root = doc.root(diags);
  Scenario s;
  s.file = doc.file();
  if (!root.is_map()) {
    root.error("a scenario must be a mapping with keys name, model, cluster, parallel, workload, routing, network");
    diags.throw_if_any();
  }
  s.name = root.req_string("name");
  s.seed = static_cast<std::uint64_t>(root.opt_int("seed", 0, Range::non_negative()));
  if (seed_override) s.seed = *seed_override;
  s.parallel = parse_parallel(root.child("parallel"));
  s.workload = parse_workload(root.child("workload"));
  s.network = parse_network(root.child("network"));
  s.execution = parse_execution(root.child("execution"), s.file);
  // mode: collective runs collective.algorithm; execution.all_to_all_chunks pipelines it only when
  // that is the hierarchical all-to-all (engine/run.cpp), and is an error anywhere else.
  if (s.workload.collective && s.execution.all_to_all_chunks > 1 &&
      !(s.workload.collective->op == CollectiveOp::kAllToAll && s.workload.collective->algorithm == "hierarchical"))
    root.child("execution")
        .error_at("all_to_all_chunks",
                  fmt::format("all_to_all_chunks={} pipelines the hierarchical all-to-all, but this collective is {} "
                              "({}); use collective: {{op: all_to_all, algorithm: hierarchical}} or drop the key",
                              s.execution.all_to_all_chunks, to_string(s.workload.collective->op),
                              s.workload.collective->algorithm));

  // model: a catalog name or an inline block (parsed by models/).
  const Node model = root.child("model");
  const bool needs_model = s.workload.mode != WorkloadMode::kCollective;
  if (model.defined()) {
    if (model.is_scalar()) {
      const std::string name = model.as_string();
      static const std::vector<models::ModelSpec> catalog = models::load_default_model_catalog();
      if (const models::ModelSpec* m = models::find_model(catalog, name)) {
        s.model = *m;
        s.has_model = true;
      } else {
        std::vector<std::string> names;
        for (const auto& c : catalog) names.push_back(c.name);
        std::string msg = fmt::format("unknown model '{}'", name);
        if (auto dym = config::did_you_mean(name, names)) msg += fmt::format(" (did you mean '{}'?)", *dym);
        msg += "; `moesim describe models` lists the catalog, or write an inline model block";
        model.error(msg);
      }
    } else {
      const std::size_t before = diags.size();
      s.model = models::parse_model(model);
      s.has_model = diags.size() == before;
    }
  } else if (needs_model) {
    root.error_at("model", "required key is missing (a catalog name such as mixtral-8x7b, or an inline block)");
  }

  // routing: parsed against the model (its defaults come from the model's router config).
  const Node routing = root.child("routing");
  if (s.has_model) {
    s.routing = models::parse_routing(routing, s.model);
    if (s.routing.distribution == models::Distribution::kTrace && !s.routing.trace_file.empty()) {
      // Relative trace paths are relative to the scenario file, not the working directory.
      const std::filesystem::path tp(s.routing.trace_file);
      if (tp.is_relative() && !s.file.empty())
        s.routing.trace_file = (std::filesystem::path(s.file).parent_path() / tp).lexically_normal().string();
    }
  }

  // cluster: parsed by hardware/ (GPU catalog names or inline specs, fabrics, topology checks).
  const Node cluster = root.child("cluster");
  if (cluster.defined()) {
    static const hw::GpuCatalog gpus = hw::load_default_gpu_catalog();
    const std::size_t before = diags.size();
    s.cluster = hw::parse_cluster(cluster, gpus);
    s.has_cluster = diags.size() == before;
    if (s.has_cluster && s.workload.mode != WorkloadMode::kCollective && s.parallel.world() <= hw::kMaxClusterGpus &&
        s.parallel.world() != s.cluster.total_gpus())
      root.child("parallel")
          .error(fmt::format("{} = {} GPUs, but the cluster has {} (nodes {} x gpus_per_node {})",
                             world_formula(s.parallel), s.parallel.world(), s.cluster.total_gpus(), s.cluster.nodes,
                             s.cluster.gpus_per_node));
    if (s.has_cluster && s.execution.weights_dtype == "fp8" && !(s.cluster.gpu.fp8_flops > 0))
      root.child("execution")
          .error_at("weights_dtype",
                    fmt::format("fp8 GEMMs need FP8 tensor cores; GPU '{}' has no fp8 peak in the catalog",
                                s.cluster.gpu.name));
  } else if (s.workload.mode != WorkloadMode::kRouting) {
    root.error_at("cluster", "required key is missing (e.g. cluster: {gpu: h100-sxm, nodes: 1, gpus_per_node: 8})");
  }

  // Cross-checks between sections (only meaningful when each section parsed).
  if (s.has_model && s.workload.mode != WorkloadMode::kCollective && s.workload.mode != WorkloadMode::kRouting &&
      s.parallel.tp > 1 && s.tokens_per_group() % s.parallel.tp != 0)
    root.error_at("workload", fmt::format("{} tokens per routing group do not split over tp={} (sequence parallelism)",
                                          s.tokens_per_group(), s.parallel.tp));
  if (s.has_model && s.model.experts > 0 && s.workload.mode != WorkloadMode::kCollective) {
    if (auto why = models::placement_problem(s.model.experts, s.parallel.ep, s.routing.redundant_experts))
      root.child("parallel").error_at("ep", *why);
    const std::int64_t groups = s.routing_groups();
    if (groups > 0 && s.workload.tokens_per_step() % groups != 0)
      root.error_at("workload", fmt::format("{} tokens per step do not split evenly into {} routing groups "
                                            "({} for training)",
                                            s.workload.tokens_per_step(), groups,
                                            s.parallel.cp > 1 ? "dp x cp x micro_batches" : "dp x micro_batches"));
  }
  // Step simulations (train / prefill / decode): the combinations the step builder cannot lay
  // out, found here so they are configuration errors with a location, not run-time failures.
  const bool step_mode = s.workload.mode == WorkloadMode::kTrain || s.workload.mode == WorkloadMode::kPrefill ||
                         s.workload.mode == WorkloadMode::kDecode;
  const bool positive_layout =
      s.parallel.dp > 0 && s.parallel.tp > 0 && s.parallel.pp > 0 && s.parallel.ep > 0;  // else reported above
  if (s.has_model && step_mode && positive_layout) {
    const Node par = root.child("parallel");
    const auto& p = s.parallel;
    const auto& m = s.model;
    if (s.execution.two_batch_overlap) {
      const Node ex = root.child("execution");
      const auto& w = s.workload;
      if (w.mode == WorkloadMode::kTrain)
        ex.error_at("two_batch_overlap",
                    "two-batch overlap is an inference schedule (prefill, decode); training's all-to-all overlap "
                    "across micro-batches is not modelled yet");
      else if (s.execution.overlap_chunks != 1)
        ex.error_at("two_batch_overlap", "two_batch_overlap and overlap_chunks > 1 are alternatives: use one");
      else if (p.cp != 1)
        ex.error_at("two_batch_overlap", "two_batch_overlap with context parallelism is not modelled");
      else if (p.dp > 0 && w.batch % p.dp == 0) {
        const std::int64_t seqs = w.batch / p.dp;
        const std::int64_t q = w.mode == WorkloadMode::kPrefill ? w.prompt_len : 1;
        if (w.mode == WorkloadMode::kDecode && seqs < 2)
          ex.error_at("two_batch_overlap",
                      fmt::format("decode splits its sequences into two halves: batch={} over dp={} leaves {} per rank",
                                  w.batch, p.dp, seqs));
        const std::int64_t h0 = seqs >= 2 ? (seqs + 1) / 2 * q : (q + 1) / 2, h1 = seqs >= 2 ? seqs / 2 * q : q / 2;
        if (p.tp > 1 && (h0 % p.tp != 0 || h1 % p.tp != 0))
          ex.error_at("two_batch_overlap", fmt::format("the halves' {} and {} tokens per rank do not split over tp={} "
                                                       "(sequence parallelism)",
                                                       h0, h1, p.tp));
      }
    }
    if (p.cp > 1) {
      // Megatron splits each sequence into 2 x cp chunks and gives rank i chunks i and 2cp-1-i
      // (equal causal work per rank); the sequences of a micro-batch must stay whole per DP rank.
      const auto& w = s.workload;
      if (w.mode == WorkloadMode::kDecode)
        par.error_at("cp", "context parallelism splits a sequence's queries; decode has one query per sequence");
      const std::int64_t len = w.mode == WorkloadMode::kTrain ? w.seq_len : w.prompt_len;
      if (w.mode != WorkloadMode::kDecode && len % (2 * std::int64_t{p.cp}) != 0)
        par.error_at("cp", fmt::format("{}={} does not split into 2*cp = {} equal chunks (the load-balanced causal "
                                       "split of context parallelism)",
                                       w.mode == WorkloadMode::kTrain ? "seq_len" : "prompt_len", len, 2 * p.cp));
      const std::int64_t groups = s.routing_groups();
      const bool groups_split = groups <= 0 || w.tokens_per_step() % groups == 0;  // else reported above
      if (w.mode == WorkloadMode::kTrain && groups_split &&
          w.global_batch % (std::int64_t{p.dp} * p.micro_batches) != 0)
        par.error_at("cp", fmt::format("global_batch={} sequences do not split into whole sequences per dp x "
                                       "micro_batches = {} (context parallelism splits whole sequences over cp={})",
                                       w.global_batch, std::int64_t{p.dp} * p.micro_batches, p.cp));
    }
    if (p.vpp > 1 && s.workload.mode != WorkloadMode::kTrain)
      par.error_at("vpp",
                   "virtual pipeline stages (vpp > 1) schedule training micro-batches: use vpp: 1 for "
                   "prefill and decode");
    if (!p.pipeline_layout.empty()) {
      try {
        s.parallel.stage_layers = parse_pipeline_layout(p.pipeline_layout, p.virtual_stages(), m.num_layers());
      } catch (const std::invalid_argument& e) {
        par.error_at("pipeline_layout", e.what());
      }
    } else if (p.vpp > 1 || p.account_for_embedding || p.account_for_loss) {
      try {
        s.parallel.stage_layers = pipeline_stage_layers(p, m.num_layers());
      } catch (const std::invalid_argument& e) {
        par.error_at(p.vpp > 1 ? "vpp" : "pp", e.what());
      }
    } else if (p.pp > m.num_layers()) {
      par.error_at(
          "pp", fmt::format("pp={} pipeline stages but the model has {} layers (each stage needs at least one)", p.pp,
                            m.num_layers()));
    }
    // Megatron-Core splits attention heads and FFN columns evenly over TP ranks.
    if (p.tp > 1 && m.heads % p.tp != 0)
      par.error_at("tp", fmt::format("tp={} does not divide the model's {} attention heads", p.tp, m.heads));
    bool dense_layers = false;
    for (bool moe : m.moe_layer) dense_layers = dense_layers || !moe;
    if (p.tp > 1 && dense_layers && m.dense_ffn % p.tp != 0)
      par.error_at("tp", fmt::format("tp={} does not divide the dense FFN width {}", p.tp, m.dense_ffn));
    const std::int64_t shared = m.shared_expert_ffn * m.shared_experts;
    if (p.tp > 1 && m.num_moe_layers() > 0 && shared % p.tp != 0)
      par.error_at("tp", fmt::format("tp={} does not divide the shared-expert FFN width {}", p.tp, shared));
    // Selective recomputation of a module the model does not have would silently do nothing.
    const auto recompute_missing = [&](RecomputeModule mod, bool has, const char* what) {
      if (s.workload.recomputes(mod) && !has)
        root.child("workload")
            .error_at("recompute",
                      fmt::format("recompute lists '{}' but model '{}' has no {}", to_string(mod), m.name, what));
    };
    const bool has_moe = m.num_moe_layers() > 0;
    recompute_missing(RecomputeModule::kMlaUpProj, m.attention == models::AttentionKind::kMla,
                      "MLA attention (mla_up_proj recomputes MLA's up-projections)");
    recompute_missing(RecomputeModule::kSharedExperts, has_moe && m.shared_experts > 0, "shared experts");
    recompute_missing(RecomputeModule::kMlp, dense_layers, "dense FFN layers");
    recompute_missing(RecomputeModule::kMoe, has_moe, "MoE layers");
    recompute_missing(RecomputeModule::kMoeAct, has_moe, "MoE layers");
    if ((s.workload.mode == WorkloadMode::kPrefill || s.workload.mode == WorkloadMode::kDecode) &&
        s.workload.batch % p.dp != 0)
      root.child("workload")
          .error_at("batch",
                    fmt::format("batch={} sequences do not split evenly over dp={} replicas", s.workload.batch, p.dp));
    // Hierarchical all-to-all stages traffic on the same-rail GPU of each node, so an EP group
    // must be whole nodes, or lie inside one node (then it is the direct exchange).
    const int gpn = s.has_cluster ? s.cluster.gpus_per_node : 0;
    const std::int64_t ss = std::int64_t{p.dp_cp()} * p.tp;
    const char* ss_name = p.cp > 1 ? "dp*cp*tp" : "dp*tp";
    if (s.execution.all_to_all == "hierarchical" && gpn > 0 && ss % p.ep == 0 &&
        !((p.ep % gpn == 0 && ss % gpn == 0) || gpn % p.ep == 0))
      root.child("execution")
          .error_at("all_to_all",
                    fmt::format("hierarchical all-to-all needs expert-parallel groups of whole nodes or inside one "
                                "node: ep={} and {}={} with gpus_per_node={}",
                                p.ep, ss_name, ss, gpn));
    // DeepEP normal relays a token through the same-index GPU of each destination node.
    if (s.execution.dispatcher == "deepep_normal" && gpn > 0 && ss % p.ep == 0 &&
        !((p.ep % gpn == 0 && ss % gpn == 0) || gpn % p.ep == 0))
      root.child("execution")
          .error_at("dispatcher",
                    fmt::format("deepep_normal forwards through the same-index GPU of every destination node, so "
                                "expert-parallel groups must be whole nodes or lie inside one node: ep={} and "
                                "{}={} with gpus_per_node={}",
                                p.ep, ss_name, ss, gpn));
    if (m.num_moe_layers() > 0 && s.routing.redundant_experts > 0)
      root.child("routing").error_at("redundant_experts",
                                     "redundant (replicated) experts are supported in routing-only runs "
                                     "(workload.mode: routing); the step simulation does not place them yet");
  }
  // Dispatch benchmarks: one EP group of every GPU, routed per rank in token mode (DeepEP's
  // logical byte counts need each token's destinations).
  if (s.workload.mode == WorkloadMode::kDispatch && s.has_model) {
    const Node par = root.child("parallel");
    const auto& p = s.parallel;
    if (p.tp != 1 || p.pp != 1) par.error("mode: dispatch runs one expert-parallel group: tp and pp must be 1");
    if (p.ep != p.dp)
      par.error_at("ep", fmt::format("mode: dispatch runs one expert-parallel group of every GPU: ep={} must equal "
                                     "dp={}",
                                     p.ep, p.dp));
    if (s.model.num_moe_layers() == 0) root.error_at("model", "mode: dispatch needs a model with MoE layers");
    if (s.routing.sampling != models::SamplingMode::kToken && s.routing.distribution != models::Distribution::kTrace)
      root.child("routing").error_at("sampling",
                                     "mode: dispatch needs token sampling (per-token destinations give DeepEP's "
                                     "logical byte counts)");
    if (s.routing.redundant_experts > 0)
      root.child("routing").error_at("redundant_experts", "mode: dispatch places experts contiguously");
    const int gpn = s.has_cluster ? s.cluster.gpus_per_node : 0;
    if (s.execution.all_to_all == "hierarchical" && gpn > 0 && !(p.ep % gpn == 0 || gpn % p.ep == 0))
      root.child("execution")
          .error_at("all_to_all", fmt::format("hierarchical all-to-all needs whole nodes or one node: ep={} with "
                                              "gpus_per_node={}",
                                              p.ep, gpn));
    if (s.execution.dispatcher == "deepep_normal" && gpn > 0 && !(p.ep % gpn == 0 || gpn % p.ep == 0))
      root.child("execution")
          .error_at("dispatcher", fmt::format("deepep_normal forwards through the same-index GPU of every "
                                              "destination node: ep={} must be whole nodes or inside one node "
                                              "(gpus_per_node={})",
                                              p.ep, gpn));
  }
  check_scenario_inputs(s, root);  // the files it names, hardware bounds
  root.finish();
  diags.throw_if_any();
  return s;
}

Scenario load_scenario(const std::string& path, const LoadOptions& opts) {
  config::Document doc = config::Document::load_file(path);
  for (const auto& o : opts.overrides) doc.apply_override(o);
  return parse_scenario(doc, opts.seed);
}

}  // namespace moesim::engine
