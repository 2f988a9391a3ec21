#include "validation_kernels/harness/watchdog.hpp"

#include <chrono>
#include <thread>

namespace moesim::vk {

Watchdog::Watchdog(double timeout_s)
    : Watchdog(
          timeout_s,
          [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); },
          [](double s) {
            if (s <= 0)
              std::this_thread::yield();
            else
              std::this_thread::sleep_for(std::chrono::duration<double>(s));
          }) {}

Watchdog::Watchdog(double timeout_s, Clock clock, Sleep sleep)
    : timeout_s_(timeout_s), clock_(std::move(clock)), sleep_(std::move(sleep)) {}

Watchdog::Result Watchdog::wait(const std::function<Poll()>& poll, const std::string& what, bool interruptible) {
  const double start = clock_();
  for (long spins = 0;; ++spins) {
    const Poll p = poll();
    if (p != Poll::kPending) {
      const double waited = clock_() - start;
      if (waited > longest_) longest_ = waited;
      return p == Poll::kDone ? Result::kDone : Result::kError;
    }
    if (interruptible && interrupt_ && *interrupt_) return Result::kInterrupted;
    const double waited = clock_() - start;
    if (waited > timeout_s_) {
      if (on_hang_) on_hang_(what, waited);  // the runner's handler exits the process
      return Result::kTimeout;
    }
    sleep_(spins < 2000 ? 0.0 : 50e-6);  // yield while short (timing loops), then nap
  }
}

}  // namespace moesim::vk
