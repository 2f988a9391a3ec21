#pragma once
/// \file
/// Sweeps: a base scenario plus axes over YAML paths, expanded into a cartesian product of
/// points (minus excludes), each run `repeats` times with seeds derived from the run index.
///
/// A sweep file (docs/sweeps.md):
///
///     name: capacity-vs-skew
///     scenario: ../default.yaml          # a scenario file (relative to this file) or an inline block
///     set: { workload.global_batch: 32 } # fixed overrides of the base (optional)
///     axes:
///       routing.capacity_factor: [1.0, 1.5, 2.0]
///       granularity:                     # a linked axis: these paths change together
///         model.experts: [8, 16, 32]
///         model.top_k: [2, 4, 8]
///     exclude: [{ routing.capacity_factor: 1.0, model.experts: 32 }]
///     repeats: 2                         # runs per point, each with its own seed
///     seed: 7                            # base seed (default: the base scenario's)
///
/// Axis values are applied with config::Document::set, the mechanism behind `--set`, but as
/// nodes of the sweep file: a bad value is reported at its own file:line:col. Every point is
/// parsed and validated when the sweep is loaded, so configuration errors surface before any
/// run starts; failures while simulating become `status=error` rows instead.
///
/// Nothing here is global: a loaded Sweep is immutable and `run_row` may be called for any
/// run index from any thread (or MPI rank) and returns the same bytes.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <optional>

#include "engine/estimate.hpp"
#include "engine/scenario.hpp"

namespace moesim::explore {

/// One axis: a single path, or several linked paths that take their i-th values together.
struct Axis {
  std::string name;                              ///< the path, or the linked group's name
  std::vector<std::string> paths;                ///< the YAML paths it sets (CSV columns)
  std::vector<std::vector<std::string>> labels;  ///< labels[value][path]: values as written
  std::size_t size() const { return labels.size(); }
};

/// One point of the product that survived the excludes.
struct SweepPoint {
  std::vector<std::size_t> value_index;  ///< per axis
  std::vector<std::string> labels;       ///< per swept path (CSV columns), as written
  engine::Scenario scenario;             ///< parsed and validated (its seed is the base seed)
};

/// One run: a point and a repeat. run_index = point * repeats + repeat.
struct SweepRun {
  std::size_t point = 0;
  int repeat = 0;
  std::uint64_t seed = 0;
};

enum class SeedMode {
  kPerRun,     ///< seed = derive_seed(base, run_index): every run independent (default)
  kPerRepeat,  ///< seed = derive_seed(base, repeat): common random numbers across points
};

struct SweepOptions {
  std::vector<std::string> overrides;  ///< `moesim sweep --set key=value`, applied to the base
  /// Resource bounds (engine/estimate.hpp): checked from three sampled points before the other
  /// points are parsed (so a million-point sweep is refused in a second, not after parsing it),
  /// then from every point; beyond them load_sweep throws config::ConfigError at `axes:`.
  std::optional<engine::ResourceLimits> limits;
  int jobs = 1;  ///< runs at a time (memory: one run's peak per job; time: total / jobs)
  /// Told the sampled estimate (one line) before the points are parsed, when limits are set.
  std::function<void(const std::string&)> on_estimate;
};

struct Sweep {
  std::string file;                    ///< the sweep file
  std::string name;                    ///< `name:` or the file's stem
  std::string base;                    ///< base scenario file, or "<inline>"
  std::vector<std::string> overrides;  ///< --set overrides given on the command line
  std::vector<Axis> axes;
  std::vector<std::string> columns;  ///< swept paths, in axis order
  int repeats = 1;
  SeedMode seed_mode = SeedMode::kPerRun;
  std::uint64_t base_seed = 0;
  std::vector<SweepPoint> points;
  std::vector<SweepRun> runs;
  std::vector<std::string> metrics;   ///< metric columns (depend on the workload modes swept)
  std::uint64_t hash = 0;             ///< FNV-1a 64 over the expanded runs (see sweep_hash)
  engine::ResourceEstimate estimate;  ///< all runs together (memory: the largest run)

  /// The CSV header line (without the newline).
  std::string header() const;
  /// The hash as 16 lowercase hex digits.
  std::string hash_hex() const;
};

/// Loads, expands and validates a sweep. Throws config::ConfigError listing every problem
/// (each with file:line:col and key): unknown keys, bad or unknown axis paths, axis values that
/// fail scenario validation, excludes that match nothing, an empty product.
Sweep load_sweep(const std::string& file, const SweepOptions& opts = {});

/// The seed of a run, from the base seed and the run's index (or repeat), never the executor.
std::uint64_t run_seed(std::uint64_t base_seed, SeedMode mode, std::size_t run_index, int repeat);

/// Runs one run and formats its CSV row (without the newline). Never throws for simulation
/// failures: they become a row with status=error and the message in the last column.
std::string run_row(const Sweep& sweep, std::size_t run_index);

}  // namespace moesim::explore
