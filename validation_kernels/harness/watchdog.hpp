// Waiting on the GPU with a deadline. Plain host logic (no CUDA) so a CPU test can drive it with
// a fake poll and a fake clock; the runner polls cudaStreamQuery through it.
//
// Why: a kernel that never finishes (a wrong mbarrier transaction count, a lost TMA completion)
// makes cudaStreamSynchronize block forever, and the run's CSVs would never be finished. Every
// wait of the harness goes through Watchdog::wait, which gives up after `timeout_s`, calls the
// hang handler (the runner writes an `error` row and runs.csv and exits), and never returns
// kTimeout to code that would go on using the stuck GPU unless no handler is installed.
#pragma once

#include <csignal>
#include <functional>
#include <string>

namespace moesim::vk {

class Watchdog {
 public:
  enum class Poll { kDone, kPending, kError };
  enum class Result { kDone, kError, kTimeout, kInterrupted };
  using Clock = std::function<double()>;      ///< seconds, monotonic
  using Sleep = std::function<void(double)>;  ///< seconds
  using Handler = std::function<void(const std::string& what, double waited_s)>;

  /// Real steady clock and sleep (short spins first, then 50 us naps).
  explicit Watchdog(double timeout_s);
  Watchdog(double timeout_s, Clock clock, Sleep sleep);

  /// Polls until poll() says done or error, the deadline passes (hang handler, then kTimeout),
  /// or the interrupt flag is set (kInterrupted; checked only when `interruptible`).
  Result wait(const std::function<Poll()>& poll, const std::string& what, bool interruptible = false);

  void set_hang_handler(Handler h) { on_hang_ = std::move(h); }
  void set_interrupt_flag(const volatile std::sig_atomic_t* flag) { interrupt_ = flag; }
  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double t) { timeout_s_ = t; }
  /// Longest completed wait so far (a log line tells whether the timeout is close to real waits).
  double longest_wait_s() const { return longest_; }

 private:
  double timeout_s_;
  Clock clock_;
  Sleep sleep_;
  Handler on_hang_;
  const volatile std::sig_atomic_t* interrupt_ = nullptr;
  double longest_ = 0;
};

}  // namespace moesim::vk
