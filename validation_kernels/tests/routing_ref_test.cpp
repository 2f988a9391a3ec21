#include "validation_kernels/reference/routing_ref.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>
#include <random>

using namespace moesim::vk::ref;

namespace {

/// Routing built by hand: expert ids and weights per slot, token-major.
Routing make_routing(int64_t tokens, int k, std::vector<int32_t> expert, std::vector<float> weight) {
  Routing r;
  r.tokens = tokens;
  r.topk = k;
  r.expert = std::move(expert);
  r.weight = std::move(weight);
  r.score = r.weight;
  return r;
}

std::vector<float> normal_vector(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

}  // namespace

TEST_CASE("capacity_for follows C = max(min, ceil(cf*T*k/E)) without binary-representation bumps") {
  CHECK(capacity_for(10, 2, 4, 1.2) == 6);     // worked example: 1.2*20/4 = 6 exactly, not 7
  CHECK(capacity_for(100, 1, 10, 1.1) == 11);  // 1.1 is stored above 1.1; must not become 12
  CHECK(capacity_for(10, 1, 4, 1.0) == 3);     // ceil(2.5)
  CHECK(capacity_for(7, 2, 8, 1.0) == 2);      // ceil(1.75)
  CHECK(capacity_for(7, 2, 8, 1.0, 4) == 4);   // min_capacity wins
  CHECK(capacity_for(0, 2, 8, 1.0) == 0);
  CHECK(capacity_for(1000, 8, 256, 0.0) == kNoCapacityLimit);
  CHECK(capacity_for(4096, 8, 256, 1.25) == 160);
  CHECK_THROWS(capacity_for(10, 0, 4, 1.0));
}

TEST_CASE("worked example: batch 2, seq 5, hidden 128, 4 experts, top-2, cf 1.2") {
  const int64_t batch = 2, seq = 5, tokens = batch * seq, hidden = 128;
  const int experts = 4, k = 2;
  const std::vector<float> logits = normal_vector(static_cast<size_t>(tokens * experts), 7);  // router output [2,5,4]
  GateConfig cfg;
  cfg.kind = GateKind::kSoftmax;
  cfg.num_experts = experts;
  cfg.topk = k;
  const Routing r = gate_topk(logits.data(), tokens, cfg);
  REQUIRE(r.expert.size() == static_cast<size_t>(batch * seq * k));  // top-k indices [2,5,2]
  const int64_t cap = capacity_for(tokens, k, experts, 1.2);
  REQUIRE(cap == 6);
  for (DropPolicy policy : {DropPolicy::kPosition, DropPolicy::kProbs}) {
    const Capacity c = enforce_capacity(r, experts, cap, policy);
    int64_t kept = 0;
    for (int e = 0; e < experts; ++e) {
      CHECK(c.kept_count[static_cast<size_t>(e)] == std::min<int64_t>(c.routed_count[static_cast<size_t>(e)], 6));
      kept += c.kept_count[static_cast<size_t>(e)];
    }
    CHECK(kept + c.dropped_assignments == tokens * k);  // conservation
    const PermuteLayout masked = masked_layout(r, c, experts, cap);
    CHECK(masked.total_rows == experts * cap);  // each expert buffer [6,128]
    const std::vector<float> x = normal_vector(static_cast<size_t>(tokens * hidden), 8);
    const std::vector<float> buf = permute(x.data(), tokens, hidden, masked);
    REQUIRE(buf.size() == static_cast<size_t>(experts * 6 * hidden));
    // Identity experts: the combine returns sum of kept weights times x.
    const std::vector<float> out = unpermute_combine(buf.data(), hidden, r, masked);
    REQUIRE(out.size() == static_cast<size_t>(batch * seq * hidden));  // output [2,5,128]
    for (int64_t t = 0; t < tokens; ++t) {
      double wsum = 0;
      for (int j = 0; j < k; ++j)
        if (c.keep[static_cast<size_t>(t * k + j)]) wsum += r.weight[static_cast<size_t>(t * k + j)];
      for (int64_t h = 0; h < hidden; h += 17)
        CHECK(out[static_cast<size_t>(t * hidden + h)] ==
              Approx(wsum * x[static_cast<size_t>(t * hidden + h)]).margin(1e-6));
    }
  }
}

TEST_CASE("gate_topk softmax: order, ties, renormalisation, scale") {
  // Two tokens, 4 experts. Token 1 has a tie between experts 1 and 3: lower index first.
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 0.5f, 2.0f, -1.0f, 2.0f};
  GateConfig cfg;
  cfg.num_experts = 4;
  cfg.topk = 2;
  Routing r = gate_topk(logits.data(), 2, cfg);
  CHECK(r.expert == std::vector<int32_t>{3, 2, 1, 3});
  const double z0 = 1 + std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  CHECK(r.weight[0] == Approx(std::exp(3.0) / z0));
  CHECK(r.weight[1] == Approx(std::exp(2.0) / z0));
  CHECK(r.weight[2] == Approx(r.weight[3]));
  cfg.renormalize = true;
  cfg.weight_scale = 2.5;
  r = gate_topk(logits.data(), 2, cfg);
  CHECK(r.weight[0] + r.weight[1] == Approx(2.5));
  CHECK(r.weight[0] / r.weight[1] == Approx(std::exp(1.0)));
}

TEST_CASE("gate_topk sigmoid+bias: bias steers selection, weight stays un-biased") {
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 1.0f};  // pushes expert 3 to the top
  GateConfig cfg;
  cfg.kind = GateKind::kSigmoidBias;
  cfg.num_experts = 4;
  cfg.topk = 2;
  const Routing r = gate_topk(logits.data(), 1, cfg, bias.data());
  const auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  // selection scores: 0.881, 0.731, 0.5, 1.269 -> experts 3, 0
  CHECK(r.expert == std::vector<int32_t>{3, 0});
  CHECK(r.weight[0] == Approx(sig(-1.0)));
  CHECK(r.score[0] == Approx(sig(-1.0) + 1.0));
  CHECK(r.weight[1] == Approx(sig(2.0)));
}

TEST_CASE("gate_topk group-limited: sigmoid uses top-2 sum, softmax uses max") {
  // 8 experts in 4 groups of 2. Logits chosen so the single best expert (7) sits in a group whose
  // top-2 sum is weak, to tell the two group-score rules apart.
  const std::vector<float> logits = {1.0f, 1.0f, 0.9f, 0.9f, -3.0f, -3.0f, -3.0f, 3.0f};
  GateConfig cfg;
  cfg.kind = GateKind::kSigmoidBias;
  cfg.num_experts = 8;
  cfg.topk = 2;
  cfg.num_groups = 4;
  cfg.topk_group = 1;
  // sigmoid group sums: g0 = 2*0.731 = 1.462, g1 = 1.422, g3 = 0.047+0.953 = 1.0 -> group 0
  Routing r = gate_topk(logits.data(), 1, cfg);
  CHECK(r.expert == std::vector<int32_t>{0, 1});
  cfg.kind = GateKind::kSoftmax;  // group max: group 3 (expert 7) wins, then expert 6
  r = gate_topk(logits.data(), 1, cfg);
  CHECK(r.expert == std::vector<int32_t>{7, 6});
  cfg.topk_group = 2;  // groups 3 and 0
  r = gate_topk(logits.data(), 1, cfg);
  CHECK(r.expert == std::vector<int32_t>{7, 0});
  cfg.topk_group = 4;  // no restriction: plain top-2
  r = gate_topk(logits.data(), 1, cfg);
  CHECK(r.expert == std::vector<int32_t>{7, 0});
}

TEST_CASE("histogram and exclusive scan with block rounding") {
  const std::vector<int32_t> ids = {0, 2, 2, -1, 3, 2, 0, 9};
  const std::vector<int64_t> h = histogram(ids, 4);
  CHECK(h == std::vector<int64_t>{2, 0, 3, 1});
  Scan s = exclusive_scan(h);
  CHECK(s.offset == std::vector<int64_t>{0, 2, 2, 5, 6});
  CHECK(s.padding_rows == 0);
  s = exclusive_scan({129, 0, 1, 128}, 128);
  CHECK(s.offset == std::vector<int64_t>{0, 256, 256, 384, 512});
  CHECK(s.padded_count == std::vector<int64_t>{256, 0, 128, 128});
  CHECK(s.padding_rows == 127 + 127);
}

TEST_CASE("capacity: hand-computed position and probs drops") {
  // 5 tokens, k = 2, 3 experts, C = 2. Slots (token: experts/weights):
  //   t0: e0 .1, e1 .9   t1: e0 .5, e2 .5   t2: e0 .7, e1 .3   t3: e1 .6, e0 .4   t4: e2 .8, e1 .2
  const Routing r =
      make_routing(5, 2, {0, 1, 0, 2, 0, 1, 1, 0, 2, 1}, {.1f, .9f, .5f, .5f, .7f, .3f, .6f, .4f, .8f, .2f});
  // e0 routed by t0,t1,t2,t3 (4); e1 by t0,t2,t3,t4 (4); e2 by t1,t4 (2).
  SECTION("position keeps the first C by token index") {
    const Capacity c = enforce_capacity(r, 3, 2, DropPolicy::kPosition);
    CHECK(c.routed_count == std::vector<int64_t>{4, 4, 2});
    CHECK(c.kept_count == std::vector<int64_t>{2, 2, 2});
    CHECK(c.position_in_expert == std::vector<int32_t>{0, 0, 1, 0, -1, 1, -1, -1, 1, -1});
    CHECK(c.keep == std::vector<uint8_t>{1, 1, 1, 1, 0, 1, 0, 0, 1, 0});
    CHECK(c.dropped_assignments == 4);
    CHECK(c.fully_dropped == std::vector<uint8_t>{0, 0, 0, 1, 0});  // t3 loses both
    CHECK(c.fully_dropped_tokens == 1);
  }
  SECTION("probs keeps the C highest weights, positions stay token-ordered") {
    const Capacity c = enforce_capacity(r, 3, 2, DropPolicy::kProbs);
    // e0 weights t0 .1, t1 .5, t2 .7, t3 .4 -> keep t1, t2 (positions 0, 1).
    // e1 weights t0 .9, t2 .3, t3 .6, t4 .2 -> keep t0, t3.
    CHECK(c.position_in_expert == std::vector<int32_t>{-1, 0, 0, 0, 1, -1, 1, -1, 1, -1});
    CHECK(c.kept_count == std::vector<int64_t>{2, 2, 2});
    CHECK(c.fully_dropped_tokens == 0);
  }
  SECTION("probs ties go to the lower token index") {
    const Routing tie = make_routing(3, 1, {0, 0, 0}, {.5f, .5f, .5f});
    const Capacity c = enforce_capacity(tie, 1, 2, DropPolicy::kProbs);
    CHECK(c.keep == std::vector<uint8_t>{1, 1, 0});
  }
  SECTION("dropless keeps everything; contiguous layout pads to the block") {
    const Capacity c = enforce_capacity(r, 3, kNoCapacityLimit, DropPolicy::kPosition);
    CHECK(c.dropped_assignments == 0);
    const PermuteLayout l = contiguous_layout(r, c, 3, 4);
    CHECK(l.expert_offset == std::vector<int64_t>{0, 4, 8, 12});
    CHECK(l.padding_rows == 2);
    CHECK(l.token_of_row == std::vector<int64_t>{0, 1, 2, 3, 0, 2, 3, 4, 1, 4, -1, -1});
  }
  SECTION("capacity zero drops everything") {
    const Capacity c = enforce_capacity(r, 3, 0, DropPolicy::kProbs);
    CHECK(c.fully_dropped_tokens == 5);
  }
}

TEST_CASE("permute then unpermute_combine with identity experts returns weighted x") {
  const Routing r = make_routing(3, 2, {1, 0, 0, 1, 1, 0}, {.75f, .25f, .5f, .5f, 1.0f, 0.0f});
  const Capacity c = enforce_capacity(r, 2, 2, DropPolicy::kPosition);
  // e1: t0, t1, t2 -> t2 dropped; e0: t0, t1, t2 -> t2 dropped: t2 fully dropped.
  REQUIRE(c.fully_dropped == std::vector<uint8_t>{0, 0, 1});
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};  // [3, 2]
  const PermuteLayout l = contiguous_layout(r, c, 2, 1);
  const std::vector<float> p = permute(x.data(), 3, 2, l);
  CHECK(p == std::vector<float>{1, 2, 3, 4, 1, 2, 3, 4});
  CHECK(l.row_of_slot == std::vector<int64_t>{2, 0, 1, 3, -1, -1});
  const std::vector<float> out = unpermute_combine(p.data(), 2, r, l);
  CHECK(out == std::vector<float>{1, 2, 3, 4, 0, 0});
}

TEST_CASE("owner_rank splits experts contiguously") {
  CHECK(owner_rank(0, 8, 4) == 0);
  CHECK(owner_rank(1, 8, 4) == 0);
  CHECK(owner_rank(2, 8, 4) == 1);
  CHECK(owner_rank(7, 8, 4) == 3);
  for (int e = 0; e < 10; ++e) {  // uneven: ranks own [0,3),[3,6),[6,10)
    const int r = owner_rank(e, 10, 3);
    CHECK(r == (e < 3 ? 0 : e < 6 ? 1 : 2));
  }
}

TEST_CASE("pack_by_rank per assignment and deduplicated per rank") {
  // 3 tokens, k = 2, 4 experts over 2 ranks (e0,e1 -> r0; e2,e3 -> r1).
  const Routing r = make_routing(3, 2, {0, 1, 2, 0, 3, 2}, {.5f, .5f, .5f, .5f, .5f, .5f});
  const Capacity c = enforce_capacity(r, 4, kNoCapacityLimit, DropPolicy::kPosition);
  const std::vector<float> x = {10, 20, 30};  // hidden 1
  const RankPacking a = pack_by_rank(x.data(), 3, 1, r, c, 4, 2, false);
  CHECK(a.rank_rows == std::vector<int64_t>{3, 3});
  CHECK(a.token_of_row == std::vector<int64_t>{0, 1, 0, 1, 2, 2});
  CHECK(a.expert_of_row == std::vector<int32_t>{0, 0, 1, 2, 2, 3});
  CHECK(a.packed == std::vector<float>{10, 20, 10, 20, 30, 30});
  const RankPacking d = pack_by_rank(x.data(), 3, 1, r, c, 4, 2, true);
  CHECK(d.rank_rows == std::vector<int64_t>{2, 2});
  CHECK(d.rank_offset == std::vector<int64_t>{0, 2, 4});
  CHECK(d.token_of_row == std::vector<int64_t>{0, 1, 1, 2});
  CHECK(d.packed == std::vector<float>{10, 20, 20, 30});
}

TEST_CASE("grouped_gemm multiplies each expert's rows by its own weight") {
  // 2 experts, K = 2, N = 1; rows 0..1 -> e0 (w = [1, 2]), row 2 -> e1 (w = [3, 4]).
  const std::vector<float> a = {1, 1, 2, 0, 1, 2};
  const std::vector<float> w = {1, 2, 3, 4};
  CHECK(grouped_gemm(a.data(), w.data(), {0, 2, 3}, 1, 2) == std::vector<float>{3, 2, 11});
}
