#include "engine/compute_costs.hpp"

#include <algorithm>
#include <stdexcept>

namespace moesim::engine {

using sim::SimTime;

double attention_pairs(const AttentionShape& a) {
  const double q = static_cast<double>(a.q_len), kv = static_cast<double>(a.kv_len);
  if (!a.causal) return q * kv;
  if (a.context_shards > 1) return kv * (kv + 1) / 2 / a.context_shards;
  // Query i (0-based, aligned to the end of the kv sequence) sees kv - q + i + 1 keys.
  const double past = std::max(0.0, kv - q);
  return q * past + q * (q + 1) / 2;
}

double attention_flops(const AttentionShape& a) {
  return 2.0 * static_cast<double>(a.batch) * attention_pairs(a) * static_cast<double>(a.heads) *
         static_cast<double>(a.qk_dim + a.v_dim);
}

double attention_bytes(const AttentionShape& a) {
  const double b = static_cast<double>(a.batch);
  const double qo = b * static_cast<double>(a.q_len) * static_cast<double>(a.heads) *
                    static_cast<double>(a.qk_dim + a.v_dim) * static_cast<double>(a.bytes_per_elem);
  const double kv = b * static_cast<double>(a.kv_len) * static_cast<double>(a.kv_bytes_per_token);
  return qo + kv;
}

GpuRoofline GpuRoofline::h100_sxm() {
  GpuRoofline g;
  g.peak_flops_bf16 = 989.4e12;
  g.hbm_bytes_per_s = 3.35e12;
  g.sm_count = 132;
  g.launch_overhead = SimTime::from_ps(4'000'000);
  return g;
}

RooflineCosts::RooflineCosts(GpuRoofline g) : g_(g) {
  if (!(g_.peak_flops_bf16 > 0) || !(g_.hbm_bytes_per_s > 0) || g_.sm_count <= 0 || !(g_.compute_efficiency > 0) ||
      !(g_.memory_efficiency > 0))
    throw std::invalid_argument("RooflineCosts: peak, bandwidth, SM count and efficiencies must be positive");
}

SimTime RooflineCosts::roof(double padded_flops, double bytes) const {
  const SimTime c =
      padded_flops > 0 ? sim::duration_for(padded_flops, g_.compute_efficiency * g_.peak_flops_bf16) : SimTime::zero();
  const SimTime m = bytes > 0 ? sim::duration_for(bytes, g_.memory_efficiency * g_.hbm_bytes_per_s) : SimTime::zero();
  return sim::max(c, m) + g_.launch_overhead;
}

namespace {
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
}  // namespace

SimTime RooflineCosts::dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const {
  return grouped_gemm({m}, k, n);
}

SimTime RooflineCosts::grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const {
  std::int64_t tiles = 0;
  double bytes = 0;
  for (std::int64_t m : rows) {
    if (m <= 0) continue;
    tiles += ceil_div(m, kTile) * ceil_div(n, kTile);
    bytes += 2.0 * (static_cast<double>(m) * static_cast<double>(k) + static_cast<double>(k) * static_cast<double>(n) +
                    static_cast<double>(m) * static_cast<double>(n));
  }
  if (tiles == 0) return g_.launch_overhead;
  const std::int64_t waves = ceil_div(tiles, g_.sm_count);
  // waves * tile_flops / (eta * peak / SMs) == (waves * SMs * tile_flops) / (eta * peak).
  const double tile_flops = 2.0 * kTile * kTile * static_cast<double>(k);
  return roof(static_cast<double>(waves) * g_.sm_count * tile_flops, bytes);
}

SimTime RooflineCosts::grouped_gemm_wgrad(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const {
  std::int64_t tiles = 0;
  double flops = 0, bytes = 0;
  const std::int64_t tiles_per_expert = ceil_div(k, kTile) * ceil_div(n, kTile);
  for (std::int64_t m : rows) {
    if (m <= 0) continue;
    tiles += tiles_per_expert;
    flops += 2.0 * static_cast<double>(tiles_per_expert) * kTile * kTile * static_cast<double>(m);
    bytes += 2.0 * (static_cast<double>(m) * static_cast<double>(k) + static_cast<double>(k) * static_cast<double>(n) +
                    static_cast<double>(m) * static_cast<double>(n));
  }
  if (tiles == 0) return g_.launch_overhead;
  // Tiles differ in work (each reduces over its expert's rows): pad the average tile to full waves.
  const std::int64_t waves = ceil_div(tiles, g_.sm_count);
  const double padded = flops * static_cast<double>(waves * g_.sm_count) / static_cast<double>(tiles);
  return roof(padded, bytes);
}

SimTime RooflineCosts::attention(const AttentionShape& a) const { return roof(attention_flops(a), attention_bytes(a)); }

SimTime RooflineCosts::router_topk(std::int64_t tokens, std::int64_t hidden, int experts, int top_k) const {
  // Gate GEMM (tile-quantised) plus a pass over fp32 scores writing k indices and weights.
  const SimTime gemm = dense_gemm(tokens, experts, hidden);
  const double pass = static_cast<double>(tokens) * (4.0 * experts + 8.0 * top_k);
  return gemm + elementwise(pass);
}

SimTime RooflineCosts::permute(std::int64_t rows, std::int64_t row_bytes) const {
  return elementwise(2.0 * static_cast<double>(rows) * static_cast<double>(row_bytes));
}

SimTime RooflineCosts::unpermute(std::int64_t rows, std::int64_t row_bytes) const {
  return elementwise(2.0 * static_cast<double>(rows) * static_cast<double>(row_bytes));
}

SimTime RooflineCosts::elementwise(double bytes) const { return roof(0, bytes); }

}  // namespace moesim::engine
