// `mode: collective` runs: nccl-tests' size/algbw/busbw convention and execution.all_to_all_chunks.
#include <catch2/catch.hpp>

#include <string>

#include "config/reader.hpp"
#include "engine/run.hpp"
#include "engine/scenario.hpp"

using namespace moesim;
using namespace moesim::engine;

namespace {
constexpr double kMiB = 1048576.0;

std::string two_nodes(const std::string& collective, const std::string& execution = "") {
  return R"(name: t
cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 8
  intra_node: { fabric: nvswitch, bandwidth: 450GB/s, latency: 1us }
  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, latency: 2us }
workload: { mode: collective, collective: )" +
         collective + " }\n" + execution;
}

nlohmann::ordered_json run(const std::string& yaml) {
  const Scenario s = parse_scenario(config::Document::load_string(yaml, "c.yaml"));
  return run_scenario(s).report.at("collective");
}
}  // namespace

TEST_CASE("collective all-to-all: size includes each rank's own chunk, busbw = algbw (n-1)/n (nccl-tests)",
          "[collective]") {
  for (const char* algo : {"direct", "hierarchical"}) {
    INFO(algo);
    const auto c = run(two_nodes(std::string("{ op: all_to_all, bytes: 1MiB, algorithm: ") + algo + " }"));
    const int n = c.at("ranks").get<int>();
    REQUIRE(n == 16);
    // nccl-tests src/alltoall.cu: sendcount = nranks * count per peer, the rank's own chunk included.
    CHECK(c.at("size_bytes").get<double>() == n * kMiB);
    const double t = c.at("time_us").get<double>() * 1e-6;
    CHECK(c.at("algbw_GBps").get<double>() == Approx(n * kMiB / t / 1e9).epsilon(1e-12));
    CHECK(c.at("busbw_GBps").get<double>() == Approx(c.at("algbw_GBps").get<double>() * (n - 1) / n).epsilon(1e-12));
  }
}

TEST_CASE("collective mode honours execution.all_to_all_chunks for the hierarchical all-to-all", "[collective]") {
  const std::string h = "{ op: all_to_all, bytes: 4MiB, algorithm: hierarchical }";
  const auto whole = run(two_nodes(h));
  const auto piped = run(two_nodes(h, "execution: { all_to_all: hierarchical, all_to_all_chunks: 4 }\n"));
  CHECK(whole.at("phases").get<int>() == 2);
  CHECK(piped.at("phases").get<int>() == 5);  // chunks + 1 pipelined phases
  CHECK(piped.at("time_us").get<double>() < whole.at("time_us").get<double>());
  CHECK(piped.at("size_bytes").get<double>() == whole.at("size_bytes").get<double>());
}

TEST_CASE("collective mode rejects all_to_all_chunks for any other collective, located", "[collective]") {
  for (const std::string c :
       {"{ op: all_to_all, bytes: 1MiB, algorithm: direct }", "{ op: all_reduce, bytes: 1MiB }"}) {
    INFO(c);
    const std::string yaml = two_nodes(c, "execution: { all_to_all: hierarchical, all_to_all_chunks: 4 }\n");
    try {
      (void)parse_scenario(config::Document::load_string(yaml, "c.yaml"));
      FAIL("expected a ConfigError");
    } catch (const config::ConfigError& e) {
      const std::string what = e.what();
      CHECK(what.find("c.yaml:9:") != std::string::npos);
      CHECK(what.find("execution.all_to_all_chunks") != std::string::npos);
    }
  }
}
