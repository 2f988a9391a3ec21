#include "validation_kernels/harness/grid.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
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
    case Family::kDenseGemm:
      return "dense_gemm";
    case Family::kRouting:
      return "routing";
    case Family::kAttentionPrefill:
      return "attention_prefill";
    case Family::kAttentionDecode:
      return "attention_decode";
    case Family::kElementwise:
      return "elementwise";
  }
  return "?";
}

const char* to_string(GemmDtype d) { return d == GemmDtype::kFp8E4m3 ? "fp8_e4m3" : "bf16"; }

const char* to_string(ElementwiseOp op) {
  switch (op) {
    case ElementwiseOp::kRmsNorm:
      return "rmsnorm";
    case ElementwiseOp::kAddRmsNorm:
      return "add_rmsnorm";
    case ElementwiseOp::kSwiglu:
      return "swiglu";
    case ElementwiseOp::kQuantFp8:
      return "quant_fp8_1x128";
  }
  return "?";
}

bool is_gemm(Family f) {
  return f == Family::kGroupedGemm || f == Family::kGroupedGemmMasked || f == Family::kDenseGemm;
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

const std::vector<GemmShape>& dense_shapes() {
  // DeepSeek-V3 (config.json: hidden 7168, q_lora_rank 1536, 128 heads x (128 + 64) query dims,
  // v_head_dim 128, dense intermediate 18432, vocabulary 129280); Mixtral 8x7B (hidden 4096,
  // 32 query / 8 K/V heads of 128); Llama 3 70B (hidden 8192, 64 / 8 heads of 128, intermediate 28672).
  static const std::vector<GemmShape> shapes = {
      {"deepseek_v3", "q_b_proj", 1536, 24576},      {"deepseek_v3", "o_proj", 16384, 7168},
      {"deepseek_v3", "dense_gate_up", 7168, 36864}, {"deepseek_v3", "dense_down", 18432, 7168},
      {"deepseek_v3", "lm_head", 7168, 129280},      {"mixtral_8x7b", "qkv_proj", 4096, 6144},
      {"mixtral_8x7b", "o_proj", 4096, 4096},        {"llama3_70b", "qkv_proj", 8192, 10240},
      {"llama3_70b", "down", 28672, 8192},
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

double attention_flops(const AttentionConfig& a) {
  const double q = static_cast<double>(a.q_len), kv = static_cast<double>(a.kv_len);
  const double pairs = a.causal ? q * (kv - q) + q * (q + 1) / 2 : q * kv;
  return 4.0 * static_cast<double>(a.batch) * a.heads * a.head_dim * pairs;
}

double attention_bytes(const AttentionConfig& a) {
  const double d = a.head_dim;
  const double qo = 2.0 * static_cast<double>(a.q_len) * a.heads * d;
  const double kv = 2.0 * static_cast<double>(a.kv_len) * a.kv_heads * d;
  return static_cast<double>(a.batch) * (qo + kv) * 2.0;
}

double elementwise_bytes(const ElementwiseConfig& e) {
  const double t = static_cast<double>(e.tokens), h = static_cast<double>(e.hidden);
  switch (e.op) {
    case ElementwiseOp::kRmsNorm:
      return t * h * 2 * 2 + h * 2;
    case ElementwiseOp::kAddRmsNorm:  // read x, r; write r, y
      return t * h * 2 * 4 + h * 2;
    case ElementwiseOp::kSwiglu:
      return t * 2 * h * 2 + t * h * 2;
    case ElementwiseOp::kQuantFp8:  // read bf16, write e4m3 + one fp32 scale per 128
      return t * h * 2 + t * h + t * (h / 128) * 4;
  }
  return 0;
}

double config_flops(const Config& c) {
  switch (c.family) {
    case Family::kGroupedGemm:
    case Family::kGroupedGemmMasked:
    case Family::kDenseGemm:
      return 2.0 * static_cast<double>(count_stats(c.gemm.counts).total) *
             static_cast<double>(c.gemm.shape.k * c.gemm.shape.n);
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode:
      return attention_flops(c.attention);
    case Family::kRouting:
    case Family::kElementwise:
      return 0;
  }
  return 0;
}

double config_bytes(const Config& c) {
  switch (c.family) {
    case Family::kGroupedGemm:
    case Family::kGroupedGemmMasked:
    case Family::kDenseGemm: {
      const int in = c.gemm.dtype == GemmDtype::kFp8E4m3 ? 1 : 2;
      return gemm_bytes_min(c.gemm, in, 2);
    }
    case Family::kRouting:
      return static_cast<double>(c.routing.tokens * c.routing.hidden * 2);
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode:
      return attention_bytes(c.attention);
    case Family::kElementwise:
      return elementwise_bytes(c.elementwise);
  }
  return 0;
}

namespace {

uint64_t config_seed(uint64_t base, int64_t id) {
  Rng r(base * 0x100000001B3ull + static_cast<uint64_t>(id));
  return r.next_u64();
}

/// About 15% of a non-grouped-bf16 family held out, by a hash of the configuration's seed.
bool hashed_heldout(uint64_t seed) { return (seed >> 11) % 100 < 15; }

struct Limits {
  double max_weight_bytes;
  int64_t max_rows;
  double max_flops;
};

bool fits(const GemmShape& s, int experts, double m, const Limits& lim, int bytes_in = 2) {
  const double rows = m * experts;
  return static_cast<double>(experts) * static_cast<double>(s.k * s.n) * bytes_in <= lim.max_weight_bytes &&
         rows <= static_cast<double>(lim.max_rows) && 2.0 * rows * static_cast<double>(s.k * s.n) <= lim.max_flops;
}

Config new_config(std::vector<Config>& out, const GridOptions& o, Family f) {
  Config c;
  c.config_id = static_cast<int64_t>(out.size());
  c.family = f;
  c.seed = config_seed(o.seed, c.config_id);
  return c;
}

void add_gemm(std::vector<Config>& out, const GridOptions& o, const GemmShape& s, int experts, double m, Distribution d,
              double param, bool heldout, GemmDtype dtype = GemmDtype::kBf16) {
  Config c = new_config(out, o, Family::kGroupedGemm);
  c.heldout = dtype == GemmDtype::kBf16 ? heldout : hashed_heldout(c.seed);
  c.gemm.shape = s;
  c.gemm.experts_local = experts;
  c.gemm.distribution = d;
  c.gemm.dist_param = param;
  c.gemm.m_target = m;
  c.gemm.dtype = dtype;
  const auto total = static_cast<int64_t>(std::llround(m * experts));
  c.gemm.counts = make_counts(d, param, experts, total, c.seed);
  out.push_back(std::move(c));
}

void add_masked(std::vector<Config>& out, const GridOptions& o, const GemmShape& s, int experts, double m) {
  Config c = new_config(out, o, Family::kGroupedGemmMasked);
  c.heldout = hashed_heldout(c.seed);
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

void add_dense(std::vector<Config>& out, const GridOptions& o, const GemmShape& s, int64_t m) {
  Config c = new_config(out, o, Family::kDenseGemm);
  c.heldout = hashed_heldout(c.seed);
  c.gemm.shape = s;
  c.gemm.experts_local = 1;
  c.gemm.m_target = static_cast<double>(m);
  c.gemm.counts = {m};
  out.push_back(std::move(c));
}

void add_routing(std::vector<Config>& out, const GridOptions& o, RoutingConfig r) {
  Config c = new_config(out, o, Family::kRouting);
  c.heldout = hashed_heldout(c.seed);
  c.routing = r;
  out.push_back(std::move(c));
}

void add_attention(std::vector<Config>& out, const GridOptions& o, Family f, AttentionConfig a) {
  Config c = new_config(out, o, f);
  c.heldout = hashed_heldout(c.seed);
  c.attention = a;
  out.push_back(std::move(c));
}

void add_elementwise(std::vector<Config>& out, const GridOptions& o, ElementwiseConfig e) {
  Config c = new_config(out, o, Family::kElementwise);
  c.heldout = hashed_heldout(c.seed);
  c.elementwise = e;
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

/// Attention head layouts (query heads, K/V heads, head dim) from the models' configurations.
struct AttnModel {
  const char* name;
  int heads, kv_heads, head_dim;
};
std::vector<AttnModel> attention_models() {
  return {{"llama3_70b", 64, 8, 128},
          {"mixtral_8x7b", 32, 8, 128},
          {"qwen3_30b_a3b", 32, 4, 128},
          {"mha_32h", 32, 32, 128}};
}

}  // namespace

namespace {

std::vector<Config> tiny_grid(const GridOptions& o) {
  std::vector<Config> out;
  static const GemmShape ffn{"tiny", "ffn", 256, 256}, proj{"tiny", "proj", 512, 384};
  for (int e : {1, 4})
    for (double m : {1.0, 70.0, 200.0}) {
      add_gemm(out, o, ffn, e, m, Distribution::kEqual, 0, false);
      if (e > 1) add_gemm(out, o, ffn, e, m, Distribution::kMultinomial, 0, m == 70.0);
    }
  for (double m : {1.0, 130.0}) add_gemm(out, o, ffn, 4, m, Distribution::kEqual, 0, false, GemmDtype::kFp8E4m3);
  for (double m : {8.0, 70.0}) add_masked(out, o, ffn, 4, m);
  for (int64_t m : {1, 77, 300}) add_dense(out, o, proj, m);
  using moesim::vk::ref::GateKind;
  for (int64_t t : {256, 1024}) {
    add_routing(out, o, RoutingConfig{"tiny_softmax", t, 16, 4, 256, GateKind::kSoftmax, 1, 1, 1.25, 4});
    add_routing(out, o, RoutingConfig{"tiny_sigmoid", t, 32, 4, 256, GateKind::kSigmoidBias, 4, 2, 1.0, 4});
  }
  for (int64_t s : {96, 200})
    for (bool causal : {true, false})
      add_attention(out, o, Family::kAttentionPrefill, AttentionConfig{"tiny", 1, s, s, 4, 2, 128, causal});
  for (int64_t b : {1, 3})
    for (int64_t kv : {100, 300})
      add_attention(out, o, Family::kAttentionDecode, AttentionConfig{"tiny", b, 1, kv, 4, 2, 128, false});
  for (ElementwiseOp op :
       {ElementwiseOp::kRmsNorm, ElementwiseOp::kAddRmsNorm, ElementwiseOp::kSwiglu, ElementwiseOp::kQuantFp8})
    for (int64_t t : {1, 37}) add_elementwise(out, o, {op, "tiny", t, 256});
  return out;
}

}  // namespace

std::vector<Config> build_grid(const GridOptions& o) {
  if (o.kind == GridKind::kTiny) return tiny_grid(o);
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
  // fp8 e4m3 grouped GEMM with 1x128 / 128x128 block scales (K % 128 == 0 for every shape above).
  {
    const std::vector<D> d_fp8 =
        quick ? std::vector<D>{{Distribution::kEqual, 0}}
              : std::vector<D>{
                    {Distribution::kEqual, 0}, {Distribution::kMultinomial, 0}, {Distribution::kPowerLaw, 1.2}};
    const std::vector<double> m_fp8 = quick ? std::vector<double>{1, 65, 512, 4096} : m_full;
    for (size_t si = 0; si < shapes.size(); ++si) {
      if (quick && si != 0 && si != 4) continue;
      for (int e : quick ? std::vector<int>{8} : e_full)
        for (double m : m_fp8) {
          if (!fits(shapes[si], e, m, lim, 1)) continue;
          for (const D& d : d_fp8) {
            if (e == 1 && d.d != Distribution::kEqual) continue;
            add_gemm(out, o, shapes[si], e, m, d.d, d.p, false, GemmDtype::kFp8E4m3);
          }
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
  // Dense GEMM: decode shapes (M = 1 .. 256) and training shapes.
  {
    const std::vector<int64_t> m_dense_full = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048, 4096, 8192, 16384};
    const std::vector<int64_t> m_dense_quick = {1, 16, 128, 4096};
    const double max_flops = quick ? 2e11 : 2.5e12;
    const auto& ds = dense_shapes();
    for (size_t si = 0; si < ds.size(); ++si) {
      if (quick && si != 0 && si != 6) continue;
      for (int64_t m : quick ? m_dense_quick : m_dense_full)
        if (2.0 * static_cast<double>(m) * static_cast<double>(ds[si].k * ds[si].n) <= max_flops &&
            static_cast<double>(ds[si].k * ds[si].n) * 2 <= o.max_weight_bytes)
          add_dense(out, o, ds[si], m);
    }
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
  // Attention: prefill over sequence lengths (batch filling ~16k tokens), decode over batch x cache length.
  {
    const double max_flops = quick ? 3e11 : 2.5e12;
    for (const AttnModel& am : attention_models()) {
      if (quick && std::strcmp(am.name, "llama3_70b") != 0) continue;
      const std::vector<int64_t> s_list =
          quick ? std::vector<int64_t>{1024, 4096} : std::vector<int64_t>{512, 1024, 2048, 4096, 8192, 16384};
      for (int64_t s : s_list)
        for (bool causal : {true, false}) {
          if (!causal && std::strcmp(am.name, "mha_32h") != 0) continue;  // non-causal: one layout
          AttentionConfig a{am.name, std::max<int64_t>(1, 16384 / s), s, s, am.heads, am.kv_heads, am.head_dim, causal};
          if (attention_flops(a) > max_flops) a.batch = std::max<int64_t>(1, a.batch / 4);
          if (attention_flops(a) > max_flops) continue;
          add_attention(out, o, Family::kAttentionPrefill, a);
        }
      const std::vector<int64_t> b_list = quick ? std::vector<int64_t>{1, 32} : std::vector<int64_t>{1, 4, 16, 64, 256};
      const std::vector<int64_t> kv_list =
          quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{512, 2048, 8192, 32768};
      for (int64_t b : b_list)
        for (int64_t kv : kv_list) {
          AttentionConfig a{am.name, b, 1, kv, am.heads, am.kv_heads, am.head_dim, false};
          if (attention_bytes(a) > 8e9) continue;
          add_attention(out, o, Family::kAttentionDecode, a);
        }
    }
  }
  // Elementwise / norm / activation / fp8 quantisation per token.
  {
    struct EwModel {
      const char* name;
      int64_t hidden, moe_inter;
    };
    const std::vector<EwModel> models = {
        {"deepseek_v3", 7168, 2048}, {"mixtral_8x7b", 4096, 14336}, {"qwen3_30b_a3b", 2048, 768}};
    const std::vector<int64_t> t_list =
        quick ? std::vector<int64_t>{16, 8192} : std::vector<int64_t>{1, 16, 256, 2048, 8192, 32768, 65536};
    for (const EwModel& m : models) {
      if (quick && std::strcmp(m.name, "deepseek_v3") != 0) continue;
      for (ElementwiseOp op :
           {ElementwiseOp::kRmsNorm, ElementwiseOp::kAddRmsNorm, ElementwiseOp::kSwiglu, ElementwiseOp::kQuantFp8})
        for (int64_t t : t_list)
          add_elementwise(out, o, {op, m.name, t, op == ElementwiseOp::kSwiglu ? m.moe_inter : m.hidden});
    }
  }
  // Held-out: random grouped-GEMM configurations, never fitted; log-uniform m and E so both ends are covered.
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
  char buf[320];
  const char* ho = c.heldout ? " heldout" : "";
  switch (c.family) {
    case Family::kRouting: {
      const RoutingConfig& r = c.routing;
      std::snprintf(buf, sizeof buf,
                    "%5lld %-19s %-14s T=%-6lld E=%-3d k=%d hidden=%-5lld gate=%s groups=%d/%d cf=%.2f R=%d%s",
                    static_cast<long long>(c.config_id), to_string(c.family), r.model, static_cast<long long>(r.tokens),
                    r.experts, r.topk, static_cast<long long>(r.hidden),
                    r.gate == moesim::vk::ref::GateKind::kSoftmax ? "softmax" : "sigmoid_bias", r.num_groups,
                    r.topk_group, r.capacity_factor, r.ranks, ho);
      break;
    }
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode: {
      const AttentionConfig& a = c.attention;
      std::snprintf(buf, sizeof buf, "%5lld %-19s %-14s B=%-4lld q=%-6lld kv=%-6lld H=%d/%d d=%d %s%s",
                    static_cast<long long>(c.config_id), to_string(c.family), a.model, static_cast<long long>(a.batch),
                    static_cast<long long>(a.q_len), static_cast<long long>(a.kv_len), a.heads, a.kv_heads, a.head_dim,
                    a.causal ? "causal" : "full", ho);
      break;
    }
    case Family::kElementwise: {
      const ElementwiseConfig& e = c.elementwise;
      std::snprintf(buf, sizeof buf, "%5lld %-19s %-14s %-16s T=%-6lld H=%lld%s", static_cast<long long>(c.config_id),
                    to_string(c.family), e.model, to_string(e.op), static_cast<long long>(e.tokens),
                    static_cast<long long>(e.hidden), ho);
      break;
    }
    default: {
      const GemmConfig& g = c.gemm;
      const CountStats s = count_stats(g.counts);
      std::snprintf(buf, sizeof buf,
                    "%5lld %-19s %-14s %-13s %-8s K=%-5lld N=%-6lld E=%-3d m=%-6g %-12s p=%-4g rows=%-6lld "
                    "active=%-3lld m_max=%-6lld cap=%lld%s",
                    static_cast<long long>(c.config_id), to_string(c.family), g.shape.model, g.shape.layer,
                    to_string(g.dtype), static_cast<long long>(g.shape.k), static_cast<long long>(g.shape.n),
                    g.experts_local, g.m_target, to_string(g.distribution), g.dist_param,
                    static_cast<long long>(s.total), static_cast<long long>(s.n_active),
                    static_cast<long long>(s.m_max), static_cast<long long>(g.capacity), ho);
    }
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

std::vector<std::string> planned_impls(const Config& c) {
  switch (c.family) {
    case Family::kGroupedGemm:
      if (c.gemm.dtype == GemmDtype::kFp8E4m3) return {"vk_wgmma_fp8"};
      return {"vk_mma_sync", "vk_wgmma", "cublas_concat", "cublas_loop", "cublas_batched_padded", "cublas_grouped"};
    case Family::kGroupedGemmMasked:
      return {"vk_mma_sync_masked", "vk_wgmma_masked", "cublas_batched_padded"};
    case Family::kDenseGemm:
      return {"vk_mma_sync", "vk_wgmma", "cublas"};
    case Family::kRouting:
      return {"gate_topk",         "histogram_scan", "capacity_position",  "capacity_probs", "permute",
              "unpermute_combine", "pack_by_rank",   "pack_by_rank_dedup", "cub_radix_sort"};
    case Family::kAttentionPrefill:
      return {"vk_flash_prefill"};
    case Family::kAttentionDecode:
      return {"vk_flash_decode"};
    case Family::kElementwise:
      return {to_string(c.elementwise.op)};
  }
  return {};
}

std::vector<std::string> all_impls() {
  return {"vk_mma_sync",       "vk_wgmma",       "cublas_concat",      "cublas_loop",     "cublas_batched_padded",
          "cublas_grouped",    "vk_wgmma_fp8",   "vk_mma_sync_masked", "vk_wgmma_masked", "cublas",
          "gate_topk",         "histogram_scan", "capacity_position",  "capacity_probs",  "permute",
          "unpermute_combine", "pack_by_rank",   "pack_by_rank_dedup", "cub_radix_sort",  "vk_flash_prefill",
          "vk_flash_decode",   "rmsnorm",        "add_rmsnorm",        "swiglu",          "quant_fp8_1x128"};
}

bool is_gemm_impl(const std::string& impl) {
  return impl.rfind("vk_mma_sync", 0) == 0 || impl.rfind("vk_wgmma", 0) == 0 || impl.rfind("cublas", 0) == 0;
}

// ---- time budget --------------------------------------------------------------------------------

double estimate_seconds(const Config& c, size_t impls, const DeviceModel& m) {
  const double flops_rate = c.family != Family::kRouting && c.gemm.dtype == GemmDtype::kFp8E4m3 && is_gemm(c.family)
                                ? 2 * m.flops_per_s
                                : m.flops_per_s;
  double kernel = m.launch_s + std::max(config_flops(c) / flops_rate, config_bytes(c) / m.bytes_per_s);
  double host = m.per_config_s;
  if (c.family == Family::kRouting) {
    // Nine stages, several launches each; the CPU reference runs over every slot (sampled rows for data).
    kernel = 3 * m.launch_s + 4 * config_bytes(c) / m.bytes_per_s;
    host += static_cast<double>(c.routing.tokens) * (c.routing.experts * 40e-9 + c.routing.topk * 200e-9);
  } else if (c.family == Family::kAttentionPrefill || c.family == Family::kAttentionDecode) {
    kernel *= 2.5;  // mma.sync flash attention reaches well under the GEMM rate
    host += 0.05;   // CPU reference of sampled query rows
  } else if (is_gemm(c.family)) {
    host += 0.02 * static_cast<double>(impls);  // reference rows on the GPU + a CPU spot check
  }
  const double per_iter = kernel + m.flush_s + 4e-6;
  double per_impl = (m.warmup + m.iters) * per_iter + kernel + 2e-3;
  if (kernel < 20e-6) per_impl += m.batch * m.batch_repeats * kernel;
  return host + static_cast<double>(impls) * per_impl;
}

namespace {

double lg(double x) { return std::log2(std::max(x, 1.0)); }

std::vector<double> features(const Config& c) {
  switch (c.family) {
    case Family::kGroupedGemm:
    case Family::kGroupedGemmMasked: {
      const CountStats s = count_stats(c.gemm.counts);
      return {lg(1 + s.m_mean) / 13.0,           lg(c.gemm.experts_local) / 8.0,
              lg(c.gemm.shape.k) / 14.0,         lg(c.gemm.shape.n) / 15.0,
              std::min(s.m_cv, 3.0) / 3.0 * 0.7, static_cast<double>(c.gemm.distribution) / 8.0};
    }
    case Family::kDenseGemm:
      return {lg(c.gemm.m_target) / 14.0, lg(c.gemm.shape.k) / 15.0, lg(c.gemm.shape.n) / 17.0};
    case Family::kRouting:
      return {lg(c.routing.tokens) / 16.0, lg(c.routing.experts) / 8.0, c.routing.topk / 8.0,
              lg(c.routing.hidden) / 13.0};
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode: {
      const AttentionConfig& a = c.attention;
      return {lg(a.batch) / 8.0,
              lg(a.q_len) / 14.0,
              lg(a.kv_len) / 15.0,
              lg(a.heads) / 7.0,
              lg(a.heads / std::max(1, a.kv_heads)) / 4.0,
              a.causal ? 0.3 : 0.0};
    }
    case Family::kElementwise: {
      std::vector<double> f(4, 0.0);
      f[static_cast<size_t>(c.elementwise.op)] = 0.8;
      f.push_back(lg(c.elementwise.tokens) / 16.0);
      f.push_back(lg(c.elementwise.hidden) / 14.0);
      return f;
    }
  }
  return {};
}

double dist2(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

/// Farthest-point order of `idx` (from the point nearest the centroid); ties by lower index.
std::vector<size_t> farthest_point_order(const std::vector<Config>& grid, const std::vector<size_t>& idx) {
  std::vector<size_t> order;
  if (idx.empty()) return order;
  std::vector<std::vector<double>> f;
  for (size_t i : idx) f.push_back(features(grid[i]));
  std::vector<double> centroid(f[0].size(), 0.0);
  for (const auto& v : f)
    for (size_t d = 0; d < v.size(); ++d) centroid[d] += v[d] / static_cast<double>(f.size());
  size_t first = 0;
  for (size_t i = 1; i < f.size(); ++i)
    if (dist2(f[i], centroid) < dist2(f[first], centroid)) first = i;
  std::vector<double> mind(f.size(), std::numeric_limits<double>::infinity());
  std::vector<char> taken(f.size(), 0);
  size_t cur = first;
  for (size_t step = 0; step < f.size(); ++step) {
    taken[cur] = 1;
    order.push_back(idx[cur]);
    size_t best = f.size();
    for (size_t i = 0; i < f.size(); ++i) {
      if (taken[i]) continue;
      mind[i] = std::min(mind[i], dist2(f[i], f[cur]));
      if (best == f.size() || mind[i] > mind[best]) best = i;
    }
    if (best == f.size()) break;
    cur = best;
  }
  return order;
}

/// Budget share of each family (see information_order's documentation).
double family_weight(const Config& c) {
  switch (c.family) {
    case Family::kGroupedGemm:
      return c.gemm.dtype == GemmDtype::kFp8E4m3 ? 0.14 : 0.26;
    case Family::kGroupedGemmMasked:
      return 0.07;
    case Family::kDenseGemm:
      return 0.15;
    case Family::kRouting:
      return 0.08;
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode:
      return 0.09;
    case Family::kElementwise:
      return 0.12;
  }
  return 0.1;
}

int stream_of(const Config& c) {
  const int f = static_cast<int>(c.family);
  return c.family == Family::kGroupedGemm && c.gemm.dtype == GemmDtype::kFp8E4m3 ? kFamilyCount : f;
}

}  // namespace

std::vector<size_t> information_order(const std::vector<Config>& grid, const DeviceModel& m) {
  const int streams = kFamilyCount + 1;
  // Per stream: fitted and held-out farthest-point orders, merged 5:1.
  std::vector<std::vector<size_t>> queue(static_cast<size_t>(streams));
  for (int s = 0; s < streams; ++s) {
    std::vector<size_t> fit, held;
    for (size_t i = 0; i < grid.size(); ++i)
      if (stream_of(grid[i]) == s) (grid[i].heldout ? held : fit).push_back(i);
    const std::vector<size_t> fo = farthest_point_order(grid, fit), ho = farthest_point_order(grid, held);
    size_t a = 0, b = 0;
    while (a < fo.size() || b < ho.size()) {
      for (int r = 0; r < 5 && a < fo.size(); ++r) queue[static_cast<size_t>(s)].push_back(fo[a++]);
      if (b < ho.size()) queue[static_cast<size_t>(s)].push_back(ho[b++]);
    }
  }
  // Stride scheduling on estimated time: the stream whose (spent + next) / weight is least goes next.
  std::vector<size_t> head(static_cast<size_t>(streams), 0);
  std::vector<double> spent(static_cast<size_t>(streams), 0.0);
  std::vector<size_t> order;
  order.reserve(grid.size());
  while (order.size() < grid.size()) {
    int best = -1;
    double best_key = 0;
    for (int s = 0; s < streams; ++s) {
      const auto& q = queue[static_cast<size_t>(s)];
      if (head[static_cast<size_t>(s)] >= q.size()) continue;
      const Config& c = grid[q[head[static_cast<size_t>(s)]]];
      const double key =
          (spent[static_cast<size_t>(s)] + estimate_seconds(c, planned_impls(c).size(), m)) / family_weight(c);
      if (best < 0 || key < best_key) {
        best = s;
        best_key = key;
      }
    }
    if (best < 0) break;
    const size_t i = queue[static_cast<size_t>(best)][head[static_cast<size_t>(best)]++];
    spent[static_cast<size_t>(best)] += estimate_seconds(grid[i], planned_impls(grid[i]).size(), m);
    order.push_back(i);
  }
  return order;
}

std::vector<size_t> random_order(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed ^ 0xC0FFEEull);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[static_cast<size_t>(rng.below(i))]);
  return order;
}

// ---- GEMM self-test -------------------------------------------------------------------------------

std::vector<SelfTestCase> selftest_cases(bool tiny) {
  std::vector<SelfTestCase> v;
  if (tiny) {
    v.push_back({"small_tails", Family::kGroupedGemm, GemmDtype::kBf16, {1, 129, 0, 70}, 128, 128, 0, true});
    v.push_back({"many_tiles", Family::kGroupedGemm, GemmDtype::kBf16, {130, 0, 64, 1, 200}, 256, 128, 0, false});
    v.push_back({"dense_m77", Family::kDenseGemm, GemmDtype::kBf16, {77}, 256, 192, 0, true});
    v.push_back({"masked_clamp", Family::kGroupedGemmMasked, GemmDtype::kBf16, {0, 1, 100, 140}, 128, 128, 128, true});
    v.push_back({"fp8_small", Family::kGroupedGemm, GemmDtype::kFp8E4m3, {1, 129, 0, 70}, 256, 256, 0, true});
    v.push_back(
        {"fp8_many_tiles", Family::kGroupedGemm, GemmDtype::kFp8E4m3, {130, 0, 64, 1, 200}, 256, 256, 0, false});
    return v;
  }
  // Small: every element against a CPU double reference. Expert 2 is empty, expert 0 has a single
  // row, expert 1 fills rows 0..128 of its tiles (both consumer warpgroups and a 1-row tail),
  // expert 3 a tile and a half.
  v.push_back({"small_tails", Family::kGroupedGemm, GemmDtype::kBf16, {1, 129, 0, 200}, 256, 256, 0, true});
  // More tiles than SMs (33 M-tiles x 8 N-tiles = 264 > 132): the persistent loop takes two tiles
  // per CTA and the 4-stage ring wraps (K = 1024: 16 bf16 / 8 fp8 k-tiles); checked against the
  // GPU fp32 reference.
  v.push_back({"many_tiles",
               Family::kGroupedGemm,
               GemmDtype::kBf16,
               {300, 0, 257, 64, 128, 1, 511, 190, 385, 77, 256, 129, 300, 250, 40, 333},
               1024,
               1024,
               0,
               false});
  // Dense (one expert), a decode-sized M and a non-multiple of the tile.
  v.push_back({"dense_m1", Family::kDenseGemm, GemmDtype::kBf16, {1}, 384, 512, 0, true});
  v.push_back({"dense_m77", Family::kDenseGemm, GemmDtype::kBf16, {77}, 256, 192, 0, true});
  // Masked: empty, single row, partly filled, exactly full, and over capacity (clamped to cap).
  v.push_back(
      {"masked_clamp", Family::kGroupedGemmMasked, GemmDtype::kBf16, {0, 1, 100, 192, 300}, 256, 256, 192, true});
  // fp8 with block scales: K = 512 (4 scale blocks), N = 256 (2 weight-scale blocks per expert).
  v.push_back({"fp8_small", Family::kGroupedGemm, GemmDtype::kFp8E4m3, {1, 129, 0, 70}, 256, 512, 0, true});
  v.push_back({"fp8_many_tiles",
               Family::kGroupedGemm,
               GemmDtype::kFp8E4m3,
               {300, 0, 257, 64, 128, 1, 511, 190, 385, 77, 256, 129, 300, 250, 40, 333},
               1024,
               1024,
               0,
               false});
  return v;
}

}  // namespace moesim::vk
