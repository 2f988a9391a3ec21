#pragma once
/// \file
/// Runs independent jobs on a few threads and hands their results back in index order.
///
/// Used by sweeps and the planner: job i must depend only on i (its seed derives from the run
/// index, never from the thread), so the ordered output is the same for any thread count. The
/// `done` callback runs on the calling thread, once per index, in increasing index order, as soon
/// as every lower index has finished: a sweep appends its CSV rows from it, so a killed sweep
/// leaves a valid prefix.

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace moesim::explore {

/// Calls job(i) for every i in [0, n) on `threads` worker threads (threads <= 1: inline, in
/// order) and done(i, result) on the calling thread in index order. An exception thrown by a job
/// stops handing out new indices and is rethrown from here once all workers have stopped; jobs
/// that want to record a failure as a result must catch it themselves.
template <class Result>
void run_ordered(std::size_t n, int threads, const std::function<Result(std::size_t)>& job,
                 const std::function<void(std::size_t, Result&&)>& done) {
  if (threads <= 1 || n <= 1) {
    for (std::size_t i = 0; i < n; ++i) done(i, job(i));
    return;
  }
  std::mutex mu;
  std::condition_variable ready;
  std::vector<std::optional<Result>> results(n);
  std::size_t next = 0;  // next index to hand out
  std::exception_ptr error;
  auto worker = [&] {
    for (;;) {
      std::size_t i;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (error || next >= n) return;
        i = next++;
      }
      try {
        Result r = job(i);
        std::lock_guard<std::mutex> lock(mu);
        results[i].emplace(std::move(r));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
      }
      ready.notify_all();
    }
  };
  const std::size_t nthreads = std::min<std::size_t>(static_cast<std::size_t>(threads), n);
  std::vector<std::thread> pool;
  pool.reserve(nthreads);
  for (std::size_t t = 0; t < nthreads; ++t) pool.emplace_back(worker);
  std::exception_ptr done_error;
  for (std::size_t i = 0; i < n; ++i) {
    std::optional<Result> r;
    {
      std::unique_lock<std::mutex> lock(mu);
      ready.wait(lock, [&] { return results[i].has_value() || error; });
      if (!results[i]) break;  // a job failed; stop emitting
      r = std::move(results[i]);
      results[i].reset();
    }
    try {
      done(i, std::move(*r));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      done_error = std::current_exception();
      if (!error) error = done_error;
      break;
    }
  }
  for (auto& t : pool) t.join();
  if (done_error) std::rethrow_exception(done_error);
  if (error) std::rethrow_exception(error);
}

}  // namespace moesim::explore
