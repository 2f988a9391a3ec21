#include "validation_kernels/harness/checks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "validation_kernels/harness/grid.hpp"

namespace moesim::vk {

CompareResult compare_outputs(const std::vector<double>& ref, const std::vector<float>& got, const Tolerance& tol) {
  CompareResult r;
  r.checked = static_cast<int64_t>(std::min(ref.size(), got.size()));
  double sq_ref = 0;
  for (size_t i = 0; i < static_cast<size_t>(r.checked); ++i) sq_ref += ref[i] * ref[i];
  const double rms = r.checked ? std::sqrt(sq_ref / static_cast<double>(r.checked)) : 0.0;
  double sq_err = 0;
  for (size_t i = 0; i < static_cast<size_t>(r.checked); ++i) {
    if (!std::isfinite(got[i])) {
      ++r.nonfinite;
      continue;
    }
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    sq_err += d * d;
    r.max_abs_err = std::max(r.max_abs_err, d);
    if (d > tol.rtol * std::fabs(ref[i]) + tol.atol_frac * rms) ++r.bad;
  }
  if (r.nonfinite)
    r.rel_err = INFINITY;
  else
    r.rel_err = sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : std::sqrt(sq_err);
  return r;
}

float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu))
    return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  const uint32_t lsb = (u >> 16) & 1u;
  u += 0x7FFFu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

float e4m3_to_float(uint8_t bits) {
  const int sign = bits >> 7, exp = (bits >> 3) & 0xF, man = bits & 0x7;
  float v;
  if (exp == 0xF && man == 0x7)
    v = NAN;
  else if (exp == 0)
    v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
  else
    v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  return sign ? -v : v;
}

namespace {

/// Selection score and weight of every expert of one token, in double (as ref::gate_topk).
void token_scores(const float* row, const float* bias, const ref::GateConfig& cfg, std::vector<double>& select,
                  std::vector<double>& weight) {
  const size_t E = static_cast<size_t>(cfg.num_experts);
  select.assign(E, 0);
  weight.assign(E, 0);
  if (cfg.kind == ref::GateKind::kSoftmax) {
    double mx = row[0];
    for (size_t e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(row[e]));
    double sum = 0;
    for (size_t e = 0; e < E; ++e) sum += (weight[e] = std::exp(static_cast<double>(row[e]) - mx));
    for (size_t e = 0; e < E; ++e) select[e] = (weight[e] /= sum);
  } else {
    for (size_t e = 0; e < E; ++e) {
      weight[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
      select[e] = weight[e] + (bias ? static_cast<double>(bias[e]) : 0.0);
    }
  }
}

}  // namespace

GateCheck check_gate_topk(const float* logits, const float* bias, int64_t tokens_total, const ref::GateConfig& cfg,
                          const std::vector<int64_t>& tokens, const int32_t* got_expert, const float* got_weight,
                          const float* got_score, double score_tol, double weight_tol) {
  GateCheck c;
  const int k = cfg.topk, E = cfg.num_experts;
  std::vector<double> select, weight;
  char buf[256];
  auto fail = [&](int64_t t, const char* what) {
    if (c.ok) {
      std::snprintf(buf, sizeof buf, "token %lld: %s", static_cast<long long>(t), what);
      c.problem = buf;
    }
    c.ok = false;
  };
  for (int64_t t : tokens) {
    if (t < 0 || t >= tokens_total) continue;
    ++c.tokens_checked;
    const float* row = logits + static_cast<size_t>(t) * static_cast<size_t>(E);
    const ref::Routing want = ref::gate_topk(row, 1, cfg, bias);
    token_scores(row, bias, cfg, select, weight);
    const size_t s0 = static_cast<size_t>(t) * static_cast<size_t>(k);
    bool swapped = false;
    std::set<int32_t> seen;
    for (int j = 0; j < k; ++j) {
      const int32_t ge = got_expert[s0 + static_cast<size_t>(j)];
      const double gs = got_score[s0 + static_cast<size_t>(j)];
      const int32_t we = want.expert[static_cast<size_t>(j)];
      const double ws = want.score[static_cast<size_t>(j)];
      if (ge < 0 || ge >= E || !seen.insert(ge).second) {
        fail(t, "expert id out of range or repeated");
        break;
      }
      const double true_score = select[static_cast<size_t>(ge)];
      c.max_score_err = std::max(c.max_score_err, std::fabs(gs - true_score));
      if (!(std::fabs(gs - true_score) <= score_tol)) {
        fail(t, "score is not the chosen expert's score");
        break;
      }
      if (ge != we) {
        if (!(std::fabs(gs - ws) <= score_tol)) {
          fail(t, "different expert without a near-tie");
          break;
        }
        swapped = true;
        ++c.tolerated_swaps;
      }
    }
    if (!c.ok) continue;
    // Weights: the reference's when the choice agrees, else recomputed from the kernel's choice.
    double wsum = 0;
    for (int j = 0; j < k; ++j) wsum += weight[static_cast<size_t>(got_expert[s0 + static_cast<size_t>(j)])];
    for (int j = 0; j < k; ++j) {
      double expect;
      if (swapped) {
        expect = weight[static_cast<size_t>(got_expert[s0 + static_cast<size_t>(j)])];
        if (cfg.renormalize) expect /= wsum;
        expect *= cfg.weight_scale;
      } else {
        expect = want.weight[static_cast<size_t>(j)];
      }
      const double err = std::fabs(static_cast<double>(got_weight[s0 + static_cast<size_t>(j)]) - expect);
      c.max_weight_err = std::max(c.max_weight_err, std::isfinite(err) ? err : INFINITY);
      if (!(err <= weight_tol)) {
        fail(t, swapped ? "weight differs from the one recomputed for the kernel's (tied) choice"
                        : "weight differs from the reference");
        break;
      }
    }
  }
  return c;
}

std::vector<int64_t> sample_indices(int64_t n, int64_t k, uint64_t seed) {
  std::vector<int64_t> out;
  if (n <= 0 || k <= 0) return out;
  if (k >= n) {
    out.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
    return out;
  }
  std::set<int64_t> s;
  if (k >= 2) {
    s.insert(0);
    s.insert(n - 1);
  }
  Rng rng(seed);
  while (static_cast<int64_t>(s.size()) < k) s.insert(static_cast<int64_t>(rng.below(static_cast<uint64_t>(n))));
  out.assign(s.begin(), s.end());
  return out;
}

}  // namespace moesim::vk
