#pragma once
/// \file
/// Kernel cost models: the durations the executor charges for GEMMs, attention, routing kernels
/// and memory-bound elementwise ops.
///
/// Why a physical skeleton rather than a lookup table: the simulator is asked about shapes and
/// GPUs nobody measured, and only a model with a few physically meaningful parameters
/// (efficiency, effective bandwidth, fixed overhead, blend exponent, tile shape) extrapolates
/// sensibly. Every family therefore has defaults derived from the GPU's datasheet figures
/// (GpuParams) and can be replaced, per (family, implementation, dtype, tile), by parameters
/// fitted to measurements (CostProfile, see profile.hpp and calibrate.hpp).
///
/// This library depends only on sim/ and config/: the caller builds GpuParams from the hardware
/// catalog, so models/cost never needs hardware/.
///
/// All arithmetic is done in double precision on seconds and converted to simulated time exactly
/// once, with sim::duration_for (rounded up to the next whole picosecond), so a model result is a
/// deterministic function of its inputs.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sim/time.hpp"

namespace moesim::models::cost {

class CostProfile;
struct ProfileEntry;

/// Element types the models distinguish. Each has a tensor-core peak in GpuParams.
enum class DType { kFp8, kBf16, kFp16, kTf32, kFp32 };
/// "fp8" (also "e4m3", "e5m2", "fp8_e4m3"), "bf16", "fp16", "tf32", "fp32"; nullopt otherwise.
std::optional<DType> parse_dtype(std::string_view s);
const char* to_string(DType d);
/// Storage bytes per element (tf32 is stored as fp32).
double dtype_bytes(DType d);

/// What the cost models need to know about a GPU. Built by the caller from the hardware
/// catalog (datasheet figures); nothing here is measured.
struct GpuParams {
  std::string name;
  int sm_count = 0;
  /// The SM clock the peak FLOP/s figures below are quoted at (e.g. H100 SXM: 989.4 TFLOP/s
  /// bf16 dense = 132 SMs x 4096 FLOP/clk x 1.83 GHz). Used to rescale compute rates when a
  /// measurement or a profile ran at a different clock.
  double sm_clock_hz = 0;
  double peak_flops_fp8 = 0;   ///< dense (no sparsity), FLOP/s
  double peak_flops_bf16 = 0;  ///< dense; fp16 uses the same figure
  double peak_flops_tf32 = 0;
  double peak_flops_fp32 = 0;  ///< non-tensor-core fp32
  double hbm_bytes_per_s = 0;  ///< datasheet HBM bandwidth
  double l2_bytes = 0;
  sim::SimTime launch_overhead;  ///< empty-kernel launch cost, the default fixed overhead t0

  double peak_flops(DType d) const;
  /// Throws std::invalid_argument naming the first missing/invalid field.
  void validate() const;
};

/// Output tile of a GEMM kernel (BM rows x BN columns). It decides tile and wave quantisation.
struct TileConfig {
  int bm = 128;
  int bn = 128;
  /// "BM128_BN128"; the form used as profile key.
  std::string str() const;
  /// Reads "BM<n>" and "BN<n>" tokens from an impl_config string such as "BM128_BN128_BK32_S3";
  /// nullopt when either is missing or not positive.
  static std::optional<TileConfig> parse(std::string_view impl_config);
  friend bool operator==(const TileConfig&, const TileConfig&) = default;
};

/// Grouped GEMM out_e[m_e, N] = x_e[m_e, K] W_e[N, K]^T over the local experts, one persistent
/// kernel (contiguous layout; `masked` selects the [E, cap, K] decode layout family).
struct GroupedGemmShape {
  std::vector<std::int64_t> rows_per_expert;  ///< m_e >= 0, expert 0 first
  std::int64_t k = 0;
  std::int64_t n = 0;
  DType dtype = DType::kBf16;      ///< inputs and weights
  DType dtype_out = DType::kBf16;  ///< output
  std::optional<TileConfig> tile;  ///< nullopt: the profile's (or the default 128x128)
  std::string impl;                ///< profile implementation to use; empty = CostModel::Options
  bool masked = false;
};

/// Dense GEMM out[M, N] = A[M, K] B[K, N].
struct DenseGemmShape {
  std::int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBf16;
  DType dtype_out = DType::kBf16;
  std::optional<TileConfig> tile;
};

/// Flash-style attention forward (one kernel over all heads and the batch).
struct AttentionShape {
  enum class Phase { kPrefill, kDecode };
  Phase phase = Phase::kPrefill;
  std::int64_t batch = 1;
  std::int64_t q_len = 1;   ///< new query tokens per sequence (1 for decode)
  std::int64_t kv_len = 1;  ///< keys per sequence, including the new ones
  std::int64_t heads = 1;
  std::int64_t kv_heads = 1;  ///< GQA/MQA: fewer K/V heads than query heads
  std::int64_t head_dim = 128;
  bool causal = true;
  /// Context parallelism: the q_len queries are one rank's load-balanced 1/cp of a causal
  /// sequence of kv_len (chunks i and 2cp-1-i), so it computes 1/cp of the sequence's pairs.
  int context_shards = 1;
  DType dtype = DType::kBf16;
};

/// Routing-pipeline kernels (CALIBRATION.md: model them as t0 + bytes / BW_eff, never zero).
enum class RoutingKind { kGateTopk, kHistogramScan, kCapacity, kPermute, kUnpermuteCombine, kPackByRank };
/// The implementation name the harness records for a kind ("gate_topk", "histogram_scan",
/// "capacity_position", "permute", "unpermute_combine", "pack_by_rank").
const char* impl_name(RoutingKind k);

struct RoutingOp {
  RoutingKind kind = RoutingKind::kGateTopk;
  std::int64_t tokens = 0;   ///< T
  std::int64_t experts = 0;  ///< E
  std::int64_t topk = 1;     ///< k
  std::int64_t hidden = 0;   ///< hidden size (permute / combine move rows of this width)
  DType act_dtype = DType::kBf16;
  /// Override of the size fed to the model. 0 (normal): routing_bytes() for the defaults,
  /// harness_routing_size() for a fitted entry.
  double bytes = 0;
};
/// Minimum traffic of a routing kernel (see the table in README.md); used by the defaults.
double routing_bytes(const RoutingOp& op);
/// The size measure the validation harness records as bytes_min for EVERY routing kernel
/// (schema v1: tokens x hidden x 2). Fitted routing entries are a function of this measure,
/// so CostModel::routing() feeds it (not routing_bytes) to a fitted entry.
double harness_routing_size(const RoutingOp& op);

/// A memory-bound elementwise / reduction op (activation, residual add, norm, cast).
struct ElementwiseOp {
  ElementwiseOp(double bytes_rw = 0, std::string impl_name = {}) : bytes(bytes_rw), impl(std::move(impl_name)) {}
  double bytes = 0;  ///< read + written
  /// Fitted entry to use ("rmsnorm", "add_rmsnorm", "swiglu", "quant_fp8_1x128": the harness's
  /// impl names); empty: the first elementwise entry of the profile.
  std::string impl;
};

/// Parameters of one family skeleton. Not every family uses every field:
///   GEMM (dense, grouped):  eta, mem_eff, t0, p, sat_frac, tile
///   attention:              eta, mem_eff, t0, p
///   routing, elementwise:   mem_eff, t0
struct ModelParams {
  double eta = 0;       ///< achieved fraction of peak tensor FLOP/s on full waves
  double mem_eff = 0;   ///< achieved fraction of datasheet HBM bandwidth
  double t0_s = 0;      ///< fixed overhead per kernel, seconds
  double p = 0;         ///< blend exponent: T = t0 + (Tc^p + Tm^p)^(1/p); p -> inf is max()
  double sat_frac = 0;  ///< fraction of SMs that must be busy to reach mem_eff x HBM
  TileConfig tile;
  /// GEMM tile model (models/README.md, "GEMM tile model"); 0 in fitted profile entries, whose
  /// skeleton has no such terms. Latency floor of one K block (BK = 128 bytes of K) of a tile's
  /// main loop, SM clock cycles: the WGMMA issue -> wait -> promote round trip that small tiles
  /// cannot hide behind tensor-core work.
  double kblock_latency_cycles = 0;
  /// Per-output-tile prologue/epilogue (accumulator write-back through shared memory, TMA store,
  /// scheduler step), SM clock cycles; charged once per tile and wave.
  double tile_overhead_cycles = 0;
  /// The part of t0_s that is the host-side launch (in the charged duration, not in the kernel's
  /// device time, which profilers such as DeepGEMM's bench_kineto measure). 0 for fitted entries.
  double launch_s = 0;
  /// Choose the tile per problem (choose_gemm_tile) instead of using `tile`: the defaults do,
  /// fitted entries (measured with one tile) and explicit tiles do not.
  bool choose_tile = false;
};

/// The GEMM layout a tile is chosen for: DeepGEMM's normal (dense), contiguous grouped (rows of
/// every expert padded to the M block) and masked grouped (decode) kernels choose differently.
enum class GemmLayout { kDense, kContiguous, kMasked };

/// The tile configuration a library picks for one problem (see choose_gemm_tile).
struct TileChoice {
  TileConfig tile;
  double tiles = 0;  ///< output tiles over all experts
  double waves = 0;  ///< ceil(tiles / SMs)
  double sms = 0;    ///< SMs actually launched: ceil(tiles / waves) (DeepGEMM's num_min_sms)
};
/// Picks the output tile the way the libraries do for this GPU generation (models/README.md):
///  - GPUs with FP8 tensor cores (Hopper and later, WGMMA/UMMA: N any multiple of 8): DeepGEMM's
///    get_best_configs (deep_gemm/jit_kernels/gemm.py:72-120 @a9967bc): BM in {64, 128, 256}
///    (contiguous layout: 128 only), BN in {16, 24, ..., 128, 144, 160} (BM 256 only with
///    BN <= 128); fewest waves, then the fullest last wave, then the tie rules of that code.
///  - older GPUs (mma.sync, CUTLASS 2.x): the CUTLASS SM80 tile set (BM x BN in {64, 128, 256}^2,
///    BM x BN <= 128 x 256) by the same wave rule.
/// Cost: one pass over the experts per BM candidate.
TileChoice choose_gemm_tile(const std::vector<std::int64_t>& rows_per_expert, std::int64_t n, const GpuParams& gpu,
                            GemmLayout layout);
/// Elements of K per main-loop block: 128 bytes of K (the TMA 128-byte swizzle; DeepGEMM's
/// BLOCK_K = 128 for fp8, CUTLASS SM90 bf16 kernels use K = 64).
std::int64_t gemm_block_k(DType d);

/// The per-row quantities a GEMM cost depends on; computed once per shape (and once per
/// measurement row while fitting).
struct GemmFeatures {
  double tiles = 0;  ///< sum_e ceil(m_e/BM) * ceil(N/BN)
  double k = 0;
  double weight_bytes = 0;  ///< active experts x K x N x bytes(dtype)
  double act_bytes = 0;     ///< rows x (K x bytes(in) + N x bytes(out))
  double rows = 0;
  double active = 0;    ///< experts with m_e > 0
  double k_blocks = 0;  ///< ceil(K / gemm_block_k(in))
};
GemmFeatures gemm_features(const std::vector<std::int64_t>& rows_per_expert, std::int64_t k, std::int64_t n, DType in,
                           DType out, TileConfig tile);

/// The GEMM skeleton in seconds at SM clock `clock_hz`:
///   T_c = ceil(tiles / SMs) * (tile_overhead + max(2*BM*BN*K / (eta * F_SM), k_blocks * kblock_latency))
///         (F_SM per cycle; both cycle terms at `clock_hz`)
///   T_m = bytes / (mem_eff * HBM * min(1, min(tiles, SMs) / (sat_frac * SMs)))
///   T   = t0 + (T_c^p + T_m^p)^(1/p)
/// Zero rows cost t0 (the kernel is still launched).
double gemm_seconds(const GemmFeatures& f, const ModelParams& prm, const GpuParams& gpu, DType dtype, double clock_hz);
/// Every intermediate term of gemm_seconds (what `moesim cost` prints), in seconds and counts.
struct GemmTerms {
  double waves = 0;            ///< ceil(tiles / SMs)
  double busy_sms = 0;         ///< min(tiles, SMs)
  double tile_math_s = 0;      ///< one tile's main loop at eta x peak
  double tile_latency_s = 0;   ///< one tile's K-block latency floor (k_blocks x kblock_latency)
  double tile_overhead_s = 0;  ///< one tile's prologue/epilogue
  double compute_s = 0;        ///< T_c
  double bandwidth = 0;        ///< bytes/s the memory term assumes (mem_eff x HBM x saturation)
  double memory_s = 0;         ///< T_m
  double t0_s = 0;             ///< fixed overhead (launch_s + device-side fixed cost)
  double launch_s = 0;         ///< host launch part of t0 (not device time)
  double device_s = 0;         ///< total - launch: what a device profiler measures
  double total_s = 0;          ///< t0 + blend(T_c, T_m)
};
GemmTerms gemm_terms(const GemmFeatures& f, const ModelParams& prm, const GpuParams& gpu, DType dtype, double clock_hz);
/// Roofline blend for attention: t0 + ((flops/(eta*peak))^p + (bytes/(mem_eff*HBM))^p)^(1/p).
double roofline_seconds(double flops, double bytes, const ModelParams& prm, const GpuParams& gpu, DType dtype,
                        double clock_hz);
/// t0 + bytes / (mem_eff * HBM).
double bandwidth_seconds(double bytes, const ModelParams& prm, const GpuParams& gpu);

/// FLOPs and minimum bytes of an attention forward (see README.md for the formulas).
double attention_flops(const AttentionShape& s);
double attention_bytes(const AttentionShape& s);

/// Default (unfitted) parameters of each family, derived from GpuParams; the constants and
/// their sources are listed in cost_model.cpp and README.md.
ModelParams default_gemm_params(const GpuParams& gpu);
ModelParams default_attention_params(const GpuParams& gpu, AttentionShape::Phase phase);
ModelParams default_routing_params(const GpuParams& gpu, RoutingKind kind);
ModelParams default_elementwise_params(const GpuParams& gpu);

/// How CostModel picks profile entries and the clock it assumes.
struct CostModelOptions {
  /// Grouped-GEMM implementation looked up in the profile when a shape names none
  /// (e.g. "vk_wgmma"); empty: the first grouped_gemm entry for the dtype in profile order.
  std::string gemm_impl;
  /// Capacity kernel variant: "capacity_position" or "capacity_probs".
  std::string capacity_impl = "capacity_position";
  /// SM clock the predictions assume. 0: the profile's recorded median measurement clock
  /// when a profile is loaded, else GpuParams::sm_clock_hz.
  double sm_clock_hz = 0;
  /// Apply a profile entry's residual table (only ever inside its measured range).
  bool use_residual = true;
};

/// The interface the executor calls. Cheap to copy; holds no mutable state, so one instance
/// can be shared by every GPU of a simulation.
class CostModel {
 public:
  using Options = CostModelOptions;

  /// Default models only. Throws std::invalid_argument if gpu is incomplete.
  explicit CostModel(GpuParams gpu);
  CostModel(GpuParams gpu, Options options);
  /// Fitted entries replace the defaults where they exist. Throws std::invalid_argument if the
  /// profile was measured on a GPU with a different SM count.
  CostModel(GpuParams gpu, const CostProfile& profile, Options options = {});
  ~CostModel();
  CostModel(const CostModel&);
  CostModel& operator=(const CostModel&);

  sim::SimTime grouped_gemm(const GroupedGemmShape& s) const;
  sim::SimTime dense_gemm(const DenseGemmShape& s) const;
  sim::SimTime attention(const AttentionShape& s) const;
  sim::SimTime routing(const RoutingOp& op) const;
  sim::SimTime elementwise(const ElementwiseOp& op) const;

  /// The parameters grouped_gemm() would use for a shape, and whether they came from a fit.
  struct Resolved {
    ModelParams params;
    bool fitted = false;
    std::string source;  ///< "default" or "profile: grouped_gemm/vk_wgmma/bf16/BM128_BN128"
  };
  Resolved resolve_grouped_gemm(const GroupedGemmShape& s) const;
  Resolved resolve_dense_gemm(const DenseGemmShape& s) const;
  /// Every term of grouped_gemm() / dense_gemm() for a shape (the tile they use, chosen or
  /// fixed, is in params.tile of resolve_*); total_s equals their result before rounding.
  struct GemmBreakdown {
    Resolved resolved;
    TileChoice choice;  ///< the tile used (chosen, explicit or the profile's)
    GemmFeatures features;
    GemmTerms terms;
  };
  GemmBreakdown grouped_gemm_breakdown(const GroupedGemmShape& s) const;
  GemmBreakdown dense_gemm_breakdown(const DenseGemmShape& s) const;
  Resolved resolve_attention(const AttentionShape& s) const;

  const GpuParams& gpu() const { return gpu_; }
  double clock_hz() const { return clock_hz_; }

 private:
  const ProfileEntry* find(std::string_view family, std::string_view impl, DType dtype,
                           const std::optional<TileConfig>& tile) const;
  GpuParams gpu_;
  Options options_;
  double clock_hz_ = 0;
  std::vector<ProfileEntry> entries_;
};

/// Converts seconds (finite, >= 0) to simulated time: the one rounding rule (sim::duration_for).
sim::SimTime to_sim_time(double seconds);

}  // namespace moesim::models::cost
