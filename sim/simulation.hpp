#pragma once
/// \file
/// The Simulation object: owns the clock, the event queue and the RNG seed. No globals, so any
/// number of simulations can run side by side in one process (the sweep runner relies on it).

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "sim/event_queue.hpp"
#include "sim/rng.hpp"
#include "sim/time.hpp"

namespace moesim::sim {

/// Raised when an end-of-run invariant is violated (events left over, time went backwards,...).
class SimulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Simulation {
 public:
  explicit Simulation(std::uint64_t seed = 0) : seed_(seed) {}
  Simulation(const Simulation&) = delete;
  Simulation& operator=(const Simulation&) = delete;

  SimTime now() const { return now_; }
  std::uint64_t seed() const { return seed_; }

  /// A fresh generator for the named stream of this simulation's seed.
  Rng rng(std::string_view stream) const { return Rng(seed_, stream); }

  /// Schedule at an absolute time, which must not be in the past.
  EventId schedule_at(SimTime t, Callback cb, Phase phase = Phase::kNormal) {
    if (t < now_) throw SimulationError("schedule_at: time " + to_string(t) + " is before now " + to_string(now_));
    return queue_.push(t, phase, std::move(cb));
  }
  /// Schedule after a non-negative delay.
  EventId schedule_in(SimTime delay, Callback cb, Phase phase = Phase::kNormal) {
    if (delay < SimTime::zero()) throw SimulationError("schedule_in: negative delay " + to_string(delay));
    return queue_.push(now_ + delay, phase, std::move(cb));
  }
  bool cancel(EventId id) { return queue_.cancel(id); }

  /// Run until the queue is empty. Returns the number of events executed by this call.
  std::uint64_t run() { return run_until(SimTime::max()); }

  /// Run events with time <= `limit`; the clock ends at the last executed event's time.
  std::uint64_t run_until(SimTime limit) {
    std::uint64_t n = 0;
    while (!stopped_ && queue_.run_next(limit, [this](SimTime t) { now_ = t; })) ++n;
    executed_ += n;
    stopped_ = false;
    return n;
  }

  /// Ask run() to return after the current event.
  void stop() { stopped_ = true; }

  std::size_t pending() const { return queue_.size(); }
  std::uint64_t executed() const { return executed_; }
  std::uint64_t scheduled() const { return queue_.scheduled_total(); }

  /// End-of-run check: throws SimulationError if any event is still pending (something was
  /// lost or never allowed to finish).
  void check_drained() const {
    if (!queue_.empty())
      throw SimulationError("simulation ended with " + std::to_string(queue_.size()) + " pending event(s) at " +
                            to_string(now_));
  }

 private:
  EventQueue queue_;
  SimTime now_{};
  std::uint64_t seed_ = 0;
  std::uint64_t executed_ = 0;
  bool stopped_ = false;
};

}  // namespace moesim::sim
