#pragma once
/// \file
/// `moesim calibrate` and `moesim validate-model`: read one measurement run directory (the
/// validation_kernels CSV schema, version 1), fit each kernel family by least squares on log
/// time, evaluate on the held-out rows, and produce a CostProfile plus a human report.
///
/// Why held-out rows are never fitted: the accuracy targets (grouped GEMM MAPE <= 5%,
/// P90 <= 10%; routing MAPE <= 10%) are claims about prediction, which only unseen rows test.
/// Bad input (missing columns, wrong schema_version, mixed GPUs, too few points, nothing left
/// to fit) is a config::ConfigError located at file:line:col naming the column.

#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "models/cost/cost_model.hpp"
#include "models/cost/profile.hpp"

namespace moesim::models::cost {

/// Measurement schema versions this reader accepts (validation_kernels/harness/schema.hpp):
/// 2 added columns and statuses; every column read here means the same in 1 and 2.
inline constexpr int kMeasurementSchemaVersion = 2;
inline constexpr int kMinMeasurementSchemaVersion = 1;

/// One run of the harness (a row of runs.csv).
struct RunInfo {
  std::string run_id;
  std::string git_commit;
  std::string gpu_name;
  int sm_count = 0;
  double sm_clock_probed_mhz = 0;
  double hbm_gbps_probed = 0;  ///< 0 when the column is absent or empty
  double hbm_bytes = 0;        ///< device memory the runtime reported; 0 when absent
  int line = 0;
};

/// What runs.csv says about the GPU (first row), for choosing and checking the catalog GPU.
struct RunGpu {
  std::string file;
  int line = 0;
  std::string gpu_name;  ///< cudaDeviceProp::name, e.g. "NVIDIA H200"
  int sm_count = 0;
  double hbm_bytes = 0;
  double hbm_gbps_probed = 0;
};
/// Reads the first row of DIR/runs.csv (located ConfigError when missing or malformed).
RunGpu read_run_gpu(const std::string& run_dir);

/// A catalog GPU as the matcher sees it (the CLI fills these from the hardware catalog).
struct GpuCandidate {
  std::string key;  ///< catalog name, e.g. "h200"
  int sm_count = 0;
  double hbm_bytes = 0;
};
/// The catalog GPU a run was measured on: candidates whose key starts with the model token of
/// the device name ("NVIDIA H200" -> "h200", "NVIDIA H100 80GB HBM3" -> "h100"), the same SM count
/// and device memory within 15% of the catalog capacity (the runtime reports a little more or
/// less than the marketing figure: an H200's "141GB" shows as 143,771 MiB). Returns the key, or an
/// empty string with `why` explaining what matched (none, or several).
std::string match_gpu(const RunGpu& run, const std::vector<GpuCandidate>& candidates, std::string* why);

/// One usable measurement row (status ok, selected l2_mode and timing method).
struct Measurement {
  std::string file;
  int line = 0;
  std::string run_id;
  std::int64_t config_id = 0;
  bool heldout = false;
  std::string family;
  std::string impl;
  std::string impl_config;
  DType dtype_in = DType::kBf16;
  DType dtype_out = DType::kBf16;
  std::int64_t k = 0;
  std::int64_t n = 0;
  double bytes_min = 0;
  double flops = 0;                  ///< attention rows (roofline fit)
  double time_s = 0;                 ///< time_us_median converted to seconds
  double clock_hz = 0;               ///< mean of the before/after readings, else the run's probed clock
  std::vector<std::int64_t> counts;  ///< GEMM families: per-expert rows from counts.csv
};

struct MeasurementSet {
  std::string dir;
  std::vector<RunInfo> runs;
  std::vector<Measurement> rows;
  int rows_read = 0;
  /// Rows not used, by reason ("status=failed", "l2_mode=warm", "clock drift", ...).
  std::map<std::string, int> skipped;
};

struct CalibrateOptions {
  /// GPU datasheet figures (from the hardware catalog); required. Its sm_count must match the
  /// runs' recorded sm_count.
  GpuParams gpu;
  /// Rows with these values are fitted; others are skipped and counted (CALIBRATION.md: fit
  /// cold-L2, per-iteration-event rows by default).
  std::string l2_mode = "cold";
  std::string timing_method = "events_cold_l2";
  bool skip_clock_drift = true;  ///< skip rows whose clock_drift_flag is set
  /// A (family, impl, dtype, tile) group needs at least this many fitting rows per fitted
  /// parameter.
  int min_points_per_param = 4;
  /// true: a group with too few points is an error; false: it is left unfitted and listed in
  /// the report and the profile notes. Either way, nothing fitted at all is an error.
  bool strict = false;
  bool residual_table = true;  ///< build residual tables (used only inside the measured range)
};

/// One evaluated point (for worst-point listings and plots).
struct PointError {
  std::string key;  ///< profile entry key
  std::string file;
  int line = 0;
  std::int64_t config_id = 0;
  double x = 0;  ///< mean rows per active expert (GEMM) or bytes (bandwidth families)
  double measured_us = 0;
  double predicted_us = 0;
  double ape = 0;  ///< |pred - meas| / meas, percent
  bool heldout = false;
};

struct FitReport {
  std::vector<PointError> points;     ///< every fitted and held-out point
  std::vector<std::string> unfitted;  ///< groups left unfitted, with the reason
  std::vector<std::string> warnings;  ///< fitted entries outside physical bounds (efficiency > 1)
  std::map<std::string, int> skipped;
};

struct CalibrationResult {
  CostProfile profile;
  FitReport report;
};

/// Reads runs.csv, measurements.csv and counts.csv of `run_dir` and validates them.
MeasurementSet load_measurements(const std::string& run_dir, const CalibrateOptions& options);
/// Fits every (family, impl, dtype, tile) group of `set`.
CalibrationResult fit_measurements(const MeasurementSet& set, const CalibrateOptions& options);
/// load_measurements + fit_measurements.
CalibrationResult calibrate(const std::string& run_dir, const CalibrateOptions& options);

/// Evaluates an existing profile against a measurement directory (every usable row of a group
/// with a profile entry; held-out rows reported separately). For `moesim validate-model`.
FitReport validate_profile(const CostProfile& profile, const std::string& run_dir, const CalibrateOptions& options);

/// Per (family, impl) and entry: points, MAPE, median and P90 APE on the held-out rows (and on
/// the fitted rows, labelled as such), then the worst 10 held-out points.
void print_report(const CostProfile& profile, const FitReport& report, std::ostream& out);

/// Writes predicted vs measured per point as CSV (for tools/plot_calibration.py).
void write_points_csv(const FitReport& report, std::ostream& out);

/// Percent-error summary of a set of APE values.
struct ErrorSummary {
  int n = 0;
  double mape = 0;
  double median = 0;
  double p90 = 0;  ///< linear interpolation between closest ranks
  double max = 0;
};
ErrorSummary summarize(std::vector<double> ape);

}  // namespace moesim::models::cost
