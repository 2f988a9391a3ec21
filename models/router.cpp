#include "models/router.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <ostream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "config/input_file.hpp"
#include "config/reader.hpp"
#include "sim/rng.hpp"

namespace moesim::models {

// ---------------------------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Popularity
// ---------------------------------------------------------------------------------------------

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

std::vector<int> permutation(int n, sim::Rng& rng) {
  std::vector<int> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  for (int i = n - 1; i > 0; --i)
    std::swap(perm[static_cast<std::size_t>(i)], perm[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
  return perm;
}

std::vector<double> permuted(const std::vector<double>& shape, sim::Rng rng) {
  const auto perm = permutation(static_cast<int>(shape.size()), rng);
  std::vector<double> p(shape.size());
  for (std::size_t r = 0; r < shape.size(); ++r) p[static_cast<std::size_t>(perm[r])] = shape[r];
  return p;
}

/// The popularity shape by rank (before the per-layer permutation) and its kind.
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

}  // namespace

std::vector<double> expert_popularity(const RoutingSpec& s, int layer, int step, std::uint64_t seed) {
  const int E = s.experts;
  Distribution shape_kind;
  const auto shape = popularity_shape(s, shape_kind);
  std::vector<double> p = shape;
  if (shape_kind == Distribution::kPowerLaw || shape_kind == Distribution::kHotExperts) {
    p = permuted(shape, layer_permutation_rng(seed, layer));
    if (s.layer_correlation > 0) {
      const auto shared = permuted(shape, sim::Rng(seed, "routing/popularity/shared"));
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

// ---------------------------------------------------------------------------------------------
// Trace
// ---------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void trace_error(const std::string& file, int line, const std::string& msg) {
  config::Diagnostics d;
  d.error(config::Location{file, line, 0}, "routing.trace", msg);
  d.throw_if_any();
  throw std::logic_error("unreachable");
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (c != ' ' && c != '\t' && c != '\r') {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

bool parse_int(const std::string& s, long long& v) {
  if (s.empty()) return false;
  std::size_t pos = 0;
  try {
    v = std::stoll(s, &pos);
  } catch (...) {
    return false;
  }
  return pos == s.size();
}

}  // namespace

RoutingTrace load_routing_trace(const std::string& file, const ModelSpec& model, int top_k) {
  // A regular file of at most kMaxTraceBytes (a FIFO, /dev/zero or a directory is refused with
  // what it is, instead of blocking, reading without end or looking like an empty trace).
  std::istringstream in(config::read_input_file(file, config::kMaxTraceBytes, "routing trace", "routing.trace"));
  RoutingTrace t;
  t.file = file;
  t.top_k = top_k;
  const auto moe = model.moe_layer_indices();
  std::vector<int> slot_of_layer(static_cast<std::size_t>(model.num_layers()), -1);
  for (std::size_t i = 0; i < moe.size(); ++i) slot_of_layer[static_cast<std::size_t>(moe[i])] = static_cast<int>(i);
  t.layers = moe;
  t.experts.assign(moe.size(), {});
  std::string line;
  int lineno = 0;
  bool header_seen = false;
  int header_line = 0;
  const std::size_t want_cols = 2 + static_cast<std::size_t>(top_k);
  while (std::getline(in, line)) {
    ++lineno;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto cols = split_csv(line);
    if (!header_seen) {
      header_seen = true;
      header_line = lineno;
      std::string want = "layer,token";
      for (int j = 0; j < top_k; ++j) want += fmt::format(",expert_{}", j);
      std::string got;
      for (std::size_t i = 0; i < cols.size(); ++i) got += (i ? "," : "") + cols[i];
      if (got != want)
        trace_error(file, lineno, fmt::format("header must be '{}' for top_k {} (got '{}')", want, top_k, got));
      continue;
    }
    if (cols.size() != want_cols)
      trace_error(
          file, lineno,
          fmt::format("expected {} columns (layer, token, {} expert ids), got {}", want_cols, top_k, cols.size()));
    long long layer = 0, token = 0;
    if (!parse_int(cols[0], layer)) trace_error(file, lineno, "layer '" + cols[0] + "' is not an integer");
    if (!parse_int(cols[1], token)) trace_error(file, lineno, "token '" + cols[1] + "' is not an integer");
    if (layer < 0 || layer >= model.num_layers())
      trace_error(
          file, lineno,
          fmt::format("layer {} is out of range: model '{}' has {} layers", layer, model.name, model.num_layers()));
    const int slot = slot_of_layer[static_cast<std::size_t>(layer)];
    if (slot < 0)
      trace_error(file, lineno, fmt::format("layer {} of model '{}' is not a MoE layer", layer, model.name));
    auto& ids = t.experts[static_cast<std::size_t>(slot)];
    const long long expect_token = static_cast<long long>(ids.size()) / top_k;
    if (token != expect_token)
      trace_error(file, lineno,
                  fmt::format("token {} of layer {} out of order: expected token {}", token, layer, expect_token));
    for (int j = 0; j < top_k; ++j) {
      long long e = 0;
      const auto& c = cols[2 + static_cast<std::size_t>(j)];
      if (!parse_int(c, e)) trace_error(file, lineno, fmt::format("expert_{} '{}' is not an integer", j, c));
      if (e < 0 || e >= model.experts)
        trace_error(file, lineno,
                    fmt::format("expert id {} out of range [0, {}) in column expert_{}", e, model.experts, j));
      for (int i = 0; i < j; ++i)
        if (ids[ids.size() - static_cast<std::size_t>(j - i)] == e)
          trace_error(file, lineno, fmt::format("expert id {} repeated within one token", e));
      ids.push_back(static_cast<int>(e));
    }
  }
  if (!header_seen) trace_error(file, lineno, "empty routing trace (no header line)");
  std::vector<int> missing;
  for (std::size_t i = 0; i < moe.size(); ++i)
    if (t.experts[i].empty()) missing.push_back(moe[i]);
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 8; ++i) list += fmt::format("{}{}", i ? ", " : "", missing[i]);
    if (missing.size() > 8) list += ", ...";
    trace_error(file, header_line,
                fmt::format("wrong number of layers: the trace has {} MoE layers, model '{}' has {} (missing {})",
                            moe.size() - missing.size(), model.name, moe.size(), list));
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Capacity enforcement and statistics
// ---------------------------------------------------------------------------------------------

namespace {

/// dropped = routed - kept, and the padded rows (pad_to_capacity: C - kept; dropless: up to the
/// next multiple of block_size), from g.routed and g.kept.
void finish_capacity_counts(GroupRouting& g, const RoutingSpec& spec) {
  const std::size_t Eu = g.routed.size();
  const std::int64_t C = g.capacity;
  g.dropped.assign(Eu, 0);
  g.padded.assign(Eu, 0);
  for (std::size_t e = 0; e < Eu; ++e) {
    g.dropped[e] = g.routed[e] - g.kept[e];
    if (C != kDropless && spec.pad_to_capacity) {
      g.padded[e] = C - g.kept[e];
    } else if (C == kDropless) {
      const std::int64_t b = spec.block_size;
      g.padded[e] = (g.kept[e] + b - 1) / b * b - g.kept[e];
    }
  }
}

}  // namespace

void enforce_capacity(GroupRouting& g, const RoutingSpec& spec) {
  const int E = spec.experts;
  const int k = g.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  g.routed.assign(Eu, 0);
  g.kept.assign(Eu, 0);
  g.dropped.assign(Eu, 0);
  g.padded.assign(Eu, 0);
  const std::size_t slots = g.expert.size();
  g.keep.assign(slots, 0);
  g.unrouted_slots = 0;
  for (std::size_t i = 0; i < slots; ++i) {
    const int e = g.expert[i];
    if (e < 0) {
      ++g.unrouted_slots;
      continue;
    }
    ++g.routed[static_cast<std::size_t>(e)];
    g.keep[i] = 1;
  }
  const std::int64_t C = g.capacity;
  if (C != kDropless) {
    if (spec.drop_policy == DropPolicy::kPosition) {
      std::vector<std::int64_t> cnt(Eu, 0);
      for (std::size_t i = 0; i < slots; ++i) {  // token-major order: earlier tokens first
        const int e = g.expert[i];
        if (e < 0) continue;
        if (cnt[static_cast<std::size_t>(e)]++ >= C) g.keep[i] = 0;
      }
    } else {
      // Bucket slots by expert (counting sort keeps token order), then sort overflowing buckets.
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
  }
  g.fully_dropped_tokens = 0;
  for (std::int64_t t = 0; t < g.tokens; ++t) {
    bool any = false;
    for (int j = 0; j < k; ++j) {
      const std::size_t i = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
      if (g.keep[i]) {
        any = true;
        ++g.kept[static_cast<std::size_t>(g.expert[i])];
      }
    }
    if (!any) ++g.fully_dropped_tokens;
  }
  finish_capacity_counts(g, spec);
}

LayerStats layer_stats(const std::vector<GroupRouting>& groups, int E, int /*top_k*/) {
  LayerStats s;
  const std::size_t Eu = static_cast<std::size_t>(E);
  s.expert_routed.assign(Eu, 0);
  s.expert_kept.assign(Eu, 0);
  s.expert_dropped.assign(Eu, 0);
  s.expert_padded.assign(Eu, 0);
  std::vector<double> prob(Eu, 0.0);
  bool fd_known = true;
  for (const auto& g : groups) {
    s.tokens += g.tokens;
    for (std::size_t e = 0; e < Eu; ++e) {
      s.expert_routed[e] += g.routed[e];
      s.expert_kept[e] += g.kept[e];
      s.expert_dropped[e] += g.dropped[e];
      s.expert_padded[e] += g.padded[e];
      prob[e] += g.prob_sum[e];
    }
    if (g.fully_dropped_tokens < 0)
      fd_known = false;
    else
      s.fully_dropped_tokens += g.fully_dropped_tokens;
  }
  for (std::size_t e = 0; e < Eu; ++e) {
    s.routed += s.expert_routed[e];
    s.kept += s.expert_kept[e];
    s.dropped += s.expert_dropped[e];
    s.padded += s.expert_padded[e];
  }
  if (!fd_known) s.fully_dropped_tokens = -1;
  s.drop_fraction = s.routed > 0 ? static_cast<double>(s.dropped) / static_cast<double>(s.routed) : 0.0;
  s.fully_dropped_fraction = !fd_known ? std::numeric_limits<double>::quiet_NaN()
                             : s.tokens > 0
                                 ? static_cast<double>(s.fully_dropped_tokens) / static_cast<double>(s.tokens)
                                 : 0.0;
  const std::int64_t rows = s.kept + s.padded;
  s.padded_fraction = rows > 0 ? static_cast<double>(s.padded) / static_cast<double>(rows) : 0.0;
  if (s.routed > 0 && E > 0) {
    const double total = static_cast<double>(s.routed);
    const double mean = total / E;
    double max = 0, var = 0, aux = 0, ent = 0;
    std::vector<double> sorted(Eu);
    for (std::size_t e = 0; e < Eu; ++e) {
      const double x = static_cast<double>(s.expert_routed[e]);
      sorted[e] = x;
      max = std::max(max, x);
      var += (x - mean) * (x - mean);
      const double f = x / total;
      aux += f * (s.tokens > 0 ? prob[e] / static_cast<double>(s.tokens) : 0.0);
      if (f > 0) ent -= f * std::log(f);
    }
    s.max_over_mean = max / mean;
    s.cv = std::sqrt(var / E) / mean;
    std::sort(sorted.begin(), sorted.end());
    double weighted = 0;
    for (std::size_t i = 0; i < Eu; ++i) weighted += static_cast<double>(i + 1) * sorted[i];
    s.gini = 2.0 * weighted / (E * total) - (E + 1.0) / E;
    s.aux_loss = E * aux;
    s.entropy = ent;
    s.entropy_normalized = E > 1 ? ent / std::log(static_cast<double>(E)) : 1.0;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

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

/// Sum in a fixed order with 8 partial sums (vectorisable, deterministic).
inline float sum_f(const float* v, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += v[i + j];
  for (; i < n; ++i) acc[0] += v[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

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

/// Eight interleaved xoshiro128+ generators (Blackman & Vigna, "Scrambled linear pseudorandom
/// number generators", 2018), one per lane, so that the update vectorises (4 or 8 lanes per SIMD
/// op). Only the upper 24 bits of each output are used (the recommended use of the "+" scrambler:
/// its lowest bits are weak). Lanes are seeded from the group's named stream, so results depend on
/// (seed, stream) only.
class LaneRng {
 public:
  static constexpr int kLanes = 8;
  explicit LaneRng(sim::Rng& seed_source) {
    for (int l = 0; l < kLanes; ++l) {
      const std::uint64_t a = seed_source(), b = seed_source();
      s0_[l] = static_cast<std::uint32_t>(a);
      s1_[l] = static_cast<std::uint32_t>(a >> 32);
      s2_[l] = static_cast<std::uint32_t>(b);
      s3_[l] = static_cast<std::uint32_t>(b >> 32) | 1U;  // never the all-zero state
    }
  }
  /// out[0..n) with n a multiple of kLanes.
  void fill(std::uint32_t* out, std::size_t n) {
    // GCC/Clang vector extension: one 8-lane register (two SSE2 registers without AVX2).
    using V = std::uint32_t __attribute__((vector_size(4 * kLanes)));
    V s0, s1, s2, s3;
    std::memcpy(&s0, s0_, sizeof s0);
    std::memcpy(&s1, s1_, sizeof s1);
    std::memcpy(&s2, s2_, sizeof s2);
    std::memcpy(&s3, s3_, sizeof s3);
    for (std::size_t i = 0; i < n; i += kLanes) {
      const V r = s0 + s3;
      std::memcpy(out + i, &r, sizeof r);
      const V t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >> 21);
    }
    std::memcpy(s0_, &s0, sizeof s0);
    std::memcpy(s1_, &s1, sizeof s1);
    std::memcpy(s2_, &s2, sizeof s2);
    std::memcpy(s3_, &s3, sizeof s3);
  }

  /// The four state words of every lane, for a caller that runs the same update in registers.
  void get_state(std::uint32_t (&s)[4][kLanes]) const {
    std::memcpy(s[0], s0_, sizeof s0_);
    std::memcpy(s[1], s1_, sizeof s1_);
    std::memcpy(s[2], s2_, sizeof s2_);
    std::memcpy(s[3], s3_, sizeof s3_);
  }

 private:
  std::uint32_t s0_[kLanes], s1_[kLanes], s2_[kLanes], s3_[kLanes];
};

/// e ln 2 + ln(1 + f) for float or a float vector (lane-wise), the one polynomial behind
/// exp1_from_bits and ln_u_from_bits_v, so both round identically: ln(1 + f) = f - f^2/2 +
/// f^3 P(f), and ln 2 split in a high part exact in float times e (|e| <= 24) and a low correction.
/// (Result by reference: passing wide vectors by value is an ABI question GCC warns about.)
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
/// ln(1 + f) = f - f^2/2 + f^3 P(f) with P a degree-6 weighted least-squares fit (relative error of
/// ln(1 + f) below 1.5e-7 in float). No division and no branch, so the loop vectorises; written
/// out (not std::log) so that every libm and every vector width give the same bits.
inline float exp1_from_bits(std::uint32_t r) {
  const float u = static_cast<float>(static_cast<std::int32_t>((r >> 8) | 1U)) * 0x1.0p-24f;
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(u) - 0x3F3504F3U;
  const float e = static_cast<float>(static_cast<std::int32_t>(bits) >> 23);
  const float f = std::bit_cast<float>((bits & 0x007FFFFFU) + 0x3F3504F3U) - 1.0f;
  float y;
  ln_from_parts(e, f, y);
  return -y;
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

/// Token-choice routing of one group. Per token: E uniforms from a LaneRng -> X_e ~ Exp(1) ->
/// s_e = w_e / X_e = exp(logit_e) with logit_e = ln w_e + Gumbel (softmax: w = p; sigmoid:
/// w = E p and the score is w / (w + X) = sigmoid(logit)). The softmax denominator and the
/// router-probability sums (aux loss) use all E scores; the top-k is found among the few keys
/// above a precomputed threshold (a full scan when fewer than k are above it), which gives exactly
/// the full top-k, ties to the lower index. Tokens are processed in blocks so that the random
/// numbers and scores of a block are produced by vectorisable loops.
///
/// `fused_position`: apply capacity with drop_policy position while routing (same order and
/// result as enforce_capacity) and keep no per-slot arrays.
/// What one layer's token-choice routing needs before its groups are routed: the per-expert
/// weights of the logit model and the candidate threshold (computed once per layer).
struct TokenChoicePlan {
  std::vector<float> pf, bias;
  bool use_threshold = false;
  int cand_cap = 0;
  float tau = 0.0f;   ///< first try: few candidates (a second gather for about 1 token in 8)
  float tau2 = 0.0f;  ///< second try: more candidates (a full scan for about 1 token in 500)
};

TokenChoicePlan make_token_choice_plan(const RoutingSpec& spec, const std::vector<double>& p) {
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const bool grouped = spec.n_groups > 1 && spec.topk_group < spec.n_groups;
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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOESIM_NO_ROUTER_CLONES)
// An AVX2 clone (picked at load time on CPUs that have it) runs the block loops 8 floats wide.
// Only element-wise IEEE operations and fixed-order sums are involved (no FMA: the clone does not
// enable it), so both clones give the same bits.
#define MOESIM_ROUTER_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOESIM_ROUTER_CLONES
#endif

// ---- Small-E fast path ------------------------------------------------------------------------
// E = 8 or 16 experts, softmax or unbiased sigmoid gate, no group-limited routing: the case of
// Mixtral-shaped models, where the generic per-token loop above spends most of its time in
// per-token horizontal work (sum, rank_select, scalar bookkeeping). Here W = 8 or 16 tokens are
// handled at once in structure-of-arrays form (one SIMD lane per token), so the softmax
// denominator and the top-k are vertical operations. Every float is produced by the same IEEE
// operations, on the same operands, in the same order as in the generic loop, and the same random
// bits are consumed, so the results are bit-identical (tests/golden and the router tests check it):
//  * scores: ln_u_from_bits_v is exp1_from_bits lane-wise; pf / (-y) is computed as (-pf) / y,
//    which IEEE division rounds to the same value (round-to-nearest is symmetric), and
//    pf + (-y) as pf - y;
//  * denominator: sum_f's 8 partial sums and its fixed combination tree, per lane;
//  * top-k: insertion of experts 0, 1, ..., E-1 into a sorted list, a new key going behind every
//    key >= it, which is descending order with ties to the lower index (as rank_select);
//  * router-probability sums: per block of 2048 / E tokens, prob_acc[e] += s[e] * inv in token
//    order (one vector of 8 experts per token), then added to the double sums as before;
//  * capacity, GShard second expert and per-slot outputs: a scalar pass in token order.
// Floating-point contraction (FMA) must stay off for this file (models/CMakeLists.txt), or the
// AVX-512 path would round differently.

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
  // The LaneRng update (LaneRng::fill), run in registers: token t takes steps t * H .. t * H + H - 1,
  // as it takes values t * E .. t * E + E - 1 of the generic loop's fill.
  V8u x0, x1, x2, x3;
  {
    const LaneRng lanes(rng);
    std::uint32_t st[4][LaneRng::kLanes];
    lanes.get_state(st);
    std::memcpy(&x0, st[0], sizeof x0);
    std::memcpy(&x1, st[1], sizeof x1);
    std::memcpy(&x2, st[2], sizeof x2);
    std::memcpy(&x3, st[3], sizeof x3);
  }
  std::int64_t routed_cnt[E] = {}, kept_cnt[E] = {};
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
      if (C == kDropless) continue;
      if (routed_cnt[e] >= C)
        full |= 1U << e;
      else
        chunks = std::min(chunks, (C - routed_cnt[e]) / W);
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
          for (int h = 0; h < H; ++h) {
            r[p][h] = x0 + x3;
            const V8u t = x1 << 9;
            x2 ^= x0;
            x3 ^= x1;
            x1 ^= x2;
            x0 ^= x3;
            x2 ^= t;
            x3 = (x3 << 11) | (x3 >> 21);
          }
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
            for (int j = 0; j < k; ++j) {
              const int e = sel_idx[j][l];
              any |= C == kDropless || routed_cnt[e] < C;  // position policy: earlier tokens first
              ++routed_cnt[e];
            }
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
            const bool keep = C == kDropless || routed_cnt[e] < C;  // position policy: earlier tokens first
            kept_cnt[e] += keep;
            any |= keep;
            ++routed_cnt[e];
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
      for (int e = 0; e < E; ++e) kept_cnt[e] = C == kDropless ? routed_cnt[e] : std::min(routed_cnt[e], C);
    }
    g.routed.assign(routed_cnt, routed_cnt + E);
    g.kept.assign(kept_cnt, kept_cnt + E);
    g.fully_dropped_tokens = fully_dropped;
    g.unrouted_slots = unrouted;
    finish_capacity_counts(g, spec);
  }
}

template <int W>
[[gnu::always_inline]] inline void route_small_e_dispatch(const RoutingSpec& spec, const TokenChoicePlan& plan,
                                                          sim::Rng& rng, sim::Rng& aux_rng, GroupRouting& g,
                                                          bool fused_position) {
  if (spec.experts == 8) {
    if (spec.top_k == 2)
      route_small_e<W, 8, 2>(spec, plan, rng, aux_rng, g, fused_position);
    else if (spec.top_k == 1)
      route_small_e<W, 8, 1>(spec, plan, rng, aux_rng, g, fused_position);
    else
      route_small_e<W, 8, 0>(spec, plan, rng, aux_rng, g, fused_position);
  } else {
    if (spec.top_k == 2)
      route_small_e<W, 16, 2>(spec, plan, rng, aux_rng, g, fused_position);
    else if (spec.top_k == 4)
      route_small_e<W, 16, 4>(spec, plan, rng, aux_rng, g, fused_position);
    else if (spec.top_k == 1)
      route_small_e<W, 16, 1>(spec, plan, rng, aux_rng, g, fused_position);
    else
      route_small_e<W, 16, 0>(spec, plan, rng, aux_rng, g, fused_position);
  }
}

MOESIM_ROUTER_CLONES
void route_small_e8w(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                     GroupRouting& g, bool fused_position) {
  route_small_e_dispatch<8>(spec, plan, rng, aux_rng, g, fused_position);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOESIM_NO_ROUTER_CLONES)
#define MOESIM_ROUTER_AVX512 1
// 16 tokens per vector on CPUs with AVX-512 (F, VL, DQ, BW: x86-64-v4). Same operations, so the
// same bits as the 8-wide path.
__attribute__((target("arch=x86-64-v4"))) void route_small_e16w(const RoutingSpec& spec, const TokenChoicePlan& plan,
                                                                sim::Rng& rng, sim::Rng& aux_rng, GroupRouting& g,
                                                                bool fused_position) {
  route_small_e_dispatch<16>(spec, plan, rng, aux_rng, g, fused_position);
}
#endif

/// Routes the group on the small-E path (the caller checked small_e_path).
void route_small_e_group(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                         GroupRouting& g, bool fused_position) {
#ifdef MOESIM_ROUTER_AVX512
  // MOESIM_ROUTER_NO_AVX512 (any value) forces the 8-wide path, so that tests can compare both.
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
                             std::getenv("MOESIM_ROUTER_NO_AVX512") == nullptr;
  if (avx512) {
    route_small_e16w(spec, plan, rng, aux_rng, g, fused_position);
    return;
  }
#endif
  route_small_e8w(spec, plan, rng, aux_rng, g, fused_position);
}

MOESIM_ROUTER_CLONES
void route_group_token_choice(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                              GroupRouting& g, bool fused_position) {
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const std::size_t ku = static_cast<std::size_t>(k);
  const bool sigmoid = spec.gate == GateFunction::kSigmoid;
  const bool grouped = spec.n_groups > 1 && spec.topk_group < spec.n_groups;
  const bool biased = sigmoid && !spec.gate_bias.empty();
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const std::vector<float>& pf = plan.pf;
  const std::vector<float>& bias = plan.bias;
  const bool use_threshold = plan.use_threshold;
  const int cand_cap = plan.cand_cap;
  const float tau = plan.tau, tau2 = plan.tau2;
  if (!grouped && !biased && (E == 8 || E == 16)) {
    route_small_e_group(spec, plan, rng, aux_rng, g, fused_position);
    return;
  }

  const std::size_t block = std::max<std::size_t>(1, 2048 / Eu);
  const std::size_t block_vals = (block * Eu + LaneRng::kLanes - 1) / LaneRng::kLanes * LaneRng::kLanes;
  std::vector<std::uint32_t> bits(block_vals);
  std::vector<float> s(block * Eu), key(biased ? Eu : 0), masked(grouped ? Eu : 0);
  std::vector<float> prob_acc(Eu, 0.0f), sel_key(ku + 1), cand_key(static_cast<std::size_t>(cand_cap) + 8);
  std::vector<int> sel(ku + 1), cand(static_cast<std::size_t>(cand_cap)), gsel(static_cast<std::size_t>(spec.n_groups));
  std::vector<float> gscore(static_cast<std::size_t>(spec.n_groups)), gkey(static_cast<std::size_t>(spec.n_groups));
  std::vector<std::uint8_t> group_ok(static_cast<std::size_t>(spec.n_groups));
  const int group_size = E / spec.n_groups;
  const std::int64_t C = g.capacity;
  std::vector<std::int64_t> routed_cnt, kept_cnt;
  if (fused_position) {
    routed_cnt.assign(Eu, 0);
    kept_cnt.assign(Eu, 0);
    g.fully_dropped_tokens = 0;
    g.unrouted_slots = 0;
  }
  LaneRng lanes(rng);
  std::vector<double> w(ku);

  for (std::int64_t t0 = 0; t0 < g.tokens; t0 += static_cast<std::int64_t>(block)) {
    const std::size_t nb = static_cast<std::size_t>(std::min<std::int64_t>(block, g.tokens - t0));
    lanes.fill(bits.data(), (nb * Eu + LaneRng::kLanes - 1) / LaneRng::kLanes * LaneRng::kLanes);
    for (std::size_t b = 0; b < nb; ++b) {
      const std::uint32_t* r = bits.data() + b * Eu;
      float* sb = s.data() + b * Eu;
      if (sigmoid) {
        for (std::size_t e = 0; e < Eu; ++e) sb[e] = pf[e] / (pf[e] + exp1_from_bits(r[e]));
      } else {
        for (std::size_t e = 0; e < Eu; ++e) sb[e] = pf[e] / exp1_from_bits(r[e]);
      }
    }
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
          const std::size_t eu = static_cast<std::size_t>(e);
          if (C == kDropless || routed_cnt[eu] < C) {  // position policy: earlier tokens first
            ++kept_cnt[eu];
            any = true;
          }
          ++routed_cnt[eu];
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
    g.kept = std::move(kept_cnt);
    finish_capacity_counts(g, spec);
  }
}

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
  route_group_token_choice(s2, make_token_choice_plan(s2, p), rng, aux, pilot, false);
  std::vector<double> share(p.size(), 0.0);
  for (int e : pilot.expert)
    if (e >= 0) share[static_cast<std::size_t>(e)] += 1.0;
  for (auto& x : share) x /= static_cast<double>(pilot.expert.size());
  return share;
}

/// Tokens of the once-per-step shape pilot (8x the per-layer pilot's 16,384).
constexpr std::int64_t kShapePilotTokens = 131072;

}  // namespace

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
  const auto shape = popularity_shape(spec, shape_kind);
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
  sim::Rng rng = layer_permutation_rng(seed, layer);
  const auto perm = permutation(spec.experts, rng);
  std::vector<double> share(Eu);
  for (std::size_t r = 0; r < Eu; ++r) share[static_cast<std::size_t>(perm[r])] = (*by_rank)[r];
  return share;
}

LayerRouting route_layer(const RoutingSpec& spec, int layer, const RouteRequest& req, const RoutingTrace* trace) {
  if (spec.experts <= 0 || spec.top_k <= 0 || spec.top_k > spec.experts)
    throw std::invalid_argument("route_layer: invalid experts/top_k");
  if (spec.distribution == Distribution::kTrace && trace == nullptr)
    throw std::invalid_argument("route_layer: distribution trace needs a loaded RoutingTrace");
  LayerRouting out;
  out.layer = layer;
  const int E = spec.experts;
  const int k = spec.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E);
  const std::int64_t T = req.tokens_per_group;
  const auto p = expert_popularity(spec, layer, req.step, req.seed);
  std::vector<double> shares;
  if (spec.sampling == SamplingMode::kCounts)
    shares = counts_inclusion_shares(spec, layer, req.step, req.seed, req.share_cache);
  int trace_slot = -1;
  if (trace != nullptr && spec.distribution == Distribution::kTrace) {
    for (std::size_t i = 0; i < trace->layers.size(); ++i)
      if (trace->layers[i] == layer) trace_slot = static_cast<int>(i);
    if (trace_slot < 0) throw std::invalid_argument(fmt::format("route_layer: layer {} not in the trace", layer));
  }
  TokenChoicePlan plan;
  if (spec.sampling == SamplingMode::kToken && !spec.expert_choice) plan = make_token_choice_plan(spec, p);
  out.groups.resize(static_cast<std::size_t>(req.groups));
  std::vector<std::int32_t> scratch_expert;
  std::vector<float> scratch_weight;
  std::vector<std::uint8_t> scratch_keep;
  for (int gi = 0; gi < req.groups; ++gi) {
    GroupRouting& g = out.groups[static_cast<std::size_t>(gi)];
    g.tokens = T;
    g.top_k = k;
    g.capacity = expert_capacity(T, k, E, spec.capacity_factor, spec.min_capacity);
    g.prob_sum.assign(Eu, 0.0);
    const std::string stream = fmt::format("routing/step/{}/layer/{}/group/{}", req.step, layer, gi);
    sim::Rng rng(req.seed, stream);
    if (spec.sampling == SamplingMode::kCounts) {
      // Multinomial(T*k, shares) as a chain of conditional binomials.
      g.routed.assign(Eu, 0);
      std::int64_t left = T * k;
      double mass = 1.0;
      for (std::size_t e = 0; e < Eu && left > 0; ++e) {
        const double q = e + 1 == Eu ? 1.0 : std::min(1.0, shares[e] / mass);
        g.routed[e] = binomial(rng, left, q);
        left -= g.routed[e];
        mass -= shares[e];
      }
      g.kept.assign(Eu, 0);
      g.dropped.assign(Eu, 0);
      g.padded.assign(Eu, 0);
      for (std::size_t e = 0; e < Eu; ++e) {
        g.kept[e] = g.capacity == kDropless ? g.routed[e] : std::min(g.routed[e], g.capacity);
        g.dropped[e] = g.routed[e] - g.kept[e];
        if (g.capacity != kDropless && spec.pad_to_capacity) g.padded[e] = g.capacity - g.kept[e];
        if (g.capacity == kDropless)
          g.padded[e] = (g.kept[e] + spec.block_size - 1) / spec.block_size * spec.block_size - g.kept[e];
        g.prob_sum[e] = p[e] * static_cast<double>(T);  // approximation: E[router prob] ~ popularity
      }
      g.fully_dropped_tokens = -1;
      continue;
    }
    const std::size_t slots = static_cast<std::size_t>(T) * static_cast<std::size_t>(k);
    const bool token_choice = !spec.expert_choice && spec.distribution != Distribution::kBalanced &&
                              spec.distribution != Distribution::kTrace;
    if (token_choice && !req.keep_assignments && spec.drop_policy == DropPolicy::kPosition) {
      // Capacity applied while routing; no per-slot arrays.
      sim::Rng aux(req.seed, stream + "/gshard");
      route_group_token_choice(spec, plan, rng, aux, g, true);
      continue;
    }
    if (!req.keep_assignments) {  // reuse one set of per-slot arrays for every group
      g.expert.swap(scratch_expert);
      g.weight.swap(scratch_weight);
      g.keep.swap(scratch_keep);
    }
    g.expert.assign(slots, -1);
    g.weight.assign(slots, 0.0f);
    if (spec.expert_choice) {
      route_group_expert_choice(spec, p, rng, g);
    } else if (spec.distribution == Distribution::kBalanced) {
      const int R = (req.ep_ranks > 0 && E % req.ep_ranks == 0) ? req.ep_ranks : 1;
      const std::int64_t per_rank = E / R;
      const std::int64_t first = (static_cast<std::int64_t>(req.step) * req.groups + gi) * T * k;
      for (std::size_t i = 0; i < slots; ++i) {
        const std::int64_t a = first + static_cast<std::int64_t>(i);
        g.expert[i] = static_cast<std::int32_t>((a % R) * per_rank + (a / R) % per_rank);
        g.weight[i] = static_cast<float>(1.0 / k);
      }
      for (std::size_t e = 0; e < Eu; ++e) g.prob_sum[e] = static_cast<double>(T) / E;
    } else if (spec.distribution == Distribution::kTrace) {
      const auto& ids = trace->experts[static_cast<std::size_t>(trace_slot)];
      const std::int64_t n = trace->tokens(static_cast<std::size_t>(trace_slot));
      const std::int64_t first = (static_cast<std::int64_t>(req.step) * req.groups + gi) * T;
      for (std::int64_t t = 0; t < T; ++t) {
        const std::size_t src = static_cast<std::size_t>((first + t) % n) * static_cast<std::size_t>(k);
        for (int j = 0; j < k; ++j) {
          const std::size_t i = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
          g.expert[i] = ids[src + static_cast<std::size_t>(j)];
          g.weight[i] = static_cast<float>(1.0 / k);
          g.prob_sum[static_cast<std::size_t>(g.expert[i])] += 1.0 / k;
        }
      }
    } else {
      sim::Rng aux(req.seed, stream + "/gshard");
      route_group_token_choice(spec, plan, rng, aux, g, false);
    }
    enforce_capacity(g, spec);
    if (!req.keep_assignments) {
      g.expert.swap(scratch_expert);
      g.weight.swap(scratch_weight);
      g.keep.swap(scratch_keep);
      g.expert.clear();
      g.weight.clear();
      g.keep.clear();
    }
  }
  out.stats = layer_stats(out.groups, E, k);
  return out;
}

StepRouting route_step(const ModelSpec& model, const RoutingSpec& spec, const RouteRequest& req,
                       const RoutingTrace* trace) {
  StepRouting s;
  s.mode = spec.sampling;
  s.tokens_per_group = req.tokens_per_group;
  s.groups = req.groups;
  InclusionShareCache cache;
  RouteRequest r = req;
  if (r.share_cache == nullptr) r.share_cache = &cache;
  for (int l : model.moe_layer_indices()) {
    s.layers.push_back(route_layer(spec, l, r, trace));
    const auto& st = s.layers.back().stats;
    s.routed += st.routed;
    s.dropped += st.dropped;
    s.kept += st.kept;
    s.padded += st.padded;
    s.max_over_mean = std::max(s.max_over_mean, st.max_over_mean);
  }
  s.drop_fraction = s.routed > 0 ? static_cast<double>(s.dropped) / static_cast<double>(s.routed) : 0.0;
  const std::int64_t rows = s.kept + s.padded;
  s.padded_fraction = rows > 0 ? static_cast<double>(s.padded) / static_cast<double>(rows) : 0.0;
  return s;
}

void format_routing_summary(std::ostream& os, const ModelSpec& model, const RoutingSpec& spec,
                            const StepRouting& step) {
  const ParamCount pc = count_params(model);
  const auto& t = pc.total;
  os << fmt::format("model {}: {} params total, {} active per token\n", model.name,
                    format_params(static_cast<double>(pc.params_total())),
                    format_params(static_cast<double>(pc.params_active())));
  os << fmt::format(
      "  embeddings {} | lm_head {} | attention {} | dense FFN {} | router {} | experts {} | shared experts {} | "
      "norms {}\n",
      format_params(static_cast<double>(t.embeddings)), format_params(static_cast<double>(t.lm_head)),
      format_params(static_cast<double>(t.attention)), format_params(static_cast<double>(t.dense_ffn)),
      format_params(static_cast<double>(t.router)), format_params(static_cast<double>(t.experts)),
      format_params(static_cast<double>(t.shared_experts)), format_params(static_cast<double>(t.norms)));
  const std::int64_t cap =
      step.layers.empty() || step.layers[0].groups.empty() ? kDropless : step.layers[0].groups[0].capacity;
  os << fmt::format(
      "routing: {} experts, top-{}, distribution {}, sampling mode {}, {} groups x {} tokens, capacity {}{}\n",
      spec.experts, spec.top_k, to_string(spec.distribution), to_string(step.mode), step.groups, step.tokens_per_group,
      cap == kDropless ? fmt::format("none (dropless, block {})", spec.block_size) : fmt::format("{}", cap),
      spec.dropless() ? "" : (spec.drop_policy == DropPolicy::kPosition ? " (drop: position)" : " (drop: probs)"));
  os << fmt::format("{:>6} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} {:>6} {:>7} {:>7}\n", "layer", "drop%", "fulldrop%",
                    "padded%", "max/mean", "CV", "Gini", "aux", "H/lnE", "routed");
  for (const auto& l : step.layers) {
    const auto& s = l.stats;
    os << fmt::format(
        "{:>6} {:>9.4f} {:>9} {:>9.4f} {:>8.3f} {:>7.4f} {:>6.4f} {:>6.4f} {:>7.4f} {:>7}\n", l.layer,
        100 * s.drop_fraction,
        s.fully_dropped_tokens < 0 ? std::string("n/a") : fmt::format("{:.4f}", 100 * s.fully_dropped_fraction),
        100 * s.padded_fraction, s.max_over_mean, s.cv, s.gini, s.aux_loss, s.entropy_normalized, s.routed);
  }
  os << fmt::format("total: drop {:.4f}%, padded {:.4f}%, worst max/mean {:.3f}\n", 100 * step.drop_fraction,
                    100 * step.padded_fraction, step.max_over_mean);
}

}  // namespace moesim::models
