#include "cli/sweep_cmd.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "config/reader.hpp"
#include "explore/executor.hpp"
#include "explore/progress.hpp"
#include "explore/results.hpp"
#include "explore/sweep.hpp"
#if MOESIM_WITH_MPI
#include "explore/mpi.hpp"
#endif

namespace moesim::cli {

namespace {
constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;
constexpr int kExitSomeFailed = 3;
}  // namespace

void add_sweep_command(CLI::App& app, SweepArgs& a) {
  a.command = app.add_subcommand("sweep", "run a parameter sweep: axes over YAML paths -> results.csv");
  a.command->add_option("sweep", a.file, "sweep YAML (a base scenario plus axes)")->required();
  a.command->add_option("-j,--jobs", a.threads, "runs in parallel on this many threads (default 1)")
      ->check(CLI::Range(1, 4096));
  a.command->add_option("-o,--output", a.out_dir, "results directory (default results/<sweep name>)");
  a.command->add_option("--set", a.sets, "override a value of the base scenario: key.path=value (repeatable)");
  auto* resume =
      a.command->add_flag("--resume", a.resume, "continue the sweep in the results directory; skip finished runs");
  a.command->add_flag("--force", a.force, "start over even if the results directory holds results")->excludes(resume);
  a.command->add_flag("-q,--quiet", a.quiet, "no progress or summary on stderr");
  a.command->add_flag("--dry-run", a.dry_run,
                      "validate every point, print the resource estimate of the whole sweep; run nothing");
  a.command->add_option("--max-memory", a.max_memory,
                        "refuse (exit 2) a sweep whose estimated peak memory (the largest run x -j, plus the points) "
                        "is larger (default: physical memory)");
  a.command->add_option("--max-time", a.max_time,
                        "refuse (exit 2) a sweep whose estimated time (CPU time of all runs / -j) is longer (default "
                        "86400s)");
}

void add_plot_command(CLI::App& app, PlotArgs& a) {
  a.command = app.add_subcommand("plot", "plot a sweep's results.csv with python3 + matplotlib (tools/plot_sweep.py)");
  a.command->allow_extras();
  a.command->prefix_command();
  a.command->set_help_flag();  // --help goes to the script
}

int run_sweep(const SweepArgs& a) {
#if MOESIM_WITH_MPI
  const explore::MpiSession mpi(nullptr, nullptr);
  const int rank = mpi.rank();
  const int ranks = mpi.size();
#else
  const int rank = 0;
  const int ranks = 1;
#endif
  const bool root = rank == 0;
  const auto t0 = std::chrono::steady_clock::now();
  explore::ExecutionInfo info;
  info.started_at = explore::utc_now();
  info.threads = ranks > 1 ? 1 : a.threads;
  info.ranks = ranks;

  // Every rank loads and validates the sweep (the same result everywhere); rank 0 reports.
  explore::Sweep sweep;
  try {
    explore::SweepOptions so;
    so.overrides = a.sets;
    so.limits = engine::ResourceLimits::parse(a.max_memory, a.max_time);
    so.jobs = ranks > 1 ? ranks - 1 : a.threads;
    if (root && !a.quiet) so.on_estimate = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    sweep = explore::load_sweep(a.file, so);
    if (root && !a.quiet) {
      std::set<std::string> seen;  // a warning shared by every point is printed once
      for (const auto& p : sweep.points)
        for (const auto& w : p.scenario.warnings)
          if (seen.insert(w).second) fmt::print(stderr, "{}\n", w);
    }
    if (a.dry_run) {
      if (root)
        fmt::print("{}: {} points, {} runs; estimate: {} (memory: the largest run; limits: {})\n", a.file,
                   sweep.points.size(), sweep.runs.size(), engine::format_estimate(sweep.estimate),
                   engine::format_limits(*so.limits));
      return kExitOk;
    }
  } catch (const config::ConfigError& e) {
    if (root) fmt::print(stderr, "{}\n", e.what());
    return kExitConfig;
  } catch (const std::exception& e) {
    if (root) fmt::print(stderr, "moesim: error: {}\n", e.what());
    return kExitRuntime;
  }

  std::unique_ptr<explore::ResultsWriter> writer;
  int code = kExitOk;
  if (root) {
    const std::string dir = a.out_dir.empty() ? (std::filesystem::path("results") / sweep.name).string() : a.out_dir;
    try {
      writer = std::make_unique<explore::ResultsWriter>(sweep, explore::ResultsWriter::Options{dir, a.resume, a.force});
      info.resumed_rows = writer->resumed();
      writer->write_manifest(info);
    } catch (const config::ConfigError& e) {
      fmt::print(stderr, "{}\n", e.what());
      code = kExitConfig;
    } catch (const std::exception& e) {
      fmt::print(stderr, "moesim: error: {}\n", e.what());
      code = kExitRuntime;
    }
  }
#if MOESIM_WITH_MPI
  if (ranks > 1 && !mpi.agree(code == kExitOk)) return root ? code : kExitConfig;
  if (ranks > 1 && !root) {
    explore::mpi_worker(mpi, sweep);
    return kExitOk;
  }
#endif
  if (code != kExitOk) return code;

  try {
    explore::Progress progress(fmt::format("sweep {}", sweep.name), sweep.runs.size(), writer->resumed(), !a.quiet);
    if (ranks == 1) {
      explore::run_threads(sweep, *writer, a.threads, progress);
    } else {
#if MOESIM_WITH_MPI
      explore::mpi_master(mpi, *writer, progress);
#endif
    }
    progress.finish();
    writer->finish();
    info.finished_at = explore::utc_now();
    info.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    info.failed = writer->failed();
    info.ok = sweep.runs.size() - info.failed;
    info.complete = true;
    writer->write_manifest(info);
    if (!a.quiet) {
      const std::string how = ranks > 1 ? fmt::format("{} MPI ranks", ranks)
                                        : fmt::format("{} thread{}", a.threads, a.threads == 1 ? "" : "s");
      fmt::print(stderr, "moesim sweep: {} runs ({} ok, {} failed, {} resumed) in {:.1f} s with {} -> {}\n",
                 sweep.runs.size(), info.ok, info.failed, info.resumed_rows, info.wall_s, how, writer->results_path());
    }
    return info.failed > 0 ? kExitSomeFailed : kExitOk;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moesim: error: {}\n", e.what());
#if MOESIM_WITH_MPI
    if (ranks > 1) mpi.abort(kExitRuntime);
#endif
    return kExitRuntime;
  }
}

int run_plot(const PlotArgs& a) {
  std::string script;
  if (const char* env = std::getenv("MOESIM_DATA_DIR"); env != nullptr && *env != '\0')
    script = (std::filesystem::path(env) / "tools" / "plot_sweep.py").string();
  else
    script = MOESIM_PLOT_SCRIPT;
  // MOESIM_PYTHON picks the interpreter; otherwise the first of python3 on PATH and the system
  // /usr/bin/python3 (where Debian's python3-matplotlib lives) that can import matplotlib, so a
  // pyenv or venv python3 earlier on PATH does not hide the Debian package.
  std::string python;
  if (const char* py_env = std::getenv("MOESIM_PYTHON"); py_env != nullptr && *py_env != '\0') {
    python = py_env;
  } else {
    for (const char* candidate : {"python3", "/usr/bin/python3"}) {
      const std::string probe = std::string(candidate) + " -c 'import matplotlib' >/dev/null 2>&1";
      if (std::system(probe.c_str()) == 0) {
        python = candidate;
        break;
      }
    }
    if (python.empty()) {
      fmt::print(stderr,
                 "moesim plot: no python3 with matplotlib found (install python3-matplotlib or set MOESIM_PYTHON)\n");
      return kExitRuntime;
    }
  }
  std::vector<std::string> argv_s{python, script};
  for (const auto& s : a.command->remaining()) argv_s.push_back(s);
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  execvp(python.c_str(), argv.data());
  fmt::print(stderr, "moesim plot: cannot run {} {}: {}\n", python, script, std::strerror(errno));
  return kExitRuntime;
}

}  // namespace moesim::cli
