// vk_harness: runs the validation-kernel sweep on a GPU, or (--dry-run) prints what it would run
// without touching CUDA at all.
#include <algorithm>
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

int dry_run(const HarnessOptions& o, const std::vector<Config>& grid) {
  std::printf("# vk_harness dry run: grid=%s seed=%llu heldout=%d budget=%g s (no CUDA initialised)\n",
              o.grid.kind == GridKind::kQuick  ? "quick"
              : o.grid.kind == GridKind::kFull ? "full"
                                               : "tiny",
              static_cast<unsigned long long>(o.grid.seed), o.grid.heldout, o.budget_s);
  std::map<std::string, int> per_family;
  std::map<std::string, std::vector<std::string>> impls_of;  // in first-seen order
  size_t measurements = 0;
  DeviceModel model;
  model.warmup = o.warmup_iters;
  model.iters = o.timed_iters;
  model.batch = o.batch;
  model.batch_repeats = o.batch_repeats;
  double est = 0;
  const std::vector<size_t> order =
      o.budget_s > 0 ? information_order(grid, model) : random_order(grid.size(), o.grid.seed);
  for (size_t idx : order) {
    const Config& c = grid[idx];
    const std::string fam =
        to_string(c.family) +
        std::string(c.family == Family::kGroupedGemm && c.gemm.dtype == GemmDtype::kFp8E4m3 ? "/fp8" : "");
    ++per_family[fam];
    const auto impls = planned_impls(c);
    measurements += impls.size();
    for (const std::string& i : impls)
      if (std::find(impls_of[fam].begin(), impls_of[fam].end(), i) == impls_of[fam].end()) impls_of[fam].push_back(i);
    const double e = estimate_seconds(c, impls.size(), model);
    est += e;
    if (o.budget_s > 0)
      std::printf("%s  est=%.2fs cum=%.1fs%s\n", describe(c).c_str(), e, est, est > o.budget_s ? " (over budget)" : "");
    else
      std::printf("%s\n", describe(c).c_str());
  }
  std::printf("# configurations: %zu (estimated %.0f s on the planning model)\n", grid.size(), est);
  for (const auto& [family, n] : per_family) {
    std::string list;
    for (const std::string& i : impls_of[family]) list += (list.empty() ? "" : " ") + i;
    std::printf("#   %-24s %5d  impls: %s\n", family.c_str(), n, list.c_str());
  }
  std::printf("# measurement rows at most: %zu (timing methods: events_cold_l2; + batched for kernels < 20 us)\n",
              measurements);
  std::printf("# self-test cases (every GEMM implementation, before any timing): %zu\n", selftest_cases().size());
  std::printf("# runs.csv header:\n%s\n", csv_header(kRunsColumns).c_str());
  std::printf("# measurements.csv header:\n%s\n", csv_header(kMeasurementColumns).c_str());
  std::printf("# counts.csv header:\n%s\n", csv_header(kCountsColumns).c_str());
  std::printf("# selftest.csv header:\n%s\n", csv_header(kSelftestColumns).c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  HarnessOptions o;
  try {
    o = parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vk_harness: %s\n%s", e.what(), usage_text());
    return kExitUsage;
  }
  if (o.build_info) {
#ifdef VK_NO_CUDA
    std::printf("cuda=0 nvcc= git=%s\n", VK_GIT_COMMIT);
#else
    std::printf("cuda=1 nvcc=%s git=%s archs=%s\n", VK_NVCC_VERSION, VK_GIT_COMMIT, VK_CUDA_ARCHS);
#endif
    return kExitOk;
  }
  try {
    std::vector<Config> grid = build_grid(o.grid);
    if (!o.families.empty()) {  // keep config_ids: they key counts.csv
      std::vector<Config> keep;
      for (Config& c : grid)
        if (std::find(o.families.begin(), o.families.end(), to_string(c.family)) != o.families.end())
          keep.push_back(std::move(c));
      grid = std::move(keep);
    }
    if (o.dry_run) return dry_run(o, grid);
#ifdef VK_NO_CUDA
    std::fprintf(stderr, "vk_harness was built without CUDA; only --dry-run and --build-info are available\n");
    return kExitUsage;
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
    return kExitRuntime;
  }
}
