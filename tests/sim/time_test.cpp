#include <catch2/catch.hpp>

#include "sim/time.hpp"

using namespace moesim::sim;
using namespace moesim::sim::literals;

TEST_CASE("SimTime literals are exact picosecond counts", "[time]") {
  REQUIRE((1_ns).ps() == 1000);
  REQUIRE((3_us).ps() == 3'000'000);
  REQUIRE((2_ms).ps() == 2'000'000'000);
  REQUIRE((1_s).ps() == 1'000'000'000'000);
  REQUIRE(1_us + 500_ns == SimTime::from_ps(1'500'000));
  REQUIRE(2_us - 1_us == 1_us);
  REQUIRE(3 * 2_ns == 6_ns);
}

TEST_CASE("SimTime arithmetic overflow is detected, not wrapped", "[time]") {
  REQUIRE_THROWS_AS(SimTime::max() + 1_ps, TimeOverflow);
  REQUIRE_THROWS_AS(SimTime::from_ps(std::numeric_limits<std::int64_t>::min()) - 1_ps, TimeOverflow);
  REQUIRE_THROWS_AS(SimTime::max() * 2, TimeOverflow);
  REQUIRE_THROWS_AS(detail::scaled(10'000'000ULL, 1'000'000'000'000), TimeOverflow);  // 10^7 s
  REQUIRE_NOTHROW(SimTime::max() - 1_ps + 1_ps);
}

TEST_CASE("duration_for rounds up to the next picosecond", "[time]") {
  // Exact: 1 MiB at 450 GB/s = 1048576 / 450e9 s = 2330168.888... ps -> 2330169 ps
  REQUIRE(duration_for(1048576, 450e9).ps() == 2'330'169);
  // Exact division stays exact: 450 GB at 450 GB/s = 1 s.
  REQUIRE(duration_for(450e9, 450e9) == 1_s);
  // 1 byte at 3 B/s = 333333333333.33 ps -> rounded up.
  REQUIRE(duration_for(1, 3).ps() == 333'333'333'334);
  // Zero work takes zero time; tiny work takes at least 1 ps.
  REQUIRE(duration_for(0, 1e12) == SimTime::zero());
  REQUIRE(duration_for(1, 1e15).ps() == 1);
  // Non-integer inputs go through double and still round up.
  REQUIRE(duration_for(1.5, 1e12).ps() == 2);
  REQUIRE(duration_for(2.0, 0.5e12).ps() == 4);
  // FLOPs at a FLOP rate: 2*4096^3 FLOP at 989 TFLOP/s.
  const double flops = 2.0 * 4096.0 * 4096.0 * 4096.0;
  const auto t = duration_for(flops, 989e12);
  REQUIRE(t.ps() == static_cast<std::int64_t>(
                        (static_cast<uint128>(137438953472ULL) * 1000000000000ULL + 989000000000000ULL - 1) /
                        989000000000000ULL));
}

TEST_CASE("duration_for rejects bad arguments and overflow", "[time]") {
  REQUIRE_THROWS_AS(duration_for(-1, 1), std::invalid_argument);
  REQUIRE_THROWS_AS(duration_for(1, 0), std::invalid_argument);
  REQUIRE_THROWS_AS(duration_for(1, -5), std::invalid_argument);
  REQUIRE_THROWS_AS(duration_for(std::numeric_limits<double>::infinity(), 1), std::invalid_argument);
  REQUIRE_THROWS_AS(duration_for(1, std::numeric_limits<double>::quiet_NaN()), std::invalid_argument);
  REQUIRE_THROWS_AS(duration_for(1e10, 1), TimeOverflow);  // 1e22 ps
  REQUIRE_THROWS_AS(duration_for(1e30, 1.5), TimeOverflow);
}

TEST_CASE("to_string renders exact decimal values", "[time]") {
  REQUIRE(to_string(1500_ns) == "1.5us");
  REQUIRE(to_string(2_s) == "2s");
  REQUIRE(to_string(SimTime::from_ps(7)) == "7ps");
  REQUIRE(to_string(SimTime::from_ps(2'330'169)) == "2.330169us");
}
