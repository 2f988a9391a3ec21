#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "engine/kernel_query.hpp"
#include "explore/fidelity.hpp"

namespace fs = std::filesystem;
using moesim::config::ConfigError;
using namespace moesim::explore;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moesim-fidelity-test-" + tag + "-" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path / name;
    std::ofstream(p) << text;
    return p.string();
  }
};

const char* kCategories = R"(categories:
  kernel-dense: { band: 0.20, doc: "dense GEMMs" }
  comm-nccl: { band: 0.10, doc: "collectives" }
)";

/// A kernel point; `published` in TFLOPS.
std::string kernel_point(const std::string& id, double published, const std::string& subset = "heldout", int m = 4096) {
  return "  - id: " + id + "\n    category: kernel-dense\n    subset: " + subset +
         "\n    source: { title: t, date: 2025-01-01, quote: q }\n    metric: tflops\n"
         "    published: { value: " +
         std::to_string(published) +
         ", unit: TFLOPS, as_quoted: x }\n    derivation: d\n"
         "    kernel: { op: gemm, gpu: h800, dtype: fp8, m: " +
         std::to_string(m) + ", n: 7168, k: 2048 }\n";
}

std::string collective_point(const std::string& id, double published) {
  return "  - id: " + id +
         "\n    category: comm-nccl\n    source: { title: t, date: 2025-01-01, quote: q }\n"
         "    metric: busbw_GBps\n    published: { value: " +
         std::to_string(published) +
         ", unit: GB/s, as_quoted: x }\n    derivation: d\n    scenario:\n      name: a2a\n"
         "      cluster: { gpu: h100-sxm, nodes: 2, gpus_per_node: 8,\n"
         "                 intra_node: { fabric: nvswitch, bandwidth: 450GB/s, latency: 1us },\n"
         "                 inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, latency: 2us } }\n"
         "      workload: { mode: collective, collective: { op: all_to_all, bytes: 64MiB } }\n"
         "      network: { model: analytical }\n";
}

double tflops_of(const std::string& dtype, std::int64_t m) {
  moesim::engine::KernelQuery q;
  q.op = moesim::engine::KernelOp::kGemm;
  q.gpu = "h800";
  q.dtype = *moesim::models::cost::parse_dtype(dtype);
  q.m = m;
  q.n = 7168;
  q.k = 2048;
  const moesim::engine::KernelPrediction p = moesim::engine::predict_kernel(q);
  return p.flops / p.device_seconds / 1e12;  // fidelity compares device time (no host launch)
}

}  // namespace

TEST_CASE("spearman rank correlation", "[fidelity]") {
  CHECK(spearman({1, 2, 3, 4}, {10, 20, 30, 40}) == Approx(1.0));
  CHECK(spearman({1, 2, 3, 4}, {40, 30, 20, 10}) == Approx(-1.0));
  // One swap among five: 1 - 6 * 2 / (5 * 24) = 0.9.
  CHECK(spearman({1, 2, 3, 4, 5}, {1, 3, 2, 4, 5}) == Approx(0.9));
  // Ties take average ranks: a = (1, 2, 2.5 avg, ...).
  const double tied = spearman({1, 2, 2, 3}, {1, 2, 3, 4});
  CHECK(tied == Approx(0.9486832981));
  CHECK(std::isnan(spearman({1, 1, 1}, {1, 2, 3})));
  CHECK(std::isnan(spearman({1}, {1})));
}

TEST_CASE("fidelity: kernel and collective points, statistics and groups", "[fidelity]") {
  TempDir d("stats");
  d.write("categories.yaml", kCategories);
  const double pred = tflops_of("fp8", 4096);
  // Published values 10% above and 25% below the prediction: errors -9.09% and +33.3%.
  d.write("k.yaml", "points:\n" + kernel_point("a", pred * 1.10) + kernel_point("b", pred * 0.75, "calibration") +
                        kernel_point("c", pred, "heldout", 64));
  d.write("n.yaml", "points:\n" + collective_point("nccl-1", 40.0));
  const FidelityMatrix m = load_fidelity_matrix(d.path.string());
  REQUIRE(m.points.size() == 4);
  CHECK(m.points[0].id == "a");  // files by name, entries in order
  CHECK(m.points[3].id == "nccl-1");
  CHECK(m.points[1].calibration);
  const FidelityReport r = run_fidelity(m, {});
  REQUIRE(r.results[0].status == PointStatus::kLive);
  CHECK(r.results[0].error == Approx(1 / 1.10 - 1));
  CHECK(r.results[0].pass);  // within 20%
  CHECK(r.results[1].error == Approx(1 / 0.75 - 1));
  CHECK_FALSE(r.results[1].pass);
  CHECK(r.results[3].status == PointStatus::kLive);
  CHECK(r.results[3].predicted > 0);
  // Held-out and calibration reported separately.
  bool saw_heldout = false, saw_cal = false;
  for (const auto& s : r.live) {
    if (s.category != "kernel-dense") continue;
    if (s.subset == "held-out") {
      saw_heldout = true;
      CHECK(s.n == 2);
      CHECK(s.mape == Approx(100 * (1 - 1 / 1.10) / 2 + 100 * std::fabs(tflops_of("fp8", 64) / pred - 1) / 2));
    }
    if (s.subset == "calibration") {
      saw_cal = true;
      CHECK(s.n == 1);
      CHECK(s.worst_id == "b");
    }
  }
  CHECK(saw_heldout);
  CHECK(saw_cal);
  // Byte-identical output for any thread count.
  FidelityOptions o2;
  o2.threads = 3;
  const FidelityReport r2 = run_fidelity(m, o2);
  CHECK(format_fidelity_csv(m, r) == format_fidelity_csv(m, r2));
  CHECK(format_fidelity_text(m, r) == format_fidelity_text(m, r2));
  // --only
  FidelityOptions only;
  only.only = "nccl-*";
  const FidelityReport r3 = run_fidelity(m, only);
  CHECK_FALSE(r3.selected[0]);
  CHECK(r3.selected[3]);
}

TEST_CASE("fidelity: the regression gate trips on a worse model and on a point leaving its band", "[fidelity]") {
  TempDir d("gate");
  d.write("categories.yaml", kCategories);
  const double pred = tflops_of("fp8", 4096);
  d.write("k.yaml", "points:\n" + kernel_point("a", pred * 1.05) + kernel_point("b", pred * 1.5));
  const FidelityMatrix m = load_fidelity_matrix(d.path.string());
  const FidelityReport r = run_fidelity(m, {});
  const std::string base = d.write("baseline.csv", format_fidelity_csv(m, r));
  const auto rows = read_fidelity_baseline(base);
  REQUIRE(rows.size() == 2);
  CHECK(check_fidelity_gate(m, r, rows).ok);  // the same model passes its own baseline

  // The same matrix with the published value of a moved so that the model is now 23% off
  // (outside the 20% band): the point that passed fails and the category MAPE worsens.
  d.write("k.yaml", "points:\n" + kernel_point("a", pred * 1.3) + kernel_point("b", pred * 1.5));
  const FidelityMatrix m2 = load_fidelity_matrix(d.path.string());
  const FidelityReport r2 = run_fidelity(m2, {});
  const GateResult g = check_fidelity_gate(m2, r2, rows);
  CHECK_FALSE(g.ok);
  REQUIRE(g.failures.size() == 2);
  CHECK(g.failures[0].find("a: passed its band") == 0);
  CHECK(g.failures[1].find("category kernel-dense: MAPE") == 0);

  // A small worsening (< 1 point of MAPE, no band crossed) passes.
  d.write("k.yaml", "points:\n" + kernel_point("a", pred * 1.06) + kernel_point("b", pred * 1.5));
  const FidelityMatrix m3 = load_fidelity_matrix(d.path.string());
  CHECK(check_fidelity_gate(m3, run_fidelity(m3, {}), rows).ok);
}

TEST_CASE("fidelity: matrix errors are located and collected", "[fidelity]") {
  TempDir d("bad");
  d.write("categories.yaml", kCategories);
  const std::string f = d.write(
      "bad.yaml", "points:\n" + kernel_point("dup", 100) + kernel_point("dup", 100) +
                      "  - id: u\n    category: kernel-dense\n    source: { title: t, date: 2025-01-01, quote: q }\n"
                      "    metric: tflops\n    published: { value: 5, unit: GB/s, as_quoted: x }\n    derivation: d\n"
                      "    kernel: { op: gemm, gpu: h800, m: 1, n: 1, k: 1 }\n"
                      "  - id: v\n    category: kernel-dens\n    source: { title: t, commit: abc, quote: q }\n"
                      "    metric: tflop\n    published: { value: 5, unit: TFLOPS, as_quoted: x }\n    derivation: d\n"
                      "    flags: [not_expressible]\n    colour: red\n");
  try {
    load_fidelity_matrix(d.path.string());
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    const std::string w = e.what();
    INFO(w);
    CHECK(w.find("duplicate id 'dup'") != std::string::npos);
    CHECK(w.find("'GB/s' is not the unit of metric tflops") != std::string::npos);
    CHECK(w.find("unknown category 'kernel-dens' (did you mean 'kernel-dense'?); categories.yaml defines them") !=
          std::string::npos);
    CHECK(w.find("not a full 40-digit") != std::string::npos);
    CHECK(w.find("unknown metric 'tflop'") != std::string::npos);
    CHECK(w.find("must name the features") != std::string::npos);
    CHECK(w.find("colour") != std::string::npos);
    CHECK(w.find(f + ":") != std::string::npos);  // located in the file
  }
}

TEST_CASE("fidelity: at least half of every category is held out", "[fidelity]") {
  TempDir d("subset");
  d.write("categories.yaml", kCategories);
  d.write("k.yaml", "points:\n" + kernel_point("a", 100, "calibration") + kernel_point("b", 100, "calibration") +
                        kernel_point("c", 100));
  CHECK_THROWS_WITH(load_fidelity_matrix(d.path.string()),
                    Catch::Contains("category kernel-dense has 2 calibration points and only 1 held out"));
  d.write("k.yaml", "points:\n" + kernel_point("a", 100, "calibration") + kernel_point("c", 100));
  CHECK_NOTHROW(load_fidelity_matrix(d.path.string()));
}

TEST_CASE("fidelity: not-expressible and approximate points", "[fidelity]") {
  TempDir d("ne");
  d.write("categories.yaml", kCategories);
  d.write("k.yaml",
          "points:\n"
          "  - id: ne\n    category: comm-nccl\n    source: { title: t, date: 2025-01-01, quote: q }\n"
          "    metric: busbw_GBps\n    published: { value: 5, unit: GB/s, as_quoted: x }\n    derivation: d\n"
          "    flags: [not_expressible]\n    missing_features: [\"a scale-up domain of 72 GPUs\"]\n" +
              collective_point("ap", 40.0) + "    missing_features: [\"nccl protocol costs\"]\n");
  const FidelityMatrix m = load_fidelity_matrix(d.path.string());
  const FidelityReport r = run_fidelity(m, {});
  CHECK(r.results[0].status == PointStatus::kNotExpressible);
  CHECK(r.results[1].status == PointStatus::kApproximate);
  CHECK(r.live.empty());  // no live point
  REQUIRE_FALSE(r.with_approx.empty());
  const std::string text = format_fidelity_text(m, r);
  CHECK(text.find("a scale-up domain of 72 GPUs") != std::string::npos);
  CHECK(text.find("1 approximate, 1 not expressible") != std::string::npos);
}

TEST_CASE("fidelity: configurations that ran must fit; the gate trips when one stops fitting", "[fidelity]") {
  TempDir d("fit");
  d.write("categories.yaml", "categories:\n  train: { band: 0.30, doc: \"training steps\" }\n");
  const auto point = [](int seq_len) {
    return "points:\n  - id: t\n    category: train\n    source: { title: t, date: 2025-01-01, quote: q }\n"
           "    metric: step_time_ms\n    published: { value: 100, unit: ms, as_quoted: x }\n    derivation: d\n"
           "    scenario:\n      name: t\n      model: qwen3-30b-a3b\n"
           "      cluster: { gpu: h200, nodes: 1, gpus_per_node: 8 }\n"
           "      parallel: { dp: 8, ep: 8 }\n"
           "      workload: { mode: train, seq_len: " +
           std::to_string(seq_len) + ", global_batch: 8 }\n      network: { model: analytical }\n";
  };
  d.write("t.yaml", point(1024));
  const FidelityMatrix m = load_fidelity_matrix(d.path.string());
  const FidelityReport r = run_fidelity(m, {});
  REQUIRE(r.results[0].fits == 1);
  CHECK(r.results[0].peak_mem_gib > 0);
  CHECK(r.results[0].capacity_gib == Approx(141e9 / 1073741824.0));
  CHECK(format_fidelity_markdown(m, r).find("1 of 1 simulated step configurations fit") != std::string::npos);
  const auto rows = read_fidelity_baseline(d.write("baseline.csv", format_fidelity_csv(m, r)));
  REQUIRE(rows.at(0).fits == 1);

  // 64K-token sequences: the stashed activations no longer fit in 141 GB although the
  // configuration "ran" -> listed, and the gate fails.
  d.write("t.yaml", point(65536));
  const FidelityMatrix m2 = load_fidelity_matrix(d.path.string());
  const FidelityReport r2 = run_fidelity(m2, {});
  REQUIRE(r2.results[0].fits == 0);
  CHECK(r2.results[0].peak_mem_gib > r2.results[0].capacity_gib);
  CHECK(format_fidelity_markdown(m2, r2).find("0 of 1 simulated step configurations fit") != std::string::npos);
  CHECK(format_fidelity_text(m2, r2).find("predicted not to fit:\n  t (") != std::string::npos);
  bool flagged = false;
  for (const auto& f : check_fidelity_gate(m2, r2, rows).failures)
    flagged |= f.find("t: fitted in memory in the baseline") == 0;
  CHECK(flagged);
}
