// Command-line options of vk_harness.
#pragma once

#include <cstdint>
#include <string>

#include "validation_kernels/harness/grid.hpp"

namespace moesim::vk {

struct HarnessOptions {
  GridOptions grid;
  bool dry_run = false;
  bool verbose = false;
  std::string out_dir = "out-vk";
  double time_budget_s = 540;  ///< stop starting new configurations after this (one 10-minute command).
  int timed_iters = 50;
  int warmup_iters = 25;
  std::string run_id;
  std::string notes;
};

/// Runs the sweep on the GPU; defined in runner.cu (absent from CPU-only builds).
int run_measurements(const HarnessOptions& options, std::vector<Config> grid);

}  // namespace moesim::vk
