#include "engine/kernel_query.hpp"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "engine/gpu_params.hpp"
#include "models/cost/profile.hpp"

namespace moesim::engine {

namespace cost = models::cost;
using config::Node;
using config::Range;

const char* to_string(KernelOp op) {
  switch (op) {
    case KernelOp::kGemm:
      return "gemm";
    case KernelOp::kGroupedGemm:
      return "grouped_gemm";
    case KernelOp::kAttention:
      return "attention";
  }
  return "?";
}

namespace {

constexpr std::int64_t kMaxDim = std::int64_t{1} << 24;  // 16M rows / columns
constexpr std::int64_t kMaxGroups = std::int64_t{1} << 16;

cost::DType read_dtype(const Node& n, std::string_view key, cost::DType dflt) {
  if (!n.has(key)) return dflt;
  const Node c = n.child(key);
  const std::string s = c.as_string();
  if (auto d = cost::parse_dtype(s)) return *d;
  c.error(fmt::format("unknown dtype '{}' (known: fp8, bf16, fp16, tf32, fp32)", s));
  return dflt;
}

}  // namespace

KernelQuery read_kernel_query(const Node& n) {
  KernelQuery q;
  const std::string op = n.req_choice("op", {"gemm", "grouped_gemm", "attention"});
  q.op = op == "grouped_gemm" ? KernelOp::kGroupedGemm : op == "attention" ? KernelOp::kAttention : KernelOp::kGemm;
  q.gpu = n.req_string("gpu");
  q.dtype = read_dtype(n, "dtype", cost::DType::kBf16);
  q.profile = n.opt_string("profile", "");
  const Range dim = Range::between(1, static_cast<double>(kMaxDim));
  if (q.op == KernelOp::kAttention) {
    auto& a = q.attention;
    const std::string phase = n.opt_choice("phase", {"prefill", "decode"}, "prefill");
    a.phase = phase == "decode" ? cost::AttentionShape::Phase::kDecode : cost::AttentionShape::Phase::kPrefill;
    a.batch = n.req_int("batch", dim);
    a.q_len = n.opt_int("q_len", a.phase == cost::AttentionShape::Phase::kDecode ? 1 : 0, dim);
    if (a.phase == cost::AttentionShape::Phase::kPrefill && !n.has("q_len"))
      n.error_at("q_len", "required for prefill");
    a.kv_len = n.opt_int("kv_len", a.q_len, dim);
    a.heads = n.req_int("heads", Range::between(1, 65536));
    a.kv_heads = n.opt_int("kv_heads", a.heads, Range::between(1, 65536));
    a.head_dim = n.req_int("head_dim", Range::between(1, 4096));
    a.causal = n.opt_bool("causal", a.phase == cost::AttentionShape::Phase::kPrefill);
    a.dtype = q.dtype;
    if (a.kv_len < a.q_len) n.error_at("kv_len", fmt::format("{} is below q_len {}", a.kv_len, a.q_len));
    if (a.heads % a.kv_heads != 0)
      n.error_at("kv_heads", fmt::format("{} K/V heads do not divide {} query heads", a.kv_heads, a.heads));
    n.finish();
    return q;
  }
  q.out_dtype = read_dtype(n, "out_dtype", cost::DType::kBf16);
  if (n.has("tile")) {
    const Node t = n.child("tile");
    q.tile = cost::TileConfig::parse(t.as_string());
    if (!q.tile) t.error("expected a tile such as BM128_BN128");
  }
  q.n = n.req_int("n", dim);
  q.k = n.req_int("k", dim);
  if (q.op == KernelOp::kGemm) {
    q.m = n.req_int("m", dim);
  } else {
    q.masked = n.opt_choice("layout", {"contiguous", "masked"}, "contiguous") == "masked";
    if (n.has("rows")) {
      for (const Node& r : n.child("rows").items()) q.rows.push_back(r.as_int(Range::between(0, kMaxDim)));
      if (n.has("groups") || n.has("m")) n.error_at("rows", "give either rows: [...] or groups + m, not both");
      if (q.rows.empty()) n.error_at("rows", "needs at least one expert");
      if (q.rows.size() > static_cast<std::size_t>(kMaxGroups))
        n.error_at("rows", fmt::format("at most {} experts", kMaxGroups));
    } else {
      const std::int64_t groups = n.req_int("groups", Range::between(1, static_cast<double>(kMaxGroups)));
      const std::int64_t m = n.req_int("m", Range::between(0, static_cast<double>(kMaxDim)));
      q.rows.assign(static_cast<std::size_t>(groups), m);
    }
  }
  n.finish();
  return q;
}

KernelPrediction predict_kernel(const KernelQuery& q) {
  const cost::GpuParams gp = gpu_params(find_gpu(q.gpu, "kernel.gpu"));
  const cost::CostModel cm =
      q.profile.empty() ? cost::CostModel(gp) : cost::CostModel(gp, cost::read_profile_file(q.profile));
  KernelPrediction p;
  auto term = [&](std::string name, double v, std::string unit) {
    p.terms.push_back(KernelTerm{std::move(name), v, std::move(unit)});
  };
  if (q.op == KernelOp::kAttention) {
    const cost::CostModel::Resolved r = cm.resolve_attention(q.attention);
    p.seconds = cm.attention(q.attention).to_s();
    p.flops = cost::attention_flops(q.attention);
    p.bytes = cost::attention_bytes(q.attention);
    p.params_source = r.source;
    const double rate = r.params.eta * gp.peak_flops(q.dtype) * (cm.clock_hz() / gp.sm_clock_hz);
    term("eta", r.params.eta, "of peak");
    term("mem_eff", r.params.mem_eff, "of HBM");
    term("compute", p.flops / rate * 1e6, "us");
    term("memory", p.bytes / (r.params.mem_eff * gp.hbm_bytes_per_s) * 1e6, "us");
    term("t0", r.params.t0_s * 1e6, "us");
    term("blend_p", r.params.p, "");
    term("total", p.seconds * 1e6, "us");
    p.device_seconds = p.seconds;
    return p;
  }
  cost::CostModel::GemmBreakdown b;
  if (q.op == KernelOp::kGemm) {
    cost::DenseGemmShape s{q.m, q.n, q.k, q.dtype, q.out_dtype, q.tile};
    b = cm.dense_gemm_breakdown(s);
    p.seconds = cm.dense_gemm(s).to_s();
  } else {
    cost::GroupedGemmShape s;
    s.rows_per_expert = q.rows;
    s.k = q.k;
    s.n = q.n;
    s.dtype = q.dtype;
    s.dtype_out = q.out_dtype;
    s.tile = q.tile;
    s.masked = q.masked;
    b = cm.grouped_gemm_breakdown(s);
    p.seconds = cm.grouped_gemm(s).to_s();
  }
  const cost::GemmFeatures& f = b.features;
  const cost::GemmTerms& t = b.terms;
  const cost::ModelParams& prm = b.resolved.params;
  p.flops = 2.0 * f.rows * static_cast<double>(q.n) * static_cast<double>(q.k);
  p.bytes = f.weight_bytes + f.act_bytes;
  p.params_source = b.resolved.source;
  p.device_seconds = t.device_s;
  term("tile_bm", b.choice.tile.bm, "rows");
  term("tile_bn", b.choice.tile.bn, "cols");
  term("tile_chosen", prm.choose_tile ? 1 : 0, "1: chosen per problem, 0: fixed");
  term("tiles", f.tiles, "");
  term("sms", gp.sm_count, "");
  term("sms_launched", b.choice.sms, "");
  term("waves", t.waves, "");
  term("k_blocks", f.k_blocks, "per tile");
  term("eta", prm.eta, "of peak");
  term("tile_math", t.tile_math_s * 1e6, "us");
  term("tile_kblock_latency", t.tile_latency_s * 1e6, "us");
  term("tile_overhead", t.tile_overhead_s * 1e6, "us");
  term("compute", t.compute_s * 1e6, "us");
  term("bytes", p.bytes, "B");
  term("busy_sms", t.busy_sms, "");
  term("bandwidth", t.bandwidth / 1e9, "GB/s");
  term("memory", t.memory_s * 1e6, "us");
  term("t0", t.t0_s * 1e6, "us");
  term("launch", t.launch_s * 1e6, "us");
  term("blend_p", prm.p, "");
  term("device", t.device_s * 1e6, "us");
  term("total", p.seconds * 1e6, "us");
  return p;
}

}  // namespace moesim::engine
