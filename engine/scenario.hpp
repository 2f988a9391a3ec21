#pragma once
/// \file
/// A scenario: everything one `moesim run` needs, parsed once from YAML into plain structs.
///
/// Sections (see scenarios/*.yaml and docs/scenario.md):
///   name, seed, model, cluster, parallel, workload, routing, network
/// Each subsystem parses its own section (hardware: cluster; models: model and routing); this
/// file owns the top level and the parallel, workload and network sections, then cross-checks
/// them (world size vs GPU count, EP vs experts...). All problems are reported together.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "hardware/topology.hpp"
#include "models/model_spec.hpp"
#include "models/routing_spec.hpp"

namespace moesim::engine {

struct ParallelSpec {
  int dp = 1;  ///< data-parallel replicas
  int tp = 1;  ///< tensor-parallel width (attention and dense layers)
  int ep = 1;  ///< expert-parallel width; carved out of dp x tp as in Megatron-Core
  int pp = 1;  ///< pipeline stages
  /// Context-parallel width (Megatron-Core `--context-parallel-size`): each sequence is split over
  /// cp ranks (load-balanced causal chunks), which exchange K and V around a ring inside
  /// attention. CP ranks sit inside the data-parallel ones (Megatron order tp-cp-dp-pp): gradients
  /// reduce and the optimizer shards over dp x cp, experts are carved out of dp x cp x tp.
  int cp = 1;
  int micro_batches = 1;
  /// Virtual pipeline stages per rank (Megatron's interleaved 1F1B): the layers are split into
  /// pp * vpp model chunks; rank p holds chunks p, p + pp, p + 2pp, ... (1 = plain 1F1B).
  int vpp = 1;
  /// Layers per virtual stage (pp * vpp entries, in pipeline order), from `pipeline_layout`
  /// (Megatron's layout string, e.g. "Et*3|(tttt|)*14tL") or, when it is absent, the even split
  /// (first stages get the remainder). Empty until the scenario is validated against its model.
  std::vector<int> stage_layers;
  /// The source of stage_layers when given: the layout string as written ("" = even split).
  std::string pipeline_layout;
  bool account_for_embedding = false;  ///< the embedding counts as a layer of the first virtual stage
  bool account_for_loss = false;       ///< the loss counts as a layer of the last virtual stage
  std::int64_t world() const { return std::int64_t{dp} * cp * tp * pp; }
  /// Data- and context-parallel ranks per TP index of a stage (the gradient-reduction group).
  int dp_cp() const { return dp * cp; }
  int virtual_stages() const { return pp * vpp; }
};

enum class WorkloadMode { kTrain, kPrefill, kDecode, kRouting, kCollective, kDispatch };
const char* to_string(WorkloadMode m);

enum class CollectiveOp { kAllToAll, kAllReduce, kAllGather, kReduceScatter, kSendRecv };
const char* to_string(CollectiveOp op);

struct CollectiveSpec {
  CollectiveOp op = CollectiveOp::kAllToAll;
  double bytes = 0;       ///< all-to-all: per (src, dst) pair; others: per-GPU buffer size
  std::string algorithm;  ///< direct | hierarchical (all-to-all); ring | tree (all-reduce)
};

/// Modules of Megatron-Core's selective recomputation (names as in `--recompute-modules`).
///   core_attn       the attention kernel (flash attention forward re-run; its output and
///                   log-sum-exp are not kept)
///   moe_act         the routed experts' activation (SwiGLU/GELU between fc1 and fc2)
///   layernorm       the two norms of each layer (their outputs are not kept)
///   mla_up_proj     MLA's up-projections (q_b, kv_b GEMMs; only the latents are kept)
///   mlp             the dense FFN of dense layers
///   moe             the whole MoE block (router, dispatch, experts, combine: re-run with its
///                   communication)
///   shared_experts  the shared experts of MoE layers
enum class RecomputeModule : std::uint8_t {
  kCoreAttn,
  kMoeAct,
  kLayernorm,
  kMlaUpProj,
  kMlp,
  kMoe,
  kSharedExperts,
};
inline constexpr int kRecomputeModules = 7;
const char* to_string(RecomputeModule m);

struct WorkloadSpec {
  WorkloadMode mode = WorkloadMode::kTrain;
  std::int64_t seq_len = 0;          ///< train / routing: tokens per sequence
  std::int64_t global_batch = 0;     ///< train / routing: sequences per step (all DP replicas)
  std::int64_t batch = 0;            ///< prefill / decode: concurrent sequences
  std::int64_t prompt_len = 0;       ///< prefill
  std::int64_t context_len = 0;      ///< decode: tokens already in the KV cache
  std::int64_t tokens_per_rank = 0;  ///< dispatch: tokens each EP rank dispatches
  bool recompute = false;            ///< train: full activation recomputation (every layer's forward)
  /// train: selective recomputation (Megatron-Core `--recompute-granularity selective
  /// --recompute-modules ...`): the modules whose forward is re-run before their backward
  /// instead of keeping their activations. Bit i = RecomputeModule i. Exclusive with `recompute`.
  std::uint32_t recompute_modules = 0;
  bool recomputes(RecomputeModule m) const { return (recompute_modules >> static_cast<unsigned>(m)) & 1U; }
  /// train: the optimizer's state (Megatron-Core `--use-distributed-optimizer` and the
  /// precision-aware optimizer's `--main-params-dtype`, `--exp-avg-dtype`, `--exp-avg-sq-dtype`,
  /// `--main-grads-dtype`), in bytes per element, and how the data-parallel group shards the
  /// training state (ZeRO stage; engine/README.md "Sharding"). Defaults: ZeRO-1, fp32 everywhere.
  struct Optimizer {
    /// 0: nothing sharded (all-reduce of grads); 1: optimizer states (Megatron's distributed
    /// optimizer); 2: and gradients, reduce-scattered in every micro-batch's backward; 3: and
    /// parameters, all-gathered before use (FSDP / ZeRO-3).
    int zero_stage = 1;
    /// ZeRO-3 only: when a unit's (layer, embedding, head) params are all-gathered. kPerUse before
    /// every forward and every backward of every micro-batch, freed after each (FSDP's
    /// reshard_after_forward, ZeRO-3, Megatron-FSDP); kPerMicroBatch before each micro-batch's
    /// forward only, kept until its backward (reshard_after_forward: false); kPerStep once, at the
    /// unit's first forward, kept for the step (FSDP2 under torch pipelining, which reshards only
    /// after the last backward). One unit is prefetched ahead of the one computing.
    enum class ParamGather { kPerUse, kPerMicroBatch, kPerStep } param_gather = ParamGather::kPerUse;
    /// ZeRO-2/3 only: kPerMicroBatch reduce-scatters each unit's grads in every micro-batch's
    /// backward into the sharded accumulator (ZeRO-2/3, Megatron-FSDP); kPerStep accumulates them
    /// unsharded and reduce-scatters in the last backward (FSDP2's set_requires_gradient_sync(False)
    /// for all but the last micro-batch, DDP's no_sync).
    enum class GradSync { kPerMicroBatch, kPerStep } grad_sync = GradSync::kPerMicroBatch;
    int main_params_bytes = 4;
    int exp_avg_bytes = 4;
    int exp_avg_sq_bytes = 4;
    int main_grads_bytes = 4;
    int state_bytes() const { return main_params_bytes + exp_avg_bytes + exp_avg_sq_bytes; }
  } optimizer;
  std::optional<CollectiveSpec> collective;
  /// Tokens processed by one step across the whole cluster.
  std::int64_t tokens_per_step() const;
  /// The selectively recomputed modules' names, in RecomputeModule order.
  std::vector<std::string> recomputed_module_names() const;
};

enum class NetworkModel { kFlow, kAnalytical };
const char* to_string(NetworkModel m);

struct NetworkSpec {
  NetworkModel model = NetworkModel::kFlow;
};

/// How the step is executed (not what is computed).
struct ExecutionSpec {
  int overlap_chunks = 1;               ///< dispatch/GEMM/combine pipelining degree (Tutel/FSMoE)
  int comm_sms = 0;                     ///< SMs an all-to-all kernel takes from compute (DeepEP ~20)
  std::string dispatch_dtype = "bf16";  ///< bf16 | fp8 (DeepEP fp8 dispatch)
  /// bf16 | fp8: element type of the linear layers' weights and GEMM inputs (attention
  /// projections, dense FFN, shared and routed experts). fp8: the GEMMs read 1-byte weights and
  /// run at the FP8 tensor-core peak (FP8 deployments: DeepGEMM W8A8, block scales); the router
  /// gate and the LM head stay bf16 (DeepSeek-V3 report section 3.3.1 keeps them in high
  /// precision). Memory footprints are not changed by it. In training it is FP8 training
  /// (Transformer Engine): the GEMM inputs are quantised per use and the weights once per step
  /// (StepBuilder's fp8_cast).
  std::string weights_dtype = "bf16";
  /// Host (CPU) time the framework spends issuing each simulated op (one module call: Python,
  /// dispatch, launch). Unset: kDefaultTrainHostOpCost for training (eager Megatron-Core), zero
  /// for inference (the serving runtimes replay CUDA graphs). Zero: an infinitely fast host.
  std::optional<sim::SimTime> host_op_cost;
  /// Bytes one SM copies per second inside a DeepEP-family dispatch/combine kernel
  /// (deepep_normal): with comm_sms SMs a kernel takes at least max over GPUs of (bytes it
  /// sends + bytes it receives) / (comm_sms x this). Unset: kDeepepSmCopyBandwidth.
  std::optional<double> sm_copy_bandwidth;
  /// Inference: SGLang's --enable-two-batch-overlap / DeepSeek's dual micro-batch overlap: each
  /// step's batch runs as two halves whose dispatch and combine overlap the other half's compute.
  bool two_batch_overlap = false;
  std::string profile;  ///< fitted kernel cost profile YAML ("" = catalog defaults)
  /// All-to-allv algorithm of dispatch and combine: direct (every rank pair is one flow) or
  /// hierarchical (NVLink to the same-rail GPU, then one exchange per rail: DeepEP's internode
  /// scheme, DeepSeek-V3 report section 3.2.2). Hierarchical needs EP groups of whole nodes (or
  /// inside one node, where it is the direct exchange).
  std::string all_to_all = "direct";
  /// Who moves the tokens of dispatch and combine (names from the runtimes):
  ///  nccl_a2a       Megatron-Core's alltoall dispatcher: one row per kept (token, expert) to the
  ///                 expert's rank, as an all-to-allv (`all_to_all` picks direct or hierarchical);
  ///  deepep_normal  DeepEP's normal kernels: one RDMA transfer per (token, destination node) to
  ///                 the same-index GPU there, NVLink forwarding with one row per (token, rank),
  ///                 the two stages pipelined (models::build_deepep_normal_matrices);
  ///  deepep_ll      DeepEP's low-latency kernels: one message per kept (token, expert) straight
  ///                 from the source GPU (no dedup, no forwarding); same-node peers over NVLink
  ///                 unless the node has no intra-node fabric (`intra_node.fabric: none`, DeepEP's
  ///                 NVSHMEM_DISABLE_P2P pure-RDMA mode).
  std::string dispatcher = "nccl_a2a";
  /// Hierarchical only: pipelining degree of its NVLink and rail phases (DeepEP overlaps them);
  /// 1 = the phases back to back. See hw::plan_all_to_allv.
  int all_to_all_chunks = 1;
  /// All-reduce algorithm (tensor-parallel activations; data-parallel gradients when the
  /// distributed optimizer is off): ring | tree (NCCL's two; see hardware/collectives.hpp).
  std::string all_reduce = "ring";
};

struct Scenario {
  std::string name;
  std::string file;
  std::uint64_t seed = 0;
  bool has_cluster = false;  ///< routing-only scenarios may omit the cluster
  hw::ClusterSpec cluster;
  bool has_model = false;  ///< false only for collective-only workloads without a model
  models::ModelSpec model;
  models::RoutingSpec routing;
  ParallelSpec parallel;
  WorkloadSpec workload;
  NetworkSpec network;
  ExecutionSpec execution;
  /// Non-fatal notes found while parsing, each "file:line:col: key: warning: ..." (printed on
  /// stderr by the CLI), e.g. a routing trace shorter than a step.
  std::vector<std::string> warnings;

  /// Routing groups of one step and tokens per group: by default the tokens of one data-
  /// parallel rank's micro-batch (as Megatron-Core and DeepSpeed route before dispatch).
  std::int64_t routing_groups() const;
  std::int64_t tokens_per_group() const;
};

struct LoadOptions {
  std::vector<std::string> overrides;  ///< "--set key.path=value", applied in order
  std::optional<std::uint64_t> seed;   ///< --seed replaces the scenario's seed
};

/// Parse and validate; throws config::ConfigError listing every problem.
Scenario parse_scenario(const config::Document& doc, std::optional<std::uint64_t> seed_override = std::nullopt);
/// Load a file, apply overrides, parse and validate.
Scenario load_scenario(const std::string& path, const LoadOptions& opts = {});

}  // namespace moesim::engine
