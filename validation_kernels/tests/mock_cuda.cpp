// A CPU stand-in for the CUDA runtime, the validation kernels and cuBLAS, linked into
// vk_harness_mock so the real runner (runner*.cpp, device.cpp, dl.cpp) runs end to end on a
// machine without a GPU: layouts, checks, self-test, CSVs, budget loop, watchdog, invalidation.
//
// "Device" memory is host memory and every kernel runs at its launch, on the host, with the
// semantics of kernels.hpp. Time is virtual: each launch advances a clock by a cost formula
// (flops / 2e11 + bytes / 3e10 + 3 us: slow enough that GEMMs skip the 1,000-launch batched rows),
// and events read that clock, so timings are deterministic.
// Fault injection through the environment, by launcher name (grouped_gemm_wgmma, gate_topk, ...):
//   VK_MOCK_WRONG=name   the launcher corrupts its output (rows 64..127 of every tile: the second
//                        consumer warpgroup of the wgmma kernels; one element elsewhere)
//   VK_MOCK_HANG=name    the stream never completes after that launcher (the watchdog's case)
//   VK_MOCK_FAULT=name   the stream reports an illegal address after that launcher
// Never a source of measurements: its output only ever lives in a test's temporary directory.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "validation_kernels/harness/checks.hpp"
#include "validation_kernels/harness/dl.hpp"
#include "validation_kernels/kernels/kernels.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

namespace {

struct MockState {
  double vclock = 0;
  cudaError_t last = cudaSuccess;
  bool hung = false;
  cudaError_t stream_error = cudaSuccess;
  std::map<const void*, double> events;
  std::string wrong, hang, fault;
  MockState() {
    auto env = [](const char* n) {
      const char* v = std::getenv(n);
      return v ? std::string(v) : std::string();
    };
    wrong = env("VK_MOCK_WRONG");
    hang = env("VK_MOCK_HANG");
    fault = env("VK_MOCK_FAULT");
  }
};
MockState& st() {
  static MockState s;
  return s;
}

/// Every launcher ends here: advances the virtual clock, applies an injected hang or fault.
cudaError_t launched(const char* name, double flops, double bytes) {
  MockState& s = st();
  s.vclock += 3e-6 + flops / 2e11 + bytes / 3e10;
  if (s.hang == name) s.hung = true;
  if (s.fault == name) s.stream_error = cudaErrorIllegalAddress;
  return cudaSuccess;
}
bool corrupt(const char* name) { return st().wrong == name; }

/// e4m3 decoding through a table (the mock's fp8 GEMMs decode every operand).
float e4m3(uint8_t b) {
  static const std::vector<float> t = [] {
    std::vector<float> v(256);
    for (int c = 0; c < 256; ++c) v[static_cast<size_t>(c)] = moesim::vk::e4m3_to_float(static_cast<uint8_t>(c));
    return v;
  }();
  return t[b];
}

using moesim::vk::bf16_bits_to_float;
using moesim::vk::float_to_bf16_bits;
using moesim::vk::gpu::bf16;

float bf(const bf16* p, size_t i) { return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(p)[i]); }
void put(bf16* p, size_t i, float v) { reinterpret_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v); }

/// Nearest e4m3 code (ties to the even code), saturating at +-448: the semantics of
/// cvt.rn.satfinite.e4m3x2.f32.
uint8_t to_e4m3(float x) {
  static const std::vector<float> pos = [] {
    std::vector<float> v(127);
    for (int c = 0; c < 127; ++c) v[static_cast<size_t>(c)] = moesim::vk::e4m3_to_float(static_cast<uint8_t>(c));
    return v;
  }();
  if (std::isnan(x)) return 0x7F;
  const float a = std::min(std::fabs(x), 448.0f);
  int best = 0;
  for (int c = 1; c < 127; ++c) {
    const float d = std::fabs(pos[static_cast<size_t>(c)] - a), db = std::fabs(pos[static_cast<size_t>(best)] - a);
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  return static_cast<uint8_t>(best | (x < 0 ? 0x80 : 0));
}

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
float normal_at(uint64_t seed, size_t i) {
  const uint64_t h = mix(seed * 0x9E3779B97F4A7C15ull + i);
  const double u1 = (static_cast<double>(h >> 40) + 1.0) / 16777217.0;
  const double u2 = static_cast<double>((h >> 16) & 0xFFFFFF) / 16777216.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace

// ---- CUDA runtime --------------------------------------------------------------------------------
extern "C" {

cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "NVIDIA H100 80GB HBM3 (CPU mock)");
  p->multiProcessorCount = 132;
  p->major = 9;
  p->minor = 0;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->totalGlobalMem = 85899345920ull;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(0x1);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t) {
  if (st().stream_error != cudaSuccess) return st().stream_error;
  return st().hung ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t) {
  for (size_t r = 0; r < height; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new double(0));
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  *reinterpret_cast<double*>(e) = st().vclock;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = static_cast<float>((*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a)) * 1e3);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = st().last;
  st().last = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error (mock)";
    case cudaErrorInvalidValue:
      return "invalid argument (mock)";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered (mock)";
    case cudaErrorNotReady:
      return "device not ready (mock)";
    default:
      return "error (mock)";
  }
}

}  // extern "C"

// ---- kernels --------------------------------------------------------------------------------------
namespace moesim::vk::gpu {

namespace {

/// rows [begin, begin + count) of expert e (contiguous or masked), as expert_rows() on the device.
void rows_of(const int* row_offset, const int* counts, int cap, int e, int& begin, int& count) {
  if (cap > 0) {
    begin = e * cap;
    count = std::min(counts[e], cap);
  } else {
    begin = row_offset[e];
    count = row_offset[e + 1] - begin;
  }
}

/// The grouped GEMM's semantics on the host; `deq_a`/`deq_w` give operand values.
template <class DA, class DW>
void grouped(int experts, int n, int k, const int* row_offset, const int* counts, int cap, bf16* out, DA deq_a,
             DW deq_w, const char* name) {
  const bool bad = corrupt(name);
  double flops = 0;
  for (int e = 0; e < experts; ++e) {
    int b = 0, m = 0;
    rows_of(row_offset, counts, cap, e, b, m);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        float acc = 0;
        for (int t = 0; t < k; ++t) acc += deq_a(b + i, t) * deq_w(e, j, t);
        if (bad && (i % 128) >= 64) acc = 0;  // a broken second consumer warpgroup
        put(out, static_cast<size_t>(b + i) * n + j, acc);
      }
    flops += 2.0 * m * n * k;
  }
  launched(name, flops, flops / 64);
}

}  // namespace

cudaError_t grouped_gemm_mma(const GroupedGemmArgs& a, int grid_blocks, cudaStream_t) {
  if (a.experts < 1 || a.experts > kMaxExperts || a.n % 128 || a.k % 32 || a.k <= 0 || grid_blocks < 1)
    return cudaErrorInvalidValue;
  grouped(
      a.experts, a.n, a.k, a.row_offset, a.counts, a.cap, a.out,
      [&](int r, int t) { return bf(a.a, static_cast<size_t>(r) * a.k + t); },
      [&](int e, int j, int t) { return bf(a.w, (static_cast<size_t>(e) * a.n + j) * a.k + t); }, "grouped_gemm_mma");
  return cudaSuccess;
}
cudaError_t grouped_gemm_wgmma(const GroupedGemmArgs& a, int grid_blocks, cudaStream_t) {
  if (a.experts < 1 || a.experts > kMaxExperts || a.n % 128 || a.k % 64 || a.k <= 0 || grid_blocks < 1 ||
      (a.cap <= 0 && a.total_rows < 0))
    return cudaErrorInvalidValue;
  grouped(
      a.experts, a.n, a.k, a.row_offset, a.counts, a.cap, a.out,
      [&](int r, int t) { return bf(a.a, static_cast<size_t>(r) * a.k + t); },
      [&](int e, int j, int t) { return bf(a.w, (static_cast<size_t>(e) * a.n + j) * a.k + t); }, "grouped_gemm_wgmma");
  return cudaSuccess;
}
cudaError_t grouped_gemm_wgmma_fp8(const GroupedGemmFp8Args& f, int grid_blocks, cudaStream_t) {
  if (f.experts < 1 || f.n % 128 || f.k % 128 || grid_blocks < 1 || !f.a_scale || !f.w_scale)
    return cudaErrorInvalidValue;
  const int kb = f.k / 128;
  grouped(
      f.experts, f.n, f.k, f.row_offset, f.counts, f.cap, f.out,
      [&](int r, int t) {
        return e4m3(f.a[static_cast<size_t>(r) * f.k + t]) * f.a_scale[(t / 128) * f.a_scale_ld + r];
      },
      [&](int e, int j, int t) {
        return e4m3(f.w[(static_cast<size_t>(e) * f.n + j) * f.k + t]) *
               f.w_scale[(static_cast<size_t>(e) * (f.n / 128) + j / 128) * kb + t / 128];
      },
      "grouped_gemm_wgmma_fp8");
  return cudaSuccess;
}
std::string grouped_gemm_mma_config() { return "BM128_BN128_BK32_S3_T256_warps2x4"; }
int grouped_gemm_mma_blocks_per_sm() { return 1; }
int grouped_gemm_mma_tile_m() { return 128; }
int grouped_gemm_mma_tile_n() { return 128; }
bool grouped_gemm_wgmma_implemented() { return true; }
bool grouped_gemm_wgmma_runs_on(int major, int minor) { return major == 9 && minor == 0; }
std::string grouped_gemm_wgmma_config() { return "wgmma_bf16_BM128_BN128_BK64_S4_T384_cwg2_tma_sw128"; }
std::string grouped_gemm_wgmma_fp8_config() { return "wgmma_e4m3_BM128_BN128_BK128_S4_T384_cwg2_tma_sw128_mock"; }

cudaError_t reference_rows(const bf16* a, const bf16* w, const int* rows, const int* expert_of_row, int num_rows, int n,
                           int k, float* ref, cudaStream_t) {
  for (int i = 0; i < num_rows; ++i)
    for (int j = 0; j < n; ++j) {
      float acc = 0;
      for (int t = 0; t < k; ++t)
        acc += bf(a, static_cast<size_t>(rows[i]) * k + t) *
               bf(w, (static_cast<size_t>(expert_of_row[i]) * n + j) * k + t);
      ref[static_cast<size_t>(i) * n + j] = acc;
    }
  return launched("reference_rows", 2.0 * num_rows * n * k, 0);
}
cudaError_t reference_rows_fp8(const GroupedGemmFp8Args& f, const int* rows, const int* expert_of_row, int num_rows,
                               float* ref, cudaStream_t) {
  const int kb = f.k / 128;
  for (int i = 0; i < num_rows; ++i)
    for (int j = 0; j < f.n; ++j) {
      float acc = 0;
      const int r = rows[i], e = expert_of_row[i];
      for (int b = 0; b < kb; ++b) {
        float part = 0;
        for (int t = b * 128; t < b * 128 + 128; ++t)
          part += e4m3(f.a[static_cast<size_t>(r) * f.k + t]) * e4m3(f.w[(static_cast<size_t>(e) * f.n + j) * f.k + t]);
        acc += part * f.a_scale[static_cast<int64_t>(b) * f.a_scale_ld + r] *
               f.w_scale[(static_cast<size_t>(e) * (f.n / 128) + j / 128) * kb + b];
      }
      ref[static_cast<size_t>(i) * f.n + j] = acc;
    }
  return launched("reference_rows_fp8", 2.0 * num_rows * f.n * f.k, 0);
}

cudaError_t fill_normal_bf16(bf16* buf, size_t n, uint64_t seed, float scale, cudaStream_t) {
  for (size_t i = 0; i < n; ++i) put(buf, i, scale * normal_at(seed, i));
  return launched("fill", 0, 2.0 * n);
}
cudaError_t fill_normal_f32(float* buf, size_t n, uint64_t seed, float scale, cudaStream_t) {
  for (size_t i = 0; i < n; ++i) buf[i] = scale * normal_at(seed, i);
  return launched("fill", 0, 4.0 * n);
}
cudaError_t fill_normal_e4m3(uint8_t* buf, size_t n, uint64_t seed, float scale, cudaStream_t) {
  for (size_t i = 0; i < n; ++i) buf[i] = to_e4m3(scale * normal_at(seed, i));
  return launched("fill", 0, n);
}
cudaError_t fill_uniform_f32(float* buf, size_t n, uint64_t seed, float lo, float hi, cudaStream_t) {
  for (size_t i = 0; i < n; ++i)
    buf[i] = lo + (hi - lo) * static_cast<float>(mix(seed * 0x9E3779B97F4A7C15ull + i) >> 40) / 16777216.0f;
  return launched("fill", 0, 4.0 * n);
}
cudaError_t touch_buffer(void*, size_t bytes, uint32_t, cudaStream_t) {
  return launched("touch", 0, static_cast<double>(bytes));
}

// ---- routing ----
cudaError_t gate_topk(const GateArgs& g, cudaStream_t) {
  if (g.experts > kMaxExperts || g.topk > 16) return cudaErrorInvalidValue;
  ref::GateConfig c;
  c.kind = g.sigmoid ? ref::GateKind::kSigmoidBias : ref::GateKind::kSoftmax;
  c.num_experts = g.experts;
  c.topk = g.topk;
  c.num_groups = g.num_groups;
  c.topk_group = g.topk_group;
  c.renormalize = g.renormalize;
  c.weight_scale = g.scale;
  const ref::Routing r = ref::gate_topk(g.logits, g.tokens, c, g.bias);
  for (size_t s = 0; s < r.expert.size(); ++s) {
    g.expert[s] = r.expert[s];
    g.weight[s] = r.weight[s] + (corrupt("gate_topk") && s == 5 ? 0.01f : 0.0f);
    if (g.score) g.score[s] = r.score[s];
  }
  return launched("gate_topk", 0, 4.0 * g.tokens * g.experts);
}
cudaError_t histogram(const int* ids, int n, int experts, int* counts, cudaStream_t) {
  std::fill(counts, counts + experts, 0);
  for (int i = 0; i < n; ++i)
    if (ids[i] >= 0 && ids[i] < experts) ++counts[ids[i]];
  return launched("histogram", 0, 4.0 * n);
}
cudaError_t exclusive_scan(const int* counts, int experts, int block_rows, int* offset, cudaStream_t) {
  offset[0] = 0;
  for (int e = 0; e < experts; ++e) offset[e + 1] = offset[e] + (counts[e] + block_rows - 1) / block_rows * block_rows;
  return launched("exclusive_scan", 0, 8.0 * experts);
}
size_t stable_rank_scratch_ints(int items, int keys) {
  return static_cast<size_t>(items) + static_cast<size_t>(keys) + 1;
}
cudaError_t stable_rank_by_key(const int* key, int items, int keys, int capacity, int* rank, int* total, int*,
                               cudaStream_t) {
  std::vector<int> seen(static_cast<size_t>(keys), 0);
  for (int i = 0; i < items; ++i) {
    const int k = key[i];
    if (k < 0 || k >= keys) {
      rank[i] = -1;
      continue;
    }
    const int r = seen[static_cast<size_t>(k)]++;
    rank[i] = capacity >= 0 && r >= capacity ? -1 : r;
  }
  for (int k = 0; k < keys; ++k)
    total[k] = capacity >= 0 ? std::min(seen[static_cast<size_t>(k)], capacity) : seen[static_cast<size_t>(k)];
  return launched(corrupt("stable_rank_by_key") ? "x" : "stable_rank_by_key", 0, 12.0 * items);
}
size_t capacity_probs_scratch_bytes(int slots, int) { return static_cast<size_t>(slots) * 8 + 256; }
cudaError_t capacity_probs(const int* expert, const float* weight, int slots, int experts, int capacity, int* position,
                           int* kept_count, void*, size_t, cudaStream_t) {
  ref::Routing r;
  r.tokens = slots;
  r.topk = 1;
  r.expert.assign(expert, expert + slots);
  r.weight.assign(weight, weight + slots);
  r.score = r.weight;
  const ref::Capacity c = ref::enforce_capacity(r, experts, capacity, ref::DropPolicy::kProbs);
  for (int s = 0; s < slots; ++s) position[s] = c.position_in_expert[static_cast<size_t>(s)];
  for (int e = 0; e < experts; ++e) kept_count[e] = static_cast<int>(c.kept_count[static_cast<size_t>(e)]);
  return launched("capacity_probs", 0, 16.0 * slots);
}
cudaError_t slot_rows(const int* expert, const int* position, const int* offset, int slots, int* row_of_slot,
                      cudaStream_t) {
  for (int s = 0; s < slots; ++s) row_of_slot[s] = position[s] < 0 ? -1 : offset[expert[s]] + position[s];
  return launched("slot_rows", 0, 12.0 * slots);
}
cudaError_t permute(const bf16* x, const int* row_of_slot, int slots, int topk, int hidden, bf16* out, cudaStream_t) {
  for (int s = 0; s < slots; ++s)
    if (row_of_slot[s] >= 0)
      std::memcpy(out + static_cast<size_t>(row_of_slot[s]) * hidden, x + static_cast<size_t>(s / topk) * hidden,
                  static_cast<size_t>(hidden) * 2);
  return launched("permute", 0, 4.0 * slots * hidden);
}
cudaError_t unpermute_combine(const bf16* expert_out, const int* row_of_slot, const float* weight, int tokens, int topk,
                              int hidden, bf16* out, cudaStream_t) {
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < hidden; ++h) {
      float acc = 0;
      for (int j = 0; j < topk; ++j) {
        const int row = row_of_slot[t * topk + j];
        if (row >= 0) acc += weight[t * topk + j] * bf(expert_out, static_cast<size_t>(row) * hidden + h);
      }
      put(out, static_cast<size_t>(t) * hidden + h, acc);
    }
  return launched("unpermute_combine", 0, 2.0 * tokens * (topk + 1) * hidden);
}
cudaError_t rank_offsets_from_experts(const int* expert_offset, int experts, int ranks, int* rank_offset,
                                      cudaStream_t) {
  for (int r = 0; r <= ranks; ++r) rank_offset[r] = expert_offset[static_cast<int64_t>(r) * experts / ranks];
  return launched("rank_offsets", 0, 8.0 * ranks);
}
cudaError_t dedup_rank_keys(const int* expert, const int* position, int tokens, int topk, int experts, int ranks,
                            int* key, cudaStream_t) {
  for (int t = 0; t < tokens; ++t) {
    for (int r = 0; r < ranks; ++r) key[t * ranks + r] = -1;
    for (int j = 0; j < topk; ++j)
      if (position[t * topk + j] >= 0) {
        const int r = ref::owner_rank(expert[t * topk + j], experts, ranks);
        key[t * ranks + r] = r;
      }
  }
  return launched("dedup_rank_keys", 0, 8.0 * tokens * topk);
}
cudaError_t pack_dedup(const bf16* x, const int* key, const int* rank, const int* rank_offset, int tokens, int ranks,
                       int hidden, bf16* packed, int* token_of_row, cudaStream_t) {
  for (int t = 0; t < tokens; ++t)
    for (int r = 0; r < ranks; ++r)
      if (key[t * ranks + r] >= 0) {
        const int row = rank_offset[r] + rank[t * ranks + r];
        std::memcpy(packed + static_cast<size_t>(row) * hidden, x + static_cast<size_t>(t) * hidden,
                    static_cast<size_t>(hidden) * 2);
        token_of_row[row] = t;
      }
  return launched("pack_dedup", 0, 4.0 * tokens * hidden);
}
size_t radix_sort_scratch_bytes(int slots) { return static_cast<size_t>(slots) * 8 + 256; }
cudaError_t radix_sort_by_expert(const int* expert, int slots, int, int* sorted_expert, int* sorted_slot, void*, size_t,
                                 cudaStream_t) {
  std::vector<int> order(static_cast<size_t>(slots));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return expert[a] < expert[b]; });
  for (int i = 0; i < slots; ++i) {
    sorted_slot[i] = order[static_cast<size_t>(i)];
    sorted_expert[i] = expert[order[static_cast<size_t>(i)]];
  }
  return launched("radix_sort", 0, 16.0 * slots);
}

// ---- attention ----
namespace {
void attend(const AttentionArgs& a, int b, int qpos, int h, float* out) {
  const int G = a.heads / a.kv_heads, hk = h / G, D = a.head_dim;
  const float scale = a.softmax_scale > 0 ? a.softmax_scale : 1.0f / std::sqrt(static_cast<float>(D));
  const int last = a.causal ? std::min(a.kv_len - 1, qpos + a.kv_len - a.q_len) : a.kv_len - 1;
  std::vector<float> s(static_cast<size_t>(last + 1));
  float mx = -INFINITY;
  const size_t qo = ((static_cast<size_t>(b) * a.q_len + qpos) * a.heads + h) * D;
  for (int j = 0; j <= last; ++j) {
    float dot = 0;
    const size_t ko = ((static_cast<size_t>(b) * a.kv_len + j) * a.kv_heads + hk) * D;
    for (int d = 0; d < D; ++d) dot += bf(a.q, qo + d) * bf(a.k, ko + d);
    s[static_cast<size_t>(j)] = dot * scale;
    mx = std::max(mx, s[static_cast<size_t>(j)]);
  }
  float sum = 0;
  for (float& x : s) sum += (x = std::exp(x - mx));
  for (int d = 0; d < D; ++d) out[d] = 0;
  for (int j = 0; j <= last; ++j) {
    const size_t vo = ((static_cast<size_t>(b) * a.kv_len + j) * a.kv_heads + hk) * D;
    for (int d = 0; d < D; ++d) out[d] += s[static_cast<size_t>(j)] / sum * bf(a.v, vo + d);
  }
}
}  // namespace

cudaError_t flash_prefill(const AttentionArgs& a, cudaStream_t) {
  if (a.head_dim != 128 || a.heads % a.kv_heads || a.q_len > a.kv_len) return cudaErrorInvalidValue;
  std::vector<float> o(128);
  for (int b = 0; b < a.batch; ++b)
    for (int q = 0; q < a.q_len; ++q)
      for (int h = 0; h < a.heads; ++h) {
        attend(a, b, q, h, o.data());
        for (int d = 0; d < 128; ++d)
          put(a.o, ((static_cast<size_t>(b) * a.q_len + q) * a.heads + h) * 128 + d,
              corrupt("flash_prefill") && q >= 64 ? 0.0f : o[static_cast<size_t>(d)]);
      }
  return launched("flash_prefill", 4.0 * a.batch * a.heads * 128.0 * a.q_len * a.kv_len / 2, 0);
}
int flash_decode_splits(int, int, int kv_len, int) { return std::max(1, std::min(4, (kv_len + 63) / 64)); }
cudaError_t flash_decode(const AttentionArgs& a, cudaStream_t) {
  if (a.head_dim != 128 || a.q_len != 1 || a.heads / a.kv_heads > 16 || !a.o_partial || !a.lse)
    return cudaErrorInvalidValue;
  std::vector<float> o(128);
  for (int b = 0; b < a.batch; ++b)
    for (int h = 0; h < a.heads; ++h) {
      attend(a, b, 0, h, o.data());
      for (int d = 0; d < 128; ++d)
        put(a.o, (static_cast<size_t>(b) * a.heads + h) * 128 + d, o[static_cast<size_t>(d)]);
    }
  return launched("flash_decode", 0, 4.0 * a.batch * a.kv_heads * 128.0 * a.kv_len);
}
std::string flash_prefill_config() { return "fa2_mock"; }
std::string flash_decode_config() { return "splitkv_mock"; }

// ---- elementwise ----
cudaError_t rmsnorm(const bf16* x, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps, cudaStream_t) {
  if (hidden % 8) return cudaErrorInvalidValue;
  for (int64_t t = 0; t < tokens; ++t) {
    float sq = 0;
    for (int j = 0; j < hidden; ++j) sq += bf(x, t * hidden + j) * bf(x, t * hidden + j);
    const float inv = 1.0f / std::sqrt(sq / hidden + eps);
    for (int j = 0; j < hidden; ++j) put(y, t * hidden + j, bf(x, t * hidden + j) * inv * bf(w, j));
  }
  return launched("rmsnorm", 0, 4.0 * tokens * hidden);
}
cudaError_t add_rmsnorm(const bf16* x, bf16* r, const bf16* w, bf16* y, int64_t tokens, int hidden, float eps,
                        cudaStream_t) {
  if (hidden % 8) return cudaErrorInvalidValue;
  for (int64_t t = 0; t < tokens; ++t) {
    float sq = 0;
    for (int j = 0; j < hidden; ++j) {
      const float s = bf(x, t * hidden + j) + bf(r, t * hidden + j);
      sq += s * s;
      put(r, t * hidden + j, s);
    }
    const float inv = 1.0f / std::sqrt(sq / hidden + eps);
    for (int j = 0; j < hidden; ++j) put(y, t * hidden + j, bf(r, t * hidden + j) * inv * bf(w, j));
  }
  return launched("add_rmsnorm", 0, 8.0 * tokens * hidden);
}
cudaError_t swiglu(const bf16* gu, bf16* y, int64_t tokens, int hidden, cudaStream_t) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int j = 0; j < hidden; ++j) {
      const float g = bf(gu, t * 2 * hidden + j), u = bf(gu, t * 2 * hidden + hidden + j);
      put(y, t * hidden + j, g / (1.0f + std::exp(-g)) * u);
    }
  return launched("swiglu", 0, 6.0 * tokens * hidden);
}
cudaError_t quant_fp8_1x128(const bf16* x, uint8_t* q, float* scale, int64_t tokens, int hidden, int64_t ld,
                            cudaStream_t) {
  if (hidden % 128 || ld < tokens) return cudaErrorInvalidValue;
  for (int64_t t = 0; t < tokens; ++t)
    for (int g = 0; g < hidden / 128; ++g) {
      float amax = 0;
      for (int j = g * 128; j < g * 128 + 128; ++j) amax = std::max(amax, std::fabs(bf(x, t * hidden + j)));
      const float s = std::max(amax, 1e-10f) / 448.0f;
      for (int j = g * 128; j < g * 128 + 128; ++j) q[t * hidden + j] = to_e4m3(bf(x, t * hidden + j) / s);
      scale[g * ld + t] = s;
    }
  return launched("quant_fp8_1x128", 0, 3.0 * tokens * hidden);
}

// ---- probes ----
cudaError_t copy_probe(const int4*, int4*, size_t n_vec, cudaStream_t) { return launched("copy", 0, 32.0 * n_vec); }
cudaError_t mma_peak_bf16(int blocks, int iters, float*, double* flops_out, cudaStream_t) {
  *flops_out = static_cast<double>(blocks) * 8 * iters * 8 * 2.0 * 16 * 8 * 16;
  return launched("mma_peak", *flops_out, 0);
}
cudaError_t mma_peak_fp8(int blocks, int iters, float*, double* flops_out, cudaStream_t) {
  *flops_out = static_cast<double>(blocks) * 8 * iters * 8 * 2.0 * 16 * 8 * 32;
  return launched("mma_peak", *flops_out / 2, 0);
}
cudaError_t empty_kernel(cudaStream_t) { return launched("empty", 0, 0); }
cudaError_t clock_probe(unsigned long long* out, unsigned long long spin_ns, cudaStream_t) {
  out[0] = spin_ns * 1755 / 1000;  // a 1755 MHz clock
  out[1] = 0;
  out[2] = spin_ns;
  out[3] = 0;
  return launched("clock", 0, 0);
}

}  // namespace moesim::vk::gpu

// ---- cuBLAS (column-major, as the library defines it) --------------------------------------------
namespace moesim::vk::mock {
namespace {

int create(void** h) {
  *h = reinterpret_cast<void*>(0x2);
  return 0;
}
int destroy(void*) { return 0; }
int set_stream(void*, cudaStream_t) { return 0; }
int get_version(void*, int* v) {
  *v = 130000;
  return 0;
}

/// C[m x n] = op(A) op(B), column-major with leading dimensions, bf16 data, fp32 math.
int gemm(int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int lda, const void* B, int ldb,
         const float* beta, void* C, int ldc) {
  const auto* a = static_cast<const bf16*>(A);
  const auto* b = static_cast<const bf16*>(B);
  auto* c = static_cast<bf16*>(C);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float acc = 0;
      for (int p = 0; p < k; ++p) {
        const float av = ta ? bf(a, static_cast<size_t>(i) * lda + p) : bf(a, static_cast<size_t>(p) * lda + i);
        const float bv = tb ? bf(b, static_cast<size_t>(p) * ldb + j) : bf(b, static_cast<size_t>(j) * ldb + p);
        acc += av * bv;
      }
      const size_t ci = static_cast<size_t>(j) * ldc + i;
      put(c, ci, *alpha * acc + (*beta != 0 ? *beta * bf(c, ci) : 0.0f));
    }
  launched("cublas", 2.0 * m * n * k, 0);
  return 0;
}

int gemm_ex(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
            const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int, int) {
  if (at != Cublas::kR16BF || bt != Cublas::kR16BF || ct != Cublas::kR16BF) return 7;
  return gemm(ta, tb, m, n, k, static_cast<const float*>(alpha), A, lda, B, ldb, static_cast<const float*>(beta), C,
              ldc);
}
int gemm_strided(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int, int lda,
                 long long sa, const void* B, int, int ldb, long long sb, const void* beta, void* C, int, int ldc,
                 long long sc, int count, int, int) {
  for (int i = 0; i < count; ++i)
    gemm(ta, tb, m, n, k, static_cast<const float*>(alpha), static_cast<const bf16*>(A) + i * sa, lda,
         static_cast<const bf16*>(B) + i * sb, ldb, static_cast<const float*>(beta), static_cast<bf16*>(C) + i * sc,
         ldc);
  return 0;
}
int gemm_grouped(void*, const int* ta, const int* tb, const int* m, const int* n, const int* k, const void* alpha,
                 const void* const* A, int, const int* lda, const void* const* B, int, const int* ldb, const void* beta,
                 void* const* C, int, const int* ldc, int groups, const int* group_size, int) {
  int idx = 0;  // A, B, C arrays hold one pointer per problem, groups in order
  for (int g = 0; g < groups; ++g)
    for (int s = 0; s < group_size[g]; ++s, ++idx)
      gemm(ta[g], tb[g], m[g], n[g], k[g], static_cast<const float*>(alpha) + g, A[idx], lda[g], B[idx], ldb[g],
           static_cast<const float*>(beta) + g, C[idx], ldc[g]);
  return 0;
}

}  // namespace

bool install_cublas(Cublas& c) {
  if (std::getenv("VK_MOCK_NO_CUBLAS")) return false;
  c.create = create;
  c.destroy = destroy;
  c.set_stream = set_stream;
  c.get_version = get_version;
  c.gemm_ex = gemm_ex;
  c.gemm_strided_batched_ex = gemm_strided;
  c.gemm_grouped_batched_ex = gemm_grouped;
  c.path = "(CPU mock)";
  c.create(&c.handle);
  c.get_version(c.handle, &c.version);
  return true;
}

}  // namespace moesim::vk::mock
