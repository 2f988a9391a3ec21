#pragma once
/// \file
/// Named, reproducible random-number streams.
///
/// Every consumer draws from its own `Rng(seed, "stream name")`, so adding a consumer or
/// changing how many numbers one consumer draws never perturbs another, and results do not
/// depend on thread or rank count. The generator is xoshiro256** seeded through SplitMix64
/// from (seed, FNV-1a-64(name)). All distributions are implemented here rather than taken
/// from <random>, whose distribution algorithms are implementation-defined: the same seed must
/// give the same numbers with any standard library.

#include <cmath>
#include <cstdint>
#include <string_view>

#include "sim/time.hpp"

namespace moesim::sim {

/// 64-bit FNV-1a; stable across platforms, used to turn stream names into seeds.
constexpr std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// SplitMix64 step: a good mixer for deriving independent seeds.
constexpr std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Derives a child seed from (base seed, index), e.g. the seed of sweep run `index`.
constexpr std::uint64_t derive_seed(std::uint64_t base, std::uint64_t index) {
  std::uint64_t s = base ^ (index * 0xd1b54a32d192ed03ULL);
  splitmix64(s);
  return splitmix64(s);
}

class Rng {
 public:
  using result_type = std::uint64_t;

  Rng(std::uint64_t seed, std::string_view stream) { reseed(seed, fnv1a64(stream)); }
  Rng(std::uint64_t seed, std::uint64_t stream_id) { reseed(seed, stream_id); }

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }

  /// Raw 64 random bits (xoshiro256**).
  result_type operator()() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  /// Uniform in (0, 1]: safe to take the logarithm of.
  double uniform01_open0() { return (static_cast<double>((*this)() >> 11) + 1.0) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform01(); }

  /// Unbiased integer in [0, n), n > 0 (Lemire's multiply-and-reject method).
  std::uint64_t uniform_int(std::uint64_t n) {
    uint128 m = static_cast<uint128>((*this)()) * n;
    auto low = static_cast<std::uint64_t>(m);
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<uint128>((*this)()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }

  /// Exponential with the given mean (inverse transform).
  double exponential(double mean) { return -mean * std::log(uniform01_open0()); }

  /// Standard normal (Marsaglia polar method; no cached spare, so the stream position only
  /// depends on how many normals were drawn).
  double normal() {
    for (;;) {
      const double u = 2.0 * uniform01() - 1.0;
      const double v = 2.0 * uniform01() - 1.0;
      const double s = u * u + v * v;
      if (s > 0.0 && s < 1.0) return u * std::sqrt(-2.0 * std::log(s) / s);
    }
  }
  double normal(double mean, double stddev) { return mean + stddev * normal(); }

  /// Gamma(shape, 1) by Marsaglia & Tsang (2000); shape < 1 via the boost u^(1/shape).
  double gamma(double shape) {
    if (shape < 1.0) return gamma(shape + 1.0) * std::pow(uniform01_open0(), 1.0 / shape);
    const double d = shape - 1.0 / 3.0;
    const double c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x = 0;
      double v = 0;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = uniform01_open0();
      if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
      if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

  /// Gumbel(0, 1): used for sampling from a softmax via the Gumbel-max trick.
  double gumbel() { return -std::log(-std::log(uniform01_open0())); }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  void reseed(std::uint64_t seed, std::uint64_t stream_id) {
    std::uint64_t sm = seed ^ (stream_id * 0x9e3779b97f4a7c15ULL) ^ 0x6a09e667f3bcc909ULL;
    splitmix64(sm);  // decorrelate nearby seeds
    sm ^= stream_id;
    for (auto& w : s_) w = splitmix64(sm);
  }
  std::uint64_t s_[4]{};
};

}  // namespace moesim::sim
