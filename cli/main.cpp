/// The `moesim` command line: run, validate, sweep, plot, plan, describe, calibrate, --version.
///
/// Exit codes (CONVENTIONS.md): 0 ok; 1 simulation/runtime failure; 2 usage or configuration
/// error; 3 sweep finished with some failed runs. Results go to stdout or files; diagnostics
/// and progress go to stderr.

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/fidelity_cmd.hpp"
#include "cli/plan_cmd.hpp"
#include "cli/sweep_cmd.hpp"
#include "config/reader.hpp"
#include "engine/estimate.hpp"
#include "engine/gpu_params.hpp"
#include "engine/run.hpp"
#include "engine/scenario.hpp"
#include "engine/simulate.hpp"
#include "hardware/collectives.hpp"
#include "hardware/gpu_catalog.hpp"
#include "hardware/topology.hpp"
#include "models/cost/calibrate.hpp"
#include "models/cost/profile.hpp"
#include "models/model_spec.hpp"
#include "models/router.hpp"
#include "sim/output_file.hpp"
#include "sim/units.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

using moesim::engine::Scenario;

/// `moesim describe [KIND [NAME]]`. An unknown kind or name is a usage error (exit 2) that lists
/// what exists.
/// The catalog GPU of a measurement directory (calibrate, validate-model): runs.csv names it when
/// --gpu is not given; a --gpu that contradicts runs.csv is a located error (exit 2).
moesim::models::cost::GpuParams measurement_gpu(const std::string& dir, const std::string& flag) {
  namespace cost = moesim::models::cost;
  const cost::RunGpu run = cost::read_run_gpu(dir);
  std::vector<cost::GpuCandidate> candidates;
  for (const auto& g : moesim::hw::load_default_gpu_catalog().gpus)
    candidates.push_back({g.name, g.sm_count, g.hbm_bytes});
  std::string why;
  const std::string found = cost::match_gpu(run, candidates, &why);
  moesim::config::Diagnostics d;
  const moesim::config::Location at{run.file, run.line, 0};
  if (flag.empty() && found.empty()) d.error(at, "column 'gpu_name'", why + "; pass --gpu NAME");
  if (!flag.empty() && !found.empty() && found != flag)
    d.error(at, "column 'gpu_name'",
            fmt::format("the measurements are from '{}' (catalog '{}'), not --gpu {}", run.gpu_name, found, flag));
  d.throw_if_any();
  if (flag.empty()) fmt::print(stderr, "moesim: GPU '{}' (from {}: '{}')\n", found, run.file, run.gpu_name);
  return moesim::engine::gpu_params(moesim::engine::find_gpu(flag.empty() ? found : flag, "--gpu"));
}

int describe_command(const std::vector<std::string>& what) {
  std::ostringstream os;
  const std::string kind = what.empty() ? "units" : what[0];
  const std::string kinds = "units, gpus, models, fabrics, routing (gpu NAME, model NAME for one entry)";
  if (what.size() > 2 || (what.size() == 2 && kind != "gpu" && kind != "gpus" && kind != "model" && kind != "models")) {
    fmt::print(stderr, "moesim describe: '{}' takes no name (known: {})\n", kind, kinds);
    return kExitConfig;
  }
  const auto unknown = [&](const std::string& name, const std::vector<std::string>& known) {
    const auto guess = moesim::config::did_you_mean(name, known);
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    fmt::print(stderr, "moesim describe: unknown {} '{}'{} (known: {})\n", kind, name,
               guess ? fmt::format(" (did you mean '{}'?)", *guess) : std::string(), list);
    return kExitConfig;
  };
  if (kind == "units") {
    for (auto f : {moesim::sim::UnitFamily::kBytes, moesim::sim::UnitFamily::kBandwidth, moesim::sim::UnitFamily::kTime,
                   moesim::sim::UnitFamily::kFlopRate})
      os << fmt::format("{:<12} {}\n", moesim::sim::family_name(f), moesim::sim::accepted_units(f));
  } else if (kind == "gpus" || kind == "gpu") {
    const auto catalog = moesim::hw::load_default_gpu_catalog();
    if (what.size() == 2) {
      const auto* g = catalog.find(what[1]);
      if (g == nullptr) return unknown(what[1], catalog.names());
      moesim::hw::describe_gpu(os, *g);
    } else {
      moesim::hw::describe_gpus(os, catalog);
    }
  } else if (kind == "models" || kind == "model") {
    const auto catalog = moesim::models::load_default_model_catalog();
    if (what.size() == 2) {
      const auto* m = moesim::models::find_model(catalog, what[1]);
      if (m == nullptr) {
        std::vector<std::string> names;
        for (const auto& c : catalog) names.push_back(c.name);
        return unknown(what[1], names);
      }
      moesim::models::describe_model(os, *m);
    } else {
      moesim::models::describe_models(os, catalog);
    }
  } else if (kind == "fabrics") {
    moesim::hw::describe_fabrics(os);
  } else if (kind == "routing") {
    moesim::models::describe_routing(os);
  } else {
    fmt::print(stderr, "moesim describe: unknown kind '{}' (known: {})\n", kind, kinds);
    return kExitConfig;
  }
  std::fputs(os.str().c_str(), stdout);
  return kExitOk;
}

/// `--seed N`: an integer in [0, 2^63-1] (the range of the scenario's `seed:`), written in
/// decimal digits; anything else (-1, 2^64, 1e3) is a configuration error, not a wrapped value.
std::optional<std::uint64_t> parse_seed_option(const std::string& text) {
  if (text.empty()) return std::nullopt;
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text[0] == '-' || text[0] == '+' ||
      v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    throw moesim::config::ConfigError({moesim::config::Diagnostic{
        moesim::config::Location{"--seed " + text, 0, 0}, "seed",
        fmt::format("must be an integer in [0, {}]", std::numeric_limits<std::int64_t>::max())}});
  return v;
}

void print_warnings(const Scenario& s) {
  for (const auto& w : s.warnings) fmt::print(stderr, "{}\n", w);
}

/// Resource bounds: refuses (config::ConfigError, exit 2) a run beyond --max-memory /
/// --max-time; with --dry-run prints the estimate first and returns true (nothing more to do).
bool check_resources(const Scenario& s, const std::string& file, const std::string& max_memory,
                     const std::string& max_time, bool dry_run) {
  namespace en = moesim::engine;
  const en::ResourceLimits limits = en::ResourceLimits::parse(max_memory, max_time);
  const en::ResourceEstimate est = en::estimate_resources(s);
  if (dry_run) {
    fmt::print("{}: estimate for one run: {} (limits: {})\n", file, en::format_estimate(est),
               en::format_limits(limits));
    std::fflush(stdout);
  }
  std::string key;
  const moesim::config::Location where = en::scale_location(file, &key);
  en::check_limits(est.memory_bytes, est.cpu_s, limits, where, key, "this run");  // --dry-run too
  return dry_run;
}

}  // namespace

/// The `moesim` command proper; main() adds the check that stdout received everything.
int moesim_main(int argc, char** argv) {
  CLI::App app{"moesim: discrete-event simulator and cost model for Mixture-of-Experts GPU systems"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "print the version and exit");

  // run
  auto* run = app.add_subcommand("run", "load a scenario, simulate it, print a summary");
  std::string run_file;
  std::vector<std::string> run_sets;
  std::string run_seed;  // parsed by parse_seed_option (CLI11 would wrap -1 and 2^64 into a uint64)
  std::string run_json;
  run->add_option("scenario", run_file, "scenario YAML")->required();
  run->add_option("--set", run_sets, "override a value: key.path=value (repeatable)");
  run->add_option("--seed", run_seed, "replace the scenario's seed (an integer in [0, 2^63-1])");
  bool run_dry = false;
  std::string run_max_memory, run_max_time;
  run->add_flag("--dry-run", run_dry,
                "print the resource estimate (ops, flows, events, memory, CPU time); run nothing");
  run->add_option("--max-memory", run_max_memory,
                  "refuse (exit 2) a run whose estimated peak memory is larger (a size, e.g. 16GiB; default: "
                  "physical memory)");
  run->add_option("--max-time", run_max_time,
                  "refuse (exit 2) a run whose estimated CPU time is longer (a time, e.g. 600s; default 86400s)");
  run->add_option("--json", run_json,
                  "write the JSON report to this file ('-': to stdout, the summary then goes to stderr)");
  unsigned run_threads = std::max(1U, std::min(8U, std::thread::hardware_concurrency()));
  run->add_option("--threads", run_threads,
                  "threads for routing MoE layers (results are identical for any count; default: cores, at most 8)")
      ->check(CLI::Range(1U, 256U));
  std::string run_dir;
  run->add_option("-o,--output", run_dir, "write report.json and summary.txt into this directory (created)");
  std::string run_dot;
  std::string run_trace;
  run->add_option("--trace", run_trace, "write a Chrome/Perfetto trace of the step to this file");
  run->add_option("--dump-topology", run_dot, "write the cluster topology as Graphviz dot to this file");

  // validate
  auto* validate = app.add_subcommand("validate", "parse and check a scenario; report every error");
  std::string val_file;
  std::vector<std::string> val_sets;
  validate->add_option("scenario", val_file, "scenario YAML")->required();
  validate->add_option("--set", val_sets, "override a value: key.path=value (repeatable)");

  // calibrate
  auto* calibrate = app.add_subcommand("calibrate", "fit kernel cost models to a measurement run directory");
  std::string cal_dir;
  std::string cal_out;
  std::string cal_gpu;
  std::string cal_points;
  bool cal_strict = false;
  calibrate->add_option("measurements", cal_dir, "validation_kernels/measurements/<gpu>/<run_id>")->required();
  calibrate->add_option("-o,--output", cal_out, "write the fitted profile YAML here");
  calibrate->add_option("--gpu", cal_gpu, "catalog GPU the measurements were taken on (default: from runs.csv)");
  calibrate->add_option("--points", cal_points, "write every fitted/held-out point as CSV here");
  calibrate->add_flag("--strict", cal_strict, "fail when a kernel family has too few points to fit");

  // validate-model
  auto* validate_model =
      app.add_subcommand("validate-model", "held-out error of a fitted profile against a measurement run");
  std::string vm_profile;
  std::string vm_dir;
  std::string vm_gpu;
  validate_model->add_option("profile", vm_profile, "profile YAML written by calibrate")->required();
  validate_model->add_option("measurements", vm_dir, "measurement run directory")->required();
  validate_model->add_option("--gpu", vm_gpu, "catalog GPU (default: from runs.csv)");

  // sweep, plot (cli/sweep_cmd.cpp)
  moesim::cli::SweepArgs sweep_args;
  moesim::cli::add_sweep_command(app, sweep_args);
  moesim::cli::PlotArgs plot_args;
  moesim::cli::add_plot_command(app, plot_args);

  // describe
  auto* describe = app.add_subcommand("describe", "print the catalogs and registries");
  std::vector<std::string> describe_what;
  describe->add_option("what", describe_what,
                       "units | gpus | models | fabrics | routing, or gpu NAME / model NAME for one entry");

  // plan (cli/plan_cmd.cpp)
  const moesim::cli::PlanCommand plan(app);
  // fidelity, cost (cli/fidelity_cmd.cpp)
  const moesim::cli::FidelityCommand fidelity(app);
  const moesim::cli::CostCommand cost_cmd(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitConfig;
  }

  if (show_version) {
    fmt::print("moesim {}\n", moesim::engine::version());
    return kExitOk;
  }

  if (*sweep_args.command) return moesim::cli::run_sweep(sweep_args);
  if (*plot_args.command) return moesim::cli::run_plot(plot_args);

  try {
    if (*run) {
      const Scenario s = moesim::engine::load_scenario(run_file, {run_sets, parse_seed_option(run_seed)});
      print_warnings(s);
      if (check_resources(s, run_file, run_max_memory, run_max_time, run_dry)) return kExitOk;  // --dry-run
      // With the JSON report on stdout, the human summary goes to stderr so stdout stays JSON.
      std::FILE* summary = run_json == "-" ? stderr : stdout;
      const std::string header = moesim::engine::format_header(s);
      std::fputs(header.c_str(), summary);
      std::fflush(summary);
      if (!run_dot.empty()) {
        if (!s.has_cluster) throw std::runtime_error("--dump-topology needs a cluster section");
        std::ostringstream dot;
        moesim::hw::build_topology(s.cluster).write_dot(dot);
        moesim::sim::write_file_atomic(run_dot, dot.str());
      }
      if (!run_dir.empty()) {  // fail before simulating, not after
        std::error_code ec;
        std::filesystem::create_directories(run_dir, ec);
        if (ec) throw std::runtime_error(fmt::format("cannot create directory {}: {}", run_dir, ec.message()));
      }
      moesim::engine::RunOptions ro;
      ro.trace_file = run_trace;
      ro.threads = static_cast<int>(run_threads);
      const moesim::engine::RunResult rr = moesim::engine::run_scenario(s, ro);
      std::fputs(rr.text.c_str(), summary);
      const std::string text = rr.report.dump(2) + "\n";
      const auto write_file = [](const std::string& path, const std::string& content) {
        moesim::sim::write_file_atomic(path, content);  // checked; all or nothing
      };
      if (run_json == "-")
        std::fputs(text.c_str(), stdout);
      else if (!run_json.empty())
        write_file(run_json, text);
      if (!run_dir.empty()) {
        write_file(run_dir + "/report.json", text);
        write_file(run_dir + "/summary.txt", header + rr.text);
      }
      return kExitOk;
    }
    if (*validate) {
      const Scenario s = moesim::engine::load_scenario(val_file, {val_sets, std::nullopt});
      print_warnings(s);
      fmt::print("{}: ok (scenario '{}')\n", val_file, s.name);
      return kExitOk;
    }
    if (*calibrate) {
      namespace cost = moesim::models::cost;
      cost::CalibrateOptions o;
      o.gpu = measurement_gpu(cal_dir, cal_gpu);
      o.strict = cal_strict;
      const cost::CalibrationResult r = cost::calibrate(cal_dir, o);
      std::ostringstream os;
      cost::print_report(r.profile, r.report, os);
      std::fputs(os.str().c_str(), stdout);
      if (!cal_out.empty()) {
        cost::write_profile_file(r.profile, cal_out);
        fmt::print(stderr, "moesim calibrate: wrote {}\n", cal_out);
      }
      if (!cal_points.empty()) {
        std::ostringstream f;
        cost::write_points_csv(r.report, f);
        moesim::sim::write_file_atomic(cal_points, f.str());
      }
      return kExitOk;
    }
    if (*validate_model) {
      namespace cost = moesim::models::cost;
      cost::CalibrateOptions o;
      o.gpu = measurement_gpu(vm_dir, vm_gpu);
      const cost::CostProfile p = cost::read_profile_file(vm_profile);
      const cost::FitReport rep = cost::validate_profile(p, vm_dir, o);
      std::ostringstream os;
      cost::print_report(p, rep, os);
      std::fputs(os.str().c_str(), stdout);
      return kExitOk;
    }
    if (plan.selected()) return plan.run();
    if (fidelity.selected()) return fidelity.run();
    if (cost_cmd.selected()) return cost_cmd.run();
    if (*describe) return describe_command(describe_what);
    std::fputs(app.help().c_str(), stdout);
    return kExitOk;
  } catch (const moesim::config::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return kExitConfig;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moesim: error: {}\n", e.what());
    return kExitRuntime;
  }
}

int main(int argc, char** argv) {
  const int rc = moesim_main(argc, argv);
  // Results on stdout count as output too: `moesim describe gpus > /dev/full` is a failure.
  if (const std::string why = moesim::sim::stdout_problem(); !why.empty()) {
    fmt::print(stderr, "moesim: error: cannot write standard output: {}\n", why);
    return rc == kExitOk ? kExitRuntime : rc;
  }
  return rc;
}
