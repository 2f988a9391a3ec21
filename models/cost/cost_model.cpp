#include "models/cost/cost_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <stdexcept>

#include "models/cost/profile.hpp"

namespace moesim::models::cost {

// ---------------------------------------------------------------------------------------------
// Default constants. Each one is replaced by a fitted value when a profile entry exists.
// ---------------------------------------------------------------------------------------------
namespace {
// GEMM tile model (models/README.md, "GEMM tile model"). The five constants below were fitted
// ONCE, globally, by tools/fit_gemm_tile_model.py on the 9 points of validation/published/
// deepgemm.yaml marked `subset: calibration` (DeepGEMM README, H800, FP8; log-error least
// squares); the 19 held-out points are reported separately by `moesim fidelity`. They are
// physical quantities of a Hopper GEMM main loop, not per-shape factors.
/// Tensor-core efficiency of a tile's main loop (CALIBRATION.md: good Hopper kernels plateau at
/// roughly 0.6-0.75 of nominal peak; the fit gives the top of that range).
constexpr double kGemmEta = 0.749;
/// HBM efficiency of a GEMM's streaming loads (TMA, deep pipelines); the fit: 0.90 of datasheet.
constexpr double kGemmMemEff = 0.900;
/// Latency floor of one 128-byte K block, SM cycles (fit: 231). DeepGEMM's math warpgroups issue
/// the block's WGMMAs, wait for them (warpgroup_wait<0>) and promote the FP32 partial sums on the
/// CUDA cores before the next block (deep_gemm/include/deep_gemm/fp8_gemm.cuh @a9967bc), so a
/// block takes at least this round trip even when its tile is thin (BN = 16 .. 64).
constexpr double kKBlockLatencyCycles = 231;
/// Per-tile prologue/epilogue, SM cycles (fit: 3080, 1.7 us at 1.83 GHz): the accumulator
/// write-back (registers -> shared memory -> TMA store) and the scheduler's next-tile step, not
/// overlapped with the main loop in the a9967bc kernels. It decides short-K shapes (K = 512).
constexpr double kTileOverheadCycles = 3080;
/// Device-side fixed cost of one GEMM kernel (fit: 0.41 us): ramp-up of the first tile's
/// pipeline and the tail, as a device profiler sees it (the host launch is separate).
constexpr double kGemmDeviceFixedS = 0.41e-6;
/// Blend exponent of the GEMM compute and memory paths (fit: 1.84).
constexpr double kGemmBlendP = 1.84;
/// Achieved fraction of datasheet HBM bandwidth for streaming reads/writes. Assumption: copy
/// kernels on HBM GPUs typically reach 80-90% of the datasheet figure; the harness's HBM probe
/// (runs.csv hbm_gbps_probed) and the fit replace it.
constexpr double kStreamMemEff = 0.85;
/// Blend exponent of the compute/memory roofline. p = 3 puts the crossover point 26% above
/// max(Tc, Tm) (2^(1/3)), a smooth knee; the fit determines the real one.
constexpr double kBlendP = 3.0;
/// Busy SMs (as a fraction of all SMs) needed to saturate HBM. Assumption: on Hopper about half
/// the SMs with deep async-copy pipelines can pull full bandwidth; small grids see less.
constexpr double kSatFrac = 0.5;
/// Flash attention forward: FlashAttention-3 (Shah et al., 2024, arXiv 2407.08608) reports up
/// to 740 TFLOP/s bf16 on H100 SXM (75% of peak) at long sequences, less at short ones; 0.6 is
/// a middle value for mixed lengths.
constexpr double kAttnPrefillEta = 0.60;
/// Decode attention is bandwidth-bound over the KV cache; assumption: 0.7 of datasheet HBM
/// (short per-sequence reads, split-KV reduction).
constexpr double kAttnDecodeMemEff = 0.70;
constexpr double kAttnDecodeEta = 0.30;
/// Routing kernels access memory irregularly (scatter/gather by index, atomics); assumption:
/// 0.4 of datasheet bandwidth. Their cost is dominated by t0 at moderate sizes
/// (CALIBRATION.md: fused top-k ~4-7 us, block alignment 10-35 us, permute 15-40 us).
constexpr double kRoutingMemEff = 0.40;

int routing_launches(RoutingKind k) {
  switch (k) {
    case RoutingKind::kGateTopk:
    case RoutingKind::kPermute:
    case RoutingKind::kUnpermuteCombine:
      return 1;
    case RoutingKind::kHistogramScan:  // histogram + scan
    case RoutingKind::kCapacity:       // stable rank + clamp
    case RoutingKind::kPackByRank:     // count per rank + pack
      return 2;
  }
  return 1;
}

double blend(double tc, double tm, double p) {
  const double hi = std::max(tc, tm);
  if (hi <= 0) return 0;
  return hi * std::pow(std::pow(tc / hi, p) + std::pow(tm / hi, p), 1.0 / p);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}
}  // namespace

std::optional<DType> parse_dtype(std::string_view s) {
  const std::string l = lower(s);
  if (l == "fp8" || l == "e4m3" || l == "e5m2" || l == "fp8_e4m3" || l == "fp8_e5m2") return DType::kFp8;
  if (l == "bf16" || l == "bfloat16") return DType::kBf16;
  if (l == "fp16" || l == "f16" || l == "half") return DType::kFp16;
  if (l == "tf32") return DType::kTf32;
  if (l == "fp32" || l == "f32" || l == "float") return DType::kFp32;
  return std::nullopt;
}

const char* to_string(DType d) {
  switch (d) {
    case DType::kFp8:
      return "fp8";
    case DType::kBf16:
      return "bf16";
    case DType::kFp16:
      return "fp16";
    case DType::kTf32:
      return "tf32";
    case DType::kFp32:
      return "fp32";
  }
  return "?";
}

double dtype_bytes(DType d) {
  switch (d) {
    case DType::kFp8:
      return 1;
    case DType::kBf16:
    case DType::kFp16:
      return 2;
    case DType::kTf32:
    case DType::kFp32:
      return 4;
  }
  return 4;
}

double GpuParams::peak_flops(DType d) const {
  switch (d) {
    case DType::kFp8:
      return peak_flops_fp8;
    case DType::kBf16:
    case DType::kFp16:
      return peak_flops_bf16;
    case DType::kTf32:
      return peak_flops_tf32;
    case DType::kFp32:
      return peak_flops_fp32;
  }
  return 0;
}

void GpuParams::validate() const {
  auto need = [&](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(fmt::format("GpuParams '{}': {} must be positive", name, what));
  };
  need(sm_count > 0, "sm_count");
  need(sm_clock_hz > 0, "sm_clock_hz");
  need(peak_flops_bf16 > 0, "peak_flops_bf16");
  need(hbm_bytes_per_s > 0, "hbm_bytes_per_s");
  need(launch_overhead >= sim::SimTime::zero(), "launch_overhead (>= 0)");
}

std::string TileConfig::str() const { return fmt::format("BM{}_BN{}", bm, bn); }

std::optional<TileConfig> TileConfig::parse(std::string_view s) {
  // Tokens separated by '_' (or ',' / ' '); "BM<digits>" and "BN<digits>" are read.
  TileConfig t{0, 0};
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    while (j < s.size() && s[j] != '_' && s[j] != ',' && s[j] != ' ' && s[j] != ';') ++j;
    const std::string tok = lower(s.substr(i, j - i));
    auto read = [&](const char* prefix, int& out) {
      const std::string p(prefix);
      if (tok.size() > p.size() && tok.compare(0, p.size(), p) == 0) {
        int v = 0;
        for (std::size_t c = p.size(); c < tok.size(); ++c) {
          if (!std::isdigit(static_cast<unsigned char>(tok[c])) || v > 100000) return;
          v = v * 10 + (tok[c] - '0');
        }
        out = v;
      }
    };
    read("bm", t.bm);
    read("bn", t.bn);
    i = j + 1;
  }
  if (t.bm <= 0 || t.bn <= 0) return std::nullopt;
  return t;
}

const char* impl_name(RoutingKind k) {
  switch (k) {
    case RoutingKind::kGateTopk:
      return "gate_topk";
    case RoutingKind::kHistogramScan:
      return "histogram_scan";
    case RoutingKind::kCapacity:
      return "capacity_position";
    case RoutingKind::kPermute:
      return "permute";
    case RoutingKind::kUnpermuteCombine:
      return "unpermute_combine";
    case RoutingKind::kPackByRank:
      return "pack_by_rank";
  }
  return "?";
}

double routing_bytes(const RoutingOp& op) {
  if (op.bytes > 0) return op.bytes;
  const double t = static_cast<double>(op.tokens), e = static_cast<double>(op.experts);
  const double k = static_cast<double>(op.topk), h = static_cast<double>(op.hidden);
  const double b = dtype_bytes(op.act_dtype);
  constexpr double kId = 4, kW = 4;  // int32 expert ids / positions, fp32 weights and logits
  switch (op.kind) {
    case RoutingKind::kGateTopk:  // read fp32 logits, write ids + weights
      return t * e * kW + t * k * (kId + kW);
    case RoutingKind::kHistogramScan:  // read ids, write counts + offsets
      return t * k * kId + 2 * e * kId;
    case RoutingKind::kCapacity:  // read ids, write position + keep flag, clamped counts
      return t * k * kId + t * k * (kId + 1) + e * kId;
    case RoutingKind::kPermute:  // read token rows, write k copies, read the index
    case RoutingKind::kPackByRank:
      return t * h * b + t * k * h * b + t * k * kId;
    case RoutingKind::kUnpermuteCombine:  // read k rows + weights per token, write one row
      return t * k * h * b + t * k * kW + t * h * b;
  }
  return 0;
}

double harness_routing_size(const RoutingOp& op) {
  return static_cast<double>(op.tokens) * static_cast<double>(op.hidden) * 2.0;
}

std::int64_t gemm_block_k(DType d) { return static_cast<std::int64_t>(128 / dtype_bytes(d)); }

namespace {
/// The wave rule of choose_gemm_tile over given M-tile counts (one per BM candidate).
TileChoice choose_from_m_tiles(const int* bms, const std::int64_t* m_tiles, std::size_t n_bm, const int* bns,
                               std::size_t n_bn, std::int64_t n, std::int64_t sms, bool hopper) {
  std::int64_t n_tiles[32];
  for (std::size_t j = 0; j < n_bn; ++j) n_tiles[j] = (n + bns[j] - 1) / bns[j];
  const double inv_sms = 1.0 / static_cast<double>(sms);
  std::int64_t best_bm = 0, best_bn = 0, best_tiles = 0, best_waves = 0, best_util = 0;
  for (std::size_t i = 0; i < n_bm; ++i) {
    const int bm = bms[i];
    for (std::size_t j = 0; j < n_bn; ++j) {
      const int bn = bns[j];
      if (hopper ? (bm > 128 && bn > 128) : (bm * bn > 128 * 256)) continue;
      const std::int64_t tiles = m_tiles[i] * n_tiles[j];
      // ceil(tiles / sms) in double: exact for tiles < 2^40 (a non-multiple is >= 1/sms away
      // from an integer), and much cheaper than a 64-bit division in this hot loop.
      std::int64_t waves = static_cast<std::int64_t>(std::ceil(static_cast<double>(tiles) * inv_sms));
      if (waves * sms < tiles) ++waves;  // guard the rounding of the reciprocal
      if (waves > 0 && (waves - 1) * sms >= tiles) --waves;
      const std::int64_t util = tiles - (waves - 1) * sms;  // last wave (a full one when divisible)
      bool take = false;
      if (best_bm == 0 || waves < best_waves) {
        take = true;
      } else if (waves == best_waves) {
        // gemm.py @a9967bc: fuller last wave; on a tie a smaller BM or BN with the other equal
        // (less waste), or a larger BN when both differ.
        take = util > best_util;
        if (util == best_util)
          take = (bm == best_bm && bn < best_bn) || (bn == best_bn && bm < best_bm) || (bm != best_bm && bn > best_bn);
      }
      if (take) {
        best_bm = bm;
        best_bn = bn;
        best_tiles = tiles;
        best_waves = waves;
        best_util = util;
      }
    }
  }
  TileChoice c;
  c.tile = TileConfig{static_cast<int>(best_bm), static_cast<int>(best_bn)};
  c.tiles = static_cast<double>(best_tiles);
  c.waves = static_cast<double>(best_waves);
  c.sms = best_waves > 0 ? static_cast<double>((best_tiles + best_waves - 1) / best_waves) : 0;
  return c;
}
}  // namespace

TileChoice choose_gemm_tile(const std::vector<std::int64_t>& rows, std::int64_t n, const GpuParams& gpu,
                            GemmLayout layout) {
  // Candidate sets, in the order the libraries try them (the order matters for the ties).
  static constexpr int kHopperBm[] = {64, 128, 256};
  static constexpr int kHopperBmContiguous[] = {128};
  static constexpr int kHopperBn[] = {16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 144, 160};
  static constexpr int kAmpereBm[] = {64, 128, 256};
  static constexpr int kAmpereBn[] = {64, 128, 256};
  const bool hopper = gpu.peak_flops_fp8 > 0;  // FP8 tensor cores <=> WGMMA/UMMA generation
  const bool contiguous = hopper && layout == GemmLayout::kContiguous;
  const int* bms = hopper ? (contiguous ? kHopperBmContiguous : kHopperBm) : kAmpereBm;
  const std::size_t n_bm = contiguous ? 1 : 3;
  const int* bns = hopper ? kHopperBn : kAmpereBn;
  const std::size_t n_bn = hopper ? std::size(kHopperBn) : std::size(kAmpereBn);
  std::int64_t m_tiles[3] = {0, 0, 0};
  for (std::int64_t m : rows) {
    if (m <= 0) continue;
    for (std::size_t i = 0; i < n_bm; ++i) m_tiles[i] += (m + bms[i] - 1) / bms[i];
  }
  // The choice depends only on (M tiles per BM, N, SMs, generation, layout); a simulation asks
  // for the same few shapes millions of times, so a small per-thread memo keeps it cheap. A
  // pure function of its key: results do not depend on the thread or the call order.
  struct Entry {
    std::int64_t key[6] = {-1, -1, -1, -1, -1, -1};
    TileChoice value;
  };
  thread_local std::array<Entry, 512> memo;
  const std::int64_t key[6] = {m_tiles[0], m_tiles[1],   m_tiles[2],
                               n,          gpu.sm_count, (hopper ? 2 : 0) + (contiguous ? 1 : 0)};
  std::uint64_t h = 1469598103934665603ull;
  for (std::int64_t k : key) h = (h ^ static_cast<std::uint64_t>(k)) * 1099511628211ull;
  Entry& e = memo[static_cast<std::size_t>(h >> 32) % memo.size()];
  if (std::equal(std::begin(key), std::end(key), std::begin(e.key))) return e.value;
  const TileChoice c = choose_from_m_tiles(bms, m_tiles, n_bm, bns, n_bn, n, gpu.sm_count, hopper);
  std::copy(std::begin(key), std::end(key), std::begin(e.key));
  e.value = c;
  return c;
}

GemmFeatures gemm_features(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n, DType in, DType out,
                           TileConfig tile) {
  if (k <= 0 || n <= 0) throw std::invalid_argument(fmt::format("GEMM shape needs K, N > 0 (K={}, N={})", k, n));
  if (tile.bm <= 0 || tile.bn <= 0) throw std::invalid_argument("GEMM tile needs BM, BN > 0");
  GemmFeatures f;
  std::int64_t m_tiles = 0;
  for (std::int64_t m : rows) {
    if (m < 0) throw std::invalid_argument(fmt::format("negative row count {} in a grouped GEMM", m));
    m_tiles += (m + tile.bm - 1) / tile.bm;
    f.rows += static_cast<double>(m);
    if (m > 0) f.active += 1;
  }
  const std::int64_t n_tiles = (n + tile.bn - 1) / tile.bn;
  f.tiles = static_cast<double>(m_tiles) * static_cast<double>(n_tiles);
  f.k = static_cast<double>(k);
  f.k_blocks = static_cast<double>((k + gemm_block_k(in) - 1) / gemm_block_k(in));
  const double kd = static_cast<double>(k), nd = static_cast<double>(n);
  f.weight_bytes = f.active * kd * nd * dtype_bytes(in);
  f.act_bytes = f.rows * (kd * dtype_bytes(in) + nd * dtype_bytes(out));
  return f;
}

GemmTerms gemm_terms(const GemmFeatures& f, const ModelParams& prm, const GpuParams& gpu, DType dtype,
                     double clock_hz) {
  GemmTerms t;
  t.t0_s = prm.t0_s;
  t.launch_s = std::min(prm.launch_s, prm.t0_s);
  t.total_s = prm.t0_s;
  t.device_s = t.total_s - t.launch_s;
  if (f.tiles <= 0) return t;
  const double sms = static_cast<double>(gpu.sm_count);
  const double f_sm = gpu.peak_flops(dtype) / sms * (clock_hz / gpu.sm_clock_hz);
  t.waves = std::ceil(f.tiles / sms);
  const double tile_flops = 2.0 * prm.tile.bm * prm.tile.bn * f.k;
  t.tile_math_s = tile_flops / (prm.eta * f_sm);
  t.tile_latency_s = f.k_blocks * prm.kblock_latency_cycles / clock_hz;
  t.tile_overhead_s = prm.tile_overhead_cycles / clock_hz;
  t.compute_s = t.waves * (t.tile_overhead_s + std::max(t.tile_math_s, t.tile_latency_s));
  t.busy_sms = std::min(f.tiles, sms);
  t.bandwidth = prm.mem_eff * gpu.hbm_bytes_per_s * std::min(1.0, t.busy_sms / (prm.sat_frac * sms));
  t.memory_s = (f.weight_bytes + f.act_bytes) / t.bandwidth;
  t.total_s = prm.t0_s + blend(t.compute_s, t.memory_s, prm.p);
  t.device_s = t.total_s - t.launch_s;
  return t;
}

double gemm_seconds(const GemmFeatures& f, const ModelParams& prm, const GpuParams& gpu, DType dtype, double clock_hz) {
  return gemm_terms(f, prm, gpu, dtype, clock_hz).total_s;
}

double roofline_seconds(double flops, double bytes, const ModelParams& prm, const GpuParams& gpu, DType dtype,
                        double clock_hz) {
  const double rate = prm.eta * gpu.peak_flops(dtype) * (clock_hz / gpu.sm_clock_hz);
  const double tc = flops / rate;
  const double tm = bytes / (prm.mem_eff * gpu.hbm_bytes_per_s);
  return prm.t0_s + blend(tc, tm, prm.p);
}

double bandwidth_seconds(double bytes, const ModelParams& prm, const GpuParams& gpu) {
  return prm.t0_s + bytes / (prm.mem_eff * gpu.hbm_bytes_per_s);
}

double attention_flops(const AttentionShape& s) {
  const double q = static_cast<double>(s.q_len), kv = static_cast<double>(s.kv_len);
  // (query, key) pairs per sequence and head; causal queries are the last q_len positions.
  const double pairs = !s.causal              ? q * kv
                       : s.context_shards > 1 ? kv * (kv + 1) / 2 / s.context_shards
                                              : q * (kv - q) + q * (q + 1) / 2;
  return 4.0 * static_cast<double>(s.batch) * static_cast<double>(s.heads) * static_cast<double>(s.head_dim) * pairs;
}

double attention_bytes(const AttentionShape& s) {
  const double d = static_cast<double>(s.head_dim), b = dtype_bytes(s.dtype);
  const double qo = 2.0 * static_cast<double>(s.q_len) * static_cast<double>(s.heads) * d;
  const double kv = 2.0 * static_cast<double>(s.kv_len) * static_cast<double>(s.kv_heads) * d;
  return static_cast<double>(s.batch) * (qo + kv) * b;
}

ModelParams default_gemm_params(const GpuParams& gpu) {
  ModelParams p;
  p.eta = kGemmEta;
  p.mem_eff = kGemmMemEff;
  p.launch_s = gpu.launch_overhead.to_s();
  p.t0_s = p.launch_s + kGemmDeviceFixedS;
  p.p = kGemmBlendP;
  p.sat_frac = kSatFrac;
  p.tile = TileConfig{128, 128};
  p.kblock_latency_cycles = kKBlockLatencyCycles;
  p.tile_overhead_cycles = kTileOverheadCycles;
  p.choose_tile = true;
  return p;
}

ModelParams default_attention_params(const GpuParams& gpu, AttentionShape::Phase phase) {
  ModelParams p;
  p.t0_s = gpu.launch_overhead.to_s();
  p.p = kBlendP;
  if (phase == AttentionShape::Phase::kPrefill) {
    p.eta = kAttnPrefillEta;
    p.mem_eff = kStreamMemEff;
  } else {
    p.eta = kAttnDecodeEta;
    p.mem_eff = kAttnDecodeMemEff;
  }
  return p;
}

ModelParams default_routing_params(const GpuParams& gpu, RoutingKind kind) {
  ModelParams p;
  p.mem_eff = kRoutingMemEff;
  p.t0_s = gpu.launch_overhead.to_s() * routing_launches(kind);
  return p;
}

ModelParams default_elementwise_params(const GpuParams& gpu) {
  ModelParams p;
  p.mem_eff = kStreamMemEff;
  p.t0_s = gpu.launch_overhead.to_s();
  return p;
}

sim::SimTime to_sim_time(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    throw std::invalid_argument(fmt::format("cost model produced an invalid duration {} s", seconds));
  return sim::duration_for(seconds, 1.0);
}

// ---------------------------------------------------------------------------------------------
// CostModel
// ---------------------------------------------------------------------------------------------
CostModel::CostModel(GpuParams gpu) : CostModel(std::move(gpu), Options{}) {}

CostModel::CostModel(GpuParams gpu, Options options) : gpu_(std::move(gpu)), options_(std::move(options)) {
  gpu_.validate();
  clock_hz_ = options_.sm_clock_hz > 0 ? options_.sm_clock_hz : gpu_.sm_clock_hz;
}

CostModel::CostModel(GpuParams gpu, const CostProfile& profile, Options options)
    : gpu_(std::move(gpu)), options_(std::move(options)), entries_(profile.entries) {
  gpu_.validate();
  if (profile.sm_count != 0 && profile.sm_count != gpu_.sm_count)
    throw std::invalid_argument(fmt::format("cost profile was measured on '{}' with {} SMs, but the GPU '{}' has {}",
                                            profile.gpu_name, profile.sm_count, gpu_.name, gpu_.sm_count));
  clock_hz_ = options_.sm_clock_hz > 0 ? options_.sm_clock_hz
              : profile.clock_hz > 0   ? profile.clock_hz
                                       : gpu_.sm_clock_hz;
}

CostModel::~CostModel() = default;
CostModel::CostModel(const CostModel&) = default;
CostModel& CostModel::operator=(const CostModel&) = default;

const ProfileEntry* CostModel::find(std::string_view family, std::string_view impl, DType dtype,
                                    const std::optional<TileConfig>& tile) const {
  for (const ProfileEntry& e : entries_) {
    if (e.family != family || e.dtype != dtype) continue;
    if (!impl.empty() && e.impl != impl) continue;
    if (tile && e.has_tile && !(e.params.tile == *tile)) continue;
    return &e;
  }
  return nullptr;
}

CostModel::Resolved CostModel::resolve_grouped_gemm(const GroupedGemmShape& s) const {
  const std::string_view family = s.masked ? "grouped_gemm_masked" : "grouped_gemm";
  const std::string& impl = s.impl.empty() ? options_.gemm_impl : s.impl;
  if (const ProfileEntry* e = find(family, impl, s.dtype, s.tile)) return {e->params, true, "profile: " + e->key()};
  Resolved r{default_gemm_params(gpu_), false, "default"};
  if (s.tile) {
    r.params.tile = *s.tile;
    r.params.choose_tile = false;
  }
  return r;
}

namespace {
CostModel::GemmBreakdown gemm_breakdown(CostModel::Resolved r, const std::vector<std::int64_t>& rows, std::int64_t k,
                                        std::int64_t n, DType in, DType out, GemmLayout layout, const GpuParams& gpu,
                                        double clock_hz) {
  if (k <= 0 || n <= 0) throw std::invalid_argument(fmt::format("GEMM shape needs K, N > 0 (K={}, N={})", k, n));
  CostModel::GemmBreakdown b;
  if (r.params.choose_tile) {
    b.choice = choose_gemm_tile(rows, n, gpu, layout);
    if (b.choice.tiles > 0) r.params.tile = b.choice.tile;
  }
  b.features = gemm_features(rows, k, n, in, out, r.params.tile);
  if (!r.params.choose_tile || b.choice.tiles <= 0) {
    b.choice.tile = r.params.tile;
    b.choice.tiles = b.features.tiles;
    b.choice.waves = std::ceil(b.features.tiles / gpu.sm_count);
    b.choice.sms = b.choice.waves > 0 ? std::ceil(b.features.tiles / b.choice.waves) : 0;
  }
  b.terms = gemm_terms(b.features, r.params, gpu, in, clock_hz);
  b.resolved = std::move(r);
  return b;
}
}  // namespace

CostModel::GemmBreakdown CostModel::grouped_gemm_breakdown(const GroupedGemmShape& s) const {
  GemmBreakdown b = gemm_breakdown(resolve_grouped_gemm(s), s.rows_per_expert, s.k, s.n, s.dtype, s.dtype_out,
                                   s.masked ? GemmLayout::kMasked : GemmLayout::kContiguous, gpu_, clock_hz_);
  if (b.resolved.fitted && options_.use_residual && b.features.active > 0) {
    const std::string_view family = s.masked ? "grouped_gemm_masked" : "grouped_gemm";
    const std::string& impl = s.impl.empty() ? options_.gemm_impl : s.impl;
    const double factor = find(family, impl, s.dtype, s.tile)->residual_factor(b.features.rows / b.features.active);
    b.terms.total_s *= factor;
    b.terms.device_s = b.terms.total_s - b.terms.launch_s;
  }
  return b;
}

sim::SimTime CostModel::grouped_gemm(const GroupedGemmShape& s) const {
  return to_sim_time(grouped_gemm_breakdown(s).terms.total_s);
}

CostModel::Resolved CostModel::resolve_dense_gemm(const DenseGemmShape& s) const {
  if (const ProfileEntry* e = find("dense_gemm", "", s.dtype, s.tile)) return {e->params, true, "profile: " + e->key()};
  Resolved r{default_gemm_params(gpu_), false, "default"};
  if (s.tile) {
    r.params.tile = *s.tile;
    r.params.choose_tile = false;
  }
  return r;
}

CostModel::GemmBreakdown CostModel::dense_gemm_breakdown(const DenseGemmShape& s) const {
  return gemm_breakdown(resolve_dense_gemm(s), {s.m}, s.k, s.n, s.dtype, s.dtype_out, GemmLayout::kDense, gpu_,
                        clock_hz_);
}

sim::SimTime CostModel::dense_gemm(const DenseGemmShape& s) const {
  return to_sim_time(dense_gemm_breakdown(s).terms.total_s);
}

CostModel::Resolved CostModel::resolve_attention(const AttentionShape& s) const {
  const bool prefill = s.phase == AttentionShape::Phase::kPrefill;
  if (const ProfileEntry* e = find(prefill ? "attention_prefill" : "attention_decode", "", s.dtype, std::nullopt))
    return {e->params, true, "profile: " + e->key()};
  return {default_attention_params(gpu_, s.phase), false, "default"};
}

sim::SimTime CostModel::attention(const AttentionShape& s) const {
  if (s.batch <= 0 || s.q_len <= 0 || s.kv_len < s.q_len || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0)
    throw std::invalid_argument(
        "attention shape needs batch, q_len, heads, kv_heads, head_dim > 0 and kv_len >= q_len");
  const ModelParams prm = resolve_attention(s).params;
  return to_sim_time(roofline_seconds(attention_flops(s), attention_bytes(s), prm, gpu_, s.dtype, clock_hz_));
}

sim::SimTime CostModel::routing(const RoutingOp& op) const {
  if (op.tokens < 0 || op.experts < 0 || op.topk < 0 || op.hidden < 0 || op.bytes < 0)
    throw std::invalid_argument("routing op sizes must be >= 0");
  ModelParams prm = default_routing_params(gpu_, op.kind);
  const std::string impl = op.kind == RoutingKind::kCapacity ? options_.capacity_impl : impl_name(op.kind);
  // Routing entries are keyed by the dtype the harness recorded; take the first for this impl.
  // A fitted entry is a function of the harness's size measure, the defaults of real traffic.
  for (const ProfileEntry& e : entries_)
    if (e.family == "routing" && e.impl == impl)
      return to_sim_time(bandwidth_seconds(op.bytes > 0 ? op.bytes : harness_routing_size(op), e.params, gpu_));
  return to_sim_time(bandwidth_seconds(routing_bytes(op), prm, gpu_));
}

sim::SimTime CostModel::elementwise(const ElementwiseOp& op) const {
  if (op.bytes < 0) throw std::invalid_argument("elementwise op bytes must be >= 0");
  ModelParams prm = default_elementwise_params(gpu_);
  for (const ProfileEntry& e : entries_)
    if (e.family == "elementwise" && (op.impl.empty() || e.impl == op.impl)) {
      prm = e.params;
      break;
    }
  return to_sim_time(bandwidth_seconds(op.bytes, prm, gpu_));
}

}  // namespace moesim::models::cost
