#include <catch2/catch.hpp>

#include <cmath>
#include <iostream>

#include "models/cost/cost_model.hpp"
#include "tests/cost/synthetic.hpp"

using namespace moesim::models::cost;
using moesim::models::cost::testing::h100_sxm;

namespace {
double us(moesim::sim::SimTime t) { return t.to_us(); }

GroupedGemmShape equal_shape(int experts, std::int64_t m, std::int64_t k, std::int64_t n, DType dt = DType::kBf16) {
  GroupedGemmShape s;
  s.rows_per_expert.assign(static_cast<std::size_t>(experts), m);
  s.k = k;
  s.n = n;
  s.dtype = dt;
  s.dtype_out = DType::kBf16;
  return s;
}
}  // namespace

TEST_CASE("dtype and tile parsing", "[cost]") {
  REQUIRE(parse_dtype("bf16") == DType::kBf16);
  REQUIRE(parse_dtype("E4M3") == DType::kFp8);
  REQUIRE_FALSE(parse_dtype("int4").has_value());
  auto t = TileConfig::parse("BM128_BN256_BK32_S3");
  REQUIRE(t);
  REQUIRE(t->bm == 128);
  REQUIRE(t->bn == 256);
  REQUIRE_FALSE(TileConfig::parse("BK32_S3").has_value());
  REQUIRE_FALSE(TileConfig::parse("").has_value());
}

TEST_CASE("GEMM skeleton matches the hand-computed formula", "[cost]") {
  const GpuParams g = h100_sxm();
  ModelParams p;
  p.eta = 0.5;
  p.mem_eff = 0.8;
  p.t0_s = 2e-6;
  p.p = 2.0;
  p.sat_frac = 0.5;
  p.tile = {128, 128};
  // 8 experts x 1000 rows, K = 4096, N = 2048, bf16 in/out.
  const GemmFeatures f =
      gemm_features(std::vector<std::int64_t>(8, 1000), 4096, 2048, DType::kBf16, DType::kBf16, p.tile);
  // tiles = 8 * ceil(1000/128)=8 * ceil(2048/128)=16 = 1024 -> ceil(1024/132) = 8 waves.
  REQUIRE(f.tiles == 1024);
  REQUIRE(f.active == 8);
  const double f_sm = 989.4e12 / 132;
  const double tc = 8 * 2.0 * 128 * 128 * 4096 / (0.5 * f_sm);
  const double bytes = 8.0 * 4096 * 2048 * 2 + 8000.0 * (4096 * 2 + 2048 * 2);
  const double tm = bytes / (0.8 * 3.35e12);  // all 132 SMs busy: >= sat_frac * SMs
  const double expect = 2e-6 + std::sqrt(tc * tc + tm * tm);
  REQUIRE(gemm_seconds(f, p, g, DType::kBf16, g.sm_clock_hz) == Approx(expect).epsilon(1e-12));
  // Half the clock halves the compute rate only.
  const double slow = 2e-6 + std::sqrt(4 * tc * tc + tm * tm);
  REQUIRE(gemm_seconds(f, p, g, DType::kBf16, g.sm_clock_hz / 2) == Approx(slow).epsilon(1e-12));
  // Few tiles: 1 expert x 1 row x N=256 -> 2 tiles busy of 66 needed for full bandwidth.
  const GemmFeatures small = gemm_features({1}, 4096, 256, DType::kBf16, DType::kBf16, p.tile);
  const double tm_small = (4096.0 * 256 * 2 + (4096 * 2 + 256 * 2)) / (0.8 * 3.35e12 * (2.0 / 66.0));
  const double tc_small = 2.0 * 128 * 128 * 4096 / (0.5 * f_sm);
  REQUIRE(gemm_seconds(small, p, g, DType::kBf16, g.sm_clock_hz) ==
          Approx(2e-6 + std::sqrt(tc_small * tc_small + tm_small * tm_small)).epsilon(1e-12));
}

TEST_CASE("durations are whole picoseconds rounded up", "[cost]") {
  REQUIRE(to_sim_time(1.5e-12).ps() == 2);
  REQUIRE(to_sim_time(0).ps() == 0);
  REQUIRE(to_sim_time(1e-6).ps() == 1'000'000);
  REQUIRE_THROWS_AS(to_sim_time(-1), std::invalid_argument);
  REQUIRE_THROWS_AS(to_sim_time(std::nan("")), std::invalid_argument);
}

TEST_CASE("tile and wave quantisation make a sawtooth in the default model", "[cost]") {
  const CostModel cm(h100_sxm());
  // With a fixed 128x128 tile (the skeleton's quantisation; the chosen tile is tested below):
  // 8 experts, N=4096 (32 N-tiles): m=1024 -> 8*8*32 = 2048 tiles = 16 waves (15.5);
  // m=1025 -> 8*9*32 = 2304 tiles = 18 waves (17.45). Compute-bound, so ~18/16 slower.
  auto fixed = [](GroupedGemmShape s) {
    s.tile = TileConfig{128, 128};
    return s;
  };
  const double t1024 = us(cm.grouped_gemm(fixed(equal_shape(8, 1024, 7168, 4096))));
  const double t1025 = us(cm.grouped_gemm(fixed(equal_shape(8, 1025, 7168, 4096))));
  const double t1152 = us(cm.grouped_gemm(fixed(equal_shape(8, 1152, 7168, 4096))));
  const double t1153 = us(cm.grouped_gemm(fixed(equal_shape(8, 1153, 7168, 4096))));
  REQUIRE(t1025 / t1024 > 1.08);
  REQUIRE(t1025 / t1024 < 18.0 / 16.0 + 0.01);
  REQUIRE(t1152 / t1025 < 1.01);  // flat inside a tile step (same tiles)
  REQUIRE(t1153 / t1152 > 1.05);  // next jump: 8*10*32 = 2560 tiles = 20 waves
  // m=128 vs m=129 with 64 experts: 64*32 -> 64*64 tiles, 16 -> 32 waves. At m=128 the
  // 1.07 GB of weights dominate (memory-bound, ~377 us vs ~198 us compute), so the jump is
  // softened by the blend but still clearly visible.
  const double a = us(cm.grouped_gemm(fixed(equal_shape(64, 128, 2048, 4096))));
  const double b = us(cm.grouped_gemm(fixed(equal_shape(64, 129, 2048, 4096))));
  REQUIRE(b / a > 1.1);
}

TEST_CASE("the default tile is chosen per problem as DeepGEMM chooses it (Hopper) and by waves (Ampere)", "[cost]") {
  const GpuParams h = h100_sxm();  // 132 SMs, FP8 tensor cores
  // Decode projection M=64, N=2112: BN=16 gives exactly 132 tiles, one full wave (DeepGEMM
  // gemm.py @a9967bc picks 64x16 for this shape); a 128x128 tile would give 17 tiles.
  TileChoice c = choose_gemm_tile({64}, 2112, h, GemmLayout::kDense);
  CHECK(c.tile == TileConfig{64, 16});
  CHECK(c.tiles == 132);
  CHECK(c.waves == 1);
  // M=64, N=24576: no single wave exists (BN <= 160); 2 waves with the fullest last wave: BN=96
  // (256 tiles, 124 in the last wave), launched on ceil(256/2) = 128 SMs.
  c = choose_gemm_tile({64}, 24576, h, GemmLayout::kDense);
  CHECK(c.tile == TileConfig{64, 96});
  CHECK(c.waves == 2);
  CHECK(c.sms == 128);
  // Large M: BM=256 (BN <= 128 then); contiguous grouped layouts keep BM=128 (the M alignment).
  CHECK(choose_gemm_tile({4096}, 7168, h, GemmLayout::kDense).tile == TileConfig{256, 128});
  CHECK(choose_gemm_tile({8192, 8192, 8192, 8192}, 4096, h, GemmLayout::kContiguous).tile.bm == 128);
  // An Ampere-class GPU (no FP8) chooses among the CUTLASS SM80 tiles only.
  GpuParams a = h;
  a.peak_flops_fp8 = 0;
  const TileChoice ca = choose_gemm_tile({64}, 2112, a, GemmLayout::kDense);
  CHECK((ca.tile.bn == 64 || ca.tile.bn == 128 || ca.tile.bn == 256));
  // The chosen tile makes the small-M GEMM bandwidth-bound instead of tile-bound: more than
  // twice as fast as a fixed 128x128 tile, and within 2.5x of the datasheet HBM roofline
  // (DeepGEMM measures 9.41 us on H800 = 2.0x; the K-block latency floor keeps it above).
  const CostModel cm(h);
  DenseGemmShape d{64, 2112, 7168, DType::kFp8, DType::kBf16, std::nullopt};
  const double chosen = cm.dense_gemm_breakdown(d).terms.device_s;
  d.tile = TileConfig{128, 128};
  const double fixed128 = cm.dense_gemm_breakdown(d).terms.device_s;
  CHECK(fixed128 / chosen > 2.0);
  const double roofline = (64.0 * 7168 + 2112.0 * 7168 + 2 * 64.0 * 2112) / h.hbm_bytes_per_s;
  CHECK(chosen < 2.5 * roofline);
  CHECK(chosen > roofline);
}

TEST_CASE("GEMM breakdown: terms add up, device time excludes the host launch", "[cost]") {
  const GpuParams g = h100_sxm();
  const CostModel cm(g);
  const DenseGemmShape d{128, 7168, 2048, DType::kFp8, DType::kBf16, std::nullopt};
  const CostModel::GemmBreakdown b = cm.dense_gemm_breakdown(d);
  CHECK(b.resolved.params.choose_tile);
  CHECK(b.terms.launch_s == Approx(g.launch_overhead.to_s()));
  CHECK(b.terms.device_s == Approx(b.terms.total_s - b.terms.launch_s));
  CHECK(cm.dense_gemm(d) == to_sim_time(b.terms.total_s));
  CHECK(b.terms.compute_s ==
        Approx(b.terms.waves * (b.terms.tile_overhead_s + std::max(b.terms.tile_math_s, b.terms.tile_latency_s))));
  CHECK(b.features.k_blocks == 16);  // 2048 / 128 (fp8: 128-byte K blocks)
  // Short K: the per-tile prologue/epilogue is a visible share of the time.
  const DenseGemmShape shortk{4096, 32768, 512, DType::kFp8, DType::kBf16, std::nullopt};
  const CostModel::GemmBreakdown s = cm.dense_gemm_breakdown(shortk);
  CHECK(s.terms.tile_overhead_s > 0.5 * s.terms.tile_math_s);
}

TEST_CASE("default grouped GEMM is monotone in rows and active experts when the grid is full", "[cost]") {
  const CostModel cm(h100_sxm());
  for (int e : {8, 64})
    for (auto [k, n] : std::vector<std::pair<int, int>>{{7168, 4096}, {2048, 7168}, {2048, 1536}}) {
      double prev = 0;
      for (std::int64_t m = 1; m <= 8192; m += (m < 1024 ? 1 : 37)) {
        const double t = us(cm.grouped_gemm(equal_shape(e, m, k, n)));
        INFO("E=" << e << " K=" << k << " N=" << n << " m=" << m);
        REQUIRE(t >= prev);
        prev = t;
      }
    }
  // Small m: memory-bound, time driven by the number of ACTIVE experts (weights read).
  const GpuParams g = h100_sxm();
  const double t0 = g.launch_overhead.to_us();
  const double e8 = us(cm.grouped_gemm(equal_shape(8, 1, 7168, 4096))) - t0;
  const double e64 = us(cm.grouped_gemm(equal_shape(64, 1, 7168, 4096))) - t0;
  REQUIRE(e64 / e8 == Approx(8.0).epsilon(0.05));
  GroupedGemmShape half = equal_shape(64, 1, 7168, 4096);
  for (std::size_t i = 0; i < 32; ++i) half.rows_per_expert[i] = 0;  // 32 of 64 experts empty
  const double e32 = us(cm.grouped_gemm(equal_shape(32, 1, 7168, 4096)));
  REQUIRE(us(cm.grouped_gemm(half)) == Approx(e32).epsilon(1e-8));
  // Nearly flat in m below the crossover: m=1 vs m=32 with 64 experts differs by < 10%.
  REQUIRE(us(cm.grouped_gemm(equal_shape(64, 32, 7168, 4096))) / (e64 + t0) < 1.10);
  // Zero rows: only the fixed cost (launch + the device-side fixed cost of the GEMM model).
  REQUIRE(cm.grouped_gemm(equal_shape(4, 0, 7168, 4096)) == to_sim_time(default_gemm_params(g).t0_s));
  REQUIRE(default_gemm_params(g).t0_s > g.launch_overhead.to_s());
}

TEST_CASE("compute-bound plateau approaches eta x peak", "[cost]") {
  const GpuParams g = h100_sxm();
  const CostModel cm(g);
  // 4 x 8192 rows, N=4096, K=7168, contiguous (BM=128): the fewest waves come with BN=160
  // (26 N-tiles, 4160 of 4096 columns): 256 x 26 = 6656 tiles = 50.4 -> 51 waves. The plateau
  // is eta * 989.4 * (4096/4160) * 6656/(51*132) TFLOP/s before the per-tile overhead (3080
  // cycles on ~96k cycles of main loop), the memory blend and t0.
  const CostModel::GemmBreakdown b = cm.grouped_gemm_breakdown(equal_shape(4, 8192, 7168, 4096));
  REQUIRE(b.choice.tile == TileConfig{128, 160});
  REQUIRE(b.terms.waves == 51);
  const double eta = default_gemm_params(g).eta;
  const double plateau = eta * 989.4 * (4096.0 / 4160) * 6656.0 / (51 * 132);
  const double t = cm.grouped_gemm(equal_shape(4, 8192, 7168, 4096)).to_s();
  const double tflops = 2.0 * 4 * 8192 * 7168 * 4096 / t / 1e12;
  REQUIRE(tflops < plateau);
  REQUIRE(tflops > 0.95 * plateau);
}

TEST_CASE("other families: attention, routing, elementwise, dense", "[cost]") {
  const GpuParams g = h100_sxm();
  const CostModel cm(g);
  AttentionShape pre;
  pre.batch = 1;
  pre.q_len = 4096;
  pre.kv_len = 4096;
  pre.heads = 32;
  pre.kv_heads = 8;
  pre.head_dim = 128;
  // causal pairs = 4096*4097/2
  REQUIRE(attention_flops(pre) == Approx(4.0 * 32 * 128 * 4096.0 * 4097 / 2));
  // Context parallelism over 4 ranks: each computes a quarter of the sequence's triangle (not
  // the end-aligned block of 1024 queries, which would be 1.75x that).
  AttentionShape cp = pre;
  cp.q_len = 1024;
  cp.context_shards = 4;
  REQUIRE(attention_flops(cp) * 4 == Approx(attention_flops(pre)));
  AttentionShape dec = pre;
  dec.phase = AttentionShape::Phase::kDecode;
  dec.batch = 64;
  dec.q_len = 1;
  // decode: KV bytes dominate: 64 seq * 2 * 4096 * 8 * 128 * 2 B
  const double kv = 64.0 * 2 * 4096 * 8 * 128 * 2;
  REQUIRE(attention_bytes(dec) == Approx(kv + 64.0 * 2 * 32 * 128 * 2));
  const double tdec = cm.attention(dec).to_s();
  REQUIRE(tdec > kv / (0.7 * 3.35e12));
  REQUIRE(tdec < 1.3 * (kv / (0.7 * 3.35e12)) + g.launch_overhead.to_s());
  const double tpre = cm.attention(pre).to_s();
  REQUIRE(tpre > attention_flops(pre) / (0.6 * 989.4e12));
  REQUIRE(tpre < 1.3 * attention_flops(pre) / (0.6 * 989.4e12) + g.launch_overhead.to_s());

  RoutingOp perm{RoutingKind::kPermute, 8192, 256, 8, 7168, DType::kBf16, 0};
  const double bytes = 8192.0 * 7168 * 2 * 9 + 8192.0 * 8 * 4;
  REQUIRE(routing_bytes(perm) == Approx(bytes));
  REQUIRE(cm.routing(perm).to_s() == Approx(3e-6 + bytes / (0.4 * 3.35e12)).epsilon(1e-8));
  RoutingOp hist{RoutingKind::kHistogramScan, 0, 256, 8, 0, DType::kBf16, 0};
  REQUIRE(cm.routing(hist) >= moesim::sim::SimTime::from_ps(6'000'000));  // 2 launches, never zero
  REQUIRE(cm.elementwise({1e9}).to_s() == Approx(3e-6 + 1e9 / (0.85 * 3.35e12)).epsilon(1e-8));

  // One expert = a dense GEMM when the tile rules agree: the masked layout chooses among the
  // same BM candidates as the dense kernel, the contiguous one with a given tile.
  DenseGemmShape d{4096, 4096, 4096, DType::kBf16, DType::kBf16, std::nullopt};
  GroupedGemmShape one = equal_shape(1, 4096, 4096, 4096);
  one.masked = true;
  REQUIRE(cm.dense_gemm(d) == cm.grouped_gemm(one));
  one.masked = false;
  one.tile = d.tile = TileConfig{128, 128};
  REQUIRE(cm.dense_gemm(d) == cm.grouped_gemm(one));
}

TEST_CASE("bad shapes and GPU parameters are rejected", "[cost]") {
  GpuParams g = h100_sxm();
  g.sm_count = 0;
  REQUIRE_THROWS_AS(CostModel(g), std::invalid_argument);
  const CostModel cm(h100_sxm());
  REQUIRE_THROWS_AS(cm.grouped_gemm(equal_shape(2, -1, 128, 128)), std::invalid_argument);
  REQUIRE_THROWS_AS(cm.grouped_gemm(equal_shape(2, 1, 0, 128)), std::invalid_argument);
  AttentionShape a;
  a.kv_len = 0;
  REQUIRE_THROWS_AS(cm.attention(a), std::invalid_argument);
}
