#pragma once
/// \file
/// Resource bounds stated before running: a cheap estimate (nothing is built or routed) of what
/// one run of a scenario costs on the host (step-graph ops, network flows, simulator events,
/// peak memory, CPU time), printed by `--dry-run` and checked against `--max-memory` /
/// `--max-time`, so that a run that cannot finish is refused with a located error (exit 2)
/// instead of being killed by the OS hours later.
///
/// The formulas count what the step builder creates (ops per GPU, micro-batch and layer;
/// dispatch and combine flows per expert-parallel group; tensor- and data-parallel ring
/// phases) and price them with constants fitted to 60 varied runs on the 2-core development VM
/// (`tests/engine/estimate_test.cpp` pins the counts to within a factor of 3 of the shipped
/// scenarios' golden reports; engine/README.md "Resource estimates"). They are estimates:
/// limits are meant to catch the absurd (a million-point sweep, a cluster that needs terabytes),
/// so the defaults are generous.

#include <string>

#include "config/reader.hpp"
#include "engine/scenario.hpp"

namespace moesim::engine {

struct ResourceEstimate {
  double compute_ops = 0;   ///< ops of the step graph (compute and collectives)
  double flows = 0;         ///< network flows started
  double events = 0;        ///< executor and network events
  double memory_bytes = 0;  ///< peak resident memory of the process
  double cpu_s = 0;         ///< host CPU seconds

  ResourceEstimate& operator+=(const ResourceEstimate& o);
};

/// The estimate for one `moesim run` of `s` (any workload mode).
ResourceEstimate estimate_resources(const Scenario& s);

struct ResourceLimits {
  double max_memory_bytes = 0;  ///< default: this machine's physical memory
  double max_seconds = 0;       ///< default: 24 h (86400 s)
  /// The defaults above.
  static ResourceLimits defaults();
  /// From `--max-memory SIZE` and `--max-time TIME` ("" keeps a default); a bad value is a
  /// config::ConfigError located at the option (exit 2).
  static ResourceLimits parse(const std::string& max_memory, const std::string& max_time);
};

/// "~12.3k ops, 45.0k flows, 120k events, 96 MiB peak, 1.2 s CPU".
std::string format_estimate(const ResourceEstimate& e);
/// "--max-memory 23.4 GiB, --max-time 86400 s".
std::string format_limits(const ResourceLimits& l);

/// Throws config::ConfigError at `where` (key `key`) when `memory_bytes` or `seconds` exceeds
/// the limits; `what` says what was estimated ("one run", "the sweep's 1000 runs on 2 threads").
void check_limits(double memory_bytes, double seconds, const ResourceLimits& l, const config::Location& where,
                  const std::string& key, const std::string& what);

/// Where a scenario file states its size: its `cluster:` key, else `workload:`, else the file.
config::Location scale_location(const std::string& scenario_file, std::string* key);

}  // namespace moesim::engine
