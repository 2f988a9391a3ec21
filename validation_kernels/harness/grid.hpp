// The sweep grid: which configurations the harness measures, and their per-expert row counts.
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

enum class Family { kGroupedGemm, kGroupedGemmMasked, kRouting };
const char* to_string(Family f);

/// An expert GEMM shape out[m, N] = x[m, K] W[N, K]^T, named after the model layer it comes from.
struct GemmShape {
  const char* model;
  const char* layer;
  int64_t k;
  int64_t n;
};
/// DeepSeek-V3, Mixtral 8x7B and Qwen3-30B-A3B expert layers (CALIBRATION.md).
const std::vector<GemmShape>& gemm_shapes();

struct GemmConfig {
  GemmShape shape{};
  int experts_local = 1;
  Distribution distribution = Distribution::kEqual;
  double dist_param = 0;
  double m_target = 0;          ///< mean rows per expert the counts were drawn for.
  std::vector<int64_t> counts;  ///< rows per expert (the masked variant clamps at capacity).
  int64_t capacity = 0;         ///< masked layout: rows allocated per expert; 0 for contiguous.
  std::string dtype = "bf16";
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

struct Config {
  int64_t config_id = 0;
  Family family = Family::kGroupedGemm;
  bool heldout = false;
  uint64_t seed = 0;  ///< counts and input data seed.
  GemmConfig gemm;
  RoutingConfig routing;
};

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

enum class GridKind { kQuick, kFull };

struct GridOptions {
  GridKind kind = GridKind::kQuick;
  uint64_t seed = 1;
  int heldout = 0;                               ///< random held-out GEMM configurations added.
  double max_weight_bytes = 8.0 * (1ull << 30);  ///< device memory the weight pool may use.
  int64_t max_rows = 65536;                      ///< total routed rows per GEMM configuration.
};

/// The configurations of a sweep, config_id = position in this list (before the runner shuffles).
std::vector<Config> build_grid(const GridOptions& options);

/// One line describing a configuration, for --dry-run and logs.
std::string describe(const Config& c);

/// Space-separated counts, the encoding of counts.csv.
std::string encode_counts(const std::vector<int64_t>& counts);

}  // namespace moesim::vk

namespace moesim::vk {
/// Implementations the runner interleaves for a family (cuBLAS ones are skipped at run time when
/// the library cannot be loaded; the Hopper ones when the device is not sm_90).
std::vector<std::string> planned_impls(Family f);
}  // namespace moesim::vk
