// Capacity: the formula for C, the exact uniform-routing drop expectation, and the position and
// probs policies applied to stored assignments.
#include "models/router/capacity.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace moesim::models {

std::int64_t expert_capacity(std::int64_t tokens, int top_k, int experts, std::optional<double> cf,
                             std::int64_t min_capacity) {
  if (!cf) return kDropless;
  if (experts <= 0 || top_k <= 0 || *cf <= 0) throw std::invalid_argument("expert_capacity: bad arguments");
  const long double x = static_cast<long double>(*cf) * static_cast<long double>(tokens) *
                        static_cast<long double>(top_k) / static_cast<long double>(experts);
  const long double nearest = std::nearbyint(x);
  const long double c = std::fabs(x - nearest) <= 1e-9L * std::max(1.0L, std::fabs(x)) ? nearest : std::ceil(x);
  return std::max(min_capacity, static_cast<std::int64_t>(c));
}

double expected_uniform_drop_fraction(std::int64_t tokens, int top_k, int experts, std::int64_t capacity) {
  if (capacity == kDropless || tokens <= 0) return 0.0;
  const long double p = static_cast<long double>(top_k) / experts;
  const long double lp = std::log(p), lq = std::log1p(-p);
  const long double lgn = std::lgamma(static_cast<long double>(tokens) + 1);
  long double excess = 0;
  for (std::int64_t x = capacity + 1; x <= tokens; ++x) {
    const long double lpmf = lgn - std::lgamma(static_cast<long double>(x) + 1) -
                             std::lgamma(static_cast<long double>(tokens - x) + 1) + x * lp + (tokens - x) * lq;
    const long double term = static_cast<long double>(x - capacity) * std::exp(lpmf);
    excess += term;
    if (x > tokens * p + 10 && term < 1e-30L) break;
  }
  return static_cast<double>(excess * experts / (static_cast<long double>(tokens) * top_k));
}

namespace detail {

void finish_capacity_counts(GroupRouting& g, const RoutingSpec& spec) {
  const std::size_t Eu = g.routed.size();
  const std::int64_t C = g.capacity;
  const PositionRule rule(C);
  g.kept.resize(Eu);
  g.dropped.assign(Eu, 0);
  g.padded.assign(Eu, 0);
  for (std::size_t e = 0; e < Eu; ++e) {
    g.kept[e] = rule.kept(g.routed[e]);
    g.dropped[e] = g.routed[e] - g.kept[e];
    if (C != kDropless && spec.pad_to_capacity) {
      g.padded[e] = C - g.kept[e];
    } else if (C == kDropless) {
      const std::int64_t b = spec.block_size;
      g.padded[e] = (g.kept[e] + b - 1) / b * b - g.kept[e];
    }
  }
}

}  // namespace detail

void enforce_capacity(GroupRouting& g, const RoutingSpec& spec) {
  const std::size_t Eu = static_cast<std::size_t>(spec.experts);
  const std::size_t k = static_cast<std::size_t>(g.top_k);
  const std::size_t slots = g.expert.size();
  const std::int64_t C = g.capacity;
  g.routed.assign(Eu, 0);
  g.keep.assign(slots, 0);
  g.unrouted_slots = 0;
  if (spec.drop_policy == DropPolicy::kPosition || C == kDropless) {
    const detail::PositionRule rule(C);
    for (std::size_t i = 0; i < slots; ++i) {  // token-major order: earlier tokens first
      const int e = g.expert[i];
      if (e < 0)
        ++g.unrouted_slots;
      else
        g.keep[i] = rule.admit(g.routed[static_cast<std::size_t>(e)]);
    }
  } else {
    for (std::size_t i = 0; i < slots; ++i) {
      const int e = g.expert[i];
      if (e < 0) {
        ++g.unrouted_slots;
        continue;
      }
      ++g.routed[static_cast<std::size_t>(e)];
      g.keep[i] = 1;
    }
    // Probs: the C highest weights of each expert stay, ties to the earlier token. Bucket slots by
    // expert (counting sort keeps token order), then sort overflowing buckets.
    std::vector<std::int64_t> off(Eu + 1, 0);
    for (std::size_t e = 0; e < Eu; ++e) off[e + 1] = off[e] + g.routed[e];
    std::vector<std::int64_t> fill(off.begin(), off.end() - 1);
    std::vector<std::size_t> bucket(static_cast<std::size_t>(off[Eu]));
    for (std::size_t i = 0; i < slots; ++i)
      if (g.expert[i] >= 0) bucket[static_cast<std::size_t>(fill[static_cast<std::size_t>(g.expert[i])]++)] = i;
    for (std::size_t e = 0; e < Eu; ++e) {
      if (g.routed[e] <= C) continue;
      auto b = bucket.begin() + off[e], en = bucket.begin() + off[e + 1];
      std::stable_sort(b, en, [&](std::size_t x, std::size_t y) { return g.weight[x] > g.weight[y]; });
      for (auto it = b + C; it != en; ++it) g.keep[*it] = 0;
    }
  }
  g.fully_dropped_tokens = 0;
  for (std::size_t i = 0; i < slots; i += k)
    g.fully_dropped_tokens +=
        std::none_of(g.keep.begin() + static_cast<std::ptrdiff_t>(i),
                     g.keep.begin() + static_cast<std::ptrdiff_t>(i + k), [](std::uint8_t x) { return x != 0; });
  detail::finish_capacity_counts(g, spec);
}

}  // namespace moesim::models
