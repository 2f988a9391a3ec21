#pragma once
/// \file
/// `moesim sweep` and `moesim plot`: the command-line glue over explore/ (sweeps) and
/// tools/plot_sweep.py (plots). Kept out of main.cpp so that main only registers commands.

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace moesim::cli {

struct SweepArgs {
  CLI::App* command = nullptr;
  std::string file;
  int threads = 1;
  std::string out_dir;  ///< default: results/<sweep name>
  std::vector<std::string> sets;
  bool resume = false;
  bool force = false;
  bool quiet = false;
  bool dry_run = false;    ///< validate, print the resource estimate, run nothing
  std::string max_memory;  ///< --max-memory SIZE ("" = default)
  std::string max_time;    ///< --max-time TIME ("" = default)
};

struct PlotArgs {
  CLI::App* command = nullptr;  ///< its remaining() arguments go to tools/plot_sweep.py as they are
};

void add_sweep_command(CLI::App& app, SweepArgs& a);
void add_plot_command(CLI::App& app, PlotArgs& a);

/// Runs the sweep; returns the process exit code (0 ok, 1 runtime failure, 2 configuration
/// error, 3 finished with failed runs). In MPI builds this initialises and finalises MPI.
int run_sweep(const SweepArgs& a);
/// Replaces the process with python3 tools/plot_sweep.py ARGS; returns only on failure.
int run_plot(const PlotArgs& a);

}  // namespace moesim::cli
