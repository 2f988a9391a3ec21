#pragma once
/// \file
/// One kernel asked of the cost models directly, outside any step: `moesim cost ...` and the
/// kernel points of the validation matrix (`moesim fidelity`) both go through here, so a
/// published kernel figure is compared with exactly what a user can query.
///
/// A query is read from a YAML map (the validation matrix's `kernel:` block, or the map the CLI
/// builds from its flags), with located errors:
///
///   op: gemm | grouped_gemm | attention
///   gpu: h800                   # catalog name (moesim describe gpus)
///   dtype: fp8                  # inputs and weights: fp8 | bf16 | fp16 | tf32 | fp32
///   out_dtype: bf16             # GEMM output (default bf16)
///   tile: BM128_BN128           # optional GEMM tile (default: the cost model's)
///   profile: FILE.yaml          # optional fitted profile (default: catalog-derived defaults)
///   # gemm:          m, n, k
///   # grouped_gemm:  n, k and either groups + m (rows per group, equal) or rows: [m_0, m_1, ...];
///   #                layout: contiguous | masked
///   # attention:     phase: prefill | decode, batch, q_len, kv_len (default q_len), heads,
///   #                kv_heads (default heads), head_dim, causal (default true for prefill)

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "models/cost/cost_model.hpp"

namespace moesim::engine {

enum class KernelOp { kGemm, kGroupedGemm, kAttention };
const char* to_string(KernelOp op);

struct KernelQuery {
  KernelOp op = KernelOp::kGemm;
  std::string gpu;
  models::cost::DType dtype = models::cost::DType::kBf16;
  models::cost::DType out_dtype = models::cost::DType::kBf16;
  std::optional<models::cost::TileConfig> tile;
  std::string profile;  ///< "" = defaults
  // GEMM (dense and grouped)
  std::int64_t m = 0, n = 0, k = 0;
  std::vector<std::int64_t> rows;  ///< grouped: rows per expert
  bool masked = false;
  // attention
  models::cost::AttentionShape attention;
};

/// One printed term of a prediction (name, value, unit), in the order the model computes them.
struct KernelTerm {
  std::string name;
  double value = 0;
  std::string unit;
};

struct KernelPrediction {
  double seconds = 0;  ///< the duration the simulator would charge (rounded to whole ps)
  /// The kernel's time on the device, as a profiler measures it: `seconds` less the host launch
  /// part of the fixed cost (GEMMs with the default model; attention: equal to `seconds`).
  double device_seconds = 0;
  double flops = 0;           ///< useful FLOPs of the kernel (2 M N K; attention: 4 x pairs x heads x d)
  double bytes = 0;           ///< minimum HBM traffic the model charges
  std::string params_source;  ///< "default" or the profile entry
  std::vector<KernelTerm> terms;
  double tflops() const { return seconds > 0 ? flops / seconds / 1e12 : 0; }
};

/// Reads a query map; problems go to the node's diagnostics (the caller throws).
KernelQuery read_kernel_query(const config::Node& n);
/// Throws std::invalid_argument for a GPU the cost models cannot use (no tensor_clock) and
/// config::ConfigError for an unknown GPU.
KernelPrediction predict_kernel(const KernelQuery& q);

}  // namespace moesim::engine
