// Expert-choice routing.
#include "models/router/expert_choice.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>

namespace moesim::models::detail {
namespace {

/// ln(x) for x in (0, 1), branch-free so the loop below vectorises (4 floats per SSE op);
/// |relative error| < 1e-7. Written out (not std::log) for speed and so that every libm gives
/// the same bits.
inline float fast_logf(float x) {
  // Split x = 2^e * m with m in [sqrt(1/2), sqrt(2)) by offsetting the bits by those of
  // sqrt(1/2): integer ops and an int->float conversion only, all SSE2-vectorisable.
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x) - 0x3F3504F3U;
  const float e = static_cast<float>(static_cast<std::int32_t>(bits) >> 23);
  const float m = std::bit_cast<float>((bits & 0x007FFFFFU) + 0x3F3504F3U);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float poly = 1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9))));
  return e * 0.693147181f + 2.0f * s * poly;
}

/// x[e] = -ln(u_e) ~ Exp(1) for E fresh uniforms u_e in (0, 1), drawn two per 64-bit output at
/// 23-bit resolution ((2m + 1) / 2^24 is exact in float and never 0 or 1).
inline void fill_exponential(sim::Rng& rng, float* x, int E) {
  int e = 0;
  for (; e + 1 < E; e += 2) {
    const std::uint64_t r = rng();
    x[e] = static_cast<float>(2 * (r >> 41) + 1) * 0x1.0p-24f;
    x[e + 1] = static_cast<float>(2 * ((r >> 9) & 0x7FFFFFU) + 1) * 0x1.0p-24f;
  }
  if (e < E) x[e] = static_cast<float>(2 * (rng() >> 41) + 1) * 0x1.0p-24f;
  for (int i = 0; i < E; ++i) x[i] = -fast_logf(x[i]);
}

}  // namespace

void route_group_expert_choice(const RoutingSpec& spec, const std::vector<double>& p, sim::Rng& rng, GroupRouting& g) {
  const int E = spec.experts;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const std::size_t T = static_cast<std::size_t>(g.tokens);
  std::vector<double> prob(T * Eu);
  std::vector<float> x(Eu);
  for (std::size_t t = 0; t < T; ++t) {
    fill_exponential(rng, x.data(), E);
    double sum = 0;
    for (std::size_t e = 0; e < Eu; ++e) sum += prob[t * Eu + e] = p[e] / x[e];
    for (std::size_t e = 0; e < Eu; ++e) {
      prob[t * Eu + e] /= sum;
      g.prob_sum[e] += prob[t * Eu + e];
    }
  }
  const std::int64_t C = std::min<std::int64_t>(g.capacity, g.tokens);
  // Slots: one per (token, expert) pair, expert-index order within a token.
  g.top_k = E;
  g.expert.assign(T * Eu, -1);
  g.weight.assign(T * Eu, 0.0f);
  std::vector<std::size_t> order(T);
  for (std::size_t e = 0; e < Eu; ++e) {
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::partial_sort(order.begin(), order.begin() + C, order.end(), [&](std::size_t a, std::size_t b) {
      const double pa = prob[a * Eu + e], pb = prob[b * Eu + e];
      return pa > pb || (pa == pb && a < b);
    });
    for (std::int64_t i = 0; i < C; ++i) {
      const std::size_t t = order[static_cast<std::size_t>(i)];
      g.expert[t * Eu + e] = static_cast<std::int32_t>(e);
      g.weight[t * Eu + e] = static_cast<float>(prob[t * Eu + e] * spec.scaling_factor);
    }
  }
}

}  // namespace moesim::models::detail
