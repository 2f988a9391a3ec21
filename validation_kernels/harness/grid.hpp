// The sweep grid: which configurations the harness measures, their per-expert row counts, the
// order a time budget takes them in, and the GEMM self-test cases.
// Pure host code (no CUDA) so --dry-run and the tests can enumerate it on any machine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "validation_kernels/reference/routing_ref.hpp"

namespace moesim::vk {

/// splitmix64: tiny, seedable, identical on every platform (std:: distributions are not), so a
/// logged seed reproduces the same count vector anywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  /// Uniform in [0, 1).
  double uniform();
  /// Uniform integer in [0, n).
  uint64_t below(uint64_t n);
  /// Standard normal (Box-Muller).
  double normal();

 private:
  uint64_t state_;
};

/// Per-expert row-count distributions of the sweep.
enum class Distribution { kEqual, kMultinomial, kPowerLaw, kOneHot, kPartlyEmpty };
const char* to_string(Distribution d);

/// Row counts for `experts` experts holding `total_rows` rows in all.
/// param: power-law exponent alpha (kPowerLaw) or the fraction of empty experts (kPartlyEmpty).
std::vector<int64_t> make_counts(Distribution d, double param, int experts, int64_t total_rows, uint64_t seed);

/// kernel_family values of measurements.csv. The cost model names its families the same way
/// (models/cost: grouped_gemm, grouped_gemm_masked, dense_gemm, routing, attention_prefill,
/// attention_decode, elementwise).
enum class Family {
  kGroupedGemm,
  kGroupedGemmMasked,
  kDenseGemm,
  kRouting,
  kAttentionPrefill,
  kAttentionDecode,
  kElementwise,
};
const char* to_string(Family f);
inline constexpr int kFamilyCount = 7;

/// GEMM operand type. fp8 is e4m3 with DeepSeek-V3 / DeepGEMM-style block scales: one fp32 scale
/// per (row, 128 K-columns) of the activations and per (128 N-rows, 128 K-columns) of the weights.
enum class GemmDtype { kBf16, kFp8E4m3 };
const char* to_string(GemmDtype d);  ///< "bf16", "fp8_e4m3" (the dtype_in column)

/// An expert (or dense) GEMM shape out[m, N] = x[m, K] W[N, K]^T, named after its model layer.
struct GemmShape {
  const char* model;
  const char* layer;
  int64_t k;
  int64_t n;
};
/// DeepSeek-V3, Mixtral 8x7B and Qwen3-30B-A3B expert layers (CALIBRATION.md).
const std::vector<GemmShape>& gemm_shapes();
/// Dense layers (attention projections, dense FFN, LM head) of DeepSeek-V3, Mixtral 8x7B and
/// Llama 3 70B, from the models' published configurations.
const std::vector<GemmShape>& dense_shapes();

struct GemmConfig {
  GemmShape shape{};
  int experts_local = 1;
  Distribution distribution = Distribution::kEqual;
  double dist_param = 0;
  double m_target = 0;          ///< mean rows per expert the counts were drawn for (dense: M).
  std::vector<int64_t> counts;  ///< rows per expert (the masked variant clamps at capacity).
  int64_t capacity = 0;         ///< masked layout: rows allocated per expert; 0 for contiguous.
  GemmDtype dtype = GemmDtype::kBf16;
};

struct RoutingConfig {
  const char* model = "";
  int64_t tokens = 0;
  int experts = 0;
  int topk = 0;
  int64_t hidden = 0;
  moesim::vk::ref::GateKind gate = moesim::vk::ref::GateKind::kSoftmax;
  int num_groups = 1;
  int topk_group = 1;
  double capacity_factor = 1.25;
  int ranks = 8;
};

/// FlashAttention-style forward over [B, S, H, d] tensors (BSHD), GQA with H / H_kv query heads
/// per K/V head. Prefill: q_len = kv_len queries (causal or not). Decode: one query per sequence
/// against a kv_len cache.
struct AttentionConfig {
  const char* model = "";
  int64_t batch = 1;
  int64_t q_len = 1;
  int64_t kv_len = 1;
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 128;
  bool causal = true;
};
/// FLOPs and minimum bytes of an attention forward, the formulas of models/cost
/// (attention_flops / attention_bytes): 4·B·H·d·pairs with causal pairs q(kv−q) + q(q+1)/2;
/// bytes B·(2·q·H·d + 2·kv·H_kv·d)·2 (bf16).
double attention_flops(const AttentionConfig& a);
double attention_bytes(const AttentionConfig& a);

/// Memory-bound per-token kernels of an MoE layer.
enum class ElementwiseOp {
  kRmsNorm,     ///< y = x / rms(x) * w                      (in [T, H], out [T, H])
  kAddRmsNorm,  ///< r += x; y = r / rms(r) * w (fused residual add; r updated in place)
  kSwiglu,      ///< y = silu(g) * u over [T, 2H] = [g | u]  (out [T, H])
  kQuantFp8,    ///< per (token, 128 columns): s = amax/448, q = x/s as e4m3 (DeepSeek-V3 activations)
};
const char* to_string(ElementwiseOp op);  ///< the impl column: rmsnorm, add_rmsnorm, swiglu, quant_fp8_1x128
struct ElementwiseConfig {
  ElementwiseOp op = ElementwiseOp::kRmsNorm;
  const char* model = "";
  int64_t tokens = 0;
  int64_t hidden = 0;  ///< H (swiglu: the output width; its input is 2H)
};
/// Bytes read + written (the bytes_min column).
double elementwise_bytes(const ElementwiseConfig& e);

struct Config {
  int64_t config_id = 0;
  Family family = Family::kGroupedGemm;
  bool heldout = false;
  uint64_t seed = 0;  ///< counts and input data seed.
  GemmConfig gemm;
  RoutingConfig routing;
  AttentionConfig attention;
  ElementwiseConfig elementwise;
};

/// Whether a family's configurations carry a GEMM count vector (and a counts.csv row).
bool is_gemm(Family f);

/// Summary statistics of a count vector, as recorded in measurements.csv.
struct CountStats {
  int64_t m_min = 0, m_max = 0, total = 0, n_active = 0;
  double m_mean = 0, m_cv = 0;
};
CountStats count_stats(const std::vector<int64_t>& counts);

/// Tiles a grouped GEMM with BM x BN tiles schedules: sum_e ceil(m_e/BM) * ceil(N/BN).
int64_t gemm_tiles(const std::vector<int64_t>& counts, int64_t n, int bm, int bn);
/// Fewest bytes a grouped GEMM must move: active experts' weights + activations in + out.
double gemm_bytes_min(const GemmConfig& g, int bytes_in, int bytes_out);
/// FLOPs (2 rows K N) and bytes_min of any family's configuration.
double config_flops(const Config& c);
double config_bytes(const Config& c);

/// kTiny: a few small configurations of every family, for the CPU mock of the harness's test
/// (tests/mock_cuda.cpp); never a measurement grid.
enum class GridKind { kQuick, kFull, kTiny };

struct GridOptions {
  GridKind kind = GridKind::kQuick;
  uint64_t seed = 1;
  int heldout = 0;                               ///< random held-out grouped-GEMM configurations added.
  double max_weight_bytes = 8.0 * (1ull << 30);  ///< device memory the weight pool may use.
  int64_t max_rows = 65536;                      ///< total routed rows per GEMM configuration.
};

/// The configurations of a sweep, config_id = position in this list (before the runner orders it).
/// Families other than the bf16 grouped GEMM mark about 15% of their configurations held-out
/// (by a hash of the configuration's seed), so every family has unseen rows to be judged on.
std::vector<Config> build_grid(const GridOptions& options);

/// One line describing a configuration, for --dry-run and logs.
std::string describe(const Config& c);

/// Space-separated counts, the encoding of counts.csv.
std::string encode_counts(const std::vector<int64_t>& counts);

/// Implementations the runner interleaves for a configuration (cuBLAS ones are skipped at run
/// time when the library cannot be loaded; the sm_90a ones when the device is not cc 9.0).
std::vector<std::string> planned_impls(const Config& c);
/// Every implementation name any configuration can plan (for --skip-impl validation).
std::vector<std::string> all_impls();
/// GEMM implementations (the self-test covers each).
bool is_gemm_impl(const std::string& impl);

// ---- time budget --------------------------------------------------------------------------------

/// Rough device figures for planning a budget (not measurements: the runner rescales the
/// estimates by the ratio of measured to estimated time as it goes).
struct DeviceModel {
  double flops_per_s = 4e14;  ///< achieved bf16 tensor rate (fp8 counted at twice this)
  double bytes_per_s = 3e12;  ///< achieved HBM bandwidth
  double launch_s = 6e-6;
  double flush_s = 45e-6;      ///< one L2 flush between timed iterations (>= 128 MiB written)
  double per_config_s = 0.02;  ///< host work per configuration (allocation, CSV, checks' setup)
  int warmup = 25, iters = 50, batch = 100, batch_repeats = 10;
};
/// Estimated wall seconds for measuring a configuration with `impls` implementations.
double estimate_seconds(const Config& c, size_t impls, const DeviceModel& m);

/// The order a time budget takes the grid in, by information value: within each family a
/// farthest-point ordering over the configuration's log-scaled features (rows per expert, experts,
/// K, N, skew; T, E, k; batch, lengths, heads; op, T, H), starting from the configuration nearest
/// the family's centroid, so the first few points of a family already span its range and later
/// ones fill in; one held-out configuration after every five fitted ones; families interleaved by
/// stride scheduling on estimated time (weights: grouped bf16 0.26, fp8 0.14, masked 0.07,
/// dense 0.15, routing 0.08, prefill 0.09, decode 0.09, elementwise 0.12) so each family gets its
/// share of any budget. Deterministic. Returns indices into `grid`.
std::vector<size_t> information_order(const std::vector<Config>& grid, const DeviceModel& m);

/// Seeded random permutation (the order without a budget).
std::vector<size_t> random_order(size_t n, uint64_t seed);

// ---- GEMM self-test -------------------------------------------------------------------------------

/// A small GEMM problem checked in full (every output element, and that rows outside the
/// experts' ranges stay untouched) before any timing. Counts include an empty expert, a single
/// row, rows 64-127 of a tile (the second consumer warpgroup of the wgmma kernels), tiles
/// crossing experts, more tiles than SMs (the persistent loop wraps the smem ring) and, masked,
/// counts above the capacity (clamped).
struct SelfTestCase {
  std::string name;
  Family family = Family::kGroupedGemm;
  GemmDtype dtype = GemmDtype::kBf16;
  std::vector<int64_t> counts;
  int64_t n = 0, k = 0;
  int64_t capacity = 0;       ///< masked only
  bool cpu_reference = true;  ///< small enough for a double-precision CPU reference of every element
};
/// `tiny`: the same cases scaled down (the CPU mock runs them).
std::vector<SelfTestCase> selftest_cases(bool tiny = false);

}  // namespace moesim::vk
