// Command-line options of vk_harness.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "validation_kernels/harness/grid.hpp"

namespace moesim::vk {

/// Process exit codes (run_on_gpu.sh reads them).
inline constexpr int kExitOk = 0;           ///< finished (whole grid, or stopped cleanly at the budget)
inline constexpr int kExitRuntime = 1;      ///< an error outside any one kernel (files, CUDA init)
inline constexpr int kExitUsage = 2;        ///< bad command line
inline constexpr int kExitFatalKernel = 3;  ///< a kernel hung (watchdog) or faulted: context lost;
                                            ///< --skip-file names the impl, rerun with --skip-impl
inline constexpr int kExitInterrupted = 4;  ///< SIGTERM/SIGINT: stopped between configurations

struct HarnessOptions {
  GridOptions grid;
  bool dry_run = false;
  bool verbose = false;
  bool build_info = false;
  std::string out_dir = "out-vk";
  /// Seconds for the whole process (0 = no budget: the whole grid, in a seeded random order).
  /// With a budget the grid runs in information order, a configuration whose estimated time no
  /// longer fits is skipped, and the run stops cleanly (exit 0) when nothing fits.
  double budget_s = 0;
  double watchdog_s = 20;  ///< a wait longer than this is a hung kernel
  int timed_iters = 50;
  int warmup_iters = 25;
  int batch = 100;  ///< launches per batched (warm-L2) measurement of kernels under 20 us; 0: none
  int batch_repeats = 10;
  std::vector<std::string> families;  ///< only these kernel_family values (empty: all)
  std::string run_id;
  std::string notes;
  std::string git_commit;  ///< overrides the configure-time commit (the GPU machine's copy has no .git)
  std::vector<std::string> skip_impls;
  bool selftest = true;        ///< full-output GEMM self-test before the grid
  bool selftest_only = false;  ///< stop after the self-test
  /// Implementations disabled by a failure in this run (self-test, reference check, hang, device
  /// error) are appended here, one per line, so the next stage can --skip-impl them.
  std::string skip_file;
  /// Rows of a failed impl are invalidated in the whole output directory (every run there used
  /// this binary: run_on_gpu.sh makes one directory per invocation), not only in this run.
  bool invalidate_directory = true;
};

/// Parses argv; throws std::invalid_argument with a message on a bad option.
HarnessOptions parse_options(int argc, char** argv);
/// The usage text.
const char* usage_text();

/// Runs the sweep on the GPU; defined in runner.cpp (absent from CPU-only builds).
int run_measurements(const HarnessOptions& options, std::vector<Config> grid);

}  // namespace moesim::vk
