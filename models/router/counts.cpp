// Counts mode: inclusion shares (exact forms, the per-step shape pilot, the per-layer pilot) and
// the multinomial draw of a group's routed counts.
#include "models/router/counts.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "models/router/capacity.hpp"
#include "models/router/popularity.hpp"
#include "models/router/token_choice.hpp"

namespace moesim::models {
namespace {

/// Binomial(n, p): exact inversion when the mean is small, otherwise a rounded normal with
/// continuity correction clamped to [0, n] (an approximation; used only by counts mode).
std::int64_t binomial(sim::Rng& rng, std::int64_t n, double p) {
  if (n <= 0 || p <= 0) return 0;
  if (p >= 1) return n;
  const double mean = static_cast<double>(n) * p;
  const double var = mean * (1 - p);
  if (var < 50.0 && mean < 200.0) {
    const double q = 1 - p;
    double pmf = std::pow(q, static_cast<double>(n));
    if (pmf > 0) {
      double u = rng.uniform01();
      std::int64_t x = 0;
      while (u > pmf && x < n) {
        u -= pmf;
        pmf *= (static_cast<double>(n - x) / static_cast<double>(x + 1)) * (p / q);
        ++x;
      }
      return x;
    }
  }
  const double x = std::floor(mean + std::sqrt(var) * rng.normal() + 0.5);
  return static_cast<std::int64_t>(std::clamp(x, 0.0, static_cast<double>(n)));
}

/// Route `tokens` tokens of popularity `p` exactly on stream `stream` (gshard_random_second off)
/// and return each expert's share of the assignments.
std::vector<double> pilot_shares(const RoutingSpec& spec, const std::vector<double>& p, const std::string& stream,
                                 std::uint64_t seed, std::int64_t tokens) {
  GroupRouting pilot;
  pilot.tokens = tokens;
  pilot.top_k = spec.top_k;
  pilot.expert.assign(static_cast<std::size_t>(pilot.tokens * spec.top_k), -1);
  pilot.weight.assign(pilot.expert.size(), 0.0f);
  pilot.prob_sum.assign(p.size(), 0.0);
  sim::Rng rng(seed, stream);
  sim::Rng aux(seed, stream + "/gshard");
  RoutingSpec s2 = spec;
  s2.gshard_random_second = false;
  detail::route_group_token_choice(s2, detail::make_token_choice_plan(s2, p), rng, aux, pilot, false);
  std::vector<double> share(p.size(), 0.0);
  for (int e : pilot.expert)
    if (e >= 0) share[static_cast<std::size_t>(e)] += 1.0;
  for (auto& x : share) x /= static_cast<double>(pilot.expert.size());
  return share;
}

/// Tokens of the once-per-step shape pilot (8x the per-layer pilot's 16,384).
constexpr std::int64_t kShapePilotTokens = 131072;

}  // namespace

namespace detail {

void route_group_counts(const RoutingSpec& spec, const std::vector<double>& shares, const std::vector<double>& p,
                        sim::Rng& rng, GroupRouting& g) {
  const std::size_t Eu = static_cast<std::size_t>(spec.experts);
  const std::int64_t T = g.tokens;
  g.routed.assign(Eu, 0);
  std::int64_t left = T * spec.top_k;
  double mass = 1.0;
  for (std::size_t e = 0; e < Eu && left > 0; ++e) {
    const double q = e + 1 == Eu ? 1.0 : std::min(1.0, shares[e] / mass);
    g.routed[e] = binomial(rng, left, q);
    left -= g.routed[e];
    mass -= shares[e];
  }
  for (std::size_t e = 0; e < Eu; ++e) g.prob_sum[e] = p[e] * static_cast<double>(T);
  finish_capacity_counts(g, spec);
  g.fully_dropped_tokens = -1;
}

}  // namespace detail

std::vector<double> pilot_inclusion_shares(const RoutingSpec& spec, const std::vector<double>& p, int layer, int step,
                                           std::uint64_t seed, std::int64_t tokens) {
  return pilot_shares(spec, p, fmt::format("routing/step/{}/layer/{}/pilot", step, layer), seed, tokens);
}

std::vector<double> counts_inclusion_shares(const RoutingSpec& spec, int layer, int step, std::uint64_t seed,
                                            InclusionShareCache* cache) {
  const std::size_t Eu = static_cast<std::size_t>(spec.experts);
  if (spec.distribution == Distribution::kUniform || spec.distribution == Distribution::kBalanced)
    return std::vector<double>(Eu, 1.0 / static_cast<double>(Eu));
  const bool grouped = spec.n_groups > 1;
  if (!grouped && spec.top_k == spec.experts) return std::vector<double>(Eu, 1.0 / static_cast<double>(Eu));
  const bool biased = spec.gate == GateFunction::kSigmoid &&
                      std::any_of(spec.gate_bias.begin(), spec.gate_bias.end(), [](double b) { return b != 0.0; });
  const bool equal_bias =
      std::all_of(spec.gate_bias.begin(), spec.gate_bias.end(), [&](double b) { return b == spec.gate_bias.front(); });
  // Gumbel-top-k (see router.hpp): the selection is Plackett-Luce sampling from p.
  if (!grouped && !biased && (spec.top_k == 1 || spec.top_k == 2)) {
    const auto p = expert_popularity(spec, layer, step, seed);
    if (spec.top_k == 1) return p;
    double odds = 0;  // sum_j p_j / (1 - p_j)
    for (double x : p) odds += x < 1.0 ? x / (1.0 - x) : 0.0;
    std::vector<double> share(Eu);
    for (std::size_t e = 0; e < Eu; ++e)
      share[e] = 0.5 * p[e] * (1.0 + odds - (p[e] < 1.0 ? p[e] / (1.0 - p[e]) : 0.0));
    return share;
  }
  Distribution shape_kind;
  const auto shape = detail::popularity_shape(spec, shape_kind);
  const bool permuted_shape = spec.distribution != Distribution::kDirichlet && spec.layer_correlation <= 0 &&
                              (shape_kind == Distribution::kPowerLaw || shape_kind == Distribution::kHotExperts);
  if (grouped || !equal_bias || !permuted_shape)
    return pilot_inclusion_shares(spec, expert_popularity(spec, layer, step, seed), layer, step, seed);
  // Permutation-equivariant gate: the shares of a permuted shape are the permuted shares of the
  // shape, so one (larger) pilot per step serves every layer.
  const std::vector<double>* by_rank = nullptr;
  std::vector<double> local;
  if (cache != nullptr)
    for (const auto& en : cache->entries)
      if (en.step == step && en.seed == seed && en.shape == shape) by_rank = &en.shares;
  if (by_rank == nullptr) {
    local = pilot_shares(spec, shape, fmt::format("routing/step/{}/pilot/shape", step), seed, kShapePilotTokens);
    if (cache != nullptr) {
      cache->entries.push_back({step, seed, shape, std::move(local)});
      by_rank = &cache->entries.back().shares;
    } else {
      by_rank = &local;
    }
  }
  sim::Rng rng = detail::layer_permutation_rng(seed, layer);
  const auto perm = detail::permutation(spec.experts, rng);
  std::vector<double> share(Eu);
  for (std::size_t r = 0; r < Eu; ++r) share[static_cast<std::size_t>(perm[r])] = (*by_rank)[r];
  return share;
}

}  // namespace moesim::models
