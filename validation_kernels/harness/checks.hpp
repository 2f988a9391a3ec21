// Host-side correctness checks shared by the runner and the CPU tests: output comparison with
// poison detection, the gate + top-k check with its near-tie rule, fp8 e4m3 decoding, sampling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "validation_kernels/reference/routing_ref.hpp"

namespace moesim::vk {

/// Element-wise and norm-wise comparison of an output against a reference.
struct CompareResult {
  int64_t checked = 0;
  int64_t nonfinite = 0;  ///< got is NaN/inf (a poisoned element the kernel never wrote reads as NaN)
  int64_t bad = 0;        ///< |got - ref| > rtol |ref| + atol_frac rms(ref)
  double rel_err = 0;     ///< ||got - ref|| / ||ref|| over the checked elements (inf with any nonfinite)
  double max_abs_err = 0;
  bool ok(double rel_tol) const { return checked > 0 && nonfinite == 0 && bad == 0 && rel_err <= rel_tol; }
};

/// Tolerances for a bf16 output of an fp32-accumulated kernel: the output rounding alone is up to
/// 2^-9 relative, so rtol = 2^-7 leaves a factor 4; atol covers cancellation near zero.
struct Tolerance {
  double rel_norm = 1e-2;
  double rtol = 1.0 / 128;
  double atol_frac = 2e-2;
};

CompareResult compare_outputs(const std::vector<double>& ref, const std::vector<float>& got, const Tolerance& tol);

/// The bf16 pattern the runner poisons outputs with (0xFFFF, a NaN): an element still holding it
/// was never written.
inline constexpr uint16_t kBf16Poison = 0xFFFF;
float bf16_bits_to_float(uint16_t bits);
/// Round-to-nearest-even float -> bf16 bits (as __float2bfloat16_rn; NaN stays NaN).
uint16_t float_to_bf16_bits(float f);

/// fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, S.1111.111 is NaN, max 448) to float.
float e4m3_to_float(uint8_t bits);

/// Result of checking a gate + top-k kernel against ref::gate_topk on a set of tokens.
struct GateCheck {
  bool ok = true;
  int64_t tokens_checked = 0;
  int64_t tolerated_swaps = 0;  ///< slots whose expert differs from the reference on a near-tie
  double max_weight_err = 0;
  double max_score_err = 0;
  std::string problem;  ///< first failure, for the notes column
};

/// Checks the kernel's (expert, weight, score) per slot for `tokens` (indices into [0, T)).
/// A slot whose expert differs from the reference is accepted only on a near-tie: the kernel's
/// score equals the reference score of that slot within score_tol AND is the true score of the
/// expert it chose. Such a token's weights are then compared with the weights recomputed from
/// the kernel's own choice (softmax probabilities or un-biased sigmoids of the chosen experts,
/// renormalised over them): with sigmoid + bias two tied experts can carry weights ~1e-2 apart,
/// so the reference's weights for its choice would fail a correct kernel.
GateCheck check_gate_topk(const float* logits, const float* bias, int64_t tokens_total, const ref::GateConfig& cfg,
                          const std::vector<int64_t>& tokens, const int32_t* got_expert, const float* got_weight,
                          const float* got_score, double score_tol = 1e-5, double weight_tol = 1e-4);

/// k sorted distinct indices of [0, n) drawn with a seeded generator; always holds 0 and n-1 when
/// k >= 2; all of [0, n) when k >= n.
std::vector<int64_t> sample_indices(int64_t n, int64_t k, uint64_t seed);

}  // namespace moesim::vk
