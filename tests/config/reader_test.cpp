#include <catch2/catch.hpp>

#include <string>

#include "config/reader.hpp"

using namespace moesim::config;

namespace {
const char* kDoc = R"(name: demo
cluster:
  gpu: h100-sxm
  nodes: 2
  intra_node: { bandwidth: 450GB/s, latency: 1us }
routing:
  capacity_factor: 1.25
  experts: [1, 2, 3]
)";

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("typed reads return located values", "[config]") {
  auto doc = Document::load_string(kDoc, "demo.yaml");
  Diagnostics d;
  Node root = doc.root(d);
  REQUIRE(root.req_string("name") == "demo");
  Node cluster = root.child("cluster");
  REQUIRE(cluster.req_int("nodes", Range::positive()) == 2);
  REQUIRE(cluster.child("intra_node").req_bandwidth("bandwidth").bytes_per_s == 450e9);
  REQUIRE(cluster.child("intra_node").req_time("latency").ps() == 1'000'000);
  REQUIRE(root.child("routing").req_double("capacity_factor") == 1.25);
  REQUIRE(root.child("routing").child("experts").items().size() == 3);
  REQUIRE(cluster.child("nodes").location().str() == "demo.yaml:4:10");
  REQUIRE(d.empty());
}

TEST_CASE("every problem is collected with file:line:col and key", "[config]") {
  auto doc = Document::load_string(R"(cluster:
  nodes: -2
  gpus_per_node: two
  intra_node: { bandwidth: 450, latency: -3us }
  nic_bandwidth: 12 GBs
)",
                                   "bad.yaml");
  Diagnostics d;
  Node c = doc.root(d).child("cluster");
  c.req_int("nodes", Range::positive());
  c.req_int("gpus_per_node", Range::positive());
  c.child("intra_node").req_bandwidth("bandwidth");
  c.child("intra_node").req_time("latency");
  c.req_bandwidth("nic_bandwidth");
  c.req_string("gpu");
  REQUIRE(d.size() == 6);
  const auto& all = d.all();
  REQUIRE(all[0].str() == "bad.yaml:2:10: cluster.nodes: must be > 0 (got -2)");
  REQUIRE(contains(all[1].str(), "bad.yaml:3:18: cluster.gpus_per_node: expected an integer, got 'two'"));
  REQUIRE(contains(all[2].str(), "cluster.intra_node.bandwidth: '450' is not a bandwidth: a unit is required"));
  REQUIRE(contains(all[3].str(), "cluster.intra_node.latency"));
  REQUIRE(contains(all[3].str(), "negative"));
  REQUIRE(
      contains(all[4].str(), "bad.yaml:5:18: cluster.nic_bandwidth: '12 GBs' is not a bandwidth: unknown unit 'GBs'"));
  REQUIRE(contains(all[5].str(), "bad.yaml:2:3: cluster.gpu: required key is missing"));
  try {
    d.throw_if_any();
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    REQUIRE(e.diagnostics().size() == 6);
    REQUIRE(contains(e.what(), "cluster.nodes"));
  }
}

TEST_CASE("zero sizes are rejected where positive values are required", "[config]") {
  auto doc = Document::load_string("mem: 0GB\nbw: 0GB/s\nn: 0\n", "z.yaml");
  Diagnostics d;
  Node r = doc.root(d);
  r.req_bytes("mem");
  r.req_bandwidth("bw");
  r.req_int("n", Range::positive());
  REQUIRE(d.size() == 3);
  for (const auto& x : d.all()) REQUIRE(contains(x.message, "must be > 0"));
}

TEST_CASE("unknown keys are errors with a did-you-mean", "[config]") {
  auto doc = Document::load_string("cluster:\n  nodes: 2\n  gpus_per_nod: 8\n  colour: red\n", "u.yaml");
  Diagnostics d;
  Node c = doc.root(d).child("cluster");
  c.req_int("nodes");
  c.opt_int("gpus_per_node", 8);
  c.finish();
  REQUIRE(d.size() == 2);
  REQUIRE(d.all()[0].str() ==
          "u.yaml:3:3: cluster.gpus_per_nod: unknown key 'gpus_per_nod' (did you mean 'gpus_per_node'?)");
  REQUIRE(d.all()[1].str() == "u.yaml:4:3: cluster.colour: unknown key 'colour'");
}

TEST_CASE("choices are checked with a suggestion", "[config]") {
  auto doc = Document::load_string("policy: positon\n", "c.yaml");
  Diagnostics d;
  doc.root(d).req_choice("policy", {"position", "probs"});
  REQUIRE(d.size() == 1);
  REQUIRE(contains(d.all()[0].message, "'positon' is not one of: position, probs (did you mean 'position'?)"));
}

TEST_CASE("YAML syntax errors and duplicate keys carry locations", "[config]") {
  try {
    Document::load_string("a: [1, 2\nb: 3\n", "syn.yaml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    REQUIRE(contains(e.what(), "syn.yaml:"));
    REQUIRE(contains(e.what(), "YAML syntax error"));
  }
  try {
    Document::load_string("a: 1\nb: 2\na: 3\n", "dup.yaml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    REQUIRE(std::string(e.what()) == "dup.yaml:3:1: a: duplicate key");
  }
  REQUIRE_THROWS_AS(Document::load_file("/nonexistent/x.yaml"), ConfigError);
}

TEST_CASE("--set overrides change values and report their own location", "[config][set]") {
  auto doc = Document::load_string(kDoc, "demo.yaml");
  doc.apply_override("routing.capacity_factor=2.0");
  doc.apply_override("cluster.intra_node.bandwidth=900GB/s");
  doc.apply_override("routing.experts[1]=7");
  doc.apply_override("routing.new_block.alpha=1.2");
  doc.apply_override("cluster.nodes=-1");
  Diagnostics d;
  Node root = doc.root(d);
  REQUIRE(root.child("routing").req_double("capacity_factor") == 2.0);
  REQUIRE(root.child("cluster").child("intra_node").req_bandwidth("bandwidth").bytes_per_s == 900e9);
  REQUIRE(root.child("routing").child("experts").items()[1].as_int() == 7);
  REQUIRE(root.child("routing").child("new_block").req_double("alpha") == 1.2);
  root.child("cluster").req_int("nodes", Range::positive());
  REQUIRE(d.size() == 1);
  REQUIRE(d.all()[0].str() == "--set cluster.nodes=-1: cluster.nodes: must be > 0 (got -1)");
  // Unknown keys created by --set are reported at the override.
  Diagnostics d2;
  auto doc2 = Document::load_string(kDoc, "demo.yaml");
  doc2.apply_override("cluster.nodez=3");
  Node c2 = doc2.root(d2).child("cluster");
  c2.opt_int("nodes", 1);
  c2.opt_string("gpu", "");
  c2.child("intra_node");
  c2.finish();
  REQUIRE(d2.size() == 1);
  REQUIRE(d2.all()[0].str() == "--set cluster.nodez=3: cluster.nodez: unknown key 'nodez' (did you mean 'nodes'?)");
}

TEST_CASE("malformed overrides are rejected", "[config][set]") {
  auto doc = Document::load_string(kDoc, "demo.yaml");
  REQUIRE_THROWS_AS(doc.apply_override("novalue"), ConfigError);
  REQUIRE_THROWS_AS(doc.apply_override("=3"), ConfigError);
  REQUIRE_THROWS_AS(doc.apply_override("a..b=3"), ConfigError);
  REQUIRE_THROWS_AS(doc.apply_override("routing.experts[9]=1"), ConfigError);
  REQUIRE_THROWS_AS(doc.apply_override("name.sub=1"), ConfigError);  // name is a scalar
  REQUIRE_THROWS_AS(doc.apply_override("x=[1, 2"), ConfigError);
  // Indices too large for size_t are malformed paths, not std::out_of_range (libFuzzer find).
  REQUIRE_THROWS_AS(doc.apply_override("routing.77777777777777777777777=1"), ConfigError);
  REQUIRE_THROWS_AS(doc.apply_override("routing.experts[99999999999999999999999]=1"), ConfigError);
}

TEST_CASE("clone is deep: overrides on a copy leave the base alone", "[config][set]") {
  auto base = Document::load_string(kDoc, "demo.yaml");
  auto copy = base.clone();
  copy.apply_override("cluster.nodes=16");
  Diagnostics d;
  REQUIRE(base.root(d).child("cluster").req_int("nodes") == 2);
  REQUIRE(copy.root(d).child("cluster").req_int("nodes") == 16);
}

TEST_CASE("did_you_mean only suggests plausible typos", "[config]") {
  REQUIRE(did_you_mean("nodez", {"nodes", "gpu"}) == std::optional<std::string>("nodes"));
  REQUIRE_FALSE(did_you_mean("xyz", {"nodes", "gpu"}).has_value());
}

TEST_CASE("set from another document's node keeps that file's locations", "[config][set]") {
  auto doc = Document::load_string(kDoc, "demo.yaml");
  const auto sweep = Document::load_string("axes:\n  a: [{ nodes: -3, gpu: x }]\n  b: [1.5]\n", "sweep.yaml");
  Diagnostics sd;
  const Node axes = sweep.root(sd).child("axes");
  doc.set("cluster", axes.child("a").items()[0]);
  doc.set("routing.capacity_factor", axes.child("b").items()[0]);
  doc.set("routing.capacity_factr", axes.child("b").items()[0], Location{"sweep.yaml", 3, 6});
  doc.apply_override("cluster.gpu=h200");  // a later --set inside the node: the most specific wins
  Diagnostics d;
  const Node root = doc.root(d);
  const Node cluster = root.child("cluster");
  cluster.req_int("nodes", Range::positive());
  REQUIRE(cluster.child("gpu").location().str() == "--set cluster.gpu=h200");
  const Node routing = root.child("routing");
  REQUIRE(routing.child("capacity_factor").location().str() == "sweep.yaml:3:7");
  REQUIRE(routing.child("experts").location().str() == "demo.yaml:8:12");  // untouched
  routing.finish();
  REQUIRE(d.size() == 2);
  REQUIRE(d.all()[0].str() == "sweep.yaml:2:16: cluster.nodes: must be > 0 (got -3)");
  REQUIRE(d.all()[1].str() ==
          "sweep.yaml:3:6: routing.capacity_factr: unknown key 'capacity_factr' (did you mean "
          "'capacity_factor'?)");
  // Path errors are located at the value too.
  try {
    doc.set("name.sub", axes.child("b").items()[0]);
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    REQUIRE(std::string(e.what()) == "sweep.yaml:3:7: name.sub: 'name' is not a mapping, so it has no key 'sub'");
  }
}

TEST_CASE("text() gives a value as YAML text without reporting", "[config]") {
  const auto doc = Document::load_string("a: 1.50\nb: [1, 2]\nc: { x: 1 }\n", "t.yaml");
  Diagnostics d;
  const Node root = doc.root(d);
  REQUIRE(root.child("a").text() == "1.50");
  REQUIRE(root.child("b").text() == "[1, 2]");
  REQUIRE(root.child("c").text() == "{x: 1}");
  REQUIRE(root.child("missing").text().empty());
  REQUIRE(d.empty());
}

TEST_CASE("a read that fails returns an in-range value, so later checks cannot divide by zero", "[config]") {
  auto doc = Document::load_string("a: direct\nb: 0\nc: [1]\nd: -3\ne: x\n", "f.yaml");
  Diagnostics d;
  Node root = doc.root(d);
  CHECK(root.req_int("a", Range::between(1, 8)) == 1);   // not an integer
  CHECK(root.req_int("b", Range::at_least(1)) == 1);     // out of range
  CHECK(root.req_int("c", Range::at_least(2)) == 2);     // not a scalar
  CHECK(root.req_double("d", Range::positive()) > 0);    // out of an open range
  CHECK(root.req_double("e", Range::any()) == 0);        // not a number, 0 allowed
  CHECK(root.req_int("b", Range::non_negative()) == 0);  // in range: the value itself
  REQUIRE(d.size() == 5);
}

TEST_CASE("a missing required number also reads as an in-range value", "[config]") {
  auto doc = Document::load_string("x: 1\n", "f.yaml");
  Diagnostics d;
  Node root = doc.root(d);
  CHECK(root.req_int("gpus_per_node", Range::positive()) == 1);
  CHECK(root.req_double("bandwidth", Range::positive()) > 0);
  REQUIRE(d.size() == 2);
}

TEST_CASE("a path that is not a readable YAML file is a located config error, not a crash", "[config]") {
  // Found by the fuzzer through a planner's `base: ..`: reading a directory threw std::ios_base::failure.
  for (const std::string& path : {std::string("."), std::string("/nonexistent/scenario.yaml")}) {
    try {
      (void)Document::load_file(path);
      FAIL("no error for " << path);
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      CHECK(msg.find(path) != std::string::npos);
      CHECK((msg.find("is a directory") != std::string::npos || msg.find("file not found") != std::string::npos));
    }
  }
}
