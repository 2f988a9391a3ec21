#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "explore/plan.hpp"

namespace ex = moesim::explore;

namespace {

// Plans are named as if they lived in tests/explore/ (ctest runs from the repository root), so
// `base:` resolves against that folder like it would for a file there.
constexpr const char* kName = "tests/explore/inline-plan.yaml";

ex::PlanSpec plan_from(const std::string& text) { return ex::load_plan_string(text, kName); }

std::map<ex::Status, int> count_status(const ex::PlanResult& r) {
  std::map<ex::Status, int> m;
  for (const auto& c : r.candidates) ++m[c.status];
  return m;
}

}  // namespace

TEST_CASE("plan enumeration: explicit axes, counted independently", "[plan]") {
  const ex::PlanSpec p = plan_from(R"(
name: t
base: ../../scenarios/default.yaml
set: ["cluster.inter_node={fabric: rail-fat-tree, nic_bandwidth: 400Gb/s}"]
gpus: [{gpu: h100-sxm, price_per_hour: 2}, {gpu: h200, price_per_hour: 3}]
search: { gpus: [4, 8, 16], tp: [1, 2, 4, 8], ep: [1, 2, 4, 8, 16], pp: [1, 2, 4], micro_batches: [1, 2, 4, 8] }
)");
  const ex::PlanResult r = ex::prepare_plan(p);

  // Independent count from the rules of parse_scenario/README: dp = N/(tp*pp) must be whole to
  // be a split at all; then ep | dp*tp, ep | 8 experts, micro_batches >= pp when pp > 1, the
  // step's tokens split into dp*micro_batches routing groups and each group over tp.
  const long tokens = 64L * 4096;  // default.yaml: global_batch 64 x seq_len 4096
  int enumerated = 0, valid = 0;
  for (int gpu = 0; gpu < 2; ++gpu)
    for (int n : {4, 8, 16})
      for (int pp : {1, 2, 4})
        for (int tp : {1, 2, 4, 8}) {
          if (n % (tp * pp) != 0) continue;
          const int dp = n / (tp * pp);
          for (int ep : {1, 2, 4, 8, 16})
            for (int mb : {1, 2, 4, 8}) {
              ++enumerated;
              const bool ok = (dp * tp) % ep == 0 && 8 % ep == 0 && (pp == 1 || mb >= pp) && tokens % (dp * mb) == 0 &&
                              (tokens / (dp * mb)) % tp == 0;
              valid += ok ? 1 : 0;
            }
        }
  REQUIRE(static_cast<int>(r.candidates.size()) == enumerated);
  const auto st = count_status(r);
  const int invalid = st.count(ex::Status::kInvalid) ? st.at(ex::Status::kInvalid) : 0;
  CHECK(enumerated - invalid == valid);
  CHECK(invalid > 0);
  // Indices are positions, and every invalid candidate names the key that failed.
  for (std::size_t i = 0; i < r.candidates.size(); ++i) {
    CHECK(r.candidates[i].index == i);
    if (r.candidates[i].status == ex::Status::kInvalid) CHECK_FALSE(r.candidates[i].rule.empty());
  }
}

TEST_CASE("plan enumeration: defaults from the base and the limits", "[plan]") {
  const ex::PlanSpec p = plan_from(R"(
name: t
base: ../../scenarios/default.yaml
set: ["cluster.inter_node={fabric: rail-fat-tree, nic_bandwidth: 400Gb/s}"]
gpus: [{gpu: h100-sxm, price_per_hour: 2}]
limits: { max_gpus: 20, max_nodes: 2 }
)");
  const ex::PlanResult r = ex::prepare_plan(p);
  // Whole 8-GPU nodes up to the limits: 8 and 16 GPUs. tp: powers of two up to the node (1..8);
  // pp: 1; ep: powers of two dividing dp*tp = N, up to 8 experts; micro-batches, capacity
  // factor, recompute: the base's (4, 1.25, true).
  int expected = 0;
  for (int n : {8, 16})
    for (int tp = 1; tp <= 8; tp *= 2)
      for (int ep = 1; ep <= 8 && ep <= n; ep *= 2) expected += n % ep == 0 ? 1 : 0;
  REQUIRE(static_cast<int>(r.candidates.size()) == expected);
  for (const auto& c : r.candidates) {
    CHECK(c.micro_batches == 4);
    CHECK(c.capacity_factor == "1.25");
    CHECK(c.recompute == 1);
    CHECK(c.pp == 1);
    CHECK(c.nodes * c.gpus_per_node == c.gpus);
  }
}

TEST_CASE("plan limits prune without simulating and say why", "[plan]") {
  const ex::PlanSpec p = plan_from(R"(
name: t
base: ../../scenarios/default.yaml
set: ["cluster.inter_node={fabric: rail-fat-tree, nic_bandwidth: 400Gb/s}"]
gpus: [{gpu: h100-sxm, price_per_hour: 2}]
limits: { max_gpus: 16, max_nodes: 1, max_cost_per_hour: 100 }
search: { gpus: [8, 16, 32], tp: [1], ep: [8] }
)");
  const ex::PlanResult r = ex::prepare_plan(p);
  REQUIRE(r.candidates.size() == 3);
  CHECK(r.candidates[0].status != ex::Status::kPrunedLimit);
  CHECK(r.candidates[1].status == ex::Status::kPrunedLimit);  // 2 nodes > max_nodes 1
  CHECK(r.candidates[1].reason.find("max_nodes") != std::string::npos);
  CHECK(r.candidates[2].status == ex::Status::kPrunedLimit);  // 32 GPUs > max_gpus 16
  CHECK(r.candidates[2].reason.find("max_gpus") != std::string::npos);
}

TEST_CASE("plan pruning is sound: a dominated point simulated anyway is never better", "[plan]") {
  // Small, fast case: 8 GPUs, 16 sequences, counts routing, analytical network. The same H200
  // is offered at two prices (rule: price) and recomputation is searched (rule: recompute).
  const ex::PlanSpec p = plan_from(R"(
name: t
base: ../../scenarios/default.yaml
set: ["routing.sampling=counts", "network.model=analytical", "workload.global_batch=16"]
gpus: [{gpu: h200, price_per_hour: 3.0}, {gpu: h200, price_per_hour: 2.0}, {gpu: h100-sxm, price_per_hour: 2.0}]
search: { gpus: [8], tp: [1, 2], ep: [8], micro_batches: [2, 4], recompute: [false, true] }
)");
  ex::PlanResult pruned = ex::prepare_plan(p);
  std::map<std::string, int> by_rule;
  for (const auto& c : pruned.candidates)
    if (c.status == ex::Status::kPrunedDominated) ++by_rule[c.rule];
  REQUIRE(by_rule["price"] > 0);
  REQUIRE(by_rule["recompute"] > 0);

  // Simulate every candidate that was pruned as dominated, as if it had survived.
  ex::PlanResult all = pruned;
  for (auto& c : all.candidates)
    if (c.status == ex::Status::kPrunedDominated) c.status = ex::Status::kOk;
  ex::simulate_plan(p, all, 2);
  int checked = 0;
  for (const auto& c : pruned.candidates) {
    if (c.status != ex::Status::kPrunedDominated) continue;
    const ex::Candidate& me = all.candidates[c.index];
    const ex::Candidate& dom = all.candidates[c.dominator];
    INFO("candidate #" << c.index << " (" << c.rule << ") vs dominator #" << c.dominator);
    REQUIRE(me.status == ex::Status::kOk);
    REQUIRE(dom.status == ex::Status::kOk);
    CHECK(me.step_time_us >= dom.step_time_us);
    CHECK(me.cost_per_mtok >= dom.cost_per_mtok);
    CHECK(me.tokens_per_s_per_gpu <= dom.tokens_per_s_per_gpu);
    if (c.rule == "price") CHECK(me.step_time_us == dom.step_time_us);  // identical simulation
    ++checked;
  }
  CHECK(checked == by_rule["price"] + by_rule["recompute"]);

  // Cost per million tokens = price x GPUs / (tokens/s x 3600) x 1e6.
  for (const auto& c : all.candidates) {
    if (c.status != ex::Status::kOk) continue;
    const double price = p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour;
    CHECK(c.cost_per_mtok == Approx(price * c.gpus / (c.tokens_per_s * 3600.0) * 1e6));
    CHECK(c.tokens_per_s_per_gpu == Approx(c.tokens_per_s / c.gpus));
  }

  // The same plan gives byte-identical CSVs on 1 and 3 threads.
  ex::PlanResult one = pruned, three = pruned;
  ex::simulate_plan(p, one, 1);
  ex::simulate_plan(p, three, 3);
  std::ostringstream a, b;
  ex::write_plan_csv(p, one, a);
  ex::write_plan_csv(p, three, b);
  CHECK(a.str() == b.str());
  CHECK_FALSE(one.ranked.empty());
}

TEST_CASE("plan ranking and Pareto front", "[plan]") {
  ex::PlanSpec p;
  p.gpus = {{"h100-sxm", 2.0}, {"h200", 3.0}};
  ex::PlanResult r;
  // (cost, time, throughput/GPU, status): a hand-made set with ties and non-OK points.
  struct Row {
    double cost, time, tpg;
    ex::Status st;
  };
  const std::vector<Row> rows = {
      {5, 10, 100, ex::Status::kOk},
      {4, 12, 120, ex::Status::kOk},
      {4, 12, 90, ex::Status::kOk},  // same cost and time as #1: both on the front
      {3, 20, 150, ex::Status::kOk},
      {6, 9, 80, ex::Status::kOk},
      {6, 11, 80, ex::Status::kOk},              // dominated by #0
      {1, 1, 999, ex::Status::kViolatesTarget},  // never ranked
      {1, 1, 999, ex::Status::kPrunedMemory},
      {3, 25, 150, ex::Status::kOk},  // dominated by #3
  };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    ex::Candidate c;
    c.index = i;
    c.gpus = 8;
    c.cost_per_mtok = rows[i].cost;
    c.step_time_us = rows[i].time;
    c.tokens_per_s_per_gpu = rows[i].tpg;
    c.status = rows[i].st;
    r.candidates.push_back(c);
  }
  // Brute-force Pareto set over OK rows.
  std::set<std::size_t> front;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].st != ex::Status::kOk) continue;
    bool dom = false;
    for (std::size_t j = 0; j < rows.size(); ++j)
      if (rows[j].st == ex::Status::kOk && rows[j].cost <= rows[i].cost && rows[j].time <= rows[i].time &&
          (rows[j].cost < rows[i].cost || rows[j].time < rows[i].time))
        dom = true;
    if (!dom) front.insert(i);
  }
  CHECK(front == std::set<std::size_t>{0, 1, 2, 3, 4});

  SECTION("cost per million tokens") {
    p.objective = ex::Objective::kCostPerMtok;
    ex::rank_candidates(p, r);
    CHECK(r.ranked == std::vector<std::size_t>{3, 8, 1, 2, 0, 4, 5});  // ties: lower index first
  }
  SECTION("throughput per GPU") {
    p.objective = ex::Objective::kThroughputPerGpu;
    ex::rank_candidates(p, r);
    CHECK(r.ranked == std::vector<std::size_t>{3, 8, 1, 0, 2, 4, 5});
  }
  SECTION("step time") {
    p.objective = ex::Objective::kStepTime;
    ex::rank_candidates(p, r);
    CHECK(r.ranked == std::vector<std::size_t>{4, 0, 5, 1, 2, 3, 8});
  }
  for (std::size_t i = 0; i < r.ranked.size(); ++i) CHECK(r.candidates[r.ranked[i]].rank == static_cast<int>(i + 1));
  CHECK(r.candidates[6].rank == 0);
  CHECK(r.candidates[7].rank == 0);
  const std::set<std::size_t> got(r.pareto.begin(), r.pareto.end());
  CHECK(got == front);
  for (std::size_t i = 0; i < r.candidates.size(); ++i) CHECK(r.candidates[i].pareto == (front.count(i) == 1));
  // The front is listed by increasing time (then index).
  CHECK(r.pareto == std::vector<std::size_t>{4, 0, 1, 2, 3});
}

TEST_CASE("plan input errors are located and collected", "[plan]") {
  try {
    plan_from(R"(
name: t
base: ../../scenarios/default.yaml
gpus: [{gpu: h100-sxm, price_per_hour: -1}, {gpu: nosuchgpu, price_per_hour: 1}]
limits: { max_gpus: 8 }
objective: fastest
)");
    FAIL("expected a ConfigError");
  } catch (const moesim::config::ConfigError& e) {
    const auto& d = e.diagnostics();
    REQUIRE(d.size() == 3);
    CHECK(d[0].key == "gpus[0].price_per_hour");
    CHECK(d[0].loc.line == 4);
    CHECK(d[1].key == "gpus[1].gpu");
    CHECK(d[2].key == "objective");
    CHECK(d[2].loc.line == 6);
  }
}

TEST_CASE("plan searches ZeRO stages: sharding makes a layout fit that ZeRO-1 cannot", "[plan]") {
  const ex::PlanSpec p = plan_from(R"(
name: t
base: ../../scenarios/default.yaml
gpus: [{gpu: h100-sxm, price_per_hour: 2}]
search: { gpus: [8], tp: [1], ep: [8], pp: [1], micro_batches: [4], recompute: [true], zero_stage: [0, 1, 3] }
)");
  REQUIRE(p.zero_stage == std::vector<int>{0, 1, 3});
  const ex::PlanResult r = ex::prepare_plan(p);
  REQUIRE(r.candidates.size() == 3);
  std::map<int, const ex::Candidate*> by;
  for (const auto& c : r.candidates) by[c.zero_stage] = &c;
  REQUIRE(by.size() == 3);
  // Each stage is its own configuration (not deduplicated), and the estimate shrinks with it:
  // ZeRO-0 keeps every optimizer state, ZeRO-3 also shards the weights and grads.
  REQUIRE(by[0]->peak_bytes > by[1]->peak_bytes);
  REQUIRE(by[1]->peak_bytes > by[3]->peak_bytes);
  CHECK(r.scenario_yaml[by[3]->index].find("zero_stage: 3") != std::string::npos);
  CHECK(r.scenario_yaml[by[1]->index].find("zero_stage") == std::string::npos);  // the base's stage
}

TEST_CASE("plan zero_stage: out of range is a located error", "[plan]") {
  try {
    plan_from(R"(
name: t
base: ../../scenarios/default.yaml
gpus: [{gpu: h100-sxm, price_per_hour: 2}]
search: { gpus: [8], zero_stage: [1, 4] }
)");
    FAIL("expected a ConfigError");
  } catch (const moesim::config::ConfigError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].key == "search.zero_stage[1]");
    CHECK(e.diagnostics()[0].loc.line == 5);
  }
}
