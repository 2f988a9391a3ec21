// Portable tensor-core grouped GEMM (sm_80+): mma.sync m16n8k16 bf16, ldmatrix fragments from a
// swizzled shared-memory tile, 3-stage cp.async pipeline, persistent grid, device-side scheduler.
#include <cuda_fp8.h>

#include <cub/block/block_scan.cuh>

#include <cstdio>

#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 3, kThreads = 256;
constexpr int kStageElems = (kBM + kBN) * kBK;
constexpr int kSmemBytes = kStages * kStageElems * 2;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// 16-byte async copy; a false predicate copies 0 bytes and zero-fills (masked tail rows).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int size = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Element offset of (row, 16-byte chunk) in a [rows][kBK] tile. Rows are 64 bytes (4 chunks);
/// XOR-ing the chunk with (row/2)%4 spreads the 8 rows one ldmatrix phase reads over all 32 banks.
__device__ __forceinline__ int tile_offset(int row, int chunk) { return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 3); }

__global__ void __launch_bounds__(kThreads) grouped_gemm_mma_kernel(GroupedGemmArgs args) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  __shared__ int s_row_begin[kMaxExperts];
  __shared__ int s_row_count[kMaxExperts];
  __shared__ int s_mtiles[kMaxExperts];
  __shared__ int s_tile_start[kMaxExperts + 1];
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int tid = threadIdx.x;
  const int n_tiles = args.n / kBN;
  // Scheduler prologue: per-expert M-tile counts and their prefix sum, recomputed by every block
  // (E <= 256 values: cheaper than a separate launch and a global round trip).
  int my_tiles = 0;
  if (tid < args.experts) {
    int begin, count;
    expert_rows(args, tid, begin, count);
    s_row_begin[tid] = begin;
    s_row_count[tid] = count;
    s_mtiles[tid] = (count + kBM - 1) / kBM;
    my_tiles = s_mtiles[tid] * n_tiles;
  }
  int start, total_tiles;
  BlockScan(scan_storage).ExclusiveSum(my_tiles, start, total_tiles);
  if (tid < args.experts) s_tile_start[tid] = start;
  if (tid == 0) s_tile_start[args.experts] = total_tiles;
  __syncthreads();

  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;  // 2 x 4 warps, 64 x 32 per warp
  const int k_tiles = args.k / kBK;

  for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    // Expert owning this tile: last e with s_tile_start[e] <= tile (binary search).
    int lo = 0, hi = args.experts - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (s_tile_start[mid] <= tile)
        lo = mid;
      else
        hi = mid - 1;
    }
    const int e = lo;
    const int local = tile - s_tile_start[e];
    // M-tiles fastest: concurrently running blocks share one weight N-tile in L2.
    const int m_tile = local % s_mtiles[e];
    const int n_tile = local / s_mtiles[e];
    const int row0 = s_row_begin[e] + m_tile * kBM;
    const int rows_valid = min(kBM, s_row_count[e] - m_tile * kBM);
    const bf16* a_tile = args.a + static_cast<size_t>(row0) * args.k;
    const bf16* b_tile = args.w + (static_cast<size_t>(e) * args.n + static_cast<size_t>(n_tile) * kBN) * args.k;

    auto load_stage = [&](int stage, int kt) {
      bf16* sa = smem + stage * kStageElems;
      bf16* sb = sa + kBM * kBK;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int idx = tid + i * kThreads;
        const int r = idx >> 2, c = idx & 3;
        const bool ok = r < rows_valid;
        const bf16* src_a = ok ? a_tile + static_cast<size_t>(r) * args.k + kt * kBK + c * 8 : args.a;
        cp_async16(smem_addr(sa + tile_offset(r, c)), src_a, ok);
        cp_async16(smem_addr(sb + tile_offset(r, c)), b_tile + static_cast<size_t>(r) * args.k + kt * kBK + c * 8,
                   true);
      }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < k_tiles) load_stage(s, s);
      cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // stage kt landed for all threads; stage (kt-1) is no longer read
      if (kt + kStages - 1 < k_tiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
      cp_async_commit();  // always commit so wait_group counts stay aligned

      const bf16* sa = smem + (kt % kStages) * kStageElems;
      const bf16* sb = sa + kBM * kBK;
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        uint32_t af[4][4], bfr[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          const int row = warp_m * 64 + mi * 16 + (lane & 15);
          const int chunk = kk * 2 + (lane >> 4);
          ldmatrix_x4(smem_addr(sa + tile_offset(row, chunk)), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          const int mat = lane >> 3;
          const int row = warp_n * 32 + nj * 16 + (mat >> 1) * 8 + (lane & 7);
          const int chunk = kk * 2 + (mat & 1);
          ldmatrix_x4(smem_addr(sb + tile_offset(row, chunk)), bfr[nj * 2][0], bfr[nj * 2][1], bfr[nj * 2 + 1][0],
                      bfr[nj * 2 + 1][1]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next tile's prologue overwrites every stage

    // Epilogue: accumulator (row g / g+8, cols 2q, 2q+1) -> bf16x2 stores, tail rows masked.
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int r = warp_m * 64 + mi * 16 + (lane >> 2);
        const int col = n_tile * kBN + warp_n * 32 + ni * 8 + (lane & 3) * 2;
        if (r < rows_valid)
          *reinterpret_cast<__nv_bfloat162*>(args.out + static_cast<size_t>(row0 + r) * args.n + col) =
              __floats2bfloat162_rn(acc[mi][ni][0], acc[mi][ni][1]);
        if (r + 8 < rows_valid)
          *reinterpret_cast<__nv_bfloat162*>(args.out + static_cast<size_t>(row0 + r + 8) * args.n + col) =
              __floats2bfloat162_rn(acc[mi][ni][2], acc[mi][ni][3]);
      }
  }
}

__global__ void reference_rows_kernel(const bf16* a, const bf16* w, const int* rows, const int* expert_of_row,
                                      int num_rows, int n, int k, float* ref) {
  const int i = blockIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= num_rows || j >= n) return;
  const bf16* ar = a + static_cast<size_t>(rows[i]) * k;
  const bf16* wr = w + (static_cast<size_t>(expert_of_row[i]) * n + j) * k;
  float acc = 0.0f;
  for (int t = 0; t < k; ++t) acc = fmaf(__bfloat162float(ar[t]), __bfloat162float(wr[t]), acc);
  ref[static_cast<size_t>(i) * n + j] = acc;
}

__device__ __forceinline__ float e4m3_value(uint8_t bits) {
  __nv_fp8_e4m3 v;
  v.__x = bits;
  return static_cast<float>(v);
}

/// One thread per output column; the dequantisation mirrors the kernel: a per-block fp32 dot
/// product times a_scale[kb, row] * w_scale[e, n/128, kb], summed over the K blocks.
__global__ void reference_rows_fp8_kernel(GroupedGemmFp8Args g, const int* rows, const int* expert_of_row, int num_rows,
                                          float* ref) {
  const int i = blockIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= num_rows || j >= g.n) return;
  const int r = rows[i], e = expert_of_row[i];
  const uint8_t* ar = g.a + static_cast<size_t>(r) * g.k;
  const uint8_t* wr = g.w + (static_cast<size_t>(e) * g.n + j) * g.k;
  const int kb_count = g.k / 128;
  float acc = 0.0f;
  for (int kb = 0; kb < kb_count; ++kb) {
    float part = 0.0f;
    for (int t = kb * 128; t < kb * 128 + 128; ++t) part = fmaf(e4m3_value(ar[t]), e4m3_value(wr[t]), part);
    const float sa = g.a_scale[static_cast<int64_t>(kb) * g.a_scale_ld + r];
    const float sw = g.w_scale[(static_cast<int64_t>(e) * (g.n / 128) + j / 128) * kb_count + kb];
    acc = fmaf(part, sa * sw, acc);
  }
  ref[static_cast<size_t>(i) * g.n + j] = acc;
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Counter-based normal sample: Box-Muller on two 24-bit uniforms hashed from (seed, i).
__device__ __forceinline__ float normal_at(uint64_t seed, size_t i) {
  const uint64_t h = mix64(seed * 0x9E3779B97F4A7C15ull + i);
  const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777217.0f);
  const float u2 = static_cast<float>((h >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__global__ void fill_normal_bf16_kernel(bf16* buf, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    buf[i] = __float2bfloat16(scale * normal_at(seed, i));
}

__global__ void fill_normal_f32_kernel(float* buf, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    buf[i] = scale * normal_at(seed, i);
}

__global__ void fill_normal_e4m3_kernel(uint8_t* buf, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    buf[i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(scale * normal_at(seed, i), __NV_SATFINITE, __NV_E4M3));
}

__global__ void fill_uniform_f32_kernel(float* buf, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed * 0x9E3779B97F4A7C15ull + i);
    buf[i] = lo + (hi - lo) * static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
  }
}

__global__ void touch_kernel(uint4* buf, size_t n_vec, uint32_t value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n_vec;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    buf[i] = make_uint4(value, value + 1, value + 2, static_cast<uint32_t>(i));
}

}  // namespace

cudaError_t grouped_gemm_mma(const GroupedGemmArgs& args, int grid_blocks, cudaStream_t stream) {
  if (args.experts < 1 || args.experts > kMaxExperts || args.n % kBN != 0 || args.k % kBK != 0 || args.k <= 0 ||
      grid_blocks < 1 || (args.cap > 0 ? args.counts == nullptr : args.row_offset == nullptr))
    return cudaErrorInvalidValue;
  static bool attr_set = false;
  if (!attr_set) {
    const cudaError_t err =
        cudaFuncSetAttribute(grouped_gemm_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err != cudaSuccess) return err;
    attr_set = true;
  }
  grouped_gemm_mma_kernel<<<grid_blocks, kThreads, kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

std::string grouped_gemm_mma_config() {
  return "BM" + std::to_string(kBM) + "_BN" + std::to_string(kBN) + "_BK" + std::to_string(kBK) + "_S" +
         std::to_string(kStages) + "_T" + std::to_string(kThreads) + "_warps2x4";
}
int grouped_gemm_mma_tile_m() { return kBM; }
int grouped_gemm_mma_tile_n() { return kBN; }

int grouped_gemm_mma_blocks_per_sm() {
  cudaFuncSetAttribute(grouped_gemm_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, grouped_gemm_mma_kernel, kThreads, kSmemBytes) !=
      cudaSuccess)
    return 1;
  return blocks > 0 ? blocks : 1;
}

cudaError_t reference_rows(const bf16* a, const bf16* w, const int* rows, const int* expert_of_row, int num_rows, int n,
                           int k, float* ref, cudaStream_t stream) {
  if (num_rows <= 0) return cudaSuccess;
  const dim3 grid((n + 127) / 128, num_rows);
  reference_rows_kernel<<<grid, 128, 0, stream>>>(a, w, rows, expert_of_row, num_rows, n, k, ref);
  return cudaGetLastError();
}

cudaError_t reference_rows_fp8(const GroupedGemmFp8Args& args, const int* rows, const int* expert_of_row, int num_rows,
                               float* ref, cudaStream_t stream) {
  if (num_rows <= 0) return cudaSuccess;
  if (args.k % 128 != 0 || args.n % 128 != 0) return cudaErrorInvalidValue;
  const dim3 grid((args.n + 127) / 128, num_rows);
  reference_rows_fp8_kernel<<<grid, 128, 0, stream>>>(args, rows, expert_of_row, num_rows, ref);
  return cudaGetLastError();
}

cudaError_t fill_normal_e4m3(uint8_t* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_normal_e4m3_kernel<<<1024, 256, 0, stream>>>(buf, n, seed, scale);
  return cudaGetLastError();
}

cudaError_t fill_uniform_f32(float* buf, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  fill_uniform_f32_kernel<<<1024, 256, 0, stream>>>(buf, n, seed, lo, hi);
  return cudaGetLastError();
}

cudaError_t fill_normal_bf16(bf16* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_normal_bf16_kernel<<<1024, 256, 0, stream>>>(buf, n, seed, scale);
  return cudaGetLastError();
}

cudaError_t fill_normal_f32(float* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_normal_f32_kernel<<<1024, 256, 0, stream>>>(buf, n, seed, scale);
  return cudaGetLastError();
}

cudaError_t touch_buffer(void* buf, size_t bytes, uint32_t value, cudaStream_t stream) {
  touch_kernel<<<2048, 256, 0, stream>>>(static_cast<uint4*>(buf), bytes / 16, value);
  return cudaGetLastError();
}

}  // namespace moesim::vk::gpu
