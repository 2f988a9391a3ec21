#pragma once
/// \file
/// Token-choice sampling (internal to models/router): the logit model's scores and the gate of
/// models/router.hpp, one routing group at a time. The generic loop lives in token_choice.cpp,
/// the 8- and 16-expert SIMD paths in small_e_*.cpp; they give the same bits.
///
/// Scores: per token, E uniforms from a LaneRng -> X_e = -ln u_e ~ Exp(1) -> s_e = w_e / X_e =
/// exp(logit_e) with logit_e = ln w_e + Gumbel (softmax: w = p; sigmoid: w = E p, and the score is
/// w / (w + X) = sigmoid(logit)). Gate: key_e = s_e (sigmoid with gate_bias: s_e + bias_e);
/// group-limited routing keeps the topk_group groups with the best group score (sigmoid: sum of the
/// two best keys; softmax: the best key); top-k of the keys in those groups, descending, ties to the
/// lower expert; weight = s_e / sum_f(s) (softmax) or s_e (sigmoid), divided by the sum of the k
/// weights (in double) when renormalize, times scaling_factor. This is the selection rule of
/// validation_kernels/reference (ref::select_experts), which tests/models/routing_oracle_test.cpp
/// applies to the same scores to check every path.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "models/router.hpp"
#include "models/router/random.hpp"

namespace moesim::models::detail {

/// What one layer's token-choice routing needs before its groups are routed: the per-expert
/// weights of the logit model and the candidate thresholds (computed once per layer).
struct TokenChoicePlan {
  std::vector<float> pf, bias;
  bool use_threshold = false;
  int cand_cap = 0;
  float tau = 0.0f;   ///< first try: few candidates (a second gather for about 1 token in 8)
  float tau2 = 0.0f;  ///< second try: more candidates (a full scan for about 1 token in 500)
};

TokenChoicePlan make_token_choice_plan(const RoutingSpec& spec, const std::vector<double>& p);

/// Routes group `g` (tokens, top_k, capacity and prob_sum[E] set; expert/weight sized T*k unless
/// fused_position) from the group stream `rng` (and `aux_rng` for GShard's coin flips).
/// fused_position: apply capacity with drop_policy position while routing (the result of
/// enforce_capacity) and keep no per-slot arrays.
void route_group_token_choice(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                              GroupRouting& g, bool fused_position);

/// Gate settings of `spec` as the samplers read them.
inline bool group_limited(const RoutingSpec& spec) { return spec.n_groups > 1 && spec.topk_group < spec.n_groups; }
inline bool biased_gate(const RoutingSpec& spec) {
  return spec.gate == GateFunction::kSigmoid && !spec.gate_bias.empty();
}

/// Tokens per block of the generic loop (the random numbers of a block are drawn at once, and the
/// router-probability sums are accumulated in float per block).
inline std::size_t token_block(int experts) {
  return std::max<std::size_t>(1, 2048 / static_cast<std::size_t>(experts));
}

/// Scores of the next nb tokens, s[b * E + e] for b < nb, from the next nb * E values of `lanes`
/// (drawn rounded up to a multiple of LaneRng::kLanes; the surplus is discarded). `bits` has room
/// for token_block(E) * E values rounded up likewise.
inline void draw_scores(LaneRng& lanes, const TokenChoicePlan& plan, bool sigmoid, std::size_t nb, std::uint32_t* bits,
                        float* s) {
  const std::size_t Eu = plan.pf.size();
  const float* pf = plan.pf.data();
  lanes.fill(bits, (nb * Eu + LaneRng::kLanes - 1) / LaneRng::kLanes * LaneRng::kLanes);
  for (std::size_t b = 0; b < nb; ++b) {
    const std::uint32_t* r = bits + b * Eu;
    float* sb = s + b * Eu;
    if (sigmoid) {
      for (std::size_t e = 0; e < Eu; ++e) sb[e] = pf[e] / (pf[e] + exp1_from_bits(r[e]));
    } else {
      for (std::size_t e = 0; e < Eu; ++e) sb[e] = pf[e] / exp1_from_bits(r[e]);
    }
  }
}

/// Sum in a fixed order with 8 partial sums (vectorisable, deterministic): the softmax
/// denominator (sigmoid: the router-probability normaliser).
inline float sum_f(const float* v, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += v[i + j];
  for (; i < n; ++i) acc[0] += v[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// The E = 8 / 16 SIMD paths (small_e_*.cpp): a softmax or unbiased sigmoid gate, no group-limited
/// routing. Same contract and bits as route_group_token_choice, which hands such groups to the
/// variant the CPU supports.
inline bool small_e_path(const RoutingSpec& spec) {
  return !group_limited(spec) && !biased_gate(spec) && (spec.experts == 8 || spec.experts == 16);
}
/// Baseline instruction set, 8 tokens per vector, E = 8 and E = 16.
void route_small_e_base8(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                         GroupRouting& g, bool fused_position);
void route_small_e_base16(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                          GroupRouting& g, bool fused_position);
/// AVX2, 8 tokens per vector, and AVX-512, 16 tokens per vector (both E); defined only where
/// targets.hpp defines MOESIM_ROUTER_X86_VARIANTS.
void route_small_e_avx2(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                        GroupRouting& g, bool fused_position);
void route_small_e_avx512(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                          GroupRouting& g, bool fused_position);

}  // namespace moesim::models::detail
