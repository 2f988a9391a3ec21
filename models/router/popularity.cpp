// Popularity models: uniform, power_law, hot_experts and Dirichlet popularity vectors, and the
// balanced round-robin generator.
#include "models/router/popularity.hpp"

#include <cmath>
#include <numeric>
#include <utility>

#include <fmt/format.h>

namespace moesim::models {
namespace detail {
namespace {

std::vector<double> shape_by_rank(Distribution d, int E, double alpha, int hot_count, double hot_share) {
  std::vector<double> w(static_cast<std::size_t>(E), 1.0 / E);
  if (d == Distribution::kPowerLaw) {
    double sum = 0;
    for (int r = 0; r < E; ++r) sum += w[static_cast<std::size_t>(r)] = std::pow(r + 1.0, -alpha);
    for (auto& x : w) x /= sum;
  } else if (d == Distribution::kHotExperts && hot_count < E) {
    for (int r = 0; r < E; ++r)
      w[static_cast<std::size_t>(r)] = r < hot_count ? hot_share / hot_count : (1.0 - hot_share) / (E - hot_count);
  }
  return w;
}

std::vector<double> permuted(const std::vector<double>& shape, sim::Rng rng) {
  const auto perm = permutation(static_cast<int>(shape.size()), rng);
  std::vector<double> p(shape.size());
  for (std::size_t r = 0; r < shape.size(); ++r) p[static_cast<std::size_t>(perm[r])] = shape[r];
  return p;
}

}  // namespace

std::vector<int> permutation(int n, sim::Rng& rng) {
  std::vector<int> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  for (int i = n - 1; i > 0; --i)
    std::swap(perm[static_cast<std::size_t>(i)], perm[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
  return perm;
}

std::vector<double> popularity_shape(const RoutingSpec& s, Distribution& shape_kind) {
  shape_kind = s.distribution;
  double alpha = s.alpha;
  if (s.distribution == Distribution::kDirichlet) {
    shape_kind = s.dirichlet_base_alpha ? Distribution::kPowerLaw : Distribution::kUniform;
    alpha = s.dirichlet_base_alpha.value_or(0.0);
  }
  return shape_by_rank(shape_kind, s.experts, alpha, s.hot_count, s.hot_share);
}

sim::Rng layer_permutation_rng(std::uint64_t seed, int layer) {
  return sim::Rng(seed, fmt::format("routing/popularity/layer/{}", layer));
}

void balanced_assignments(const RoutingSpec& spec, const RouteRequest& req, int group, GroupRouting& g) {
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::int64_t T = g.tokens;
  const std::size_t slots = g.expert.size();
  const int R = (req.ep_ranks > 0 && E % req.ep_ranks == 0) ? req.ep_ranks : 1;
  const std::int64_t per_rank = E / R;
  const std::int64_t first = (static_cast<std::int64_t>(req.step) * req.groups + group) * T * k;
  for (std::size_t i = 0; i < slots; ++i) {
    const std::int64_t a = first + static_cast<std::int64_t>(i);
    g.expert[i] = static_cast<std::int32_t>((a % R) * per_rank + (a / R) % per_rank);
    g.weight[i] = static_cast<float>(1.0 / k);
  }
  for (auto& x : g.prob_sum) x = static_cast<double>(T) / E;
}

}  // namespace detail

std::vector<double> expert_popularity(const RoutingSpec& s, int layer, int step, std::uint64_t seed) {
  const int E = s.experts;
  Distribution shape_kind;
  const auto shape = detail::popularity_shape(s, shape_kind);
  std::vector<double> p = shape;
  if (shape_kind == Distribution::kPowerLaw || shape_kind == Distribution::kHotExperts) {
    p = detail::permuted(shape, detail::layer_permutation_rng(seed, layer));
    if (s.layer_correlation > 0) {
      const auto shared = detail::permuted(shape, sim::Rng(seed, "routing/popularity/shared"));
      for (std::size_t e = 0; e < p.size(); ++e)
        p[e] = s.layer_correlation * shared[e] + (1.0 - s.layer_correlation) * p[e];
    }
  }
  if (s.distribution == Distribution::kDirichlet) {
    sim::Rng rng(seed, fmt::format("routing/step/{}/layer/{}/dirichlet", step, layer));
    double sum = 0;
    for (auto& x : p) sum += x = rng.gamma(s.concentration * E * x);
    for (auto& x : p) x /= sum;
  }
  return p;
}

}  // namespace moesim::models
