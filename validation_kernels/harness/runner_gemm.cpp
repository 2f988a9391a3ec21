// GEMM families (grouped contiguous, grouped masked, dense; bf16 and fp8 block-scaled), their
// checks, and the full-output self-test every GEMM implementation passes before anything is timed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "validation_kernels/harness/runner.hpp"
#include "validation_kernels/harness/schema.hpp"

namespace moesim::vk {
namespace {

using gpu::bf16;

constexpr size_t kIntRegion = 8192;  // ints per region of the pools' int array (4 regions)

/// One GEMM problem, from a grid configuration or a self-test case.
struct GemmProblem {
  Family family = Family::kGroupedGemm;
  GemmDtype dtype = GemmDtype::kBf16;
  int E = 1, N = 0, K = 0, cap = 0;
  std::vector<int> counts;  ///< as launched (masked: not clamped; kernels clamp at cap)
  std::vector<int> offset;  ///< contiguous offsets [E+1]
  int m_max = 0;
  int rows(int e) const {
    return family == Family::kGroupedGemmMasked ? std::min(counts[static_cast<size_t>(e)], cap)
                                                : counts[static_cast<size_t>(e)];
  }
};

GemmProblem make_problem(Family f, GemmDtype d, const std::vector<int64_t>& counts, int64_t n, int64_t k, int64_t cap) {
  GemmProblem p;
  p.family = f;
  p.dtype = d;
  p.E = static_cast<int>(counts.size());
  p.N = static_cast<int>(n);
  p.K = static_cast<int>(k);
  p.cap = static_cast<int>(cap);
  p.offset.assign(static_cast<size_t>(p.E) + 1, 0);
  for (int e = 0; e < p.E; ++e) {
    p.counts.push_back(static_cast<int>(counts[static_cast<size_t>(e)]));
    p.offset[static_cast<size_t>(e) + 1] = p.offset[static_cast<size_t>(e)] + p.counts.back();
    p.m_max = std::max(p.m_max, p.counts.back());
  }
  return p;
}

/// Where an implementation keeps expert e's row i (of A and of out), and which weights it uses.
struct Layout {
  enum Kind { kContiguous, kStrided } kind = kContiguous;
  int stride = 0;               ///< kStrided: rows per expert (masked cap, or the padded batch's m_max)
  bool expert0 = false;         ///< cublas_concat: every row with expert 0's weights
  bool writes_padding = false;  ///< strided rows past the count are written (cuBLAS batched)
  int row(const GemmProblem& p, int e, int i) const {
    return kind == kContiguous ? p.offset[static_cast<size_t>(e)] + i : e * stride + i;
  }
  int total_rows(const GemmProblem& p) const { return kind == kContiguous ? p.offset.back() : p.E * stride; }
  std::string key() const { return (kind == kContiguous ? "c" : "s" + std::to_string(stride)) + (expert0 ? "0" : ""); }
};

Layout layout_for(const std::string& impl, const GemmProblem& p) {
  Layout l;
  if (p.family == Family::kGroupedGemmMasked) {
    l.kind = Layout::kStrided;
    l.stride = p.cap;
    l.writes_padding = impl == "cublas_batched_padded";
  } else if (impl == "cublas_batched_padded") {
    l.kind = Layout::kStrided;
    l.stride = p.m_max;
    l.writes_padding = true;
  }
  l.expert0 = impl == "cublas_concat";
  return l;
}

/// Logical rows (expert, index) to check: every row (self-test), or for up to 8 active experts
/// spread over the set rows 0, 63, 64, 127 (both consumer warpgroups of a tile), the middle and
/// the last.
std::vector<std::pair<int, int>> sample_rows(const GemmProblem& p, bool all) {
  std::vector<std::pair<int, int>> out;
  std::vector<int> active;
  for (int e = 0; e < p.E; ++e)
    if (p.rows(e) > 0) active.push_back(e);
  if (all) {
    for (int e : active)
      for (int i = 0; i < p.rows(e); ++i) out.emplace_back(e, i);
    return out;
  }
  const size_t n = std::min<size_t>(8, active.size());
  for (size_t j = 0; j < n; ++j) {
    const int e = active[j * active.size() / n];
    const int m = p.rows(e);
    std::vector<int> rs = {0, 63, 64, 127, m / 2, m - 1};
    std::sort(rs.begin(), rs.end());
    rs.erase(std::unique(rs.begin(), rs.end()), rs.end());
    for (int r : rs)
      if (r >= 0 && r < m) out.emplace_back(e, r);
  }
  return out;
}

}  // namespace

void Runner::alloc_pools() {
  size_t a = 1, w = 1, c = 1, a8 = 1, w8 = 1, a8_rows = 1, k8 = 128, ws = 1, maxn = 128, ref = 1;
  auto need_bf16 = [&](size_t rows, size_t n, size_t k, size_t e) {
    a = std::max(a, rows * k);
    c = std::max(c, (rows + 128) * n);  // + a guard of 128 rows the self-test checks stay poisoned
    w = std::max(w, e * n * k);
    maxn = std::max(maxn, n);
  };
  auto need_fp8 = [&](size_t rows, size_t n, size_t k, size_t e) {
    a8 = std::max(a8, rows * k);
    a8_rows = std::max(a8_rows, rows);
    k8 = std::max(k8, k);
    w8 = std::max(w8, e * n * k);
    ws = std::max(ws, e * (n / 128) * (k / 128));
    c = std::max(c, (rows + 128) * n);
    maxn = std::max(maxn, n);
  };
  for (const Config& cf : grid_) {
    if (!is_gemm(cf.family) || o_.selftest_only) continue;
    const GemmConfig& g = cf.gemm;
    const size_t rows = cf.family == Family::kGroupedGemmMasked
                            ? static_cast<size_t>(g.experts_local) * static_cast<size_t>(g.capacity)
                            : static_cast<size_t>(count_stats(g.counts).total);
    const size_t n = static_cast<size_t>(g.shape.n), k = static_cast<size_t>(g.shape.k);
    if (g.dtype == GemmDtype::kFp8E4m3)
      need_fp8(rows, n, k, static_cast<size_t>(g.experts_local));
    else
      need_bf16(rows, n, k, static_cast<size_t>(g.experts_local));
  }
  if (o_.selftest)
    for (const SelfTestCase& t : selftest_cases(o_.grid.kind == GridKind::kTiny)) {
      int64_t rows = 0, mx = 0;
      for (int64_t m : t.counts) {
        rows += m;
        mx = std::max(mx, m);
      }
      const int64_t e = static_cast<int64_t>(t.counts.size());
      rows = std::max({rows, e * t.capacity, e * mx});  // contiguous, masked, padded
      if (t.dtype == GemmDtype::kFp8E4m3)
        need_fp8(static_cast<size_t>(rows), static_cast<size_t>(t.n), static_cast<size_t>(t.k), static_cast<size_t>(e));
      else
        need_bf16(static_cast<size_t>(rows), static_cast<size_t>(t.n), static_cast<size_t>(t.k),
                  static_cast<size_t>(e));
      ref = std::max(ref, static_cast<size_t>(rows) * static_cast<size_t>(t.n));
    }
  ref = std::max(ref, size_t{128} * maxn);
  Pools& p = pools_;
  p.a_elems = a;
  p.w_elems = w;
  p.c_elems = c;
  p.a = dev_.alloc<bf16>(a);
  p.w = dev_.alloc<bf16>(w);
  p.c = dev_.alloc<bf16>(c);
  p.a8_elems = a8;
  p.w8_elems = w8;
  p.a_scale_elems = (k8 / 128) * a8_rows;
  p.w_scale_elems = ws;
  p.a8 = dev_.alloc<uint8_t>(a8);
  p.w8 = dev_.alloc<uint8_t>(w8);
  p.a_scale = dev_.alloc<float>(p.a_scale_elems);
  p.w_scale = dev_.alloc<float>(ws);
  a_scale_ld_ = static_cast<int64_t>(a8_rows);
  p.ints = dev_.alloc<int>(4 * kIntRegion);
  p.ptrs = dev_.alloc<void*>(3 * gpu::kMaxExperts);
  p.ref_elems = ref;
  p.ref = dev_.alloc<float>(ref);
  // Random normal data (never zeros: power and clocks depend on data); weights scaled like 1/sqrt(K).
  // fp8: e4m3 values of N(0, 100^2) (saturating at 448) with scales that bring both operands back
  // to the bf16 pools' magnitudes.
  const uint64_t seed = o_.grid.seed;
  cudaStream_t s = dev_.stream();
  VK_CUDA(gpu::fill_normal_bf16(p.a, a, seed * 2 + 1, 1.0f, s));
  VK_CUDA(gpu::fill_normal_bf16(p.w, w, seed * 2 + 2, 0.02f, s));
  VK_CUDA(gpu::fill_normal_e4m3(p.a8, a8, seed * 2 + 3, 100.0f, s));
  VK_CUDA(gpu::fill_normal_e4m3(p.w8, w8, seed * 2 + 4, 100.0f, s));
  VK_CUDA(gpu::fill_uniform_f32(p.a_scale, p.a_scale_elems, seed * 2 + 5, 0.005f, 0.015f, s));
  VK_CUDA(gpu::fill_uniform_f32(p.w_scale, ws, seed * 2 + 6, 1e-4f, 3e-4f, s));
  dev_.drain("pool fill");
  std::fprintf(stderr, "[vk] pools: bf16 A %.2f GB, W %.2f GB, C %.2f GB; fp8 A %.2f GB, W %.2f GB\n", a * 2e-9,
               w * 2e-9, c * 2e-9, a8 * 1e-9, w8 * 1e-9);
}

namespace {

/// Everything one GEMM problem needs on the device and in launch form.
class GemmBench {
 public:
  GemmBench(Runner& r, const GemmProblem& p) : r_(r), p_(p) {
    Runner::Pools& pl = r.pools();
    d_offset_ = pl.ints;
    d_counts_ = pl.ints + kIntRegion;
    d_rows_ = pl.ints + 2 * kIntRegion;
    d_exp_ = pl.ints + 3 * kIntRegion;
    if (static_cast<size_t>(p.E) + 1 > kIntRegion) throw CudaError("too many experts for the int pool");
    r.dev().to_device(d_offset_, p.offset, "offsets");
    r.dev().to_device(d_counts_, p.counts, "counts");
  }

  gpu::GroupedGemmArgs args(const Layout& l) const {
    gpu::GroupedGemmArgs a;
    a.a = r_.pools().a;
    a.w = r_.pools().w;
    a.out = r_.pools().c;
    a.experts = p_.E;
    a.n = p_.N;
    a.k = p_.K;
    if (l.kind == Layout::kStrided) {
      a.counts = d_counts_;
      a.cap = l.stride;
    } else {
      a.row_offset = d_offset_;
    }
    a.total_rows = l.total_rows(p_);
    return a;
  }

  gpu::GroupedGemmFp8Args fp8_args(const Layout& l) const {
    gpu::GroupedGemmFp8Args a;
    a.a = r_.pools().a8;
    a.a_scale = r_.pools().a_scale;
    a.a_scale_ld = r_.a_scale_ld();
    a.w = r_.pools().w8;
    a.w_scale = r_.pools().w_scale;
    a.out = r_.pools().c;
    a.experts = p_.E;
    a.n = p_.N;
    a.k = p_.K;
    if (l.kind == Layout::kStrided) {
      a.counts = d_counts_;
      a.cap = l.stride;
    } else {
      a.row_offset = d_offset_;
    }
    a.total_rows = l.total_rows(p_);
    return a;
  }

  /// The launch of one implementation, or an empty function with the reason it cannot run here.
  Launch launch(const std::string& impl, const Layout& l, std::string* why) {
    Cublas& cb = r_.cublas();
    const Runner::Pools& pl = r_.pools();
    const int E = p_.E, N = p_.N, K = p_.K;
    static const float alpha = 1.0f, beta = 0.0f;
    if (static_cast<size_t>(l.total_rows(p_)) * static_cast<size_t>(K) >
            (p_.dtype == GemmDtype::kFp8E4m3 ? pl.a8_elems : pl.a_elems) ||
        (static_cast<size_t>(l.total_rows(p_)) + 128) * static_cast<size_t>(N) > pl.c_elems) {
      *why = "layout exceeds the buffer pool";
      return {};
    }
    if (impl == "vk_mma_sync" || impl == "vk_mma_sync_masked") {
      const gpu::GroupedGemmArgs a = args(l);
      const int blocks = r_.sms() * gpu::grouped_gemm_mma_blocks_per_sm();
      cudaStream_t s = r_.dev().stream();
      return [a, blocks, s] { return gpu::grouped_gemm_mma(a, blocks, s); };
    }
    if (impl == "vk_wgmma" || impl == "vk_wgmma_masked") {
      const gpu::GroupedGemmArgs a = args(l);
      const int blocks = r_.sms();
      cudaStream_t s = r_.dev().stream();
      return [a, blocks, s] { return gpu::grouped_gemm_wgmma(a, blocks, s); };
    }
    if (impl == "vk_wgmma_fp8") {
      const gpu::GroupedGemmFp8Args a = fp8_args(l);
      const int blocks = r_.sms();
      cudaStream_t s = r_.dev().stream();
      return [a, blocks, s] { return gpu::grouped_gemm_wgmma_fp8(a, blocks, s); };
    }
    if (!cb.loaded()) {
      *why = "cuBLAS not found";
      return {};
    }
    auto ok = [](int st) { return st == 0 ? cudaSuccess : cudaErrorUnknown; };
    bf16 *A = pl.a, *W = pl.w, *C = pl.c;
    if (impl == "cublas" || impl == "cublas_concat") {
      const int rows = p_.offset.back();
      return [&cb, ok, N, rows, K, A, W, C] {
        return ok(cb.gemm_ex(cb.handle, Cublas::kOpT, Cublas::kOpN, N, rows, K, &alpha, W, Cublas::kR16BF, K, A,
                             Cublas::kR16BF, K, &beta, C, Cublas::kR16BF, N, Cublas::kCompute32F,
                             Cublas::kGemmDefault));
      };
    }
    if (impl == "cublas_loop") {
      const GemmProblem p = p_;
      const Layout lay = l;
      return [&cb, ok, p, lay, A, W, C] {
        for (int e = 0; e < p.E; ++e) {
          const int m = p.rows(e);
          if (m == 0) continue;
          const size_t r0 = static_cast<size_t>(lay.row(p, e, 0));
          const int st =
              cb.gemm_ex(cb.handle, Cublas::kOpT, Cublas::kOpN, p.N, m, p.K, &alpha,
                         W + static_cast<size_t>(e) * p.N * p.K, Cublas::kR16BF, p.K, A + r0 * p.K, Cublas::kR16BF, p.K,
                         &beta, C + r0 * p.N, Cublas::kR16BF, p.N, Cublas::kCompute32F, Cublas::kGemmDefault);
          if (st != 0) return cudaErrorUnknown;
        }
        return cudaSuccess;
      };
    }
    if (impl == "cublas_batched_padded") {
      const int cap = l.stride;
      if (cap <= 0) {
        *why = "no rows";
        return {};
      }
      return [&cb, ok, N, cap, K, E, A, W, C] {
        return ok(cb.gemm_strided_batched_ex(
            cb.handle, Cublas::kOpT, Cublas::kOpN, N, cap, K, &alpha, W, Cublas::kR16BF, K,
            static_cast<long long>(N) * K, A, Cublas::kR16BF, K, static_cast<long long>(cap) * K, &beta, C,
            Cublas::kR16BF, N, static_cast<long long>(cap) * N, E, Cublas::kCompute32F, Cublas::kGemmDefault));
      };
    }
    if (impl == "cublas_grouped") {
      if (!cb.gemm_grouped_batched_ex) {
        *why = "cublasGemmGroupedBatchedEx absent (cuBLAS < 12.5)";
        return {};
      }
      std::vector<int> active;
      for (int e = 0; e < E; ++e)
        if (p_.rows(e) > 0) active.push_back(e);
      const int G = static_cast<int>(active.size());
      auto st = std::make_shared<GroupedState>();
      st->ta.assign(G, Cublas::kOpT);
      st->tb.assign(G, Cublas::kOpN);
      st->mm.assign(G, N);
      st->kk.assign(G, K);
      st->ldk.assign(G, K);
      st->ldn.assign(G, N);
      st->gs.assign(G, 1);
      st->al.assign(G, 1.0f);
      st->be.assign(G, 0.0f);
      std::vector<void*> ptrs(3 * static_cast<size_t>(G));
      for (int i = 0; i < G; ++i) {
        const int e = active[static_cast<size_t>(i)];
        st->nn.push_back(p_.rows(e));
        const size_t r0 = static_cast<size_t>(l.row(p_, e, 0));
        ptrs[static_cast<size_t>(i)] = W + static_cast<size_t>(e) * N * K;
        ptrs[static_cast<size_t>(G + i)] = A + r0 * K;
        ptrs[static_cast<size_t>(2 * G + i)] = C + r0 * N;
      }
      r_.dev().to_device(pl.ptrs, ptrs, "cuBLAS pointer arrays");  // lands before any launch reads it
      void** P = pl.ptrs;
      return [&cb, ok, st, G, P] {
        return ok(cb.gemm_grouped_batched_ex(cb.handle, st->ta.data(), st->tb.data(), st->mm.data(), st->nn.data(),
                                             st->kk.data(), st->al.data(), P, Cublas::kR16BF, st->ldk.data(), P + G,
                                             Cublas::kR16BF, st->ldk.data(), st->be.data(), P + 2 * G, Cublas::kR16BF,
                                             st->ldn.data(), G, st->gs.data(), Cublas::kCompute32F));
      };
    }
    *why = "unknown implementation";
    return {};
  }

  /// GPU fp32 reference rows for a layout (A rows at the layout's positions, expert or expert 0).
  std::vector<double> reference(const Layout& l, const std::vector<std::pair<int, int>>& rows) {
    std::vector<double> out;
    out.reserve(rows.size() * static_cast<size_t>(p_.N));
    const Runner::Pools& pl = r_.pools();
    const size_t chunk = std::min<size_t>(kIntRegion, pl.ref_elems / static_cast<size_t>(p_.N));
    for (size_t b = 0; b < rows.size(); b += chunk) {
      const size_t n = std::min(chunk, rows.size() - b);
      std::vector<int> ar(n), ex(n);
      for (size_t i = 0; i < n; ++i) {
        ar[i] = l.row(p_, rows[b + i].first, rows[b + i].second);
        ex[i] = l.expert0 ? 0 : rows[b + i].first;
      }
      r_.dev().to_device(d_rows_, ar, "reference rows");
      r_.dev().to_device(d_exp_, ex, "reference experts");
      if (p_.dtype == GemmDtype::kFp8E4m3)
        VK_CUDA(gpu::reference_rows_fp8(fp8_args(l), d_rows_, d_exp_, static_cast<int>(n), pl.ref, r_.dev().stream()));
      else
        VK_CUDA(gpu::reference_rows(pl.a, pl.w, d_rows_, d_exp_, static_cast<int>(n), p_.N, p_.K, pl.ref,
                                    r_.dev().stream()));
      const auto h = r_.dev().to_host(pl.ref, n * static_cast<size_t>(p_.N), "reference");
      for (float v : h) out.push_back(v);
    }
    return out;
  }

  /// Double-precision CPU dot products for `count` sampled elements of a reference, compared with
  /// it: guards the GPU reference kernel itself. Returns the worst |diff| / bound (<= 1 passes).
  double cpu_spot_check(const Layout& l, const std::vector<std::pair<int, int>>& rows, const std::vector<double>& ref,
                        int count, uint64_t seed) {
    Rng rng(seed);
    double worst = 0;
    const size_t K = static_cast<size_t>(p_.K);
    const bool fp8 = p_.dtype == GemmDtype::kFp8E4m3;
    for (int s = 0; s < count && !rows.empty(); ++s) {
      const size_t i = static_cast<size_t>(rng.below(rows.size()));
      const int j = static_cast<int>(rng.below(static_cast<uint64_t>(p_.N)));
      const int a_row = l.row(p_, rows[i].first, rows[i].second);
      const int e = l.expert0 ? 0 : rows[i].first;
      const size_t w_row = static_cast<size_t>(e) * static_cast<size_t>(p_.N) + static_cast<size_t>(j);
      double dot = 0, sq = 0;
      if (!fp8) {
        std::vector<uint16_t> av(K), wv(K);
        r_.dev().copy_to_host(av.data(), r_.pools().a + static_cast<size_t>(a_row) * K, K * 2, "spot A");
        r_.dev().copy_to_host(wv.data(), r_.pools().w + w_row * K, K * 2, "spot W");
        for (size_t t = 0; t < K; ++t) {
          const double x = static_cast<double>(bf16f(av[t])) * bf16f(wv[t]);
          dot += x;
          sq += x * x;
        }
      } else {
        std::vector<uint8_t> av(K), wv(K);
        r_.dev().copy_to_host(av.data(), r_.pools().a8 + static_cast<size_t>(a_row) * K, K, "spot A8");
        r_.dev().copy_to_host(wv.data(), r_.pools().w8 + w_row * K, K, "spot W8");
        const size_t kb = K / 128;
        std::vector<float> sa(kb), sw(kb);
        for (size_t b = 0; b < kb; ++b)
          r_.dev().copy_to_host(&sa[b], r_.pools().a_scale + static_cast<int64_t>(b) * r_.a_scale_ld() + a_row, 4,
                                "spot scale A");
        r_.dev().copy_to_host(
            sw.data(),
            r_.pools().w_scale +
                (static_cast<size_t>(e) * (static_cast<size_t>(p_.N) / 128) + static_cast<size_t>(j) / 128) * kb,
            kb * 4, "spot scale W");
        for (size_t b = 0; b < kb; ++b)
          for (size_t t = b * 128; t < b * 128 + 128; ++t) {
            const double x =
                static_cast<double>(e4m3_to_float(av[t])) * e4m3_to_float(wv[t]) * static_cast<double>(sa[b]) * sw[b];
            dot += x;
            sq += x * x;
          }
      }
      const double got = ref[i * static_cast<size_t>(p_.N) + static_cast<size_t>(j)];
      const double bound = 1e-3 * (std::fabs(dot) + std::sqrt(sq)) + 1e-30;
      worst = std::max(worst, std::isfinite(got) ? std::fabs(got - dot) / bound : INFINITY);
    }
    return worst;
  }

  /// Poisons the output (plus a 128-row guard), runs the launch once, and returns the whole region.
  void run_once(const Launch& launch, const Layout& l) {
    const size_t rows = static_cast<size_t>(l.total_rows(p_)) + 128;
    const size_t elems = rows * static_cast<size_t>(p_.N);
    VK_CUDA(cudaMemsetAsync(r_.pools().c, 0xFF, elems * 2, r_.dev().stream()));
    const cudaError_t e = launch();
    if (e != cudaSuccess) throw CudaError(std::string("launch: ") + cudaGetErrorString(e));
    r_.dev().drain("check launch");
  }
  std::vector<float> fetch_rows(const Layout& l, const std::vector<std::pair<int, int>>& rows) {
    std::vector<int64_t> idx;
    for (const auto& [e, i] : rows) idx.push_back(l.row(p_, e, i));
    std::vector<uint16_t> raw(idx.size() * static_cast<size_t>(p_.N));
    r_.dev().rows_to_host(raw.data(), r_.pools().c, idx, static_cast<size_t>(p_.N) * 2, static_cast<size_t>(p_.N) * 2,
                          "output rows");
    std::vector<float> f(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) f[i] = bf16f(raw[i]);
    return f;
  }
  std::vector<uint16_t> fetch_all(const Layout& l) {
    const size_t elems = (static_cast<size_t>(l.total_rows(p_)) + 128) * static_cast<size_t>(p_.N);
    std::vector<uint16_t> raw(elems);
    r_.dev().copy_to_host(raw.data(), r_.pools().c, elems * 2, "output");
    return raw;
  }
  const GemmProblem& problem() const { return p_; }

 private:
  struct GroupedState {
    std::vector<int> ta, tb, mm, nn, kk, ldk, ldn, gs;
    std::vector<float> al, be;
  };
  Runner& r_;
  GemmProblem p_;
  int *d_offset_, *d_counts_, *d_rows_, *d_exp_;
};

std::vector<std::string> shuffled(std::vector<std::string> v, uint64_t seed) {
  Rng rng(seed ^ 0xABCDull);  // interleave implementations in a random order per configuration
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rng.below(i))]);
  return v;
}

std::string impl_config_of(const std::string& impl, const Layout& l) {
  if (impl.rfind("vk_mma_sync", 0) == 0) return gpu::grouped_gemm_mma_config();
  if (impl == "vk_wgmma_fp8") return gpu::grouped_gemm_wgmma_fp8_config();
  if (impl.rfind("vk_wgmma", 0) == 0) return gpu::grouped_gemm_wgmma_config();
  if (impl == "cublas" || impl == "cublas_concat") return "gemm_ex_dense";
  if (impl == "cublas_loop") return "gemm_ex_per_expert";
  if (impl == "cublas_batched_padded") return "strided_batched_cap" + std::to_string(l.stride);
  if (impl == "cublas_grouped") return "grouped_batched_ex";
  return "";
}

}  // namespace

void Runner::run_gemm(const Config& c) {
  const GemmConfig& g = c.gemm;
  const GemmProblem p = make_problem(c.family, g.dtype, g.counts, g.shape.n, g.shape.k, g.capacity);
  GemmBench bench(*this, p);
  const CsvRow base = base_row(c);
  const auto sample = sample_rows(p, false);
  std::map<std::string, std::vector<double>> refs;  // per layout key: reference of `sample`
  const Tolerance tol;
  for (const std::string& impl : shuffled(planned_impls(c), c.seed)) {
    if (!enabled(impl)) continue;
    const Layout l = layout_for(impl, p);
    std::string why;
    const Launch launch = bench.launch(impl, l, &why);
    CsvRow b = base;
    if (impl == "cublas_concat") b.set("variant", "dense");
    if (impl == "cublas_batched_padded") b.set("variant", "padded");
    if (!launch) {
      write_rows(b, impl, impl_config_of(impl, l), "skipped", NAN, {}, why);
      continue;
    }
    measure(c, b, impl, impl_config_of(impl, l), launch, [&]() -> CheckResult {
      if (sample.empty()) return {true, 0.0, "no rows"};
      bench.run_once(launch, l);
      const std::vector<float> got = bench.fetch_rows(l, sample);
      auto it = refs.find(l.key());
      if (it == refs.end()) {
        std::vector<double> ref = bench.reference(l, sample);
        const double spot = bench.cpu_spot_check(l, sample, ref, 8, c.seed);
        if (!(spot <= 1.0)) return {false, NAN, "the GPU reference disagrees with the CPU spot check"};
        it = refs.emplace(l.key(), std::move(ref)).first;
      }
      const CompareResult cr = compare_outputs(it->second, got, tol);
      char note[160];
      std::snprintf(note, sizeof note, "%lld elements checked, %lld outside tolerance, %lld non-finite",
                    static_cast<long long>(cr.checked), static_cast<long long>(cr.bad),
                    static_cast<long long>(cr.nonfinite));
      return {cr.ok(tol.rel_norm), cr.rel_err, cr.ok(tol.rel_norm) ? std::string() : std::string(note)};
    });
  }
}

void Runner::run_gemm_fp8(const Config& c) { run_gemm(c); }

// ---- self-test ------------------------------------------------------------------------------------

void Runner::selftest() {
  const Tolerance tol;
  int failures = 0, cases = 0;
  for (const SelfTestCase& t : selftest_cases(o_.grid.kind == GridKind::kTiny)) {
    const GemmProblem p = make_problem(t.family, t.dtype, t.counts, t.n, t.k, t.capacity);
    GemmBench bench(*this, p);
    Config pseudo;
    pseudo.family = t.family;
    pseudo.gemm.dtype = t.dtype;
    const auto all = sample_rows(p, true);
    std::map<std::string, std::vector<double>> refs;
    for (const std::string& impl : planned_impls(pseudo)) {
      const Layout l = layout_for(impl, p);
      CsvRow row;
      row.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("impl", impl);
      row.set("impl_config", impl_config_of(impl, l)).set("case", t.name).set("kernel_family", to_string(t.family));
      row.set("dtype_in", to_string(t.dtype)).set("experts", p.E).set("rows", static_cast<int64_t>(all.size()));
      row.set("N", p.N).set("K", p.K).set("capacity", p.cap);
      std::string why;
      if (!enabled(impl, &why)) {
        row.set("status", "skipped").set("notes", why);
        selftest_->write(row);
        continue;
      }
      const Launch launch = bench.launch(impl, l, &why);
      if (!launch) {
        row.set("status", "skipped").set("notes", why);
        selftest_->write(row);
        continue;
      }
      ++cases;
      set_current(nullptr, &row, impl, "selftest");
      const auto w0 = std::chrono::steady_clock::now();
      std::string status = "ok", note;
      try {
        bench.run_once(launch, l);
        const std::vector<uint16_t> out = bench.fetch_all(l);
        auto it = refs.find(l.key());
        if (it == refs.end()) {
          std::vector<double> ref;
          if (t.cpu_reference) {
            // Every element in double on the CPU from the operands as stored.
            const size_t K = static_cast<size_t>(p.K), N = static_cast<size_t>(p.N);
            const bool fp8 = p.dtype == GemmDtype::kFp8E4m3;
            const size_t a_rows = static_cast<size_t>(l.total_rows(p));
            std::vector<double> A(a_rows * K), W(static_cast<size_t>(p.E) * N * K);
            if (!fp8) {
              std::vector<uint16_t> ah(A.size()), wh(W.size());
              dev_.copy_to_host(ah.data(), pools_.a, ah.size() * 2, "self-test A");
              dev_.copy_to_host(wh.data(), pools_.w, wh.size() * 2, "self-test W");
              for (size_t i = 0; i < A.size(); ++i) A[i] = bf16f(ah[i]);
              for (size_t i = 0; i < W.size(); ++i) W[i] = bf16f(wh[i]);
            } else {
              std::vector<uint8_t> ah(A.size()), wh(W.size());
              dev_.copy_to_host(ah.data(), pools_.a8, ah.size(), "self-test A8");
              dev_.copy_to_host(wh.data(), pools_.w8, wh.size(), "self-test W8");
              const size_t kb = K / 128;
              std::vector<float> sa(kb * static_cast<size_t>(a_scale_ld_)),
                  sw(static_cast<size_t>(p.E) * (N / 128) * kb);
              dev_.copy_to_host(sa.data(), pools_.a_scale, sa.size() * 4, "self-test scales A");
              dev_.copy_to_host(sw.data(), pools_.w_scale, sw.size() * 4, "self-test scales W");
              for (size_t r = 0; r < a_rows; ++r)
                for (size_t k = 0; k < K; ++k)
                  A[r * K + k] = static_cast<double>(e4m3_to_float(ah[r * K + k])) *
                                 sa[(k / 128) * static_cast<size_t>(a_scale_ld_) + r];
              for (size_t e = 0; e < static_cast<size_t>(p.E); ++e)
                for (size_t n = 0; n < N; ++n)
                  for (size_t k = 0; k < K; ++k)
                    W[(e * N + n) * K + k] = static_cast<double>(e4m3_to_float(wh[(e * N + n) * K + k])) *
                                             sw[(e * (N / 128) + n / 128) * kb + k / 128];
            }
            for (const auto& [e, i] : all) {
              const size_t ar = static_cast<size_t>(l.row(p, e, i));
              const size_t we = static_cast<size_t>(l.expert0 ? 0 : e);
              for (size_t n = 0; n < N; ++n) {
                double acc = 0;
                for (size_t k = 0; k < K; ++k) acc += A[ar * K + k] * W[(we * N + n) * K + k];
                ref.push_back(acc);
              }
            }
          } else {
            ref = bench.reference(l, all);
            if (!(bench.cpu_spot_check(l, all, ref, 16, 7) <= 1.0))
              throw CudaError("GPU reference failed its CPU spot check");
          }
          it = refs.emplace(l.key(), std::move(ref)).first;
        }
        // Valid rows: every element. Rows no expert owns (masked tails, the guard) must stay poisoned.
        std::vector<float> got;
        got.reserve(it->second.size());
        std::vector<char> owned(static_cast<size_t>(l.total_rows(p)) + 128, 0);
        int64_t unwritten = 0, overwritten = 0;
        for (const auto& [e, i] : all) {
          const size_t r = static_cast<size_t>(l.row(p, e, i));
          owned[r] = 1;
          for (size_t n = 0; n < static_cast<size_t>(p.N); ++n) {
            const uint16_t v = out[r * static_cast<size_t>(p.N) + n];
            unwritten += v == kBf16Poison;
            got.push_back(bf16f(v));
          }
        }
        for (size_t r = 0; r < owned.size(); ++r) {
          if (owned[r]) continue;
          if (r < static_cast<size_t>(l.total_rows(p)) && l.writes_padding)
            continue;  // cuBLAS batched computes padding
          for (size_t n = 0; n < static_cast<size_t>(p.N); ++n)
            overwritten += out[r * static_cast<size_t>(p.N) + n] != kBf16Poison;
        }
        const CompareResult cr = compare_outputs(it->second, got, tol);
        row.set("elements", cr.checked).set("max_abs_err", cr.max_abs_err).set("rel_err", cr.rel_err);
        row.set("bad", cr.bad)
            .set("nonfinite", cr.nonfinite)
            .set("unwritten", unwritten)
            .set("overwritten", overwritten);
        if (!cr.ok(tol.rel_norm) || unwritten || overwritten) {
          status = "failed";
          note = "output differs from the reference or touches rows it does not own";
        }
      } catch (const CudaError& e) {
        status = "error";
        note = e.what();
        cudaGetLastError();
      }
      row.set("status", status).set("notes", note);
      row.set("wall_ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count());
      selftest_->write(row);
      selftest_->flush();
      set_current(nullptr, nullptr, "", "");
      if (status != "ok") {
        ++failures;
        note_selftest_failure(impl);
        disable(impl, "failed self-test case " + t.name, true);
      }
    }
  }
  std::fprintf(stderr, "[vk] self-test: %d implementation-case pairs run, %d failed\n", cases, failures);
}

}  // namespace moesim::vk
