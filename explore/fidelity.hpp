#pragma once
/// \file
/// `moesim fidelity`: the simulator's predictions against a matrix of published GPU
/// measurements (validation/published/, documented in its README.md).
///
/// The matrix is a folder of YAML files. `categories.yaml` names the categories (with the pass
/// band of each); every other `*.yaml` file holds `points:`, one entry per published figure: its
/// source (quoted), the configuration, the published value in a canonical metric, and how moesim
/// reproduces it: a scenario (inline block, or a scenario file plus `set:` overrides) or a kernel
/// query (engine/kernel_query.hpp). A point whose configuration needs a feature moesim lacks lists
/// it under `missing_features`: with a scenario it runs as an *approximation* (reported apart),
/// without one it is listed as not expressible.
///
/// Why the rules below are enforced by the loader rather than left to review: a fidelity figure
/// is only worth something if nobody tuned the model to it. Each point is either in the
/// declared calibration subset (parameters may be fitted once, globally, on those) or held out,
/// and every category must keep at least half of its points held out; the report gives both
/// subsets separately. Nothing in the matrix is a correction factor: points carry measurements
/// and configurations only.
///
/// Output is deterministic and byte-identical for any thread count: points run independently
/// (routing on one thread each, seeds from the scenarios) and are reported in matrix order
/// (files by name, entries in file order).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "engine/kernel_query.hpp"
#include "engine/scenario.hpp"

namespace moesim::explore {

/// How a point's prediction is obtained.
enum class PointKind { kScenario, kKernel, kNone };

/// What happened to a point in a run of the matrix.
enum class PointStatus {
  kLive,            ///< expressible and simulated
  kApproximate,     ///< simulated, but the configuration needs features moesim lacks (listed)
  kNotExpressible,  ///< not simulated: no scenario can say it yet (missing features listed)
  kError,           ///< the simulation failed (message kept)
};
const char* to_string(PointStatus s);

struct FidelityCategory {
  std::string name;
  std::string doc;
  double band = 0.25;  ///< a point passes when |error| <= band (fraction)
};

struct PublishedPoint {
  std::string id;
  std::string file;  ///< matrix file the entry is in
  config::Location loc;
  std::string category;
  std::string layout_group;        ///< "" = none
  bool calibration = false;        ///< in the declared calibration subset (else held out)
  std::string metric;              ///< canonical metric name (see fidelity_metrics())
  double published = 0;            ///< in the metric's unit
  std::string source;              ///< one-line citation for tables (title, commit or date)
  std::vector<std::string> flags;  ///< derived, ambiguous, ...
  std::vector<std::string> missing_features;
  double band = 0;  ///< pass band (fraction); the category's unless the entry sets one
  PointKind kind = PointKind::kNone;
  /// Scenario points (the parsed scenario is FidelityMatrix::scenarios[i]).
  std::string scenario_file;                              ///< "" = inline block
  std::vector<std::pair<std::string, std::string>> sets;  ///< (path, YAML value text) from set:
  /// Kernel points.
  engine::KernelQuery kernel;
  double flops_override = 0;  ///< the source's FLOP count for tflops metrics (0 = the model's)
  double bytes_override = 0;  ///< the source's byte count for mem_bw_GBps
  /// train: the source's FLOPs per token for tflops_per_gpu (0 = not given).
  double flops_per_token = 0;
  /// Points with the same non-empty key share one simulation (the scenario document after overrides).
  std::string run_key;
};

struct FidelityMatrix {
  std::string dir;
  std::vector<FidelityCategory> categories;
  std::vector<PublishedPoint> points;
  /// Parallel to points: the parsed scenario of each scenario point (validated at load).
  std::vector<std::optional<engine::Scenario>> scenarios;
  const FidelityCategory* category(const std::string& name) const;
};

/// One canonical metric: its name, unit and what it is computed from.
struct MetricInfo {
  std::string name;
  std::string unit;
  std::string doc;
};
const std::vector<MetricInfo>& fidelity_metrics();

struct FidelityOptions {
  std::vector<std::string> overrides;  ///< --set, applied to every scenario point (after its own set:)
  std::string only;                    ///< glob over point ids ("" = all)
  int threads = 1;
  /// Called on the calling thread after each distinct simulation, in matrix order: its first
  /// point, CPU seconds it took, runs done and total. Never part of the report.
  std::function<void(const PublishedPoint&, double cpu_s, std::size_t done, std::size_t total)> progress;
};

/// Loads and checks the matrix: located errors (file:line:col: key: message) for unknown keys,
/// categories or metrics, duplicate ids, units that do not match the metric, scenario points
/// whose scenario does not validate, and a category whose held-out points are fewer than half.
/// Throws config::ConfigError listing every problem.
FidelityMatrix load_fidelity_matrix(const std::string& dir, const FidelityOptions& opts = {});

/// Per-step breakdown kept for the report (mean per GPU, ms): where a step point's time went.
struct StepBreakdown {
  double compute_ms = 0, exposed_comm_ms = 0, pipeline_bubble_ms = 0, idle_other_ms = 0;
};

struct PointResult {
  PointStatus status = PointStatus::kNotExpressible;
  double predicted = 0;
  double error = 0;  ///< predicted / published - 1
  bool pass = false;
  std::string message;  ///< error text for kError
  std::optional<StepBreakdown> breakdown;
  double cpu_s = 0;  ///< host CPU seconds of the simulation (progress only; never in a report)
  /// Step modes: the predicted per-GPU peak memory and whether it fits the GPU (-1: no memory
  /// estimate, e.g. kernels and collectives). Every published step configuration ran, so a
  /// prediction that it does not fit is a memory-model error the report lists.
  double peak_mem_gib = 0;
  double capacity_gib = 0;
  int fits = -1;
};

struct CategoryStats {
  std::string category;
  std::string subset;  ///< "held-out", "calibration", "all"
  int n = 0;
  double mape = 0;        ///< mean |error|, percent
  double median_ape = 0;  ///< percent
  double worst_ape = 0;   ///< percent
  std::string worst_id;
  double geomean_ratio = 0;  ///< exp(mean log(predicted / published))
  int over = 0, under = 0;   ///< predictions above / below the published value
  int pass = 0;
};

struct GroupStats {
  std::string group;
  std::string metric;
  int n = 0;
  double spearman = 0;                       ///< NaN when n < 2 or a side is constant
  std::vector<std::string> published_order;  ///< ids, best (highest value) first
  std::vector<std::string> predicted_order;
};

struct FidelityReport {
  std::vector<PointResult> results;        ///< parallel to matrix.points (filtered points: kNotExpressible w/o run)
  std::vector<bool> selected;              ///< --only filter
  std::vector<CategoryStats> live;         ///< live points, per category and subset
  std::vector<CategoryStats> with_approx;  ///< live + approximate points
  std::vector<GroupStats> groups;
};

/// Runs every selected point (scenario points through engine::run_scenario, kernel points through
/// engine::predict_kernel) on `threads` threads and computes the statistics.
FidelityReport run_fidelity(const FidelityMatrix& m, const FidelityOptions& opts);

/// Spearman rank correlation with average ranks for ties; NaN when undefined.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

/// Per-category statistics over the points whose status is in `statuses`.
std::vector<CategoryStats> category_stats(const FidelityMatrix& m, const FidelityReport& r,
                                          const std::vector<PointStatus>& statuses);

/// The human report (stdout), `fidelity.csv` and `fidelity.md`.
std::string format_fidelity_text(const FidelityMatrix& m, const FidelityReport& r);
std::string format_fidelity_csv(const FidelityMatrix& m, const FidelityReport& r);
std::string format_fidelity_markdown(const FidelityMatrix& m, const FidelityReport& r);

/// A baseline row (a previous fidelity.csv).
struct BaselineRow {
  std::string id, category, status;
  double error = 0;  ///< fraction
  bool pass = false;
  int fits = -1;  ///< the 'fits' column (-1 when absent or empty)
};
/// Reads a fidelity.csv written by format_fidelity_csv; throws config::ConfigError (file:line)
/// on a malformed file.
std::vector<BaselineRow> read_fidelity_baseline(const std::string& file);

struct GateResult {
  bool ok = true;
  std::vector<std::string> failures;  ///< one line each
  std::string text;                   ///< the comparison table
};
/// The regression gate: fails when a category's MAPE, over the points simulated both in the
/// baseline and now, worsens by more than `mape_slack_pct` points, or when a point that passed
/// its band in the baseline no longer does (or no longer runs).
GateResult check_fidelity_gate(const FidelityMatrix& m, const FidelityReport& r, const std::vector<BaselineRow>& base,
                               double mape_slack_pct = 1.0);

}  // namespace moesim::explore
