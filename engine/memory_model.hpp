#pragma once
/// \file
/// Rank layout, per-layer parameter split, micro-batch shapes and the per-GPU memory estimate.
///
/// These are shared by the step builder (which needs the same layout and shapes to emit ops)
/// and the memory report, so that the two can never disagree about who holds what.
///
/// Rank layout (Megatron-Core order, TP fastest): global = ((stage * dp) + dp_idx) * tp + tp_idx.
/// Inside a stage, local = dp_idx * tp + tp_idx; EP groups are consecutive blocks of `ep` local
/// ranks, so ep must divide dp * tp. Layers split over the (virtual) stages as pipeline.hpp says:
/// evenly, the remainder going to the first stages (layers 0..9 over 4 stages: 3, 3, 2, 2), or
/// as a pipeline_layout gives them.
///
/// Memory (per GPU, bytes; training uses Megatron-Core mixed precision):
///   weights    = local params * bytes_per_param
///   grads      = local params * grad_bytes (fp32 main-grad buffer by default)
///   optimizer  = local params * optimizer_state_bytes (12: fp32 master + Adam m, v; Megatron's
///                precision-aware optimizer with bf16 moments: 8)
///   Sharding (zero_stage) divides by the shard group: dense params over dp, expert params over
///   the expert-data-parallel group (dp * tp / ep ranks). ZeRO-1 shards the optimizer states;
///   ZeRO-2 also the grads (grad_sync per_micro_batch: plus one unit's unsharded grads being
///   reduce-scattered; per_step: the whole stage's grads accumulate unsharded, each unit's
///   shard replacing them in the last backward); ZeRO-3 also the weights (param_gather
///   per_use: plus two units unsharded, the one computing and the one prefetched;
///   per_micro_batch or per_step: the whole stage unsharded, kept from its forward, beside the
///   shards). A unit is one layer, the embedding or the LM head (FSDP wraps each as one
///   module); params whose shard group is one rank are held once, whole.
///   activations= stashed forward chunks (pipeline_inflight_chunks: 1F1B min(pp - stage,
///                micro_batches); interleaved more, each 1/vpp of the stage) * per-layer bytes,
///                less what selective recomputation re-creates; with full recompute only each
///                layer's input is stashed, plus one layer's full working set
///   kv_cache   = inference only: sequences per DP rank * tokens * layers * bytes per token
///   comm       = all-to-all send/recv buffers of one MoE layer (dispatch + combine)
/// The peak is the sum (everything above is live at the start of the first backward).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/scenario.hpp"
#include "models/placement.hpp"

namespace moesim::engine {

using ParamGather = WorkloadSpec::Optimizer::ParamGather;
using GradSync = WorkloadSpec::Optimizer::GradSync;

struct RankLayout {
  /// dp counts data- and context-parallel ranks together (ParallelSpec::dp_cp): CP ranks sit
  /// inside the DP ones, so CP group (d, t) of a stage is dp indices d*cp .. d*cp+cp-1 at TP index t.
  int dp = 1, tp = 1, ep = 1, pp = 1, cp = 1;
  explicit RankLayout(const ParallelSpec& p) : dp(p.dp_cp()), tp(p.tp), ep(p.ep), pp(p.pp), cp(p.cp) {}
  int world() const { return dp * tp * pp; }
  int stage_size() const { return dp * tp; }
  int global(int stage, int dp_idx, int tp_idx) const { return (stage * dp + dp_idx) * tp + tp_idx; }
  int global_of_local(int stage, int local) const { return stage * stage_size() + local; }
  int ep_groups_per_stage() const { return stage_size() / ep; }
  int expert_dp() const { return stage_size() / ep; }  ///< ranks holding the same experts, per stage
};

/// Parameters of one layer, split by how they are sharded.
struct LayerParams {
  std::int64_t attention = 0;       ///< TP-sharded
  std::int64_t norms = 0;           ///< replicated (counted per GPU)
  std::int64_t router = 0;          ///< replicated over TP
  std::int64_t dense_ffn = 0;       ///< TP-sharded
  std::int64_t shared_experts = 0;  ///< TP-sharded
  std::int64_t per_expert = 0;      ///< one routed expert (EP-sharded, whole experts)
  int experts = 0;                  ///< routed experts in this layer (0 for dense layers)
  /// Dense (non-expert) params held by one GPU with TP width tp.
  std::int64_t dense_local(int tp) const { return (attention + dense_ffn + shared_experts) / tp + norms + router; }
};
/// Exact for decoder-only models (per-layer share of count_params); encoder-decoder decoder
/// layers' cross-attention is averaged into every layer (a simplification).
LayerParams layer_params(const models::ModelSpec& m, int layer);

/// Token shapes of one micro-batch on one data-parallel (and, with cp, context-parallel) rank.
struct MicroBatchShape {
  int micro_batches = 1;        ///< pipeline micro-batches (1 for inference)
  std::int64_t tokens = 0;      ///< tokens per DP rank per micro-batch (attention input)
  std::int64_t seqs = 1;        ///< sequences in those tokens
  std::int64_t q_len = 0;       ///< query tokens per sequence
  std::int64_t kv_len = 0;      ///< keys per sequence (context + 1 in decode)
  int context_shards = 1;       ///< cp: q_len is this rank's load-balanced 1/cp of a causal kv_len
  std::int64_t moe_tokens = 0;  ///< tokens one GPU routes: tokens / tp (sequence-parallel split)
  bool causal = true;
  bool train = false;
};
/// Throws std::invalid_argument when tokens do not split over dp, micro-batches and tp.
MicroBatchShape micro_batch_shape(const Scenario& s);

struct MemoryOptions {
  double capacity_bytes = 80.0 * 1024 * 1024 * 1024;  ///< per GPU (H100 80 GiB by default)
  int grad_bytes = 4;                                 ///< fp32 main grads (Megatron-Core default)
  int zero_stage = 1;                                 ///< 0..3: what the data-parallel group shards
  ParamGather param_gather = ParamGather::kPerUse;    ///< ZeRO-3: when params are gathered
  GradSync grad_sync = GradSync::kPerMicroBatch;      ///< ZeRO-2/3: when grads are reduced
  int optimizer_state_bytes = 12;                     ///< fp32 master + Adam m, v (precision-aware: less)
  models::WireFormat dispatch_format = models::WireFormat::kBf16;
};

struct StageMemory {
  int stage = 0;
  double weights = 0, grads = 0, optimizer = 0, activations = 0, kv_cache = 0, comm_buffers = 0;
  double activations_no_recompute = 0;  ///< what activations would be without recomputation
  double activations_recompute = 0;     ///< ... and with it
  double total() const { return weights + grads + optimizer + activations + kv_cache + comm_buffers; }
};

struct MemoryEstimate {
  std::vector<StageMemory> stages;  ///< every GPU of a stage holds the same (EP shards are equal)
  double peak_bytes = 0;
  int peak_stage = 0;
  double capacity_bytes = 0;
  bool fits = false;
};

MemoryEstimate estimate_memory(const Scenario& s, const MemoryOptions& opt);

}  // namespace moesim::engine
