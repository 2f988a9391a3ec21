// Routing kernels: fused gate + top-k, histogram/scan, stable counting-sort ranks (capacity
// `position` policy), CUB-based `probs` policy, permute, un-permute + combine, pack by rank.
// Semantics: moesim::vk::ref (reference/routing_ref.hpp).
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <cfloat>

#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {
namespace {

constexpr int kGateWarps = 8;

/// (score, expert) pairs compared the reference's way: higher score wins, ties go to the lower id.
__device__ __forceinline__ bool better(float s, int e, float s2, int e2) { return s > s2 || (s == s2 && e < e2); }

__global__ void gate_topk_kernel(GateArgs g) {
  __shared__ float s_sel[kGateWarps][kMaxExperts];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int t = blockIdx.x * kGateWarps + wib;
  if (t >= g.tokens) return;
  const float* row = g.logits + static_cast<size_t>(t) * g.experts;
  float w[8], s[8];
  float mx = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int e = i * 32 + lane;
    w[i] = e < g.experts ? row[e] : -FLT_MAX;
    mx = fmaxf(mx, w[i]);
  }
  if (!g.sigmoid) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      w[i] = i * 32 + lane < g.experts ? expf(w[i] - mx) : 0.0f;
      sum += w[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      w[i] /= sum;
      s[i] = i * 32 + lane < g.experts ? w[i] : -FLT_MAX;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int e = i * 32 + lane;
      w[i] = e < g.experts ? 1.0f / (1.0f + expf(-w[i])) : 0.0f;
      s[i] = e < g.experts ? w[i] + (g.bias ? g.bias[e] : 0.0f) : -FLT_MAX;
    }
  }
  if (g.num_groups > 1) {
    // Group scores from shared memory: lane gi scores group gi (top-2 sum for sigmoid, max for softmax).
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (i * 32 + lane < g.experts) s_sel[wib][i * 32 + lane] = s[i];
    __syncwarp();
    const int gs = g.experts / g.num_groups;
    float gscore = -FLT_MAX;
    if (lane < g.num_groups) {
      float t1 = -FLT_MAX, t2 = -FLT_MAX;
      for (int e = lane * gs; e < (lane + 1) * gs; ++e) {
        const float v = s_sel[wib][e];
        if (v > t1) {
          t2 = t1;
          t1 = v;
        } else if (v > t2) {
          t2 = v;
        }
      }
      gscore = g.sigmoid ? t1 + t2 : t1;
    }
    unsigned keep_groups = 0;
    for (int r = 0; r < g.topk_group; ++r) {
      float bs = gscore;
      int bg = lane < g.num_groups ? lane : 1 << 30;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float os = __shfl_xor_sync(0xffffffffu, bs, o);
        const int og = __shfl_xor_sync(0xffffffffu, bg, o);
        if (better(os, og, bs, bg)) {
          bs = os;
          bg = og;
        }
      }
      keep_groups |= 1u << bg;
      if (lane == bg) gscore = -FLT_MAX;
    }
    // -FLT_MAX marks "not allowed" (finite, so allowed -inf-free scores always beat it).
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int e = i * 32 + lane;
      if (e < g.experts && !((keep_groups >> (e / gs)) & 1u)) s[i] = -FLT_MAX;
    }
  }
  float chosen_w = 0.0f, wsum = 0.0f;
  int chosen_e = -1;
  float chosen_s = 0.0f;
  for (int j = 0; j < g.topk; ++j) {
    float bs = -FLT_MAX, bw = 0.0f;
    int be = 1 << 30;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int e = i * 32 + lane;
      if (e < g.experts && better(s[i], e, bs, be) && s[i] > -FLT_MAX) {
        bs = s[i];
        be = e;
        bw = w[i];
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      const float ow = __shfl_xor_sync(0xffffffffu, bw, o);
      if (better(os, oe, bs, be)) {
        bs = os;
        be = oe;
        bw = ow;
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (i * 32 + lane == be) s[i] = -FLT_MAX;
    wsum += bw;
    if (lane == j) {  // lane j keeps slot j until the weights are final
      chosen_e = be;
      chosen_w = bw;
      chosen_s = bs;
    }
  }
  if (lane < g.topk) {
    float wt = g.renormalize ? chosen_w / wsum : chosen_w;
    wt *= g.scale;
    const size_t slot = static_cast<size_t>(t) * g.topk + lane;
    g.expert[slot] = chosen_e;
    g.weight[slot] = wt;
    if (g.score) g.score[slot] = chosen_s;
  }
}

__global__ void histogram_kernel(const int* ids, int n, int experts, int* counts) {
  extern __shared__ int s_hist[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) s_hist[e] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < experts) atomicAdd(&s_hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    if (s_hist[e]) atomicAdd(&counts[e], s_hist[e]);
}

__global__ void scan_kernel(const int* counts, int experts, int block_rows, int* offset) {
  using Scan = cub::BlockScan<int, 1024>;
  __shared__ typename Scan::TempStorage storage;
  const int e = threadIdx.x;
  const int v = e < experts ? (counts[e] + block_rows - 1) / block_rows * block_rows : 0;
  int ex, total;
  Scan(storage).ExclusiveSum(v, ex, total);
  if (e < experts) offset[e] = ex;
  if (e == 0) offset[experts] = total;
}

constexpr int kRankThreads = 256, kRankWarps = kRankThreads / 32, kRankRounds = 4;
constexpr int kRankChunk = kRankThreads * kRankRounds;
constexpr int kMaxKeys = 256;

__global__ void chunk_hist_kernel(const int* key, int items, int keys, int* block_counts) {
  __shared__ int s_hist[kMaxKeys];
  for (int e = threadIdx.x; e < keys; e += blockDim.x) s_hist[e] = 0;
  __syncthreads();
  const int base = blockIdx.x * kRankChunk;
  for (int i = threadIdx.x; i < kRankChunk && base + i < items; i += blockDim.x) {
    const int k = key[base + i];
    if (k >= 0 && k < keys) atomicAdd(&s_hist[k], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < keys; e += blockDim.x) block_counts[blockIdx.x * keys + e] = s_hist[e];
}

/// Column scan over chunks: block_counts becomes each chunk's base per key; total gets the sums.
__global__ void chunk_scan_kernel(int* block_counts, int chunks, int keys, int capacity, int* total) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= keys) return;
  int run = 0;
  for (int b = 0; b < chunks; ++b) {
    const int v = block_counts[b * keys + e];
    block_counts[b * keys + e] = run;
    run += v;
  }
  total[e] = capacity >= 0 ? min(run, capacity) : run;
}

/// Stable rank: warps of a chunk are ordered, so rank = chunk base + earlier warps' count + rank in
/// warp (__match_any_sync groups equal keys; lower lanes hold earlier items).
__global__ void chunk_rank_kernel(const int* key, int items, int keys, int capacity, const int* block_base, int* rank) {
  __shared__ int s_base[kMaxKeys];
  __shared__ int s_warp[kRankWarps][kMaxKeys];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int e = threadIdx.x; e < keys; e += blockDim.x) {
    s_base[e] = block_base[blockIdx.x * keys + e];
    for (int w = 0; w < kRankWarps; ++w) s_warp[w][e] = 0;
  }
  __syncthreads();
  for (int round = 0; round < kRankRounds; ++round) {
    const int i = blockIdx.x * kRankChunk + round * kRankThreads + threadIdx.x;
    const int k = i < items ? key[i] : -1;
    const bool valid = k >= 0 && k < keys;
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? k : -1);
    const int in_warp = __popc(peers & ((1u << lane) - 1));
    if (valid && in_warp == 0) s_warp[warp][k] = __popc(peers);
    __syncthreads();
    for (int e = threadIdx.x; e < keys; e += blockDim.x) {
      int run = s_base[e];
      for (int w = 0; w < kRankWarps; ++w) {
        const int c = s_warp[w][e];
        s_warp[w][e] = run;
        run += c;
      }
      s_base[e] = run;
    }
    __syncthreads();
    if (i < items) {
      int r = valid ? s_warp[warp][k] + in_warp : -1;
      if (capacity >= 0 && r >= capacity) r = -1;
      rank[i] = r;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < keys; e += blockDim.x)
      for (int w = 0; w < kRankWarps; ++w) s_warp[w][e] = 0;
    __syncthreads();
  }
}

__device__ __forceinline__ uint32_t descending_float_key(float f) {
  const uint32_t b = __float_as_uint(f);
  const uint32_t asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~asc;
}

__global__ void probs_keys_kernel(const int* expert, const float* weight, int slots, unsigned long long* keys,
                                  int* values) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= slots) return;
  keys[s] = (static_cast<unsigned long long>(expert[s]) << 32) | descending_float_key(weight[s]);
  values[s] = s;
}

/// Sorted order is (expert, weight desc, slot asc): the first C of each expert segment are kept.
__global__ void probs_mark_kernel(const unsigned long long* sorted_keys, const int* sorted_slots, const int* offset,
                                  int slots, int capacity, const int* expert, int* keep_key) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= slots) return;
  const int e = static_cast<int>(sorted_keys[i] >> 32);
  const int s = sorted_slots[i];
  keep_key[s] = (i - offset[e]) < capacity ? expert[s] : -1;
}

__global__ void slot_rows_kernel(const int* expert, const int* position, const int* offset, int slots, int* rows) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= slots) return;
  rows[s] = position[s] >= 0 ? offset[expert[s]] + position[s] : -1;
}

/// One block per slot, 16-byte vectors along hidden.
__global__ void permute_kernel(const bf16* x, const int* row_of_slot, int topk, int hidden, bf16* out) {
  const int s = blockIdx.x;
  const int row = row_of_slot[s];
  if (row < 0) return;
  const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<size_t>(s / topk) * hidden);
  uint4* dst = reinterpret_cast<uint4*>(out + static_cast<size_t>(row) * hidden);
  for (int v = threadIdx.x; v < hidden / 8; v += blockDim.x) dst[v] = src[v];
}

__global__ void combine_kernel(const bf16* expert_out, const int* row_of_slot, const float* weight, int topk,
                               int hidden, bf16* out) {
  const int t = blockIdx.x;
  for (int v = threadIdx.x; v < hidden / 8; v += blockDim.x) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < topk; ++j) {
      const int row = row_of_slot[t * topk + j];
      if (row < 0) continue;
      const float w = weight[t * topk + j];
      const uint4 raw = reinterpret_cast<const uint4*>(expert_out + static_cast<size_t>(row) * hidden)[v];
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = __bfloat1622float2(h[q]);
        acc[2 * q] = fmaf(w, f.x, acc[2 * q]);
        acc[2 * q + 1] = fmaf(w, f.y, acc[2 * q + 1]);
      }
    }
    uint4 packed;
    __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
    for (int q = 0; q < 4; ++q) o[q] = __floats2bfloat162_rn(acc[2 * q], acc[2 * q + 1]);
    reinterpret_cast<uint4*>(out + static_cast<size_t>(t) * hidden)[v] = packed;
  }
}

__device__ __forceinline__ int owner_rank_dev(int e, int experts, int ranks) {
  int r = static_cast<int>((static_cast<long long>(e) * ranks + ranks - 1) / experts);
  while (r > 0 && static_cast<long long>(r) * experts / ranks > e) --r;
  while (r + 1 < ranks && static_cast<long long>(r + 1) * experts / ranks <= e) ++r;
  return r;
}

__global__ void rank_offsets_kernel(const int* expert_offset, int experts, int ranks, int* rank_offset) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r > ranks) return;
  const int first_expert = static_cast<int>(static_cast<long long>(r) * experts / ranks);
  rank_offset[r] = expert_offset[first_expert];
}

__global__ void dedup_keys_kernel(const int* expert, const int* position, int tokens, int topk, int experts, int ranks,
                                  int* key) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  for (int r = 0; r < ranks; ++r) key[static_cast<size_t>(t) * ranks + r] = -1;
  for (int j = 0; j < topk; ++j) {
    const int s = t * topk + j;
    if (position[s] < 0) continue;
    const int r = owner_rank_dev(expert[s], experts, ranks);
    key[static_cast<size_t>(t) * ranks + r] = r;
  }
}

__global__ void pack_dedup_kernel(const bf16* x, const int* key, const int* rank, const int* rank_offset, int ranks,
                                  int hidden, bf16* packed, int* token_of_row) {
  const int item = blockIdx.x;
  const int r = key[item];
  if (r < 0) return;
  const int t = item / ranks;
  const int row = rank_offset[r] + rank[item];
  if (threadIdx.x == 0) token_of_row[row] = t;
  const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<size_t>(t) * hidden);
  uint4* dst = reinterpret_cast<uint4*>(packed + static_cast<size_t>(row) * hidden);
  for (int v = threadIdx.x; v < hidden / 8; v += blockDim.x) dst[v] = src[v];
}

__global__ void iota_kernel(int* v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = i;
}

int blocks_for(int n, int threads) { return (n + threads - 1) / threads; }

int bits_for(int experts) {
  int b = 1;
  while ((1 << b) < experts) ++b;
  return b;
}

}  // namespace

cudaError_t gate_topk(const GateArgs& g, cudaStream_t stream) {
  if (g.experts < 1 || g.experts > kMaxExperts || g.topk < 1 || g.topk > 16 || g.topk > g.experts || g.num_groups < 1 ||
      g.num_groups > 32 || g.experts % g.num_groups != 0)
    return cudaErrorInvalidValue;
  if (g.tokens == 0) return cudaSuccess;
  gate_topk_kernel<<<blocks_for(g.tokens, kGateWarps), kGateWarps * 32, 0, stream>>>(g);
  return cudaGetLastError();
}

cudaError_t histogram(const int* ids, int n, int experts, int* counts, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(counts, 0, sizeof(int) * static_cast<size_t>(experts), stream);
  if (err != cudaSuccess) return err;
  const int blocks = min(1024, max(1, blocks_for(n, 256 * 8)));
  histogram_kernel<<<blocks, 256, sizeof(int) * static_cast<size_t>(experts), stream>>>(ids, n, experts, counts);
  return cudaGetLastError();
}

cudaError_t exclusive_scan(const int* counts, int experts, int block_rows, int* offset, cudaStream_t stream) {
  if (experts > 1024 || block_rows < 1) return cudaErrorInvalidValue;
  scan_kernel<<<1, 1024, 0, stream>>>(counts, experts, block_rows, offset);
  return cudaGetLastError();
}

size_t stable_rank_scratch_ints(int items, int keys) {
  return static_cast<size_t>(blocks_for(items, kRankChunk)) * static_cast<size_t>(keys) + 1;
}

cudaError_t stable_rank_by_key(const int* key, int items, int keys, int capacity, int* rank, int* total, int* scratch,
                               cudaStream_t stream) {
  if (keys < 1 || keys > kMaxKeys) return cudaErrorInvalidValue;
  const int chunks = blocks_for(items, kRankChunk);
  if (chunks == 0) return cudaMemsetAsync(total, 0, sizeof(int) * static_cast<size_t>(keys), stream);
  chunk_hist_kernel<<<chunks, kRankThreads, 0, stream>>>(key, items, keys, scratch);
  chunk_scan_kernel<<<blocks_for(keys, 256), 256, 0, stream>>>(scratch, chunks, keys, capacity, total);
  chunk_rank_kernel<<<chunks, kRankThreads, 0, stream>>>(key, items, keys, capacity, scratch, rank);
  return cudaGetLastError();
}

namespace {
struct ProbsScratch {
  unsigned long long* keys_in;
  unsigned long long* keys_out;
  int* vals_in;
  int* vals_out;
  int* counts;
  int* offset;
  int* keep_key;
  int* rank_scratch;
  void* cub_temp;
  size_t cub_bytes;
};

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

size_t cub_sort_bytes(int slots) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const unsigned long long*>(nullptr),
                                  static_cast<unsigned long long*>(nullptr), static_cast<const int*>(nullptr),
                                  static_cast<int*>(nullptr), slots);
  return bytes;
}

bool carve(void* base, size_t bytes, int slots, int experts, ProbsScratch& p) {
  auto* c = static_cast<unsigned char*>(base);
  size_t off = 0;
  auto take = [&](size_t b) {
    void* r = c + off;
    off += align256(b);
    return r;
  };
  const auto n = static_cast<size_t>(slots);
  p.keys_in = static_cast<unsigned long long*>(take(n * 8));
  p.keys_out = static_cast<unsigned long long*>(take(n * 8));
  p.vals_in = static_cast<int*>(take(n * 4));
  p.vals_out = static_cast<int*>(take(n * 4));
  p.counts = static_cast<int*>(take(static_cast<size_t>(experts) * 4));
  p.offset = static_cast<int*>(take(static_cast<size_t>(experts + 1) * 4));
  p.keep_key = static_cast<int*>(take(n * 4));
  p.rank_scratch = static_cast<int*>(take(stable_rank_scratch_ints(slots, experts) * 4));
  p.cub_bytes = cub_sort_bytes(slots);
  p.cub_temp = take(p.cub_bytes);
  return off <= bytes;
}
}  // namespace

size_t capacity_probs_scratch_bytes(int slots, int experts) {
  const auto n = static_cast<size_t>(slots);
  return align256(n * 8) * 2 + align256(n * 4) * 3 + align256(static_cast<size_t>(experts) * 4) +
         align256(static_cast<size_t>(experts + 1) * 4) + align256(stable_rank_scratch_ints(slots, experts) * 4) +
         align256(cub_sort_bytes(slots));
}

cudaError_t capacity_probs(const int* expert, const float* weight, int slots, int experts, int capacity, int* position,
                           int* kept_count, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  ProbsScratch p{};
  if (!carve(scratch, scratch_bytes, slots, experts, p) || capacity < 0) return cudaErrorInvalidValue;
  cudaError_t err = histogram(expert, slots, experts, p.counts, stream);
  if (err == cudaSuccess) err = exclusive_scan(p.counts, experts, 1, p.offset, stream);
  if (err != cudaSuccess) return err;
  probs_keys_kernel<<<blocks_for(slots, 256), 256, 0, stream>>>(expert, weight, slots, p.keys_in, p.vals_in);
  err = cub::DeviceRadixSort::SortPairs(p.cub_temp, p.cub_bytes, p.keys_in, p.keys_out, p.vals_in, p.vals_out, slots, 0,
                                        32 + bits_for(experts), stream);
  if (err != cudaSuccess) return err;
  probs_mark_kernel<<<blocks_for(slots, 256), 256, 0, stream>>>(p.keys_out, p.vals_out, p.offset, slots, capacity,
                                                                expert, p.keep_key);
  return stable_rank_by_key(p.keep_key, slots, experts, -1, position, kept_count, p.rank_scratch, stream);
}

cudaError_t slot_rows(const int* expert, const int* position, const int* offset, int slots, int* row_of_slot,
                      cudaStream_t stream) {
  if (slots == 0) return cudaSuccess;
  slot_rows_kernel<<<blocks_for(slots, 256), 256, 0, stream>>>(expert, position, offset, slots, row_of_slot);
  return cudaGetLastError();
}

cudaError_t permute(const bf16* x, const int* row_of_slot, int slots, int topk, int hidden, bf16* out,
                    cudaStream_t stream) {
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  if (slots == 0) return cudaSuccess;
  permute_kernel<<<slots, 128, 0, stream>>>(x, row_of_slot, topk, hidden, out);
  return cudaGetLastError();
}

cudaError_t unpermute_combine(const bf16* expert_out, const int* row_of_slot, const float* weight, int tokens, int topk,
                              int hidden, bf16* out, cudaStream_t stream) {
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  combine_kernel<<<tokens, 128, 0, stream>>>(expert_out, row_of_slot, weight, topk, hidden, out);
  return cudaGetLastError();
}

cudaError_t rank_offsets_from_experts(const int* expert_offset, int experts, int ranks, int* rank_offset,
                                      cudaStream_t stream) {
  if (ranks < 1 || ranks > experts) return cudaErrorInvalidValue;
  rank_offsets_kernel<<<blocks_for(ranks + 1, 128), 128, 0, stream>>>(expert_offset, experts, ranks, rank_offset);
  return cudaGetLastError();
}

cudaError_t dedup_rank_keys(const int* expert, const int* position, int tokens, int topk, int experts, int ranks,
                            int* key, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  dedup_keys_kernel<<<blocks_for(tokens, 128), 128, 0, stream>>>(expert, position, tokens, topk, experts, ranks, key);
  return cudaGetLastError();
}

cudaError_t pack_dedup(const bf16* x, const int* key, const int* rank, const int* rank_offset, int tokens, int ranks,
                       int hidden, bf16* packed, int* token_of_row, cudaStream_t stream) {
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  pack_dedup_kernel<<<tokens * ranks, 128, 0, stream>>>(x, key, rank, rank_offset, ranks, hidden, packed, token_of_row);
  return cudaGetLastError();
}

size_t radix_sort_scratch_bytes(int slots) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                  static_cast<const int*>(nullptr), static_cast<int*>(nullptr), slots);
  return align256(bytes) + align256(static_cast<size_t>(slots) * 4);
}

cudaError_t radix_sort_by_expert(const int* expert, int slots, int experts, int* sorted_expert, int* sorted_slot,
                                 void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  int* iota = static_cast<int*>(scratch);
  const size_t iota_bytes = align256(static_cast<size_t>(slots) * 4);
  if (scratch_bytes < iota_bytes) return cudaErrorInvalidValue;
  size_t temp_bytes = scratch_bytes - iota_bytes;
  iota_kernel<<<blocks_for(slots, 256), 256, 0, stream>>>(iota, slots);
  return cub::DeviceRadixSort::SortPairs(static_cast<unsigned char*>(scratch) + iota_bytes, temp_bytes, expert,
                                         sorted_expert, iota, sorted_slot, slots, 0, bits_for(experts), stream);
}

}  // namespace moesim::vk::gpu
