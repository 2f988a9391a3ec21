// Attention families: FlashAttention-style prefill and split-KV decode (GQA). Checked on sampled
// (sequence, head, query) rows against a double-precision CPU softmax(QK^T / sqrt(d)) V.
#include <algorithm>
#include <cmath>
#include <map>

#include "validation_kernels/harness/runner.hpp"

namespace moesim::vk {

void Runner::run_attention(const Config& c) {
  const AttentionConfig& at = c.attention;
  const bool decode = c.family == Family::kAttentionDecode;
  const std::string impl = decode ? "vk_flash_decode" : "vk_flash_prefill";
  const CsvRow base = base_row(c);
  if (!enabled(impl)) return;
  const int64_t B = at.batch, Sq = at.q_len, Skv = at.kv_len, H = at.heads, Hk = at.kv_heads, D = at.head_dim;
  cudaStream_t st = dev_.stream();
  DeviceScope mem(dev_);
  auto* q = mem.alloc<gpu::bf16>(static_cast<size_t>(B * Sq * H * D));
  auto* k = mem.alloc<gpu::bf16>(static_cast<size_t>(B * Skv * Hk * D));
  auto* v = mem.alloc<gpu::bf16>(static_cast<size_t>(B * Skv * Hk * D));
  auto* o = mem.alloc<gpu::bf16>(static_cast<size_t>(B * Sq * H * D));
  VK_CUDA(gpu::fill_normal_bf16(q, static_cast<size_t>(B * Sq * H * D), c.seed, 1.0f, st));
  VK_CUDA(gpu::fill_normal_bf16(k, static_cast<size_t>(B * Skv * Hk * D), c.seed + 1, 1.0f, st));
  VK_CUDA(gpu::fill_normal_bf16(v, static_cast<size_t>(B * Skv * Hk * D), c.seed + 2, 1.0f, st));
  gpu::AttentionArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.o = o;
  a.batch = static_cast<int>(B);
  a.q_len = static_cast<int>(Sq);
  a.kv_len = static_cast<int>(Skv);
  a.heads = static_cast<int>(H);
  a.kv_heads = static_cast<int>(Hk);
  a.head_dim = static_cast<int>(D);
  a.causal = at.causal;
  std::string cfg = decode ? gpu::flash_decode_config() : gpu::flash_prefill_config();
  if (decode) {
    a.splits = gpu::flash_decode_splits(a.batch, a.kv_heads, a.kv_len, sms());
    a.o_partial = mem.alloc<float>(static_cast<size_t>(B * H * a.splits * D));
    a.lse = mem.alloc<float>(static_cast<size_t>(B * H * a.splits));
    cfg += "_splits" + std::to_string(a.splits);
  }
  const Launch launch = [a, decode, st] { return decode ? gpu::flash_decode(a, st) : gpu::flash_prefill(a, st); };

  measure(c, base, impl, cfg, launch, [&]() -> CheckResult {
    VK_CUDA(cudaMemsetAsync(o, 0xFF, static_cast<size_t>(B * Sq * H * D) * 2, st));
    const cudaError_t e = launch();
    if (e != cudaSuccess) throw CudaError(std::string("launch: ") + cudaGetErrorString(e));
    dev_.drain("attention check");
    // Samples: up to 4 (sequence, head) pairs (first and last head: the GQA mapping's ends), up
    // to 8 query positions each (tile edges 63/64, the middle, the last tile).
    Rng rng(c.seed ^ 0xA77);
    std::vector<std::pair<int64_t, int64_t>> bh = {{0, 0}, {B - 1, H - 1}};
    while (bh.size() < 4)
      bh.emplace_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(B))),
                      static_cast<int64_t>(rng.below(static_cast<uint64_t>(H))));
    std::vector<int64_t> qs = {0,       63,      64,     Sq / 2,
                               Sq - 65, Sq - 64, Sq - 1, static_cast<int64_t>(rng.below(static_cast<uint64_t>(Sq)))};
    std::sort(qs.begin(), qs.end());
    qs.erase(std::unique(qs.begin(), qs.end()), qs.end());
    qs.erase(std::remove_if(qs.begin(), qs.end(), [&](int64_t x) { return x < 0 || x >= Sq; }), qs.end());
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const int64_t G = H / Hk, shift = Skv - Sq;
    std::vector<double> want;
    std::vector<float> got;
    std::map<std::pair<int64_t, int64_t>, std::pair<std::vector<uint16_t>, std::vector<uint16_t>>> kv_cache;
    const size_t rowb = static_cast<size_t>(D) * 2;
    for (const auto& [b, h] : bh) {
      const int64_t hk = h / G;
      auto& kv = kv_cache[{b, hk}];
      if (kv.first.empty()) {
        kv.first.resize(static_cast<size_t>(Skv * D));
        kv.second.resize(static_cast<size_t>(Skv * D));
        const size_t off = static_cast<size_t>((b * Skv * Hk + hk) * D);
        dev_.copy2d_to_host(kv.first.data(), k + off, rowb, static_cast<size_t>(Hk) * rowb, static_cast<size_t>(Skv),
                            "K rows");
        dev_.copy2d_to_host(kv.second.data(), v + off, rowb, static_cast<size_t>(Hk) * rowb, static_cast<size_t>(Skv),
                            "V rows");
      }
      for (int64_t qp : qs) {
        std::vector<uint16_t> qrow(static_cast<size_t>(D)), orow(static_cast<size_t>(D));
        const size_t qoff = static_cast<size_t>(((b * Sq + qp) * H + h) * D);
        dev_.copy_to_host(qrow.data(), q + qoff, rowb, "q row");
        dev_.copy_to_host(orow.data(), o + qoff, rowb, "o row");
        const int64_t last = at.causal ? std::min(Skv - 1, qp + shift) : Skv - 1;
        std::vector<double> s(static_cast<size_t>(last + 1));
        double mx = -INFINITY;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(bf16f(qrow[static_cast<size_t>(d)])) *
                   bf16f(kv.first[static_cast<size_t>(j * D + d)]);
          s[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        std::vector<double> out(static_cast<size_t>(D), 0.0);
        for (int64_t j = 0; j <= last; ++j)
          for (int64_t d = 0; d < D; ++d)
            out[static_cast<size_t>(d)] +=
                s[static_cast<size_t>(j)] / sum * bf16f(kv.second[static_cast<size_t>(j * D + d)]);
        for (int64_t d = 0; d < D; ++d) {
          want.push_back(out[static_cast<size_t>(d)]);
          got.push_back(bf16f(orow[static_cast<size_t>(d)]));
        }
      }
    }
    // P goes through bf16 before P.V: a few 1e-3 relative on the output.
    Tolerance tol;
    tol.rel_norm = 2e-2;
    tol.rtol = 1.0 / 64;
    tol.atol_frac = 3e-2;
    const CompareResult cr = compare_outputs(want, got, tol);
    char note[128];
    std::snprintf(note, sizeof note, "%lld elements of %zu query rows, %lld outside tolerance, %lld non-finite",
                  static_cast<long long>(cr.checked), got.size() / static_cast<size_t>(D),
                  static_cast<long long>(cr.bad), static_cast<long long>(cr.nonfinite));
    return {cr.ok(tol.rel_norm), cr.rel_err, cr.ok(tol.rel_norm) ? std::string() : std::string(note)};
  });
}

}  // namespace moesim::vk
