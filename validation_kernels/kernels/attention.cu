// FlashAttention-2-style attention forward on tensor cores (mma.sync m16n8k16 bf16 -> fp32, sm_80+).
// The algorithm is the published one (Dao 2023, arXiv 2307.08691: Q tile resident, K/V tiles
// streamed, running row max and sum, rescaled output accumulator, P fed back from registers);
// the code and its tile sizes are ours.
//
// STATUS: compiles (nvcc 13.0, sm_90a + sm_80); never executed on a GPU. The harness checks sampled
// query rows of every configuration against a double-precision CPU reference before timing.
//
// Shared-memory tiles are [rows][128] bf16 (256 bytes a row = 16 chunks of 16 bytes) with the
// chunk index XOR-ed with (row % 8): the 8 rows an ldmatrix phase reads then hit 8 different
// 16-byte bank groups.
//
// Fragment bookkeeping (m16n8k16, per warp, lane l, g = l / 4, q = l % 4):
//   S = Q K^T:  A = Q rows (ldmatrix.x4 of Q), B = K rows (ldmatrix.x4, K is [key][d] = "col" B);
//               accumulator s[j][0..1] at (row g, key 8j + 2q + {0,1}), s[j][2..3] at row g + 8.
//   O += P V:   A = P: k-step t takes s[2t] and s[2t+1] packed to bf16 pairs (the accumulator and
//               the A fragment share the (row, 2q + {0,1}) ownership); B = V via ldmatrix.x4.trans
//               (V is [key][d], the transpose gives the key-contiguous pairs B needs).
#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {
namespace {

constexpr int kD = 128;      // head dim
constexpr int kBlockN = 64;  // keys per K/V tile
constexpr int kChunks = kD / 8;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

/// Element offset of (row, chunk) in a swizzled [rows][128] tile.
__device__ __forceinline__ int swz(int row, int chunk) { return row * kD + ((chunk ^ (row & 7)) << 3); }

/// Copies `rows` rows of 128 bf16 (global row r at src + r * row_stride elements) into a swizzled
/// tile; rows at or past `valid` are zero-filled.
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t row_stride, int rows, int valid, int tid,
                                          int nthreads) {
  for (int idx = tid; idx < rows * kChunks; idx += nthreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = r < valid;
    const bf16* p = ok ? src + static_cast<int64_t>(r) * row_stride + c * 8 : src;
    cp_async16(smem_addr(tile + swz(r, c)), p, ok);
  }
}

/// Q fragments of this warp's 16 rows at row offset `row0` of the Q tile: qf[kk] for d-step kk.
__device__ __forceinline__ void load_q_frags(const bf16* sq, int row0, int lane, uint32_t (&qf)[kD / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) ldsm_x4(smem_addr(sq + swz(row0 + (lane & 15), 2 * kk + (lane >> 4))), qf[kk]);
}

/// s[j] (j < NT n-tiles of 8 keys) = Q(16 rows) K[key0 + 8j ...]^T over the full head dim.
template <int NT>
__device__ __forceinline__ void qk(const uint32_t (&qf)[kD / 16][4], const bf16* sk, int key0, int lane,
                                   float (&s)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
  const int mat = lane >> 3;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      uint32_t b[4];
      // matrices: (keys 0-7, d lo), (keys 0-7, d hi), (keys 8-15, d lo), (keys 8-15, d hi)
      const int key = key0 + jp * 16 + (mat >> 1) * 8 + (lane & 7);
      ldsm_x4(smem_addr(sk + swz(key, 2 * kk + (mat & 1))), b);
      mma_bf16(s[2 * jp], qf[kk], b[0], b[1]);
      mma_bf16(s[2 * jp + 1], qf[kk], b[2], b[3]);
    }
}

/// o[c] (16 n-tiles of 8 dims) += P(16 rows x 16*KS keys) V[key0 ...]; P from the s accumulators.
template <int NT>
__device__ __forceinline__ void pv(const float (&p)[NT][4], const bf16* sv, int key0, int lane, float (&o)[kD / 8][4]) {
  const int mat = lane >> 3;
#pragma unroll
  for (int t = 0; t < NT / 2; ++t) {
    uint32_t a[4];
    a[0] = pack_bf16(p[2 * t][0], p[2 * t][1]);
    a[1] = pack_bf16(p[2 * t][2], p[2 * t][3]);
    a[2] = pack_bf16(p[2 * t + 1][0], p[2 * t + 1][1]);
    a[3] = pack_bf16(p[2 * t + 1][2], p[2 * t + 1][3]);
#pragma unroll
    for (int cp = 0; cp < kD / 16; ++cp) {
      uint32_t b[4];
      // matrices: (keys 0-7, dims 16cp..+7), (keys 8-15, same), (keys 0-7, dims +8..), (keys 8-15, ..)
      const int key = key0 + t * 16 + (mat & 1) * 8 + (lane & 7);
      ldsm_x4_trans(smem_addr(sv + swz(key, 2 * cp + (mat >> 1))), b);
      mma_bf16(o[2 * cp], a, b[0], b[1]);
      mma_bf16(o[2 * cp + 1], a, b[2], b[3]);
    }
  }
}

/// Online softmax over one block of scores for this thread's two rows (g, g + 8): masks, updates
/// the running max m[2] and partial sums l[2] (per thread; the quad's sum is taken at the end),
/// rescales o, and turns s into probabilities in place. scale_log2 = softmax scale * log2(e).
template <int NT>
__device__ __forceinline__ void softmax_block(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&o)[kD / 8][4],
                                              float scale_log2, int key_base, int lane, int q_pos0, int kv_len,
                                              bool causal, int causal_shift) {
  const int q = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int qpos = q_pos0 + 8 * h;
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = key_base + 8 * j + 2 * q + e;
        float v = s[j][2 * h + e] * scale_log2;
        if (key >= kv_len || (causal && key > qpos + causal_shift)) v = -INFINITY;
        s[j][2 * h + e] = v;
        mx = fmaxf(mx, v);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx);
    // A row that has seen only masked keys keeps m = -inf; exponentiate against 0 then (all p = 0).
    const float base = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = exp2f(m[h] - base);  // m[h] = -inf gives 0
    m[h] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = exp2f(s[j][2 * h + e] - base);
        s[j][2 * h + e] = p;
        sum += p;
      }
    l[h] = l[h] * corr + sum;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      o[c][2 * h] *= corr;
      o[c][2 * h + 1] *= corr;
    }
  }
}

// ---- prefill ------------------------------------------------------------------------------------
constexpr int kPrefillM = 64;  // query rows per CTA (4 warps x 16)
constexpr int kPrefillThreads = 128;
constexpr int kPrefillSmem = (kPrefillM + 4 * kBlockN) * kD * 2;  // Q + 2 x (K, V)

__global__ void __launch_bounds__(kPrefillThreads) flash_prefill_kernel(AttentionArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);
  // Buffer i: K at kv0 + i * 2 * kBlockN * kD, V right after it (arithmetic, not a pointer array:
  // a run-time index into an array would put it in local memory).
  bf16* const kv0 = sq + kPrefillM * kD;
  auto sk = [&](int i) { return kv0 + i * 2 * kBlockN * kD; };
  auto sv = [&](int i) { return kv0 + i * 2 * kBlockN * kD + kBlockN * kD; };
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int q0 = blockIdx.x * kPrefillM, h = blockIdx.y, b = blockIdx.z;
  const int group = a.heads / a.kv_heads, hk = h / group;
  const int shift = a.kv_len - a.q_len;
  const int64_t q_stride = static_cast<int64_t>(a.heads) * kD, kv_stride = static_cast<int64_t>(a.kv_heads) * kD;
  const bf16* qg = a.q + (static_cast<int64_t>(b) * a.q_len + q0) * q_stride + static_cast<int64_t>(h) * kD;
  const bf16* kg = a.k + static_cast<int64_t>(b) * a.kv_len * kv_stride + static_cast<int64_t>(hk) * kD;
  const bf16* vg = a.v + static_cast<int64_t>(b) * a.kv_len * kv_stride + static_cast<int64_t>(hk) * kD;
  // Keys this CTA needs: all, or (causal) up to the last query row's diagonal.
  int kv_end = a.kv_len;
  if (a.causal) kv_end = min(kv_end, q0 + kPrefillM - 1 + shift + 1);
  const int blocks = kv_end > 0 ? (kv_end + kBlockN - 1) / kBlockN : 0;

  load_tile(sq, qg, q_stride, kPrefillM, a.q_len - q0, tid, kPrefillThreads);
  if (blocks > 0) {
    load_tile(sk(0), kg, kv_stride, kBlockN, a.kv_len, tid, kPrefillThreads);
    load_tile(sv(0), vg, kv_stride, kBlockN, a.kv_len, tid, kPrefillThreads);
  }
  cp_async_commit();

  const float scale = a.softmax_scale > 0 ? a.softmax_scale : rsqrtf(static_cast<float>(kD));
  const float scale_log2 = scale * 1.4426950408889634f;
  float o[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t qf[kD / 16][4];
  const int q_pos0 = q0 + warp * 16 + (lane >> 2);

  for (int j = 0; j < blocks; ++j) {
    if (j + 1 < blocks) {
      const int64_t off = static_cast<int64_t>(j + 1) * kBlockN * kv_stride;
      const int valid = a.kv_len - (j + 1) * kBlockN;
      load_tile(sk((j + 1) & 1), kg + off, kv_stride, kBlockN, valid, tid, kPrefillThreads);
      load_tile(sv((j + 1) & 1), vg + off, kv_stride, kBlockN, valid, tid, kPrefillThreads);
    }
    cp_async_commit();
    cp_async_wait<1>();  // block j (and Q) landed for this thread
    __syncthreads();     // ... and for every thread
    if (j == 0) load_q_frags(sq, warp * 16, lane, qf);
    float s[kBlockN / 8][4];
    qk<kBlockN / 8>(qf, sk(j & 1), 0, lane, s);
    softmax_block<kBlockN / 8>(s, m, l, o, scale_log2, j * kBlockN, lane, q_pos0, a.kv_len, a.causal, shift);
    pv<kBlockN / 8>(s, sv(j & 1), 0, lane, o);
    __syncthreads();  // buffer (j & 1) is refilled by iteration j + 1's prefetch of block j + 2
  }
  cp_async_wait<0>();

#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float sum = l[hh];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0 ? 1.0f / sum : 0.0f;
    const int qpos = q_pos0 + 8 * hh;
    if (qpos >= a.q_len) continue;
    bf16* out = a.o + (static_cast<int64_t>(b) * a.q_len + qpos) * q_stride + static_cast<int64_t>(h) * kD;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c)
      *reinterpret_cast<__nv_bfloat162*>(out + 8 * c + 2 * (lane & 3)) =
          __floats2bfloat162_rn(o[c][2 * hh] * inv, o[c][2 * hh + 1] * inv);
  }
}

// ---- decode -------------------------------------------------------------------------------------
constexpr int kDecodeThreads = 128;  // 4 warps, 16 keys of each 64-key block per warp
constexpr int kDecodeRows = 16;      // query heads of one K/V head, padded to an mma tile
constexpr int kDecodeSmem = (kDecodeRows + 4 * kBlockN) * kD * 2;
static_assert(4 * kDecodeRows * (kD + 2) * 4 <= kDecodeSmem, "the warps' partial results reuse the tile space");

__global__ void __launch_bounds__(kDecodeThreads) flash_decode_kernel(AttentionArgs a, int chunk) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);
  bf16* const kv0 = sq + kDecodeRows * kD;
  auto sk = [&](int i) { return kv0 + i * 2 * kBlockN * kD; };
  auto sv = [&](int i) { return kv0 + i * 2 * kBlockN * kD + kBlockN * kD; };
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = a.heads / a.kv_heads;
  const int k_begin = split * chunk, k_end = min(a.kv_len, k_begin + chunk);
  const int blocks = k_end > k_begin ? (k_end - k_begin + kBlockN - 1) / kBlockN : 0;
  const int64_t kv_stride = static_cast<int64_t>(a.kv_heads) * kD;
  const bf16* qg = a.q + (static_cast<int64_t>(b) * a.heads + static_cast<int64_t>(hk) * group) * kD;
  const bf16* kg = a.k + (static_cast<int64_t>(b) * a.kv_len + k_begin) * kv_stride + static_cast<int64_t>(hk) * kD;
  const bf16* vg = a.v + (static_cast<int64_t>(b) * a.kv_len + k_begin) * kv_stride + static_cast<int64_t>(hk) * kD;

  load_tile(sq, qg, kD, kDecodeRows, group, tid, kDecodeThreads);
  if (blocks > 0) {
    load_tile(sk(0), kg, kv_stride, kBlockN, k_end - k_begin, tid, kDecodeThreads);
    load_tile(sv(0), vg, kv_stride, kBlockN, k_end - k_begin, tid, kDecodeThreads);
  }
  cp_async_commit();
  const float scale = a.softmax_scale > 0 ? a.softmax_scale : rsqrtf(static_cast<float>(kD));
  const float scale_log2 = scale * 1.4426950408889634f;
  float o[kD / 8][4];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t qf[kD / 16][4];
  for (int j = 0; j < blocks; ++j) {
    if (j + 1 < blocks) {
      const int64_t off = static_cast<int64_t>(j + 1) * kBlockN * kv_stride;
      const int valid = k_end - k_begin - (j + 1) * kBlockN;
      load_tile(sk((j + 1) & 1), kg + off, kv_stride, kBlockN, valid, tid, kDecodeThreads);
      load_tile(sv((j + 1) & 1), vg + off, kv_stride, kBlockN, valid, tid, kDecodeThreads);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (j == 0) load_q_frags(sq, 0, lane, qf);
    float s[2][4];  // this warp's 16 keys of the block
    qk<2>(qf, sk(j & 1), warp * 16, lane, s);
    softmax_block<2>(s, m, l, o, scale_log2, k_begin + j * kBlockN + warp * 16, lane, 0, k_end, false, 0);
    pv<2>(s, sv(j & 1), warp * 16, lane, o);
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

  // Merge the four warps' (m, l, o) for each of the 16 rows in shared memory, then one split result.
  float* part = reinterpret_cast<float*>(smem_raw);  // [warp][row][kD + 2]: o, then m, l
  constexpr int kPitch = kD + 2;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float sum = l[hh];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = (lane >> 2) + 8 * hh;
    float* pr = part + (warp * kDecodeRows + row) * kPitch;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      pr[8 * c + 2 * (lane & 3)] = o[c][2 * hh];
      pr[8 * c + 2 * (lane & 3) + 1] = o[c][2 * hh + 1];
    }
    if ((lane & 3) == 0) {
      pr[kD] = m[hh];
      pr[kD + 1] = sum;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < group * kD; idx += kDecodeThreads) {
    const int row = idx / kD, d = idx % kD;
    float mx = -INFINITY;
    for (int w = 0; w < 4; ++w) mx = fmaxf(mx, part[(w * kDecodeRows + row) * kPitch + kD]);
    float lsum = 0.0f, acc = 0.0f;
    if (mx != -INFINITY)
      for (int w = 0; w < 4; ++w) {
        const float* pr = part + (w * kDecodeRows + row) * kPitch;
        const float f = exp2f(pr[kD] - mx);  // a warp with no keys has m = -inf: weight 0
        lsum += f * pr[kD + 1];
        acc += f * pr[d];
      }
    const int h = hk * group + row;
    const int64_t slot = (static_cast<int64_t>(b) * a.heads + h) * a.splits + split;
    a.o_partial[slot * kD + d] = lsum > 0 ? acc / lsum : 0.0f;
    if (d == 0) a.lse[slot] = lsum > 0 ? mx + log2f(lsum) : -INFINITY;  // log2 domain
  }
}

/// out[b, h, :] = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max).
__global__ void flash_decode_combine_kernel(AttentionArgs a) {
  const int bh = blockIdx.x, d = threadIdx.x;
  const float* lse = a.lse + static_cast<int64_t>(bh) * a.splits;
  float mx = -INFINITY;
  for (int s = 0; s < a.splits; ++s) mx = fmaxf(mx, lse[s]);
  float wsum = 0.0f, acc = 0.0f;
  if (mx != -INFINITY)
    for (int s = 0; s < a.splits; ++s) {
      const float w = exp2f(lse[s] - mx);
      wsum += w;
      acc += w * a.o_partial[(static_cast<int64_t>(bh) * a.splits + s) * kD + d];
    }
  a.o[static_cast<int64_t>(bh) * kD + d] = __float2bfloat16(wsum > 0 ? acc / wsum : 0.0f);
}

bool valid_common(const AttentionArgs& a) {
  return a.q && a.k && a.v && a.o && a.batch > 0 && a.q_len > 0 && a.kv_len > 0 && a.heads > 0 && a.kv_heads > 0 &&
         a.head_dim == kD && a.heads % a.kv_heads == 0 && a.batch <= 65535 && a.heads <= 65535;
}

}  // namespace

cudaError_t flash_prefill(const AttentionArgs& a, cudaStream_t stream) {
  if (!valid_common(a) || a.q_len > a.kv_len) return cudaErrorInvalidValue;
  static bool attr = false;
  if (!attr) {
    const cudaError_t e =
        cudaFuncSetAttribute(flash_prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPrefillSmem);
    if (e != cudaSuccess) return e;
    attr = true;
  }
  const dim3 grid((a.q_len + kPrefillM - 1) / kPrefillM, a.heads, a.batch);
  flash_prefill_kernel<<<grid, kPrefillThreads, kPrefillSmem, stream>>>(a);
  return cudaGetLastError();
}

int flash_decode_splits(int batch, int kv_heads, int kv_len, int sms) {
  const int ctas = std::max(1, batch * kv_heads);
  const int want = (2 * sms + ctas - 1) / ctas;
  const int max_splits = std::max(1, (kv_len + kBlockN - 1) / kBlockN);
  const int splits = std::max(1, std::min(want, max_splits));
  // The launcher rounds keys per split up to the 64-key block; return the count that leaves no split empty.
  const int per = (kv_len + splits - 1) / splits;
  const int chunk = (per + kBlockN - 1) / kBlockN * kBlockN;
  return std::max(1, (kv_len + chunk - 1) / chunk);
}

cudaError_t flash_decode(const AttentionArgs& a, cudaStream_t stream) {
  if (!valid_common(a) || a.q_len != 1 || a.heads / a.kv_heads > kDecodeRows || a.splits < 1 || !a.o_partial ||
      !a.lse || a.kv_heads > 65535)
    return cudaErrorInvalidValue;
  // Keys per split: a multiple of the 64-key block; the last split may be shorter.
  const int per = (a.kv_len + a.splits - 1) / a.splits;
  const int chunk = (per + kBlockN - 1) / kBlockN * kBlockN;
  if ((a.kv_len + chunk - 1) / chunk != a.splits) return cudaErrorInvalidValue;  // an empty split
  static bool attr = false;
  if (!attr) {
    const cudaError_t e =
        cudaFuncSetAttribute(flash_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDecodeSmem);
    if (e != cudaSuccess) return e;
    attr = true;
  }
  flash_decode_kernel<<<dim3(a.splits, a.kv_heads, a.batch), kDecodeThreads, kDecodeSmem, stream>>>(a, chunk);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  flash_decode_combine_kernel<<<a.batch * a.heads, kD, 0, stream>>>(a);
  return cudaGetLastError();
}

std::string flash_prefill_config() { return "fa2_mma_bf16_BM64_BN64_d128_T128_cpasync2"; }
std::string flash_decode_config() { return "splitkv_mma_bf16_rows16_BN64_d128_T128_cpasync2_combine"; }

}  // namespace moesim::vk::gpu
