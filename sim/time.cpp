#include "sim/time.hpp"

#include <fmt/format.h>
#include <cmath>

namespace moesim::sim {

namespace {
constexpr double kTwoTo63 = 9223372036854775808.0;  // 2^63

bool is_small_integer(double v) { return v >= 0 && v < kTwoTo63 && std::floor(v) == v; }
}  // namespace

SimTime duration_for(double amount, double rate_per_second) {
  if (!(amount >= 0) || !std::isfinite(amount))
    throw std::invalid_argument(fmt::format("duration_for: amount must be finite and >= 0, got {}", amount));
  if (!(rate_per_second > 0) || !std::isfinite(rate_per_second))
    throw std::invalid_argument(fmt::format("duration_for: rate must be finite and > 0, got {}", rate_per_second));
  if (amount == 0) return SimTime::zero();

  if (is_small_integer(amount) && is_small_integer(rate_per_second)) {
    using u128 = uint128;
    const u128 num = static_cast<u128>(static_cast<std::uint64_t>(amount)) * 1'000'000'000'000ULL;
    const u128 den = static_cast<std::uint64_t>(rate_per_second);
    const u128 q = (num + den - 1) / den;
    if (q > static_cast<u128>(std::numeric_limits<std::int64_t>::max()))
      throw TimeOverflow("duration_for: result overflows int64 picoseconds");
    return SimTime::from_ps(static_cast<std::int64_t>(q));
  }
  const double ps = std::ceil(amount / rate_per_second * 1e12);
  if (!(ps < kTwoTo63)) throw TimeOverflow("duration_for: result overflows int64 picoseconds");
  return SimTime::from_ps(static_cast<std::int64_t>(ps));
}

std::string to_string(SimTime t) {
  const std::int64_t ps = t.ps();
  struct Unit {
    std::int64_t scale;
    const char* name;
  };
  static constexpr Unit units[] = {{1'000'000'000'000, "s"}, {1'000'000'000, "ms"}, {1'000'000, "us"}, {1'000, "ns"}};
  for (const auto& u : units) {
    if (ps != 0 && (ps >= u.scale || ps <= -u.scale)) {
      const std::int64_t whole = ps / u.scale;
      std::int64_t frac = ps % u.scale;
      if (frac == 0) return fmt::format("{}{}", whole, u.name);
      if (frac < 0) frac = -frac;
      std::string digits =
          fmt::format("{:0{}}", frac, static_cast<int>(std::log10(static_cast<double>(u.scale)) + 0.5));
      while (!digits.empty() && digits.back() == '0') digits.pop_back();
      return fmt::format("{}{}.{}{}", ps < 0 && whole == 0 ? "-" : "", whole, digits, u.name);
    }
  }
  return fmt::format("{}ps", ps);
}

}  // namespace moesim::sim
