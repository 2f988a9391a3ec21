// Token-choice routing, generic loop: any E, both gates, group-limited routing, a candidate
// threshold for k << E; 8 and 16 experts go to the SIMD paths (small_e_*.cpp).
#include "models/router/token_choice.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "models/router/capacity.hpp"
#include "models/router/targets.hpp"

namespace moesim::models::detail {
namespace {

/// Top-k of key[0..E) (skipping masked = -inf), descending, ties to the lower index. Once k
/// candidates are held, blocks of 8 whose maximum cannot enter are skipped without branching on
/// each element (most of the E keys for k << E).
template <typename T>
inline void top_k(const T* key, int E, int k, int* out_idx, T* out_key) {
  int n = 0;
  const auto consider = [&](int e) {
    const T v = key[e];
    if (n == k && !(v > out_key[k - 1])) return;
    if (v == -std::numeric_limits<T>::infinity()) return;
    int pos = n < k ? n : k - 1;
    while (pos > 0 && v > out_key[pos - 1]) {
      out_key[pos] = out_key[pos - 1];
      out_idx[pos] = out_idx[pos - 1];
      --pos;
    }
    out_key[pos] = v;
    out_idx[pos] = e;
    if (n < k) ++n;
  };
  int e = 0;
  for (; e + 8 <= E; e += 8) {
    if (n == k) {
      const T* b = key + e;
      const T m = std::max(std::max(std::max(b[0], b[1]), std::max(b[2], b[3])),
                           std::max(std::max(b[4], b[5]), std::max(b[6], b[7])));
      if (!(m > out_key[k - 1])) continue;
    }
    for (int i = 0; i < 8; ++i) consider(e + i);
  }
  for (; e < E; ++e) consider(e);
  for (int j = n; j < k; ++j) out_idx[j] = -1;
}

/// Indices e (ascending) with key[e] > tau, at most cap - 1 of them; returns cap - 1 or more
/// only when it stopped early (the caller then scans all keys).
inline int gather_above(const float* key, int E, float tau, int* cand, int cap) {
  int n = 0;
  int e = 0;
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(tau);
  for (; e + 64 <= E; e += 64) {
    std::uint64_t m = 0;
    for (int i = 0; i < 16; ++i)
      m |= static_cast<std::uint64_t>(
               static_cast<unsigned>(_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(key + e + 4 * i), t))))
           << (4 * i);
    const int c = std::popcount(m);
    if (n + c >= cap - 1) return cap - 1;
    for (; m != 0; m &= m - 1) cand[n++] = e + std::countr_zero(m);
  }
#endif
  for (; e < E; ++e) {
    if (!(key[e] > tau)) continue;
    if (n >= cap - 1) return n;
    cand[n++] = e;
  }
  return n;
}

/// The k best of n candidate experts (ascending ids, keys ck) in descending key order, ties to the
/// lower id, without data-dependent branches: each candidate's rank is the number of candidates
/// that beat it. ck has room for n rounded up to 8, padded with -inf (never beats anything).
inline void rank_select(const int* cand, float* ck, int n, int k, int* out_idx, float* out_key) {
  const int padded = (n + 7) & ~7;
  for (int i = n; i < padded; ++i) ck[i] = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    const float v = ck[i];
    int r = 0;
    for (int j = 0; j < padded; ++j) r += static_cast<int>(ck[j] > v) + static_cast<int>((ck[j] == v) & (j < i));
    const int slot = std::min(r, k);  // slot k: scratch for candidates outside the top k
    out_idx[slot] = cand[i];
    out_key[slot] = v;
  }
}

/// Threshold tau with sum_e P(key_e > tau) = target under the logit model, so that a token's
/// top-k are usually all above it. The selection is exact whatever tau is: a token with fewer
/// than k keys above tau falls back to a full scan.
float candidate_threshold(const RoutingSpec& spec, const std::vector<float>& pf, const std::vector<float>& bias,
                          double target) {
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const auto expected = [&](double tau) {
    double n = 0;
    for (std::size_t e = 0; e < pf.size(); ++e) {
      const double w = pf[e];
      if (!sigmoid) {
        n += tau <= 0 ? 1.0 : -std::expm1(-w / tau);  // s = w / X > tau  <=>  X < w / tau
      } else {
        const double c = tau - bias[e];  // sigma = w / (w + X) > c  <=>  X < w (1 - c) / c
        n += c <= 0 ? 1.0 : c >= 1 ? 0.0 : -std::expm1(-w * (1 - c) / c);
      }
    }
    return n;
  };
  double lo = -4.0, hi = 1.0;  // sigmoid keys lie in (min bias, 1 + max bias)
  if (!sigmoid) {
    lo = 0.0;
    hi = 1.0;
    while (expected(hi) > target) hi *= 2;
  } else {
    for (float b : bias) {
      lo = std::min(lo, static_cast<double>(b) - 1.0);
      hi = std::max(hi, static_cast<double>(b) + 1.0);
    }
  }
  for (int it = 0; it < 100; ++it) {
    const double mid = 0.5 * (lo + hi);
    (expected(mid) > target ? lo : hi) = mid;
  }
  return static_cast<float>(hi);
}

}  // namespace

TokenChoicePlan make_token_choice_plan(const RoutingSpec& spec, const std::vector<double>& p) {
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const bool grouped = group_limited(spec);
  TokenChoicePlan plan;
  plan.pf.resize(Eu);
  plan.bias.assign(Eu, 0.0f);
  for (std::size_t e = 0; e < Eu; ++e) plan.pf[e] = static_cast<float>(sigmoid ? p[e] * E : p[e]);
  if (sigmoid && !spec.gate_bias.empty())
    for (std::size_t e = 0; e < Eu; ++e) plan.bias[e] = static_cast<float>(spec.gate_bias[e]);
  // Only worth it when k is small against E. Expected candidates k + sqrt(k) + 1 for the first
  // try and k + 3 sqrt(k) + 3 for the second, scaled up when only some groups are eligible.
  plan.use_threshold = E >= 32 && 4 * k <= E;
  plan.cand_cap = std::min(E, 4 * k + 64);
  if (plan.use_threshold) {
    const double kd = k, scale = grouped ? static_cast<double>(spec.n_groups) / spec.topk_group : 1.0;
    plan.tau = candidate_threshold(spec, plan.pf, plan.bias, std::min(scale * (kd + std::sqrt(kd) + 1), 0.5 * E));
    plan.tau2 = candidate_threshold(spec, plan.pf, plan.bias, std::min(scale * (kd + 3 * std::sqrt(kd) + 3), 0.75 * E));
  }
  return plan;
}

namespace {

/// Routes the group on the small-E path (the caller checked small_e_path), in the widest variant
/// the CPU supports. For tests that compare the variants on one machine, MOESIM_ROUTER_NO_AVX512
/// (any value) rules out the AVX-512 variant and MOESIM_ROUTER_NO_AVX2 both SIMD-extension variants
/// (the small-E path then runs on the baseline instruction set).
void route_small_e_group(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                         GroupRouting& g, bool fused_position) {
#ifdef MOESIM_ROUTER_X86_VARIANTS
  static const bool avx2 = __builtin_cpu_supports("avx2") && std::getenv("MOESIM_ROUTER_NO_AVX2") == nullptr;
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
                             std::getenv("MOESIM_ROUTER_NO_AVX512") == nullptr;
  if (avx512) return route_small_e_avx512(spec, plan, rng, aux_rng, g, fused_position);
  if (avx2) return route_small_e_avx2(spec, plan, rng, aux_rng, g, fused_position);
#endif
  if (spec.experts == 8)
    route_small_e_base8(spec, plan, rng, aux_rng, g, fused_position);
  else
    route_small_e_base16(spec, plan, rng, aux_rng, g, fused_position);
}

}  // namespace

MOESIM_ROUTER_CLONES
void route_group_token_choice(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                              GroupRouting& g, bool fused_position) {
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const std::size_t ku = static_cast<std::size_t>(k);
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const bool grouped = group_limited(spec);
  const bool biased = biased_gate(spec);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const std::vector<float>& bias = plan.bias;
  const bool use_threshold = plan.use_threshold;
  const int cand_cap = plan.cand_cap;
  const float tau = plan.tau, tau2 = plan.tau2;
  if (small_e_path(spec)) {
    route_small_e_group(spec, plan, rng, aux_rng, g, fused_position);
    return;
  }

  const std::size_t block = token_block(E);
  const std::size_t block_vals = (block * Eu + LaneRng::kLanes - 1) / LaneRng::kLanes * LaneRng::kLanes;
  std::vector<std::uint32_t> bits(block_vals);
  std::vector<float> s(block * Eu), key(biased ? Eu : 0), masked(grouped ? Eu : 0);
  std::vector<float> prob_acc(Eu, 0.0f), sel_key(ku + 1), cand_key(static_cast<std::size_t>(cand_cap) + 8);
  std::vector<int> sel(ku + 1), cand(static_cast<std::size_t>(cand_cap)), gsel(static_cast<std::size_t>(spec.n_groups));
  std::vector<float> gscore(static_cast<std::size_t>(spec.n_groups)), gkey(static_cast<std::size_t>(spec.n_groups));
  std::vector<std::uint8_t> group_ok(static_cast<std::size_t>(spec.n_groups));
  const int group_size = E / spec.n_groups;
  const std::int64_t C = g.capacity;
  const PositionRule rule(C);
  std::vector<std::int64_t> routed_cnt;
  if (fused_position) {
    routed_cnt.assign(Eu, 0);
    g.fully_dropped_tokens = 0;
    g.unrouted_slots = 0;
  }
  LaneRng lanes(rng);
  std::vector<double> w(ku);

  for (std::int64_t t0 = 0; t0 < g.tokens; t0 += static_cast<std::int64_t>(block)) {
    const std::size_t nb = static_cast<std::size_t>(std::min<std::int64_t>(block, g.tokens - t0));
    draw_scores(lanes, plan, sigmoid, nb, bits.data(), s.data());
    for (std::size_t b = 0; b < nb; ++b) {
      const std::int64_t t = t0 + static_cast<std::int64_t>(b);
      const float* sb = s.data() + b * Eu;
      const float inv = 1.0f / sum_f(sb, E);  // softmax denominator (sigmoid: score normaliser)
      for (std::size_t e = 0; e < Eu; ++e) prob_acc[e] += sb[e] * inv;
      const float* kb = sb;
      if (biased) {
        for (std::size_t e = 0; e < Eu; ++e) key[e] = sb[e] + bias[e];
        kb = key.data();
      }
      if (grouped) {
        for (int gi = 0; gi < spec.n_groups; ++gi) {
          const float* kk = kb + static_cast<std::ptrdiff_t>(gi) * group_size;
          // Best and second best as a multiset (so ties are harmless): 8 lanes, then lane pairs
          // merged as a tree (top-2 of two top-2 pairs: max a, max(min a, max c)). Branch-free.
          const auto mx = [](float x, float y) { return x > y ? x : y; };
          const auto mn = [](float x, float y) { return x < y ? x : y; };
          float la[8], lc[8];
          std::fill(la, la + 8, kNegInf);
          std::fill(lc, lc + 8, kNegInf);
          int i = 0;
          for (; i + 8 <= group_size; i += 8)
            for (int l = 0; l < 8; ++l) {
              const float v = kk[i + l];
              lc[l] = mx(lc[l], mn(la[l], v));
              la[l] = mx(la[l], v);
            }
          const auto merge = [&](int h) {
            for (int l = 0; l < h; ++l) {
              lc[l] = mx(mn(la[l], la[l + h]), mx(lc[l], lc[l + h]));
              la[l] = mx(la[l], la[l + h]);
            }
          };
          merge(4);
          merge(2);
          merge(1);
          float a = la[0], c2 = lc[0];
          for (; i < group_size; ++i) {
            c2 = mx(c2, mn(a, kk[i]));
            a = mx(a, kk[i]);
          }
          // DeepSeek-V3 (sigmoid): sum of the two best biased scores; V2: best score.
          gscore[static_cast<std::size_t>(gi)] = sigmoid && group_size >= 2 ? a + c2 : a;
        }
        top_k(gscore.data(), spec.n_groups, spec.topk_group, gsel.data(), gkey.data());
        std::fill(group_ok.begin(), group_ok.end(), 0);
        for (int j = 0; j < spec.topk_group; ++j)
          group_ok[static_cast<std::size_t>(gsel[static_cast<std::size_t>(j)])] = 1;
      }
      // Top-k: among the candidates above tau when there are at least k of them (then no key
      // outside can beat them), else a full scan.
      bool done = false;
      for (int attempt = 0; use_threshold && !done && attempt < 2; ++attempt) {
        int n = gather_above(kb, E, attempt == 0 ? tau : tau2, cand.data(), cand_cap);
        if (n >= cand_cap - 1) break;
        if (grouped) {  // keep the candidates of the selected groups
          int m = 0;
          for (int i = 0; i < n; ++i) {
            const int e = cand[static_cast<std::size_t>(i)];
            cand[static_cast<std::size_t>(m)] = e;
            m += group_ok[static_cast<std::size_t>(e / group_size)];
          }
          n = m;
        }
        if (n < k) continue;
        for (int i = 0; i < n; ++i) cand_key[static_cast<std::size_t>(i)] = kb[cand[static_cast<std::size_t>(i)]];
        rank_select(cand.data(), cand_key.data(), n, k, sel.data(), sel_key.data());
        done = true;
      }
      if (!done && !use_threshold && !grouped && E <= 64) {  // few experts: rank all, branch-free
        for (int e = 0; e < E; ++e) {
          cand[static_cast<std::size_t>(e)] = e;
          cand_key[static_cast<std::size_t>(e)] = kb[e];
        }
        rank_select(cand.data(), cand_key.data(), E, k, sel.data(), sel_key.data());
        done = true;
      }
      if (!done) {
        const float* src = kb;
        if (grouped) {
          for (std::size_t e = 0; e < Eu; ++e)
            masked[e] = group_ok[e / static_cast<std::size_t>(group_size)] ? kb[e] : kNegInf;
          src = masked.data();
        }
        top_k(src, E, k, sel.data(), sel_key.data());
      }
      double wsum = 0;
      for (std::size_t j = 0; j < ku; ++j) {
        const std::size_t e = static_cast<std::size_t>(sel[j]);
        w[j] = sigmoid ? sb[e] : sb[e] * inv;
        wsum += w[j];
      }
      if (spec.gshard_random_second) {
        // GShard Algorithm 1: g2 normalised over the top-2; keep expert 2 if 2*g2 > uniform.
        const double g2 = static_cast<double>(static_cast<float>(w[1])) / wsum;
        if (!(2.0 * g2 > aux_rng.uniform01())) sel[1] = -1;
      }
      if (fused_position) {
        bool any = false;
        for (std::size_t j = 0; j < ku; ++j) {
          const int e = sel[j];
          if (e < 0) {
            ++g.unrouted_slots;
            continue;
          }
          any |= rule.admit(routed_cnt[static_cast<std::size_t>(e)]);
        }
        if (!any) ++g.fully_dropped_tokens;
      } else {
        const std::size_t base = static_cast<std::size_t>(t) * ku;
        for (std::size_t j = 0; j < ku; ++j) {
          double wj = static_cast<float>(w[j]);
          if (spec.renormalize) wj /= wsum;
          g.expert[base + j] = sel[j];
          g.weight[base + j] = static_cast<float>(wj * spec.scaling_factor);
        }
      }
    }
    for (std::size_t e = 0; e < Eu; ++e) {
      g.prob_sum[e] += static_cast<double>(prob_acc[e]);
      prob_acc[e] = 0.0f;
    }
  }
  if (fused_position) {
    g.routed = std::move(routed_cnt);
    finish_capacity_counts(g, spec);
  }
}

}  // namespace moesim::models::detail
