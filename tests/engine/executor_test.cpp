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
    started_at[idx] = sim_.now();
    sim_.schedule_in(d_.at(idx), std::move(done), sim::Phase::kComplete);
  }
  int started = 0;
  std::map<std::uint32_t, SimTime> started_at;

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
  const OpId c = g.collective({0, 1}, info("a2a", Category::kDispatch), 0, Stream::kEpComm, {a0, a1});
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
  // The idle time is attributed to what ended it: the EP collective waiting for GPU 1.
  REQUIRE(r.per_gpu[0].wait_ep == 5_us);
  REQUIRE(r.per_gpu[1].wait_ep == SimTime::zero());
  REQUIRE(r.per_gpu[0].idle_tail == SimTime::zero());
}

TEST_CASE("idle time is split by what ended it, and the parts sum to it", "[executor][idle]") {
  sim::Simulation s;
  StepGraph g(3);
  // GPU 0 computes 10 us; GPU 1 computes 2 us, then a PP send/recv with GPU 0 (waits 8 us);
  // GPU 2 computes 1 us and waits for GPU 0's first op through a plain dependency (9 us, "other"),
  // then a DP collective with GPU 1 that waits for GPU 1's pipeline transfer; GPU 2 then ends early.
  const OpId a = g.compute(0, info("a"), 10_us);
  const OpId b = g.compute(1, info("b"), 2_us);
  const OpId pp = g.collective({0, 1}, info("send", Category::kPipeline), 0, Stream::kPpComm, {a, b});
  g.compute(2, info("c"), 1_us);
  const OpId d = g.compute(2, info("d"), 1_us, {a});
  const OpId dp = g.collective({1, 2}, info("rs", Category::kDataParallel), 1, Stream::kDpComm, {pp, d});
  g.compute(0, info("tail0"), 20_us, {pp});
  g.compute(1, info("tail1"), 3_us, {dp});
  FixedBackend be(s, {4_us, 2_us});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(r.step_time == 34_us);  // 10 + 4 + 20 on GPU 0
  const auto& g1 = r.per_gpu[1];
  REQUIRE(g1.wait_pp == 8_us);
  REQUIRE(g1.wait_dp == SimTime::zero());  // the DP collective starts as the PP transfer ends
  REQUIRE(g1.idle_tail == 34_us - 19_us);  // 10 + 4 + 2 + 3
  const auto& g2 = r.per_gpu[2];
  REQUIRE(g2.wait_other == 9_us);  // 1 .. 10: d waits for GPU 0's a
  REQUIRE(g2.wait_dp == 3_us);     // 11 .. 14: the DP collective waits for the PP transfer
  REQUIRE(g2.idle_tail == 34_us - 16_us);
  for (const auto& bd : r.per_gpu)
    REQUIRE(bd.wait_ep + bd.wait_dp + bd.wait_pp + bd.wait_other + bd.idle_tail == bd.idle);
}

TEST_CASE("overlapped communication is not exposed, and overlap never slows the step", "[executor]") {
  const auto run = [](bool overlap) {
    sim::Simulation s;
    StepGraph g(1);
    const OpId c = g.collective({0}, info("dispatch", Category::kDispatch), 0, Stream::kDpComm);
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
  g.collective({0}, info("dispatch", Category::kDispatch), 0, Stream::kEpComm, {}, 50);
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
  g.collective({0}, info("lost", Category::kOtherComm), 0, Stream::kDpComm);
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
    const OpId d = g.collective({0, 1}, info("dispatch", Category::kDispatch), 0, Stream::kEpComm);
    const OpId e0 = g.compute(0, info("experts"), 3_us);
    g.flow(e0, d);
    const OpId e1 = g.compute(1, info("experts"), 4_us);
    g.flow(e1, d);
    const OpId c = g.collective({0, 1}, info("combine", Category::kCombine), 1, Stream::kEpComm);
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

TEST_CASE("an EP all-to-all does not queue behind a DP reduce-scatter on another stream", "[executor][streams]") {
  // Two GPUs: a 100 us gradient reduce-scatter is issued at t = 0; 10 us of compute later the
  // next layer's dispatch (5 us) is ready. With the reduction on the DP stream the dispatch starts
  // at 10 us; queued on the same stream (one communication stream per GPU) it waits until 100 us.
  const auto run = [](Stream dp_stream) {
    sim::Simulation s;
    StepGraph g(2);
    g.collective({0, 1}, info("dp_grad_reduce", Category::kDataParallel), 0, dp_stream);
    const OpId c0 = g.compute(0, info("bwd0"), 10_us);
    const OpId c1 = g.compute(1, info("bwd1"), 10_us);
    const OpId d = g.collective({0, 1}, info("dispatch", Category::kDispatch), 1, Stream::kEpComm, {c0, c1});
    g.compute(0, info("experts0"), 20_us, {d});
    g.compute(1, info("experts1"), 20_us, {d});
    FixedBackend be(s, {100_us, 5_us});
    Executor ex(s, g, be, {});
    const auto r = ex.run();
    return std::make_pair(be.started_at.at(1), r);
  };
  const auto [own_start, own] = run(Stream::kDpComm);
  const auto [shared_start, shared] = run(Stream::kEpComm);
  REQUIRE(own_start == 10_us);
  REQUIRE(shared_start == 100_us);
  REQUIRE(own.step_time == 100_us);  // the reduction overlaps the dispatch and the expert GEMMs
  REQUIRE(shared.step_time == 125_us);
  // Breakdown: the reduction counts as data-parallel time, overlapped by 30 us of compute.
  REQUIRE(own.per_gpu[0].data_parallel == 100_us);
  REQUIRE(own.per_gpu[0].dispatch == 5_us);
  REQUIRE(own.per_gpu[0].compute == 30_us);
  REQUIRE(own.per_gpu[0].exposed_comm == 70_us);
  REQUIRE(own.per_gpu[0].idle == 0_us);
  REQUIRE(shared.per_gpu[0].exposed_comm == 95_us);
}

TEST_CASE("collectives on one stream keep stream order even when a later one is ready first", "[executor][streams]") {
  sim::Simulation s;
  StepGraph g(2);
  const OpId late = g.compute(0, info("late"), 50_us);
  g.collective({0, 1}, info("pp_send_act", Category::kPipeline), 0, Stream::kPpComm, {late});
  g.collective({0, 1}, info("pp_send_grad", Category::kPipeline), 1, Stream::kPpComm);  // no deps, but queued
  FixedBackend be(s, {1_us, 1_us});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(be.started_at.at(1) == 51_us);
  REQUIRE(r.per_gpu[1].pipeline == 2_us);
}

TEST_CASE("a receive posted ahead does not queue behind the receiver's own sends", "[executor][streams]") {
  // GPU 1 sends to GPU 2 after a long kernel; GPU 0's send to GPU 1 is emitted after that. In
  // stream order on GPU 1 it would wait for the kernel; with only the sender ordered it does not.
  for (const int ordered : {-1, 1}) {
    sim::Simulation s;
    StepGraph g(3);
    const OpId late = g.compute(1, info("late"), 50_us);
    g.collective({1, 2}, info("pp_send_act", Category::kPipeline), 0, Stream::kPpComm, {late}, 0, ordered);
    g.collective({0, 1}, info("pp_send_act", Category::kPipeline), 1, Stream::kPpComm, {}, 0, ordered);
    FixedBackend be(s, {1_us, 1_us});
    Executor ex(s, g, be, {});
    ex.run();
    REQUIRE(be.started_at.at(1) == (ordered < 0 ? 51_us : 0_us));
  }
}

TEST_CASE("host issue: ops wait for the host, a sync op makes the host wait for the GPU", "[executor][host]") {
  for (const bool sync : {false, true}) {
    sim::Simulation s;
    StepGraph g(1);
    OpInfo a = info("a");
    a.host_cost = 30_us;
    a.host_sync = sync;
    OpInfo b = info("b");
    b.host_cost = 30_us;
    g.compute(0, a, 10_us);
    g.compute(0, b, 10_us);
    FixedBackend be(s, {});
    Executor ex(s, g, be, {});
    const auto r = ex.run();
    // No sync: issued at 30 and 60 us. Sync: b is issued 30 us after a completes (40 us).
    REQUIRE(r.step_time == (sync ? 80_us : 70_us));
    REQUIRE(r.per_gpu[0].wait_host == (sync ? 60_us : 50_us));
    REQUIRE(r.per_gpu[0].compute == 20_us);
  }
  // A host faster than the GPU hides completely.
  sim::Simulation s;
  StepGraph g(1);
  OpInfo a = info("a");
  a.host_cost = 1_us;
  for (int i = 0; i < 5; ++i) g.compute(0, a, 10_us);
  FixedBackend be(s, {});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(r.step_time == 51_us);
  REQUIRE(r.per_gpu[0].wait_host == 1_us);
}

TEST_CASE("a run that stops with events still queued fails the drained-queue check", "[executor][conservation]") {
  // A broken backend: it completes the collective but leaves a stray event behind and stops the
  // simulation, so the queue is not drained when every op has run.
  class StrayEventBackend : public CommBackend {
   public:
    explicit StrayEventBackend(sim::Simulation& s) : sim_(s) {}
    void start(std::uint32_t, sim::Callback done) override {
      sim_.schedule_in(
          1_us,
          [this, done = std::move(done)]() mutable {
            done();
            sim_.schedule_in(1_us, [] {});
            sim_.stop();
          },
          sim::Phase::kComplete);
    }

   private:
    sim::Simulation& sim_;
  };
  sim::Simulation s;
  StepGraph g(1);
  g.collective({0}, info("a2a", Category::kDispatch), 0, Stream::kEpComm);
  StrayEventBackend be(s);
  Executor ex(s, g, be, {});
  REQUIRE_THROWS_WITH(ex.run(), Catch::Contains("pending event"));
}

TEST_CASE("a backend that completes a collective twice fails loudly", "[executor][conservation]") {
  class TwiceBackend : public CommBackend {
   public:
    explicit TwiceBackend(sim::Simulation& s) : sim_(s) {}
    void start(std::uint32_t, sim::Callback done) override {
      auto shared = std::make_shared<sim::Callback>(std::move(done));
      sim_.schedule_in(1_us, [shared] { (*shared)(); });
      sim_.schedule_in(2_us, [shared] { (*shared)(); });
    }

   private:
    sim::Simulation& sim_;
  };
  sim::Simulation s;
  StepGraph g(1);
  g.collective({0}, info("a2a", Category::kDispatch), 0, Stream::kEpComm);
  TwiceBackend be(s);
  Executor ex(s, g, be, {});
  REQUIRE_THROWS_WITH(ex.run(), Catch::Contains("completed twice"));
}

TEST_CASE("trace has one named track per stream", "[executor][trace][streams]") {
  std::FILE* f = std::tmpfile();
  {
    sim::TraceWriter w(f);
    sim::Simulation s;
    StepGraph g(1);
    g.collective({0}, info("dispatch", Category::kDispatch), 0, Stream::kEpComm);
    g.collective({0}, info("dp_grad_reduce", Category::kDataParallel), 1, Stream::kDpComm);
    g.collective({0}, info("pp_send_act", Category::kPipeline), 2, Stream::kPpComm);
    g.compute(0, info("gemm"), 3_us);
    FixedBackend be(s, {2_us, 2_us, 2_us});
    ExecutorOptions o;
    o.trace = &w;
    Executor ex(s, g, be, o);
    ex.run();
    w.close();
  }
  std::rewind(f);
  std::string text;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  const auto j = nlohmann::json::parse(text);
  std::map<int, std::string> track_names;
  std::map<std::string, int> slice_track;
  for (const auto& e : j.at("traceEvents")) {
    if (e.at("ph") == "M" && e.at("name") == "thread_name")
      track_names[e.at("tid").get<int>()] = e.at("args").at("name").get<std::string>();
    if (e.at("ph") == "X") slice_track[e.at("name").get<std::string>()] = e.at("tid").get<int>();
  }
  REQUIRE(track_names.size() == 4);
  REQUIRE(track_names.at(slice_track.at("gemm")) == "compute");
  REQUIRE(track_names.at(slice_track.at("dispatch")) == "comm EP/TP");
  REQUIRE(track_names.at(slice_track.at("dp_grad_reduce")) == "comm DP");
  REQUIRE(track_names.at(slice_track.at("pp_send_act")) == "comm PP");
}

TEST_CASE("a graph on a simulation that already advanced reports times from its own start", "[executor]") {
  sim::Simulation s;
  s.schedule_in(7_us, [] {});
  s.run();  // now = 7 us
  StepGraph g(2);
  g.compute(0, info("a"), 10_us);  // GPU 1 has no ops
  FixedBackend be(s, {});
  Executor ex(s, g, be, {});
  const auto r = ex.run();
  REQUIRE(r.step_time == 10_us);
  REQUIRE(r.per_gpu[1].busy_end == 0_us);
  REQUIRE(r.per_gpu[1].idle == 10_us);
}
