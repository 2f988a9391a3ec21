// Elementwise family: RMSNorm, fused residual add + RMSNorm, SwiGLU, 1x128 fp8 quantisation.
// Checked on up to 64 sampled tokens against a CPU reference (double, or the kernel's own fp32
// steps where the result is defined by them: the rounded residual, the quantisation scale).
#include <algorithm>
#include <cmath>

#include "validation_kernels/harness/runner.hpp"

namespace moesim::vk {

void Runner::run_elementwise(const Config& c) {
  const ElementwiseConfig& ew = c.elementwise;
  const std::string impl = to_string(ew.op);
  if (!enabled(impl)) return;
  const CsvRow base = base_row(c);
  const int64_t T = ew.tokens, H = ew.hidden;
  const bool swig = ew.op == ElementwiseOp::kSwiglu, quant = ew.op == ElementwiseOp::kQuantFp8;
  const bool add = ew.op == ElementwiseOp::kAddRmsNorm;
  const int64_t in_w = swig ? 2 * H : H;
  cudaStream_t st = dev_.stream();
  DeviceScope mem(dev_);
  auto* x = mem.alloc<gpu::bf16>(static_cast<size_t>(T * in_w));
  auto* res = add ? mem.alloc<gpu::bf16>(static_cast<size_t>(T * H)) : nullptr;
  auto* w = mem.alloc<gpu::bf16>(static_cast<size_t>(H));
  auto* y = quant ? nullptr : mem.alloc<gpu::bf16>(static_cast<size_t>(T * H));
  auto* q8 = quant ? mem.alloc<uint8_t>(static_cast<size_t>(T * H)) : nullptr;
  auto* sc = quant ? mem.alloc<float>(static_cast<size_t>(T * (H / 128))) : nullptr;
  VK_CUDA(gpu::fill_normal_bf16(x, static_cast<size_t>(T * in_w), c.seed, 1.0f, st));
  VK_CUDA(gpu::fill_normal_bf16(w, static_cast<size_t>(H), c.seed + 1, 1.0f, st));
  if (add) VK_CUDA(gpu::fill_normal_bf16(res, static_cast<size_t>(T * H), c.seed + 2, 1.0f, st));
  const float eps = 1e-6f;
  const int hid = static_cast<int>(H);
  Launch launch;
  switch (ew.op) {
    case ElementwiseOp::kRmsNorm:
      launch = [=] { return gpu::rmsnorm(x, w, y, T, hid, eps, st); };
      break;
    case ElementwiseOp::kAddRmsNorm:
      launch = [=] { return gpu::add_rmsnorm(x, res, w, y, T, hid, eps, st); };
      break;
    case ElementwiseOp::kSwiglu:
      launch = [=] { return gpu::swiglu(x, y, T, hid, st); };
      break;
    case ElementwiseOp::kQuantFp8:
      launch = [=] { return gpu::quant_fp8_1x128(x, q8, sc, T, hid, T, st); };
      break;
  }
  const std::string cfg = impl + "_T128_vec16B" + (quant ? "_scale_kmajor" : "");
  measure(c, base, impl, cfg, launch, [&]() -> CheckResult {
    const std::vector<int64_t> toks = sample_indices(T, 64, c.seed ^ 0xE1);
    const size_t rin = static_cast<size_t>(in_w) * 2, rh = static_cast<size_t>(H) * 2;
    std::vector<uint16_t> xin(toks.size() * static_cast<size_t>(in_w)), r0, wv(static_cast<size_t>(H));
    dev_.rows_to_host(xin.data(), x, toks, rin, rin, "inputs");
    dev_.copy_to_host(wv.data(), w, rh, "weight");
    if (add) {
      r0.resize(toks.size() * static_cast<size_t>(H));
      dev_.rows_to_host(r0.data(), res, toks, rh, rh, "residual before");
    }
    if (y) VK_CUDA(cudaMemsetAsync(y, 0xFF, static_cast<size_t>(T * H) * 2, st));
    if (q8) VK_CUDA(cudaMemsetAsync(q8, 0x7F, static_cast<size_t>(T * H), st));  // e4m3 NaN
    const cudaError_t e = launch();
    if (e != cudaSuccess) throw CudaError(std::string("launch: ") + cudaGetErrorString(e));
    dev_.drain("elementwise check");
    std::vector<double> want;
    std::vector<float> got;
    std::string problem;
    if (!quant) {
      std::vector<uint16_t> yv(toks.size() * static_cast<size_t>(H)), r1;
      dev_.rows_to_host(yv.data(), y, toks, rh, rh, "outputs");
      if (add) {
        r1.resize(yv.size());
        dev_.rows_to_host(r1.data(), res, toks, rh, rh, "residual after");
      }
      for (size_t ti = 0; ti < toks.size(); ++ti) {
        const uint16_t* xr = xin.data() + ti * static_cast<size_t>(in_w);
        std::vector<double> v(static_cast<size_t>(H));
        if (swig) {
          for (int64_t j = 0; j < H; ++j) {
            const double g = bf16f(xr[j]), u = bf16f(xr[H + j]);
            want.push_back(g / (1.0 + std::exp(-g)) * u);
          }
        } else {
          double sq = 0;
          for (int64_t j = 0; j < H; ++j) {
            double val = bf16f(xr[j]);
            if (add) {
              // The kernel's fp32 sum and its bf16 rounding define the new residual exactly.
              const float s = bf16f(xr[j]) + bf16f(r0[ti * static_cast<size_t>(H) + static_cast<size_t>(j)]);
              const uint16_t rb = float_to_bf16_bits(s);
              if (r1[ti * static_cast<size_t>(H) + static_cast<size_t>(j)] != rb && problem.empty())
                problem = "updated residual differs";
              sq += static_cast<double>(s) * s;
              val = bf16f(rb);
            } else {
              sq += val * val;
            }
            v[static_cast<size_t>(j)] = val;
          }
          const double inv = 1.0 / std::sqrt(sq / static_cast<double>(H) + eps);
          for (int64_t j = 0; j < H; ++j)
            want.push_back(v[static_cast<size_t>(j)] * inv * bf16f(wv[static_cast<size_t>(j)]));
        }
        for (int64_t j = 0; j < H; ++j) got.push_back(bf16f(yv[ti * static_cast<size_t>(H) + static_cast<size_t>(j)]));
      }
      const Tolerance tol;
      const CompareResult cr = compare_outputs(want, got, tol);
      const bool ok = cr.ok(tol.rel_norm) && problem.empty();
      if (!ok && problem.empty()) problem = "output differs from the reference";
      return {ok, cr.rel_err, ok ? std::string() : problem};
    }
    // Quantisation: the scale is defined by fp32 steps (exact); values within half an e4m3 step.
    const int64_t G = H / 128;
    std::vector<uint8_t> qv(toks.size() * static_cast<size_t>(H));
    dev_.rows_to_host(qv.data(), q8, toks, static_cast<size_t>(H), static_cast<size_t>(H), "fp8 outputs");
    const std::vector<float> scales = dev_.to_host(sc, static_cast<size_t>(T * G), "scales");
    double worst = 0;
    for (size_t ti = 0; ti < toks.size(); ++ti)
      for (int64_t g = 0; g < G; ++g) {
        const float s_gpu = scales[static_cast<size_t>(g * T + toks[ti])];
        float amax = 0;
        for (int64_t j = g * 128; j < g * 128 + 128; ++j)
          amax = std::max(amax, std::fabs(bf16f(xin[ti * static_cast<size_t>(H) + static_cast<size_t>(j)])));
        const float s = std::max(amax, 1e-10f) / 448.0f;
        if (s_gpu != s && problem.empty()) problem = "scale differs";
        for (int64_t j = g * 128; j < g * 128 + 128; ++j) {
          const float val = bf16f(xin[ti * static_cast<size_t>(H) + static_cast<size_t>(j)]) / s;
          const float qf = e4m3_to_float(qv[ti * static_cast<size_t>(H) + static_cast<size_t>(j)]);
          const double bound = 0.0625 * std::fabs(val) + std::ldexp(1.0, -9);
          const double d = std::isfinite(qf) ? std::fabs(static_cast<double>(qf) - val) / bound : INFINITY;
          worst = std::max(worst, d);
        }
      }
    if (!(worst <= 1.0) && problem.empty()) problem = "quantised value off by more than half an e4m3 step";
    return {problem.empty(), worst, problem};
  });
}

}  // namespace moesim::vk
