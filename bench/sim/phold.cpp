/// PHOLD benchmark for the event core (Fujimoto's classic synthetic workload).
///
/// N logical processes; I events in flight; each event, when executed at an LP, schedules one
/// new event at a uniformly random LP after an exponentially distributed delay (mean 1 us).
/// Prints events_per_s measured over the whole run (wall clock, single thread), plus a checksum
/// of the final simulated time so runs with the same seed can be compared.

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <vector>

#include "sim/simulation.hpp"

using namespace moesim::sim;

namespace {
struct Phold {
  Simulation sim;
  std::vector<Rng> lp_rng;
  std::uint64_t remaining;
  std::uint64_t checksum = 0;

  Phold(std::uint64_t seed, std::size_t lps, std::uint64_t events) : sim(seed), remaining(events) {
    lp_rng.reserve(lps);
    for (std::size_t i = 0; i < lps; ++i) lp_rng.emplace_back(seed, 0x9000 + i);
  }

  void fire(std::uint32_t lp) {
    checksum = checksum * 31 + static_cast<std::uint64_t>(sim.now().ps()) + lp;
    if (remaining == 0) return;
    --remaining;
    Rng& r = lp_rng[lp];
    const auto dst = static_cast<std::uint32_t>(r.uniform_int(lp_rng.size()));
    const auto delay = SimTime::from_ps(static_cast<std::int64_t>(r.exponential(1e6)));  // mean 1 us
    sim.schedule_in(delay, [this, dst] { fire(dst); });
  }
};
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"PHOLD benchmark of the moesim event core"};
  std::size_t lps = 1024;
  std::uint64_t inflight = 10000;
  std::uint64_t events = 5'000'000;
  std::uint64_t seed = 1;
  app.add_option("--lps", lps, "number of logical processes")->check(CLI::PositiveNumber);
  app.add_option("--inflight", inflight, "events in flight")->check(CLI::PositiveNumber);
  app.add_option("--events", events, "events to execute (after the initial ones)");
  app.add_option("--seed", seed, "random seed");
  CLI11_PARSE(app, argc, argv);

  Phold p(seed, lps, events);
  Rng init(seed, "phold/init");
  for (std::uint64_t i = 0; i < inflight; ++i) {
    const auto lp = static_cast<std::uint32_t>(init.uniform_int(lps));
    const auto t = SimTime::from_ps(static_cast<std::int64_t>(init.exponential(1e6)));
    p.sim.schedule_at(t, [&p, lp] { p.fire(lp); });
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t executed = p.sim.run();
  const auto t1 = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(t1 - t0).count();
  p.sim.check_drained();
  std::printf(
      "lps %zu\ninflight %llu\nevents_executed %llu\nwall_s %.4f\nevents_per_s %.0f\nsim_end_us %.3f\nchecksum "
      "%016llx\n",
      lps, static_cast<unsigned long long>(inflight), static_cast<unsigned long long>(executed), secs,
      static_cast<double>(executed) / secs, p.sim.now().to_us(), static_cast<unsigned long long>(p.checksum));
  return 0;
}
