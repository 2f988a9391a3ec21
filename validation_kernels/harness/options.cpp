#include "validation_kernels/harness/options.hpp"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace moesim::vk {

const char* usage_text() {
  return "usage: vk_harness [--quick | --full] [--budget S] [--heldout N] [--dry-run] [--verbose] [--out DIR]\n"
         "                  [--seed S] [--iters N] [--warmup N] [--run-id ID] [--notes TEXT] [--git-commit SHA]\n"
         "                  [--skip-impl NAME]... [--no-selftest | --selftest-only] [--watchdog-s S]\n"
         "                  [--skip-file PATH] [--family NAME]... [--batch N] [--batch-repeats N] [--build-info]\n"
         "  --quick          small grid (~60 configurations) for a smoke run (default)\n"
         "  --full           the calibration grid (thousands of configurations; use --budget)\n"
         "  --budget S       whole-process seconds: configurations in information order, skip what no\n"
         "                   longer fits, stop cleanly (exit 0); without it the whole grid, random order\n"
         "  --heldout N      add N random held-out grouped-GEMM configurations (heldout=1, never fitted)\n"
         "  --dry-run        print the grid (in budget order with --budget) and the CSV headers; needs no\n"
         "                   GPU and never initialises CUDA\n"
         "  --out DIR        runs.csv, measurements.csv, counts.csv, selftest.csv go there (appended when\n"
         "                   they exist with the same header; default out-vk)\n"
         "  --skip-impl NAME do not run this implementation (repeatable)\n"
         "  --no-selftest    skip the full-output GEMM self-test (it runs first by default)\n"
         "  --selftest-only  run the self-test and stop\n"
         "  --watchdog-s S   a wait on the GPU longer than S seconds is a hung kernel (default 20): the\n"
         "                   run writes an error row and runs.csv and exits 3\n"
         "  --skip-file P    append the implementations this run disabled after a failure (self-test,\n"
         "                   reference check, hang, device error) to P, one per line\n"
         "  --family NAME    only configurations of this kernel_family (repeatable)\n"
         "  --batch N        launches per batched warm-L2 measurement of kernels under 20 us (default 100;\n"
         "                   0: none); --batch-repeats N such measurements (default 10)\n"
         "  --git-commit SHA record this commit in runs.csv (the GPU machine's copy has no .git)\n"
         "  --build-info     print whether CUDA was compiled in, nvcc version, commit; exit\n";
}

HarnessOptions parse_options(int argc, char** argv) {
  HarnessOptions o;
  const std::vector<std::string> known = all_impls();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](const std::string& v) {
      size_t pos = 0;
      double d = 0;
      try {
        d = std::stod(v, &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      if (pos != v.size() || !(d >= 0)) throw std::invalid_argument(a + ": '" + v + "' is not a non-negative number");
      return d;
    };
    auto integer = [&](const std::string& v) {
      const double d = number(v);
      if (d != static_cast<double>(static_cast<int64_t>(d)))
        throw std::invalid_argument(a + ": '" + v + "' is not an integer");
      return static_cast<int64_t>(d);
    };
    if (a == "--quick")
      o.grid.kind = GridKind::kQuick;
    else if (a == "--full")
      o.grid.kind = GridKind::kFull;
    else if (a == "--tiny")  // CPU mock tests only
      o.grid.kind = GridKind::kTiny;
    else if (a == "--heldout")
      o.grid.heldout = static_cast<int>(integer(value()));
    else if (a == "--dry-run")
      o.dry_run = true;
    else if (a == "--verbose")
      o.verbose = true;
    else if (a == "--build-info")
      o.build_info = true;
    else if (a == "--out")
      o.out_dir = value();
    else if (a == "--seed")
      o.grid.seed = static_cast<uint64_t>(integer(value()));
    else if (a == "--budget" || a == "--time-budget-s")
      o.budget_s = number(value());
    else if (a == "--watchdog-s")
      o.watchdog_s = number(value());
    else if (a == "--iters")
      o.timed_iters = static_cast<int>(integer(value()));
    else if (a == "--warmup")
      o.warmup_iters = static_cast<int>(integer(value()));
    else if (a == "--run-id")
      o.run_id = value();
    else if (a == "--notes")
      o.notes = value();
    else if (a == "--git-commit")
      o.git_commit = value();
    else if (a == "--skip-impl") {
      const std::string v = value();
      if (std::find(known.begin(), known.end(), v) == known.end())
        throw std::invalid_argument("--skip-impl: unknown implementation '" + v + "'");
      o.skip_impls.push_back(v);
    } else if (a == "--no-selftest")
      o.selftest = false;
    else if (a == "--selftest-only")
      o.selftest_only = true;
    else if (a == "--batch")
      o.batch = static_cast<int>(integer(value()));
    else if (a == "--batch-repeats")
      o.batch_repeats = static_cast<int>(integer(value()));
    else if (a == "--family") {
      const std::string v = value();
      bool known_family = false;
      for (int f = 0; f < kFamilyCount; ++f) known_family = known_family || v == to_string(static_cast<Family>(f));
      if (!known_family) throw std::invalid_argument("--family: unknown kernel family '" + v + "'");
      o.families.push_back(v);
    } else if (a == "--skip-file")
      o.skip_file = value();
    else
      throw std::invalid_argument("unknown argument: " + a);
  }
  if (o.selftest_only && !o.selftest) throw std::invalid_argument("--selftest-only and --no-selftest contradict");
  if (o.timed_iters < 1) throw std::invalid_argument("--iters must be >= 1");
  if (o.watchdog_s <= 0) throw std::invalid_argument("--watchdog-s must be > 0");
  for (char c : o.run_id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      throw std::invalid_argument("--run-id: only letters, digits, '.', '_' and '-' (it names a folder)");
  return o;
}

}  // namespace moesim::vk
