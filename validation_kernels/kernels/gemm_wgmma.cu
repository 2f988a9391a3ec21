// Hopper grouped GEMM (sm_90a): TMA loads into a 128B-swizzled shared-memory ring guarded by
// full/empty mbarriers, one producer warp, two consumer warpgroups issuing
// wgmma.mma_async.m64n128k16 bf16 -> fp32, persistent grid with the same device-side
// (expert, M-tile, N-tile) scheduler as gemm_mma.cu.
//
// STATUS: compiles (nvcc 13.0, sm_90a + sm_80); never executed on a GPU. The harness self-tests
// it in full before timing anything and checks sampled rows of every configuration.
//
// The same kernel template also builds the fp8 e4m3 variant with DeepSeek-V3 / DeepGEMM-style
// block scaling (kFp8 = true): a k-tile is 128 e4m3 = 128 bytes, the same 128-byte swizzle atom
// as 64 bf16, so the ring, the TMA boxes (128 x 128 bytes), the descriptors (+32 bytes per
// k32 step) and the scheduler are shared. Each consumer warpgroup accumulates one k-tile (one
// 128-wide scale block) with four wgmma m64n128k32 e4m3 into a scratch accumulator (the first
// with scale-d = 0), waits for it, releases the stage, and adds it into the main accumulator
// multiplied by a_scale[row] * w_scale[expert, n-block] ("promotion", as DeepGEMM does it; the
// numbers here are our own).
//
// Layouts (same as gemm_mma.cu and the CPU reference):
//   A   [total_rows, K] bf16 row-major; expert e owns rows [row_offset[e], row_offset[e+1]) (contiguous)
//       or [e*cap, e*cap + min(counts[e], cap)) (masked).
//   W   [E, N, K] bf16 (K contiguous), seen by TMA as one 2-D tensor [E*N, K].
//   out [total_rows, N] bf16 row-major.
// Both operands are K-major, the layout wgmma reads without a transpose.
//
// One TMA descriptor per operand for the whole problem: an A box of 128 rows may run into the next
// expert's rows (those accumulator rows are computed and then not stored) or past the end of A (TMA
// zero-fills out-of-bounds rows). A W box never crosses experts because N % 128 == 0.
//
// Per CTA (384 threads, one CTA per SM):
//   warp 0 lane 0      producer: waits empty[s], arms full[s] with the stage's byte count, issues the
//                      two TMA loads (A 128x64, W 128x64, 16 KiB each) completing on full[s].
//   warps 4-7, 8-11    consumer warpgroups 0/1: rows 0-63 / 64-127 of the tile; per 64-wide k-tile
//                      four wgmma m64n128k16 (k = 16 each), commit, wait_group 1 (the previous
//                      k-tile's group is done) and release the previous stage (one arrive per
//                      consumer warp: empty[s] expects 8). Epilogue: fp32 -> bf16, masked stores.
//   warps 1-3 and lanes 1-31 of warp 0 exit after the prologue.
//
// What the first GPU run must confirm (none of it has been executed):
//   * the smem descriptor (LBO 1, SBO 1024 B, 128B swizzle, +32 B per k16 step inside the swizzle
//     atom) matches what TMA wrote: a mismatch shows up as a large max_rel_err (failed_check);
//   * expect_tx = 32 KiB per stage also for boxes that TMA partly zero-fills (the tail M-tile at the
//     end of A): a wrong count would hang the kernel, not corrupt it; run the first time under
//     `timeout`;
//   * the accumulator-to-(row, column) mapping in the epilogue (wrong: failed_check).
#include <cuda.h>  // CUtensorMap and the cuTensorMapEncodeTiled types only: no libcuda link
#include <cudaTypedefs.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <string>

#include "validation_kernels/kernels/kernels.hpp"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VK_WGMMA_DEVICE 1
#else
#define VK_WGMMA_DEVICE 0
#endif

namespace moesim::vk::gpu {
namespace {

constexpr int kBM = 128, kBN = 128, kStages = 4;
constexpr int kRowBytes = 128;  // one k-tile row: 64 bf16 or 128 e4m3, one 128B swizzle atom
template <bool kFp8>
constexpr int kBK = kFp8 ? 128 : 64;
constexpr int kConsumerWarpgroups = 2;
constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);  // warpgroup 0 = producer
constexpr int kTileABytes = kBM * kRowBytes;               // 16 KiB
constexpr int kTileBBytes = kBN * kRowBytes;               // 16 KiB
constexpr int kStageBytes = kTileABytes + kTileBBytes;
// +1024: the dynamic shared-memory base is only guaranteed 16-byte aligned; 128B-swizzled TMA
// destinations and the wgmma descriptors below (base offset 0) need 1024-byte aligned tiles.
constexpr int kSmemBytes = kStages * kStageBytes + 1024;
static_assert(kBK<false> * 2 == kRowBytes && kBK<true> == kRowBytes, "a k-tile row is one 128-byte swizzle atom");
static_assert(kBM == 64 * kConsumerWarpgroups, "each consumer warpgroup owns 64 rows");

#if VK_WGMMA_DEVICE

constexpr int kEmptyArrivals = 4 * kConsumerWarpgroups;  // one arrive per consumer warp

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -----------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/// Spins until the phase with the given parity has completed. A freshly initialised barrier is in
/// phase 0, so waiting for parity 1 returns at once (the producer's first pass over the ring).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA ----------------------------------------------------------------------------------------
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
/// 2-D tile load: box at (inner = c0 elements along K, outer = c1 rows) into dst, completing
/// the box's byte count on bar. Out-of-bounds elements are zero-filled (and still counted).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

// ---- wgmma --------------------------------------------------------------------------------------
/// Shared-memory matrix descriptor for a K-major tile written by TMA with 128B swizzle: rows of
/// 128 bytes, 8-row core-matrix groups 1024 bytes apart (stride byte offset), leading byte offset
/// unused for swizzled K-major layouts (set to 1 as is customary), base offset 0 (1024-aligned
/// tiles), layout type 1 = 128B swizzle (bits 62-63).
__device__ __forceinline__ uint64_t make_desc_sw128(uint32_t saddr) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>(1) << 16;
  desc |= static_cast<uint64_t>(1024 >> 4) << 32;
  desc |= static_cast<uint64_t>(1) << 62;
  return desc;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Keeps the compiler from moving accumulator reads/writes across wgmma fences/waits (the registers
/// are written asynchronously by the tensor cores, which the compiler cannot see).
__device__ __forceinline__ void fence_operands(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/// D[64x128] (+)= A[64x16] * B[16x128]; A and B from shared memory (descriptors), both K-major.
/// Accumulator layout (per warp w of the warpgroup, lane l): d[4j + {0,1}] at row 16w + l/4,
/// columns 8j + 2(l%4) + {0,1}; d[4j + {2,3}] at row 16w + l/4 + 8, same columns.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d)
      : "memory");
}

/// D[64x128] (+)= A[64x32] * B[32x128], e4m3 inputs from shared memory (both K-major: the only
/// layout wgmma has for 8-bit types, so there are no transpose immediates). Same accumulator layout.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d)
      : "memory");
}

/// Scheduler state shared by the producer and the consumers (identical tile walk in both roles).
struct TileSchedule {
  int row_begin[kMaxExperts];
  int row_count[kMaxExperts];
  int mtiles[kMaxExperts];
  int tile_start[kMaxExperts + 1];
};

struct TileCoord {
  int expert, m_tile, n_tile, row0, rows_valid;
};

/// Same mapping as gemm_mma.cu: the expert is the last e with tile_start[e] <= tile (empty experts
/// share their successor's start, so the search lands on the non-empty one); M-tiles vary fastest
/// so CTAs running at the same time share one weight N-tile in L2.
__device__ __forceinline__ TileCoord locate_tile(const TileSchedule& s, int experts, int tile) {
  int lo = 0, hi = experts - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (s.tile_start[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  TileCoord c;
  c.expert = lo;
  const int local = tile - s.tile_start[lo];
  c.m_tile = local % s.mtiles[lo];
  c.n_tile = local / s.mtiles[lo];
  c.row0 = s.row_begin[lo] + c.m_tile * kBM;
  c.rows_valid = min(kBM, s.row_count[lo] - c.m_tile * kBM);
  return c;
}

#endif  // VK_WGMMA_DEVICE

/// fp8 block scales (unused by the bf16 instantiation).
struct Fp8Scales {
  const float* a_scale = nullptr;  ///< [K/128, a_scale_ld]
  int64_t a_scale_ld = 0;
  const float* w_scale = nullptr;  ///< [E, N/128, K/128]
};

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_w,
                              GroupedGemmArgs args, Fp8Scales scales) {
#if VK_WGMMA_DEVICE
  constexpr int BK = kBK<kFp8>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ TileSchedule sched;
  __shared__ __align__(8) uint64_t full_bar[kStages];
  __shared__ __align__(8) uint64_t empty_bar[kStages];
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int n_tiles = args.n / kBN;
  const int k_tiles = args.k / BK;

  // ---- Prologue (all threads): per-expert M-tile counts, their prefix sum, barrier init. ----
  int my_tiles = 0;
  if (tid < args.experts) {
    int begin, count;
    expert_rows(args, tid, begin, count);
    sched.row_begin[tid] = begin;
    sched.row_count[tid] = count;
    sched.mtiles[tid] = (count + kBM - 1) / kBM;
    my_tiles = sched.mtiles[tid] * n_tiles;
  }
  int start, total_tiles;
  BlockScan(scan_storage).ExclusiveSum(my_tiles, start, total_tiles);
  if (tid < args.experts) sched.tile_start[tid] = start;
  if (tid == 0) {
    sched.tile_start[args.experts] = total_tiles;
    for (int s = 0; s < kStages; ++s) {
      mbar_init(smem_u32(&full_bar[s]), 1);
      mbar_init(smem_u32(&empty_bar[s]), kEmptyArrivals);
    }
    // Make the initialised barriers visible to the async proxy (TMA complete_tx) as well.
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();

  const uint32_t smem_base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  auto stage_a = [&](int s) { return smem_base + static_cast<uint32_t>(s * kStageBytes); };
  auto stage_b = [&](int s) { return smem_base + static_cast<uint32_t>(s * kStageBytes + kTileABytes); };

  if (warp < 4) {
    // ---- Producer: one thread of warpgroup 0. ----
    if (warp != 0 || lane != 0) return;
    tma_prefetch_desc(&map_a);
    tma_prefetch_desc(&map_w);
    uint32_t it = 0;  // k-tiles issued so far (all tiles): stage = it % S, ring pass = it / S
    for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
      const TileCoord c = locate_tile(sched, args.experts, tile);
      const int w_row = c.expert * args.n + c.n_tile * kBN;
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int s = static_cast<int>(it % kStages);
        const uint32_t pass = it / kStages;
        mbar_wait(smem_u32(&empty_bar[s]), (pass & 1u) ^ 1u);
        const uint32_t full = smem_u32(&full_bar[s]);
        mbar_arrive_expect_tx(full, kStageBytes);
        tma_load_2d(stage_a(s), &map_a, full, kt * BK, c.row0);
        tma_load_2d(stage_b(s), &map_w, full, kt * BK, w_row);
      }
    }
    return;
  }

  // ---- Consumers: warpgroup wg owns rows [64 wg, 64 wg + 64) of every tile. ----
  const int wg = warp / 4 - 1;
  const int wwarp = warp % 4;                           // warp within the warpgroup: rows 16 wwarp .. 16 wwarp + 15
  const int r_lo = wg * 64 + wwarp * 16 + (lane >> 2);  // this thread's rows: r_lo and r_lo + 8
  float acc[64];
  uint32_t it = 0;
  int prev_stage = 0;
  for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    const TileCoord c = locate_tile(sched, args.experts, tile);
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    fence_operands(acc);
    if constexpr (!kFp8) {
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int s = static_cast<int>(it % kStages);
        mbar_wait(smem_u32(&full_bar[s]), (it / kStages) & 1u);
        __syncwarp();  // wgmma is .aligned: the warp must be converged after the spin
        const uint64_t da = make_desc_sw128(stage_a(s) + static_cast<uint32_t>(wg * 64 * kRowBytes));
        const uint64_t db = make_desc_sw128(stage_b(s));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          // +32 bytes per k16 step inside the 128-byte swizzle atom (descriptor address is in 16 B).
          wgmma_m64n128k16(acc, da + static_cast<uint64_t>(2 * kk), db + static_cast<uint64_t>(2 * kk), 1);
        }
        wgmma_commit();
        wgmma_wait<1>();  // the previous k-tile's wgmma group has finished reading its stage
        fence_operands(acc);
        if (kt > 0) {
          __syncwarp();
          if (lane == 0) mbar_arrive(smem_u32(&empty_bar[prev_stage]));
        }
        prev_stage = s;
      }
      wgmma_wait<0>();
      fence_operands(acc);
      if (k_tiles > 0) {
        __syncwarp();
        if (lane == 0) mbar_arrive(smem_u32(&empty_bar[prev_stage]));
      }
    } else {
      // Block-scaled fp8: one k-tile = one 128-wide scale block. Rows past the expert's count (the
      // next expert's rows or TMA's zero fill) get scale 0 and are never stored.
      const bool lo_valid = r_lo < c.rows_valid, hi_valid = r_lo + 8 < c.rows_valid;
      const float* sa = scales.a_scale + c.row0 + r_lo;
      const float* sw = scales.w_scale + (static_cast<int64_t>(c.expert) * (args.n / kBN) + c.n_tile) * k_tiles;
      float part[64];
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int s = static_cast<int>(it % kStages);
        // Scale loads first: their latency hides behind the barrier wait and the MMAs.
        const float w_s = sw[kt];
        const float a_lo = lo_valid ? sa[kt * scales.a_scale_ld] : 0.0f;
        const float a_hi = hi_valid ? sa[kt * scales.a_scale_ld + 8] : 0.0f;
        mbar_wait(smem_u32(&full_bar[s]), (it / kStages) & 1u);
        __syncwarp();
        const uint64_t da = make_desc_sw128(stage_a(s) + static_cast<uint32_t>(wg * 64 * kRowBytes));
        const uint64_t db = make_desc_sw128(stage_b(s));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 32; ++kk)  // +32 bytes per k32 step, the first one overwrites part
          wgmma_m64n128k32_e4m3(part, da + static_cast<uint64_t>(2 * kk), db + static_cast<uint64_t>(2 * kk),
                                kk > 0 ? 1 : 0);
        wgmma_commit();
        wgmma_wait<0>();
        fence_operands(part);
        __syncwarp();
        if (lane == 0) mbar_arrive(smem_u32(&empty_bar[s]));  // this stage is read; the producer may refill it
        const float s_lo = a_lo * w_s, s_hi = a_hi * w_s;
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = fmaf(part[i], (i & 2) ? s_hi : s_lo, acc[i]);
      }
      fence_operands(acc);
    }

    // Epilogue: fp32 -> bf16x2, direct stores; rows past this expert's count are not written.
    const int col0 = c.n_tile * kBN + (lane & 3) * 2;
    bf16* out_lo = args.out + static_cast<size_t>(c.row0 + r_lo) * args.n + col0;
    bf16* out_hi = out_lo + static_cast<size_t>(8) * args.n;
    const bool lo_ok = r_lo < c.rows_valid, hi_ok = r_lo + 8 < c.rows_valid;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      if (lo_ok) *reinterpret_cast<__nv_bfloat162*>(out_lo + 8 * j) = __floats2bfloat162_rn(acc[4 * j], acc[4 * j + 1]);
      if (hi_ok)
        *reinterpret_cast<__nv_bfloat162*>(out_hi + 8 * j) = __floats2bfloat162_rn(acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
#else
  // Not built for this architecture (the sm_80 pass); the launcher refuses to launch there.
  (void)map_a;
  (void)map_w;
  (void)args;
  (void)scales;
  __trap();
#endif
}

// ---- Host side ------------------------------------------------------------------------------------
using EncodeTiledFn = PFN_cuTensorMapEncodeTiled_v12000;

/// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda link dependency).
EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return static_cast<EncodeTiledFn>(nullptr);
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

/// 2-D map over [rows, k_elems] (k contiguous), box = box_rows x 128 bytes, 128B swizzle, zero fill.
bool encode_2d(CUtensorMap* map, const void* base, uint64_t rows, uint64_t k_elems, uint32_t box_rows, bool fp8) {
  EncodeTiledFn fn = encode_tiled_fn();
  if (!fn) return false;
  const uint64_t elem = fp8 ? 1 : 2;
  const cuuint64_t dims[2] = {k_elems, rows};
  const cuuint64_t strides[1] = {k_elems * elem};  // bytes between consecutive rows
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kRowBytes / elem), box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  return fn(map, fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base),
            dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// The last encoded pair of maps, reused while the operands are unchanged (the timing loops launch
/// the same problem hundreds of times; encoding is host work that would otherwise sit in the
/// batched measurements). One cache per element type.
struct MapCache {
  const void* a = nullptr;
  const void* w = nullptr;
  uint64_t rows = 0, k = 0, w_rows = 0;
  CUtensorMap map_a{}, map_w{};
  bool valid = false;
};

bool runs_here() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) return false;
  return grouped_gemm_wgmma_runs_on(major, minor);
}

template <bool kFp8>
cudaError_t launch_wgmma(const GroupedGemmArgs& args, const void* a, const void* w, const Fp8Scales& scales,
                         int grid_blocks, cudaStream_t stream) {
  constexpr int BK = kBK<kFp8>;
  const bool masked = args.cap > 0;
  if (args.experts < 1 || args.experts > kMaxExperts || args.n <= 0 || args.n % kBN != 0 || args.k <= 0 ||
      args.k % BK != 0 || grid_blocks < 1 || (masked ? args.counts == nullptr : args.row_offset == nullptr) ||
      (!masked && args.total_rows < 0) || args.out == nullptr || reinterpret_cast<uintptr_t>(a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 16 != 0)
    return cudaErrorInvalidValue;
  if (kFp8 && (scales.a_scale == nullptr || scales.w_scale == nullptr)) return cudaErrorInvalidValue;
  if (!runs_here()) return cudaErrorNotSupported;

  static MapCache cache;
  const uint64_t rows = masked ? static_cast<uint64_t>(args.experts) * static_cast<uint64_t>(args.cap)
                               : static_cast<uint64_t>(args.total_rows);
  if (kFp8 && static_cast<uint64_t>(scales.a_scale_ld) < rows) return cudaErrorInvalidValue;
  const uint64_t k = static_cast<uint64_t>(args.k);
  const uint64_t w_rows = static_cast<uint64_t>(args.experts) * static_cast<uint64_t>(args.n);
  if (!cache.valid || cache.a != a || cache.w != w || cache.rows != rows || cache.k != k || cache.w_rows != w_rows) {
    cache.valid = false;
    // A map of at least one row: with no rows there are no tiles and TMA is never issued.
    if (!encode_2d(&cache.map_a, a, rows > 0 ? rows : 1, k, kBM, kFp8) ||
        !encode_2d(&cache.map_w, w, w_rows, k, kBN, kFp8))
      return cudaErrorInvalidValue;
    cache.a = a;
    cache.w = w;
    cache.rows = rows;
    cache.k = k;
    cache.w_rows = w_rows;
    cache.valid = true;
  }
  static bool attr_set = false;
  if (!attr_set) {
    const cudaError_t err =
        cudaFuncSetAttribute(grouped_gemm_wgmma_kernel<kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err != cudaSuccess) return err;
    attr_set = true;
  }
  grouped_gemm_wgmma_kernel<kFp8>
      <<<grid_blocks, kThreads, kSmemBytes, stream>>>(cache.map_a, cache.map_w, args, scales);
  return cudaGetLastError();
}

}  // namespace

cudaError_t grouped_gemm_wgmma(const GroupedGemmArgs& args, int grid_blocks, cudaStream_t stream) {
  return launch_wgmma<false>(args, args.a, args.w, Fp8Scales{}, grid_blocks, stream);
}

cudaError_t grouped_gemm_wgmma_fp8(const GroupedGemmFp8Args& f, int grid_blocks, cudaStream_t stream) {
  GroupedGemmArgs g;
  g.out = f.out;
  g.row_offset = f.row_offset;
  g.counts = f.counts;
  g.experts = f.experts;
  g.n = f.n;
  g.k = f.k;
  g.cap = f.cap;
  g.total_rows = f.total_rows;
  Fp8Scales s;
  s.a_scale = f.a_scale;
  s.a_scale_ld = f.a_scale_ld;
  s.w_scale = f.w_scale;
  return launch_wgmma<true>(g, f.a, f.w, s, grid_blocks, stream);
}

bool grouped_gemm_wgmma_implemented() { return true; }

bool grouped_gemm_wgmma_runs_on(int cc_major, int cc_minor) { return cc_major == 9 && cc_minor == 0; }

std::string grouped_gemm_wgmma_config() {
  return "wgmma_bf16_BM" + std::to_string(kBM) + "_BN" + std::to_string(kBN) + "_BK" + std::to_string(kBK<false>) +
         "_S" + std::to_string(kStages) + "_T" + std::to_string(kThreads) + "_cwg" +
         std::to_string(kConsumerWarpgroups) + "_tma_sw128";
}

std::string grouped_gemm_wgmma_fp8_config() {
  return "wgmma_e4m3_BM" + std::to_string(kBM) + "_BN" + std::to_string(kBN) + "_BK" + std::to_string(kBK<true>) +
         "_S" + std::to_string(kStages) + "_T" + std::to_string(kThreads) + "_cwg" +
         std::to_string(kConsumerWarpgroups) + "_tma_sw128_scales_a1x128_w128x128";
}

}  // namespace moesim::vk::gpu
