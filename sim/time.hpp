#pragma once
/// \file
/// Simulated time. One unit (the picosecond), one integer type, one rounding rule.
///
/// Why integers: floating-point simulated time makes event order depend on the order of
/// additions, which breaks bit-identical replay. Every duration in moesim is converted to
/// whole picoseconds exactly once, by `duration_for()`, and only added after that.
///
/// int64 picoseconds cover +-106 days of simulated time, far beyond one training step.
/// Arithmetic that would leave that range throws `TimeOverflow` instead of wrapping.

#include <compare>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace moesim::sim {

/// 128-bit unsigned integer for exact intermediate products (GCC/Clang extension).
__extension__ typedef unsigned __int128 uint128;

/// Thrown when a time computation leaves the representable range.
class TimeOverflow : public std::overflow_error {
 public:
  using std::overflow_error::overflow_error;
};

class SimTime {
 public:
  constexpr SimTime() = default;

  static constexpr SimTime from_ps(std::int64_t ps) { return SimTime(ps); }
  static constexpr SimTime zero() { return SimTime(0); }
  /// The largest representable time; used as "never".
  static constexpr SimTime max() { return SimTime(std::numeric_limits<std::int64_t>::max()); }

  constexpr std::int64_t ps() const { return ps_; }
  /// For output only (reports, traces). Never feed the result back into simulated time.
  constexpr double to_ns() const { return static_cast<double>(ps_) * 1e-3; }
  constexpr double to_us() const { return static_cast<double>(ps_) * 1e-6; }
  constexpr double to_ms() const { return static_cast<double>(ps_) * 1e-9; }
  constexpr double to_s() const { return static_cast<double>(ps_) * 1e-12; }

  friend constexpr auto operator<=>(SimTime, SimTime) = default;

  friend constexpr SimTime operator+(SimTime a, SimTime b) {
    std::int64_t r{};
    if (__builtin_add_overflow(a.ps_, b.ps_, &r)) throw TimeOverflow("SimTime addition overflows int64 picoseconds");
    return SimTime(r);
  }
  friend constexpr SimTime operator-(SimTime a, SimTime b) {
    std::int64_t r{};
    if (__builtin_sub_overflow(a.ps_, b.ps_, &r)) throw TimeOverflow("SimTime subtraction overflows int64 picoseconds");
    return SimTime(r);
  }
  friend constexpr SimTime operator*(SimTime a, std::int64_t k) {
    std::int64_t r{};
    if (__builtin_mul_overflow(a.ps_, k, &r)) throw TimeOverflow("SimTime multiplication overflows int64 picoseconds");
    return SimTime(r);
  }
  friend constexpr SimTime operator*(std::int64_t k, SimTime a) { return a * k; }
  constexpr SimTime& operator+=(SimTime b) { return *this = *this + b; }
  constexpr SimTime& operator-=(SimTime b) { return *this = *this - b; }

 private:
  constexpr explicit SimTime(std::int64_t ps) : ps_(ps) {}
  std::int64_t ps_ = 0;
};

constexpr SimTime max(SimTime a, SimTime b) { return a < b ? b : a; }
constexpr SimTime min(SimTime a, SimTime b) { return a < b ? a : b; }

namespace detail {
constexpr SimTime scaled(unsigned long long v, std::int64_t ps_per_unit) {
  if (v > static_cast<unsigned long long>(std::numeric_limits<std::int64_t>::max() / ps_per_unit))
    throw TimeOverflow("time literal overflows int64 picoseconds");
  return SimTime::from_ps(static_cast<std::int64_t>(v) * ps_per_unit);
}
}  // namespace detail

namespace literals {
constexpr SimTime operator""_ps(unsigned long long v) { return detail::scaled(v, 1); }
constexpr SimTime operator""_ns(unsigned long long v) { return detail::scaled(v, 1'000); }
constexpr SimTime operator""_us(unsigned long long v) { return detail::scaled(v, 1'000'000); }
constexpr SimTime operator""_ms(unsigned long long v) { return detail::scaled(v, 1'000'000'000); }
constexpr SimTime operator""_s(unsigned long long v) { return detail::scaled(v, 1'000'000'000'000); }
}  // namespace literals

/// THE conversion from "an amount of work at a rate" to simulated time: bytes at bytes/s,
/// FLOPs at FLOP/s, elements at elements/s. Every cost model and the network use it.
///
/// Rounding: the result is rounded UP to the next whole picosecond, so a non-empty transfer
/// never takes zero time and nothing finishes earlier than its exact fluid time.
/// When both arguments are whole numbers below 2^63 (bytes and a bandwidth in B/s from the
/// catalog, say) the result is exact: ceil(amount * 1e12 / rate) in 128-bit integers.
/// Otherwise it is computed in double precision and then rounded up.
///
/// amount must be >= 0 and finite; rate must be > 0 and finite (std::invalid_argument);
/// a result above SimTime::max() throws TimeOverflow.
SimTime duration_for(double amount, double rate_per_second);

/// "12.5us"-style rendering for logs and error messages (shortest exact decimal in the largest
/// unit that keeps it an integer number of picoseconds).
std::string to_string(SimTime t);

}  // namespace moesim::sim
