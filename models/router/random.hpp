#pragma once
/// \file
/// The router's random numbers (internal to models/router): the named stream of each routing
/// group, eight interleaved xoshiro128+ generators fed from it, and -ln u from their bits. Every
/// token-choice path (the generic loop, the small-E SIMD paths, the pilots of counts mode) draws
/// through these, so they consume the same bits in the same order.

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "sim/rng.hpp"

namespace moesim::models::detail {

/// Stream of routing group `group` of layer `layer` at step `step`; GShard's coin flips use the
/// same name + "/gshard".
inline std::string group_stream(int step, int layer, int group) {
  return fmt::format("routing/step/{}/layer/{}/group/{}", step, layer, group);
}

/// One xoshiro128+ step (Blackman & Vigna, "Scrambled linear pseudorandom number generators",
/// 2018) on every lane of the state vectors s0..s3 (any GCC/Clang vector of uint32, or a plain
/// uint32): `out` gets the output and the state advances. The one definition of the update, used
/// by LaneRng::fill and by the small-E paths, which keep the state in registers. (Output by
/// reference: returning wide vectors by value is an ABI question GCC warns about.)
template <class V>
[[gnu::always_inline]] inline void xoshiro128p_next(V& s0, V& s1, V& s2, V& s3, V& out) {
  out = s0 + s3;
  const V t = s1 << 9;
  s2 ^= s0;
  s3 ^= s1;
  s1 ^= s2;
  s0 ^= s3;
  s2 ^= t;
  s3 = (s3 << 11) | (s3 >> 21);
}

/// Eight interleaved xoshiro128+ generators, one per lane, so that the update vectorises (4 or 8
/// lanes per SIMD op). Only the upper 24 bits of each output are used (the recommended use of the
/// "+" scrambler: its lowest bits are weak). Lanes are seeded from the group's named stream, so
/// results depend on (seed, stream) only.
class LaneRng {
 public:
  static constexpr int kLanes = 8;
  /// GCC/Clang vector extension: one 8-lane register (two SSE2 registers without AVX2).
  using Vec = std::uint32_t __attribute__((vector_size(4 * kLanes)));

  explicit LaneRng(sim::Rng& seed_source) {
    std::uint32_t s[4][kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const std::uint64_t a = seed_source(), b = seed_source();
      s[0][l] = static_cast<std::uint32_t>(a);
      s[1][l] = static_cast<std::uint32_t>(a >> 32);
      s[2][l] = static_cast<std::uint32_t>(b);
      s[3][l] = static_cast<std::uint32_t>(b >> 32) | 1U;  // never the all-zero state
    }
    for (int i = 0; i < 4; ++i) std::memcpy(&s_[i], s[i], sizeof s_[i]);
  }

  /// out[0..n) with n a multiple of kLanes: value i is lane i % kLanes's output i / kLanes.
  void fill(std::uint32_t* out, std::size_t n) {
    Vec s0 = s_[0], s1 = s_[1], s2 = s_[2], s3 = s_[3];
    for (std::size_t i = 0; i < n; i += kLanes) {
      Vec r;
      xoshiro128p_next(s0, s1, s2, s3, r);
      std::memcpy(out + i, &r, sizeof r);
    }
    s_[0] = s0;
    s_[1] = s1;
    s_[2] = s2;
    s_[3] = s3;
  }

  /// The four state words of every lane, for a caller that runs xoshiro128p_next in registers
  /// (copied out rather than handed over by reference, so that the caller's state vectors never
  /// have their address taken and stay in registers).
  void get_state(std::uint32_t (&s)[4][kLanes]) const {
    for (int i = 0; i < 4; ++i) std::memcpy(s[i], &s_[i], sizeof s_[i]);
  }

 private:
  Vec s_[4];
};

/// e ln 2 + ln(1 + f) for float or a float vector (lane-wise), the one polynomial behind
/// exp1_from_bits and the small-E paths' vector form, so both round identically: ln(1 + f) =
/// f - f^2/2 + f^3 P(f), and ln 2 split in a high part exact in float times e (|e| <= 24) and a
/// low correction. (Result by reference: passing wide vectors by value is an ABI question GCC
/// warns about.)
template <class F>
[[gnu::always_inline]] inline void ln_from_parts(const F& e, const F& f, F& y) {
  F q = f * 8.506953716e-02f - 1.419747174e-01f;
  q = q * f + 1.495097876e-01f;
  q = q * f - 1.658794880e-01f;
  q = q * f + 1.996059716e-01f;
  q = q * f - 2.500096858e-01f;
  q = q * f + 3.333397210e-01f;
  const F f2 = f * f;
  const F log1pf = (f - 0.5f * f2) + (f2 * f) * q;
  y = (e * 0.693145752f + log1pf) + e * 1.42860677e-06f;
}

/// -ln(u) ~ Exp(1) for u = (2m + 1) / 2^24 with m the upper 23 bits of r (u is exact in float and
/// never 0 or 1). ln u = e ln 2 + ln(1 + f) with u = 2^e (1 + f), 1 + f in [sqrt(1/2), sqrt(2));
/// P is a degree-6 weighted least-squares fit (relative error of ln(1 + f) below 1.5e-7 in float).
/// No division and no branch, so the loop vectorises; written out (not std::log) so that every
/// libm and every vector width give the same bits.
inline float exp1_from_bits(std::uint32_t r) {
  const float u = static_cast<float>(static_cast<std::int32_t>((r >> 8) | 1U)) * 0x1.0p-24f;
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(u) - 0x3F3504F3U;
  const float e = static_cast<float>(static_cast<std::int32_t>(bits) >> 23);
  const float f = std::bit_cast<float>((bits & 0x007FFFFFU) + 0x3F3504F3U) - 1.0f;
  float y;
  ln_from_parts(e, f, y);
  return -y;
}

}  // namespace moesim::models::detail
