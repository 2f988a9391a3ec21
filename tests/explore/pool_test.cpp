#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "explore/pool.hpp"

using moesim::explore::run_ordered;

namespace {

/// Job i sleeps a pseudo-random time so that completions arrive out of order.
int slow_square(std::size_t i) {
  std::this_thread::sleep_for(std::chrono::microseconds((i * 7919) % 13 * 100));
  return static_cast<int>(i * i);
}

}  // namespace

TEST_CASE("results arrive in index order for any thread count", "[pool]") {
  for (int threads : {1, 2, 3, 8}) {
    std::vector<std::size_t> order;
    std::vector<int> values;
    run_ordered<int>(
        40, threads, [](std::size_t i) { return slow_square(i); },
        [&](std::size_t i, int&& v) {
          order.push_back(i);
          values.push_back(v);
        });
    REQUIRE(order.size() == 40);
    for (std::size_t i = 0; i < order.size(); ++i) {
      CHECK(order[i] == i);
      CHECK(values[i] == static_cast<int>(i * i));
    }
  }
}

TEST_CASE("jobs really run concurrently with threads > 1", "[pool]") {
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  run_ordered<int>(
      8, 4,
      [&](std::size_t) {
        const int now = ++running;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        --running;
        return 0;
      },
      [](std::size_t, int&&) {});
  CHECK(peak.load() >= 2);
}

TEST_CASE("a failing job is rethrown after the results before it were delivered", "[pool]") {
  for (int threads : {1, 3}) {
    std::vector<std::size_t> seen;
    CHECK_THROWS_WITH(run_ordered<int>(
                          20, threads,
                          [](std::size_t i) {
                            if (i == 5) throw std::runtime_error("job 5 failed");
                            return static_cast<int>(i);
                          },
                          [&](std::size_t i, int&&) { seen.push_back(i); }),
                      "job 5 failed");
    REQUIRE(seen.size() == 5);
    for (std::size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == i);
  }
}
