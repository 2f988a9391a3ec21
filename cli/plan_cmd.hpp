#pragma once
/// \file
/// `moesim plan PLAN.yaml [-j N] [-o DIR] [--set key=value ...] [--quiet]`: the deployment
/// planner's command line (explore/plan.hpp does the work).

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace moesim::cli {

class PlanCommand {
 public:
  /// Registers the `plan` subcommand and its options on `app`.
  explicit PlanCommand(CLI::App& app);
  bool selected() const { return static_cast<bool>(*cmd_); }
  /// Runs the plan; returns the exit code. Throws config::ConfigError for bad input (exit 2).
  int run() const;

 private:
  CLI::App* cmd_ = nullptr;
  std::string file_;
  std::string out_dir_;
  std::vector<std::string> sets_;
  int threads_ = 1;
  bool quiet_ = false;
};

}  // namespace moesim::cli
