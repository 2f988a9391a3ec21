// vk_harness: runs the validation-kernel sweep on a GPU, or (--dry-run) prints what it would run
// without touching CUDA at all.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/grid.hpp"
#include "validation_kernels/harness/options.hpp"
#include "validation_kernels/harness/schema.hpp"

namespace {

using namespace moesim::vk;

void usage() {
  std::puts(
      "usage: vk_harness [--quick | --full] [--heldout N] [--dry-run] [--verbose] [--out DIR] [--seed S]\n"
      "                  [--time-budget-s S] [--iters N] [--warmup N] [--run-id ID] [--notes TEXT]\n"
      "  --quick          small grid for a ~2-minute smoke run (default)\n"
      "  --full           the calibration grid (fits one 10-minute device command)\n"
      "  --heldout N      add N random held-out GEMM configurations (heldout=1, never fitted)\n"
      "  --dry-run        print the grid and the CSV headers; needs no GPU and never initialises CUDA\n"
      "  --out DIR        write runs.csv, measurements.csv, counts.csv there (default out-vk)\n"
      "  --time-budget-s  stop starting configurations after this many seconds (default 540)");
}

bool parse(int argc, char** argv, HarnessOptions& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick")
      o.grid.kind = GridKind::kQuick;
    else if (a == "--full")
      o.grid.kind = GridKind::kFull;
    else if (a == "--heldout")
      o.grid.heldout = std::stoi(value());
    else if (a == "--dry-run")
      o.dry_run = true;
    else if (a == "--verbose")
      o.verbose = true;
    else if (a == "--out")
      o.out_dir = value();
    else if (a == "--seed")
      o.grid.seed = std::stoull(value());
    else if (a == "--time-budget-s")
      o.time_budget_s = std::stod(value());
    else if (a == "--iters")
      o.timed_iters = std::stoi(value());
    else if (a == "--warmup")
      o.warmup_iters = std::stoi(value());
    else if (a == "--run-id")
      o.run_id = value();
    else if (a == "--notes")
      o.notes = value();
    else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

int dry_run(const HarnessOptions& o, const std::vector<Config>& grid) {
  std::printf("# vk_harness dry run: grid=%s seed=%llu heldout=%d (no CUDA initialised)\n",
              o.grid.kind == GridKind::kQuick ? "quick" : "full", static_cast<unsigned long long>(o.grid.seed),
              o.grid.heldout);
  std::map<std::string, int> per_family;
  size_t measurements = 0;
  for (const Config& c : grid) {
    ++per_family[to_string(c.family)];
    measurements += planned_impls(c.family).size();
    std::printf("%s\n", describe(c).c_str());
  }
  std::printf("# configurations: %zu\n", grid.size());
  for (const auto& [family, n] : per_family) {
    std::string impls;
    for (const std::string& s : planned_impls(family == "routing"               ? Family::kRouting
                                              : family == "grouped_gemm_masked" ? Family::kGroupedGemmMasked
                                                                                : Family::kGroupedGemm))
      impls += (impls.empty() ? "" : " ") + s;
    std::printf("#   %-20s %5d  impls: %s\n", family.c_str(), n, impls.c_str());
  }
  std::printf("# measurement rows at most: %zu (timing methods: events_cold_l2; + batched for kernels < 20 us)\n",
              measurements);
  std::printf("# runs.csv header:\n%s\n", csv_header(kRunsColumns).c_str());
  std::printf("# measurements.csv header:\n%s\n", csv_header(kMeasurementColumns).c_str());
  std::printf("# counts.csv header:\n%s\n", csv_header(kCountsColumns).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  HarnessOptions o;
  try {
    if (!parse(argc, argv, o)) {
      usage();
      return 2;
    }
    std::vector<Config> grid = build_grid(o.grid);
    if (o.dry_run) return dry_run(o, grid);
#ifdef VK_NO_CUDA
    std::fprintf(stderr, "vk_harness was built without CUDA; only --dry-run is available\n");
    return 2;
#else
    if (o.run_id.empty()) {
      const std::time_t now = std::time(nullptr);
      char buf[32];
      std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", std::gmtime(&now));
      o.run_id = buf;
    }
    return run_measurements(o, std::move(grid));
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vk_harness: %s\n", e.what());
    return 1;
  }
}
