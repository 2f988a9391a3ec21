#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <sstream>

#include "config/reader.hpp"
#include "models/cost/calibrate.hpp"
#include "models/cost/profile.hpp"
#include "tests/cost/synthetic.hpp"
#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/schema.hpp"

using namespace moesim::models::cost;
using moesim::models::cost::testing::h100_sxm;
using moesim::models::cost::testing::SyntheticRun;

namespace {

/// The "true" kernel the synthetic measurements come from.
ModelParams true_gemm() {
  ModelParams p;
  p.eta = 0.62;
  p.mem_eff = 0.78;
  p.t0_s = 6e-6;
  p.p = 2.5;
  p.sat_frac = 0.35;
  p.tile = {128, 128};
  return p;
}

/// Grouped-GEMM sweep like the harness's grid: real (K, N) shapes, E in {1..64}, m from 1 to
/// 8192 with non-multiples of the tile, equal and multinomial counts, random SM clocks between
/// 1600 and 1980 MHz, log-normal noise of sigma `noise`; ~15% of rows held out.
void add_gemm_sweep(SyntheticRun& run, const std::string& run_id, double noise, std::uint64_t seed, int* next_id,
                    int max_rows = 1 << 30) {
  moesim::sim::Rng rng(seed, "synthetic gemm");
  const GpuParams g = h100_sxm();
  const ModelParams truth = true_gemm();
  const std::vector<std::pair<int, int>> shapes = {{7168, 4096}, {2048, 7168}, {2048, 1536}, {4096, 14336}};
  const std::vector<int> ms = {1,   4,   16,  33,   64,   65,   128,  129,  256, 257,
                               384, 512, 768, 1024, 1536, 2048, 3000, 4096, 8192};
  int added = 0;
  for (auto [k, n] : shapes)
    for (int e : {1, 4, 16, 64})
      for (int m : ms)
        for (int dist = 0; dist < 2; ++dist) {
          if (static_cast<double>(m) * e > 65536) continue;
          if (e == 1 && dist == 1) continue;
          if (added >= max_rows) return;
          std::vector<std::int64_t> c(static_cast<std::size_t>(e), m);
          if (dist == 1) {  // multinomial: m*e rows thrown uniformly at e experts
            std::fill(c.begin(), c.end(), 0);
            for (std::int64_t r = 0; r < static_cast<std::int64_t>(m) * e; ++r)
              ++c[rng.uniform_int(static_cast<std::uint64_t>(e))];
          }
          const double mhz = rng.uniform(1600, 1980);
          const GemmFeatures f = gemm_features(c, k, n, DType::kBf16, DType::kBf16, truth.tile);
          const double t = gemm_seconds(f, truth, g, DType::kBf16, mhz * 1e6) * std::exp(noise * rng.normal());
          run.add_gemm(run_id, (*next_id)++, c, k, n, t, mhz, rng.uniform01() < 0.15);
          ++added;
        }
}

void add_routing_sweep(SyntheticRun& run, const std::string& run_id, double noise, std::uint64_t seed, int* next_id) {
  moesim::sim::Rng rng(seed, "synthetic routing");
  const double t0 = 4.5e-6, bw = 0.45 * 3.35e12;
  for (int i = 0; i < 60; ++i) {
    const double bytes = std::exp(rng.uniform(std::log(1e5), std::log(2e9)));
    const double t = (t0 + bytes / bw) * std::exp(noise * rng.normal());
    run.add_routing(run_id, (*next_id)++, "permute", bytes, t, i % 5 == 0);
  }
}

CalibrateOptions opts() {
  CalibrateOptions o;
  o.gpu = h100_sxm();
  return o;
}

std::string error_of(const std::string& dir, const CalibrateOptions& o) {
  try {
    calibrate(dir, o);
  } catch (const moesim::config::ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("calibrate recovers known parameters from synthetic measurements", "[cost][calibrate]") {
  SyntheticRun run("recover");
  run.add_run("r1");
  int id = 0;
  const double noise = 0.02;
  add_gemm_sweep(run, "r1", noise, 11, &id);
  add_routing_sweep(run, "r1", 0.03, 12, &id);
  const std::string dir = run.write();
  const CalibrationResult res = calibrate(dir, opts());

  const ProfileEntry* e = res.profile.find("grouped_gemm/vk_mma_sync/bf16/BM128_BN128");
  REQUIRE(e != nullptr);
  const ModelParams t = true_gemm();
  CHECK(e->params.eta == Approx(t.eta).epsilon(0.03));
  CHECK(e->params.mem_eff == Approx(t.mem_eff).epsilon(0.03));
  CHECK(e->params.t0_s == Approx(t.t0_s).epsilon(0.15));
  CHECK(e->params.p == Approx(t.p).epsilon(0.25));
  CHECK(e->params.sat_frac == Approx(t.sat_frac).epsilon(0.15));
  // Held-out error close to the noise level: E|exp(sigma Z) - 1| ~ sigma sqrt(2/pi) = 1.6%.
  INFO("held-out MAPE " << e->fit.heldout_mape << "% P90 " << e->fit.heldout_p90_ape << "% n "
                        << e->fit.points_heldout);
  REQUIRE(e->fit.points_heldout > 20);
  CHECK(e->fit.heldout_mape > 0.8);
  CHECK(e->fit.heldout_mape < 2.5);
  CHECK(e->fit.heldout_p90_ape < 5.0);
  // The exact-model data leaves nothing systematic for the residual table.
  for (const ResidualBin& b : e->residual) CHECK(std::fabs(b.log_factor) < 0.03);

  const ProfileEntry* r = res.profile.find("routing/permute/fp32");
  REQUIRE(r != nullptr);
  CHECK(r->params.t0_s == Approx(4.5e-6).epsilon(0.1));
  CHECK(r->params.mem_eff == Approx(0.45).epsilon(0.05));
  CHECK(r->fit.heldout_mape < 4.0);

  // Provenance and clock.
  REQUIRE(res.profile.gpu_name == "NVIDIA H100 80GB HBM3");
  REQUIRE(res.profile.sm_count == 132);
  REQUIRE(res.profile.runs.size() == 1);
  REQUIRE(res.profile.runs[0].git_commit == "0123abcd");
  REQUIRE(res.profile.clock_hz > 1.6e9);
  REQUIRE(res.profile.clock_hz < 1.98e9);

  // The report names per-entry errors, targets and the worst points.
  std::ostringstream rep;
  print_report(res.profile, res.report, rep);
  INFO(rep.str());
  REQUIRE(rep.str().find("grouped_gemm/vk_mma_sync/bf16/BM128_BN128") != std::string::npos);
  REQUIRE(rep.str().find("PASS (MAPE<=5, P90<=10)") != std::string::npos);
  REQUIRE(rep.str().find("worst 10 held-out points") != std::string::npos);

  SECTION("profile round-trips through YAML and plugs into CostModel") {
    std::ostringstream y;
    write_profile(res.profile, y);
    const CostProfile back = read_profile_string(y.str(), "profile.yaml");
    REQUIRE(back.entries.size() == res.profile.entries.size());
    const ProfileEntry* b = back.find(e->key());
    REQUIRE(b != nullptr);
    REQUIRE(b->params.eta == e->params.eta);
    REQUIRE(b->params.p == e->params.p);
    REQUIRE(std::fabs(b->params.t0_s - e->params.t0_s) < 1e-12);
    REQUIRE(b->residual.size() == e->residual.size());
    REQUIRE(back.clock_hz == Approx(res.profile.clock_hz).epsilon(1e-12));

    CostModelOptions o;
    o.use_residual = false;
    const CostModel cm(h100_sxm(), back, o);
    GroupedGemmShape s;
    s.rows_per_expert.assign(16, 700);
    s.k = 7168;
    s.n = 4096;
    const auto resolved = cm.resolve_grouped_gemm(s);
    REQUIRE(resolved.fitted);
    const GemmFeatures f = gemm_features(s.rows_per_expert, s.k, s.n, s.dtype, s.dtype_out, b->params.tile);
    REQUIRE(cm.grouped_gemm(s) == to_sim_time(gemm_seconds(f, b->params, h100_sxm(), DType::kBf16, back.clock_hz)));
    // Fitted model at the profile clock predicts the true kernel at that clock within a few %.
    const double truth = gemm_seconds(f, true_gemm(), h100_sxm(), DType::kBf16, back.clock_hz);
    REQUIRE(cm.grouped_gemm(s).to_s() == Approx(truth).epsilon(0.03));
    // A different GPU is refused.
    GpuParams other = h100_sxm();
    other.sm_count = 108;
    REQUIRE_THROWS_AS(CostModel(other, back), std::invalid_argument);
    // Fitted routing entries take the harness size measure T x hidden x 2.
    RoutingOp op{RoutingKind::kPermute, 4096, 256, 8, 7168, DType::kBf16, 0};
    const ProfileEntry* rp = back.find("routing/permute/fp32");
    REQUIRE(cm.routing(op) == to_sim_time(bandwidth_seconds(4096.0 * 7168 * 2, rp->params, h100_sxm())));
  }

  SECTION("validate_profile re-evaluates the same rows") {
    const FitReport v = validate_profile(res.profile, dir, opts());
    REQUIRE(v.points.size() == res.report.points.size());
    std::map<int, double> by_line;
    for (const PointError& pe : res.report.points) by_line[pe.line] = pe.ape;
    for (const PointError& pe : v.points) REQUIRE(pe.ape == Approx(by_line.at(pe.line)));
  }

  SECTION("calibration is deterministic") {
    const CalibrationResult again = calibrate(dir, opts());
    std::ostringstream a, b;
    write_profile(res.profile, a);
    write_profile(again.profile, b);
    REQUIRE(a.str() == b.str());
  }
}

TEST_CASE("rows with status != ok, other L2 modes and drifting clocks are skipped and counted", "[calibrate]") {
  SyntheticRun run("skip");
  run.add_run("r1");
  int id = 0;
  add_gemm_sweep(run, "r1", 0.01, 3, &id);
  const std::size_t good = run.meas.size();
  run.add_gemm("r1", id++, {4, 4}, 2048, 1536, 0, 1755, false, "failed");
  run.add_gemm("r1", id++, {4, 4}, 2048, 1536, 0, 1755, false, "failed");
  run.add_gemm("r1", id++, {4, 4}, 2048, 1536, 1e-5, 1755, false, "wrong_result");
  run.add_gemm("r1", id++, {4, 4}, 2048, 1536, 1e-5, 1755, false);
  run.meas.back()["l2_mode"] = "warm";
  run.add_gemm("r1", id++, {4, 4}, 2048, 1536, 1e-5, 1755, false);
  run.meas.back()["clock_drift_flag"] = "1";
  const CalibrationResult res = calibrate(run.write(), opts());
  REQUIRE(res.report.skipped.at("status=failed") == 2);
  REQUIRE(res.report.skipped.at("status=wrong_result") == 1);
  REQUIRE(res.report.skipped.at("l2_mode=warm") == 1);
  REQUIRE(res.report.skipped.at("clock_drift_flag=1") == 1);
  REQUIRE(res.profile.rows_used == static_cast<int>(good));
  REQUIRE(res.profile.rows_skipped == 5);
}

TEST_CASE("bad measurement input gives located, clear errors", "[calibrate]") {
  SyntheticRun run("bad");
  run.add_run("r1");
  int id = 0;
  add_gemm_sweep(run, "r1", 0.01, 5, &id, 200);

  SECTION("missing column") {
    run.meas_cols.erase(std::find(run.meas_cols.begin(), run.meas_cols.end(), "time_us_median"));
    const std::string err = error_of(run.write(), opts());
    REQUIRE_THAT(err, Catch::Contains("measurements.csv:1:") && Catch::Contains("column 'time_us_median'") &&
                          Catch::Contains("missing"));
  }
  SECTION("wrong schema_version") {
    run.meas[3]["schema_version"] = "3";
    const std::string err = error_of(run.write(), opts());
    // header is line 1, meas[3] is line 5; schema_version is column 1.
    REQUIRE_THAT(err, Catch::Contains("measurements.csv:5:1: column 'schema_version'") &&
                          Catch::Contains("schema_version 3 is not supported"));
  }
  SECTION("mixed GPUs") {
    run.add_run("r2", "NVIDIA H200", 132);
    const std::string err = error_of(run.write(), opts());
    REQUIRE_THAT(err, Catch::Contains("runs.csv:3:") && Catch::Contains("mixed GPUs in one fit"));
  }
  SECTION("SM count differs from the GPU parameters") {
    run.runs[0]["sm_count"] = "114";
    REQUIRE_THAT(error_of(run.write(), opts()), Catch::Contains("runs.csv:2:") && Catch::Contains("114 SMs"));
  }
  SECTION("unknown run_id") {
    run.meas[0]["run_id"] = "nope";
    REQUIRE_THAT(error_of(run.write(), opts()),
                 Catch::Contains("measurements.csv:2:2: column 'run_id'") && Catch::Contains("runs.csv"));
  }
  SECTION("missing counts row") {
    run.counts.erase(run.counts.begin());
    REQUIRE_THAT(error_of(run.write(), opts()),
                 Catch::Contains("measurements.csv:2:3: column 'config_id'") && Catch::Contains("no counts.csv row"));
  }
  SECTION("non-numeric time") {
    run.meas[1]["time_us_median"] = "12.5us";
    REQUIRE_THAT(error_of(run.write(), opts()),
                 Catch::Contains("measurements.csv:3:") && Catch::Contains("'12.5us' is not a finite number"));
  }
  SECTION("unknown dtype") {
    run.meas[1]["dtype_in"] = "int3";
    REQUIRE_THAT(error_of(run.write(), opts()), Catch::Contains("column 'dtype_in'") && Catch::Contains("int3"));
  }
  SECTION("every row failed: nothing to fit") {
    for (auto& m : run.meas) m["status"] = "failed";
    REQUIRE_THAT(error_of(run.write(), opts()),
                 Catch::Contains("no usable measurement rows") && Catch::Contains("skipped: status=failed"));
  }
  SECTION("missing runs.csv") {
    const std::string dir = run.write();
    std::filesystem::remove(std::filesystem::path(dir) / "runs.csv");
    REQUIRE_THAT(error_of(dir, opts()), Catch::Contains("runs.csv") && Catch::Contains("file not found"));
  }
}

TEST_CASE("too few points per family is never a silent fit", "[calibrate]") {
  SyntheticRun run("few");
  run.add_run("r1");
  int id = 0;
  add_gemm_sweep(run, "r1", 0.01, 7, &id, 12);  // 12 rows < 4 x 5 parameters
  SECTION("nothing fittable is an error") {
    REQUIRE_THAT(error_of(run.write(), opts()),
                 Catch::Contains("no kernel family could be fitted") && Catch::Contains("too few points"));
  }
  SECTION("a small group beside a fitted one is listed, or an error when strict") {
    add_routing_sweep(run, "r1", 0.02, 8, &id);
    const std::string dir = run.write();
    const CalibrationResult res = calibrate(dir, opts());
    REQUIRE(res.profile.entries.size() == 1);
    REQUIRE(res.report.unfitted.size() == 1);
    REQUIRE_THAT(res.report.unfitted[0], Catch::Contains("grouped_gemm/vk_mma_sync/bf16/BM128_BN128: too few"));
    std::ostringstream rep;
    print_report(res.profile, res.report, rep);
    REQUIRE_THAT(rep.str(), Catch::Contains("not fitted"));
    CalibrateOptions strict = opts();
    strict.strict = true;
    REQUIRE_THAT(error_of(dir, strict), Catch::Contains("too few points"));
  }
}

TEST_CASE("profile YAML errors are located", "[cost][profile]") {
  const std::string good =
      "format_version: 1\n"
      "gpu: {name: \"x\", sm_count: 132, clock_mhz: 1755}\n"
      "entries:\n"
      "  - family: routing\n"
      "    impl: permute\n"
      "    dtype: fp32\n"
      "    params: {mem_eff: 0.4, t0: 4us}\n";
  const CostProfile p = read_profile_string(good, "p.yaml");
  REQUIRE(p.entries.size() == 1);
  REQUIRE(p.entries[0].params.t0_s == Approx(4e-6));
  auto err = [](const std::string& text) {
    try {
      read_profile_string(text, "p.yaml");
    } catch (const moesim::config::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  std::string v2 = good;
  v2.replace(v2.find("format_version: 1"), 17, "format_version: 2");
  REQUIRE_THAT(err(v2), Catch::Contains("p.yaml:1:") && Catch::Contains("unsupported cost profile format_version 2"));
  std::string dt = good;
  dt.replace(dt.find("dtype: fp32"), 11, "dtype: fp64");
  REQUIRE_THAT(err(dt), Catch::Contains("p.yaml:6:") && Catch::Contains("unknown dtype 'fp64'"));
  std::string unitless = good;
  unitless.replace(unitless.find("t0: 4us"), 7, "t0: 4");
  REQUIRE_THAT(err(unitless), Catch::Contains("p.yaml:7:") && Catch::Contains("t0"));
  std::string typo = good;
  typo.replace(typo.find("mem_eff"), 7, "mem_ef");
  REQUIRE_THAT(err(typo), Catch::Contains("mem_ef"));
}

TEST_CASE("summary statistics", "[calibrate]") {
  const ErrorSummary s = summarize({4, 1, 3, 2, 10, 5, 6, 7, 8, 9});
  REQUIRE(s.n == 10);
  REQUIRE(s.mape == Approx(5.5));
  REQUIRE(s.median == Approx(5.5));
  REQUIRE(s.p90 == Approx(9.1));  // rank 0.9 * 9 = 8.1 between 9 and 10
  REQUIRE(s.max == 10);
  REQUIRE(summarize({}).n == 0);
}

TEST_CASE("schema version 2 (the harness's) is read, version 1 still", "[calibrate]") {
  for (const char* v : {"1", "2"}) {
    SyntheticRun run(std::string("schema") + v);
    run.add_run("r1");
    int id = 0;
    add_gemm_sweep(run, "r1", 0.01, 21, &id, 120);
    for (auto& m : run.meas) m["schema_version"] = v;
    for (auto& r : run.runs) r["schema_version"] = v;
    REQUIRE(calibrate(run.write(), opts()).profile.entries.size() == 1);
  }
}

TEST_CASE("the harness's CSV writer: missing values are empty fields that calibrate reads as missing", "[calibrate]") {
  // Written through validation_kernels' own CsvWriter with NaN where the harness had no reading
  // (no NVML, a failed clock probe): one 'nan' field used to abort the whole fit.
  namespace vk = moesim::vk;
  SyntheticRun run("vkwriter");
  const auto dir = run.dir;
  {
    vk::CsvWriter runs((dir / "runs.csv").string(), vk::column_vector(vk::kRunsColumns));
    runs.write(vk::CsvRow()
                   .set("schema_version", vk::kSchemaVersion)
                   .set("run_id", "r1")
                   .set("git_commit", "abc")
                   .set("gpu_name", "NVIDIA H100 80GB HBM3")
                   .set("sm_count", 132)
                   .set("sm_clock_probed_mhz", 1755.0)
                   .set("sm_clock_max_mhz", NAN)
                   .set("hbm_gbps_probed", NAN));
    vk::CsvWriter meas((dir / "measurements.csv").string(), vk::column_vector(vk::kMeasurementColumns));
    moesim::sim::Rng rng(3, "vk writer");
    for (int i = 0; i < 40; ++i) {
      const double bytes = std::exp(rng.uniform(std::log(1e5), std::log(1e9)));
      const double t = 5e-6 + bytes / (0.5 * 3.35e12);
      meas.write(vk::CsvRow()
                     .set("schema_version", vk::kSchemaVersion)
                     .set("run_id", "r1")
                     .set("config_id", i)
                     .set("heldout", i % 6 == 0 ? 1 : 0)
                     .set("kernel_family", "elementwise")
                     .set("impl", "rmsnorm")
                     .set("impl_config", "rmsnorm_T128")
                     .set("dtype_in", "bf16")
                     .set("dtype_out", "bf16")
                     .set("K", 4096)
                     .set("N", 4096)
                     .set("bytes_min", bytes)
                     .set("l2_mode", "cold")
                     .set("timing_method", "events_cold_l2")
                     .set("time_us_median", t * 1e6)
                     .set("sm_clock_mhz_before", NAN)  // no reading: empty, falls back to the probed clock
                     .set("sm_clock_mhz_after", NAN)
                     .set("clock_drift_flag", 0)
                     .set("power_w", NAN)
                     .set("max_rel_err", INFINITY)
                     .set("status", "ok"));
    }
  }
  const CalibrationResult res = calibrate(dir.string(), opts());
  const ProfileEntry* e = res.profile.find("elementwise/rmsnorm/bf16");
  REQUIRE(e != nullptr);
  CHECK(e->params.mem_eff == Approx(0.5).epsilon(0.01));
  CHECK(res.profile.clock_hz == Approx(1755e6));
}

TEST_CASE("attention rows fit the roofline skeleton", "[cost][calibrate]") {
  SyntheticRun run("attention");
  run.add_run("r1");
  const GpuParams g = h100_sxm();
  ModelParams truth = default_attention_params(g, AttentionShape::Phase::kPrefill);
  truth.eta = 0.45;
  truth.mem_eff = 0.7;
  truth.t0_s = 8e-6;
  truth.p = 2.5;
  moesim::sim::Rng rng(9, "attention");
  int id = 0;
  for (int64_t s : {512, 1024, 2048, 4096, 8192, 16384})
    for (int64_t heads : {32, 64})
      for (int64_t b : {1, 2, 4, 8}) {
        AttentionShape a;
        a.batch = b;
        a.q_len = a.kv_len = s;
        a.heads = heads;
        a.kv_heads = 8;
        const double f = attention_flops(a), by = attention_bytes(a);
        const double t = roofline_seconds(f, by, truth, g, DType::kBf16, 1755e6) * std::exp(0.01 * rng.normal());
        const bool held = id % 5 == 0;
        run.add_routing("r1", id++, "vk_flash_prefill", by, t, held);
        run.meas.back()["kernel_family"] = "attention_prefill";
        run.meas.back()["dtype_in"] = "bf16";
        run.meas.back()["flops"] = fmt::format("{}", f);
      }
  const CalibrationResult res = calibrate(run.write(), opts());
  const ProfileEntry* e = res.profile.find("attention_prefill/vk_flash_prefill/bf16");
  REQUIRE(e != nullptr);
  CHECK(e->params.eta == Approx(0.45).epsilon(0.05));
  CHECK(e->fit.heldout_mape < 3.0);
  // The fitted entry drives CostModel::attention.
  CostProfile prof = res.profile;
  const CostModel cm(g, prof);
  AttentionShape a;
  a.batch = 2;
  a.q_len = a.kv_len = 4096;
  a.heads = 64;
  a.kv_heads = 8;
  const double want =
      roofline_seconds(attention_flops(a), attention_bytes(a), e->params, g, DType::kBf16, cm.clock_hz());
  CHECK(cm.attention(a).to_s() == Approx(want).epsilon(1e-6));
}

TEST_CASE("an H200 run under H100 parameters is refused; the GPU is found from runs.csv", "[calibrate]") {
  SyntheticRun run("h200");
  run.add_run("r1", "NVIDIA H200", 132);
  run.runs[0]["hbm_gbps_probed"] = "4310";  // an H200's copy rate, above the H100's 3,350 GB/s datasheet
  run.runs[0]["hbm_bytes"] = "150754820096";
  int id = 0;
  add_gemm_sweep(run, "r1", 0.01, 5, &id, 200);
  const std::string dir = run.write();
  REQUIRE_THAT(error_of(dir, opts()), Catch::Contains("runs.csv:2:") && Catch::Contains("hbm_gbps_probed") &&
                                          Catch::Contains("not from that GPU"));
  const RunGpu rg = read_run_gpu(dir);
  CHECK(rg.gpu_name == "NVIDIA H200");
  CHECK(rg.line == 2);
  // Catalog-like candidates (hardware/catalog/gpus.yaml figures).
  const std::vector<GpuCandidate> cat = {{"h100-sxm", 132, 85899345920.0},
                                         {"h100-pcie", 114, 85899345920.0},
                                         {"h200", 132, 141e9},
                                         {"h800", 132, 85899345920.0},
                                         {"a100-80gb-sxm", 108, 85899345920.0}};
  std::string why;
  CHECK(match_gpu(rg, cat, &why) == "h200");
  RunGpu h100{"runs.csv", 2, "NVIDIA H100 80GB HBM3", 132, 85520809984.0, 3000};
  CHECK(match_gpu(h100, cat, &why) == "h100-sxm");
  RunGpu pcie{"runs.csv", 2, "NVIDIA H100 PCIe", 114, 85520809984.0, 1800};
  CHECK(match_gpu(pcie, cat, &why) == "h100-pcie");
  RunGpu h800{"runs.csv", 2, "NVIDIA H800", 132, 85520809984.0, 3000};
  CHECK(match_gpu(h800, cat, &why) == "h800");
  RunGpu odd{"runs.csv", 2, "NVIDIA H100 (odd)", 100, 85520809984.0, 3000};
  CHECK(match_gpu(odd, cat, &why).empty());
  CHECK_THAT(why, Catch::Contains("no catalog GPU matches") && Catch::Contains("h100-sxm"));
  RunGpu mock{"runs.csv", 2, "NVIDIA H100 80GB HBM3 (CPU mock)", 132, 85899345920.0, 0};
  CHECK(match_gpu(mock, cat, &why) == "h100-sxm");
}

TEST_CASE("a fitted efficiency above 1 is reported (an error when strict)", "[calibrate]") {
  // Routing rows whose time implies 1.4x the datasheet bandwidth (as H200 data with H100
  // parameters would without the probe column).
  SyntheticRun run("memeff");
  run.add_run("r1");
  moesim::sim::Rng rng(4, "memeff");
  for (int i = 0; i < 30; ++i) {
    const double bytes = std::exp(rng.uniform(std::log(1e6), std::log(4e9)));
    run.add_routing("r1", i, "permute", bytes, 3e-6 + bytes / (1.4 * 3.35e12), i % 5 == 0);
  }
  const std::string dir = run.write();
  const CalibrationResult res = calibrate(dir, opts());
  REQUIRE(res.report.warnings.size() == 1);
  CHECK_THAT(res.report.warnings[0], Catch::Contains("mem_eff") && Catch::Contains("above 1"));
  std::ostringstream rep;
  print_report(res.profile, res.report, rep);
  CHECK_THAT(rep.str(), Catch::Contains("warnings:"));
  CalibrateOptions strict = opts();
  strict.strict = true;
  CHECK_THAT(error_of(dir, strict), Catch::Contains("above 1"));
}
