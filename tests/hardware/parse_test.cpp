// Catalog and cluster parsing: located errors for bad input.
#include <catch2/catch.hpp>

#include <sstream>

#include "config/reader.hpp"
#include "hardware/gpu_catalog.hpp"
#include "hardware/topology.hpp"

using namespace moesim;
using namespace moesim::hw;

namespace {
std::string parse_errors(const std::string& yaml, const GpuCatalog& cat) {
  const auto doc = config::Document::load_string(yaml, "scenario.yaml");
  config::Diagnostics diags;
  parse_cluster(doc.root(diags).child("cluster"), cat);
  std::string all;
  for (const auto& d : diags.all()) all += d.str() + "\n";
  return all;
}
}  // namespace

TEST_CASE("default GPU catalog loads with the required SKUs") {
  const GpuCatalog cat = load_default_gpu_catalog();
  for (const char* n : {"h100-sxm", "h200", "h800", "a100-80gb-sxm", "b200"}) {
    INFO(n);
    REQUIRE(cat.find(n));
    CHECK(cat.find(n)->bf16_flops > 0);
    CHECK(cat.find(n)->hbm_bytes > 0);
    CHECK_FALSE(cat.find(n)->source.empty());
  }
  CHECK(cat.find("h100-sxm")->bf16_flops == 989e12);
  CHECK(cat.find("h100-sxm")->nvlink_bandwidth == 450e9);
  CHECK(cat.find("a100-80gb-sxm")->fp8_flops == 0);
  std::ostringstream os;
  describe_gpus(os, cat);
  CHECK(os.str().find("h800") != std::string::npos);
}

TEST_CASE("cluster parsing: good input builds a connected topology") {
  const GpuCatalog cat = load_default_gpu_catalog();
  const auto doc = config::Document::load_string(R"(cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 8
  intra_node: { fabric: nvswitch, bandwidth: 450GB/s, latency: 1us }
  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, nics_per_node: 8, oversubscription: 1, latency: 2us }
)",
                                                 "ok.yaml");
  config::Diagnostics diags;
  const ClusterSpec s = parse_cluster(doc.root(diags).child("cluster"), cat);
  REQUIRE(diags.empty());
  CHECK(s.inter.nic_bandwidth == 50e9);
  CHECK(build_topology(s).gpu_count() == 16);
}

TEST_CASE("cluster parsing: bad input gives file:line:col errors") {
  const GpuCatalog cat = load_default_gpu_catalog();
  SECTION("unknown GPU with a suggestion") {
    const auto e = parse_errors("cluster:\n  gpu: h100-sxn\n  nodes: 1\n  gpus_per_node: 8\n", cat);
    CHECK(e.find("scenario.yaml:2:") != std::string::npos);
    CHECK(e.find("h100-sxm") != std::string::npos);
  }
  SECTION("zero bandwidth") {
    const auto e = parse_errors(
        "cluster:\n  gpu: h100-sxm\n  nodes: 2\n  gpus_per_node: 8\n  inter_node: { nic_bandwidth: 0Gb/s }\n", cat);
    CHECK(e.find("scenario.yaml:5:") != std::string::npos);
    CHECK(e.find("nic_bandwidth") != std::string::npos);
  }
  SECTION("GPU count mismatch") {
    const auto e = parse_errors("cluster:\n  gpu: h100-sxm\n  nodes: 1\n  gpus_per_node: 8\n  gpus: 16\n", cat);
    CHECK(e.find("scenario.yaml:5:") != std::string::npos);
    CHECK(e.find("does not match") != std::string::npos);
  }
  SECTION("explicit topology that leaves a GPU unreachable") {
    const auto e = parse_errors(R"(cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 1
  inter_node: { fabric: explicit }
  topology:
    switches: [sw0]
    links:
      - { from: gpu0, to: sw0, bandwidth: 50GB/s }
)",
                                cat);
    CHECK(e.find("cannot reach") != std::string::npos);
    CHECK(e.find("scenario.yaml:7:") != std::string::npos);
  }
  SECTION("unknown key") {
    const auto e = parse_errors("cluster:\n  gpu: h100-sxm\n  nodes: 1\n  gpus_per_nod: 8\n", cat);
    CHECK(e.find("gpus_per_nod") != std::string::npos);
  }
}
