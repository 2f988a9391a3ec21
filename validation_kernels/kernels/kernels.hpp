// Host-side launchers of the validation kernels (CUDA C++17). Every launcher checks its
// preconditions and returns the launch's cudaError_t; none synchronises.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace moesim::vk::gpu {

using bf16 = __nv_bfloat16;

/// Largest expert count the device-side tile scheduler holds in shared memory.
inline constexpr int kMaxExperts = 256;

/// Grouped GEMM out[r, N] = A[r, K] * W_e[N, K]^T, bf16 in, fp32 accumulate, bf16 out.
/// Contiguous layout: expert e owns rows [row_offset[e], row_offset[e+1]) of A and out (no padding
/// needed: tails are masked). Masked layout: expert e owns rows [e*cap, e*cap + min(counts[e], cap)).
struct GroupedGemmArgs {
  const bf16* a = nullptr;
  const bf16* w = nullptr;  ///< [E, N, K]
  bf16* out = nullptr;
  const int* row_offset = nullptr;  ///< device [E+1], contiguous layout
  const int* counts = nullptr;      ///< device [E], masked layout
  int experts = 0;
  int n = 0;
  int k = 0;
  int cap = 0;  ///< > 0 selects the masked layout
  /// Rows of A and out in the contiguous layout (= row_offset[E], known on the host). The wgmma
  /// path needs it for the bounds of its TMA descriptor; the mma path ignores it.
  int total_rows = -1;
};

#ifdef __CUDACC__
/// Rows [begin, begin + count) of expert e in either layout. Every grouped-GEMM kernel's tile
/// scheduler uses this one definition, so the masked layout's clamp to `cap` cannot diverge.
__device__ __forceinline__ void expert_rows(const GroupedGemmArgs& args, int e, int& begin, int& count) {
  if (args.cap > 0) {
    begin = e * args.cap;
    count = min(args.counts[e], args.cap);
  } else {
    begin = args.row_offset[e];
    count = args.row_offset[e + 1] - begin;
  }
}
#endif

/// Portable tensor-core path: mma.sync m16n8k16, ldmatrix, 3-stage cp.async pipeline, persistent
/// grid with a device-side (expert, N-tile, M-tile) scheduler. Needs N % 128 == 0, K % 32 == 0.
cudaError_t grouped_gemm_mma(const GroupedGemmArgs& args, int grid_blocks, cudaStream_t stream);
/// Tile configuration string recorded in impl_config.
std::string grouped_gemm_mma_config();
/// Blocks per SM the mma kernel fits (occupancy), for sizing the persistent grid.
int grouped_gemm_mma_blocks_per_sm();
int grouped_gemm_mma_tile_m();
int grouped_gemm_mma_tile_n();

/// Hopper path (sm_90a): TMA loads into a 4-stage 128B-swizzled ring (full/empty mbarriers), one
/// producer warp, two consumer warpgroups issuing wgmma m64n128k16 bf16 -> fp32, persistent grid
/// (one CTA per SM is the intended grid_blocks) with the same scheduler as the mma path. Both layouts
/// (contiguous needs args.total_rows). Needs N % 128 == 0, K % 64 == 0, 16-byte aligned A and W.
/// Returns cudaErrorNotSupported on devices other than compute capability 9.0 (the sm_90a code runs
/// nowhere else). Compiles; never run on a GPU yet (README Status).
cudaError_t grouped_gemm_wgmma(const GroupedGemmArgs& args, int grid_blocks, cudaStream_t stream);
bool grouped_gemm_wgmma_implemented();
/// Whether the sm_90a kernel can run on a device of this compute capability (exactly 9.0).
bool grouped_gemm_wgmma_runs_on(int cc_major, int cc_minor);
/// Tile configuration string recorded in impl_config.
std::string grouped_gemm_wgmma_config();

/// fp8 e4m3 grouped GEMM with DeepSeek-V3 / DeepGEMM-style block scaling (sm_90a wgmma):
///   out[r, n] = sum_kb a_scale[kb, r] * w_scale[e, n/128, kb] * sum_{k in block kb} A[r, k] W_e[n, k]
/// A [rows, K] and W [E, N, K] e4m3 (K contiguous); a_scale[kb * a_scale_ld + r] fp32, one per
/// (row, 128 K-columns), stored K-block-major as the quantisation kernel writes it; w_scale
/// [E, N/128, K/128] fp32, one per 128 x 128 weight block; out bf16. fp32 accumulation inside a
/// 128-wide K block, promoted with the two scales into a second fp32 accumulator.
struct GroupedGemmFp8Args {
  const uint8_t* a = nullptr;
  const float* a_scale = nullptr;
  int64_t a_scale_ld = 0;  ///< >= rows of A
  const uint8_t* w = nullptr;
  const float* w_scale = nullptr;
  bf16* out = nullptr;
  const int* row_offset = nullptr;
  const int* counts = nullptr;
  int experts = 0, n = 0, k = 0, cap = 0, total_rows = -1;
};
/// Needs N % 128 == 0, K % 128 == 0, 16-byte aligned A and W; cc 9.0 only (cudaErrorNotSupported
/// elsewhere). Same scheduler, ring and warp roles as grouped_gemm_wgmma. Never run yet.
cudaError_t grouped_gemm_wgmma_fp8(const GroupedGemmFp8Args& args, int grid_blocks, cudaStream_t stream);
std::string grouped_gemm_wgmma_fp8_config();

/// Naive fp32 reference for a list of rows: ref[i, :] = A[rows[i], :] * W_{expert_of_row[i]}^T.
cudaError_t reference_rows(const bf16* a, const bf16* w, const int* rows, const int* expert_of_row, int num_rows, int n,
                           int k, float* ref, cudaStream_t stream);

/// The fp8 block-scaled version of reference_rows (same dequantisation as the kernel).
cudaError_t reference_rows_fp8(const GroupedGemmFp8Args& args, const int* rows, const int* expert_of_row, int num_rows,
                               float* ref, cudaStream_t stream);

/// Fills buf[n] with bf16 N(0, scale^2) values from a counter-based hash of (seed, index).
cudaError_t fill_normal_bf16(bf16* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream);
cudaError_t fill_normal_f32(float* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream);
/// e4m3 values of N(0, scale^2) samples (saturating at +-448).
cudaError_t fill_normal_e4m3(uint8_t* buf, size_t n, uint64_t seed, float scale, cudaStream_t stream);
/// Uniform fp32 values in [lo, hi).
cudaError_t fill_uniform_f32(float* buf, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);
/// Writes every byte of buf (L2 flush between timed iterations).
cudaError_t touch_buffer(void* buf, size_t bytes, uint32_t value, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// Routing kernels. Slot s = t * topk + j throughout; semantics = moesim::vk::ref (routing_ref.hpp).
// ----------------------------------------------------------------------------------------------
struct GateArgs {
  const float* logits = nullptr;  ///< [T, E]
  const float* bias = nullptr;    ///< [E] or null
  int tokens = 0, experts = 0, topk = 0;
  bool sigmoid = false;
  int num_groups = 1, topk_group = 1;
  bool renormalize = false;
  float scale = 1.0f;
  int* expert = nullptr;  ///< out [T*k]
  float* weight = nullptr;
  float* score = nullptr;
};
/// Fused softmax (or sigmoid+bias, group-limited) + top-k, one warp per token. E <= 256, k <= 16.
cudaError_t gate_topk(const GateArgs& args, cudaStream_t stream);

/// counts[E] (zeroed inside) = histogram of ids[n] (ids outside [0, E) ignored).
cudaError_t histogram(const int* ids, int n, int experts, int* counts, cudaStream_t stream);
/// offset[E+1] = exclusive scan of counts rounded up to block_rows. E <= 1024, one block.
cudaError_t exclusive_scan(const int* counts, int experts, int block_rows, int* offset, cudaStream_t stream);

/// Scratch for stable_rank_by_key; size it with stable_rank_scratch_ints.
size_t stable_rank_scratch_ints(int items, int keys);
/// rank[i] = number of items j < i with key[j] == key[i] (stable counting sort rank, token order);
/// keys < 0 are skipped (rank -1). total[key] = items with that key. When capacity >= 0 ranks >=
/// capacity become -1 and total is clamped (the `position` drop policy in one pass). keys <= 256.
cudaError_t stable_rank_by_key(const int* key, int items, int keys, int capacity, int* rank, int* total, int* scratch,
                               cudaStream_t stream);

/// Scratch bytes for capacity_probs (CUB radix sort temp + keys).
size_t capacity_probs_scratch_bytes(int slots, int experts);
/// `probs` drop policy: keep the C highest-weight slots per expert (ties: lower slot), then positions
/// = stable rank among kept in token order. position[-1 = dropped], kept_count[E].
cudaError_t capacity_probs(const int* expert, const float* weight, int slots, int experts, int capacity, int* position,
                           int* kept_count, void* scratch, size_t scratch_bytes, cudaStream_t stream);

/// row_of_slot[s] = offset[expert[s]] + position[s], or -1 when dropped.
cudaError_t slot_rows(const int* expert, const int* position, const int* offset, int slots, int* row_of_slot,
                      cudaStream_t stream);
/// out[row_of_slot[s]] = x[s / topk]; hidden % 8 == 0.
cudaError_t permute(const bf16* x, const int* row_of_slot, int slots, int topk, int hidden, bf16* out,
                    cudaStream_t stream);
/// out[t] = sum_j weight[t,j] * expert_out[row_of_slot[t,j]] (fp32 accumulate), zeros when fully dropped.
cudaError_t unpermute_combine(const bf16* expert_out, const int* row_of_slot, const float* weight, int tokens, int topk,
                              int hidden, bf16* out, cudaStream_t stream);
/// rank_offset[R+1] from the contiguous expert offsets (experts split contiguously over ranks).
cudaError_t rank_offsets_from_experts(const int* expert_offset, int experts, int ranks, int* rank_offset,
                                      cudaStream_t stream);
/// Dedup keys: key[t*R + r] = r when token t has a kept slot on rank r, else -1.
cudaError_t dedup_rank_keys(const int* expert, const int* position, int tokens, int topk, int experts, int ranks,
                            int* key, cudaStream_t stream);
/// packed[rank_offset[r] + rank[t*R + r]] = x[t] for every (t, r) with a key.
cudaError_t pack_dedup(const bf16* x, const int* key, const int* rank, const int* rank_offset, int tokens, int ranks,
                       int hidden, bf16* packed, int* token_of_row, cudaStream_t stream);

/// Baseline: CUB radix sort of slots by expert id over ceil(log2 E) bits.
size_t radix_sort_scratch_bytes(int slots);
cudaError_t radix_sort_by_expert(const int* expert, int slots, int experts, int* sorted_expert, int* sorted_slot,
                                 void* scratch, size_t scratch_bytes, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// Attention (FlashAttention-2-style, mma.sync bf16, sm_80+). Layout BSHD: q [B, Sq, H, d],
// k / v [B, Skv, H_kv, d], o [B, Sq, H, d]; head h reads K/V head h / (H / H_kv) (GQA).
// Causal: query i (0-based among the Sq newest) sees keys j <= i + (Skv - Sq).
// ----------------------------------------------------------------------------------------------
struct AttentionArgs {
  const bf16* q = nullptr;
  const bf16* k = nullptr;
  const bf16* v = nullptr;
  bf16* o = nullptr;
  int batch = 0, q_len = 0, kv_len = 0, heads = 0, kv_heads = 0, head_dim = 128;
  bool causal = true;
  float softmax_scale = 0;  ///< 0: 1/sqrt(head_dim)
  /// Decode split-KV scratch: o_partial [B, H, splits, d] fp32, lse [B, H, splits] fp32.
  float* o_partial = nullptr;
  float* lse = nullptr;
  int splits = 1;
};
/// Prefill: 64 query rows per CTA (4 warps x 16), 64-key K/V blocks double-buffered by cp.async,
/// online softmax in registers, P reused from the S accumulators as the A operand of P.V.
/// head_dim 128, H % H_kv == 0.
cudaError_t flash_prefill(const AttentionArgs& args, cudaStream_t stream);
std::string flash_prefill_config();
/// Decode (q_len = 1): split-KV; one CTA per (split, K/V head, sequence) computes all H / H_kv
/// query heads of the group (<= 16, padded to the 16 rows of an mma tile) over its key range,
/// then a combine kernel merges the splits by their log-sum-exp.
cudaError_t flash_decode(const AttentionArgs& args, cudaStream_t stream);
/// Splits that give >= 2 CTAs per SM without a split shorter than 64 keys.
int flash_decode_splits(int batch, int kv_heads, int kv_len, int sms);
std::string flash_decode_config();

// ----------------------------------------------------------------------------------------------
// Elementwise / norm / activation (bf16, fp32 math). hidden % 8 == 0; quant: hidden % 128 == 0.
// ----------------------------------------------------------------------------------------------
/// y = x * rsqrt(mean(x^2) + eps) * w, one CTA per token.
cudaError_t rmsnorm(const bf16* x, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps, cudaStream_t stream);
/// s = x + r (fp32); r = bf16(s); y = bf16(r) * rsqrt(mean(s^2) + eps) * w.
cudaError_t add_rmsnorm(const bf16* x, bf16* residual, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps,
                        cudaStream_t stream);
/// y[t, c] = silu(gu[t, c]) * gu[t, hidden + c] over gu [T, 2 hidden].
cudaError_t swiglu(const bf16* gate_up, bf16* y, int64_t tokens, int hidden, cudaStream_t stream);
/// Per (token t, group g of 128 columns): s = max(amax, 1e-10) / 448; q = e4m3(x / s) (satfinite);
/// scale[g * scale_ld + t] = s (K-block-major, the layout grouped_gemm_wgmma_fp8 reads).
cudaError_t quant_fp8_1x128(const bf16* x, uint8_t* q, float* scale, int64_t tokens, int hidden, int64_t scale_ld,
                            cudaStream_t stream);

// ----------------------------------------------------------------------------------------------
// Probes.
// ----------------------------------------------------------------------------------------------
cudaError_t copy_probe(const int4* src, int4* dst, size_t n_vec, cudaStream_t stream);
/// Register-only mma.sync loop; flops_out gets the FLOPs one launch performs.
cudaError_t mma_peak_bf16(int blocks, int iters, float* sink, double* flops_out, cudaStream_t stream);
/// fp8 e4m3 mma.sync (sm_89+); cudaErrorNotSupported on older devices.
cudaError_t mma_peak_fp8(int blocks, int iters, float* sink, double* flops_out, cudaStream_t stream);
cudaError_t empty_kernel(cudaStream_t stream);
/// One thread spins ~spin_ns; out[0..1] = clock64 delta, out[2..3] = %globaltimer delta (ns).
cudaError_t clock_probe(unsigned long long* out, unsigned long long spin_ns, cudaStream_t stream);

}  // namespace moesim::vk::gpu
