// Catalog and cluster parsing: located errors for bad input.
#include <catch2/catch.hpp>

#include <time.h>

#include <algorithm>
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
  for (const char* n : {"h100-sxm", "h200", "h800", "a100-80gb-sxm", "b200", "gb200", "gb300"}) {
    INFO(n);
    REQUIRE(cat.find(n));
    CHECK(cat.find(n)->bf16_flops > 0);
    CHECK(cat.find(n)->hbm_bytes > 0);
    CHECK_FALSE(cat.find(n)->source.empty());
    CHECK(cat.find(n)->tensor_clock_hz > 0);  // the cost model needs it (engine/gpu_params.cpp)
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

namespace {
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
}  // namespace

TEST_CASE("validating large clusters is linear: fat trees and explicit graphs with many bad links",
          "[parse][hostile]") {
  const GpuCatalog cat = load_default_gpu_catalog();
  // A 16,384 x 8 fat tree: one component per node's NVSwitch plus the fabric. The general
  // connectivity check was cubic in the node count here (414 s); the fast path takes ~0.2 s.
  const double t0 = cpu_seconds();
  CHECK(parse_errors("cluster: { gpu: h100-sxm, nodes: 16384, gpus_per_node: 8, inter_node: { fabric: fat-tree, "
                     "nic_bandwidth: 400Gb/s } }\n",
                     cat)
            .empty());
  const double fat_tree_s = cpu_seconds() - t0;
  CHECK(fat_tree_s < 20);
  // 2,000 links to unknown vertices on a 131,072-GPU explicit graph: a did-you-mean for the first
  // few only (each compared 131,072 names: 69-89 s in all).
  std::string yaml =
      "cluster:\n  gpu: h100-sxm\n  nodes: 16384\n  gpus_per_node: 8\n  inter_node: { fabric: explicit }\n"
      "  topology:\n    switches: [core]\n    links:\n";
  for (int i = 0; i < 2000; ++i)
    yaml += "      - { from: gpu" + std::to_string(i) + ", to: sw" + std::to_string(i) + ", bandwidth: 50GB/s }\n";
  const double t1 = cpu_seconds();
  const std::string errors = parse_errors(yaml, cat);
  const double explicit_s = cpu_seconds() - t1;
  CHECK(std::count(errors.begin(), errors.end(), '\n') == 2000);
  CHECK(errors.find("unknown vertex 'sw1999'") != std::string::npos);
  CHECK(explicit_s < 10);
  INFO("fat tree " << fat_tree_s << " s, explicit " << explicit_s << " s CPU");
}

TEST_CASE("explicit graphs: self-loops, duplicate switches and switches named like GPUs are errors", "[parse]") {
  const GpuCatalog cat = load_default_gpu_catalog();
  const std::string e = parse_errors(R"(cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 1
  inter_node: { fabric: explicit }
  topology:
    switches: [s, s, gpu0]
    links:
      - { from: gpu0, to: s, bandwidth: 50GB/s }
      - { from: gpu1, to: s, bandwidth: 50GB/s }
      - { from: s, to: s, bandwidth: 50GB/s }
)",
                                     cat);
  CHECK(e.find("switches[1]: duplicate switch 's'") != std::string::npos);
  CHECK(e.find("switches[2]: switch 'gpu0' has the name of a GPU") != std::string::npos);
  CHECK(e.find("links[2].to: a link from 's' to itself") != std::string::npos);
}

TEST_CASE(
    "scale-up domains: domain_gpus parses, and a domain that is not whole nodes or does not divide the "
    "cluster is a located error",
    "[parse]") {
  const GpuCatalog cat = load_default_gpu_catalog();
  const auto yaml = [](const std::string& nodes, const std::string& intra, bool nics) {
    return "cluster:\n  gpu: gb200\n  nodes: " + nodes + "\n  gpus_per_node: 4\n  intra_node: " + intra + "\n" +
           (nics ? "  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s }\n" : "");
  };
  SECTION("two NVL72 racks") {
    const auto doc =
        config::Document::load_string(yaml("36", "{ fabric: nvswitch, domain_gpus: 72 }", true), "ok.yaml");
    config::Diagnostics diags;
    const ClusterSpec s = parse_cluster(doc.root(diags).child("cluster"), cat);
    REQUIRE(diags.empty());
    CHECK(s.domain_size() == 72);
    CHECK(s.intra.bandwidth == 900e9);  // the catalog's NVLink 5 figure per direction
    const Topology t = build_topology(s);
    CHECK(t.domain_gpus() == 72);
    CHECK(t.find_vertex("domain1.nvswitch"));
    CHECK_FALSE(t.find_vertex("node0.nvswitch"));
  }
  SECTION("one rack without inter_node: no NIC tier") {
    const auto doc = config::Document::load_string(yaml("18", "{ domain_gpus: 72 }", false), "ok.yaml");
    config::Diagnostics diags;
    const ClusterSpec s = parse_cluster(doc.root(diags).child("cluster"), cat);
    REQUIRE(diags.empty());
    CHECK_FALSE(s.inter.nic_tier);
    CHECK_FALSE(build_topology(s).find_vertex("node0.nic0"));
  }
  SECTION("errors") {
    struct Case {
      std::string nodes, intra;
      bool nics;
      const char* says;
    };
    for (const Case& c : {Case{"18", "{ fabric: nvswitch, domain_gpus: 6 }", true, "not a whole number of nodes"},
                          Case{"20", "{ fabric: nvswitch, domain_gpus: 72 }", true, "do not divide the cluster"},
                          Case{"4", "{ fabric: nvlink-mesh, domain_gpus: 8 }", true, "needs fabric: nvswitch"},
                          Case{"36", "{ domain_gpus: 72 }", false, "inter_node"}}) {
      INFO(c.intra << " nodes " << c.nodes);
      const auto e = parse_errors(yaml(c.nodes, c.intra, c.nics), cat);
      CHECK(e.find(c.says) != std::string::npos);
      if (c.nics) {
        CHECK(e.find("scenario.yaml:5:") != std::string::npos);
        CHECK(e.find("domain_gpus") != std::string::npos);
      }
    }
  }
}
