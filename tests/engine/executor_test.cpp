#include <catch2/catch.hpp>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/executor.hpp"

using namespace moesim;
using namespace moesim::engine;
using namespace moesim::sim::literals;
using sim::SimTime;

namespace {
/// A backend whose collectives take fixed durations (looked up by index).
class FixedBackend : public CommBackend {
 public:
  FixedBackend(sim::Simulation& s, std::vector<SimTime> d) : sim_(s), d_(std::move(d)) {}
  void start(std::uint32_t idx, sim::Callback done) override {
    ++started;
    sim_.schedule_in(d_.at(idx), std::move(done), sim::Phase::kComplete);
  }
  int started = 0;

 private:
  sim::Simulation& sim_;
  std::vector<SimTime> d_;
};

OpInfo info(const char* n, Category c = Category::kCompute) {
  OpInfo i;
  i.name = n;
  i.category = c;
  return i;
}
}  // namespace

TEST_CASE("stream order serialises compute; dependencies cross GPUs", "[executor]") {
  sim::Simulation s;
  StepGraph g(2);
  const OpId a = g.compute(0, info("a"), 10_us);
  g.compute(0, info("b"), 5_us);       // waits for a (same stream)
  g.compute(1, info("c"), 3_us, {a});  // waits for a (cross-GPU dependency)
  FixedBackend be(s, {});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(r.step_time == 15_us);
  REQUIRE(r.per_gpu[0].compute == 15_us);
  REQUIRE(r.per_gpu[1].compute == 3_us);
  REQUIRE(r.per_gpu[1].busy_end == 13_us);
  REQUIRE(r.per_gpu[1].idle == 12_us);
  REQUIRE(r.ops_executed == 3);
}

TEST_CASE("a collective waits for every participant and is timed by the backend", "[executor]") {
  sim::Simulation s;
  StepGraph g(2);
  const OpId a0 = g.compute(0, info("pre0"), 4_us);
  const OpId a1 = g.compute(1, info("pre1"), 9_us);
  const OpId c = g.collective({0, 1}, info("a2a", Category::kDispatch), 0, EngineKind::kNvlink, {a0, a1});
  g.compute(0, info("post0"), 1_us, {c});
  g.compute(1, info("post1"), 1_us, {c});
  FixedBackend be(s, {6_us});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(be.started == 1);
  REQUIRE(r.step_time == 16_us);  // 9 (slowest) + 6 + 1
  REQUIRE(r.per_gpu[0].dispatch == 6_us);
  REQUIRE(r.per_gpu[0].exposed_comm == 6_us);
  REQUIRE(r.per_gpu[0].idle == 5_us);  // waited 9-4 for GPU 1
  REQUIRE(r.per_gpu[0].compute + r.per_gpu[0].exposed_comm + r.per_gpu[0].idle == r.step_time);
}

TEST_CASE("overlapped communication is not exposed, and overlap never slows the step", "[executor]") {
  const auto run = [](bool overlap) {
    sim::Simulation s;
    StepGraph g(1);
    const OpId c = g.collective({0}, info("dispatch", Category::kDispatch), 0, EngineKind::kNic);
    if (overlap) {
      g.compute(0, info("shared_expert"), 8_us);  // independent of the dispatch
    } else {
      g.compute(0, info("shared_expert"), 8_us, {c});
    }
    g.compute(0, info("experts"), 2_us, {c});
    FixedBackend be(s, {5_us});
    Executor ex(s, g, be, {});
    return ex.run();
  };
  const auto serial = run(false);
  const auto overlapped = run(true);
  REQUIRE(serial.step_time == 15_us);
  REQUIRE(overlapped.step_time == 10_us);
  REQUIRE(overlapped.per_gpu[0].exposed_comm == 0_us);
  REQUIRE(serial.per_gpu[0].exposed_comm == 5_us);
  REQUIRE(overlapped.step_time <= serial.step_time);
}

TEST_CASE("communication SMs slow concurrent compute exactly", "[executor]") {
  sim::Simulation s;
  StepGraph g(1);
  // 100 SMs; the collective takes 50 of them for 10 us while a 20 us kernel runs.
  g.collective({0}, info("dispatch", Category::kDispatch), 0, EngineKind::kNvlink, {}, 50);
  g.compute(0, info("gemm"), 20_us);
  FixedBackend be(s, {10_us});
  ExecutorOptions o;
  o.sms_per_gpu = 100;
  Executor ex(s, g, be, o);
  const auto r = ex.run();
  // First 10 us at half speed = 5 us of work; 15 us left at full speed: ends at 25 us.
  REQUIRE(r.step_time == 25_us);
}

TEST_CASE("a cycle-free graph whose backend loses a collective fails loudly", "[executor]") {
  class LosingBackend : public CommBackend {
   public:
    void start(std::uint32_t, sim::Callback) override {}
  };
  sim::Simulation s;
  StepGraph g(1);
  g.collective({0}, info("lost", Category::kOtherComm), 0, EngineKind::kNic);
  LosingBackend be;
  Executor ex(s, g, be, {});
  REQUIRE_THROWS_AS(ex.run(), sim::SimulationError);
}

TEST_CASE("trace has one slice per op per participant and paired flow arrows", "[executor][trace]") {
  std::FILE* f = std::tmpfile();
  {
    sim::TraceWriter w(f);
    sim::Simulation s;
    StepGraph g(2);
    const OpId d = g.collective({0, 1}, info("dispatch", Category::kDispatch), 0, EngineKind::kNvlink);
    const OpId e0 = g.compute(0, info("experts"), 3_us);
    g.flow(e0, d);
    const OpId e1 = g.compute(1, info("experts"), 4_us);
    g.flow(e1, d);
    const OpId c = g.collective({0, 1}, info("combine", Category::kCombine), 1, EngineKind::kNvlink);
    g.flow(c, e0);
    g.flow(c, e1);
    FixedBackend be(s, {2_us, 2_us});
    ExecutorOptions o;
    o.trace = &w;
    Executor ex(s, g, be, o);
    REQUIRE(ex.run().step_time == 8_us);
    w.close();
  }
  std::rewind(f);
  std::string text;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  const auto j = nlohmann::json::parse(text);
  int slices = 0;
  std::map<std::uint64_t, int> flows;
  for (const auto& e : j.at("traceEvents")) {
    if (e.at("ph") == "X") ++slices;
    if (e.at("ph") == "s") flows[e.at("id").get<std::uint64_t>()] += 1;
    if (e.at("ph") == "f") flows[e.at("id").get<std::uint64_t>()] += 10;
  }
  REQUIRE(slices == 6);  // dispatch x2, experts x2, combine x2
  REQUIRE(flows.size() == 4);
  for (const auto& [id, v] : flows) REQUIRE(v == 11);  // each id has one start and one end
}
