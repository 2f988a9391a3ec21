// The default (unfitted) kernel cost models against the published kernel tables of the
// validation matrix (validation/published/deepgemm.yaml, attention.yaml): the one copy of those
// numbers, pinned by commit in the matrix. The full comparison is `moesim fidelity`; this test
// holds the claims the documentation makes about the defaults, so a model change that breaks one
// fails here as well as in the CI gate.

#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "explore/fidelity.hpp"

using namespace moesim::explore;

namespace {

struct Subset {
  int n = 0;
  double sum_abs = 0, worst = 0;
};

Subset run(const std::string& glob) {
  FidelityOptions o;
  o.only = glob;
  const FidelityMatrix m = load_fidelity_matrix("validation/published", o);
  const FidelityReport r = run_fidelity(m, o);
  Subset s;
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    INFO(m.points[i].id << ": " << r.results[i].message);
    REQUIRE(r.results[i].status == PointStatus::kLive);
    ++s.n;
    s.sum_abs += std::fabs(r.results[i].error);
    s.worst = std::max(s.worst, std::fabs(r.results[i].error));
  }
  return s;
}

}  // namespace

TEST_CASE("default grouped-GEMM model vs DeepGEMM's grouped tables (H800, fp8)", "[published]") {
  // Issue 17 target: grouped MAPE within 10%. Worst: masked g1 M=1024 N=7168 K=2048 (+18.8% in
  // TFLOP/s, BM=256 x BN=112 tile, 2 waves); the masked M >= 512 shapes are optimistic.
  const Subset s = run("deepgemm-v3-[cm]*");  // contiguous and masked
  REQUIRE(s.n == 10);
  CHECK(s.worst <= 0.20);
  CHECK(s.sum_abs / s.n <= 0.08);
}

TEST_CASE("default dense-GEMM model vs DeepGEMM's dense table, M = 64 ... 4096", "[published]") {
  // Issue 17 targets: MAPE <= 10%, no shape worse than 20% (tile chosen per problem, K-block
  // latency floor, per-tile prologue/epilogue; models/cost/README.md "GEMM tile model").
  const Subset all = run("deepgemm-v3-dense-*");
  REQUIRE(all.n == 18);
  CHECK(all.worst <= 0.20);
  CHECK(all.sum_abs / all.n <= 0.10);
  // The decode projections (M = 64 / 128) that a fixed 128x128 tile got 30-70% too slow.
  const Subset small = run("deepgemm-v3-dense-m[61]*");
  REQUIRE(small.n == 12);
  CHECK(small.worst <= 0.20);
}

TEST_CASE("default attention model vs FlashAttention-3 forward measurements (H100, bf16)", "[published]") {
  const Subset s = run("fa3-ptbench-*");
  REQUIRE(s.n == 6);
  CHECK(s.worst <= 0.20);
}
