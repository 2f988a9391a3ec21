#include "validation_kernels/harness/grid.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <stdexcept>

namespace moesim::vk {

uint64_t Rng::next_u64() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

uint64_t Rng::below(uint64_t n) { return n == 0 ? 0 : next_u64() % n; }

double Rng::normal() {
  const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

const char* to_string(Distribution d) {
  switch (d) {
    case Distribution::kEqual:
      return "equal";
    case Distribution::kMultinomial:
      return "multinomial";
    case Distribution::kPowerLaw:
      return "power_law";
    case Distribution::kOneHot:
      return "one_hot";
    case Distribution::kPartlyEmpty:
      return "partly_empty";
  }
  return "?";
}

const char* to_string(Family f) {
  switch (f) {
    case Family::kGroupedGemm:
      return "grouped_gemm";
    case Family::kGroupedGemmMasked:
      return "grouped_gemm_masked";
    case Family::kRouting:
      return "routing";
  }
  return "?";
}

namespace {

/// Draws `total` rows over experts with the given (unnormalised) probabilities.
std::vector<int64_t> multinomial(const std::vector<double>& p, int64_t total, Rng& rng) {
  std::vector<double> cdf(p.size());
  std::partial_sum(p.begin(), p.end(), cdf.begin());
  std::vector<int64_t> counts(p.size(), 0);
  for (int64_t i = 0; i < total; ++i) {
    const double u = rng.uniform() * cdf.back();
    const size_t e = static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    ++counts[std::min(e, counts.size() - 1)];
  }
  return counts;
}

void shuffle(std::vector<int64_t>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rng.below(i))]);
}

}  // namespace

std::vector<int64_t> make_counts(Distribution d, double param, int experts, int64_t total_rows, uint64_t seed) {
  if (experts <= 0 || total_rows < 0) throw std::invalid_argument("make_counts: bad experts/total_rows");
  Rng rng(seed);
  const auto E = static_cast<size_t>(experts);
  std::vector<int64_t> counts(E, 0);
  switch (d) {
    case Distribution::kEqual:
      for (size_t e = 0; e < E; ++e)
        counts[e] = total_rows / experts + (static_cast<int64_t>(e) < total_rows % experts);
      break;
    case Distribution::kMultinomial:
      counts = multinomial(std::vector<double>(E, 1.0), total_rows, rng);
      break;
    case Distribution::kPowerLaw: {
      std::vector<double> p(E);
      for (size_t e = 0; e < E; ++e) p[e] = std::pow(static_cast<double>(e + 1), -param);
      counts = multinomial(p, total_rows, rng);
      shuffle(counts, rng);  // the hot expert is not always expert 0
      break;
    }
    case Distribution::kOneHot:
      counts[static_cast<size_t>(rng.below(E))] = total_rows;
      break;
    case Distribution::kPartlyEmpty: {
      const auto empty = std::min(E - 1, static_cast<size_t>(std::floor(param * static_cast<double>(E))));
      const auto active = static_cast<int64_t>(E - empty);
      for (size_t e = 0; e < static_cast<size_t>(active); ++e)
        counts[e] = total_rows / active + (static_cast<int64_t>(e) < total_rows % active);
      shuffle(counts, rng);
      break;
    }
  }
  return counts;
}

const std::vector<GemmShape>& gemm_shapes() {
  static const std::vector<GemmShape> shapes = {
      {"deepseek_v3", "gate_up", 7168, 4096},   {"deepseek_v3", "down", 2048, 7168},
      {"mixtral_8x7b", "gate_up", 4096, 28672}, {"mixtral_8x7b", "down", 14336, 4096},
      {"qwen3_30b_a3b", "gate_up", 2048, 1536}, {"qwen3_30b_a3b", "down", 768, 2048},
  };
  return shapes;
}

CountStats count_stats(const std::vector<int64_t>& counts) {
  CountStats s;
  if (counts.empty()) return s;
  s.m_min = *std::min_element(counts.begin(), counts.end());
  s.m_max = *std::max_element(counts.begin(), counts.end());
  for (int64_t c : counts) {
    s.total += c;
    s.n_active += c > 0;
  }
  s.m_mean = static_cast<double>(s.total) / static_cast<double>(counts.size());
  double var = 0;
  for (int64_t c : counts) var += (static_cast<double>(c) - s.m_mean) * (static_cast<double>(c) - s.m_mean);
  var /= static_cast<double>(counts.size());
  s.m_cv = s.m_mean > 0 ? std::sqrt(var) / s.m_mean : 0.0;
  return s;
}

int64_t gemm_tiles(const std::vector<int64_t>& counts, int64_t n, int bm, int bn) {
  int64_t t = 0;
  for (int64_t m : counts) t += (m + bm - 1) / bm;
  return t * ((n + bn - 1) / bn);
}

double gemm_bytes_min(const GemmConfig& g, int bytes_in, int bytes_out) {
  const CountStats s = count_stats(g.counts);
  const double k = static_cast<double>(g.shape.k), n = static_cast<double>(g.shape.n);
  return static_cast<double>(s.n_active) * k * n * bytes_in + static_cast<double>(s.total) * k * bytes_in +
         static_cast<double>(s.total) * n * bytes_out;
}

namespace {

uint64_t config_seed(uint64_t base, int64_t id) {
  Rng r(base * 0x100000001B3ull + static_cast<uint64_t>(id));
  return r.next_u64();
}

struct Limits {
  double max_weight_bytes;
  int64_t max_rows;
  double max_flops;
};

bool fits(const GemmShape& s, int experts, double m, const Limits& lim) {
  const double rows = m * experts;
  return static_cast<double>(experts) * static_cast<double>(s.k * s.n) * 2.0 <= lim.max_weight_bytes &&
         rows <= static_cast<double>(lim.max_rows) && 2.0 * rows * static_cast<double>(s.k * s.n) <= lim.max_flops;
}

void add_gemm(std::vector<Config>& out, const GridOptions& o, const GemmShape& s, int experts, double m, Distribution d,
              double param, bool heldout) {
  Config c;
  c.config_id = static_cast<int64_t>(out.size());
  c.family = Family::kGroupedGemm;
  c.heldout = heldout;
  c.seed = config_seed(o.seed, c.config_id);
  c.gemm.shape = s;
  c.gemm.experts_local = experts;
  c.gemm.distribution = d;
  c.gemm.dist_param = param;
  c.gemm.m_target = m;
  const auto total = static_cast<int64_t>(std::llround(m * experts));
  c.gemm.counts = make_counts(d, param, experts, total, c.seed);
  out.push_back(std::move(c));
}

void add_masked(std::vector<Config>& out, const GridOptions& o, const GemmShape& s, int experts, double m) {
  Config c;
  c.config_id = static_cast<int64_t>(out.size());
  c.family = Family::kGroupedGemmMasked;
  c.seed = config_seed(o.seed, c.config_id);
  c.gemm.shape = s;
  c.gemm.experts_local = experts;
  c.gemm.distribution = Distribution::kMultinomial;
  c.gemm.m_target = m;
  c.gemm.counts =
      make_counts(Distribution::kMultinomial, 0, experts, static_cast<int64_t>(std::llround(m * experts)), c.seed);
  // Capacity as a decode buffer would size it: the largest count rounded up to 64 rows.
  const int64_t mx = count_stats(c.gemm.counts).m_max;
  c.gemm.capacity = std::max<int64_t>(64, (mx + 63) / 64 * 64);
  out.push_back(std::move(c));
}

void add_routing(std::vector<Config>& out, const GridOptions& o, RoutingConfig r) {
  Config c;
  c.config_id = static_cast<int64_t>(out.size());
  c.family = Family::kRouting;
  c.seed = config_seed(o.seed, c.config_id);
  c.routing = r;
  out.push_back(std::move(c));
}

std::vector<RoutingConfig> routing_models() {
  using moesim::vk::ref::GateKind;
  RoutingConfig dsv3{"deepseek_v3", 0, 256, 8, 7168, GateKind::kSigmoidBias, 8, 4, 1.25, 8};
  RoutingConfig qwen3{"qwen3_30b_a3b", 0, 128, 8, 2048, GateKind::kSoftmax, 1, 1, 1.25, 8};
  RoutingConfig mixtral{"mixtral_8x7b", 0, 8, 2, 4096, GateKind::kSoftmax, 1, 1, 1.25, 8};
  RoutingConfig e64{"generic_e64_k6", 0, 64, 6, 2048, GateKind::kSoftmax, 1, 1, 1.0, 4};
  return {dsv3, qwen3, mixtral, e64};
}

}  // namespace

std::vector<Config> build_grid(const GridOptions& o) {
  std::vector<Config> out;
  const bool quick = o.kind == GridKind::kQuick;
  const Limits lim{o.max_weight_bytes, o.max_rows, quick ? 2e11 : 1.2e12};
  const auto& shapes = gemm_shapes();

  // Contiguous grouped GEMM. Non-multiples of the 128-row tile (65, 129, 257, ...) expose tile quantisation.
  const std::vector<double> m_full = {1,   4,   16,  33,   64,   65,   128,  129,  256, 257,
                                      384, 512, 768, 1024, 1536, 2048, 3000, 4096, 8192};
  const std::vector<double> m_quick = {1, 65, 256, 1024, 4096};
  const std::vector<int> e_full = {1, 4, 16, 64, 256};
  const std::vector<int> e_quick = {8, 64};
  struct D {
    Distribution d;
    double p;
  };
  const std::vector<D> d_full = {{Distribution::kEqual, 0},       {Distribution::kMultinomial, 0},
                                 {Distribution::kPowerLaw, 1.01}, {Distribution::kPowerLaw, 1.2},
                                 {Distribution::kOneHot, 0},      {Distribution::kPartlyEmpty, 0.5}};
  const std::vector<D> d_quick = {{Distribution::kEqual, 0}, {Distribution::kPowerLaw, 1.2}};
  const std::vector<size_t> shape_quick = {0, 4};
  for (size_t si = 0; si < shapes.size(); ++si) {
    if (quick && std::find(shape_quick.begin(), shape_quick.end(), si) == shape_quick.end()) continue;
    for (int e : quick ? e_quick : e_full)
      for (double m : quick ? m_quick : m_full) {
        if (!fits(shapes[si], e, m, lim)) continue;
        for (const D& d : quick ? d_quick : d_full) {
          if (e == 1 && d.d != Distribution::kEqual) continue;          // one expert: every distribution is the same
          if (d.d == Distribution::kOneHot && m * e > 16384) continue;  // one expert with all rows: covered by E=1
          add_gemm(out, o, shapes[si], e, m, d.d, d.p, false);
        }
      }
  }
  // Masked [E, cap, K] decode layout.
  const std::vector<double> mm_full = {1, 8, 32, 96, 256};
  const std::vector<double> mm_quick = {8, 96};
  for (size_t si = 0; si < shapes.size(); ++si) {
    if (quick && si != 0) continue;
    for (int e : quick ? std::vector<int>{32} : std::vector<int>{8, 32, 128})
      for (double m : quick ? mm_quick : mm_full)
        if (fits(shapes[si], e, std::max(64.0, 2 * m), lim)) add_masked(out, o, shapes[si], e, m);
  }
  // Routing pipeline over T for each model's (E, k, hidden, gate).
  const std::vector<int64_t> t_full = {64, 256, 1024, 4096, 16384, 65536};
  const std::vector<int64_t> t_quick = {1024, 8192};
  for (RoutingConfig r : routing_models()) {
    if (quick && std::string(r.model) != "deepseek_v3" && std::string(r.model) != "mixtral_8x7b") continue;
    for (int64_t t : quick ? t_quick : t_full) {
      r.tokens = t;
      add_routing(out, o, r);
    }
  }
  // Held-out: random GEMM configurations, never fitted; log-uniform m and E so both ends are covered.
  Rng rng(o.seed ^ 0x5EEDF00Dull);
  const std::vector<D> d_all = d_full;
  int added = 0, attempts = 0;
  while (added < o.heldout && attempts < 100 * (o.heldout + 1)) {
    ++attempts;
    const GemmShape& s = shapes[static_cast<size_t>(rng.below(shapes.size()))];
    const int e = static_cast<int>(std::floor(std::exp(rng.uniform() * std::log(257.0))));
    const double m = std::floor(std::exp(rng.uniform() * std::log(8193.0)));
    const D d = e == 1 ? D{Distribution::kEqual, 0} : d_all[static_cast<size_t>(rng.below(d_all.size()))];
    if (e < 1 || m < 1 || !fits(s, e, m, lim)) continue;
    add_gemm(out, o, s, e, m, d.d, d.p, true);
    ++added;
  }
  return out;
}

std::string describe(const Config& c) {
  char buf[256];
  if (c.family == Family::kRouting) {
    const RoutingConfig& r = c.routing;
    std::snprintf(buf, sizeof buf,
                  "%5lld %-19s %-14s T=%-6lld E=%-3d k=%d hidden=%-5lld gate=%s groups=%d/%d cf=%.2f R=%d",
                  static_cast<long long>(c.config_id), to_string(c.family), r.model, static_cast<long long>(r.tokens),
                  r.experts, r.topk, static_cast<long long>(r.hidden),
                  r.gate == moesim::vk::ref::GateKind::kSoftmax ? "softmax" : "sigmoid_bias", r.num_groups,
                  r.topk_group, r.capacity_factor, r.ranks);
  } else {
    const GemmConfig& g = c.gemm;
    const CountStats s = count_stats(g.counts);
    std::snprintf(buf, sizeof buf,
                  "%5lld %-19s %-14s %-7s K=%-5lld N=%-5lld E=%-3d m=%-6g %-12s p=%-4g rows=%-6lld active=%-3lld "
                  "m_max=%-6lld cap=%lld%s",
                  static_cast<long long>(c.config_id), to_string(c.family), g.shape.model, g.shape.layer,
                  static_cast<long long>(g.shape.k), static_cast<long long>(g.shape.n), g.experts_local, g.m_target,
                  to_string(g.distribution), g.dist_param, static_cast<long long>(s.total),
                  static_cast<long long>(s.n_active), static_cast<long long>(s.m_max),
                  static_cast<long long>(g.capacity), c.heldout ? " heldout" : "");
  }
  return buf;
}

std::string encode_counts(const std::vector<int64_t>& counts) {
  std::string s;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(counts[i]);
  }
  return s;
}

}  // namespace moesim::vk

namespace moesim::vk {
std::vector<std::string> planned_impls(Family f) {
  switch (f) {
    case Family::kGroupedGemm:
      return {"vk_mma_sync", "vk_wgmma", "cublas_concat", "cublas_loop", "cublas_batched_padded", "cublas_grouped"};
    case Family::kGroupedGemmMasked:
      return {"vk_mma_sync_masked", "cublas_batched_padded"};
    case Family::kRouting:
      return {"gate_topk",         "histogram_scan", "capacity_position",  "capacity_probs", "permute",
              "unpermute_combine", "pack_by_rank",   "pack_by_rank_dedup", "cub_radix_sort"};
  }
  return {};
}
}  // namespace moesim::vk
