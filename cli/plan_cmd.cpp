#include "cli/plan_cmd.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "config/reader.hpp"
#include "explore/plan.hpp"

namespace moesim::cli {

PlanCommand::PlanCommand(CLI::App& app) {
  cmd_ = app.add_subcommand("plan", "search deployments (GPU type, count, DP/TP/EP/PP...), simulate and rank them");
  cmd_->add_option("plan", file_, "plan YAML")->required();
  cmd_->add_option("-j,--jobs", threads_, "simulate this many candidates at once (results do not depend on it)")
      ->check(CLI::Range(1, 1024));
  cmd_->add_option("-o,--output", out_dir_, "write plan.csv, pareto.csv and top-NN.yaml scenarios here");
  cmd_->add_option("--set", sets_, "override a plan value: key.path=value (repeatable)");
  cmd_->add_flag("-q,--quiet", quiet_, "no progress on stderr");
}

int PlanCommand::run() const {
  namespace ex = moesim::explore;
  const ex::PlanSpec plan = ex::load_plan(file_, sets_);
  ex::PlanResult r = ex::prepare_plan(plan);
  try {
    ex::check_not_empty(plan, r);
  } catch (const config::ConfigError&) {
    std::fputs(ex::format_summary(plan, r).c_str(), stdout);
    if (!out_dir_.empty()) ex::write_outputs(plan, r, out_dir_);  // plan.csv says why, row by row
    throw;
  }
  const bool tty = isatty(fileno(stderr)) != 0;
  std::size_t last_decile = 0;
  const auto progress = [&](std::size_t done, std::size_t total) {
    if (quiet_) return;
    if (tty) {
      fmt::print(stderr, "\rplan: simulated {}/{}{}", done, total, done == total ? "\n" : "");
      return;
    }
    const std::size_t decile = done * 10 / total;
    if (decile > last_decile || done == total) {
      last_decile = decile;
      fmt::print(stderr, "plan: simulated {}/{} ({}%)\n", done, total, done * 100 / total);
    }
  };
  ex::simulate_plan(plan, r, threads_, progress);
  std::fputs(ex::format_summary(plan, r).c_str(), stdout);
  if (r.ranked.empty())
    fmt::print(stderr, "{}: no simulated candidate {}; nothing is ranked (see {})\n", file_,
               plan.tpot_us || plan.ttft_us ? "meets the targets" : "succeeded",
               out_dir_.empty() ? "the counts above" : "plan.csv");
  if (!out_dir_.empty()) {
    const auto files = ex::write_outputs(plan, r, out_dir_);
    if (!quiet_) fmt::print(stderr, "plan: wrote {} files to {}\n", files.size(), out_dir_);
  }
  return 0;
}

}  // namespace moesim::cli
