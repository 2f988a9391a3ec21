// The measuring side of vk_harness: probes, correctness checks against the references, timing
// with the CALIBRATION.md methodology, and the three CSV files.
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/dl.hpp"
#include "validation_kernels/harness/options.hpp"
#include "validation_kernels/harness/schema.hpp"
#include "validation_kernels/kernels/kernels.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

namespace moesim::vk {
namespace {

namespace gpu = moesim::vk::gpu;
using gpu::bf16;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define VK_CHECK(x) check((x), #x)

template <typename T>
T* dev_alloc(size_t n) {
  void* p = nullptr;
  VK_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n) VK_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

template <typename T>
void to_device(T* d, const std::vector<T>& h) {
  if (!h.empty()) VK_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

struct Stats {
  double median = NAN, mean = NAN, min = NAN, p10 = NAN, p90 = NAN, std = NAN;
};

Stats summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) { return v[static_cast<size_t>(std::lround(p * static_cast<double>(v.size() - 1)))]; };
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.min = v.front();
  s.p10 = q(0.1);
  s.p90 = q(0.9);
  double var = 0;
  for (double x : v) var += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(var / static_cast<double>(v.size()));
  return s;
}

using Launch = std::function<cudaError_t()>;

struct Timing {
  Stats stats;
  std::string method;
  int batch = 1, warmup = 0, iters = 0;
  double clock_before = NAN, clock_after = NAN, power = NAN, temp = NAN;
};

class Runner {
 public:
  Runner(const HarnessOptions& o, std::vector<Config> grid) : o_(o), grid_(std::move(grid)) {}
  int run();

 private:
  double clock_mhz();
  std::vector<Timing> time_launch(const Launch& launch);
  void probes(CsvRow& run_row);
  void write_row(const Config& c, const std::string& impl, const std::string& impl_config, const std::string& status,
                 double err, const std::vector<Timing>& timings, const std::string& notes, const std::string& variant);
  void run_gemm(const Config& c);
  void run_routing(const Config& c);

  const HarnessOptions& o_;
  std::vector<Config> grid_;
  cudaStream_t stream_ = nullptr;
  cudaDeviceProp prop_{};
  Cublas cublas_;
  Nvml nvml_;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  uint32_t flush_value_ = 1;
  unsigned long long* d_clock_ = nullptr;
  std::unique_ptr<CsvWriter> meas_, counts_;
  int64_t order_index_ = 0;
  // Pools sized for the largest configuration, reused by every one.
  bf16 *a_pool_ = nullptr, *w_pool_ = nullptr, *c_pool_ = nullptr;
  size_t a_elems_ = 0, w_elems_ = 0, c_elems_ = 0;
  int* d_int_ = nullptr;  // per-config small int arrays
  void** d_ptrs_ = nullptr;
  float* d_ref_ = nullptr;
};

double Runner::clock_mhz() {
  if (nvml_.loaded()) return nvml_.sm_clock_mhz();
  // No NVML: clock64 cycles over %globaltimer nanoseconds across a 200 us spin.
  if (gpu::clock_probe(d_clock_, 200000, stream_) != cudaSuccess) return NAN;
  const auto h = to_host(d_clock_, 4);
  return h[2] ? static_cast<double>(h[0]) * 1000.0 / static_cast<double>(h[2]) : NAN;
}

/// Cold-L2 per-iteration events (flush outside each pair), then a batched warm measurement for
/// kernels whose median is under 20 us (launch gaps hidden, L2 warm: recorded as such).
std::vector<Timing> Runner::time_launch(const Launch& launch) {
  std::vector<Timing> out;
  Timing t;
  t.method = "events_cold_l2";
  t.clock_before = clock_mhz();
  t.power = nvml_.power_w();
  t.temp = nvml_.temp_c();
  for (int i = 0; i < o_.warmup_iters; ++i) VK_CHECK(launch());
  t.warmup = o_.warmup_iters;
  t.iters = o_.timed_iters;
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(t.iters));
  for (auto& e : ev) VK_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < t.iters; ++i) {
    VK_CHECK(gpu::touch_buffer(flush_, flush_bytes_, flush_value_++, stream_));
    VK_CHECK(cudaEventRecord(ev[2 * static_cast<size_t>(i)], stream_));
    VK_CHECK(launch());
    VK_CHECK(cudaEventRecord(ev[2 * static_cast<size_t>(i) + 1], stream_));
  }
  VK_CHECK(cudaStreamSynchronize(stream_));
  std::vector<double> us;
  for (int i = 0; i < t.iters; ++i) {
    float ms = 0;
    VK_CHECK(cudaEventElapsedTime(&ms, ev[2 * static_cast<size_t>(i)], ev[2 * static_cast<size_t>(i) + 1]));
    us.push_back(ms * 1000.0);
  }
  t.stats = summarize(us);
  t.clock_after = clock_mhz();
  out.push_back(t);
  if (t.stats.median < 20.0) {
    Timing b;
    b.method = "events_batched_warm_l2";
    b.batch = 100;
    b.warmup = 0;
    b.iters = 10;
    b.clock_before = clock_mhz();
    b.power = t.power;
    b.temp = t.temp;
    std::vector<double> per;
    for (int r = 0; r < b.iters; ++r) {
      VK_CHECK(cudaEventRecord(ev[0], stream_));
      for (int i = 0; i < b.batch; ++i) VK_CHECK(launch());
      VK_CHECK(cudaEventRecord(ev[1], stream_));
      VK_CHECK(cudaEventSynchronize(ev[1]));
      float ms = 0;
      VK_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
      per.push_back(ms * 1000.0 / b.batch);
    }
    b.stats = summarize(per);
    b.clock_after = clock_mhz();
    out.push_back(b);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return out;
}

void Runner::probes(CsvRow& run) {
  // HBM copy: 1 GiB each way; bytes = read + write.
  const size_t bytes = size_t{1} << 30;
  int4* src = dev_alloc<int4>(bytes / 16);
  int4* dst = dev_alloc<int4>(bytes / 16);
  VK_CHECK(cudaMemsetAsync(src, 1, bytes, stream_));
  auto copy = time_launch([&] { return gpu::copy_probe(src, dst, bytes / 16, stream_); });
  run.set("hbm_gbps_probed", 2.0 * static_cast<double>(bytes) / (copy[0].stats.median * 1e3));
  VK_CHECK(cudaFree(src));
  VK_CHECK(cudaFree(dst));
  float* sink = dev_alloc<float>(1);
  double flops = 0;
  const int blocks = prop_.multiProcessorCount * 4;
  auto bf = time_launch([&] { return gpu::mma_peak_bf16(blocks, 4096, sink, &flops, stream_); });
  run.set("bf16_tflops_probed", flops / (bf[0].stats.median * 1e6));
  if (gpu::mma_peak_fp8(blocks, 1, sink, &flops, stream_) == cudaSuccess) {
    auto f8 = time_launch([&] { return gpu::mma_peak_fp8(blocks, 4096, sink, &flops, stream_); });
    run.set("fp8_tflops_probed", flops / (f8[0].stats.median * 1e6));
  }
  cudaGetLastError();
  auto empty = time_launch([&] { return gpu::empty_kernel(stream_); });
  run.set("launch_us_probed", empty.back().stats.median);
  VK_CHECK(cudaFree(sink));
  VK_CHECK(gpu::clock_probe(d_clock_, 10000000, stream_));
  const auto h = to_host(d_clock_, 4);
  run.set("sm_clock_probed_mhz", static_cast<double>(h[0]) * 1000.0 / static_cast<double>(h[2]));
}

void Runner::write_row(const Config& c, const std::string& impl, const std::string& impl_config,
                       const std::string& status, double err, const std::vector<Timing>& timings,
                       const std::string& notes, const std::string& variant) {
  CsvRow base;
  base.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("config_id", c.config_id);
  base.set("heldout", c.heldout ? 1 : 0).set("kernel_family", to_string(c.family)).set("impl", impl);
  base.set("impl_config", impl_config)
      .set("dtype_in", "bf16")
      .set("dtype_out", "bf16")
      .set("dist_seed", std::to_string(c.seed));
  base.set("status", status).set("max_rel_err", err).set("notes", notes).set("variant", variant);
  base.set("l2_mode", "cold");
  if (c.family == Family::kRouting) {
    const RoutingConfig& r = c.routing;
    base.set("model", r.model).set("num_experts_total", r.experts).set("num_experts_local", r.experts);
    base.set("topk", r.topk).set("tokens", r.tokens).set("routed_rows", r.tokens * r.topk).set("K", r.hidden);
    base.set("N", 0).set("capacity", ref::capacity_for(r.tokens, r.topk, r.experts, r.capacity_factor));
    base.set("distribution", "router_normal_logits").set("bytes_min", static_cast<double>(r.tokens * r.hidden * 2));
  } else {
    const GemmConfig& g = c.gemm;
    const CountStats s = count_stats(g.counts);
    base.set("model", std::string(g.shape.model) + "/" + g.shape.layer);
    base.set("num_experts_total", g.experts_local).set("num_experts_local", g.experts_local);
    base.set("tokens", s.total).set("routed_rows", s.total).set("K", g.shape.k).set("N", g.shape.n);
    base.set("capacity", g.capacity).set("distribution", to_string(g.distribution)).set("dist_param", g.dist_param);
    base.set("m_min", s.m_min).set("m_max", s.m_max).set("m_mean", s.m_mean).set("m_cv", s.m_cv);
    base.set("n_active_experts", s.n_active);
    const int64_t tiles =
        gemm_tiles(g.counts, g.shape.n, gpu::grouped_gemm_mma_tile_m(), gpu::grouped_gemm_mma_tile_n());
    base.set("tiles_total", tiles)
        .set("waves", static_cast<double>(tiles) / prop_.multiProcessorCount)
        .set("flops", 2.0 * static_cast<double>(s.total) * static_cast<double>(g.shape.k * g.shape.n))
        .set("bytes_min", gemm_bytes_min(g, 2, 2));
  }
  if (timings.empty()) {
    base.set("order_index", order_index_++);
    meas_->write(base);
    return;
  }
  for (const Timing& t : timings) {
    CsvRow row = base;
    row.set("timing_method", t.method).set("batch", t.batch).set("warmup_iters", t.warmup);
    row.set("timed_iters", t.iters).set("l2_mode", t.method == "events_cold_l2" ? "cold" : "warm");
    row.set("time_us_median", t.stats.median).set("time_us_mean", t.stats.mean).set("time_us_min", t.stats.min);
    row.set("time_us_p10", t.stats.p10).set("time_us_p90", t.stats.p90).set("time_us_std", t.stats.std);
    row.set("sm_clock_mhz_before", t.clock_before).set("sm_clock_mhz_after", t.clock_after);
    const bool drift = std::fabs(t.clock_after - t.clock_before) > 0.03 * t.clock_before;
    row.set("clock_drift_flag", drift ? 1 : 0).set("power_w", t.power).set("temp_c", t.temp);
    row.set("order_index", order_index_++);
    meas_->write(row);
  }
}

/// Relative L2 error over the checked rows; NaN (unwritten, poisoned output) makes it infinite.
double rel_err(const std::vector<float>& ref, const std::vector<float>& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * static_cast<double>(got[i] - ref[i]);
    den += ref[i] * static_cast<double>(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

float bf2f(bf16 v) { return __bfloat162float(v); }

void Runner::run_gemm(const Config& c) {
  const GemmConfig& g = c.gemm;
  const int E = g.experts_local, N = static_cast<int>(g.shape.n), K = static_cast<int>(g.shape.k);
  const bool masked = c.family == Family::kGroupedGemmMasked;
  std::vector<int> offset(static_cast<size_t>(E) + 1, 0), counts(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    counts[static_cast<size_t>(e)] = static_cast<int>(g.counts[static_cast<size_t>(e)]);
    offset[static_cast<size_t>(e) + 1] = offset[static_cast<size_t>(e)] + counts[static_cast<size_t>(e)];
  }
  const int rows = masked ? E * static_cast<int>(g.capacity) : offset.back();
  int* d_offset = d_int_;
  int* d_counts = d_int_ + 1024;
  int* d_rows = d_int_ + 2048;
  int* d_rexp = d_int_ + 3072;
  to_device(d_offset, offset);
  to_device(d_counts, counts);
  // Rows checked: first, middle and last row of up to 8 experts spread over the active ones.
  std::vector<int> active;
  for (int e = 0; e < E; ++e)
    if (counts[static_cast<size_t>(e)] > 0) active.push_back(e);
  std::vector<int> chk_rows, chk_exp;
  for (size_t i = 0; i < std::min<size_t>(8, active.size()); ++i) {
    const int e = active[i * active.size() / std::min<size_t>(8, active.size())];
    const int m = std::min(counts[static_cast<size_t>(e)], masked ? static_cast<int>(g.capacity) : 1 << 30);
    const int begin = masked ? e * static_cast<int>(g.capacity) : offset[static_cast<size_t>(e)];
    for (int r : {0, m / 2, m - 1}) {
      chk_rows.push_back(begin + r);
      chk_exp.push_back(e);
    }
  }
  const int nchk = static_cast<int>(chk_rows.size());
  // Check a launch: poison the output, run once, compare the sampled rows with the fp32 reference.
  auto verify = [&](const Launch& launch, const std::vector<int>& rows_out, const std::vector<int>& exp_ref) {
    VK_CHECK(cudaMemsetAsync(c_pool_, 0xFF, static_cast<size_t>(std::max(rows, 1)) * N * sizeof(bf16), stream_));
    VK_CHECK(launch());
    to_device(d_rows, chk_rows);
    to_device(d_rexp, exp_ref);
    VK_CHECK(gpu::reference_rows(a_pool_, w_pool_, d_rows, d_rexp, nchk, N, K, d_ref_, stream_));
    VK_CHECK(cudaStreamSynchronize(stream_));
    const auto ref = to_host(d_ref_, static_cast<size_t>(nchk) * N);
    std::vector<float> got(ref.size());
    for (int i = 0; i < nchk; ++i) {
      const auto row =
          to_host(c_pool_ + static_cast<size_t>(rows_out[static_cast<size_t>(i)]) * N, static_cast<size_t>(N));
      for (int j = 0; j < N; ++j) got[static_cast<size_t>(i) * N + j] = bf2f(row[static_cast<size_t>(j)]);
    }
    return rel_err(ref, got);
  };
  constexpr double kTol = 1e-2;  // bf16 output rounding is ~4e-3 relative
  auto measure = [&](const std::string& impl, const std::string& cfg, const Launch& launch,
                     const std::vector<int>& rows_out, const std::vector<int>& exp_ref, const std::string& variant) {
    double err = INFINITY;
    try {
      err = nchk ? verify(launch, rows_out, exp_ref) : 0.0;
    } catch (const std::exception& ex) {
      write_row(c, impl, cfg, "error", NAN, {}, ex.what(), variant);
      cudaGetLastError();
      return;
    }
    if (!(err <= kTol)) {
      write_row(c, impl, cfg, "failed_check", err, {}, "not timed: failed the reference check", variant);
      return;
    }
    write_row(c, impl, cfg, "ok", err, time_launch(launch), "", variant);
  };

  gpu::GroupedGemmArgs args;
  args.a = a_pool_;
  args.w = w_pool_;
  args.out = c_pool_;
  args.experts = E;
  args.n = N;
  args.k = K;
  if (masked) {
    args.counts = d_counts;
    args.cap = static_cast<int>(g.capacity);
  } else {
    args.row_offset = d_offset;
  }
  args.total_rows = rows;
  const int grid_blocks = prop_.multiProcessorCount * gpu::grouped_gemm_mma_blocks_per_sm();
  std::vector<std::string> impls = planned_impls(c.family);
  Rng rng(c.seed ^ 0xABCDull);  // interleave implementations in a random order per configuration
  for (size_t i = impls.size(); i > 1; --i) std::swap(impls[i - 1], impls[static_cast<size_t>(rng.below(i))]);
  const float alpha = 1.0f, beta = 0.0f;
  for (const std::string& impl : impls) {
    if (impl == "vk_mma_sync" || impl == "vk_mma_sync_masked") {
      measure(
          impl, gpu::grouped_gemm_mma_config(), [&] { return gpu::grouped_gemm_mma(args, grid_blocks, stream_); },
          chk_rows, chk_exp, masked ? "masked" : "contiguous");
    } else if (impl == "vk_wgmma") {
      // sm_90a code: runs on compute capability 9.0 only (one CTA per SM, persistent).
      if (!gpu::grouped_gemm_wgmma_implemented())
        write_row(c, impl, gpu::grouped_gemm_wgmma_config(), "not_implemented", NAN, {}, "Hopper wgmma path missing",
                  "contiguous");
      else if (!gpu::grouped_gemm_wgmma_runs_on(prop_.major, prop_.minor))
        write_row(c, impl, gpu::grouped_gemm_wgmma_config(), "skipped_arch", NAN, {},
                  "sm_90a kernel; device cc " + std::to_string(prop_.major) + "." + std::to_string(prop_.minor),
                  "contiguous");
      else
        measure(
            impl, gpu::grouped_gemm_wgmma_config(),
            [&] { return gpu::grouped_gemm_wgmma(args, prop_.multiProcessorCount, stream_); }, chk_rows, chk_exp,
            masked ? "masked" : "contiguous");
    } else if (!cublas_.loaded()) {
      write_row(c, impl, "", "skipped", NAN, {}, "cuBLAS not found", "");
    } else if (impl == "cublas_concat") {
      // Upper bound: one dense GEMM over all rows with expert 0's weights.
      const int total = masked ? rows : offset.back();
      measure(
          impl, "gemm_ex_dense",
          [&] {
            return cublas_.gemm_ex(cublas_.handle, Cublas::kOpT, Cublas::kOpN, N, total, K, &alpha, w_pool_,
                                   Cublas::kR16BF, K, a_pool_, Cublas::kR16BF, K, &beta, c_pool_, Cublas::kR16BF, N,
                                   Cublas::kCompute32F, Cublas::kGemmDefault) == 0
                       ? cudaSuccess
                       : cudaErrorUnknown;
          },
          chk_rows, std::vector<int>(chk_rows.size(), 0), "dense");
    } else if (impl == "cublas_loop") {
      measure(
          impl, "gemm_ex_per_expert",
          [&] {
            for (int e = 0; e < E; ++e) {
              const int m = masked ? std::min(counts[static_cast<size_t>(e)], static_cast<int>(g.capacity))
                                   : counts[static_cast<size_t>(e)];
              if (m == 0) continue;
              const size_t r0 =
                  masked ? static_cast<size_t>(e) * g.capacity : static_cast<size_t>(offset[static_cast<size_t>(e)]);
              if (cublas_.gemm_ex(cublas_.handle, Cublas::kOpT, Cublas::kOpN, N, m, K, &alpha,
                                  w_pool_ + static_cast<size_t>(e) * N * K, Cublas::kR16BF, K, a_pool_ + r0 * K,
                                  Cublas::kR16BF, K, &beta, c_pool_ + r0 * N, Cublas::kR16BF, N, Cublas::kCompute32F,
                                  Cublas::kGemmDefault) != 0)
                return cudaErrorUnknown;
            }
            return cudaSuccess;
          },
          chk_rows, chk_exp, masked ? "masked" : "contiguous");
    } else if (impl == "cublas_batched_padded") {
      const int cap = masked ? static_cast<int>(g.capacity) : static_cast<int>(count_stats(g.counts).m_max);
      if (static_cast<size_t>(E) * cap * K > a_elems_ || static_cast<size_t>(E) * cap * N > c_elems_ || cap == 0) {
        write_row(c, impl, "", "skipped", NAN, {}, "padded problem exceeds the buffer pool", "padded");
        continue;
      }
      std::vector<int> prow;
      for (size_t i = 0; i < chk_rows.size(); ++i)
        prow.push_back(chk_exp[i] * cap + (masked ? chk_rows[i] - chk_exp[i] * cap
                                                  : chk_rows[i] - offset[static_cast<size_t>(chk_exp[i])]));
      std::swap(chk_rows, prow);  // the reference reads A at the padded positions
      measure(
          impl, "strided_batched_cap" + std::to_string(cap),
          [&] {
            return cublas_.gemm_strided_batched_ex(cublas_.handle, Cublas::kOpT, Cublas::kOpN, N, cap, K, &alpha,
                                                   w_pool_, Cublas::kR16BF, K, static_cast<long long>(N) * K, a_pool_,
                                                   Cublas::kR16BF, K, static_cast<long long>(cap) * K, &beta, c_pool_,
                                                   Cublas::kR16BF, N, static_cast<long long>(cap) * N, E,
                                                   Cublas::kCompute32F, Cublas::kGemmDefault) == 0
                       ? cudaSuccess
                       : cudaErrorUnknown;
          },
          chk_rows, chk_exp, "padded");
      std::swap(chk_rows, prow);
    } else if (impl == "cublas_grouped") {
      if (!cublas_.gemm_grouped_batched_ex) {
        write_row(c, impl, "", "skipped", NAN, {}, "cublasGemmGroupedBatchedEx absent (cuBLAS < 12.5)", "");
        continue;
      }
      const int G = static_cast<int>(active.size());
      std::vector<int> ta(G, Cublas::kOpT), tb(G, Cublas::kOpN), mm(G, N), nn(G), kk(G, K), ld_k(G, K), ld_n(G, N),
          gs(G, 1);
      std::vector<float> al(G, 1.0f), be(G, 0.0f);
      std::vector<void*> ptrs(3 * static_cast<size_t>(G));
      for (int i = 0; i < G; ++i) {
        const int e = active[static_cast<size_t>(i)];
        nn[static_cast<size_t>(i)] = counts[static_cast<size_t>(e)];
        ptrs[static_cast<size_t>(i)] = w_pool_ + static_cast<size_t>(e) * N * K;
        ptrs[static_cast<size_t>(G + i)] = a_pool_ + static_cast<size_t>(offset[static_cast<size_t>(e)]) * K;
        ptrs[static_cast<size_t>(2 * G + i)] = c_pool_ + static_cast<size_t>(offset[static_cast<size_t>(e)]) * N;
      }
      if (masked) {
        write_row(c, impl, "", "skipped", NAN, {}, "grouped baseline measured on the contiguous layout only", "");
        continue;
      }
      to_device(d_ptrs_, ptrs);
      measure(
          impl, "grouped_batched_ex",
          [&] {
            return cublas_.gemm_grouped_batched_ex(cublas_.handle, ta.data(), tb.data(), mm.data(), nn.data(),
                                                   kk.data(), al.data(), d_ptrs_, Cublas::kR16BF, ld_k.data(),
                                                   d_ptrs_ + G, Cublas::kR16BF, ld_k.data(), be.data(), d_ptrs_ + 2 * G,
                                                   Cublas::kR16BF, ld_n.data(), G, gs.data(), Cublas::kCompute32F) == 0
                       ? cudaSuccess
                       : cudaErrorUnknown;
          },
          chk_rows, chk_exp, "contiguous");
    }
  }
}

void Runner::run_routing(const Config& c) {
  const RoutingConfig& r = c.routing;
  const int T = static_cast<int>(r.tokens), E = r.experts, k = r.topk, H = static_cast<int>(r.hidden), S = T * k;
  const int R = r.ranks;
  const int64_t C = ref::capacity_for(r.tokens, k, E, r.capacity_factor);
  float* d_logits = dev_alloc<float>(static_cast<size_t>(T) * E);
  float* d_bias = dev_alloc<float>(static_cast<size_t>(E));
  bf16* d_x = dev_alloc<bf16>(static_cast<size_t>(T) * H);
  bf16* d_perm = dev_alloc<bf16>(static_cast<size_t>(S) * H);
  bf16* d_comb = dev_alloc<bf16>(static_cast<size_t>(T) * H);
  bf16* d_pack = dev_alloc<bf16>(static_cast<size_t>(S) * H);
  int *d_exp = dev_alloc<int>(S), *d_pos = dev_alloc<int>(S), *d_pos2 = dev_alloc<int>(S), *d_rows = dev_alloc<int>(S);
  int *d_cnt = dev_alloc<int>(E), *d_off = dev_alloc<int>(E + 1), *d_kept = dev_alloc<int>(E),
      *d_koff = dev_alloc<int>(E + 1), *d_kept2 = dev_alloc<int>(E);
  int *d_roff = dev_alloc<int>(R + 1), *d_key = dev_alloc<int>(static_cast<size_t>(T) * R),
      *d_rrank = dev_alloc<int>(static_cast<size_t>(T) * R), *d_rtot = dev_alloc<int>(R),
      *d_droff = dev_alloc<int>(R + 1), *d_tok = dev_alloc<int>(static_cast<size_t>(S));
  int *d_sexp = dev_alloc<int>(S), *d_sslot = dev_alloc<int>(S);
  float *d_w = dev_alloc<float>(S), *d_s = dev_alloc<float>(S);
  int* d_rank_scratch = dev_alloc<int>(gpu::stable_rank_scratch_ints(std::max(S, T * R), std::max(E, R)));
  const size_t probs_bytes = gpu::capacity_probs_scratch_bytes(S, E);
  const size_t sort_bytes = gpu::radix_sort_scratch_bytes(S);
  void* d_scratch = dev_alloc<unsigned char>(std::max(probs_bytes, sort_bytes));
  VK_CHECK(gpu::fill_normal_f32(d_logits, static_cast<size_t>(T) * E, c.seed, 1.0f, stream_));
  VK_CHECK(gpu::fill_normal_f32(d_bias, static_cast<size_t>(E), c.seed + 1, 0.1f, stream_));
  VK_CHECK(gpu::fill_normal_bf16(d_x, static_cast<size_t>(T) * H, c.seed + 2, 1.0f, stream_));
  const bool sig = r.gate == ref::GateKind::kSigmoidBias;
  gpu::GateArgs ga;
  ga.logits = d_logits;
  ga.bias = sig ? d_bias : nullptr;
  ga.tokens = T;
  ga.experts = E;
  ga.topk = k;
  ga.sigmoid = sig;
  ga.num_groups = r.num_groups;
  ga.topk_group = r.topk_group;
  ga.renormalize = true;
  ga.expert = d_exp;
  ga.weight = d_w;
  ga.score = d_s;

  // Launch closures, one per measured kernel (or short kernel chain).
  std::vector<std::pair<std::string, Launch>> stages = {
      {"gate_topk", [&] { return gpu::gate_topk(ga, stream_); }},
      {"histogram_scan",
       [&] {
         cudaError_t e = gpu::histogram(d_exp, S, E, d_cnt, stream_);
         return e == cudaSuccess ? gpu::exclusive_scan(d_cnt, E, 128, d_off, stream_) : e;
       }},
      {"capacity_position",
       [&] {
         return gpu::stable_rank_by_key(d_exp, S, E, static_cast<int>(C), d_pos, d_kept, d_rank_scratch, stream_);
       }},
      {"capacity_probs",
       [&] {
         return gpu::capacity_probs(d_exp, d_w, S, E, static_cast<int>(C), d_pos2, d_kept2, d_scratch, probs_bytes,
                                    stream_);
       }},
      {"permute",
       [&] {
         cudaError_t e = gpu::exclusive_scan(d_kept, E, 1, d_koff, stream_);
         if (e == cudaSuccess) e = gpu::slot_rows(d_exp, d_pos, d_koff, S, d_rows, stream_);
         return e == cudaSuccess ? gpu::permute(d_x, d_rows, S, k, H, d_perm, stream_) : e;
       }},
      {"unpermute_combine", [&] { return gpu::unpermute_combine(d_perm, d_rows, d_w, T, k, H, d_comb, stream_); }},
      {"pack_by_rank",
       [&] {
         cudaError_t e = gpu::rank_offsets_from_experts(d_koff, E, R, d_roff, stream_);
         return e == cudaSuccess ? gpu::permute(d_x, d_rows, S, k, H, d_pack, stream_) : e;
       }},
      {"pack_by_rank_dedup",
       [&] {
         cudaError_t e = gpu::dedup_rank_keys(d_exp, d_pos, T, k, E, R, d_key, stream_);
         if (e == cudaSuccess)
           e = gpu::stable_rank_by_key(d_key, T * R, R, -1, d_rrank, d_rtot, d_rank_scratch, stream_);
         if (e == cudaSuccess) e = gpu::exclusive_scan(d_rtot, R, 1, d_droff, stream_);
         return e == cudaSuccess ? gpu::pack_dedup(d_x, d_key, d_rrank, d_droff, T, R, H, d_pack, d_tok, stream_) : e;
       }},
      {"cub_radix_sort",
       [&] { return gpu::radix_sort_by_expert(d_exp, S, E, d_sexp, d_sslot, d_scratch, sort_bytes, stream_); }},
  };
  // One pass in pipeline order, then every stage is checked against the CPU reference built from
  // the GPU's own routing decision (so a near-tie in top-k cannot cascade into later stages).
  std::vector<std::string> status(stages.size(), "ok");
  std::vector<double> err(stages.size(), 0.0);
  for (size_t i = 0; i < stages.size(); ++i)
    if (stages[i].second() != cudaSuccess) status[i] = "error";
  VK_CHECK(cudaStreamSynchronize(stream_));
  const auto logits = to_host(d_logits, static_cast<size_t>(T) * E);
  const auto bias = to_host(d_bias, static_cast<size_t>(E));
  ref::GateConfig gc;
  gc.kind = r.gate;
  gc.num_experts = E;
  gc.topk = k;
  gc.num_groups = r.num_groups;
  gc.topk_group = r.topk_group;
  gc.renormalize = true;
  const ref::Routing want = ref::gate_topk(logits.data(), T, gc, sig ? bias.data() : nullptr);
  ref::Routing got;
  got.tokens = T;
  got.topk = k;
  got.expert = to_host(d_exp, S);
  got.weight = to_host(d_w, S);
  got.score = to_host(d_s, S);
  for (int s = 0; s < S; ++s) {  // an expert mismatch is an error unless the scores tie within 1e-5
    const size_t u = static_cast<size_t>(s);
    if (got.expert[u] != want.expert[u] && std::fabs(got.score[u] - want.score[u]) > 1e-5f) status[0] = "failed_check";
    err[0] = std::max(err[0], static_cast<double>(std::fabs(got.weight[u] - want.weight[u])));
  }
  if (err[0] > 1e-4) status[0] = "failed_check";
  auto mismatch = [&](size_t i, bool bad) {
    if (bad && status[i] == "ok") status[i] = "failed_check";
    if (bad) err[i] = INFINITY;
  };
  const auto hist = ref::histogram(got.expert, E);
  const auto scan = ref::exclusive_scan(hist, 128);
  {
    const auto cnt = to_host(d_cnt, E);
    const auto off = to_host(d_off, E + 1);
    bool bad = false;
    for (int e = 0; e <= E; ++e) bad = bad || off[static_cast<size_t>(e)] != scan.offset[static_cast<size_t>(e)];
    for (int e = 0; e < E; ++e) bad = bad || cnt[static_cast<size_t>(e)] != hist[static_cast<size_t>(e)];
    mismatch(1, bad);
  }
  const ref::Capacity cpos = ref::enforce_capacity(got, E, C, ref::DropPolicy::kPosition);
  const ref::Capacity cprob = ref::enforce_capacity(got, E, C, ref::DropPolicy::kProbs);
  {
    const auto pos = to_host(d_pos, S), pos2 = to_host(d_pos2, S);
    const auto kept = to_host(d_kept, E), kept2 = to_host(d_kept2, E);
    bool b1 = false, b2 = false;
    for (int s = 0; s < S; ++s) {
      b1 = b1 || pos[static_cast<size_t>(s)] != cpos.position_in_expert[static_cast<size_t>(s)];
      b2 = b2 || pos2[static_cast<size_t>(s)] != cprob.position_in_expert[static_cast<size_t>(s)];
    }
    for (int e = 0; e < E; ++e) {
      b1 = b1 || kept[static_cast<size_t>(e)] != cpos.kept_count[static_cast<size_t>(e)];
      b2 = b2 || kept2[static_cast<size_t>(e)] != cprob.kept_count[static_cast<size_t>(e)];
    }
    mismatch(2, b1);
    mismatch(3, b2);
  }
  const ref::PermuteLayout layout = ref::contiguous_layout(got, cpos, E, 1);
  std::vector<float> xf(static_cast<size_t>(T) * H);
  {
    const auto xb = to_host(d_x, xf.size());
    for (size_t i = 0; i < xf.size(); ++i) xf[i] = bf2f(xb[i]);
    const auto pref = ref::permute(xf.data(), T, H, layout);
    const auto pb = to_host(d_perm, pref.size());
    bool bad = false;
    for (size_t i = 0; i < pref.size(); ++i) bad = bad || bf2f(pb[i]) != pref[i];
    mismatch(4, bad);
    const auto cref = ref::unpermute_combine(pref.data(), H, got, layout);
    const auto cb = to_host(d_comb, cref.size());
    std::vector<float> cg(cref.size());
    for (size_t i = 0; i < cg.size(); ++i) cg[i] = bf2f(cb[i]);
    err[5] = rel_err(cref, cg);
    if (!(err[5] <= 1e-2)) mismatch(5, true);
    const auto pk = ref::pack_by_rank(xf.data(), T, H, got, cpos, E, R, false);
    const auto roff = to_host(d_roff, static_cast<size_t>(R) + 1);
    bool bad6 = false;
    for (int q = 0; q <= R; ++q) bad6 = bad6 || roff[static_cast<size_t>(q)] != pk.rank_offset[static_cast<size_t>(q)];
    mismatch(6, bad6);
    const auto pd = ref::pack_by_rank(xf.data(), T, H, got, cpos, E, R, true);
    const auto droff = to_host(d_droff, static_cast<size_t>(R) + 1);
    const auto tok = to_host(d_tok, pd.token_of_row.size());
    bool bad7 = false;
    for (int q = 0; q <= R; ++q) bad7 = bad7 || droff[static_cast<size_t>(q)] != pd.rank_offset[static_cast<size_t>(q)];
    for (size_t i = 0; i < tok.size(); ++i) bad7 = bad7 || tok[i] != pd.token_of_row[i];
    mismatch(7, bad7);
  }
  {
    std::vector<int> order(static_cast<size_t>(S));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return got.expert[static_cast<size_t>(a)] < got.expert[static_cast<size_t>(b)];
    });
    mismatch(8, to_host(d_sslot, S) != order);
  }
  char cfg[96];
  std::snprintf(cfg, sizeof cfg, "gate=%s groups=%d/%d cf=%g C=%lld R=%d", sig ? "sigmoid_bias" : "softmax",
                r.num_groups, r.topk_group, r.capacity_factor, static_cast<long long>(C), R);
  std::vector<size_t> order(stages.size());
  std::iota(order.begin(), order.end(), 0);
  Rng rng(c.seed ^ 0x1234ull);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[static_cast<size_t>(rng.below(i))]);
  for (size_t i : order) {
    if (status[i] != "ok") {
      write_row(c, stages[i].first, cfg, status[i], err[i], {}, "not timed: failed the reference check", "");
      continue;
    }
    write_row(c, stages[i].first, cfg, "ok", err[i], time_launch(stages[i].second), "", "");
  }
  for (void* p : std::initializer_list<void*>{d_logits, d_bias,  d_x,    d_perm,  d_comb,         d_pack,   d_exp,
                                              d_pos,    d_pos2,  d_rows, d_cnt,   d_off,          d_kept,   d_koff,
                                              d_kept2,  d_roff,  d_key,  d_rrank, d_rtot,         d_droff,  d_tok,
                                              d_sexp,   d_sslot, d_w,    d_s,     d_rank_scratch, d_scratch})
    cudaFree(p);
}

int Runner::run() {
  const auto t0 = std::chrono::steady_clock::now();
  VK_CHECK(cudaSetDevice(0));
  VK_CHECK(cudaGetDeviceProperties(&prop_, 0));
  VK_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  nvml_.load();
  if (cublas_.load()) cublas_.set_stream(cublas_.handle, stream_);
  std::filesystem::create_directories(o_.out_dir);
  meas_ = std::make_unique<CsvWriter>(o_.out_dir + "/measurements.csv", column_vector(kMeasurementColumns));
  counts_ = std::make_unique<CsvWriter>(o_.out_dir + "/counts.csv", column_vector(kCountsColumns));
  flush_bytes_ = std::max<size_t>(2 * static_cast<size_t>(prop_.l2CacheSize), size_t{128} << 20);
  flush_ = dev_alloc<unsigned char>(flush_bytes_);
  d_clock_ = dev_alloc<unsigned long long>(4);
  d_int_ = dev_alloc<int>(4096);
  d_ptrs_ = dev_alloc<void*>(3 * gpu::kMaxExperts);
  d_ref_ = dev_alloc<float>(static_cast<size_t>(24) * 32768);
  for (const Config& c : grid_) {
    if (c.family == Family::kRouting) continue;
    const size_t rows = c.family == Family::kGroupedGemmMasked
                            ? static_cast<size_t>(c.gemm.experts_local) * static_cast<size_t>(c.gemm.capacity)
                            : static_cast<size_t>(count_stats(c.gemm.counts).total);
    a_elems_ = std::max(a_elems_, rows * static_cast<size_t>(c.gemm.shape.k));
    c_elems_ = std::max(c_elems_, rows * static_cast<size_t>(c.gemm.shape.n));
    w_elems_ = std::max(
        w_elems_, static_cast<size_t>(c.gemm.experts_local) * static_cast<size_t>(c.gemm.shape.k * c.gemm.shape.n));
  }
  a_pool_ = dev_alloc<bf16>(a_elems_);
  w_pool_ = dev_alloc<bf16>(w_elems_);
  c_pool_ = dev_alloc<bf16>(c_elems_);
  // Random normal data (never zeros: power and clocks depend on data); weights scaled like 1/sqrt(K).
  VK_CHECK(gpu::fill_normal_bf16(a_pool_, a_elems_, o_.grid.seed * 2 + 1, 1.0f, stream_));
  VK_CHECK(gpu::fill_normal_bf16(w_pool_, w_elems_, o_.grid.seed * 2 + 2, 0.02f, stream_));
  VK_CHECK(cudaStreamSynchronize(stream_));

  CsvRow run;
  run.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("git_commit", VK_GIT_COMMIT);
  run.set("gpu_name", prop_.name).set("sm_count", prop_.multiProcessorCount);
  run.set("cc", std::to_string(prop_.major) + "." + std::to_string(prop_.minor));
  run.set("l2_bytes", static_cast<int64_t>(prop_.l2CacheSize))
      .set("hbm_bytes", static_cast<int64_t>(prop_.totalGlobalMem));
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  run.set("driver_version", nvml_.loaded() ? nvml_.driver() : std::to_string(drv)).set("runtime_version", rt);
  run.set("cublas_version", cublas_.loaded() ? std::to_string(cublas_.version) : "absent");
  run.set("nvcc_version", VK_NVCC_VERSION).set("sm_clock_max_mhz", nvml_.max_sm_clock_mhz());
  run.set("grid", o_.grid.kind == GridKind::kQuick ? "quick" : "full").set("seed", std::to_string(o_.grid.seed));
  run.set("nvml", nvml_.loaded() ? 1 : 0).set("notes", o_.notes);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  run.set("host", host);

  // Process warm-up: >= 200 ms of tensor-core work so clocks settle before the first measurement.
  {
    float* sink = dev_alloc<float>(1);
    double flops = 0;
    const auto w0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count() < 0.3) {
      VK_CHECK(gpu::mma_peak_bf16(prop_.multiProcessorCount * 4, 4096, sink, &flops, stream_));
      VK_CHECK(cudaStreamSynchronize(stream_));
    }
    cudaFree(sink);
  }
  probes(run);

  std::vector<size_t> order(grid_.size());
  std::iota(order.begin(), order.end(), 0);
  Rng rng(o_.grid.seed ^ 0xC0FFEEull);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[static_cast<size_t>(rng.below(i))]);
  int64_t done = 0;
  for (size_t idx : order) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (elapsed > o_.time_budget_s) {
      std::fprintf(stderr, "[vk] time budget reached after %lld configurations\n", static_cast<long long>(done));
      break;
    }
    const Config& c = grid_[idx];
    if (c.family != Family::kRouting) {
      CsvRow cr;
      cr.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("config_id", c.config_id);
      cr.set("counts", encode_counts(c.gemm.counts));
      counts_->write(cr);
    }
    try {
      if (c.family == Family::kRouting)
        run_routing(c);
      else
        run_gemm(c);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "[vk] config %lld: %s\n", static_cast<long long>(c.config_id), ex.what());
      write_row(c, "harness", "", "error", NAN, {}, ex.what(), "");
      if (cudaGetLastError() != cudaSuccess && cudaDeviceSynchronize() != cudaSuccess) break;  // sticky error
    }
    ++done;
    if (o_.verbose || done % 50 == 0)
      std::fprintf(stderr, "[vk] %lld/%zu configurations\n", static_cast<long long>(done), grid_.size());
    meas_->flush();
  }
  run.set("configs_planned", static_cast<int64_t>(grid_.size())).set("configs_done", done);
  run.set("wall_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  CsvWriter runs(o_.out_dir + "/runs.csv", column_vector(kRunsColumns));
  runs.write(run);
  std::printf("vk_harness: %lld/%zu configurations, output in %s\n", static_cast<long long>(done), grid_.size(),
              o_.out_dir.c_str());
  return 0;
}

}  // namespace

int run_measurements(const HarnessOptions& options, std::vector<Config> grid) {
  Runner runner(options, std::move(grid));
  return runner.run();
}

}  // namespace moesim::vk
