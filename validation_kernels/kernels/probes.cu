// Machine probes: HBM copy bandwidth, tensor-core peak (mma.sync bf16 / fp8), launch cost, SM clock.
#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {
namespace {

__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

constexpr int kChains = 8;  // independent accumulators per warp hide the mma latency

__global__ void mma_bf16_kernel(int iters, float* sink) {
  uint32_t a[4] = {0x3f803f80u ^ threadIdx.x, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};
  uint32_t b0 = 0x3c003c00u ^ threadIdx.x, b1 = 0x3c003c00u;
  float d[kChains][4] = {};
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  float s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  if (s == 12345.0f) sink[0] = s;  // keeps the loop alive without a store per thread
}

__global__ void mma_fp8_kernel(int iters, float* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t a[4] = {0x38383838u ^ threadIdx.x, 0x38383838u, 0x38383838u, 0x38383838u};
  uint32_t b0 = 0x30303030u ^ threadIdx.x, b1 = 0x30303030u;
  float d[kChains][4] = {};
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c)
      asm volatile(
          "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  float s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  if (s == 12345.0f) sink[0] = s;
#else
  if (iters < 0) sink[0] = 0;
#endif
}

__global__ void empty() {}

__device__ __forceinline__ unsigned long long global_timer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void clock_kernel(unsigned long long* out, unsigned long long spin_ns) {
  const unsigned long long t0 = global_timer();
  const long long c0 = clock64();
  unsigned long long t1 = t0;
  while (t1 - t0 < spin_ns) t1 = global_timer();
  const long long c1 = clock64();
  out[0] = static_cast<unsigned long long>(c1 - c0);
  out[1] = 0;
  out[2] = t1 - t0;
  out[3] = 0;
}

}  // namespace

cudaError_t copy_probe(const int4* src, int4* dst, size_t n_vec, cudaStream_t stream) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  copy_kernel<<<sms * 8, 512, 0, stream>>>(src, dst, n_vec);
  return cudaGetLastError();
}

cudaError_t mma_peak_bf16(int blocks, int iters, float* sink, double* flops_out, cudaStream_t stream) {
  mma_bf16_kernel<<<blocks, 256, 0, stream>>>(iters, sink);
  *flops_out = static_cast<double>(blocks) * 8 /*warps*/ * iters * kChains * 2.0 * 16 * 8 * 16;
  return cudaGetLastError();
}

cudaError_t mma_peak_fp8(int blocks, int iters, float* sink, double* flops_out, cudaStream_t stream) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major * 10 + minor < 89) return cudaErrorNotSupported;
  mma_fp8_kernel<<<blocks, 256, 0, stream>>>(iters, sink);
  *flops_out = static_cast<double>(blocks) * 8 * iters * kChains * 2.0 * 16 * 8 * 32;
  return cudaGetLastError();
}

cudaError_t empty_kernel(cudaStream_t stream) {
  empty<<<1, 32, 0, stream>>>();
  return cudaGetLastError();
}

cudaError_t clock_probe(unsigned long long* out, unsigned long long spin_ns, cudaStream_t stream) {
  clock_kernel<<<1, 1, 0, stream>>>(out, spin_ns);
  return cudaGetLastError();
}

}  // namespace moesim::vk::gpu
