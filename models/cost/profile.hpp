#pragma once
/// \file
/// A fitted cost profile: parameters per (family, implementation, dtype, tile) plus where they
/// came from and how well they fit. Written by `moesim calibrate`, named by scenarios.
///
/// Why store provenance and error in the same file: a profile without its run ids, git commit,
/// GPU and held-out error cannot be trusted or reproduced, and a reader should be able to tell
/// at a glance whether a fitted family met its accuracy target.

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "models/cost/cost_model.hpp"

namespace moesim::models::cost {

/// Error statistics of one fitted entry, in percent of the measured time.
struct FitStats {
  int points_fit = 0;      ///< rows used for fitting
  int points_heldout = 0;  ///< held-out rows evaluated (never fitted)
  double fit_rms_log = 0;  ///< RMS of log(pred/meas) on the fitted rows
  double fit_mape = 0;
  double heldout_mape = 0;  ///< only meaningful when points_heldout > 0
  double heldout_median_ape = 0;
  double heldout_p90_ape = 0;
};

/// Multiplicative correction exp(log_factor) for rows whose mean rows per active expert lies
/// in [m_lo, m_hi): the median fit residual of that bin. Applied only inside the measured range.
struct ResidualBin {
  double m_lo = 0;
  double m_hi = 0;
  double log_factor = 0;
  int points = 0;
};

struct ProfileEntry {
  std::string family;  ///< "grouped_gemm", "grouped_gemm_masked", "dense_gemm", "routing", ...
  std::string impl;    ///< "vk_mma_sync", "cublas_grouped", "gate_topk", ...
  DType dtype = DType::kBf16;
  bool has_tile = false;  ///< GEMM families only
  ModelParams params;
  FitStats fit;
  /// Measured range of the fitting rows (mean rows per active expert for GEMMs, bytes for
  /// bandwidth families). The residual table is never applied outside it.
  double range_lo = 0;
  double range_hi = 0;
  std::vector<ResidualBin> residual;

  /// "grouped_gemm/vk_mma_sync/bf16/BM128_BN128" (the tile only for GEMM families).
  std::string key() const;
  /// exp(log_factor) of the bin holding x, or 1 outside the measured range / table.
  double residual_factor(double x) const;
};

struct RunProvenance {
  std::string run_id;
  std::string git_commit;
};

class CostProfile {
 public:
  static constexpr int kFormatVersion = 1;

  std::string gpu_name;
  int sm_count = 0;
  /// Median SM clock of the fitting rows; predictions default to it (CostModel::Options).
  double clock_hz = 0;
  std::string source;  ///< the measurement directory as given to calibrate
  std::vector<RunProvenance> runs;
  int rows_read = 0;
  int rows_used = 0;
  int rows_skipped = 0;
  std::vector<std::string> notes;  ///< e.g. families that had too few points to fit
  std::vector<ProfileEntry> entries;

  const ProfileEntry* find(const std::string& key) const;
};

/// YAML text of a profile (deterministic: entries in the order given, numbers in shortest
/// round-trip form).
void write_profile(const CostProfile& p, std::ostream& out);
/// Writes to `path`; throws std::runtime_error if the file cannot be written.
void write_profile_file(const CostProfile& p, const std::string& path);
/// Reads a profile; every problem is reported as file:line:col: key: message in one
/// config::ConfigError (unknown keys, wrong format version, bad dtype, non-positive params).
CostProfile read_profile_file(const std::string& path);
CostProfile read_profile_string(const std::string& text, const std::string& name);

}  // namespace moesim::models::cost
