#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "explore/csv.hpp"
#include "explore/executor.hpp"
#include "explore/results.hpp"
#include "explore/sweep.hpp"
#include "sim/rng.hpp"

namespace fs = std::filesystem;
using moesim::config::ConfigError;
using namespace moesim::explore;

namespace {

/// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moesim-sweep-test-" + tag + "-" + std::to_string(::getpid()));
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

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// A cheap routing-only base scenario (16 groups of 128 tokens over switch-base-128).
const char* kBase = R"(scenario:
  name: tiny-routing
  model: switch-base-128
  parallel: { dp: 4, ep: 4 }
  workload: { mode: routing, seq_len: 128, global_batch: 8 }
  routing: { distribution: power_law, alpha: 0.5, capacity_factor: 1.0 }
  seed: 11
)";

std::string sweep_text(const std::string& rest) { return std::string(kBase) + rest; }

/// The error text of loading `text` as a sweep file (fails the test if it loads).
std::string load_error(const TempDir& d, const std::string& text) {
  const std::string f = d.write("bad.yaml", text);
  try {
    load_sweep(f);
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError for:\n" << text);
  return {};
}

}  // namespace

TEST_CASE("the product is enumerated with the last axis fastest; excludes drop points", "[sweep]") {
  TempDir d("product");
  const std::string f = d.write("s.yaml", sweep_text(R"(axes:
  routing.capacity_factor: [1.0, 1.5]
  routing.alpha: [0, 0.6, 1.2]
exclude:
  - { routing.capacity_factor: 1.5, routing.alpha: [0, 1.2] }
)"));
  const Sweep sw = load_sweep(f);
  REQUIRE(sw.columns == std::vector<std::string>{"routing.capacity_factor", "routing.alpha"});
  std::vector<std::vector<std::string>> labels;
  for (const auto& p : sw.points) labels.push_back(p.labels);
  REQUIRE(labels ==
          std::vector<std::vector<std::string>>{{"1.0", "0"}, {"1.0", "0.6"}, {"1.0", "1.2"}, {"1.5", "0.6"}});
  // The axis values reach the parsed scenarios.
  REQUIRE(sw.points[3].scenario.routing.capacity_factor == 1.5);
  REQUIRE(sw.points[3].scenario.routing.alpha == 0.6);
  REQUIRE(sw.points[0].scenario.routing.capacity_factor == 1.0);
  REQUIRE(sw.runs.size() == 4);
  REQUIRE(sw.base_seed == 11);
}

TEST_CASE("linked axes take their values together", "[sweep]") {
  TempDir d("linked");
  const std::string f = d.write("s.yaml", sweep_text(R"(axes:
  width:
    model.experts: [64, 128]
    parallel.ep: [2, 4]
  routing.alpha: [0, 1]
)"));
  const Sweep sw = load_sweep(f);
  REQUIRE(sw.columns == std::vector<std::string>{"model.experts", "parallel.ep", "routing.alpha"});
  REQUIRE(sw.points.size() == 4);
  REQUIRE(sw.points[2].labels == std::vector<std::string>{"128", "4", "0"});
  // model.* on a catalog model: the catalog entry was inlined, then the axis applied.
  REQUIRE(sw.points[2].scenario.model.experts == 128);
  REQUIRE(sw.points[2].scenario.model.hidden == 768);
  REQUIRE(sw.points[2].scenario.parallel.ep == 4);
}

TEST_CASE("repeats get their own run indices and seeds derived from the run index", "[sweep]") {
  TempDir d("repeats");
  const std::string f = d.write("s.yaml", sweep_text("axes: { routing.alpha: [0, 1] }\nrepeats: 3\nseed: 5\n"));
  const Sweep sw = load_sweep(f);
  REQUIRE(sw.runs.size() == 6);
  for (std::size_t i = 0; i < sw.runs.size(); ++i) {
    REQUIRE(sw.runs[i].point == i / 3);
    REQUIRE(sw.runs[i].repeat == static_cast<int>(i % 3));
    REQUIRE(sw.runs[i].seed == moesim::sim::derive_seed(5, i));
  }
  REQUIRE(sw.header().rfind("run_index,seed,status,repeat,routing.alpha,", 0) == 0);

  // Common random numbers: every point's repeat r shares a seed.
  const std::string g =
      d.write("t.yaml", sweep_text("axes: { routing.alpha: [0, 1] }\nrepeats: 2\nseeds: per_repeat\n"));
  const Sweep cr = load_sweep(g);
  REQUIRE(cr.runs[0].seed == cr.runs[2].seed);
  REQUIRE(cr.runs[1].seed == cr.runs[3].seed);
  REQUIRE(cr.runs[0].seed != cr.runs[1].seed);
  REQUIRE(cr.runs[1].seed == moesim::sim::derive_seed(11, 1));
}

TEST_CASE("the hash follows the expanded runs, not the file's text", "[sweep]") {
  TempDir d("hash");
  const Sweep a = load_sweep(d.write("a.yaml", sweep_text("axes: { routing.alpha: [0, 1] }\n")));
  const Sweep b = load_sweep(d.write("b.yaml", "# a comment\n" + sweep_text("axes: { routing.alpha: [0, 1] }\n")));
  const Sweep c = load_sweep(d.write("c.yaml", sweep_text("axes: { routing.alpha: [0, 2] }\n")));
  const Sweep e = load_sweep(d.write("e.yaml", sweep_text("axes: { routing.alpha: [0, 1] }\nseed: 12\n")));
  REQUIRE(a.hash == b.hash);
  REQUIRE(a.hash != c.hash);
  REQUIRE(a.hash != e.hash);
  REQUIRE(a.hash_hex().size() == 16);
}

TEST_CASE("bad sweeps are reported with the sweep file's line, column and key", "[sweep][errors]") {
  TempDir d("errors");
  const std::string file = (d.path / "bad.yaml").string();
  // An unknown path: the scenario reader's unknown-key error, located in the sweep file.
  REQUIRE(load_error(d, sweep_text("axes:\n  routing.capacity_factr: [1.0, 2.0]\n")) ==
          file +
              ":9:27: routing.capacity_factr: unknown key 'capacity_factr' (did you mean 'capacity_factor'?) "
              "(sweep point routing.capacity_factr=1.0)");
  // A value that fails validation is reported at the value itself, once.
  REQUIRE(load_error(d, sweep_text("axes:\n  routing.capacity_factor: [1.0, -2]\n  routing.alpha: [0, 1]\n")) ==
          file +
              ":9:34: routing.capacity_factor: must be > 0 (got -2) "
              "(sweep point routing.capacity_factor=-2, routing.alpha=0)");
  // Structural problems.
  REQUIRE(load_error(d, sweep_text("axes:\n  routing.alpha: []\n")) ==
          file + ":9:18: axes.routing.alpha: no values: the product would be empty");
  REQUIRE(load_error(d, sweep_text("axes:\n  g:\n    routing.alpha: [0, 1]\n    parallel.ep: [4]\n")) ==
          file +
              ":11:18: axes.g.parallel.ep: has 1 value(s) but 'routing.alpha' has 2; linked paths take their "
              "values together, so they need the same number");
  REQUIRE(load_error(d, sweep_text("axes: { routing.alpha: [0, 1] }\nexclude: [{ routing.alpha: [0, 1] }]\n")) ==
          file + ":9:10: exclude: every one of the 2 points is excluded: the product is empty");
  REQUIRE(load_error(d, sweep_text("axes: { routing.alpha: [0, 1] }\nexclude: [{ routing.alpa: 0 }]\n")) ==
          file + ":9:27: exclude[0].routing.alpa: 'routing.alpa' is not a swept path (did you mean 'routing.alpha'?)");
  REQUIRE(load_error(d, sweep_text("axes: { routing.alpha: [0, 1] }\nexclude: [{ routing.alpha: 3 }]\n")) ==
          file + ":9:28: exclude[0].routing.alpha: '3' is not one of the values of axis 'routing.alpha'");
  REQUIRE(load_error(d, sweep_text("axes: { routing: [{alpha: 1}], routing.alpha: [0, 1] }\n")) ==
          file + ":8:47: axes.routing.alpha: overlaps axis path 'routing' (each YAML path may be swept only once)");
  REQUIRE(load_error(d, sweep_text("axes: { seed: [1, 2] }\n")) ==
          file +
              ":8:15: axes.seed: the seed is not an axis: use repeats (each run gets its own seed) or the sweep's "
              "seed");
  REQUIRE(load_error(d, sweep_text("axes: { routing.alpha: [0] }\nrepeat: 2\n")) ==
          file + ":9:1: repeat: unknown key 'repeat' (did you mean 'repeats'?)");
  // --set must not fight an axis.
  const std::string f = d.write("ok.yaml", sweep_text("axes: { routing.alpha: [0, 1] }\n"));
  REQUIRE_THROWS_WITH(load_sweep(f,
                                 [] {
                                   SweepOptions o;
                                   o.overrides = {"routing.alpha=2"};
                                   return o;
                                 }()),
                      "--set routing.alpha=2: routing.alpha: overlaps the swept path 'routing.alpha'");
}

TEST_CASE("csv fields are quoted only when needed and split back", "[sweep][csv]") {
  REQUIRE(csv_field("1.25") == "1.25");
  REQUIRE(csv_field("{a: 1, b: 2}") == "\"{a: 1, b: 2}\"");
  REQUIRE(csv_field("say \"hi\"") == "\"say \"\"hi\"\"\"");
  REQUIRE(csv_field(" x") == "\" x\"");
  REQUIRE(csv_split("1,\"a,b\",\"q\"\"q\",") == std::vector<std::string>{"1", "a,b", "q\"q", ""});
  REQUIRE(one_line("a\nb\n") == "a; b");
  // Shortest round-trip numbers.
  REQUIRE(format_number(0.1) == "0.1");
  REQUIRE(format_number(1e-05) == "1e-05");
  REQUIRE(format_number(3.0) == "3");
  const double third = 1.0 / 3.0;
  REQUIRE(std::stod(format_number(third)) == third);
}

TEST_CASE("metric columns follow the workload modes swept", "[sweep][csv]") {
  using moesim::engine::WorkloadMode;
  const auto routing = metric_columns({WorkloadMode::kRouting});
  REQUIRE(routing.front() == "drop_fraction");
  REQUIRE(std::find(routing.begin(), routing.end(), "step_time_us") == routing.end());
  const auto step = metric_columns({WorkloadMode::kTrain});
  REQUIRE(step.front() == "step_time_us");
  REQUIRE(std::find(step.begin(), step.end(), "peak_mem_GiB") != step.end());
  const auto coll = metric_columns({WorkloadMode::kCollective});
  REQUIRE(coll == std::vector<std::string>{"step_time_us", "algbw_GBps", "busbw_GBps"});
  nlohmann::ordered_json r;
  r["step_time_us"] = 12.5;
  r["memory"] = {{"peak_bytes_per_gpu", 2147483648.0}, {"fits", true}};
  REQUIRE(metric_cells(r, {"step_time_us", "peak_mem_GiB", "fits", "mfu"}) ==
          std::vector<std::string>{"12.5", "2", "true", ""});
}

TEST_CASE("results.csv is the same bytes for any thread count; a failed run is an error row", "[sweep][run]") {
  TempDir d("threads");
  const std::string f = d.write("s.yaml", sweep_text("axes: { routing.alpha: [0, 0.5, 1], routing.capacity_factor: "
                                                     "[1.0, 2.0] }\nrepeats: 2\n"));
  const Sweep sw = load_sweep(f);
  std::vector<std::string> files;
  for (int threads : {1, 2, 3}) {
    const std::string dir = (d.path / ("out" + std::to_string(threads))).string();
    ResultsWriter w(sw, {dir, false, false});
    Progress p("test", sw.runs.size(), 0, false);
    run_threads(sw, w, threads, p);
    w.finish();
    REQUIRE(w.failed() == 0);
    REQUIRE_FALSE(fs::exists(fs::path(dir) / "journal.csv"));
    files.push_back(read(w.results_path()));
  }
  REQUIRE(files[0] == files[1]);
  REQUIRE(files[0] == files[2]);
  REQUIRE(std::count(files[0].begin(), files[0].end(), '\n') == 13);
  REQUIRE(run_row(sw, 5) == run_row(sw, 5));

  // Trace files are read when the sweep is loaded, like every other input: a bad or missing one
  // is a configuration error naming the file (and its line), not a failed run.
  d.write("bad.csv", "layer,token,expert_0\n0,0,999\n");
  const std::string g =
      d.write("t.yaml", sweep_text("set: { routing.distribution: trace }\naxes: { routing.trace: [bad.csv] }\n"));
  REQUIRE_THROWS_WITH(
      load_sweep(g),
      Catch::Contains("bad.csv:2:0: routing.trace: layer 0 of model 'switch-base-128' is not a MoE layer"));
  const std::string missing =
      d.write("m.yaml", sweep_text("set: { routing.distribution: trace }\naxes: { routing.trace: [nope.csv] }\n"));
  REQUIRE_THROWS_WITH(load_sweep(missing), Catch::Contains("nope.csv: routing trace file not found"));
  // A run whose simulated time leaves the simulator's range fails while running.
  const std::string o = d.write("o.yaml", R"(name: overflow
scenario:
  name: c
  cluster: { gpu: h100-sxm, nodes: 1, gpus_per_node: 2, intra_node: { bandwidth: 1B/s } }
  workload: { mode: collective, collective: { op: all_to_all, bytes: 1MB } }
axes: { workload.collective.bytes: [1TB] }
)");
  const Sweep bad = load_sweep(o);
  const std::string row = run_row(bad, 0);
  REQUIRE(row_failed(row));
  REQUIRE(row.rfind("0," + std::to_string(bad.runs[0].seed) + ",error,1TB,", 0) == 0);
  REQUIRE(row.find("overflows", 20) != std::string::npos);  // the message says why
}

TEST_CASE("resume keeps complete rows, drops a torn last line, and rejects other sweeps' rows", "[sweep][resume]") {
  TempDir d("resume");
  const std::string f = d.write("s.yaml", sweep_text("axes: { routing.alpha: [0, 0.5, 1, 1.5] }\n"));
  const Sweep sw = load_sweep(f);
  const std::string dir = (d.path / "out").string();
  {
    ResultsWriter w(sw, {dir, false, false});
    Progress p("test", sw.runs.size(), 0, false);
    run_threads(sw, w, 1, p);
    w.finish();
    w.write_manifest(ExecutionInfo{});
  }
  const std::string full = read((fs::path(dir) / "results.csv").string());
  const std::vector<std::string> rows = [&] {
    std::vector<std::string> out;
    std::istringstream is(full);
    for (std::string l; std::getline(is, l);) out.push_back(l);
    return out;
  }();
  REQUIRE(rows.size() == 5);

  // Header + two rows + half of the third: 2 rows kept, the torn one cut.
  const std::string torn = rows[0] + "\n" + rows[1] + "\n" + rows[2] + "\n" + rows[3].substr(0, 10);
  const ExistingRows ex = scan_results(torn, sw, "r.csv");
  REQUIRE(ex.rows == 2);
  REQUIRE(ex.keep_bytes == rows[0].size() + rows[1].size() + rows[2].size() + 3);
  REQUIRE(scan_results(rows[0].substr(0, 5), sw, "r.csv").rows == 0);  // torn header: start over

  // Rows of another sweep or a different header are configuration errors naming file:line.
  std::string wrong_seed("0,12345");  // run 0 with a seed this sweep does not give it
  wrong_seed.append(rows[1], rows[1].find(',', 2), std::string::npos);
  REQUIRE_THROWS_WITH(scan_results(rows[0] + "\n" + wrong_seed + "\n", sw, "r.csv"),
                      Catch::StartsWith("r.csv:2:1: run_index: row does not belong to this sweep: seed is"));
  REQUIRE_THROWS_WITH(scan_results("run_index,seed\n", sw, "r.csv"),
                      Catch::StartsWith("r.csv:1:1: the header differs"));

  // The journal supplies rows that finished out of order; only complete lines count.
  const auto j = scan_journal(rows[3] + "\n" + rows[1] + "\n" + rows[4].substr(0, 7), sw);
  REQUIRE(j.size() == 2);
  REQUIRE(j.at(2) == rows[3]);

  // End to end: results.csv cut mid-row, run 3 in the journal -> only run 2 runs again.
  std::ofstream(fs::path(dir) / "results.csv", std::ios::binary) << torn;
  std::ofstream(fs::path(dir) / "journal.csv", std::ios::binary) << rows[4] << "\n";
  {
    ResultsWriter w(sw, {dir, true, false});
    REQUIRE(w.todo() == std::vector<std::size_t>{2});
    REQUIRE(w.resumed() == 3);
    Progress p("test", sw.runs.size(), w.resumed(), false);
    run_threads(sw, w, 2, p);
    w.finish();
  }
  REQUIRE(read((fs::path(dir) / "results.csv").string()) == full);

  // Without --resume an existing results.csv is refused; a different sweep cannot resume here.
  REQUIRE_THROWS_AS(ResultsWriter(sw, {dir, false, false}), ConfigError);
  const Sweep other = load_sweep(d.write("o.yaml", sweep_text("axes: { routing.alpha: [0, 2] }\n")));
  REQUIRE_THROWS_WITH(
      ResultsWriter(other, {dir, true, false}),
      Catch::Contains("manifest.json: sweep.hash: ") && Catch::Contains("holds results of a different sweep"));
}

TEST_CASE("out-of-order rows are written in run_index order", "[sweep][resume]") {
  TempDir d("order");
  const std::string f = d.write("s.yaml", sweep_text("axes: { routing.alpha: [0, 0.5, 1] }\n"));
  const Sweep sw = load_sweep(f);
  ResultsWriter w(sw, {(d.path / "out").string(), false, false});
  const std::string r0 = run_row(sw, 0);
  const std::string r1 = run_row(sw, 1);
  const std::string r2 = run_row(sw, 2);
  w.put(2, r2);
  w.put(1, r1);
  REQUIRE(w.written() == 0);
  REQUIRE(read(w.results_path()) == sw.header() + "\n");  // a valid prefix at every moment
  w.put(0, r0);
  REQUIRE(w.written() == 3);
  w.finish();
  REQUIRE(read(w.results_path()) == sw.header() + "\n" + r0 + "\n" + r1 + "\n" + r2 + "\n");
}
