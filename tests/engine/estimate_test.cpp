// Resource estimates (issue 23): the counts an estimate gives are within a factor of 3 of what
// the shipped scenarios' runs actually created (their golden reports); limits refuse with a
// located error.
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/estimate.hpp"
#include "engine/scenario.hpp"

using namespace moesim::engine;

namespace {
nlohmann::json golden(const std::string& name) {
  std::ifstream f("tests/golden/" + name + ".json");
  return nlohmann::json::parse(f);
}
bool within(double estimate, double actual, double factor) {
  return estimate >= actual / factor && estimate <= actual * factor;
}
}  // namespace

TEST_CASE("estimates are within a factor of 3 of the shipped scenarios' actual counts", "[estimate]") {
  for (const std::string name :
       {"default", "mixtral-8x7b-decode", "deepseek-v3-decode-ep128", "deepseek-v3-train-256xh800"}) {
    const Scenario s = load_scenario("scenarios/" + name + ".yaml");
    const ResourceEstimate e = estimate_resources(s);
    const auto sim = golden(name)["simulation"];
    INFO(name << ": " << format_estimate(e));
    CHECK(within(e.compute_ops, sim["compute_ops"].get<double>(), 3));
    CHECK(within(e.flows, sim["flows"].get<double>(), 3));
    CHECK(within(e.events, sim["events"].get<double>(), 3));
    CHECK(e.memory_bytes > 0);
    CHECK(e.cpu_s > 0);
  }
}

TEST_CASE("estimates grow with the problem", "[estimate]") {
  const Scenario small = load_scenario("scenarios/default.yaml");
  const Scenario big =
      load_scenario("scenarios/default.yaml", {{"cluster.nodes=512", "parallel.dp=4096", "workload.global_batch=16384",
                                                "cluster.inter_node={fabric: rail-fat-tree, nic_bandwidth: 400Gb/s}"},
                                               std::nullopt});
  const ResourceEstimate a = estimate_resources(small), b = estimate_resources(big);
  CHECK(b.compute_ops > 100 * a.compute_ops);
  CHECK(b.flows > 100 * a.flows);
  CHECK(b.memory_bytes > 10 * a.memory_bytes);
  CHECK(b.cpu_s > 100 * a.cpu_s);
}

TEST_CASE("limits: parsed from option texts, refuse with a located error", "[estimate]") {
  const ResourceLimits d = ResourceLimits::defaults();
  CHECK(d.max_seconds == 86400);
  CHECK(d.max_memory_bytes > 0);
  const ResourceLimits l = ResourceLimits::parse("16GiB", "600s");
  CHECK(l.max_memory_bytes == 16.0 * (1 << 30));
  CHECK(l.max_seconds == 600);
  REQUIRE_THROWS_WITH(ResourceLimits::parse("16", ""), Catch::StartsWith("--max-memory 16: '16' is not a size"));
  REQUIRE_THROWS_WITH(ResourceLimits::parse("", "0s"), Catch::StartsWith("--max-time 0s: "));
  const moesim::config::Location at{"s.yaml", 3, 1};
  CHECK_NOTHROW(check_limits(1e6, 1, l, at, "cluster", "this run"));
  REQUIRE_THROWS_WITH(check_limits(32.0 * (1 << 30), 1, l, at, "cluster", "this run"),
                      Catch::StartsWith("s.yaml:3:1: cluster: this run needs an estimated 32.0 GiB of memory, more "
                                        "than --max-memory 16.0 GiB"));
  REQUIRE_THROWS_WITH(check_limits(1e6, 7200, l, at, "cluster", "this run"),
                      Catch::StartsWith("s.yaml:3:1: cluster: this run needs an estimated 2.0 h to run"));
}
