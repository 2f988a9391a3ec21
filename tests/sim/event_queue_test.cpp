#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "sim/simulation.hpp"

using namespace moesim::sim;
using namespace moesim::sim::literals;

TEST_CASE("events run in (time, phase, insertion) order", "[events]") {
  Simulation s;
  std::vector<std::string> log;
  s.schedule_at(2_us, [&] { log.push_back("t2-normal-a"); });
  s.schedule_at(
      1_us, [&] { log.push_back("t1-observe"); }, Phase::kObserve);
  s.schedule_at(1_us, [&] { log.push_back("t1-normal-a"); });
  s.schedule_at(
      1_us, [&] { log.push_back("t1-complete"); }, Phase::kComplete);
  s.schedule_at(1_us, [&] { log.push_back("t1-normal-b"); });
  s.schedule_at(2_us, [&] { log.push_back("t2-normal-b"); });
  s.run();
  REQUIRE(log == std::vector<std::string>{"t1-complete", "t1-normal-a", "t1-normal-b", "t1-observe", "t2-normal-a",
                                          "t2-normal-b"});
  REQUIRE(s.now() == 2_us);
  s.check_drained();
}

TEST_CASE("events scheduled at the current time from a callback run after existing ties", "[events]") {
  Simulation s;
  std::vector<int> log;
  s.schedule_at(1_us, [&] {
    log.push_back(1);
    s.schedule_in(0_ps, [&] { log.push_back(3); });
  });
  s.schedule_at(1_us, [&] { log.push_back(2); });
  s.run();
  REQUIRE(log == std::vector<int>{1, 2, 3});
}

TEST_CASE("cancellation removes exactly the cancelled event", "[events]") {
  Simulation s;
  std::vector<int> log;
  auto a = s.schedule_at(1_us, [&] { log.push_back(1); });
  auto b = s.schedule_at(2_us, [&] { log.push_back(2); });
  s.schedule_at(3_us, [&] { log.push_back(3); });
  REQUIRE(s.cancel(b));
  REQUIRE_FALSE(s.cancel(b));  // twice
  REQUIRE(s.pending() == 2);
  s.run();
  REQUIRE(log == std::vector<int>{1, 3});
  REQUIRE_FALSE(s.cancel(a));  // already ran
  REQUIRE_FALSE(s.cancel(EventId{}));
  s.check_drained();
}

TEST_CASE("a recycled slot does not honour a stale handle", "[events]") {
  Simulation s;
  int ran = 0;
  auto a = s.schedule_at(1_us, [&] { ++ran; });
  s.run();
  auto b = s.schedule_at(2_us, [&] { ran += 10; });  // likely reuses a's slot
  REQUIRE_FALSE(s.cancel(a));
  s.run();
  REQUIRE(ran == 11);
  (void)b;
}

TEST_CASE("scheduling in the past is refused", "[events]") {
  Simulation s;
  s.schedule_at(5_us, [] {});
  s.run();
  REQUIRE_THROWS_AS(s.schedule_at(4_us, [] {}), SimulationError);
  REQUIRE_THROWS_AS(s.schedule_in(SimTime::from_ps(-1), [] {}), SimulationError);
}

TEST_CASE("check_drained fails when events are left", "[events]") {
  Simulation s;
  s.schedule_at(10_us, [] {});
  s.run_until(5_us);
  REQUIRE_THROWS_AS(s.check_drained(), SimulationError);
  s.run();
  REQUIRE_NOTHROW(s.check_drained());
}

TEST_CASE("large and move-only captures work", "[events]") {
  Simulation s;
  auto p = std::make_unique<int>(41);
  std::vector<double> big(100, 1.0);  // forces the heap fallback
  double sum = 0;
  int got = 0;
  s.schedule_at(1_ns, [p = std::move(p), &got] { got = *p + 1; });
  s.schedule_at(2_ns, [big, &sum] {
    for (double v : big) sum += v;
  });
  s.run();
  REQUIRE(got == 42);
  REQUIRE(sum == 100.0);
}

TEST_CASE("cancelled callbacks are destroyed (no leak of captured state)", "[events]") {
  auto token = std::make_shared<int>(0);
  {
    Simulation s;
    auto id = s.schedule_at(1_us, [token] {});
    REQUIRE(token.use_count() == 2);
    s.cancel(id);
    REQUIRE(token.use_count() == 1);
  }
  REQUIRE(token.use_count() == 1);
}

namespace {
// A PHOLD-like model whose event trace is recorded; used to check determinism.
std::vector<std::pair<std::int64_t, int>> phold_trace(std::uint64_t seed) {
  Simulation s(seed);
  Rng rng = s.rng("phold");
  std::vector<std::pair<std::int64_t, int>> trace;
  int remaining = 2000;
  std::function<void(int)> fire = [&](int lp) {
    trace.emplace_back(s.now().ps(), lp);
    if (--remaining <= 0) return;
    const int next = static_cast<int>(rng.uniform_int(16));
    const auto delay = SimTime::from_ps(static_cast<std::int64_t>(rng.exponential(1e6)));
    s.schedule_in(delay, [&, next] { fire(next); });
  };
  for (int i = 0; i < 8; ++i) s.schedule_at(SimTime::zero(), [&, i] { fire(i); });
  s.run();
  return trace;
}
}  // namespace

TEST_CASE("same seed gives an identical event trace; another seed does not", "[events][determinism]") {
  const auto a = phold_trace(7);
  const auto b = phold_trace(7);
  const auto c = phold_trace(8);
  REQUIRE(a.size() > 1000);
  REQUIRE(a == b);
  REQUIRE(a != c);
}

TEST_CASE("two simulations side by side do not interfere", "[events]") {
  Simulation s1(1);
  Simulation s2(2);
  int c1 = 0;
  int c2 = 0;
  s1.schedule_at(1_us, [&] { ++c1; });
  s2.schedule_at(2_us, [&] { ++c2; });
  s2.schedule_at(3_us, [&] { ++c2; });
  s1.run();
  REQUIRE(c1 == 1);
  REQUIRE(c2 == 0);
  s2.run();
  REQUIRE(c2 == 2);
  REQUIRE(s1.now() == 1_us);
  REQUIRE(s2.now() == 3_us);
}
