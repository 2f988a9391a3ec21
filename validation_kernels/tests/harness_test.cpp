// CPU tests of the harness logic the first GPU run depends on: CSV writing (missing values, append,
// upsert, invalidation), the watchdog, the timing sequence's ordering, the gate check's near-tie
// rule, the library search order, option parsing, the budget order and the self-test cases.
#include <unistd.h>
#include <catch2/catch.hpp>

#include <algorithm>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "validation_kernels/harness/checks.hpp"
#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/grid.hpp"
#include "validation_kernels/harness/options.hpp"
#include "validation_kernels/harness/schema.hpp"
#include "validation_kernels/harness/search_paths.hpp"
#include "validation_kernels/harness/timing.hpp"
#include "validation_kernels/harness/watchdog.hpp"

using namespace moesim::vk;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("vk_harness_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("CSV: a missing (non-finite) number is an empty field, never 'nan'") {
  CsvRow r;
  r.set("a", NAN).set("b", INFINITY).set("c", -INFINITY).set("d", 1.5).set("e", 0.0);
  CHECK(r.get("a").empty());
  CHECK(r.get("b").empty());
  CHECK(r.get("c").empty());
  CHECK(r.get("d") == "1.5");
  CHECK(r.get("e") == "0");
  CHECK(format_number(NAN).empty());
  CHECK(format_number(123456789.0) == "1.23457e+08");
  const std::string line = csv_line({"a", "b", "c", "d", "e"}, r.set("b", "x"));
  CHECK(line == ",x,,1.5,0");
  CHECK_THROWS(csv_line({"a"}, r));  // a column the schema lacks
  CHECK(line.find("nan") == std::string::npos);
}

TEST_CASE("CSV: parse round-trips quotes, commas and newlines; bad records are errors") {
  const CsvFile f = parse_csv("a,b,c\r\nx,\"y,\"\"z\"\"\",\"multi\nline\"\n,,\n", "t");
  REQUIRE(f.header == std::vector<std::string>{"a", "b", "c"});
  REQUIRE(f.rows.size() == 2);
  CHECK(f.rows[0][1] == "y,\"z\"");
  CHECK(f.rows[0][2] == "multi\nline");
  CHECK(f.rows[1] == std::vector<std::string>{"", "", ""});
  CHECK(f.column("c") == 2);
  CHECK(f.column("nope") == -1);
  CHECK_THROWS(parse_csv("a,b\n1\n", "t"));
  CHECK_THROWS(parse_csv("a\n\"open\n", "t"));
}

TEST_CASE("CSV: append keeps earlier rows and refuses a different header") {
  const fs::path d = fresh_dir("append");
  const std::string p = (d / "m.csv").string();
  {
    CsvWriter w(p, {"run_id", "v"}, CsvWriter::Mode::kAppend);
    w.write(CsvRow().set("run_id", "r1").set("v", 1));
  }
  {
    CsvWriter w(p, {"run_id", "v"}, CsvWriter::Mode::kAppend);
    w.write(CsvRow().set("run_id", "r2").set("v", 2));
  }
  CHECK(slurp(p) == "run_id,v\nr1,1\nr2,2\n");
  CHECK_THROWS_AS(CsvWriter(p, {"run_id", "other"}, CsvWriter::Mode::kAppend), std::runtime_error);
  {
    CsvWriter w(p, {"run_id", "v"});  // truncate
    w.write(CsvRow().set("run_id", "r3"));
  }
  CHECK(slurp(p) == "run_id,v\nr3,\n");
  fs::remove_all(d);
}

TEST_CASE("CSV: runs.csv upsert replaces this run's row and keeps the others") {
  const fs::path d = fresh_dir("upsert");
  const std::string p = (d / "runs.csv").string();
  const std::vector<std::string> cols = {"run_id", "status", "notes"};
  upsert_csv_row(p, cols, "run_id", CsvRow().set("run_id", "a").set("status", "running"));
  upsert_csv_row(p, cols, "run_id", CsvRow().set("run_id", "b").set("status", "running"));
  upsert_csv_row(p, cols, "run_id", CsvRow().set("run_id", "a").set("status", "hang").set("notes", "x, \"y\""));
  const CsvFile f = read_csv(p);
  REQUIRE(f.rows.size() == 2);
  CHECK(f.rows[0] == std::vector<std::string>{"a", "hang", "x, \"y\""});
  CHECK(f.rows[1] == std::vector<std::string>{"b", "running", ""});
  CHECK(!fs::exists(p + ".tmp"));
  CHECK_THROWS(upsert_csv_row(p, {"run_id", "other"}, "run_id", CsvRow().set("run_id", "c")));
  fs::remove_all(d);
}

TEST_CASE("CSV: a failed check invalidates that impl's ok rows only, with a note") {
  const fs::path d = fresh_dir("restatus");
  const std::string p = (d / "measurements.csv").string();
  {
    CsvWriter w(p, {"run_id", "impl", "status", "time_us_median", "notes"});
    w.write(CsvRow().set("run_id", "r").set("impl", "k1").set("status", "ok").set("time_us_median", 3.0));
    w.write(CsvRow().set("run_id", "r").set("impl", "k1").set("status", "failed_check").set("notes", "bad"));
    w.write(CsvRow().set("run_id", "r").set("impl", "k2").set("status", "ok").set("time_us_median", 4.0));
    w.write(CsvRow().set("run_id", "other").set("impl", "k1").set("status", "ok"));
  }
  CHECK(restatus_rows(p, "r", {"k1"}, "ok", "invalidated", "why") == 1);
  const CsvFile f = read_csv(p);
  CHECK(f.rows[0][2] == "invalidated");
  CHECK(f.rows[0][3] == "3");  // the measured time is kept, never edited
  CHECK(f.rows[0][4] == "why");
  CHECK(f.rows[1][2] == "failed_check");
  CHECK(f.rows[2][2] == "ok");
  CHECK(f.rows[3][2] == "ok");
  fs::remove_all(d);
}

TEST_CASE("watchdog: done, device error, timeout with the hang handler, interrupt") {
  double t = 0;
  Watchdog w(
      10.0, [&] { return t; }, [&](double) { t += 0.5; });
  int polls = 0;
  CHECK(w.wait([&] { return ++polls >= 3 ? Watchdog::Poll::kDone : Watchdog::Poll::kPending; }, "x") ==
        Watchdog::Result::kDone);
  CHECK(polls == 3);
  CHECK(w.wait([] { return Watchdog::Poll::kError; }, "x") == Watchdog::Result::kError);
  std::string hung;
  double waited = 0;
  w.set_hang_handler([&](const std::string& what, double s) {
    hung = what;
    waited = s;
  });
  t = 100;
  CHECK(w.wait([] { return Watchdog::Poll::kPending; }, "stuck kernel") == Watchdog::Result::kTimeout);
  CHECK(hung == "stuck kernel");
  CHECK(waited > 10.0);
  CHECK(waited < 11.0);
  volatile std::sig_atomic_t flag = 1;
  w.set_interrupt_flag(&flag);
  CHECK(w.wait([] { return Watchdog::Poll::kPending; }, "y", true) == Watchdog::Result::kInterrupted);
  hung.clear();
  CHECK(w.wait([] { return Watchdog::Poll::kPending; }, "z", false) ==
        Watchdog::Result::kTimeout);  // not interruptible
  CHECK(hung == "z");
}

namespace {

/// Records the device operations of the timing sequence and fails on a clock reading taken while
/// launches are still outstanding (the race of the first review).
struct FakeOps {
  std::vector<std::string> log;
  int pending = 0;
  bool clock_while_busy = false;
  double clock = 1500;
  void launch() {
    ++pending;
    log.push_back("launch");
  }
  void flush() {
    ++pending;
    log.push_back("flush");
  }
  void record(int) { log.push_back("record"); }
  void drain() {
    pending = 0;
    log.push_back("drain");
  }
  double elapsed_us(int a, int) { return 5.0 + (a % 3); }
  double clock_mhz() {
    if (pending) clock_while_busy = true;
    log.push_back("clock");
    return clock;
  }
  double power_w() { return 300; }
  double temp_c() { return 50; }
};

}  // namespace

TEST_CASE("timing: the before clock is read after the warm-up, and only on a drained stream") {
  FakeOps ops;
  TimingParams p;
  p.warmup = 3;
  p.iters = 4;
  p.batch = 2;
  p.batch_repeats = 2;
  const std::vector<Timing> t = time_kernel(ops, p);
  CHECK_FALSE(ops.clock_while_busy);
  // warm-up launches, drain, clock, then the timed loop.
  REQUIRE(ops.log.size() > 6);
  CHECK(ops.log[0] == "launch");
  CHECK(ops.log[2] == "launch");
  CHECK(ops.log[3] == "drain");
  CHECK(ops.log[4] == "clock");
  CHECK(ops.log[5] == "flush");
  const auto first_clock = std::find(ops.log.begin(), ops.log.end(), "clock") - ops.log.begin();
  const auto last_warmup = 2;
  CHECK(first_clock > last_warmup);
  REQUIRE(t.size() == 2);  // median 5.5 us < 20 us: a batched row too
  CHECK(t[0].method == "events_cold_l2");
  CHECK(t[0].warmup == 3);
  CHECK(t[0].iters == 4);
  CHECK(t[0].stats.median == Approx(5.5));  // events 0,2,4,6 -> 5,7,6,5 us
  CHECK(t[1].method == "events_batched_warm_l2");
  CHECK(t[1].batch == 2);
  CHECK(t[1].stats.median == Approx(3.0));  // (5 or 6) / 2 launches
  CHECK_FALSE(t[0].drift());
  Timing d;
  d.clock_before = 1500;
  d.clock_after = 1400;
  CHECK(d.drift());
  d.clock_after = NAN;
  CHECK_FALSE(d.drift());
}

TEST_CASE("timing: long kernels get no batched row") {
  struct Slow : FakeOps {
    double elapsed_us(int, int) { return 100.0; }
  } ops;
  TimingParams p;
  p.warmup = 1;
  p.iters = 3;
  CHECK(time_kernel(ops, p).size() == 1);
  CHECK_FALSE(ops.clock_while_busy);
}

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("gate check: a near-tie swap with sigmoid + bias passes on recomputed weights; a real error fails") {
  // Two experts tie in biased score (sigmoid + bias) but their un-biased weights differ by ~1e-2.
  const int E = 8, k = 2;
  std::vector<float> logits(E, -3.0f), bias(E, 0.0f);
  logits[1] = 0.0f;  // s = 0.5, clear winner
  logits[3] = 0.3f;  // sigmoid 0.5744
  bias[3] = 0.0f;
  logits[5] = 0.25f;  // sigmoid 0.5622; + bias makes it tie expert 3 within 1e-6
  bias[5] = static_cast<float>(sigmoid(0.3) - sigmoid(0.25));
  ref::GateConfig cfg;
  cfg.kind = ref::GateKind::kSigmoidBias;
  cfg.num_experts = E;
  cfg.topk = k;
  cfg.renormalize = true;
  const ref::Routing want = ref::gate_topk(logits.data(), 1, cfg, bias.data());
  // The two tied experts hold both slots; the kernel returns them in the other order.
  REQUIRE(std::set<int32_t>{want.expert[0], want.expert[1]} == std::set<int32_t>{3, 5});
  REQUIRE(std::fabs(want.score[0] - want.score[1]) < 1e-6);
  const int32_t ge[2] = {want.expert[1], want.expert[0]};
  const float gs[2] = {want.score[1], want.score[0]};
  auto w_of = [](int32_t e) { return e == 3 ? sigmoid(0.3) : sigmoid(0.25); };
  const double wsum = w_of(ge[0]) + w_of(ge[1]);
  float gw[2] = {static_cast<float>(w_of(ge[0]) / wsum), static_cast<float>(w_of(ge[1]) / wsum)};
  GateCheck c = check_gate_topk(logits.data(), bias.data(), 1, cfg, {0}, ge, gw, gs);
  CHECK(c.ok);
  CHECK(c.tolerated_swaps == 2);
  // The old rule compared with the reference's weights for ITS order: ~1e-2 off for this order.
  CHECK(std::fabs(gw[0] - want.weight[0]) > 1e-3);
  // A wrong weight fails even on a tolerated swap.
  gw[0] += 1e-3f;
  c = check_gate_topk(logits.data(), bias.data(), 1, cfg, {0}, ge, gw, gs);
  CHECK_FALSE(c.ok);
  CHECK(c.problem.find("recomputed") != std::string::npos);
  gw[0] -= 1e-3f;
  // A different expert without a tie fails.
  const int32_t bad[2] = {want.expert[0], 0};
  const float bad_s[2] = {want.score[0], static_cast<float>(sigmoid(-3.0))};
  const float bad_w[2] = {0.9f, 0.1f};
  c = check_gate_topk(logits.data(), bias.data(), 1, cfg, {0}, bad, bad_w, bad_s);
  CHECK_FALSE(c.ok);
  // A score that is not the chosen expert's fails.
  const float lie_s[2] = {gs[0], gs[0] + 1e-3f};
  c = check_gate_topk(logits.data(), bias.data(), 1, cfg, {0}, ge, gw, lie_s);
  CHECK_FALSE(c.ok);
  // A repeated expert fails.
  const int32_t rep[2] = {ge[0], ge[0]};
  c = check_gate_topk(logits.data(), bias.data(), 1, cfg, {0}, rep, gw, gs);
  CHECK_FALSE(c.ok);
}

TEST_CASE("gate check: exact agreement on random softmax tokens, sampled token lists") {
  const int T = 200, E = 16, k = 4;
  std::vector<float> logits(static_cast<size_t>(T) * E);
  Rng rng(5);
  for (float& x : logits) x = static_cast<float>(rng.normal());
  ref::GateConfig cfg;
  cfg.num_experts = E;
  cfg.topk = k;
  cfg.renormalize = true;
  const ref::Routing r = ref::gate_topk(logits.data(), T, cfg);
  const auto all = sample_indices(T, T, 0);
  GateCheck c = check_gate_topk(logits.data(), nullptr, T, cfg, all, r.expert.data(), r.weight.data(), r.score.data());
  CHECK(c.ok);
  CHECK(c.tokens_checked == T);
  CHECK(c.tolerated_swaps == 0);
  std::vector<float> w = r.weight;
  w[static_cast<size_t>(7 * k + 2)] += 1e-3f;
  c = check_gate_topk(logits.data(), nullptr, T, cfg, all, r.expert.data(), w.data(), r.score.data());
  CHECK_FALSE(c.ok);
  CHECK(c.problem.find("token 7") != std::string::npos);
}

TEST_CASE("sampling, bf16 and e4m3 decoding, output comparison") {
  const auto s = sample_indices(1000, 10, 3);
  CHECK(s.size() == 10);
  CHECK(s.front() == 0);
  CHECK(s.back() == 999);
  CHECK(std::is_sorted(s.begin(), s.end()));
  CHECK(sample_indices(5, 10, 3).size() == 5);
  CHECK(sample_indices(1000, 10, 3) == s);
  CHECK(e4m3_to_float(0x38) == 1.0f);
  CHECK(e4m3_to_float(0x7E) == 448.0f);
  CHECK(e4m3_to_float(0xFE) == -448.0f);
  CHECK(std::isnan(e4m3_to_float(0x7F)));
  CHECK(e4m3_to_float(0x01) == std::ldexp(1.0f, -9));
  CHECK(e4m3_to_float(0x08) == std::ldexp(1.0f, -6));
  CHECK(e4m3_to_float(0x3C) == 1.5f);
  CHECK(bf16_bits_to_float(0x3F80) == 1.0f);
  CHECK(std::isnan(bf16_bits_to_float(kBf16Poison)));
  CHECK(float_to_bf16_bits(1.0f) == 0x3F80);
  CHECK(float_to_bf16_bits(1.00390625f) == 0x3F80);  // halfway: ties to even
  CHECK(float_to_bf16_bits(1.01171875f) == 0x3F82);  // halfway above odd 0x3F81: up to even
  Tolerance tol;
  CompareResult r = compare_outputs({1.0, -2.0, 3.0}, {1.0f, -2.0f, 3.0f}, tol);
  CHECK(r.ok(tol.rel_norm));
  r = compare_outputs({1.0, -2.0, 3.0}, {1.0f, -2.0f, NAN}, tol);
  CHECK_FALSE(r.ok(tol.rel_norm));
  CHECK(r.nonfinite == 1);
  r = compare_outputs({1.0, -2.0, 3.0}, {1.0f, -2.0f, 3.1f}, tol);
  CHECK_FALSE(r.ok(tol.rel_norm));
  CHECK(r.bad == 1);
}

TEST_CASE("library search: override first, no stubs, toolkit and Python wheel folders found") {
  SearchEnv env;
  env.override_path = "/custom/libcublas.so.13";
  env.ldconfig_output =
      "1234 libs found in cache `/etc/ld.so.cache'\n"
      "\tlibcublas.so.13 (libc6,x86-64) => /usr/local/cuda/lib64/libcublas.so.13\n"
      "\tlibcublas.so.130 (libc6,x86-64) => /wrong/libcublas.so.130\n"
      "\tlibcublas.so.12 (libc6) => /i386/libcublas.so.12\n"
      "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n";
  env.path = "/opt/torch/.venv/bin:/usr/bin";
  env.ld_library_path = "/usr/local/cuda/lib64/stubs";
  const std::set<std::string> files = {"/opt/torch/.venv/bin/python3",
                                       "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13",
                                       "/usr/bin/python3"};
  env.exists = [&](const std::string& p) { return files.count(p) > 0; };
  env.list_dir = [](const std::string& d) -> std::vector<std::string> {
    if (d == "/opt/torch/.venv/lib") return {"python3.12"};
    if (d == "/opt") return {"torch"};
    if (d == "/usr/local") return {"cuda-13.0", "lib"};
    return {};
  };
  const auto c = cublas_candidates(env);
  REQUIRE(c.size() > 5);
  CHECK(c[0] == "/custom/libcublas.so.13");
  CHECK(c[1] == "libcublas.so.13");
  auto pos = [&](const std::string& p) { return std::find(c.begin(), c.end(), p) - c.begin(); };
  CHECK(pos("/usr/local/cuda/lib64/libcublas.so.13") < static_cast<long>(c.size()));
  CHECK(pos("/usr/local/cuda-13.0/lib64/libcublas.so.13") < static_cast<long>(c.size()));
  CHECK(pos("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13") <
        static_cast<long>(c.size()));
  CHECK(pos("/wrong/libcublas.so.130") == static_cast<long>(c.size()));  // other sonames ignored
  CHECK(pos("/i386/libcublas.so.12") == static_cast<long>(c.size()));    // 32-bit ignored
  for (const auto& p : c) CHECK(p.find("/stubs/") == std::string::npos);
  CHECK(pos("libcublas.so.12") > pos("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13"));
  CHECK(std::set<std::string>(c.begin(), c.end()).size() == c.size());
  env.driver_dir = "/usr/local/nvidia/lib64";
  const auto n = nvml_candidates(env);
  CHECK(n[1] == "libnvidia-ml.so.1");
  CHECK(std::find(n.begin(), n.end(), "/usr/local/nvidia/lib64/libnvidia-ml.so.1") != n.end());
  CHECK(std::find(n.begin(), n.end(), "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1") != n.end());
  CHECK(parse_ldconfig(env.ldconfig_output, "libcublas.so.13") ==
        std::vector<std::string>{"/usr/local/cuda/lib64/libcublas.so.13"});
}

namespace {

HarnessOptions parse(std::vector<std::string> args) {
  std::vector<char*> argv;
  static std::string prog = "vk_harness";
  argv.push_back(prog.data());
  for (auto& a : args) argv.push_back(a.data());
  return parse_options(static_cast<int>(argv.size()), argv.data());
}

}  // namespace

TEST_CASE("options: budget, skip-impl, watchdog, bad values") {
  const HarnessOptions o = parse({"--full", "--budget", "300", "--skip-impl", "vk_wgmma", "--skip-impl", "cublas",
                                  "--watchdog-s", "5", "--run-id", "r1_x", "--git-commit", "abc"});
  CHECK(o.grid.kind == GridKind::kFull);
  CHECK(o.budget_s == 300);
  CHECK(o.skip_impls == std::vector<std::string>{"vk_wgmma", "cublas"});
  CHECK(o.watchdog_s == 5);
  CHECK(o.git_commit == "abc");
  CHECK_THROWS(parse({"--skip-impl", "no_such_kernel"}));
  CHECK_THROWS(parse({"--budget", "-1"}));
  CHECK_THROWS(parse({"--budget", "12x"}));
  CHECK_THROWS(parse({"--iters", "0"}));
  CHECK_THROWS(parse({"--run-id", "a/b"}));
  CHECK_THROWS(parse({"--bogus"}));
  CHECK_THROWS(parse({"--no-selftest", "--selftest-only"}));
  CHECK(parse({"--time-budget-s", "60"}).budget_s == 60);  // the old spelling
}

TEST_CASE("budget order: a deterministic permutation that gives every family its share early") {
  GridOptions o;
  o.kind = GridKind::kFull;
  o.heldout = 150;
  const std::vector<Config> grid = build_grid(o);
  const DeviceModel m;
  const std::vector<size_t> order = information_order(grid, m);
  REQUIRE(order.size() == grid.size());
  CHECK(std::set<size_t>(order.begin(), order.end()).size() == grid.size());
  CHECK(information_order(grid, m) == order);
  // Walk the order as a 300 s budget would (planning estimates, no rescaling).
  double t = 0;
  std::map<std::string, int> fit, held;
  int grouped_seen = 0;
  double m_lo = 1e9, m_hi = 0;
  std::set<int> experts;
  for (size_t i : order) {
    const Config& c = grid[i];
    t += estimate_seconds(c, planned_impls(c).size(), m);
    if (t > 300) break;
    const std::string key =
        std::string(to_string(c.family)) + (c.gemm.dtype == GemmDtype::kFp8E4m3 && is_gemm(c.family) ? "/fp8" : "");
    (c.heldout ? held : fit)[key]++;
    if (c.family == Family::kGroupedGemm && c.gemm.dtype == GemmDtype::kBf16 && grouped_seen++ < 30) {
      m_lo = std::min(m_lo, count_stats(c.gemm.counts).m_mean);
      m_hi = std::max(m_hi, count_stats(c.gemm.counts).m_mean);
      experts.insert(c.gemm.experts_local);
    }
  }
  for (const auto& [k, n] : fit) INFO(k << " fit " << n << " held " << held[k]);
  CHECK(fit.size() == 8);  // 7 families, fp8 apart
  // Enough fitted rows for moesim calibrate (4 per parameter: 5 GEMM, 4 attention, 2 bandwidth).
  CHECK(fit["grouped_gemm"] >= 20);
  CHECK(fit["grouped_gemm/fp8"] >= 20);
  CHECK(fit["dense_gemm"] >= 20);
  CHECK(fit["routing"] >= 8);
  CHECK(fit["attention_prefill"] >= 16);
  CHECK(fit["attention_decode"] >= 16);
  CHECK(fit["elementwise"] >= 8);
  CHECK(held["grouped_gemm"] >= 3);  // held-out rows interleaved, not left to the end
  // The first 30 bf16 grouped configurations already span the m and E ranges.
  CHECK(m_lo <= 4);
  CHECK(m_hi >= 2048);
  CHECK(experts.count(1) == 1);
  CHECK(experts.count(256) == 1);
}

TEST_CASE("self-test cases: tails, both warpgroups, empty experts, ring wrap, masked clamp, fp8") {
  const auto cases = selftest_cases();
  std::set<std::string> names;
  bool tail = false, second_wg = false, empty = false, many = false, clamp = false, fp8 = false;
  for (const SelfTestCase& t : cases) {
    names.insert(t.name);
    CHECK(t.n % 128 == 0);
    CHECK(t.k % (t.dtype == GemmDtype::kFp8E4m3 ? 128 : 64) == 0);
    int64_t tiles = 0;
    for (int64_t m : t.counts) {
      tail = tail || (m % 128 != 0 && m > 128);
      second_wg = second_wg || m % 128 > 64 || m >= 128;
      empty = empty || m == 0;
      clamp = clamp || (t.capacity > 0 && m > t.capacity);
      tiles += (m + 127) / 128 * (t.n / 128);
    }
    many = many || tiles > 132;
    fp8 = fp8 || t.dtype == GemmDtype::kFp8E4m3;
    if (t.cpu_reference) CHECK(static_cast<double>(tiles) * 128 * 128 * t.k < 2e9);  // cheap on the CPU
  }
  CHECK(names.size() == cases.size());
  CHECK(tail);
  CHECK(second_wg);
  CHECK(empty);
  CHECK(many);
  CHECK(clamp);
  CHECK(fp8);
  CHECK(selftest_cases(true).size() >= 5);
}
