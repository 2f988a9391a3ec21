// Memory-bound per-token kernels of an MoE layer: RMSNorm, fused residual add + RMSNorm, SwiGLU,
// and the per-token 1x128 fp8 quantisation of activations (DeepSeek-V3's fine-grained scheme).
// 16-byte vector accesses (8 bf16), fp32 arithmetic, one CTA per token for the norms.
//
// STATUS: compiles (nvcc 13.0, sm_90a + sm_80); never executed on a GPU. The harness checks sampled
// tokens against a double-precision CPU reference before timing.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {
namespace {

constexpr int kNormThreads = 128;
constexpr int kMaxVecPerThread = 8;  // hidden <= 8 * 8 * 128 = 8192 keeps the row in registers

struct alignas(16) Vec8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void unpack(const Vec8& v, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(v.h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}
__device__ __forceinline__ Vec8 pack(const float (&f)[8]) {
  Vec8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}

/// Sum over the CTA (kNormThreads threads); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0.0f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) t += scratch[w];
  return t;
}

/// One CTA per token. kAdd: s = x + r, r = bf16(s), the norm of s (fp32), the output from bf16(s).
template <bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const bf16* __restrict__ x, bf16* residual, const bf16* __restrict__ w, bf16* __restrict__ y,
                   int hidden, float eps) {
  __shared__ float scratch[kNormThreads / 32];
  const int64_t t = blockIdx.x;
  const int nvec = hidden / 8;
  const Vec8* xr = reinterpret_cast<const Vec8*>(x + t * hidden);
  Vec8* rr = kAdd ? reinterpret_cast<Vec8*>(residual + t * hidden) : nullptr;
  float vals[kMaxVecPerThread][8];
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxVecPerThread; ++i) {
    const int v = threadIdx.x + i * kNormThreads;
    if (v < nvec) {
      unpack(xr[v], vals[i]);
      if (kAdd) {
        float r[8];
        unpack(rr[v], r);
#pragma unroll
        for (int e = 0; e < 8; ++e) vals[i][e] += r[e];
        const Vec8 rounded = pack(vals[i]);
        rr[v] = rounded;
#pragma unroll
        for (int e = 0; e < 8; ++e) sq += vals[i][e] * vals[i][e];
        unpack(rounded, vals[i]);  // the output normalises the stored (rounded) residual
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) sq += vals[i][e] * vals[i][e];
      }
    }
  }
  const float inv = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);
  const Vec8* wr = reinterpret_cast<const Vec8*>(w);
  Vec8* yr = reinterpret_cast<Vec8*>(y + t * hidden);
#pragma unroll
  for (int i = 0; i < kMaxVecPerThread; ++i) {
    const int v = threadIdx.x + i * kNormThreads;
    if (v < nvec) {
      float wf[8], o[8];
      unpack(wr[v], wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = vals[i][e] * inv * wf[e];
      yr[v] = pack(o);
    }
  }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

__global__ void swiglu_kernel(const bf16* __restrict__ gu, bf16* __restrict__ y, int64_t tokens, int hidden) {
  const int nvec = hidden / 8;
  const int64_t total = tokens * nvec;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / nvec;
    const int v = static_cast<int>(i % nvec);
    const Vec8* row = reinterpret_cast<const Vec8*>(gu + t * 2 * hidden);
    float g[8], u[8], o[8];
    unpack(row[v], g);
    unpack(row[nvec + v], u);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = silu(g[e]) * u[e];
    reinterpret_cast<Vec8*>(y + t * hidden)[v] = pack(o);
  }
}

/// One warp per (token, 128-column group): 4 values per lane (one 8-byte load), amax by shuffles.
__global__ void quant_fp8_kernel(const bf16* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ scale,
                                 int64_t tokens, int hidden, int64_t scale_ld) {
  const int groups = hidden / 128;
  const int64_t warps = tokens * groups;
  const int lane = threadIdx.x & 31;
  for (int64_t wi = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; wi < warps;
       wi += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t t = wi / groups;
    const int gidx = static_cast<int>(wi % groups);
    const bf16* src = x + t * hidden + gidx * 128 + lane * 4;
    const uint2 raw = *reinterpret_cast<const uint2*>(src);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    float amax = fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(b.x), fabsf(b.y)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float s = fmaxf(amax, 1e-10f) / 448.0f;
    const float vals[4] = {a.x / s, a.y / s, b.x / s, b.y / s};
    uint32_t packed = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      packed |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(vals[e], __NV_SATFINITE, __NV_E4M3)) << (8 * e);
    *reinterpret_cast<uint32_t*>(q + t * hidden + gidx * 128 + lane * 4) = packed;
    if (lane == 0) scale[static_cast<int64_t>(gidx) * scale_ld + t] = s;
  }
}

int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 * 16 ? 65535 * 16 : blocks));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t rmsnorm(const bf16* x, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps, cudaStream_t stream) {
  if (tokens <= 0 || tokens > 0x7FFFFFFF || hidden <= 0 || hidden % 8 != 0 ||
      hidden > 8 * kMaxVecPerThread * kNormThreads || !aligned16(x) || !aligned16(w) || !aligned16(y))
    return cudaErrorInvalidValue;
  rmsnorm_kernel<false><<<static_cast<unsigned>(tokens), kNormThreads, 0, stream>>>(x, nullptr, w, y, hidden, eps);
  return cudaGetLastError();
}

cudaError_t add_rmsnorm(const bf16* x, bf16* residual, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps,
                        cudaStream_t stream) {
  if (tokens <= 0 || tokens > 0x7FFFFFFF || hidden <= 0 || hidden % 8 != 0 ||
      hidden > 8 * kMaxVecPerThread * kNormThreads || !aligned16(x) || !aligned16(residual) || !aligned16(w) ||
      !aligned16(y))
    return cudaErrorInvalidValue;
  rmsnorm_kernel<true><<<static_cast<unsigned>(tokens), kNormThreads, 0, stream>>>(x, residual, w, y, hidden, eps);
  return cudaGetLastError();
}

cudaError_t swiglu(const bf16* gate_up, bf16* y, int64_t tokens, int hidden, cudaStream_t stream) {
  if (tokens <= 0 || hidden <= 0 || hidden % 8 != 0 || !aligned16(gate_up) || !aligned16(y))
    return cudaErrorInvalidValue;
  swiglu_kernel<<<grid_for(tokens * (hidden / 8), 256), 256, 0, stream>>>(gate_up, y, tokens, hidden);
  return cudaGetLastError();
}

cudaError_t quant_fp8_1x128(const bf16* x, uint8_t* q, float* scale, int64_t tokens, int hidden, int64_t scale_ld,
                            cudaStream_t stream) {
  if (tokens <= 0 || hidden <= 0 || hidden % 128 != 0 || scale_ld < tokens || reinterpret_cast<uintptr_t>(x) % 8 != 0 ||
      reinterpret_cast<uintptr_t>(q) % 4 != 0)
    return cudaErrorInvalidValue;
  quant_fp8_kernel<<<grid_for(tokens * (hidden / 128) * 32, 256), 256, 0, stream>>>(x, q, scale, tokens, hidden,
                                                                                    scale_ld);
  return cudaGetLastError();
}

}  // namespace moesim::vk::gpu
