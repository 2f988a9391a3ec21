// CPU reference for every MoE routing step the validation kernels implement.
//
// This file is the semantic contract between the CUDA kernels in validation_kernels/ and the
// simulator's router in models/: both are tested against these functions, so "what a drop is",
// "which slot a token lands in" and "what capacity means" are defined exactly once, here.
//
// Plain data only (std::vector, raw pointers with explicit sizes, C++17): the header is included
// from nvcc-compiled harness code as well as from the C++20 simulator.
#pragma once

#include <cstdint>
#include <vector>

namespace moesim::vk::ref {

/// How router logits become per-expert scores.
enum class GateKind {
  /// p_e = softmax(logits)_e; selection score = weight = p_e (Mixtral, Qwen3, DeepSeek-V2).
  kSoftmax,
  /// s_e = sigmoid(logit_e); selection uses s_e + bias_e, the weight is the un-biased s_e
  /// (DeepSeek-V3 auxiliary-loss-free balancing: the bias steers load, never the output).
  kSigmoidBias,
};

/// What happens to assignments beyond an expert's capacity.
enum class DropPolicy {
  /// Megatron-Core "position": per expert, assignments ordered by token index; the first C stay.
  kPosition,
  /// Megatron-Core "probs": per expert, the C assignments with the highest router weight stay;
  /// ties go to the lower token index.
  kProbs,
};

/// Sentinel capacity meaning "dropless": nothing is ever dropped.
inline constexpr int64_t kNoCapacityLimit = -1;

struct GateConfig {
  GateKind kind = GateKind::kSoftmax;
  int num_experts = 0;
  int topk = 1;
  /// Group-limited routing: experts split into num_groups equal contiguous groups; only the best
  /// topk_group groups may be chosen from. num_groups == 1 disables it.
  int num_groups = 1;
  int topk_group = 1;
  /// Divide the k weights by their sum (DeepSeek-V3 norm_topk_prob, Qwen3, Mixtral's softmax-after-topk).
  bool renormalize = false;
  /// Multiplies the final weights (DeepSeek-V3 routed_scaling_factor); 1 leaves them unchanged.
  double weight_scale = 1.0;
};

/// Top-k routing decision for T tokens. Slot j of token t lives at index t * topk + j; slots are
/// ordered by descending selection score, ties by lower expert index, so the order is deterministic.
struct Routing {
  int64_t tokens = 0;
  int topk = 0;
  std::vector<int32_t> expert;  ///< [T*k] expert id per slot; a token never repeats an expert.
  std::vector<float> weight;    ///< [T*k] combine weight per slot (after renormalisation/scale).
  std::vector<float> score;     ///< [T*k] selection score per slot (biased for kSigmoidBias).
};

/// Gating + (group-limited) top-k over logits[T * E] (row-major, one row per token): per token the
/// gate (softmax, or sigmoid) in double, then select_experts<double>.
/// bias may be null for kSoftmax; for kSigmoidBias a null bias means zero bias.
/// Computed in double and stored as float, so it is the accurate side of any GPU comparison.
Routing gate_topk(const float* logits, int64_t tokens, const GateConfig& config, const float* bias = nullptr);

/// Throws std::invalid_argument when `config` is not a valid gate (the checks of gate_topk).
void check_gate_config(const GateConfig& config);

/// The selection rule of gate_topk for one token, in the arithmetic T (float or double):
///  * key_e = score_e + bias_e for kSigmoidBias (a null bias adds 0), key_e = score_e for kSoftmax;
///  * group-limited routing (num_groups > 1): a group's score is the sum of its two largest keys
///    (kSigmoidBias, DeepSeek-V3) or its largest key (kSoftmax, DeepSeek-V2), formed in T; the
///    topk_group best groups stay, ties to the lower group index;
///  * the k largest keys among the experts that stay, in descending order, ties to the lower index;
///  * weight of slot j: weight[e_j] as double, divided by the sum of the k weights (summed in slot
///    order, in double) when renormalize, times weight_scale, stored as float; score of slot j:
///    key[e_j] as float.
/// score[E]: the gate's scores (kSoftmax: the probabilities or any positive multiple of them, such
/// as exp(logit); kSigmoidBias: sigmoid(logit)); weight[E]: the combine weights before
/// renormalisation (kSoftmax: the probabilities; kSigmoidBias: the same as score). expert, out_weight
/// and out_score receive topk entries. `config` must pass check_gate_config. gate_topk uses
/// T = double; the simulator's router (models/router) draws its scores in float and is checked
/// against select_experts<float> on those same scores, on every routing path it has
/// (tests/models/routing_oracle_test.cpp). Instantiated for float and double.
template <class T>
void select_experts(const T* score, const T* weight, const float* bias, const GateConfig& config, int32_t* expert,
                    float* out_weight, float* out_score);

/// Expert capacity for one routing group of `tokens` tokens:
///   C = max(min_capacity, ceil(capacity_factor * tokens * topk / num_experts)).
/// The product is formed in long double and a value within 1e-9 (relative) of an integer snaps to
/// that integer before the ceil: capacity_factor is a decimal the user typed, and its binary
/// representation error (1.1 is stored as 1.1000000000000000888) must not add a slot.
/// capacity_factor <= 0 means dropless and returns kNoCapacityLimit.
int64_t capacity_for(int64_t tokens, int topk, int num_experts, double capacity_factor, int64_t min_capacity = 0);

/// Tokens per expert over expert_ids[n]; ids outside [0, num_experts) (e.g. -1) are ignored.
std::vector<int64_t> histogram(const int32_t* expert_ids, int64_t n, int num_experts);
std::vector<int64_t> histogram(const std::vector<int32_t>& expert_ids, int num_experts);

/// Exclusive prefix sum of per-expert row counts, each first rounded up to a multiple of
/// block_rows (1 = no rounding), as a grouped GEMM that never mixes experts within one M-tile needs.
struct Scan {
  std::vector<int64_t> offset;        ///< [E+1]; offset[E] = total rows including padding.
  std::vector<int64_t> padded_count;  ///< [E] count rounded up to block_rows.
  int64_t padding_rows = 0;           ///< sum(padded_count - count): rows computed but discarded.
};
Scan exclusive_scan(const std::vector<int64_t>& counts, int64_t block_rows = 1);

/// Expert id of a slot that holds no assignment (GShard's skipped second expert): never routed,
/// never kept, and not counted by histogram.
inline constexpr int32_t kNoExpert = -1;

/// Result of capacity enforcement. Index conventions follow Routing (slot t * topk + j).
struct Capacity {
  int64_t capacity = kNoCapacityLimit;      ///< C used (kNoCapacityLimit = dropless).
  std::vector<int32_t> position_in_expert;  ///< [T*k] stable slot in the expert buffer, -1 if dropped.
  std::vector<uint8_t> keep;                ///< [T*k] 1 = kept.
  std::vector<int64_t> routed_count;        ///< [E] assignments routed before the clamp.
  std::vector<int64_t> kept_count;          ///< [E] min(routed, C).
  std::vector<uint8_t> fully_dropped;       ///< [T] 1 = the token lost all k assignments.
  int64_t dropped_assignments = 0;
  int64_t fully_dropped_tokens = 0;
};

/// Applies capacity C to a routing decision (expert ids in [0, E), or kNoExpert).
/// Under both policies a kept assignment's position_in_expert is its rank among the expert's *kept*
/// assignments in token-index order (Megatron permutes by the routing mask, which is token-ordered),
/// so positions are 0..kept_count-1 without holes. The policies differ only in which are kept.
Capacity enforce_capacity(const Routing& routing, int num_experts, int64_t capacity, DropPolicy policy);

/// Where each kept assignment's row lives in the permuted (expert-contiguous) buffer.
struct PermuteLayout {
  int num_experts = 0;
  std::vector<int64_t> expert_offset;  ///< [E+1] first row of each expert; [E] = total rows.
  std::vector<int64_t> row_of_slot;    ///< [T*k] row in the permuted buffer, -1 if dropped.
  std::vector<int64_t> token_of_row;   ///< [rows] source token, -1 for a padding row.
  int64_t total_rows = 0;
  int64_t padding_rows = 0;
};

/// Contiguous layout: expert e occupies rows [offset[e], offset[e+1]) with its kept assignments at
/// offset[e] + position_in_expert, then padding up to a multiple of block_rows.
PermuteLayout contiguous_layout(const Routing& routing, const Capacity& capacity, int num_experts,
                                int64_t block_rows = 1);

/// Masked layout [E, cap, H] (DeepGEMM / DeepEP low-latency): expert e owns rows [e*cap, (e+1)*cap);
/// rows beyond its kept count are padding. Requires every kept position < cap.
PermuteLayout masked_layout(const Routing& routing, const Capacity& capacity, int num_experts, int64_t cap);

/// Gathers x[T, H] into the permuted buffer [total_rows, H]; padding rows are zero.
std::vector<float> permute(const float* x, int64_t tokens, int64_t hidden, const PermuteLayout& layout);

/// out[t] = sum over kept slots j of weight[t,j] * expert_out[row_of_slot[t,j]], accumulated in
/// double in slot order. A fully dropped token gets zeros (the residual path adds x outside).
std::vector<float> unpermute_combine(const float* expert_out, int64_t hidden, const Routing& routing,
                                     const PermuteLayout& layout);

/// Owner of an expert when E experts are split contiguously over R ranks: rank r holds experts
/// [floor(r*E/R), floor((r+1)*E/R)). Equal blocks when R divides E.
int owner_rank(int expert, int num_experts, int ranks);

/// Local half of expert-parallel dispatch: the send buffer packed by destination rank.
struct RankPacking {
  int ranks = 0;
  std::vector<int64_t> rank_rows;      ///< [R] rows sent to each rank.
  std::vector<int64_t> rank_offset;    ///< [R+1] exclusive scan of rank_rows.
  std::vector<int64_t> token_of_row;   ///< [rows] source token of each packed row.
  std::vector<int32_t> expert_of_row;  ///< [rows] destination expert, -1 when dedup (one row, many experts).
  std::vector<float> packed;           ///< [rows, H].
};

/// dedup = false: one row per kept assignment, ordered (expert, position_in_expert) — Megatron's
///   all-to-all dispatcher, whose permuted buffer is already rank-contiguous.
/// dedup = true: one row per (token, destination rank) holding >= 1 kept assignment, ordered by token
///   index within a rank — DeepEP-style, where a token crosses the network once per rank.
RankPacking pack_by_rank(const float* x, int64_t tokens, int64_t hidden, const Routing& routing,
                         const Capacity& capacity, int num_experts, int ranks, bool dedup);

/// out[rows, N] = A[rows, K] * W_e[N, K]^T for the expert e owning each row under `expert_offset`
/// (contiguous layout) — the grouped GEMM the kernels compute, accumulated in double.
/// W is [E, N, K] (K contiguous, the "TN" layout tensor cores read without a transpose).
std::vector<float> grouped_gemm(const float* a, const float* w, const std::vector<int64_t>& expert_offset, int64_t n,
                                int64_t k);

}  // namespace moesim::vk::ref
