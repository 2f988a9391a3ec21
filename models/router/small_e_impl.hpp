#pragma once
/// \file
/// The small-E SIMD path (internal to models/router), included only by the small_e_*.cpp files,
/// each of which instantiates it for one instruction set (small_e_avx512.cpp: 16 tokens per
/// vector; small_e_avx2.cpp, small_e_base8.cpp and small_e_base16.cpp: 8 tokens per vector), so
/// that no translation unit compiles every variant.
///
/// E = 8 or 16 experts, softmax or unbiased sigmoid gate, no group-limited routing: the case of
/// Mixtral-shaped models, where the generic per-token loop spends most of its time in per-token
/// horizontal work (sum, rank_select, scalar bookkeeping). Here W = 8 or 16 tokens are handled at
/// once in structure-of-arrays form (one SIMD lane per token), so the softmax denominator and the
/// top-k are vertical operations. Every float is produced by the same IEEE operations, on the same
/// operands, in the same order as in the generic loop, and the same random bits are consumed, so
/// the results are bit-identical:
///  * scores: ln_u_from_bits_v is exp1_from_bits lane-wise; pf / (-y) is computed as (-pf) / y,
///    which IEEE division rounds to the same value (round-to-nearest is symmetric), and
///    pf + (-y) as pf - y;
///  * denominator: sum_f's 8 partial sums and its fixed combination tree, per lane;
///  * top-k: insertion of experts 0, 1, ..., E-1 into a sorted list, a new key going behind every
///    key >= it, which is descending order with ties to the lower index (as rank_select);
///  * router-probability sums: per block of 2048 / E tokens, prob_acc[e] += s[e] * inv in token
///    order (one vector of 8 experts per token), then added to the double sums;
///  * capacity, GShard second expert and per-slot outputs: a scalar pass in token order.
/// Floating-point contraction (FMA) must stay off for these files (models/CMakeLists.txt), or
/// the AVX-512 path would round differently.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "models/router/capacity.hpp"
#include "models/router/random.hpp"
#include "models/router/token_choice.hpp"

// Everything here has internal linkage: each small_e_*.cpp file compiles it for its own
// instruction set, and no out-of-line copy (a lambda, say) may be shared between them by the linker.
namespace moesim::models::detail::small_e {
namespace {

template <int W>
struct SimdTypes;
template <>
struct SimdTypes<8> {
  using F = float __attribute__((vector_size(32)));
  using I = std::int32_t __attribute__((vector_size(32)));
  using U = std::uint32_t __attribute__((vector_size(32)));
};
template <>
struct SimdTypes<16> {
  using F = float __attribute__((vector_size(64)));
  using I = std::int32_t __attribute__((vector_size(64)));
  using U = std::uint32_t __attribute__((vector_size(64)));
};
using V8u = SimdTypes<8>::U;
using V8f = SimdTypes<8>::F;

/// y = ln u for the u of exp1_from_bits (that function returns -y), lane-wise, same operations.
/// u's bit pattern is formed as that of float(m) with the exponent lowered by 24 (exact: float(m)
/// >= 1, so u = float(m) * 2^-24 is a normal number), folded into the offset subtracted next.
template <class F, class I, class U>
[[gnu::always_inline]] inline void ln_u_from_bits_v(const U& r, F& y) {
  const U m = (r >> 8) | 1U;
  const F mf = __builtin_convertvector(__builtin_bit_cast(I, m), F);
  const U bits = __builtin_bit_cast(U, mf) - (0x3F3504F3U + (24U << 23));
  const F e = __builtin_convertvector(__builtin_bit_cast(I, bits) >> 23, F);
  const F f = __builtin_bit_cast(F, (bits & 0x007FFFFFU) + 0x3F3504F3U) - 1.0f;
  ln_from_parts(e, f, y);
}

/// Two-input lane permutation: lane l of the result is lane m[l] of (a, b) (indices >= W pick
/// from b). GCC's __builtin_shuffle takes the mask as a value (folded to one instruction when it
/// is a constant); clang has no such builtin (its __builtin_shufflevector needs literal indices),
/// so clang builds (the fuzzer, static analysis) move lanes one by one: the same values, slower.
/// (References, not values: passing wide vectors by value is an ABI question GCC warns about.)
template <class F, class I>
[[gnu::always_inline]] inline void shuffle2(const F& a, const F& b, const I& m, F& out) {
#if defined(__clang__)
  constexpr int W = sizeof(F) / sizeof(float);
  for (int l = 0; l < W; ++l) out[l] = m[l] < W ? a[m[l]] : b[m[l] - W];
#else
  out = __builtin_shuffle(a, b, m);
#endif
}

/// 8x8 transpose within each group of 8 lanes: out[e] lane 8p + i = in[i] lane 8p + e.
template <class F, class I>
[[gnu::always_inline]] inline void transpose8(const F* in, F* out) {
  constexpr int W = sizeof(F) / sizeof(float);
  // Lane masks of unpacklo/unpackhi, shufps 0x44/0xEE (within 128-bit lanes) and of the 128-bit
  // halves exchange within each group of 8 lanes; W is the offset of the second operand.
  I lo, hi, s44, sEE, p20, p31;
  for (int l = 0; l < W; ++l) {
    const int b = l & ~3, j = l & 3;
    lo[l] = b + (j >> 1) + (j & 1 ? W : 0);
    hi[l] = b + 2 + (j >> 1) + (j & 1 ? W : 0);
    s44[l] = b + (j & 1) + (j & 2 ? W : 0);
    sEE[l] = b + 2 + (j & 1) + (j & 2 ? W : 0);
    const int g = l & ~7, m = l & 7;
    p20[l] = g + (m & 3) + (m & 4 ? W : 0);
    p31[l] = g + 4 + (m & 3) + (m & 4 ? W : 0);
  }
  F t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    shuffle2<F, I>(in[2 * i], in[2 * i + 1], lo, t[2 * i]);
    shuffle2<F, I>(in[2 * i], in[2 * i + 1], hi, t[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    shuffle2<F, I>(t[4 * i], t[4 * i + 2], s44, u[4 * i]);
    shuffle2<F, I>(t[4 * i], t[4 * i + 2], sEE, u[4 * i + 1]);
    shuffle2<F, I>(t[4 * i + 1], t[4 * i + 3], s44, u[4 * i + 2]);
    shuffle2<F, I>(t[4 * i + 1], t[4 * i + 3], sEE, u[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    shuffle2<F, I>(u[i], u[i + 4], p20, out[i]);
    shuffle2<F, I>(u[i], u[i + 4], p31, out[i + 4]);
  }
}

/// The small-E path of route_group_token_choice: E experts (8 or 16), top-K (K = 0: the spec's
/// k, any value up to E), W tokens per vector (8, or 16 where AVX-512 is available). Per chunk of
/// W tokens: the generator steps, scores, a transpose to one vector per expert, the softmax
/// denominator and the top-k per lane, the router-probability sums in token order, then the
/// per-token bookkeeping. With W = 16 a vector holds two tokens' rows of 8 experts (tokens 2q and
/// 2q + 1), so after the transpose lane l < 8 is token 2l and lane 8 + l token 2l + 1.
template <int W, int E, int K>
[[gnu::always_inline]] inline void route_small_e(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng,
                                                 sim::Rng& aux_rng, GroupRouting& g, bool fused_position) {
  static_assert(E % 8 == 0 && E <= 16 && (W == 8 || W == 16));
  using F = typename SimdTypes<W>::F;
  using I = typename SimdTypes<W>::I;
  using U = typename SimdTypes<W>::U;
  constexpr int H = E / 8;  // generator steps (vectors of 8 experts) per token
  constexpr int P = W / 8;  // tokens per score vector before the transpose
  constexpr int KM = K > 0 ? K : E;
  const int k = K > 0 ? K : spec.top_k;
  const std::size_t ku = static_cast<std::size_t>(k);
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const bool gshard = spec.gshard_random_second;
  // Capacity while routing without GShard skips: counted in windows (below).
  const bool windows = fused_position && !gshard;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr std::int64_t block = 2048 / E;  // prob_acc is flushed per block, as in the generic loop
  const std::int64_t T = g.tokens;
  const std::int64_t C = g.capacity;
  const auto lane_of = [](int i) { return P == 1 ? i : (i >> 1) + 8 * (i & 1); };
  F pf[H], neg_pf[H];
  for (int h = 0; h < H; ++h)
    for (int l = 0; l < W; ++l) {
      pf[h][l] = plan.pf[static_cast<std::size_t>(8 * h + (l & 7))];
      neg_pf[h][l] = -pf[h][l];
    }
  // The LaneRng update, run in registers: token t takes steps t * H .. t * H + H - 1, as it takes
  // values t * E .. t * E + E - 1 of the generic loop's draw_scores.
  V8u x0, x1, x2, x3;
  {
    std::uint32_t st[4][LaneRng::kLanes];
    LaneRng(rng).get_state(st);
    std::memcpy(&x0, st[0], sizeof x0);
    std::memcpy(&x1, st[1], sizeof x1);
    std::memcpy(&x2, st[2], sizeof x2);
    std::memcpy(&x3, st[3], sizeof x3);
  }
  const PositionRule rule(C);
  std::int64_t routed_cnt[E] = {};
  std::int64_t fully_dropped = 0, unrouted = 0;
  // Windows: while no expert that still has room can fill up, an assignment is dropped exactly
  // when its expert was full at the start of the window (`full` bit set), so a token is fully
  // dropped when all its experts are full, and the order of the tokens inside the window does not
  // matter. Routed counts and fully dropped tokens are then summed per lane in vectors and added
  // up at the window end. A chunk in which some expert may fill up, or a partial chunk, is counted
  // exactly, token by token.
  I lane_routed[E];  // per expert: assignments of the current window, per lane
  for (int e = 0; e < E; ++e) lane_routed[e] = I{};
  I lane_fully_dropped = I{};  // minus the fully dropped tokens counted in windows, per lane
  std::uint32_t full = 0;
  std::int64_t window_left = 0;  // chunks left in the current window
  const auto lane_sum = [](const I& v) {
    alignas(64) std::int32_t x[W];
    std::memcpy(x, &v, sizeof v);
    std::int64_t s = 0;
    for (int l = 0; l < W; ++l) s += x[l];
    return s;
  };
  const auto flush_window = [&] {
    for (int e = 0; e < E; ++e) {
      routed_cnt[e] += lane_sum(lane_routed[e]);
      lane_routed[e] = I{};
    }
    std::int64_t chunks = std::numeric_limits<std::int32_t>::max() / W;
    full = 0;
    for (int e = 0; e < E; ++e) {
      if (rule.full(routed_cnt[e]))
        full |= 1U << e;
      else
        chunks = std::min(chunks, (rule.limit - routed_cnt[e]) / W);
    }
    window_left = chunks;
  };

  alignas(64) std::int32_t sel_idx[KM][W];
  alignas(64) float sel_w[KM][W];
  alignas(64) float inv_l[W];
  for (std::int64_t t0 = 0; t0 < T; t0 += block) {
    const int nb = static_cast<int>(std::min(block, T - t0));
    V8f prob_acc[H];
    for (int h = 0; h < H; ++h) prob_acc[h] = V8f{};
    for (int c = 0; c < nb; c += W) {
      F Z[H][8];  // Z[h][q]: scores of experts 8h..8h+7 for tokens c + qP .. c + qP + P - 1
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
        V8u r[P][H];
        for (int p = 0; p < P; ++p)
          for (int h = 0; h < H; ++h) xoshiro128p_next(x0, x1, x2, x3, r[p][h]);
        for (int h = 0; h < H; ++h) {
          U rr;
          if constexpr (P == 1)
            rr = r[0][h];
          else
            rr = __builtin_shufflevector(r[0][h], r[1][h], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
          F y;  // y = -X
          ln_u_from_bits_v<F, I, U>(rr, y);
          Z[h][q] = sigmoid ? pf[h] / (pf[h] - y) : neg_pf[h] / y;
        }
      }
      F S[E];
      for (int h = 0; h < H; ++h) transpose8<F, I>(Z[h], S + 8 * h);
      // sum_f per lane: partial sums acc[j] over e = j, j + 8, then the fixed tree.
      F acc[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) acc[j] = F{} + S[j];
      if constexpr (H > 1) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) acc[j] += S[8 + j];
      }
      const F inv = 1.0f / (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
      // Top-k: expert e goes behind every held key >= its own.
      F key[KM];
      I idx[KM];
      for (int j = 0; j < KM; ++j) {
        key[j] = F{} + kNegInf;
        idx[j] = I{};
      }
#pragma GCC unroll 16
      for (int e = 0; e < E; ++e) {
        const F v = S[e];
        const I ev = I{} + e;
        I above;
        if constexpr (W == 8) {
          above = v > key[k - 1];
          for (int j = k - 1; j > 0; --j) {
            const I above_prev = v > key[j - 1];
            key[j] = above ? (above_prev ? key[j - 1] : v) : key[j];
            idx[j] = above ? (above_prev ? idx[j - 1] : ev) : idx[j];
            above = above_prev;
          }
          key[0] = above ? v : key[0];
          idx[0] = above ? ev : idx[0];
        } else {
          // The same selects, written with integer arithmetic only (GCC 12 turns AVX-512 vector
          // comparisons used as masks into per-lane scalar code). Keys are +0, positive finite or
          // (initially) -inf, never -0 or NaN, so v > key exactly when bits(key) - bits(v) < 0 as
          // int32 (no overflow: bits(v) <= 0x7F7FFFFF, bits(-inf) = -2^23).
          const I vb = __builtin_bit_cast(I, v);
          I kb[KM] = {};
          for (int j = 0; j < k; ++j) kb[j] = __builtin_bit_cast(I, key[j]);
          above = (kb[k - 1] - vb) >> 31;
          for (int j = k - 1; j > 0; --j) {
            const I above_prev = (kb[j - 1] - vb) >> 31;
            kb[j] = (above & ((above_prev & kb[j - 1]) | (~above_prev & vb))) | (~above & kb[j]);
            idx[j] = (above & ((above_prev & idx[j - 1]) | (~above_prev & ev))) | (~above & idx[j]);
            above = above_prev;
          }
          kb[0] = (above & vb) | (~above & kb[0]);
          idx[0] = (above & ev) | (~above & idx[0]);
          for (int j = 0; j < k; ++j) key[j] = __builtin_bit_cast(F, kb[j]);
        }
      }
      U bitset = U{};
      for (int j = 0; j < k; ++j) {
        const F w = sigmoid ? key[j] : key[j] * inv;
        std::memcpy(sel_idx[j], &idx[j], sizeof idx[j]);
        std::memcpy(sel_w[j], &w, sizeof w);
        bitset |= (U{} + 1U) << __builtin_bit_cast(U, idx[j]);
      }
      std::memcpy(inv_l, &inv, sizeof inv);
      const int nc = std::min(W, nb - c);
      for (int i = 0; i < nc; ++i)
        for (int h = 0; h < H; ++h) {
          V8f row;
          if constexpr (P == 1)
            row = Z[h][i];
          else if (i & 1)
            row = __builtin_shufflevector(Z[h][i >> 1], Z[h][i >> 1], 8, 9, 10, 11, 12, 13, 14, 15);
          else
            row = __builtin_shufflevector(Z[h][i >> 1], Z[h][i >> 1], 0, 1, 2, 3, 4, 5, 6, 7);
          prob_acc[h] += row * inv_l[lane_of(i)];
        }
      if (windows) {
        if (window_left == 0) flush_window();
        if (window_left > 0 && nc == W) {
          --window_left;
          const I left = __builtin_bit_cast(I, bitset & ~full);  // experts with room, per lane
          lane_fully_dropped += (left - 1) >> 31;                // -1 where none
          for (int e = 0; e < E; ++e) lane_routed[e] += __builtin_bit_cast(I, (bitset >> e) & 1U);
        } else {
          flush_window();
          window_left = 0;
          for (int i = 0; i < nc; ++i) {
            const int l = lane_of(i);
            bool any = false;
            for (int j = 0; j < k; ++j) any |= rule.admit(routed_cnt[sel_idx[j][l]]);
            fully_dropped += !any;
          }
        }
        continue;
      }
      for (int i = 0; i < nc; ++i) {
        const int l = lane_of(i);
        const std::int64_t t = t0 + c + i;
        double wsum = 0;
        if (gshard || !fused_position)
          for (std::size_t j = 0; j < ku; ++j) wsum += static_cast<double>(sel_w[j][l]);
        int second = k > 1 ? sel_idx[1][l] : -1;
        if (gshard) {
          const double g2 = static_cast<double>(sel_w[1][l]) / wsum;
          if (!(2.0 * g2 > aux_rng.uniform01())) second = -1;
        }
        if (fused_position) {
          bool any = false;
          for (std::size_t j = 0; j < ku; ++j) {
            const int e = j == 1 ? second : sel_idx[j][l];
            if (e < 0) {
              ++unrouted;
              continue;
            }
            any |= rule.admit(routed_cnt[e]);
          }
          fully_dropped += !any;
        } else {
          const std::size_t base = static_cast<std::size_t>(t) * ku;
          for (std::size_t j = 0; j < ku; ++j) {
            double wj = static_cast<double>(sel_w[j][l]);
            if (spec.renormalize) wj /= wsum;
            g.expert[base + j] = j == 1 ? second : sel_idx[j][l];
            g.weight[base + j] = static_cast<float>(wj * spec.scaling_factor);
          }
        }
      }
    }
    for (int h = 0; h < H; ++h)
      for (int l = 0; l < 8; ++l)
        g.prob_sum[static_cast<std::size_t>(8 * h + l)] += static_cast<double>(prob_acc[h][l]);
  }
  if (fused_position) {
    if (windows) {
      flush_window();
      fully_dropped -= lane_sum(lane_fully_dropped);
    }
    g.routed.assign(routed_cnt, routed_cnt + E);
    g.fully_dropped_tokens = fully_dropped;
    g.unrouted_slots = unrouted;
    finish_capacity_counts(g, spec);
  }
}

/// Runs Variant<E, K>::run, the including file's instantiation of route_small_e<W, E, K> for its
/// instruction set, with K the specialisation for the spec's k (E = 8: 1 and 2; E = 16: 1, 2 and 4;
/// any other k through K = 0). Each Variant<E, K>::run is a separate noinline function: with every
/// specialisation inlined into one function, GCC 12 spent up to 13% more instructions in the
/// E = 16 loops (callgrind of the routing bench).
template <int E, template <int, int> class Variant>
[[gnu::always_inline]] inline void route_for_k(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng,
                                               sim::Rng& aux_rng, GroupRouting& g, bool fused_position) {
  if (spec.top_k == 1) return Variant<E, 1>::run(spec, plan, rng, aux_rng, g, fused_position);
  if (spec.top_k == 2) return Variant<E, 2>::run(spec, plan, rng, aux_rng, g, fused_position);
  if constexpr (E == 16)
    if (spec.top_k == 4) return Variant<E, 4>::run(spec, plan, rng, aux_rng, g, fused_position);
  Variant<E, 0>::run(spec, plan, rng, aux_rng, g, fused_position);
}

}  // namespace
}  // namespace moesim::models::detail::small_e
