#pragma once
/// \file
/// Kernel durations the step builder charges, behind a small interface.
///
/// Why an interface: the step graph only needs "how long does this kernel take on one GPU";
/// the calibrated cost model (models/cost) and a quick roofline both answer that. The builder
/// never computes a duration itself, so swapping the model changes no graph code.
///
/// Shapes follow cuBLAS/CUTLASS naming: a GEMM multiplies [M x K] by [K x N]. A grouped GEMM
/// runs one such product per expert with its own M (its routed rows) and shared K, N.

#include <cstdint>
#include <vector>

#include "sim/time.hpp"

namespace moesim::engine {

/// One attention kernel call (flash-style: scores never materialised in HBM).
struct AttentionShape {
  std::int64_t batch = 1;   ///< sequences
  std::int64_t q_len = 1;   ///< query tokens per sequence (1 in decode)
  std::int64_t kv_len = 1;  ///< key/value tokens per sequence (context in decode)
  std::int64_t heads = 1;   ///< query heads on this GPU (after TP split)
  std::int64_t qk_dim = 0;  ///< per-head query/key dimension
  std::int64_t v_dim = 0;   ///< per-head value dimension
  bool causal = true;       ///< prefill/train: causal mask; decode: attends to the whole cache
  /// Context parallelism: the q_len queries are this rank's load-balanced share (chunks i and
  /// 2cp-1-i of 2cp) of a causal sequence of kv_len, so it computes 1/cp of its pairs.
  int context_shards = 1;
  /// Bytes of K/V read per kv token per sequence (all kv heads on this GPU): the KV-cache
  /// read that makes decode memory-bound. MLA caches the latent, so this is not 2*kv_heads*d.
  std::int64_t kv_bytes_per_token = 0;
  std::int64_t bytes_per_elem = 2;
};

/// Query-key pairs actually computed: q_len*kv_len, or the causal lower triangle (with the
/// query block aligned to the end of the kv sequence), or with context_shards > 1 the rank's
/// 1/cp of the whole sequence's triangle.
double attention_pairs(const AttentionShape& a);
/// Forward FLOPs: 2 * pairs * heads * (qk_dim + v_dim) (QK^T and PV).
double attention_flops(const AttentionShape& a);
/// Forward HBM bytes: Q and O once, K/V once per sequence (flash attention reads each tile
/// of K/V once per query block; one block in decode).
double attention_bytes(const AttentionShape& a);

/// Kernel durations on one GPU at full SM availability (the executor applies SM sharing).
class ComputeCosts {
 public:
  virtual ~ComputeCosts() = default;
  /// C[M x N] = A[M x K] * B[K x N].
  virtual sim::SimTime dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const = 0;
  /// The LM head GEMM (kept in high precision when the linear layers run in fp8); default: as dense_gemm.
  virtual sim::SimTime head_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const { return dense_gemm(m, n, k); }
  /// One kernel computing rows[e] x K times K x N for every local expert e (forward and dgrad).
  virtual sim::SimTime grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const = 0;
  /// Weight gradient of a grouped GEMM: per expert [K x rows[e]] * [rows[e] x N] (reduction over
  /// the routed rows, output tiles K x N per expert with rows[e] > 0).
  virtual sim::SimTime grouped_gemm_wgrad(const std::vector<std::int64_t>& rows, std::int64_t k,
                                          std::int64_t n) const = 0;
  /// Flash attention forward; backward is charged by the builder as 2.5x (recomputes P).
  virtual sim::SimTime attention(const AttentionShape& a) const = 0;
  /// Router: gate GEMM [tokens x hidden] * [hidden x experts] plus score + top-k pass.
  virtual sim::SimTime router_topk(std::int64_t tokens, std::int64_t hidden, int experts, int top_k) const = 0;
  /// Gather token rows into expert order (read + write of rows * row_bytes).
  virtual sim::SimTime permute(std::int64_t rows, std::int64_t row_bytes) const = 0;
  /// Scatter expert outputs back and sum the k weighted copies per token.
  virtual sim::SimTime unpermute(std::int64_t rows, std::int64_t row_bytes) const = 0;
  /// Memory-bound kernel moving `bytes` through HBM (norms, activations, optimizer step).
  virtual sim::SimTime elementwise(double bytes) const = 0;
};

/// The few numbers a roofline needs. Efficiencies are the fraction of peak that well-tuned
/// kernels sustain on large shapes (see CALIBRATION.md; the calibrated model replaces them).
struct GpuRoofline {
  double peak_flops_bf16 = 0;  ///< dense FLOP/s
  double hbm_bytes_per_s = 0;
  int sm_count = 0;
  sim::SimTime launch_overhead{};
  double compute_efficiency = 0.7;
  double memory_efficiency = 0.85;
  /// H100 SXM5 datasheet: 989.4 dense BF16 TFLOP/s, 3.35 TB/s HBM3, 132 SMs; ~4 us launch.
  static GpuRoofline h100_sxm();
};

/// Roofline with CUTLASS-like 128x128 output tiles and wave quantisation:
///   tiles = sum_e ceil(m_e/128) * ceil(N/128), waves = ceil(tiles / SMs),
///   T = max(waves * tile_flops / (eta * peak / SMs), bytes / (BW * eff)) + launch.
/// So a 129-row expert costs two row tiles, and 133 tiles on 132 SMs cost two waves.
class RooflineCosts : public ComputeCosts {
 public:
  static constexpr std::int64_t kTile = 128;
  explicit RooflineCosts(GpuRoofline g);
  sim::SimTime dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const override;
  sim::SimTime grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const override;
  sim::SimTime grouped_gemm_wgrad(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const override;
  sim::SimTime attention(const AttentionShape& a) const override;
  sim::SimTime router_topk(std::int64_t tokens, std::int64_t hidden, int experts, int top_k) const override;
  sim::SimTime permute(std::int64_t rows, std::int64_t row_bytes) const override;
  sim::SimTime unpermute(std::int64_t rows, std::int64_t row_bytes) const override;
  sim::SimTime elementwise(double bytes) const override;
  const GpuRoofline& gpu() const { return g_; }

 private:
  /// max(compute, memory) + launch; `tile_work` is FLOPs already padded to whole waves.
  sim::SimTime roof(double padded_flops, double bytes) const;
  GpuRoofline g_;
};

}  // namespace moesim::engine
