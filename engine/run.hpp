#pragma once
/// \file
/// One `moesim run` of a loaded scenario, whatever its workload mode (train, prefill, decode,
/// routing-only, single collective): the JSON report of CONVENTIONS.md and the human summary.
/// Shared by the `run` command, sweeps and the planner, so all three report the same numbers.

#include <nlohmann/json.hpp>
#include <string>

#include "engine/scenario.hpp"

namespace moesim::engine {

struct RunOptions {
  std::string trace_file;  ///< Chrome trace output ("" = none); train/prefill/decode only
  /// Threads for work whose result does not depend on the thread count (routing MoE layers).
  int threads = 1;
};

struct RunResult {
  nlohmann::ordered_json report;  ///< the JSON report (`moesim run --json`)
  std::string text;               ///< the summary lines printed after the header
};

/// The moesim version string the reports carry.
const char* version();

/// The scenario header lines `moesim run` prints before simulating.
std::string format_header(const Scenario& s);

/// Simulates the scenario. Throws config::ConfigError for invalid combinations found late,
/// sim::SimulationError when a conservation check fails, std::runtime_error otherwise.
RunResult run_scenario(const Scenario& s, const RunOptions& o = {});

}  // namespace moesim::engine
